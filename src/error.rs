//! The crate's error type.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod wire;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a child process ended: the code it passed to `exit`, or the signal that killed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitCause {
    /// The process called `exit(code)` (or returned from `main`).
    Code(i32),
    /// The process was killed by this signal (Python reports it as exit code `-signal`).
    Signal(i32),
    /// The process ran on another host of a [`Cluster`](crate::Cluster) that stopped
    /// answering (frozen, unplugged) for the cluster's
    /// [`heartbeat_deadline`](crate::ClusterBuilder::heartbeat_deadline): whether the process
    /// still runs there is unknown, and nothing it sends is taken any more.
    HostLost,
    /// The process ran on another host of a [`Cluster`](crate::Cluster) whose agent's
    /// connection to the head closed (the agent killed or crashed, its machine rebooted):
    /// the agent's workers end with it, but how this one ended was not reported, and
    /// nothing it sends is taken any more.
    HostDisconnected,
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
            ExitCause::HostLost => f.write_str("its host stopped answering"),
            ExitCause::HostDisconnected => f.write_str("its host's connection closed"),
        }
    }
}

/// Everything that can go wrong, shaped for matching: callers act on the variant.
///
/// The cause of an error is printed by its `Display`; `source()` is only used where the
/// cause is an error of its own that `Display` does not repeat.
///
/// It is a serde value, so a pool task, a [`Process::call`](crate::Process::call) or a
/// queue's item may carry a [`Result`] to another process, where the error is the same
/// variant (as Python pickles an exception): an [`Error::Io`] keeps its kind, and its
/// `errno` if the system gave one; a type name is kept for the first 512 distinct names a
/// process decodes, and given as `"(a type named by another process)"` after that.
///
/// A clone (for each of several callers one failure fails: the items of a failed chunk, the
/// tasks queued when no worker can start) shares an [`Error::Io`]'s `io::Error`.
#[derive(Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error (shared, so that the error can be cloned). One that
    /// refused a descriptor for want of one ("Too many open files") names the limit met.
    #[error("{io}{note}", io = .0, note = crate::sys::descriptor_limit_note(.0))]
    Io(Arc<io::Error>),

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

    /// A child process could not be started or did not complete its bootstrap. The message
    /// names the pid only of a child that existed.
    #[error("child process {name}{} failed to start: {message}", pid_of(*pid))]
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

    /// A manager could not carry out a request (an index out of range, say: Python's
    /// `IndexError` raised through a proxy).
    #[error("manager: {0}")]
    Manager(String),

    /// The manager server that a proxy calls is gone: stopped (its [`Manager`] shut down or
    /// dropped), killed, or out of reach (the connection broke, or the server was silent past
    /// the heartbeat deadline). Every call waiting on it fails with this error, and so does
    /// a later call while the server stays gone; one made once it is back connects again.
    ///
    /// [`Manager`]: crate::Manager
    #[error("the manager server{} is gone: {cause}", server_name(address.as_deref(), *pid))]
    ManagerLost {
        /// The address the server was reached by, if it has one (a local manager's proxies
        /// reach it through a socket they carry).
        address: Option<String>,
        /// The server's pid, if a connection to it heard it.
        pid: Option<u32>,
        /// What ended the connection, or why a new one could not be made.
        cause: String,
    },
    /// A lock's holder let go of it without releasing it (like a robust mutex's
    /// `EOWNERDEAD`): the crate's locks, when the holding process died; a manager's, when
    /// the holder's connection to the manager closed (its process died, or dropped its
    /// handles to that manager, or a pool task that took it through a worker's proxy
    /// returned).
    ///
    /// Python leaves such a lock locked for ever; here the acquirer that notices the death
    /// gets this error instead of hanging, and the lock is free again: the next `lock()`
    /// takes it. What the dead holder protected may be half-updated.
    #[error(
        "the process {pid} that held the lock died or, a manager's lock, closed its \
         connection without releasing it"
    )]
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
    /// A pool task gave no result: it panicked, its worker died, it timed out or was
    /// cancelled, the pool was closed first... (see [`TaskError`]).
    #[error(transparent)]
    Task(#[from] TaskError),

    /// [`try_set_start_method`](crate::try_set_start_method) was called once the default
    /// start method had been set or used (Python's `RuntimeError: context has already been
    /// set`).
    #[error("the start method has already been set (to {method})")]
    StartMethodSet {
        /// Python's name of the method in force (`"spawn"`, `"forkserver"` or `"fork"`).
        method: &'static str,
    },

    /// A pool worker's initializer failed (panicked, or could not decode its arguments), so
    /// the worker never took a task; the pool does not restart a worker whose initializer
    /// failed. Or a manager's server initializer failed, so the server never served.
    #[error("the initializer failed in process {pid}: {message}")]
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

    /// [`Process::close`](crate::Process::close) was called on a process that is still
    /// running (Python's `ValueError`): join or terminate it first.
    #[error("process {pid} is still running: join() or terminate() it before close()")]
    ProcessRunning {
        /// The pid of the running process.
        pid: u32,
    },

    /// A queue had no item to give within the time allowed (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,

    /// A bounded queue had no room within the time allowed (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,

    /// The queue was shut down (Python 3.13's `queue.ShutDown`): a `put` after
    /// [`Queue::shutdown`](crate::Queue::shutdown), or a `get` once the queue it left is
    /// empty (at once after [`Queue::shutdown_immediate`](crate::Queue::shutdown_immediate)).
    #[error("the queue was shut down")]
    ShutDown,

    /// The object was closed by its `close()` in this process and cannot be used any more.
    #[error("this {object} was closed by close() and cannot be used")]
    HandleClosed {
        /// What was closed: `"queue"`, `"connection"`, `"listener"`.
        object: &'static str,
    },

    /// `JoinableQueue::task_done` was called more times than items were put.
    #[error("task_done() called more times than there were items")]
    TaskDoneTooManyTimes,

    /// The peer of a `Listener`/`Client` connection did not prove it holds the same
    /// authentication key, or did not follow the challenge exchange.
    #[error("authentication failed: {message}")]
    Authentication {
        /// What went wrong.
        message: String,
    },

    /// A message received is longer than the room given for it (Python's
    /// `BufferTooShort`): [`Connection::recv_bytes_into`](crate::Connection::recv_bytes_into)
    /// and [`Connection::recv_bytes_max`](crate::Connection::recv_bytes_max). The message
    /// comes with the error, so nothing is lost.
    #[error("a message of {} bytes does not fit in the {room} bytes given for it", message.len())]
    BufferTooShort {
        /// The room there was.
        room: usize,
        /// The whole message received.
        message: Vec<u8>,
    },
}

