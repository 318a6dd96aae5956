//! How an [`Error`] and a [`TaskError`] cross to another process: as serde values, so that a
//! pool task, a [`Process::call`](crate::Process::call) or a message may carry a
//! [`Result`](crate::Result), as Python pickles an exception raised in a worker (a
//! `queue.Empty` there is a `queue.Empty` in the caller).
//!
//! Each crosses as a form of its own with owned fields, written field by field, so that the
//! bytes say nothing of the types' layout. What the other side cannot have as it was comes
//! back as near as it can: an operating-system error as its `errno` (its kind and message
//! follow), another `io::Error` as its kind and message; the `&'static str` of a type name
//! is kept once per distinct name, for the first [`MAX_NAMES`] names, then given as
//! [`OTHER_TYPE`].

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Error, ExitCause, Repr, TaskError, TaskFailure};
use crate::start::StartMethod;

/// How many distinct type names a process keeps from the errors it decodes.
const MAX_NAMES: usize = 512;

/// The type name of a decoded error once [`MAX_NAMES`] names are kept.
const OTHER_TYPE: &str = "(a type named by another process)";

#[derive(Serialize, Deserialize)]
enum ErrorForm {
    Io {
        os: Option<i32>,
        kind: String,
        message: String,
    },
    InvalidArgument(String),
    Encode {
        type_name: String,
        message: String,
    },
    Decode {
        type_name: String,
        message: String,
    },
    FrameTooLarge {
        size: u64,
        max: u64,
    },
    Protocol(String),
    BinaryMismatch {
        ours: String,
        theirs: String,
    },
    Start {
        name: String,
        pid: u32,
        message: String,
    },
    Closed,
    Timeout,
    Manager(String),
    ManagerLost {
        address: Option<String>,
        pid: Option<u32>,
        cause: String,
    },
    LockOwnerDied {
        pid: u32,
    },
    NotHeld,
    NotOwner,
    SemaphoreOverRelease {
        bound: u32,
    },
    BrokenBarrier,
    IndexOutOfRange {
        index: u64,
        len: u64,
    },
    Task(TaskErrorForm),
    StartMethodSet {
        method: String,
    },
    InitializerFailed {
        pid: u32,
        message: String,
    },
    PoolRunning,
    ProcessRunning {
        pid: u32,
    },
    Empty,
    Full,
    HandleClosed {
        object: String,
    },
    TaskDoneTooManyTimes,
    Authentication {
        message: String,
    },
    BufferTooShort {
        room: u64,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    ShutDown,
}

#[derive(Serialize, Deserialize)]
struct TaskErrorForm {
    repr: TaskReprForm,
    input: Option<u64>,
}

#[derive(Serialize, Deserialize)]
enum TaskReprForm {
    Failed(TaskFailure),
    WorkerLost {
        pid: u32,
        cause: ExitCause,
        host: Option<String>,
        killed_because: Option<String>,
        answer_lost: bool,
        /// Last, and absent from the form of a sender that does not know it: `false`.
        #[serde(default)]
        called: bool,
    },
    TimedOut {
        pid: u32,
        timeout: Duration,
        host: Option<String>,
    },
    Cancelled,
    PoolClosed,
    Local(Box<ErrorForm>),
}

/// A `usize` as it crosses: the other side may be a 64-bit process whatever this one is.
fn wide(n: usize) -> u64 {
    n as u64
}

/// A `u64` that crossed, as a `usize`: saturated where a `usize` is narrower.
fn narrow(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl From<&Error> for ErrorForm {
    fn from(e: &Error) -> ErrorForm {
        match e {
            Error::Io(e) => ErrorForm::Io {
                os: e.raw_os_error(),
                kind: format!("{:?}", e.kind()),
                message: e.to_string(),
            },
            Error::InvalidArgument(m) => ErrorForm::InvalidArgument(m.clone()),
            Error::Encode { type_name, message } => ErrorForm::Encode {
                type_name: type_name.to_string(),
                message: message.clone(),
            },
            Error::Decode { type_name, message } => ErrorForm::Decode {
                type_name: type_name.to_string(),
                message: message.clone(),
            },
            Error::FrameTooLarge { size, max } => ErrorForm::FrameTooLarge {
                size: *size,
                max: wide(*max),
            },
            Error::Protocol(m) => ErrorForm::Protocol(m.clone()),
            Error::BinaryMismatch { ours, theirs } => ErrorForm::BinaryMismatch {
                ours: ours.clone(),
                theirs: theirs.clone(),
            },
            Error::Start { name, pid, message } => ErrorForm::Start {
                name: name.clone(),
                pid: *pid,
                message: message.clone(),
            },
            Error::Closed => ErrorForm::Closed,
            Error::Timeout => ErrorForm::Timeout,
            Error::Manager(m) => ErrorForm::Manager(m.clone()),
            Error::ManagerLost {
                address,
                pid,
                cause,
            } => ErrorForm::ManagerLost {
                address: address.clone(),
                pid: *pid,
                cause: cause.clone(),
            },
            Error::LockOwnerDied { pid } => ErrorForm::LockOwnerDied { pid: *pid },
            Error::NotHeld => ErrorForm::NotHeld,
            Error::NotOwner => ErrorForm::NotOwner,
            Error::SemaphoreOverRelease { bound } => {
                ErrorForm::SemaphoreOverRelease { bound: *bound }
            }
            Error::BrokenBarrier => ErrorForm::BrokenBarrier,
            Error::IndexOutOfRange { index, len } => ErrorForm::IndexOutOfRange {
                index: wide(*index),
                len: wide(*len),
            },
            Error::Task(e) => ErrorForm::Task(TaskErrorForm::from(e)),
            Error::StartMethodSet { method } => ErrorForm::StartMethodSet {
                method: method.to_string(),
            },
            Error::InitializerFailed { pid, message } => ErrorForm::InitializerFailed {
                pid: *pid,
                message: message.clone(),
            },
            Error::PoolRunning => ErrorForm::PoolRunning,
            Error::ProcessRunning { pid } => ErrorForm::ProcessRunning { pid: *pid },
            Error::Empty => ErrorForm::Empty,
            Error::Full => ErrorForm::Full,
            Error::HandleClosed { object } => ErrorForm::HandleClosed {
                object: object.to_string(),
            },
            Error::TaskDoneTooManyTimes => ErrorForm::TaskDoneTooManyTimes,
            Error::Authentication { message } => ErrorForm::Authentication {
                message: message.clone(),
            },
            Error::BufferTooShort { room, message } => ErrorForm::BufferTooShort {
                room: wide(*room),
                message: message.clone(),
            },
            Error::ShutDown => ErrorForm::ShutDown,
        }
    }
}

impl From<ErrorForm> for Error {
    fn from(f: ErrorForm) -> Error {
        match f {
            ErrorForm::Io { os, kind, message } => Error::Io(Arc::new(match os {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io_kind(&kind), message),
            })),
            ErrorForm::InvalidArgument(m) => Error::InvalidArgument(m),
            ErrorForm::Encode { type_name, message } => Error::Encode {
                type_name: type_name_of(type_name),
                message,
            },
            ErrorForm::Decode { type_name, message } => Error::Decode {
                type_name: type_name_of(type_name),
                message,
            },
            ErrorForm::FrameTooLarge { size, max } => Error::FrameTooLarge {
                size,
                max: narrow(max),
            },
            ErrorForm::Protocol(m) => Error::Protocol(m),
            ErrorForm::BinaryMismatch { ours, theirs } => Error::BinaryMismatch { ours, theirs },
            ErrorForm::Start { name, pid, message } => Error::Start { name, pid, message },
            ErrorForm::Closed => Error::Closed,
            ErrorForm::Timeout => Error::Timeout,
            ErrorForm::Manager(m) => Error::Manager(m),
            ErrorForm::ManagerLost {
                address,
                pid,
                cause,
            } => Error::ManagerLost {
                address,
                pid,
                cause,
            },
            ErrorForm::LockOwnerDied { pid } => Error::LockOwnerDied { pid },
            ErrorForm::NotHeld => Error::NotHeld,
            ErrorForm::NotOwner => Error::NotOwner,
            ErrorForm::SemaphoreOverRelease { bound } => Error::SemaphoreOverRelease { bound },
            ErrorForm::BrokenBarrier => Error::BrokenBarrier,
            ErrorForm::IndexOutOfRange { index, len } => Error::IndexOutOfRange {
                index: narrow(index),
                len: narrow(len),
            },
            ErrorForm::Task(t) => Error::Task(TaskError::from(t)),
            ErrorForm::StartMethodSet { method } => Error::StartMethodSet {
                method: method.parse().map_or("unknown", StartMethod::name),
            },
            ErrorForm::InitializerFailed { pid, message } => {
                Error::InitializerFailed { pid, message }
            }
            ErrorForm::PoolRunning => Error::PoolRunning,
            ErrorForm::ProcessRunning { pid } => Error::ProcessRunning { pid },
            ErrorForm::Empty => Error::Empty,
            ErrorForm::Full => Error::Full,
            ErrorForm::HandleClosed { object } => Error::HandleClosed {
                object: type_name_of(object),
            },
            ErrorForm::TaskDoneTooManyTimes => Error::TaskDoneTooManyTimes,
            ErrorForm::Authentication { message } => Error::Authentication { message },
            ErrorForm::BufferTooShort { room, message } => Error::BufferTooShort {
                room: narrow(room),
                message,
            },
            ErrorForm::ShutDown => Error::ShutDown,
        }
    }
}

impl From<&TaskError> for TaskErrorForm {
    fn from(e: &TaskError) -> TaskErrorForm {
        let repr = match &*e.repr {
            Repr::Failed(f) => TaskReprForm::Failed(f.clone()),
            Repr::WorkerLost {
                pid,
                cause,
                host,
                killed_because,
                answer_lost,
                called,
            } => TaskReprForm::WorkerLost {
                pid: *pid,
                cause: *cause,
                host: host.as_deref().map(str::to_string),
                killed_because: killed_because.as_deref().map(str::to_string),
                answer_lost: *answer_lost,
                called: *called,
            },
            Repr::TimedOut { pid, timeout, host } => TaskReprForm::TimedOut {
                pid: *pid,
                timeout: *timeout,
                host: host.as_deref().map(str::to_string),
            },
            Repr::Cancelled => TaskReprForm::Cancelled,
            Repr::PoolClosed | Repr::RuntimeGone => TaskReprForm::PoolClosed,
            Repr::Local(e) => TaskReprForm::Local(Box::new(ErrorForm::from(e))),
        };
        TaskErrorForm {
            repr,
            input: e.input.map(wide),
        }
    }
}

impl From<TaskErrorForm> for TaskError {
    fn from(f: TaskErrorForm) -> TaskError {
        let repr = match f.repr {
            TaskReprForm::Failed(f) => Repr::Failed(f),
            TaskReprForm::WorkerLost {
                pid,
                cause,
                host,
                killed_because,
                answer_lost,
                called,
            } => Repr::WorkerLost {
                pid,
                cause,
                host: host.map(Arc::from),
                killed_because: killed_because.map(Arc::from),
                answer_lost,
                called,
            },
            TaskReprForm::TimedOut { pid, timeout, host } => Repr::TimedOut {
                pid,
                timeout,
                host: host.map(Arc::from),
            },
            TaskReprForm::Cancelled => Repr::Cancelled,
            TaskReprForm::PoolClosed => Repr::PoolClosed,
            TaskReprForm::Local(e) => Repr::Local(Error::from(*e)),
        };
        TaskError {
            repr: Box::new(repr),
            input: f.input.map(narrow),
        }
    }
}

/// An [`Error`] crosses to another process as its form (see the module's docs).
impl Serialize for Error {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ErrorForm::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Error {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Error, D::Error> {
        ErrorForm::deserialize(d).map(Error::from)
    }
}

/// A [`TaskError`] crosses to another process as its form (see the module's docs).
impl Serialize for TaskError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        TaskErrorForm::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TaskError, D::Error> {
        TaskErrorForm::deserialize(d).map(TaskError::from)
    }
}

/// A type name decoded from another process, as the `&'static str` the variants hold (see
/// [`TypeNames`]).
fn type_name_of(name: String) -> &'static str {
    static NAMES: Mutex<Option<TypeNames>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    names
        .get_or_insert_with(|| TypeNames::new(MAX_NAMES))
        .keep(name)
}

