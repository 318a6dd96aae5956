//! The conversation between a pool and its workers, on the socket each worker got as its
//! argument.
//!
//! The pool opens with [`Setup`] (our [`Hello`], the initializer and its arguments in the
//! same frame); the worker runs the initializer and answers [`SetupReply`]. Then the pool
//! sends [`ToWorker`] frames (a task's head, its encoded arguments after it in the same
//! frame) and the worker answers each task with a [`Reply`] head: the encoded result follows
//! it, or the head says how the task failed.

use serde::{Deserialize, Serialize};

use crate::error::TaskFailure;
use crate::wire::Hello;

/// The first frame the pool sends a worker; the initializer's arguments follow it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Setup {
    pub(super) hello: Hello,
    /// The initializer's `InitializerEntry`, as an offset from the anchor.
    pub(super) init: Option<i64>,
    /// How long the worker waits actively for its next task after a short one that allows
    /// it, in nanoseconds (see [`PoolBuilder::spin`](super::PoolBuilder::spin)).
    pub(super) spin_nanos: u64,
    /// Whether a task's panic is also printed on the worker's stderr (it always travels in
    /// the task's error).
    pub(super) print_panics: bool,
    /// The threads of the worker's runtime: 1 for a current-thread runtime (see
    /// [`PoolBuilder::worker_threads`](super::PoolBuilder::worker_threads)).
    #[serde(default = "one")]
    pub(super) worker_threads: u32,
    /// How long the worker waits for its runtime's threads to start, in nanoseconds: the
    /// pool's [`start_timeout`](super::PoolBuilder::start_timeout), which covers a worker's
    /// start up to its initializer.
    #[serde(default = "default_start_timeout_nanos")]
    pub(super) start_timeout_nanos: u64,
    /// The pool's [`max_memory_per_child`](super::PoolBuilder::max_memory_per_child), in
    /// bytes: the worker watches its memory against it.
    #[serde(default)]
    pub(super) max_memory: Option<u64>,
}

fn one() -> u32 {
    1
}

fn default_start_timeout_nanos() -> u64 {
    crate::process::DEFAULT_START_TIMEOUT
        .as_nanos()
        .try_into()
        .unwrap_or(u64::MAX)
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
        /// The task has a timeout: the answers the worker holds back go out before it
        /// starts, so that a worker killed for running it too long loses none of them.
        timed: bool,
        /// For a synchronous task, its number among those sent to this worker, from 1, by
        /// which it is claimed and taken back (see
        /// [`StartedMark`](super::started::StartedMark)); 0 for an `async fn` task.
        seq: u64,
    },
    /// Drop task `id` if it has not started (the caller cancelled it); the worker answers
    /// [`TaskFailure::Cancelled`] if it dropped it, and nothing more if the task had started.
    Cancel { id: u64 },
    /// Finish: the pool has nothing more for this worker (it retires or the pool closes).
    Exit,
}

/// The head of a worker's answer to a task; the encoded result follows it in the frame when
/// the task succeeded.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    pub(super) id: u64,
    /// How long the worker spent on a synchronous task, decoding and encoding included, in
    /// nanoseconds (0 for other answers): the pool sizes its prefetch by it.
    pub(super) nanos: u64,
    /// Why the task gave no result; `None` when it succeeded.
    pub(super) failure: Option<TaskFailure>,
    /// The worker's memory has reached the pool's
    /// [`max_memory_per_child`](super::PoolBuilder::max_memory_per_child): it is to be sent
    /// no more tasks, and retired.
    pub(super) over_memory: bool,
}