/// `f.debug_struct(name)` with each of `fields` (variables named as the fields), finished.
macro_rules! fields {
    ($f:expr, $name:literal, $($field:ident),+) => {
        $f.debug_struct($name)$(.field(stringify!($field), $field))+.finish()
    };
}

/// As a derived `Debug` would print, but for [`Error::BufferTooShort`]'s message, which is
/// printed by its length: a message of megabytes unwrapped in a test or returned from `main`
/// would otherwise fill the terminal with its bytes.
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => f.debug_tuple("Io").field(e).finish(),
            Error::InvalidArgument(e) => f.debug_tuple("InvalidArgument").field(e).finish(),
            Error::Encode { type_name, message } => fields!(f, "Encode", type_name, message),
            Error::Decode { type_name, message } => fields!(f, "Decode", type_name, message),
            Error::FrameTooLarge { size, max } => fields!(f, "FrameTooLarge", size, max),
            Error::Protocol(e) => f.debug_tuple("Protocol").field(e).finish(),
            Error::BinaryMismatch { ours, theirs } => fields!(f, "BinaryMismatch", ours, theirs),
            Error::Start { name, pid, message } => fields!(f, "Start", name, pid, message),
            Error::Closed => f.write_str("Closed"),
            Error::Timeout => f.write_str("Timeout"),
            Error::Manager(e) => f.debug_tuple("Manager").field(e).finish(),
            Error::ManagerLost {
                address,
                pid,
                cause,
            } => fields!(f, "ManagerLost", address, pid, cause),
            Error::LockOwnerDied { pid } => fields!(f, "LockOwnerDied", pid),
            Error::NotHeld => f.write_str("NotHeld"),
            Error::NotOwner => f.write_str("NotOwner"),
            Error::SemaphoreOverRelease { bound } => fields!(f, "SemaphoreOverRelease", bound),
            Error::BrokenBarrier => f.write_str("BrokenBarrier"),
            Error::IndexOutOfRange { index, len } => fields!(f, "IndexOutOfRange", index, len),
            Error::Task(e) => f.debug_tuple("Task").field(e).finish(),
            Error::StartMethodSet { method } => fields!(f, "StartMethodSet", method),
            Error::InitializerFailed { pid, message } => {
                fields!(f, "InitializerFailed", pid, message)
            }
            Error::PoolRunning => f.write_str("PoolRunning"),
            Error::ProcessRunning { pid } => fields!(f, "ProcessRunning", pid),
            Error::Empty => f.write_str("Empty"),
            Error::Full => f.write_str("Full"),
            Error::ShutDown => f.write_str("ShutDown"),
            Error::HandleClosed { object } => fields!(f, "HandleClosed", object),
            Error::TaskDoneTooManyTimes => f.write_str("TaskDoneTooManyTimes"),
            Error::Authentication { message } => fields!(f, "Authentication", message),
            Error::BufferTooShort { room, message } => f
                .debug_struct("BufferTooShort")
                .field("room", room)
                .field("message", &format_args!("<{} bytes>", message.len()))
                .finish(),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// This error, naming `T` if it is an [`Error::Encode`] or [`Error::Decode`]: for a value
    /// that travels inside a wrapper of ours, whose name means nothing to the caller.
    pub(crate) fn naming<T: ?Sized>(self) -> Error {
        match self {
            Error::Encode { message, .. } => Error::Encode {
                type_name: std::any::type_name::<T>(),
                message,
            },
            Error::Decode { message, .. } => Error::Decode {
                type_name: std::any::type_name::<T>(),
                message,
            },
            other => other,
        }
    }
}