/// The type names a process decoded: each distinct name is kept once, up to a bound, so
/// that a peer sending ever new names cannot grow the process without bound.
struct TypeNames {
    kept: HashSet<&'static str>,
    max: usize,
}

impl TypeNames {
    fn new(max: usize) -> TypeNames {
        TypeNames {
            kept: HashSet::new(),
            max,
        }
    }

    /// `name` as kept, or [`OTHER_TYPE`] once the bound is reached.
    fn keep(&mut self, name: String) -> &'static str {
        if let Some(kept) = self.kept.get(name.as_str()) {
            return kept;
        }
        if self.kept.len() >= self.max {
            return OTHER_TYPE;
        }
        let kept: &'static str = Box::leak(name.into_boxed_str());
        self.kept.insert(kept);
        kept
    }
}

/// The `io::ErrorKind` whose `Debug` name is `name`; `Other` for a kind this side does not
/// know.
fn io_kind(name: &str) -> io::ErrorKind {
    use io::ErrorKind as K;
    const KINDS: [io::ErrorKind; 38] = [
        K::NotFound,
        K::PermissionDenied,
        K::ConnectionRefused,
        K::ConnectionReset,
        K::HostUnreachable,
        K::NetworkUnreachable,
        K::ConnectionAborted,
        K::NotConnected,
        K::AddrInUse,
        K::AddrNotAvailable,
        K::NetworkDown,
        K::BrokenPipe,
        K::AlreadyExists,
        K::WouldBlock,
        K::NotADirectory,
        K::IsADirectory,
        K::DirectoryNotEmpty,
        K::ReadOnlyFilesystem,
        K::StaleNetworkFileHandle,
        K::InvalidInput,
        K::InvalidData,
        K::TimedOut,
        K::WriteZero,
        K::StorageFull,
        K::NotSeekable,
        K::QuotaExceeded,
        K::FileTooLarge,
        K::ResourceBusy,
        K::ExecutableFileBusy,
        K::Deadlock,
        K::CrossesDevices,
        K::TooManyLinks,
        K::InvalidFilename,
        K::ArgumentListTooLong,
        K::Interrupted,
        K::Unsupported,
        K::UnexpectedEof,
        K::OutOfMemory,
    ];
    KINDS
        .into_iter()
        .find(|k| format!("{k:?}") == name)
        .unwrap_or(K::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: &Error) -> Error {
        let bytes = match rmp_serde::to_vec(e) {
            Ok(b) => b,
            Err(err) => panic!("{e:?} did not encode: {err}"),
        };
        match rmp_serde::from_slice(&bytes) {
            Ok(back) => back,
            Err(err) => panic!("{e:?} did not decode: {err}"),
        }
    }

    fn every_error() -> Vec<Error> {
        let failed = TaskError::failed(TaskFailure::Panicked {
            message: "boom".into(),
            location: Some("src/x.rs:1:2".into()),
            backtrace: None,
        });
        let host: Arc<str> = Arc::from("node7");
        vec![
            Error::from(io::Error::from_raw_os_error(24)),
            Error::from(io::Error::new(io::ErrorKind::TimedOut, "the link is slow")),
            Error::from(io::Error::other("something else")),
            Error::InvalidArgument("n".into()),
            Error::Encode {
                type_name: "my::Type",
                message: "m".into(),
            },
            Error::Decode {
                type_name: "my::Other",
                message: "m".into(),
            },
            Error::FrameTooLarge { size: 9, max: 8 },
            Error::Protocol("p".into()),
            Error::BinaryMismatch {
                ours: "aa".into(),
                theirs: "bb".into(),
            },
            Error::Start {
                name: "Process-1".into(),
                pid: 7,
                message: "m".into(),
            },
            Error::Closed,
            Error::Timeout,
            Error::Manager("m".into()),
            Error::ManagerLost {
                address: Some("h:1".into()),
                pid: Some(3),
                cause: "c".into(),
            },
            Error::LockOwnerDied { pid: 4 },
            Error::NotHeld,
            Error::NotOwner,
            Error::SemaphoreOverRelease { bound: 2 },
            Error::BrokenBarrier,
            Error::IndexOutOfRange { index: 5, len: 3 },
            Error::Task(failed.clone().at_input(3)),
            Error::Task(
                TaskError::worker_lost_on(Some(&host), 9, ExitCause::HostLost)
                    .killed_because(Some(&Arc::from("out of memory")))
                    .answer_lost(),
            ),
            Error::Task(TaskError::timed_out(None, 9, Duration::from_millis(1500))),
            Error::Task(TaskError::cancelled()),
            Error::Task(TaskError::pool_closed()),
            Error::Task(TaskError::local(Error::Full)),
            Error::StartMethodSet {
                method: "forkserver",
            },
            Error::InitializerFailed {
                pid: 1,
                message: "m".into(),
            },
            Error::PoolRunning,
            Error::ProcessRunning { pid: 2 },
            Error::Empty,
            Error::Full,
            Error::HandleClosed { object: "queue" },
            Error::TaskDoneTooManyTimes,
            Error::Authentication {
                message: "m".into(),
            },
            Error::BufferTooShort {
                room: 2,
                message: vec![1, 2, 3],
            },
            Error::ShutDown,
        ]
    }

    #[test]
    fn every_error_crosses_as_itself() {
        for e in every_error() {
            let back = round_trip(&e);
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
            assert_eq!(back.to_string(), e.to_string());
        }
    }

    #[test]
    fn an_os_error_keeps_its_kind_and_code() {
        let e = round_trip(&Error::from(io::Error::from_raw_os_error(2)));
        let Error::Io(io) = e else {
            panic!("{e:?} is no longer an Io error");
        };
        assert_eq!(io.raw_os_error(), Some(2));
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        let e = round_trip(&Error::from(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "gone",
        )));
        let Error::Io(io) = e else {
            panic!("{e:?} is no longer an Io error");
        };
        assert_eq!(
            (io.kind(), io.to_string()),
            (io::ErrorKind::BrokenPipe, "gone".into())
        );
    }

    #[test]
    fn a_task_error_keeps_what_it_is_asked() {
        let e = TaskError::worker_lost_on(None, 42, ExitCause::Signal(9)).at_input(7);
        let bytes = rmp_serde::to_vec(&e).unwrap_or_default();
        let back: TaskError = match rmp_serde::from_slice(&bytes) {
            Ok(b) => b,
            Err(err) => panic!("did not decode: {err}"),
        };
        assert!(back.is_worker_lost());
        assert_eq!(back.worker_pid(), Some(42));
        assert_eq!(back.exit_cause(), Some(ExitCause::Signal(9)));
        assert_eq!(back.input_index(), Some(7));
    }

    /// A `Process::call` child's death says so, not a pool worker's, in this process and
    /// in another; a form from a sender that does not know the difference reads as a pool
    /// worker's.
    #[test]
    fn a_called_process_lost_is_told_as_such_across_processes() {
        let e = TaskError::called_process_lost(42, ExitCause::Signal(9));
        let bytes = rmp_serde::to_vec(&e).unwrap_or_default();
        let back: TaskError = match rmp_serde::from_slice(&bytes) {
            Ok(b) => b,
            Err(err) => panic!("did not decode: {err}"),
        };
        for e in [e, back] {
            assert!(e.is_worker_lost());
            assert_eq!(
                e.to_string(),
                "process 42 died (signal 9 (SIGKILL)) before its target returned"
            );
        }

        #[derive(Serialize)]
        enum OldRepr {
            #[allow(dead_code)]
            Failed(TaskFailure),
            WorkerLost {
                pid: u32,
                cause: ExitCause,
                host: Option<String>,
                killed_because: Option<String>,
                answer_lost: bool,
            },
        }
        #[derive(Serialize)]
        struct OldForm {
            repr: OldRepr,
            input: Option<u64>,
        }
        let old = OldForm {
            repr: OldRepr::WorkerLost {
                pid: 42,
                cause: ExitCause::Signal(9),
                host: None,
                killed_because: None,
                answer_lost: false,
            },
            input: None,
        };
        let bytes = rmp_serde::to_vec(&old).unwrap_or_default();
        let back: TaskError = match rmp_serde::from_slice(&bytes) {
            Ok(b) => b,
            Err(err) => panic!("the old form did not decode: {err}"),
        };
        assert_eq!(
            back.to_string(),
            "worker process 42 died (signal 9 (SIGKILL)) before the task finished"
        );
    }

    #[test]
    fn type_names_from_other_processes_are_kept_within_a_bound() {
        let mut names = TypeNames::new(3);
        let first = names.keep("Kept".into());
        assert!(std::ptr::eq(first, names.keep("Kept".into())));
        assert_eq!(names.keep("Two".into()), "Two");
        assert_eq!(names.keep("Three".into()), "Three");
        assert_eq!(names.keep("OneTooMany".into()), OTHER_TYPE);
        // Those kept stay.
        assert!(std::ptr::eq(first, names.keep("Kept".into())));
    }
}
