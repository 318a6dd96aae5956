//! The manager's protocol as plain data: what a connection asks, what the server answers.
//!
//! Every frame a client sends is `(request id, Request)`; every frame the server sends is
//! `(request id, Reply)`. Requests on one connection may be answered out of order (a `get`
//! on an empty queue waits while later requests are answered), so a reply names its
//! request. Id 0 is the connection's own: heartbeats, and the answer to a frame that could
//! not be decoded. Values travel as MessagePack bytes that only proxies decode, so a client
//! need not be the same binary as the server: what both sides must agree on is checked per
//! object by its [`Tag`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::wire::FrameBuf;

/// An encoded value.
pub(super) type Bytes = ByteBuf;

/// How often each side writes something on an idle connection; a side that hears nothing
/// for [`HEARTBEAT_MISSES`] intervals takes the connection for lost.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);
/// See [`HEARTBEAT`].
pub(super) const HEARTBEAT_MISSES: u32 = 3;

/// What a proxy is: its type's name and a fingerprint of it. A proxy asking for an object
/// by name must carry the tag the object was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tag {
    pub(super) name: String,
    pub(super) fingerprint: u64,
}

impl Tag {
    pub(super) fn of<P: ?Sized>() -> Tag {
        let name = std::any::type_name::<P>().to_string();
        // FNV-1a: stable across processes and builds, unlike `DefaultHasher`.
        let fingerprint = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Tag { name, fingerprint }
    }
}

/// What a connection asks.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// The first request of a connection: who is calling (its pid, for the error a lock
    /// it leaves behind reports), and the largest frame it reads (its maximum frame size,
    /// by which the server measures its replies). Sent again when that size changes.
    /// Answered, under id 0, with [`Reply::Server`].
    Hello {
        pid: u32,
        #[serde(default)]
        max_frame: Option<u64>,
    },
    /// Nothing: keeps an idle connection known to be alive.
    Ping,
    /// Gives up on a request still waiting (a dropped `get`, `lock`, `wait`).
    Cancel(u64),
    /// A proxy to the object lives on this connection (`borrowed`: one received from
    /// another process, whose loan it settles). Unanswered, like the next two.
    Incref {
        id: u64,
        borrowed: bool,
    },
    /// The last proxy to the object on this connection is gone.
    Decref(u64),
    /// A proxy to the object is on its way to another process: keep the object until that
    /// process says it holds it.
    Lend(u64),
    /// The number of objects the server holds.
    Count,
    Create(Initial, Tag),
    /// Names an object so that other clients can [`Lookup`](Request::Lookup) it.
    Register(String, u64),
    Lookup(String, Tag),
    Dict(u64, DictOp),
    List(u64, ListOp),
    Value(u64, ValueOp),
    Array(u64, ArrayOp),
    Namespace(u64, NamespaceOp),
    Queue(u64, QueueOp),
    Lock(u64, LockOp),
    Semaphore(u64, SemaphoreOp),
    Event(u64, EventOp),
    Condition(u64, ConditionOp),
    Barrier(u64, BarrierOp),
    /// A call on a value of a registered type: its encoded request.
    User(u64, Bytes),
    /// Make a named shared memory segment of this many bytes, keep its name, and remove it
    /// when the server stops (Python's `SharedMemory(create=True)` then `track_segment`, in
    /// one step: no process can die between them). Only a `SharedMemoryManager`'s server
    /// keeps segments. Answered with the name, as `Names` of one.
    CreateSegment(u64),
    /// The names of the segments kept, in the order they came (Python's `list_segments`).
    Segments,
    /// The connection holds no proxy any more, and stays open for the proxies to come (a
    /// pool worker's, see `keep_links_open`): the locks it holds are released as they are
    /// when it closes, and their next acquirer is told. Unanswered.
    LetGoLocks,
}

impl Request {
    /// Whether a request that may wait is answered by one attempt when it need not wait (a
    /// condition's or a barrier's wait always waits).
    pub(super) fn tried_at_once(&self) -> bool {
        matches!(
            self,
            Request::Queue(..)
                | Request::Lock(..)
                | Request::Semaphore(..)
                | Request::Event(..)
                | Request::Condition(_, ConditionOp::Lock(_))
        )
    }