/// " (pid N)" for [`Error::Start`]'s message, or nothing for a child that never existed
/// (pid 0).
fn pid_of(pid: u32) -> String {
    match pid {
        0 => String::new(),
        pid => format!(" (pid {pid})"),
    }
}

/// How a manager server is named in [`Error::ManagerLost`]: by its address and pid, those
/// known.
fn server_name(address: Option<&str>, pid: Option<u32>) -> String {
    match (address, pid) {
        (Some(a), Some(p)) => format!(" at {a} (pid {p})"),
        (Some(a), None) => format!(" at {a}"),
        (None, Some(p)) => format!(" (pid {p})"),
        (None, None) => String::new(),
    }
}

/// Hex form of a fingerprint, for messages.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a pool task gave no result, in the shape of tokio's `JoinError`: it panicked, its
/// worker died, it ran past its timeout, it was cancelled, the pool was closed first, or its
/// arguments or result could not cross. [`AsyncResult`](crate::AsyncResult),
/// [`MapResult`](crate::MapResult) and [`IMap`](crate::IMap) yield it; it converts into
/// [`Error::Task`], so `?` works in functions returning [`Result`].
///
/// Ask it what happened with [`is_panic`](Self::is_panic),
/// [`is_worker_lost`](Self::is_worker_lost), [`is_timeout`](Self::is_timeout),
/// [`is_cancelled`](Self::is_cancelled) and [`is_pool_closed`](Self::is_pool_closed); its
/// details with [`panic_message`](Self::panic_message),
/// [`panic_location`](Self::panic_location), [`worker_pid`](Self::worker_pid),
/// [`exit_cause`](Self::exit_cause) and, for the items of a map,
/// [`input_index`](Self::input_index).
///
/// Like [`Error`], it is a serde value, and another process that decodes it is told the
/// same.
#[derive(Clone)]
pub struct TaskError {
    repr: Box<Repr>,
    /// The index of the input it belongs to, for the items of a map.
    input: Option<usize>,
}

