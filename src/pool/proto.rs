//! The conversation between a pool and its workers, on the socket each worker got as its
//! argument.
//!
//! The pool opens with [`Setup`] (our [`Hello`], the initializer and its arguments in the
//! same frame); the worker runs the initializer and answers [`SetupReply`]. Then the pool
//! sends [`ToWorker`] frames (a task's head, its encoded arguments after it in the same
//! frame) and the worker answers each task with a [`Reply`] head followed by the encoded
//! result, or by the failure's message.

use serde::{Deserialize, Serialize};

use crate::wire::Hello;

/// The first frame the pool sends a worker; the initializer's arguments follow it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Setup {
    pub(super) hello: Hello,
    /// The initializer's `ProcessEntry`, as an offset from the anchor.
    pub(super) init: Option<i64>,
    /// How long the worker waits actively for its next task after a short one that allows
    /// it, in nanoseconds (see [`PoolBuilder::spin`](super::PoolBuilder::spin)).
    pub(super) spin_nanos: u64,
}

/// The worker's answer to [`Setup`].
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum SetupReply {
    /// Initialized, ready for tasks.
    Ready,
    /// The handshake failed; why.
    Refused(String),
    /// The initializer failed; its panic message or error.
    InitFailed(String),
}

/// What the pool sends a worker after the setup.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToWorker {
    /// Run a task: a `TaskEntry` offset; the encoded arguments follow in the frame.
    Task {
        id: u64,
        entry: i64,
        /// An `async fn` target: it runs on the worker's runtime, not on its task thread.
        is_async: bool,
        /// Whether the worker may spin for its next task after this one, if it is short
        /// (the pool had a core to spare when it sent it).
        spin: bool,
    },
    /// Drop task `id` if it has not started (the caller cancelled it); the worker answers
    /// [`Status::Cancelled`] if it dropped it, and nothing more if the task had started.
    Cancel { id: u64 },
    /// Finish: the pool has nothing more for this worker (it retires or the pool closes).
    Exit,
}

/// How a task ended, in a [`Reply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Status {
    /// The encoded result follows.
    Done,
    /// The task panicked; its message follows.
    Panicked,
    /// The arguments could not be decoded; the decoder's message follows.
    BadArgs,
    /// The result could not be encoded; the encoder's message follows.
    BadResult,
    /// The worker could not run the task at all; why follows.
    Refused,
    /// The task was dropped before it started, as the pool asked; an empty string follows.
    Cancelled,
    /// The result is larger than a frame may be; its size and the limit follow, as a pair
    /// of integers.
    TooLarge,
}

/// The head of a worker's answer to a task.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    pub(super) id: u64,
    pub(super) status: Status,
    /// How long the worker spent on a synchronous task, decoding and encoding included, in
    /// nanoseconds (0 for other answers): the pool sizes its prefetch by it.
    pub(super) nanos: u64,
}
