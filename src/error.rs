//! The crate's error type.

use std::fmt;
use std::io;
use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a child process ended: the code it passed to `exit`, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// The process called `exit(code)` (or returned from `main`).
    Code(i32),
    /// The process was killed by this signal (Python reports it as exit code `-signal`).
    Signal(i32),
}

impl ExitCause {
    /// Reads Python's exit code convention: `-N` means killed by signal N.
    pub fn from_exitcode(code: i32) -> ExitCause {
        if code < 0 {
            ExitCause::Signal(-code)
        } else {
            ExitCause::Code(code)
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Code(c) => write!(f, "exit code {c}"),
            ExitCause::Signal(s) => match crate::sys::signal_name(s) {
                Some(name) => write!(f, "signal {s} ({name})"),
                None => write!(f, "signal {s}"),
            },
        }
    }
}

/// Everything that can go wrong, shaped for matching: callers act on the variant.
///
/// The cause of an error is printed by its `Display`; `source()` is only used where the
/// cause is an error of its own that `Display` does not repeat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error.
    #[error(transparent)]
    Io(#[from] io::Error),

    /// An argument outside what the function accepts (Python's `ValueError`): a pool of 0
    /// processes, say.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A value could not be encoded for another process.
    #[error("cannot encode a value of type `{type_name}`: {message}")]
    Encode {
        /// The Rust type that failed to encode.
        type_name: &'static str,
        /// What the encoder said.
        message: String,
    },

    /// Bytes from another process could not be decoded as the expected type.
    #[error("cannot decode a value of type `{type_name}`: {message}")]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// What the decoder said.
        message: String,
    },

    /// A frame larger than the maximum frame size was sent or announced.
    #[error("frame of {size} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The size of the frame.
        size: u64,
        /// The maximum in force (see [`set_max_frame_size`](crate::set_max_frame_size)).
        max: usize,
    },

    /// The peer broke the protocol: garbage, a truncated frame, a wrong magic or version.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The peer runs a different executable, so functions cannot be named across.
    #[error(
        "the other process runs a different binary (its fingerprint {theirs} differs from ours, {ours}); \
         processes of tokio-multiprocessing must run the very same executable"
    )]
    BinaryMismatch {
        /// Our fingerprint, in hex.
        ours: String,
        /// The peer's fingerprint, in hex.
        theirs: String,
    },

    /// A child process could not be started or did not complete its bootstrap.
    #[error("child process {name} (pid {pid}) failed to start: {message}")]
    Start {
        /// The process's name.
        name: String,
        /// Its pid, or 0 if it never existed.
        pid: u32,
        /// What went wrong.
        message: String,
    },

    /// The other end is gone: every peer closed its end or exited.
    #[error("the connection is closed")]
    Closed,

    /// A wait ran out of time.
    #[error("timed out")]
    Timeout,

    /// A task panicked; its panic message.
    #[error("task panicked: {message}")]
    TaskPanicked {
        /// The panic payload, when it was a string.
        message: String,
    },

    /// The process running a task ended before the task did.
    #[error("worker process {pid} died ({cause}) before the task finished")]
    WorkerLost {
        /// The worker's pid.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
    },

    /// A manager could not carry out a request (an index out of range, say: Python's
    /// `IndexError` raised through a proxy).
    #[error("manager: {0}")]
    Manager(String),
    /// A lock's holder died while holding it (like a robust mutex's `EOWNERDEAD`).
    ///
    /// Python leaves such a lock locked for ever; here the acquirer that notices the death
    /// gets this error instead of hanging, and the lock is free again: the next `lock()`
    /// takes it. What the dead holder protected may be half-updated.
    #[error("the process {pid} that held the lock died without releasing it")]
    LockOwnerDied {
        /// The pid of the dead holder.
        pid: u32,
    },

    /// A lock that is not held was released (Python's `ValueError` / `AssertionError`).
    #[error("release of a lock that is not held")]
    NotHeld,

    /// An `RLock` was released by a task or process that does not own it.
    #[error("release of a re-entrant lock by a task or process that does not own it")]
    NotOwner,

    /// A `BoundedSemaphore` was released more times than it was acquired (Python's
    /// `ValueError`).
    #[error("semaphore released too many times (its bound is {bound})")]
    SemaphoreOverRelease {
        /// The initial value, which the semaphore may not exceed.
        bound: u32,
    },

    /// A `Barrier` is broken: it was aborted or reset, or a wait on it timed out (Python's
    /// `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,

    /// An index past the end of a shared array or segment (Python's `IndexError`).
    #[error("index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The length of the array or segment.
        len: usize,
    },
    /// A pool task ran past its timeout: its worker was killed (and replaced).
    #[error("task timed out after {timeout:?}: worker process {pid} was killed and replaced")]
    TaskTimedOut {
        /// The pid of the worker that was running the task.
        pid: u32,
        /// The timeout in force for the task.
        timeout: Duration,
    },

    /// The task was cancelled before it finished (a running task's worker was killed and
    /// replaced).
    #[error("task cancelled")]
    Cancelled,

    /// The pool takes no more tasks: it was closed or terminated (or dropped), or it was
    /// terminated before this task finished.
    #[error("the pool is closed")]
    PoolClosed,

    /// A pool worker's initializer failed (panicked, or could not decode its arguments), so
    /// the worker never took a task. The pool does not restart a worker whose initializer
    /// failed.
    #[error("the pool initializer failed in worker process {pid}: {message}")]
    InitializerFailed {
        /// The pid of the worker.
        pid: u32,
        /// The initializer's panic message, or what went wrong.
        message: String,
    },

    /// [`Pool::join`](crate::Pool::join) was called on a pool that is still running: call
    /// [`close`](crate::Pool::close) or [`terminate`](crate::Pool::terminate) first.
    #[error("the pool is still running: call close() or terminate() before join()")]
    PoolRunning,

    /// A queue had no item to give within the time allowed (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,

    /// A bounded queue had no room within the time allowed (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,

    /// The object was closed by its `close()` in this process and cannot be used any more.
    #[error("this {object} was closed by close() and cannot be used")]
    HandleClosed {
        /// What was closed: `"queue"`, `"connection"`, `"listener"`.
        object: &'static str,
    },

    /// `JoinableQueue::task_done` was called more times than items were put.
    #[error("task_done() called more times than there were items")]
    TaskDoneTooManyTimes,

    /// One input of a map stream failed: which one (its index in the input), and why.
    ///
    /// [`Pool::imap`](crate::Pool::imap) and [`Pool::imap_unordered`](crate::Pool::imap_unordered)
    /// yield one item per input; an input whose task failed yields this error. The
    /// `is_*` methods look through it to the cause.
    #[error("input {index}: {error}")]
    Input {
        /// The input's index in the iterable, counting from 0.
        index: usize,
        /// Why its task failed.
        error: Box<Error>,
    },

    /// The peer of a `Listener`/`Client` connection did not prove it holds the same
    /// authentication key, or did not follow the challenge exchange.
    #[error("authentication failed: {message}")]
    Authentication {
        /// What went wrong.
        message: String,
    },
}