#[derive(Debug, Clone)]
enum Repr {
    /// What the worker reported.
    Failed(TaskFailure),
    /// The worker died before it answered; `host` names its host when it ran on another
    /// host of a cluster; `killed_because` says why the pool killed it, if it did;
    /// `answer_lost` says the task had finished, and only its answer was lost; `called`
    /// says the process was no pool's worker but one started for its target's value
    /// ([`Process::call`](crate::Process::call)).
    WorkerLost {
        pid: u32,
        cause: ExitCause,
        host: Option<Arc<str>>,
        killed_because: Option<Arc<str>>,
        answer_lost: bool,
        called: bool,
    },
    /// The task ran past its timeout; its worker was killed. `host` names the worker's
    /// host when it ran on another host of a cluster.
    TimedOut {
        pid: u32,
        timeout: Duration,
        host: Option<Arc<str>>,
    },
    /// The caller cancelled it.
    Cancelled,
    /// The pool was closed or terminated first.
    PoolClosed,
    /// The pool's scheduler had ended without a close or a terminate: with the tokio
    /// runtime the pool was built on. Counts as [`PoolClosed`](Repr::PoolClosed).
    RuntimeGone,
    /// It failed on this side: its arguments could not be encoded or sent, its result not
    /// decoded, or no worker could be started to run it.
    Local(Error),
}

/// How a task failed in its worker, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TaskFailure {
    /// The function panicked.
    Panicked {
        /// The panic's message, when its payload was a string.
        message: String,
        /// Where it panicked, as `file:line:column`.
        location: Option<String>,
        /// The worker's backtrace, captured when `RUST_BACKTRACE` asks for one.
        backtrace: Option<String>,
    },
    /// The arguments could not be decoded; the decoder's error.
    BadArgs(String),
    /// The result could not be encoded; the encoder's error.
    BadResult(String),
    /// The result is larger than a frame may be: its size and the limit.
    TooLarge {
        /// The encoded result's size in bytes.
        size: u64,
        /// The maximum frame size.
        max: u64,
    },
    /// The worker could not run the task at all; why.
    Refused(String),
    /// The worker dropped the task before it started, as the pool asked.
    Cancelled,
}

impl TaskError {
    /// A task that failed in its worker.
    pub(crate) fn failed(f: TaskFailure) -> TaskError {
        TaskError::new(Repr::Failed(f))
    }

    /// A task whose worker `pid` on `host` (a cluster's host, or `None` for this machine)
    /// died (`cause`) before answering.
    pub(crate) fn worker_lost_on(host: Option<&Arc<str>>, pid: u32, cause: ExitCause) -> TaskError {
        TaskError::new(Repr::WorkerLost {
            pid,
            cause,
            host: host.cloned(),
            killed_because: None,
            answer_lost: false,
            called: false,
        })
    }

    /// The child `pid` started by [`Process::call`](crate::Process::call) died (`cause`)
    /// before it answered.
    pub(crate) fn called_process_lost(pid: u32, cause: ExitCause) -> TaskError {
        TaskError::new(Repr::WorkerLost {
            pid,
            cause,
            host: None,
            killed_because: None,
            answer_lost: false,
            called: true,
        })
    }

    /// This error of a lost worker, for a task that had finished: only its answer, held
    /// back to go out with others, was lost.
    pub(crate) fn answer_lost(mut self) -> TaskError {
        if let Repr::WorkerLost { answer_lost, .. } = &mut *self.repr {
            *answer_lost = true;
        }
        self
    }

    /// This error of a lost worker, saying why the pool killed the worker (`None`: it did
    /// not).
    pub(crate) fn killed_because(mut self, why: Option<&Arc<str>>) -> TaskError {
        if let Repr::WorkerLost { killed_because, .. } = &mut *self.repr {
            *killed_because = why.cloned();
        }
        self
    }

    /// A task that ran past `timeout` in worker `pid` (on `host`, for a cluster's worker),
    /// which was killed.
    pub(crate) fn timed_out(host: Option<&Arc<str>>, pid: u32, timeout: Duration) -> TaskError {
        TaskError::new(Repr::TimedOut {
            pid,
            timeout,
            host: host.cloned(),
        })
    }

    /// A task its caller cancelled.
    pub(crate) fn cancelled() -> TaskError {
        TaskError::new(Repr::Cancelled)
    }

    /// A task the pool could not run because it was closed or terminated.
    pub(crate) fn pool_closed() -> TaskError {
        TaskError::new(Repr::PoolClosed)
    }