    /// Whether the server replies to it: not to what a connection says of itself (who it
    /// is, that it lives, the references it takes, drops and lends).
    pub(super) fn is_answered(&self) -> bool {
        !matches!(
            self,
            Request::Hello { .. }
                | Request::Ping
                | Request::Incref { .. }
                | Request::Decref(_)
                | Request::Lend(_)
                | Request::LetGoLocks
        )
    }

    /// Whether the request may wait (and so runs beside the connection's other requests).
    pub(super) fn may_wait(&self) -> bool {
        match self {
            Request::Queue(_, op) => matches!(
                op,
                QueueOp::Put { .. }
                    | QueueOp::Get { .. }
                    | QueueOp::Join
                    | QueueOp::Shutdown { immediate: true }
            ),
            Request::User(..)
            | Request::Lock(_, LockOp::Acquire { .. })
            | Request::Semaphore(_, SemaphoreOp::Acquire { .. })
            | Request::Event(_, EventOp::Wait { .. })
            | Request::Barrier(_, BarrierOp::Wait { .. }) => true,
            Request::Condition(_, op) => matches!(
                op,
                ConditionOp::Lock(LockOp::Acquire { .. }) | ConditionOp::Wait { .. }
            ),
            _ => false,
        }
    }
}

/// How long a waiting request waits: not at all, for ever, or this long.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) enum Wait {
    No,
    Forever,
    For(Duration),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Initial {
    Dict(Vec<(Bytes, Bytes)>),
    List(Vec<Bytes>),
    Value(Bytes),
    /// An array: a list whose length is fixed.
    Array(Vec<Bytes>),
    Namespace,
    /// A queue of at most this many items (0: unbounded); joinable or not.
    Queue {
        maxsize: usize,
        joinable: bool,
    },
    /// A lock; re-entrant or not.
    Lock {
        reentrant: bool,
    },
    /// A semaphore with this value; bounded by it or not.
    Semaphore {
        value: u32,
        bounded: bool,
    },
    Event,
    /// A condition over a lock of its own, re-entrant or not.
    Condition {
        reentrant: bool,
    },
    /// A condition over the lock object `lock`, which the two share (Python's
    /// `manager.Condition(lock)`).
    ConditionOver {
        lock: u64,
    },
    Barrier {
        parties: u32,
    },
    /// A value of the registered type of this name, made by its `Default`.
    User(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum DictOp {
    Insert(Bytes, Bytes),
    Get(Bytes),
    Remove(Bytes),
    Contains(Bytes),
    Len,
    Items,
    Clear,
    /// `d.setdefault(key, default)`: the value now under the key.
    SetDefault(Bytes, Bytes),
    /// `d.update(pairs)`.
    Update(Vec<(Bytes, Bytes)>),
    /// `d.popitem()`: the latest inserted pair, or none.
    PopItem,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ListOp {
    Append(Bytes),
    Extend(Vec<Bytes>),
    Get(i64),
    Set(i64, Bytes),
    Insert(i64, Bytes),
    Pop(i64),
    Len,
    Reverse,
    Items,
    Clear,
    /// `l.index(value)`: the first position of an equal encoding, if any.
    Index(Bytes),
    /// `l.count(value)`.
    Count(Bytes),
    /// `l.remove(value)`: takes out the first equal encoding; whether there was one.
    Remove(Bytes),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ValueOp {
    Get,
    Set(Bytes),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ArrayOp {
    Get(usize),
    Set(usize, Bytes),
    Len,
    Items,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum NamespaceOp {
    Get(String),
    Set(String, Bytes),
    Remove(String),
    Items,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum QueueOp {
    Put {
        item: Bytes,
        wait: Wait,
    },
    Get {
        wait: Wait,
    },
    Len,
    MaxSize,
    /// Whether a `put` would wait now.
    Full,
    TaskDone,
    Unfinished,
    Join,
    /// Puts back, at the front, an item a withdrawn `get` took (see [`Undo`]); at the back
    /// once the queue is a ring.
    Unget(Bytes),
    /// Asks for the queue's ring, to reach it directly (a client on this machine).
    Attach,
    /// Shuts the queue down (see [`Queue::shutdown`](crate::Queue::shutdown)); `immediate`
    /// also drops the items left, and answers how many.
    Shutdown {
        immediate: bool,
    },
}

/// Operations of a lock. The `owner` of a re-entrant lock is the calling task (see
/// `lock.rs`); a plain lock ignores it.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum LockOp {
    Acquire {
        owner: u64,
        wait: Wait,
    },
    Release {
        owner: u64,
    },
    /// Releases `levels` levels (a plain lock wholly) if the lock's current hold is `hold`:
    /// what a withdrawn `acquire` (one level) or condition `wait` that took the lock back
    /// gives back, the levels it was granted, and not those its task took after it, nor a
    /// hold that began after that one ended (a plain lock's, freed by another client's
    /// `release`). `owner` is the caller's task, as in `Acquire`.
    ReleaseLevels {
        owner: u64,
        levels: u32,
        hold: u64,
    },
    Holder,
    /// Gives back the news that the holder `pid` let go of the lock unreleased, which a
    /// withdrawn `acquire` (or condition `wait`) was answered with, so that the next
    /// acquirer hears it: unless the lock was taken since.
    Retell {
        pid: u32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum SemaphoreOp {
    Acquire { wait: Wait },
    Release(u32),
    Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum EventOp {
    Set,
    Clear,
    IsSet,
    Wait { wait: Wait },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ConditionOp {
    Lock(LockOp),
    /// Releases the lock, waits for a notification, takes the lock again.
    Wait {
        owner: u64,
        wait: Wait,
    },
    /// Wakes up to `n` waiters; `owner` (with the connection) must hold the lock.
    Notify {
        n: u32,
        owner: u64,
    },
    NotifyAll {
        owner: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum BarrierOp {
    Wait { wait: Wait },
    Abort,
    Reset,
    Parties,
    NWaiting,
    Broken,
}

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Done,
    /// A lock's `Acquire` granted: the number of the hold it began or took a level of, which
    /// a give-back names (see [`Undo`]).
    Held(u64),
    Id(u64),
    Bool(bool),
    /// The answer to a condition's `wait`: whether it was notified, and the levels of the
    /// lock it took back and the number of the hold it began (what a withdrawn wait gives
    /// back, see [`Undo`]).
    Waited {
        notified: bool,
        levels: u32,
        hold: u64,
    },
    Len(u64),
    Item(Option<Bytes>),
    /// A position in a list, if the value is there.
    Position(Option<u64>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    Named(Vec<(String, Bytes)>),
    /// Names of shared memory segments.
    Names(Vec<String>),
    /// A queue's ring, its descriptors carried with the frame.
    Ring(super::queue::Ring),
    /// The server is alive (unasked, on an idle connection).
    Heartbeat,
    /// The answer to a [`Request::Cancel`]: it comes after any reply to the cancelled
    /// request, so that the client knows no reply of it is still to come.
    Withdrawn,
    Failed(Failure),
    /// Who the server is (its pid), for the errors of a client that loses it, and the
    /// largest frame it reads, by which the client measures its requests (the server ends a
    /// connection that sends it a frame over it): the answer to [`Request::Hello`], under id
    /// 0.
    Server {
        pid: u32,
        #[serde(default)]
        max_frame: Option<u64>,
    },
}

/// Why a request failed: the crate's own errors, so that a proxy fails as the primitive it
/// stands for does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Failure {
    /// Anything else (an index out of range, a wrong type).
    Message(String),
    /// The server holds no object of this id.
    Missing(u64),
    Empty,
    Full,
    Timeout,
    NotHeld,
    NotOwner,
    LockOwnerDied {
        pid: u32,
    },
    SemaphoreOverRelease {
        bound: u32,
    },
    BrokenBarrier,
    TaskDoneTooManyTimes,
    IndexOutOfRange {
        index: usize,
        len: usize,
    },
    /// The server's initializer failed: the only answer its starting process gets.
    InitializerFailed {
        pid: u32,
        message: String,
    },
    /// The reply would have been a frame over the maximum frame size.
    FrameTooLarge {
        size: u64,
        max: usize,
    },
    ShutDown,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Message(m) => Error::Manager(m),
            Failure::Missing(id) => {
                Error::Manager(format!("the manager holds no such object (#{id})"))
            }
            Failure::Empty => Error::Empty,
            Failure::Full => Error::Full,
            Failure::Timeout => Error::Timeout,
            Failure::NotHeld => Error::NotHeld,
            Failure::NotOwner => Error::NotOwner,
            Failure::LockOwnerDied { pid } => Error::LockOwnerDied { pid },
            Failure::SemaphoreOverRelease { bound } => Error::SemaphoreOverRelease { bound },
            Failure::BrokenBarrier => Error::BrokenBarrier,
            Failure::TaskDoneTooManyTimes => Error::TaskDoneTooManyTimes,
            Failure::IndexOutOfRange { index, len } => Error::IndexOutOfRange { index, len },
            Failure::InitializerFailed { pid, message } => {
                Error::InitializerFailed { pid, message }
            }
            Failure::FrameTooLarge { size, max } => Error::FrameTooLarge { size, max },
            Failure::ShutDown => Error::ShutDown,
        }
    }
}

/// The crate's error as a reply reports it: its own kind where a proxy has one, else its
/// message.
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        match e {
            Error::Manager(m) => Failure::Message(m),
            Error::Empty => Failure::Empty,
            Error::Full => Failure::Full,
            Error::Timeout => Failure::Timeout,
            Error::NotHeld => Failure::NotHeld,
            Error::NotOwner => Failure::NotOwner,
            Error::LockOwnerDied { pid } => Failure::LockOwnerDied { pid },
            Error::SemaphoreOverRelease { bound } => Failure::SemaphoreOverRelease { bound },
            Error::BrokenBarrier => Failure::BrokenBarrier,
            Error::TaskDoneTooManyTimes => Failure::TaskDoneTooManyTimes,
            Error::IndexOutOfRange { index, len } => Failure::IndexOutOfRange { index, len },
            Error::InitializerFailed { pid, message } => {
                Failure::InitializerFailed { pid, message }
            }
            Error::FrameTooLarge { size, max } => Failure::FrameTooLarge { size, max },
            Error::ShutDown => Failure::ShutDown,
            e => Failure::Message(e.to_string()),
        }
    }
}

impl Reply {
    pub(super) fn message(m: impl Into<String>) -> Reply {
        Reply::Failed(Failure::Message(m.into()))
    }

    /// This process, as a server tells its clients: [`Reply::Server`].
    pub(super) fn server() -> Reply {
        Reply::Server {
            pid: std::process::id(),
            max_frame: Some(crate::max_frame_size() as u64),
        }
    }
}

/// The largest frame the other side of a connection reads, as it said (0: not said; a side
/// that does not say is measured by this process's limit alone): a client's, as its
/// [`Request::Hello`] said, by which the server measures its replies; a server's, as its
/// [`Reply::Server`] said, by which the client measures its requests.
#[derive(Debug, Default)]
pub(super) struct PeerMax(AtomicU64);

impl PeerMax {
    pub(super) fn set(&self, max: Option<u64>) {
        self.0.store(max.unwrap_or(0), Ordering::Relaxed);
    }

    /// Whether the other side has said.
    pub(super) fn said(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Fails for a frame over what the other side reads.
    pub(super) fn check(&self, frame: &FrameBuf) -> Result<()> {
        let max = self.0.load(Ordering::Relaxed);
        let size = frame.body_len() as u64;
        if max == 0 || size <= max {
            return Ok(());
        }
        Err(Error::FrameTooLarge {
            size,
            max: usize::try_from(max).unwrap_or(usize::MAX),
        })
    }
}

/// What a withdrawn request that was carried out all the same must give back: the item a
/// `get` took, the lock or the unit an `acquire` was granted, the lock a condition's `wait`
/// took back (a withdrawn wait leaves the lock released, as the crate's `Condition` does),
/// the news of a dead holder an `acquire` or `wait` was told ([`LockOp::Retell`]).
/// A lock is given back by the number of the hold its grant names, so that only that hold
/// is released, and nothing if it has ended: a plain lock may be released by anyone, and
/// taken by another client before the give-back arrives.
/// The server undoes it when it sees the cancel before replying, and when the reply cannot
/// be sent (over the client's frame limit); the client, when the reply was already on its
/// way.
#[derive(Debug, Clone, Copy)]
pub(super) enum Undo {
    Get(u64),
    Lock {
        id: u64,
        owner: u64,
        condition: bool,
    },
    Semaphore(u64),
    ConditionWait {
        id: u64,
        owner: u64,
    },
}

impl Request {
    /// Whether it may leave a lock held by its connection: a lock's (or a condition's)
    /// acquire, or a condition's wait, which takes the lock back.
    pub(super) fn takes_a_lock(&self) -> bool {
        matches!(
            Undo::of(self),
            Some(Undo::Lock { .. } | Undo::ConditionWait { .. })
        )
    }
}

impl Undo {
    /// The undo a request needs if it is withdrawn, if any.
    pub(super) fn of(req: &Request) -> Option<Undo> {
        match req {
            Request::Queue(id, QueueOp::Get { .. }) => Some(Undo::Get(*id)),
            Request::Lock(id, LockOp::Acquire { owner, .. }) => Some(Undo::Lock {
                id: *id,
                owner: *owner,
                condition: false,
            }),
            Request::Condition(id, ConditionOp::Lock(LockOp::Acquire { owner, .. })) => {
                Some(Undo::Lock {
                    id: *id,
                    owner: *owner,
                    condition: true,
                })
            }
            Request::Semaphore(id, SemaphoreOp::Acquire { .. }) => Some(Undo::Semaphore(*id)),
            Request::Condition(id, ConditionOp::Wait { owner, .. }) => Some(Undo::ConditionWait {
                id: *id,
                owner: *owner,
            }),
            _ => None,
        }
    }

    /// The request that gives back what `reply` granted; `None` if it granted nothing.
    pub(super) fn request(self, reply: Reply) -> Option<Request> {
        match (self, reply) {
            (Undo::Get(id), Reply::Item(Some(item))) => {
                Some(Request::Queue(id, QueueOp::Unget(item)))
            }
            (
                Undo::Lock {
                    id,
                    owner,
                    condition,
                },
                Reply::Held(hold),
            ) => {
                let op = LockOp::ReleaseLevels {
                    owner,
                    levels: 1,
                    hold,
                };
                Some(match condition {
                    true => Request::Condition(id, ConditionOp::Lock(op)),
                    false => Request::Lock(id, op),
                })
            }
            // Told that the lock's holder let go of it unreleased: the news goes back, for
            // the next acquirer.
            (Undo::Lock { id, condition, .. }, Reply::Failed(Failure::LockOwnerDied { pid })) => {
                Some(match condition {
                    true => Request::Condition(id, ConditionOp::Lock(LockOp::Retell { pid })),
                    false => Request::Lock(id, LockOp::Retell { pid }),
                })
            }
            (Undo::ConditionWait { id, .. }, Reply::Failed(Failure::LockOwnerDied { pid })) => {
                Some(Request::Condition(
                    id,
                    ConditionOp::Lock(LockOp::Retell { pid }),
                ))
            }
            (Undo::Semaphore(id), Reply::Bool(true)) => {
                Some(Request::Semaphore(id, SemaphoreOp::Release(1)))
            }
            // Notified or timed out, a wait that answered holds the lock again, at the
            // levels it took back.
            (Undo::ConditionWait { id, owner }, Reply::Waited { levels, hold, .. }) => {
                Some(Request::Condition(
                    id,
                    ConditionOp::Lock(LockOp::ReleaseLevels {
                        owner,
                        levels,
                        hold,
                    }),
                ))
            }
            _ => None,
        }
    }
}