/// How a pool task ended without a result, in the shape of tokio's `JoinError`.
impl Error {
    /// Whether the task panicked ([`Error::TaskPanicked`]), like `JoinError::is_panic`.
    pub fn is_panic(&self) -> bool {
        matches!(self.cause(), Error::TaskPanicked { .. })
    }

    /// Whether the task was cancelled ([`Error::Cancelled`]), like `JoinError::is_cancelled`.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.cause(), Error::Cancelled)
    }

    /// Whether the process running the task died first ([`Error::WorkerLost`]).
    pub fn is_worker_lost(&self) -> bool {
        matches!(self.cause(), Error::WorkerLost { .. })
    }

    /// Whether the task ran past its timeout and its worker was killed
    /// ([`Error::TaskTimedOut`]; a wait that merely ran out is [`Error::Timeout`]).
    pub fn is_task_timeout(&self) -> bool {
        matches!(self.cause(), Error::TaskTimedOut { .. })
    }

    /// The input a map stream's error belongs to ([`Error::Input`]); `None` for any other.
    pub fn input_index(&self) -> Option<usize> {
        match self {
            Error::Input { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The error itself, or for [`Error::Input`] the error of that input.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Input { error, .. } => error.cause(),
            other => other,
        }
    }
}

/// A copy of an error, for each of several callers it fails (the items of a failed chunk,
/// the tasks queued when no worker can start). An [`Error::Io`] keeps its kind and its OS
/// error code, and its message where it had no code.
impl Clone for Error {
    fn clone(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
            Error::Encode { type_name, message } => Error::Encode {
                type_name,
                message: message.clone(),
            },
            Error::Decode { type_name, message } => Error::Decode {
                type_name,
                message: message.clone(),
            },
            Error::FrameTooLarge { size, max } => Error::FrameTooLarge {
                size: *size,
                max: *max,
            },
            Error::Protocol(m) => Error::Protocol(m.clone()),
            Error::BinaryMismatch { ours, theirs } => Error::BinaryMismatch {
                ours: ours.clone(),
                theirs: theirs.clone(),
            },
            Error::Start { name, pid, message } => Error::Start {
                name: name.clone(),
                pid: *pid,
                message: message.clone(),
            },
            Error::Closed => Error::Closed,
            Error::Timeout => Error::Timeout,
            Error::TaskPanicked { message } => Error::TaskPanicked {
                message: message.clone(),
            },
            Error::WorkerLost { pid, cause } => Error::WorkerLost {
                pid: *pid,
                cause: *cause,
            },
            Error::Manager(m) => Error::Manager(m.clone()),
            Error::LockOwnerDied { pid } => Error::LockOwnerDied { pid: *pid },
            Error::NotHeld => Error::NotHeld,
            Error::NotOwner => Error::NotOwner,
            Error::SemaphoreOverRelease { bound } => Error::SemaphoreOverRelease { bound: *bound },
            Error::BrokenBarrier => Error::BrokenBarrier,
            Error::IndexOutOfRange { index, len } => Error::IndexOutOfRange {
                index: *index,
                len: *len,
            },
            Error::TaskTimedOut { pid, timeout } => Error::TaskTimedOut {
                pid: *pid,
                timeout: *timeout,
            },
            Error::Cancelled => Error::Cancelled,
            Error::PoolClosed => Error::PoolClosed,
            Error::InitializerFailed { pid, message } => Error::InitializerFailed {
                pid: *pid,
                message: message.clone(),
            },
            Error::PoolRunning => Error::PoolRunning,
            Error::Empty => Error::Empty,
            Error::Full => Error::Full,
            Error::HandleClosed { object } => Error::HandleClosed { object },
            Error::TaskDoneTooManyTimes => Error::TaskDoneTooManyTimes,
            Error::Input { index, error } => Error::Input {
                index: *index,
                error: error.clone(),
            },
            Error::Authentication { message } => Error::Authentication {
                message: message.clone(),
            },
        }
    }
}

/// Hex form of a fingerprint, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