    /// A task the pool could not run because its scheduler ended with the runtime the pool
    /// was built on; [`is_pool_closed`](Self::is_pool_closed) says yes to it.
    pub(crate) fn runtime_gone() -> TaskError {
        TaskError::new(Repr::RuntimeGone)
    }

    /// A task that failed on the caller's side.
    pub(crate) fn local(e: Error) -> TaskError {
        match e {
            Error::Task(t) => t,
            e => TaskError::new(Repr::Local(e)),
        }
    }

    fn new(repr: Repr) -> TaskError {
        TaskError {
            repr: Box::new(repr),
            input: None,
        }
    }

    /// The same error, for the input at `index` of a map.
    pub(crate) fn at_input(mut self, index: usize) -> TaskError {
        self.input = Some(index);
        self
    }

    /// Whether the task panicked, like `JoinError::is_panic`.
    pub fn is_panic(&self) -> bool {
        matches!(*self.repr, Repr::Failed(TaskFailure::Panicked { .. }))
    }

    /// Whether the task was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel)),
    /// like `JoinError::is_cancelled`.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            *self.repr,
            Repr::Cancelled | Repr::Failed(TaskFailure::Cancelled)
        )
    }

    /// Whether the process that ran the task died before its answer reached the pool (a
    /// signal, an abort, the OOM killer, `exit`): while the task ran, or, if
    /// [`is_answer_lost`](Self::is_answer_lost), after it finished.
    pub fn is_worker_lost(&self) -> bool {
        matches!(*self.repr, Repr::WorkerLost { .. })
    }

    /// Whether the task had finished when its worker died, and only its answer was lost: a
    /// worker holds the answers of short tasks back to send several in one write, and a
    /// task that kills its worker takes with it the answers of the tasks it ran before.
    /// The task that was running then is the one whose error is
    /// [`is_worker_lost`](Self::is_worker_lost) and not this.
    pub fn is_answer_lost(&self) -> bool {
        matches!(
            *self.repr,
            Repr::WorkerLost {
                answer_lost: true,
                ..
            }
        )
    }

    /// Whether the task ran past its timeout and its worker was killed (a wait that merely
    /// ran out is [`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(*self.repr, Repr::TimedOut { .. })
    }

    /// Whether the pool was closed or terminated before the task could finish.
    pub fn is_pool_closed(&self) -> bool {
        matches!(*self.repr, Repr::PoolClosed | Repr::RuntimeGone)
    }

    /// The panic's message, if the task panicked (and its payload was a string).
    pub fn panic_message(&self) -> Option<&str> {
        match &*self.repr {
            Repr::Failed(TaskFailure::Panicked { message, .. }) => Some(message),
            _ => None,
        }
    }

    /// Where the task panicked, as `file:line:column`, if it did.
    pub fn panic_location(&self) -> Option<&str> {
        match &*self.repr {
            Repr::Failed(TaskFailure::Panicked { location, .. }) => location.as_deref(),
            _ => None,
        }
    }

    /// The worker's backtrace of the panic, if the task panicked while `RUST_BACKTRACE` was
    /// set in the worker (it inherits the variable from this process).
    pub fn panic_backtrace(&self) -> Option<&str> {
        match &*self.repr {
            Repr::Failed(TaskFailure::Panicked { backtrace, .. }) => backtrace.as_deref(),
            _ => None,
        }
    }

    /// The pid of the worker that died or was killed while running the task.
    pub fn worker_pid(&self) -> Option<u32> {
        match *self.repr {
            Repr::WorkerLost { pid, .. } | Repr::TimedOut { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The host of the worker that died while running the task, or was killed because the
    /// task timed out, when it ran on another host of a [`Cluster`](crate::Cluster) (`None`
    /// for a worker on this machine).
    pub fn worker_host(&self) -> Option<&str> {
        match &*self.repr {
            Repr::WorkerLost { host, .. } | Repr::TimedOut { host, .. } => host.as_deref(),
            _ => None,
        }
    }

    /// How the worker that ran the task ended, if it died first.
    pub fn exit_cause(&self) -> Option<ExitCause> {
        match *self.repr {
            Repr::WorkerLost { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// The size of the value and the maximum frame size, if the task's arguments or its
    /// result were larger than a frame may be (see
    /// [`set_max_frame_size`](crate::set_max_frame_size)).
    pub fn frame_too_large(&self) -> Option<(u64, usize)> {
        match &*self.repr {
            Repr::Failed(TaskFailure::TooLarge { size, max }) => {
                Some((*size, usize::try_from(*max).unwrap_or(usize::MAX)))
            }
            Repr::Local(Error::FrameTooLarge { size, max }) => Some((*size, *max)),
            _ => None,
        }
    }

    /// The error met on the caller's side, if that is why the task gave no result: its
    /// arguments could not be encoded ([`Error::Encode`]), its result could not be decoded
    /// ([`Error::Decode`]), a frame was too large ([`Error::FrameTooLarge`]), or no worker
    /// could be started to run it ([`Error::InitializerFailed`], [`Error::Start`], ...).
    pub fn caller_error(&self) -> Option<&Error> {
        match &*self.repr {
            Repr::Local(e) => Some(e),
            _ => None,
        }
    }

    /// The index of the input this error belongs to, for the items of
    /// [`imap`](crate::Pool::imap) and [`imap_unordered`](crate::Pool::imap_unordered)
    /// and the first failure of a [`map`](crate::Pool::map).
    pub fn input_index(&self) -> Option<usize> {
        self.input
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.input {
            write!(f, "input {i}: ")?;
        }
        match &*self.repr {
            Repr::Failed(TaskFailure::Panicked {
                message, location, ..
            }) => match location {
                Some(at) => write!(f, "task panicked at {at}: {message}"),
                None => write!(f, "task panicked: {message}"),
            },
            Repr::Failed(TaskFailure::BadArgs(m)) => {
                write!(
                    f,
                    "the process that ran the task could not decode its arguments: {m}"
                )
            }
            Repr::Failed(TaskFailure::BadResult(m)) => {
                write!(
                    f,
                    "the process that ran the task could not encode its result: {m}"
                )
            }
            Repr::Failed(TaskFailure::TooLarge { size, max }) => write!(
                f,
                "the task's result of {size} bytes exceeds the maximum frame size of {max} bytes"
            ),
            Repr::Failed(TaskFailure::Refused(m)) => write!(f, "the worker refused the task: {m}"),
            Repr::Failed(TaskFailure::Cancelled) | Repr::Cancelled => f.write_str("task cancelled"),
            Repr::WorkerLost {
                pid,
                cause,
                host,
                killed_because,
                answer_lost,
                called,
            } => {
                match (host, called) {
                    (_, true) => write!(f, "process {pid} died ({cause})")?,
                    (None, false) => write!(f, "worker process {pid} died ({cause})")?,
                    (Some(host), false) => {
                        write!(f, "worker process {pid} on host {host} was lost ({cause})")?
                    }
                }
                f.write_str(match (answer_lost, called) {
                    (_, true) => " before its target returned",
                    (false, false) => " before the task finished",
                    (true, false) => " after the task finished, before it sent the task's answer",
                })?;
                match killed_because {
                    Some(why) => write!(f, ": the pool killed it, as {why}"),
                    None => Ok(()),
                }
            }
            Repr::TimedOut { pid, timeout, host } => match host {
                None => write!(
                    f,
                    "task timed out after {timeout:?}: worker process {pid} was killed and \
                     replaced"
                ),
                Some(host) => write!(
                    f,
                    "task timed out after {timeout:?}: worker process {pid} on host {host} \
                     was killed and replaced"
                ),
            },
            Repr::PoolClosed => f.write_str("the pool is closed"),
            Repr::RuntimeGone => f.write_str(
                "the pool is closed: the tokio runtime it was built on has ended, and a pool \
                 serves only while that runtime runs",
            ),
            Repr::Local(e) => write!(f, "{e}"),
        }
    }
}

/// Named fields, as a `main` returning [`Result`] prints an error it ends with: what
/// happened (`panicked`, `worker_lost`, `timed_out`...) and its details, those that are
/// absent left out.
impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TaskError");
        if let Some(i) = self.input {
            d.field("input", &i);
        }
        match &*self.repr {
            Repr::Failed(TaskFailure::Panicked {
                message,
                location,
                backtrace,
            }) => {
                d.field("panicked", message);
                if let Some(at) = location {
                    d.field("location", at);
                }
                if let Some(bt) = backtrace {
                    d.field("backtrace", bt);
                }
            }
            Repr::Failed(failure) => {
                d.field("failed", failure);
            }
            Repr::WorkerLost {
                pid,
                cause,
                host,
                killed_because,
                answer_lost,
                called,
            } => {
                d.field(
                    if *called {
                        "process_lost"
                    } else {
                        "worker_lost"
                    },
                    cause,
                )
                .field("pid", pid);
                if let Some(host) = host {
                    d.field("host", host);
                }
                if let Some(why) = killed_because {
                    d.field("killed_because", why);
                }
                if *answer_lost {
                    d.field("answer_lost", answer_lost);
                }
            }
            Repr::TimedOut { pid, timeout, host } => {
                d.field("timed_out", timeout).field("pid", pid);
                if let Some(host) = host {
                    d.field("host", host);
                }
            }
            Repr::Cancelled => {
                d.field("cancelled", &true);
            }
            Repr::PoolClosed => {
                d.field("pool_closed", &true);
            }
            Repr::RuntimeGone => {
                d.field("pool_closed", &true);
                d.field("runtime_gone", &true);
            }
            Repr::Local(e) => {
                d.field("local", e);
            }
        }
        d.finish()
    }
}

impl std::error::Error for TaskError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_long_messages_debug_gives_its_length_not_its_bytes() {
        let e = Error::BufferTooShort {
            room: 16,
            message: vec![7; 1 << 20],
        };
        assert_eq!(
            format!("{e:?}"),
            "BufferTooShort { room: 16, message: <1048576 bytes> }"
        );
        // The other variants print as a derived `Debug` does.
        let e = Error::Start {
            name: "Process-1".into(),
            pid: 7,
            message: "boom".into(),
        };
        assert_eq!(
            format!("{e:?}"),
            "Start { name: \"Process-1\", pid: 7, message: \"boom\" }"
        );
        assert_eq!(format!("{:?}", Error::Closed), "Closed");
        assert_eq!(
            format!("{:?}", Error::Protocol("x".into())),
            "Protocol(\"x\")"
        );
        assert_eq!(
            format!("{:#?}", Error::LockOwnerDied { pid: 3 }),
            "LockOwnerDied {\n    pid: 3,\n}"
        );
    }

    #[test]
    fn a_task_errors_debug_names_its_fields() {
        let lost = TaskError::worker_lost_on(None, 4242, ExitCause::Signal(9)).at_input(3);
        assert_eq!(
            format!("{lost:?}"),
            "TaskError { input: 3, worker_lost: Signal(9), pid: 4242 }"
        );
        let host: Arc<str> = "n1".into();
        let why: Arc<str> = "its answer did not decode".into();
        let lost = TaskError::worker_lost_on(Some(&host), 7, ExitCause::HostLost)
            .killed_because(Some(&why))
            .answer_lost();
        assert_eq!(
            format!("{lost:?}"),
            "TaskError { worker_lost: HostLost, pid: 7, host: \"n1\", \
             killed_because: \"its answer did not decode\", answer_lost: true }"
        );
        // What `fn main() -> mp::Result<()>` prints when it ends with a task's error.
        let timed_out = Error::from(TaskError::timed_out(None, 7, Duration::from_millis(100)));
        assert_eq!(
            format!("{timed_out:?}"),
            "Task(TaskError { timed_out: 100ms, pid: 7 })"
        );
        let remote = TaskError::timed_out(Some(&"n1".into()), 7, Duration::from_millis(100));
        assert_eq!(
            format!("{remote:?}"),
            "TaskError { timed_out: 100ms, pid: 7, host: \"n1\" }"
        );
        let panicked = TaskError::failed(TaskFailure::Panicked {
            message: "three is bad".into(),
            location: Some("src/main.rs:4:5".into()),
            backtrace: None,
        });
        assert_eq!(
            format!("{panicked:?}"),
            "TaskError { panicked: \"three is bad\", location: \"src/main.rs:4:5\" }"
        );
    }
}
