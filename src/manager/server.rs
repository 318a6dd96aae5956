//! The manager's server: it holds the shared objects and answers every connection.
//!
//! # Shape
//! [`State`] holds the objects; [`State::handle`] answers a request that never waits, as a
//! pure function (unit-tested below without processes). A request that may wait (a `get` on
//! an empty queue, a `lock` of a held lock, an event's `wait`) is tried the same way by
//! [`State::attempt`]; when it cannot be carried out yet, the attempt names the object's
//! `Notify` to wait on, and the request's own task waits for it (with the state's mutex
//! released, registered before the release, so that no wake-up is lost) and tries again. A
//! waiting request thus costs a parked task and nothing else: the server, the connection's
//! other requests and other clients go on. Nothing polls.
//!
//! # Connections
//! Connections come from the registration socket (a local manager: each message carries the
//! server's end of a fresh socket pair) and, for a manager with an address, from a TCP or
//! Unix listener, where each connection first passes the authentication exchange of
//! [`Listener`](crate::Listener) within the manager's handshake timeout. A connection that
//! sends garbage, a truncated or oversized frame, or nothing at all ends; it costs no other
//! connection anything. When a connection ends, the locks it holds are released, and the
//! next acquirer of each is told ([`Failure::LockOwnerDied`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use super::barrier::BarrierState;
use super::condition::ConditionState;
use super::dict::Dict;
use super::event::EventState;
use super::ledger::{Ledger, Record};
use super::lock::LockState;
use super::managed::{Maker, UserObject};
use super::proto::{
    ArrayOp, Bytes, Failure, HEARTBEAT, HEARTBEAT_MISSES, Initial, ListOp, NamespaceOp, PeerMax,
    QueueOp, Reply, Request, Tag, Undo, ValueOp, Wait,
};
use super::queue::QueueState;
use super::semaphore::SemaphoreState;
use crate::error::{Error, Result};
use crate::sys;
use crate::task::InitializerEntry;
use crate::wire::{AcceptRetry, Encoded, FrameBuf, Framed, HandshakeGate, Now, Transport};

/// Who is calling: the connection, and the pid it said it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caller {
    pub(super) conn: u64,
    pub(super) pid: u32,
}

/// One attempt at a request that may wait: its answer, or the notification to wait for.
pub(super) enum Step {
    Done(Reply),
    Wait(Arc<Notify>),
}

pub(super) enum Object {
    Dict(Dict),
    List(Vec<Bytes>),
    Value(Bytes),
    Array(Vec<Bytes>),
    Namespace(Vec<(String, Bytes)>),
    Queue(QueueState),
    Lock(LockState),
    Semaphore(SemaphoreState),
    Event(EventState),
    Condition(ConditionState),
    Barrier(BarrierState),
    User(UserObject),
}

struct Entry {
    object: Object,
    tag: Tag,
    /// Connections' references (and, for a lock, those of the conditions made over it),
    /// loans to processes not connected yet, and whether a name keeps the object: it ends
    /// when all three are gone.
    refs: u64,
    /// Loans made less loans settled. A loan (`Lend`, from the lender's connection) and its
    /// settling (the borrower's `Incref` with `borrowed`, from another connection) may be
    /// read in either order, so a settling read first counts below zero, and the loan that
    /// follows brings it back: a loan keeps the object only while it is positive.
    lent: i64,
    named: bool,
}

/// Every object the server holds, by id, and the names some of them are registered under.
#[derive(Default)]
pub(super) struct State {
    objects: HashMap<u64, Entry>,
    names: HashMap<String, u64>,
    next: u64,
    /// The user types this server may make, by type name.
    types: HashMap<String, Maker>,
    /// The references each connection holds, by object.
    held: HashMap<u64, HashMap<u64, u64>>,
    /// The shared memory segments to remove when the server stops; `None` for a server that
    /// keeps none (all but a `SharedMemoryManager`'s).
    segments: Option<Segments>,
}

/// The segments a `SharedMemoryManager`'s server keeps: their names, in the order they were
/// made, each with where it is written down in the ledger, for the starting process to
/// remove them if the server is killed.
///
/// A name someone removed (`unlink`) is forgotten, from the list and the ledger, when the
/// server is asked for its names and whenever the list has doubled since it was last looked
/// over, so that a server that makes and sees removed a segment at a time for ever keeps
/// as many names as are there.
pub(super) struct Segments {
    names: Vec<(String, Record)>,
    ledger: Ledger,
    /// How many names the list may hold before it is looked over again.
    look_over_at: usize,
}

/// The fewest names a list of segments holds before it is looked over.
const LOOK_OVER_AT_LEAST: usize = 64;

impl Segments {
    pub(super) fn new(ledger: Ledger) -> Segments {
        Segments {
            names: Vec::new(),
            ledger,
            look_over_at: LOOK_OVER_AT_LEAST,
        }
    }

    /// Forgets the names no longer in `/dev/shm` (a name the system cannot tell of is
    /// kept).
    fn forget_removed(&mut self) {
        let ledger = &mut self.ledger;
        self.names.retain(|(name, entry)| {
            if let Ok(false) = sys::shm_exists(name)
                && ledger.forget(*entry).is_ok()
            {
                return false;
            }
            true
        });
        self.look_over_at = LOOK_OVER_AT_LEAST.max(2 * self.names.len());
    }

    /// The names kept, in the order they were made.
    fn names(&self) -> Vec<String> {
        self.names.iter().map(|(name, _)| name.clone()).collect()
    }
}

/// Python's index rules: negative counts from the end; `None` if out of range.
pub(super) fn position(len: usize, i: i64) -> Option<usize> {
    let len = len as i64;
    let i = if i < 0 { i + len } else { i };
    (0..len).contains(&i).then_some(i as usize)
}

pub(super) fn missing(id: u64) -> Failure {
    Failure::Missing(id)
}

pub(super) fn wrong_type(id: u64, asked: &str) -> Failure {
    Failure::Message(format!("object #{id} is not a {asked}"))
}

macro_rules! object {
    ($state:expr, $id:expr, $variant:ident) => {
        match $state.object_mut($id) {
            Some($crate::manager::server::Object::$variant(o)) => Ok(o),
            Some(_) => Err($crate::manager::server::wrong_type(
                $id,
                stringify!($variant),
            )),
            None => Err($crate::manager::server::missing($id)),
        }
    };
}
pub(super) use object;

/// `Reply::Failed` from a `Result`'s error, or the reply itself.
pub(super) fn reply(r: std::result::Result<Reply, Failure>) -> Reply {
    r.unwrap_or_else(Reply::Failed)
}

impl State {
    pub(super) fn object_mut(&mut self, id: u64) -> Option<&mut Object> {
        self.objects.get_mut(&id).map(|e| &mut e.object)
    }

    fn create(&mut self, initial: Initial, tag: Tag) -> Reply {
        let object = match initial {
            Initial::Dict(pairs) => {
                let mut d = Dict::default();
                for (k, v) in pairs {
                    d.insert(k, v);
                }
                Object::Dict(d)
            }
            Initial::List(items) => Object::List(items),
            Initial::Value(v) => Object::Value(v),
            Initial::Array(items) => Object::Array(items),
            Initial::Namespace => Object::Namespace(Vec::new()),
            Initial::Queue { maxsize, joinable } => {
                Object::Queue(QueueState::new(maxsize, joinable))
            }
            Initial::Lock { reentrant } => Object::Lock(LockState::new(reentrant)),
            Initial::Semaphore { value, bounded } => {
                Object::Semaphore(SemaphoreState::new(value, bounded))
            }
            Initial::Event => Object::Event(EventState::default()),
            Initial::Condition { reentrant } => Object::Condition(ConditionState::new(reentrant)),
            Initial::ConditionOver { lock } => match self.objects.get_mut(&lock) {
                // The condition's reference keeps the lock while the condition lives.
                Some(e) if matches!(e.object, Object::Lock(_)) => {
                    e.refs += 1;
                    Object::Condition(ConditionState::over(lock))
                }
                Some(_) => return Reply::Failed(wrong_type(lock, "Lock")),
                None => return Reply::Failed(missing(lock)),
            },
            Initial::Barrier { parties } => Object::Barrier(BarrierState::new(parties)),
            Initial::User(name) => match self.types.get(&name) {
                Some(&make) => match super::managed::make(make) {
                    Ok(object) => Object::User(object),
                    Err(f) => return Reply::Failed(f),
                },
                None => {
                    return Reply::message(format!(
                        "the manager serves no type {name:?} (register it on the builder)"
                    ));
                }
            },
        };
        self.next += 1;
        let entry = Entry {
            object,
            tag,
            refs: 0,
            lent: 0,
            named: false,
        };
        self.objects.insert(self.next, entry);
        Reply::Id(self.next)
    }

    fn lookup(&self, name: &str, tag: &Tag) -> Reply {
        let Some(entry) = self.names.get(name).and_then(|id| {
            let e = self.objects.get(id)?;
            Some((*id, e))
        }) else {
            return Reply::message(format!("the manager has no object named {name:?}"));
        };
        let (id, e) = entry;
        if e.tag != *tag {
            return Reply::message(format!(
                "the object named {name:?} is a {} (fingerprint {:016x}), asked for as a {} \
                 (fingerprint {:016x})",
                e.tag.name, e.tag.fingerprint, tag.name, tag.fingerprint
            ));
        }
        Reply::Id(id)
    }

    /// Answers a request that never waits. Requests that may wait go to [`attempt`].
    ///
    /// [`attempt`]: State::attempt
    pub(super) fn handle(&mut self, caller: Caller, req: Request) -> Reply {
        match req {
            Request::Hello { .. } | Request::Ping | Request::Cancel(_) => Reply::Done,
            Request::Incref { id, borrowed } => {
                self.incref(caller, id, borrowed);
                Reply::Done
            }
            Request::Decref(id) => {
                self.decref(caller, id);
                Reply::Done
            }
            Request::LetGoLocks => {
                self.let_go_locks(caller);
                Reply::Done
            }
            Request::Lend(id) => {
                if let Some(e) = self.objects.get_mut(&id) {
                    e.lent += 1;
                }
                Reply::Done
            }
            Request::Count => Reply::Len(self.objects.len() as u64),
            Request::Create(initial, tag) => self.create(initial, tag),
            Request::Register(name, id) => {
                if !self.objects.contains_key(&id) {
                    return Reply::Failed(missing(id));
                }
                match self.names.get(&name) {
                    Some(&other) if other != id => Reply::message(format!(
                        "the name {name:?} already names another object of this manager \
                             (a name is given once)"
                    )),
                    _ => {
                        self.names.insert(name, id);
                        if let Some(e) = self.objects.get_mut(&id) {
                            e.named = true;
                        }
                        Reply::Done
                    }
                }
            }
            Request::Lookup(name, tag) => self.lookup(&name, &tag),
            Request::Dict(id, op) => reply(object!(self, id, Dict).map(|d| d.handle(op))),
            Request::List(id, op) => reply(object!(self, id, List).map(|l| list(l, op))),
            Request::Value(id, op) => reply(object!(self, id, Value).map(|v| match op {
                ValueOp::Get => Reply::Item(Some(v.clone())),
                ValueOp::Set(new) => {
                    *v = new;
                    Reply::Done
                }
            })),
            Request::Array(id, op) => reply(object!(self, id, Array).map(|a| array(a, op))),
            Request::Namespace(id, op) => {
                reply(object!(self, id, Namespace).map(|n| namespace(n, op)))
            }
            Request::Queue(id, op) => reply(object!(self, id, Queue).map(|q| q.handle(op))),
            Request::Lock(id, op) => reply(object!(self, id, Lock).map(|l| l.handle(caller, op))),
            Request::Semaphore(id, op) => reply(object!(self, id, Semaphore).map(|s| s.handle(op))),
            Request::Event(id, op) => reply(object!(self, id, Event).map(|e| e.handle(op))),
            Request::Condition(id, op) => super::condition::handle(self, caller, id, op),
            Request::Barrier(id, op) => reply(object!(self, id, Barrier).map(|b| b.handle(op))),
            Request::User(..) => Reply::message("a call on a user object runs in its own task"),
            Request::CreateSegment(size) => reply(self.create_segment(size)),
            Request::Segments => reply(self.keeper().map(|kept| {
                kept.forget_removed();
                Reply::Names(kept.names())
            })),
        }
    }

    /// The segment names this server keeps, or why it keeps none.
    fn keeper(&mut self) -> std::result::Result<&mut Segments, Failure> {
        self.segments.as_mut().ok_or_else(|| {
            Failure::Message(
                "this manager keeps no shared memory segments (a SharedMemoryManager's does)"
                    .into(),
            )
        })
    }

    /// Makes a segment of `size` bytes under a fresh name, which the server keeps from the
    /// moment the segment exists.
    ///
    /// The name is written down in the ledger first, so that a kill at any moment after
    /// leaves no segment that the starting process does not know of.
    fn create_segment(&mut self, size: u64) -> std::result::Result<Reply, Failure> {
        let kept = self.keeper()?;
        let size = usize::try_from(size)
            .map_err(|_| Failure::Message(format!("a segment of {size} bytes")))?;
        let failed = |e: Error| Failure::Message(e.to_string());
        if kept.names.len() >= kept.look_over_at {
            kept.forget_removed();
        }
        let (mut shm, name, entry) = loop {
            let name = crate::shared::generated_name().map_err(failed)?;
            let entry = kept.ledger.note(&name).map_err(failed)?;
            match crate::shared::SharedMemory::create(&name, size) {
                Ok(shm) => break (shm, name, entry),
                Err(e) => {
                    // Not made: the name is someone else's, or no one's.
                    kept.ledger.forget(entry).map_err(failed)?;
                    if !matches!(&e, Error::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists)
                    {
                        return Err(failed(e));
                    }
                }
            }
        };
        shm.keep_name();
        kept.names.push((name.clone(), entry));
        Ok(Reply::Names(vec![name]))
    }

    /// Takes the names of every segment kept, which the server then removes.
    pub(super) fn take_segments(&mut self) -> Vec<String> {
        self.segments
            .as_mut()
            .map(|kept| {
                std::mem::take(&mut kept.names)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tries a request that may wait; `timed_out` says its time is up, so the attempt must
    /// answer (with its type's timeout error, say).
    pub(super) fn attempt(&mut self, caller: Caller, req: &Request, timed_out: bool) -> Step {
        let r = match req {
            Request::Queue(id, op) => object!(self, *id, Queue).map(|q| q.attempt(op, timed_out)),
            Request::Lock(id, op) => {
                object!(self, *id, Lock).map(|l| l.attempt(caller, op, timed_out))
            }
            Request::Semaphore(id, op) => {
                object!(self, *id, Semaphore).map(|s| s.attempt(op, timed_out))
            }
            Request::Event(id, op) => object!(self, *id, Event).map(|e| e.attempt(op, timed_out)),
            Request::Condition(id, op) => {
                return super::condition::attempt(self, caller, *id, op, timed_out);
            }
            _ => Err(Failure::Message("this request does not wait".into())),
        };
        r.unwrap_or_else(|f| Step::Done(Reply::Failed(f)))
    }

    fn incref(&mut self, caller: Caller, id: u64, borrowed: bool) {
        let Some(e) = self.objects.get_mut(&id) else {
            return;
        };
        e.refs += 1;
        if borrowed {
            e.lent = e.lent.saturating_sub(1);
        }
        *self
            .held
            .entry(caller.conn)
            .or_default()
            .entry(id)
            .or_default() += 1;
    }

    fn decref(&mut self, caller: Caller, id: u64) {
        let Some(n) = self.held.get_mut(&caller.conn).and_then(|h| h.get_mut(&id)) else {
            return;
        };
        *n -= 1;
        if *n == 0
            && let Some(h) = self.held.get_mut(&caller.conn)
        {
            h.remove(&id);
        }
        self.drop_refs(id, 1);
    }

    /// Takes `n` references off an object, which ends when nothing keeps it (and lets go
    /// of the lock it shares, for a condition made over one).
    fn drop_refs(&mut self, id: u64, n: u64) {
        if let Some(e) = self.objects.get_mut(&id) {
            e.refs = e.refs.saturating_sub(n);
            if e.refs == 0
                && e.lent <= 0
                && !e.named
                && let Some(Object::Condition(c)) = self.objects.remove(&id).map(|e| e.object)
                && let Some(lock) = c.shared_lock()
            {
                self.drop_refs(lock, 1);
            }
        }
    }

    /// Releases what a connection that ended held: its references, and its locks, whose
    /// next acquirer is told.
    pub(super) fn release(&mut self, caller: Caller) {
        for (id, n) in self.held.remove(&caller.conn).unwrap_or_default() {
            self.drop_refs(id, n);
        }
        self.let_go_locks(caller);
    }

    /// Releases the locks a connection holds (and its holds of conditions' locks), as its
    /// end does: their next acquirer is told.
    fn let_go_locks(&mut self, caller: Caller) {
        for e in self.objects.values_mut() {
            match &mut e.object {
                Object::Lock(l) => l.abandon(caller),
                Object::Condition(c) => c.abandon(caller),
                _ => {}
            }
        }
    }
}

fn list(l: &mut Vec<Bytes>, op: ListOp) -> Reply {
    match op {
        ListOp::Append(v) => {
            l.push(v);
            Reply::Done
        }
        ListOp::Extend(vs) => {
            l.extend(vs);
            Reply::Done
        }
        ListOp::Get(i) => Reply::Item(position(l.len(), i).map(|i| l[i].clone())),
        ListOp::Set(i, v) => match position(l.len(), i) {
            Some(i) => {
                l[i] = v;
                Reply::Done
            }
            None => Reply::message(format!("list index {i} out of range")),
        },
        ListOp::Insert(i, v) => {
            // Python clamps an insertion index into range.
            let len = l.len() as i64;
            let at = if i < 0 { (i + len).max(0) } else { i.min(len) };
            l.insert(at as usize, v);
            Reply::Done
        }
        ListOp::Pop(i) => Reply::Item(position(l.len(), i).map(|i| l.remove(i))),
        ListOp::Len => Reply::Len(l.len() as u64),
        ListOp::Reverse => {
            l.reverse();
            Reply::Done
        }
        ListOp::Items => Reply::Items(l.clone()),
        ListOp::Clear => {
            l.clear();
            Reply::Done
        }
        ListOp::Index(v) => Reply::Position(l.iter().position(|x| *x == v).map(|i| i as u64)),
        ListOp::Count(v) => Reply::Len(l.iter().filter(|x| **x == v).count() as u64),
        ListOp::Remove(v) => match l.iter().position(|x| *x == v) {
            Some(i) => {
                l.remove(i);
                Reply::Bool(true)
            }
            None => Reply::Bool(false),
        },
    }
}

fn array(a: &mut [Bytes], op: ArrayOp) -> Reply {
    let out_of_range =
        |index: usize, len: usize| Reply::Failed(Failure::IndexOutOfRange { index, len });
    match op {
        ArrayOp::Get(i) => match a.get(i) {
            Some(v) => Reply::Item(Some(v.clone())),
            None => out_of_range(i, a.len()),
        },
        ArrayOp::Set(i, v) => match a.get_mut(i) {
            Some(slot) => {
                *slot = v;
                Reply::Done
            }
            None => out_of_range(i, a.len()),
        },
        ArrayOp::Len => Reply::Len(a.len() as u64),
        ArrayOp::Items => Reply::Items(a.to_vec()),
    }
}

fn namespace(n: &mut Vec<(String, Bytes)>, op: NamespaceOp) -> Reply {
    let at = |n: &[(String, Bytes)], name: &str| n.iter().position(|(k, _)| k == name);
    match op {
        NamespaceOp::Get(name) => Reply::Item(at(n, &name).map(|i| n[i].1.clone())),
        NamespaceOp::Set(name, v) => {
            match at(n, &name) {
                Some(i) => n[i].1 = v,
                None => n.push((name, v)),
            }
            Reply::Done
        }
        NamespaceOp::Remove(name) => Reply::Item(at(n, &name).map(|i| n.remove(i).1)),
        NamespaceOp::Items => Reply::Named(n.clone()),
    }
}

/// The server: its state and the connections it has taken.
pub(super) struct Shared {
    state: std::sync::Mutex<State>,
    next_conn: AtomicU64,
}

/// Where a server's object ids start: at random, below 2^48, so that two servers' ids do
/// not meet and a proxy shown to the wrong server (registered there, say) names nothing it
/// holds, rather than another object of the same number.
fn first_id() -> u64 {
    let mut bytes = [0u8; 8];
    match sys::fill_random(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) >> 16,
        Err(_) => sys::monotonic_nanos() & ((1 << 48) - 1),
    }
}

impl Shared {
    /// A server's state; `segments`: for a server that keeps shared memory segments to
    /// remove when it stops (a `SharedMemoryManager`'s), the ledger it writes their names in.
    pub(super) fn new(types: HashMap<String, Maker>, segments: Option<Ledger>) -> Arc<Shared> {
        Arc::new(Shared {
            state: std::sync::Mutex::new(State {
                types,
                next: first_id(),
                segments: segments.map(Segments::new),
                ..State::default()
            }),
            next_conn: AtomicU64::new(1),
        })
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes every shared memory segment the server keeps (a name someone removed
    /// already is passed over), and forgets them.
    pub(super) fn remove_segments(&self) {
        let names = self.state().take_segments();
        for name in names {
            match sys::shm_remove(&name) {
                Ok(()) => tracing::debug!(name, "the manager removed a segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!(name, "the manager could not remove a segment: {e}"),
            }
        }
    }

    /// Carries out a request that may wait, waiting for its object's notifications until it
    /// can be answered or its time is up.
    async fn wait(&self, caller: Caller, req: Request) -> Reply {
        use super::proto::{BarrierOp, ConditionOp};
        let deadline = deadline(wait_of(&req));
        match req {
            Request::Condition(id, ConditionOp::Wait { owner, wait }) => {
                super::condition::wait(self, caller, id, owner, wait).await
            }
            Request::Barrier(id, BarrierOp::Wait { wait }) => {
                super::barrier::wait(self, id, wait).await
            }
            Request::Queue(id, op) => super::queue::wait(self, id, op, deadline).await,
            Request::User(id, request) => {
                let object = object!(self.state(), id, User).map(|o| o.clone());
                match object {
                    Ok(o) => super::managed::run(o, request).await,
                    Err(f) => Reply::Failed(f),
                }
            }
            req => {
                self.wait_on(deadline, |s, timed_out| s.attempt(caller, &req, timed_out))
                    .await
            }
        }
    }

    /// Tries `attempt` until it answers, waiting for the notification it names in between
    /// (registered before the state's mutex is released, so no wake-up is lost). Once
    /// `deadline` has passed, the attempt is told its time is up and must answer.
    pub(super) async fn wait_on(
        &self,
        deadline: Option<tokio::time::Instant>,
        mut attempt: impl FnMut(&mut State, bool) -> Step,
    ) -> Reply {
        let mut timed_out = false;
        loop {
            let notified = match attempt(&mut self.state(), timed_out) {
                Step::Done(r) => return r,
                Step::Wait(n) => {
                    let mut notified = Box::pin(n.notified_owned());
                    notified.as_mut().enable();
                    notified
                }
            };
            if timed_out {
                return Reply::message("a wait went on after its time was up");
            }
            match deadline {
                None => notified.await,
                Some(d) => timed_out = tokio::time::timeout_at(d, notified).await.is_err(),
            }
        }
    }
}

/// When a wait of this kind ends: at once, never, or after its time.
pub(super) fn deadline(wait: Wait) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now();
    match wait {
        Wait::No => Some(now),
        Wait::Forever => None,
        // A time too long to represent is for ever.
        Wait::For(d) => now.checked_add(d),
    }
}

fn wait_of(req: &Request) -> Wait {
    use super::proto::{BarrierOp, ConditionOp, EventOp, LockOp, QueueOp, SemaphoreOp};
    match req {
        Request::Queue(_, QueueOp::Put { wait, .. } | QueueOp::Get { wait })
        | Request::Lock(_, LockOp::Acquire { wait, .. })
        | Request::Semaphore(_, SemaphoreOp::Acquire { wait })
        | Request::Event(_, EventOp::Wait { wait })
        | Request::Barrier(_, BarrierOp::Wait { wait })
        | Request::Condition(_, ConditionOp::Lock(LockOp::Acquire { wait, .. })) => *wait,
        // A condition's wait has two waits (the notification, then the lock): the
        // condition times the first itself.
        _ => Wait::Forever,
    }
}

/// A waiting request's way to be withdrawn: the flag its task and the connection's loop
/// agree on, under one lock, about which of them answers first.
#[derive(Default)]
struct Withdrawal {
    state: std::sync::Mutex<WithdrawalState>,
    cancelled: tokio::sync::Notify,
}

#[derive(Default)]
struct WithdrawalState {
    cancelled: bool,
    finished: bool,
}

impl Withdrawal {
    fn lock(&self) -> std::sync::MutexGuard<'_, WithdrawalState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finished(&self) -> bool {
        self.lock().finished
    }

    /// Withdraws the request: its task stops waiting, or, if it was carried out and not
    /// yet answered, gives back what it took. The answer `Withdrawn` goes out after the
    /// request's reply, if one was sent.
    fn cancel(&self, permit: mpsc::Permit<'_, Out>, rid: u64) {
        let mut state = self.lock();
        state.cancelled = true;
        self.cancelled.notify_one();
        permit.send(Out::Reply((rid, Reply::Withdrawn, None)));
        drop(state);
    }
}

/// Replies a connection may have waiting to be written before its requests stop being read.
const REPLIES_IN_FLIGHT: usize = 1024;

/// A reply for a connection's writer: the request's id, the reply, and what gives back what
/// the reply granted should it not go out (see [`reply_frame`]).
type Outgoing = (u64, Reply, Option<GiveBack>);

/// What a connection's writer task writes: a reply, or the frame of one that the
/// connection's loop could not write at once (see [`reply_now`]).
enum Out {
    Reply(Outgoing),
    Frame(FrameBuf),
}

/// What gives back what a reply granted (an item taken from a queue), for a reply that does
/// not reach its client: withdrawn, or too large to send.
#[derive(Debug, Clone, Copy)]
struct GiveBack {
    undo: Undo,
    caller: Caller,
}

impl GiveBack {
    /// For request `req` of `caller`, if what it may grant can be given back.
    fn of(req: &Request, caller: Caller) -> Option<GiveBack> {
        Undo::of(req).map(|undo| GiveBack { undo, caller })
    }

    fn give_back(self, shared: &Shared, reply: Reply) {
        if let Some(req) = self.undo.request(reply) {
            shared.state().handle(self.caller, req);
        }
    }
}

/// Serves one connection until it ends, then releases what it held.
pub(super) async fn serve_connection(link: Framed, shared: Arc<Shared>) {
    let link = Arc::new(link);
    let mut caller = Caller {
        conn: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        pid: 0,
    };
    // Bounded: a client that sends and never reads is stopped being read, not buffered for.
    let (tx, rx) = mpsc::channel::<Out>(REPLIES_IN_FLIGHT);
    let peer_max = Arc::new(PeerMax::default());
    let mut tasks = JoinSet::new();
    tasks.spawn(write_replies(
        link.clone(),
        rx,
        peer_max.clone(),
        shared.clone(),
    ));
    let mut waiting: HashMap<u64, Arc<Withdrawal>> = HashMap::new();
    let silence = HEARTBEAT * HEARTBEAT_MISSES;
    // The bytes of a frame still arriving when the client was last heard from: a frame
    // that takes longer than `silence` to arrive (large, over a slow network) is no silence
    // while its bytes keep coming.
    let mut arriving = 0;
    let outcome: Result<()> = loop {
        let frame = tokio::select! {
            r = tokio::time::timeout(silence, link.recv_awake()) => match r {
                Ok(Ok(f)) => f,
                Ok(Err(Error::Closed)) => break Ok(()),
                Ok(Err(e)) => break Err(e),
                Err(_) => {
                    let partial = link.partial_len();
                    if partial > arriving {
                        arriving = partial;
                        continue;
                    }
                    break Err(Error::Protocol(format!("the client was silent for {silence:?}")));
                }
            },
            Some(_) = tasks.join_next(), if tasks.len() > 1 => {
                waiting.retain(|_, w| !w.finished());
                continue;
            }
        };
        arriving = link.partial_len();
        let (id, req) = match frame.decode::<(u64, Request)>() {
            Ok(r) => r,
            Err(e) => {
                // Garbage: this connection ends (after saying why); no other is affected.
                let r = Reply::message(format!("malformed request: {e}"));
                let _ = tx.send(Out::Reply((0, r, None))).await;
                break Err(e);
            }
        };
        match req {
            Request::Hello { pid, max_frame } => {
                caller.pid = pid;
                peer_max.set(max_frame);
                // Who this server is, and the largest frame it reads.
                let me = (0, Reply::server(), None);
                if let Err(e) = reply_now(&link, me, &tx, &mut tasks, &peer_max, &shared).await {
                    break Err(e);
                }
                continue;
            }
            Request::Incref { .. }
            | Request::Decref(_)
            | Request::Lend(_)
            | Request::LetGoLocks => {
                shared.state().handle(caller, req);
                continue;
            }
            Request::Cancel(rid) => {
                // The answer follows any reply of `rid` already queued: the client then
                // knows that nothing of it is still to come (and undoes what came).
                let Ok(permit) = tx.reserve().await else {
                    break Ok(());
                };
                match waiting.remove(&rid) {
                    Some(w) => w.cancel(permit, rid),
                    None => permit.send(Out::Reply((rid, Reply::Withdrawn, None))),
                }
                continue;
            }
            Request::Ping => continue,
            // A ring's descriptors cross only a Unix socket.
            Request::Queue(_, QueueOp::Attach) if link.transport() != Transport::Unix => {
                let r = Reply::message("a queue's ring reaches only clients on this machine");
                if let Err(e) =
                    reply_now(&link, (id, r, None), &tx, &mut tasks, &peer_max, &shared).await
                {
                    break Err(e);
                }
                continue;
            }
            _ => {}
        }
        if req.may_wait() {
            // Tried here first: a request that need not wait is answered in order, at the
            // cost of no task.
            if req.tried_at_once() {
                let step = shared.state().attempt(caller, &req, false);
                if let Step::Done(r) = step {
                    let out = (id, r, GiveBack::of(&req, caller));
                    if let Err(e) = reply_now(&link, out, &tx, &mut tasks, &peer_max, &shared).await
                    {
                        break Err(e);
                    }
                    continue;
                }
            }
            let (shared, tx) = (shared.clone(), tx.clone());
            let w = Arc::new(Withdrawal::default());
            waiting.insert(id, w.clone());
            tasks.spawn(async move {
                let give_back = GiveBack::of(&req, caller);
                let r = tokio::select! {
                    biased;
                    r = shared.wait(caller, req) => r,
                    () = w.cancelled.notified() => return,
                };
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let mut state = w.lock();
                if state.cancelled {
                    // Withdrawn while it was being carried out: give back what it took.
                    if let Some(g) = give_back {
                        g.give_back(&shared, r);
                    }
                } else {
                    permit.send(Out::Reply((id, r, give_back)));
                }
                state.finished = true;
            });
        } else {
            let r = shared.state().handle(caller, req);
            if let Err(e) =
                reply_now(&link, (id, r, None), &tx, &mut tasks, &peer_max, &shared).await
            {
                break Err(e);
            }
        }
    };
    if let Err(e) = outcome {
        tracing::debug!("manager connection ended: {e}");
    }
    tasks.abort_all();
    shared.state().release(caller);
    // A task that was running on another thread as it was stopped may have taken a lock for
    // the connection since (a condition's wait whose waiter was let go above, retaking its
    // lock): once every task has stopped, that is let go too.
    while tasks.join_next().await.is_some() {}
    shared.state().release(caller);
}

/// Writes a reply from the connection's own loop, without a hop to the writer task, when
/// the socket takes it at once (their turns to write are shared, so frames never
/// interleave); else hands its frame to the writer task (a frame the socket took part of is
/// finished by a task of the connection's). The loop never waits for its client to read:
/// it goes on reading, and so hears the client's heartbeats, or their silence.
///
/// # Errors
/// The error of a write that failed; [`Error::Closed`] if the writer task is gone.
async fn reply_now(
    link: &Arc<Framed>,
    out: Outgoing,
    tx: &mpsc::Sender<Out>,
    tasks: &mut JoinSet<()>,
    peer_max: &PeerMax,
    shared: &Shared,
) -> Result<()> {
    let mut frame = reply_frame(out, peer_max, shared)?;
    match link.try_send_now(&mut frame)? {
        Now::Sent => {}
        Now::Not => tx
            .send(Out::Frame(frame))
            .await
            .map_err(|_| Error::Closed)?,
        Now::Begun => {
            let link = link.clone();
            tasks.spawn(async move {
                if link.finish().await.is_err() {
                    // The loop notices the broken socket too, and ends the connection.
                    let _ = sys::shutdown_socket(link.as_fd(), true, true);
                }
            });
        }
    }
    Ok(())
}

/// The frame of a reply; a reply that cannot be encoded, or would be a frame over the
/// maximum size (this process's or its client's), is answered with that error instead, so
/// that the call fails and the connection, with everything it holds, lives on. What such a
/// reply granted is given back first: an item taken from a queue goes back to its head.
fn reply_frame(
    (id, reply, give_back): Outgoing,
    peer_max: &PeerMax,
    shared: &Shared,
) -> Result<FrameBuf> {
    let encoded = FrameBuf::of(&(id, &reply))
        .and_then(|mut f| f.check_size().and_then(|()| peer_max.check(&f)).map(|()| f));
    encoded.or_else(|e| {
        if let Some(g) = give_back {
            g.give_back(shared, reply);
        }
        FrameBuf::of(&(id, Reply::Failed(Failure::from(e))))
    })
}

/// Writes the replies of a connection in order, batching those that are ready together, and
/// a heartbeat whenever it has been idle for [`HEARTBEAT`].
async fn write_replies(
    link: Arc<Framed>,
    mut rx: mpsc::Receiver<Out>,
    peer_max: Arc<PeerMax>,
    shared: Arc<Shared>,
) {
    let mut batch = Vec::new();
    loop {
        let first = match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(_) => Out::Reply((0, Reply::Heartbeat, None)),
        };
        batch.clear();
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Out::Frame(f) => batch.push(f),
                Out::Reply(r) => match reply_frame(r, &peer_max, &shared) {
                    Ok(f) => batch.push(f),
                    Err(e) => tracing::debug!("a manager reply could not be encoded: {e}"),
                },
            }
            if batch.len() < 64 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = send_while_read(&link, &mut batch).await {
            tracing::debug!("a manager connection's replies cannot be written: {e}");
            // The reader notices the broken socket too, and ends the connection; and a
            // reader waiting to hand this writer a reply sees it gone.
            let _ = sys::shutdown_socket(link.as_fd(), true, true);
            return;
        }
    }
}

/// Sends `batch`, as long as the client reads: a send during which the socket takes
/// nothing for as long as a silent client is given fails. A client that stopped (hung, or
/// cut off by the network) behind many replies would otherwise hold this writer, and so
/// the connection's loop once it has handed over [`REPLIES_IN_FLIGHT`] of them, for ever:
/// the loop would not read, never see the silence, and the client's locks would stay held.
///
/// # Errors
/// The send's error; [`Error::Timeout`] for a client that read nothing for the silence.
async fn send_while_read(link: &Framed, batch: &mut [FrameBuf]) -> Result<()> {
    let silence = HEARTBEAT * HEARTBEAT_MISSES;
    let send = link.send_batch(batch);
    tokio::pin!(send);
    let (mut sent, mut since) = (link.sent_bytes(), tokio::time::Instant::now());
    loop {
        tokio::select! {
            r = &mut send => return r,
            () = tokio::time::sleep(HEARTBEAT) => {
                let now = link.sent_bytes();
                if now != sent {
                    (sent, since) = (now, tokio::time::Instant::now());
                } else if since.elapsed() >= silence {
                    return Err(Error::Timeout);
                }
            }
        }
    }
}

/// Serves the connections that arrive on the registration socket, until every holder of it
/// is gone.
pub(super) async fn serve_registration(registration: OwnedFd, shared: Arc<Shared>) -> Result<()> {
    sys::set_nonblocking(registration.as_fd(), true)?;
    let reg = sys::register_owned(registration, Interest::READABLE)?;
    let mut conns = JoinSet::new();
    let mut fds = VecDeque::new();
    loop {
        let more = tokio::select! {
            r = take_connections(&reg, &mut fds) => r?,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        if !more {
            return Ok(());
        }
        for conn in fds.drain(..) {
            match Framed::unix(conn) {
                Ok(link) => {
                    conns.spawn(serve_connection(link, shared.clone()));
                }
                Err(e) => tracing::debug!("a manager connection could not be set up: {e}"),
            }
        }
    }
}

/// Reads the registration socket once: the connections that message carried go to `fds`.
/// `false` once every holder of the socket is gone.
///
/// # Cancel safety
/// Cancel safe: a message read is in `fds` by the time the read returns.
async fn take_connections(
    reg: &tokio::io::unix::AsyncFd<OwnedFd>,
    fds: &mut VecDeque<OwnedFd>,
) -> Result<bool> {
    loop {
        let mut buf = [0u8; 16];
        let mut guard = reg.readable().await?;
        match guard.try_io(|r| sys::recv_with_fds(r.get_ref().as_fd(), &mut buf, fds)) {
            Ok(Ok(0)) => return Ok(false),
            Ok(Ok(_)) => return Ok(true),
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => continue,
        }
    }
}

/// Tells the process that started this server that its initializer failed: the first
/// request of the first connection on the registration socket (the starting process's,
/// whose `start` asks for the object count once the initializer has returned) is answered
/// with `failure`.
///
/// # Errors
/// [`Error::Closed`] if every holder of the registration socket is gone first; an I/O or
/// protocol error from the connection.
async fn refuse_the_starter(registration: OwnedFd, failure: Failure) -> Result<()> {
    sys::set_nonblocking(registration.as_fd(), true)?;
    let reg = sys::register_owned(registration, Interest::READABLE)?;
    let mut fds = VecDeque::new();
    let conn = loop {
        if !take_connections(&reg, &mut fds).await? {
            return Err(Error::Closed);
        }
        if let Some(conn) = fds.pop_front() {
            break conn;
        }
    };
    let link = Framed::unix(conn)?;
    loop {
        let (id, req) = link.recv_awake().await?.decode::<(u64, Request)>()?;
        // What a connection says of itself is not answered, as when it is served; its
        // Hello is, with who this server is.
        if let Request::Hello { .. } = req {
            link.send(&mut FrameBuf::of(&(0u64, Reply::server()))?)
                .await?;
        }
        if req.is_answered() {
            return link
                .send(&mut FrameBuf::of(&(id, Reply::Failed(failure)))?)
                .await;
        }
    }
}

/// A listening socket of a manager with an address, and what its clients must prove.
pub(super) struct Door {
    pub(super) listener: OwnedFd,
    pub(super) authkey: Option<Arc<[u8]>>,
    pub(super) handshake_timeout: Duration,
}

/// Serves the connections that arrive on `door`: each runs the authentication exchange
/// (bounded by the door's timeout), then is served. With [`MAX_HANDSHAKES`] exchanges under
/// way, the door takes the next connection once one ends or the oldest not proven goes stale
/// (see [`HandshakeGate`]), so a burst of clients all get through while silent sockets
/// neither lock clients out nor pile up descriptors.
///
/// [`MAX_HANDSHAKES`]: crate::MAX_HANDSHAKES
pub(super) async fn serve_door(door: Door, shared: Arc<Shared>) -> Result<()> {
    let transport = Transport::of(door.listener.as_fd())?;
    let listener = match transport {
        Transport::Tcp => {
            let l = std::net::TcpListener::from(door.listener);
            l.set_nonblocking(true)?;
            Listening::Tcp(tokio::net::TcpListener::from_std(l)?)
        }
        _ => {
            let l = std::os::unix::net::UnixListener::from(door.listener);
            l.set_nonblocking(true)?;
            Listening::Unix(tokio::net::UnixListener::from_std(l)?)
        }
    };
    let gate = HandshakeGate::new(crate::MAX_HANDSHAKES);
    let mut retry = AcceptRetry::default();
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = async {
                gate.room().await;
                listener.accept().await
            } => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (fd, transport) = match accepted {
            Ok(a) => {
                retry.succeeded();
                a
            }
            Err(e) => {
                // Out of descriptors, say: the connection waits in the backlog.
                tokio::time::sleep(retry.failed("manager", &e)).await;
                continue;
            }
        };
        let (key, limit) = (door.authkey.clone(), door.handshake_timeout);
        let handshake = gate.admit(move |vouch| async move {
            let link = Framed::new(fd, transport)?;
            if let Some(key) = key {
                crate::listener::authenticate_peer(&link, &key, limit, vouch).await?;
            }
            Ok::<Framed, Error>(link)
        });
        let shared = shared.clone();
        conns.spawn(async move {
            match handshake.await {
                Some(Ok(link)) => serve_connection(link, shared).await,
                Some(Err(e)) => tracing::debug!("a manager refused a connection: {e}"),
                None => tracing::debug!("a manager closed a connection still in its exchange"),
            }
        });
    }
}

enum Listening {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listening {
    async fn accept(&self) -> std::io::Result<(OwnedFd, Transport)> {
        Ok(match self {
            Listening::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                (s.into_std()?.into(), Transport::Tcp)
            }
            Listening::Unix(l) => {
                let (s, _) = l.accept().await?;
                (s.into_std()?.into(), Transport::Unix)
            }
        })
    }
}

/// What a server process is given: the registration socket, a listening socket when the
/// manager has an address, the user types it may make, and whether it keeps shared memory
/// segments (a `SharedMemoryManager`'s server).
///
/// # Stopping
/// A server stops when every holder of the registration socket is gone, or is ended by a
/// signal: SIGTERM from its manager's `shutdown` or drop, or from this crate's exit
/// handler. Every server ignores a terminal's Ctrl-C, Ctrl-\ and Ctrl-Z, which reach the
/// whole foreground process group: its owner decides what they mean, as Python's server
/// ignores SIGINT (bpo-36368), and the server dies with its owner if the owner dies of
/// one. Then it runs the user's initializer, if any, as Python's does; if that fails, the
/// server exits with code 1 before it serves. A server that keeps segments also catches
/// SIGTERM, asks for it (instead of SIGKILL) when its parent dies, and ignores a hang-up,
/// so that it removes its segments however it is stopped, short of SIGKILL.
pub(super) async fn serve_process(
    registration: crate::wire::Fd,
    door: Option<(crate::wire::Fd, Option<Vec<u8>>, Duration)>,
    types: UserTypes,
    segments: Option<crate::wire::Fd>,
) {
    let (types, init) = match types.resolve() {
        Ok(t) => t,
        Err(e) => fail(e),
    };
    if let Err(e) = sys::ignore_terminal_signals() {
        tracing::debug!("a manager's server cannot ignore the terminal's signals: {e}");
    }
    if let Some(init) = init {
        let ReadyInitializer { entry, args, fds } = init;
        // A plain initializer runs as plain code, as a `Process` target does: on a thread
        // outside this server's runtime, so that it may block on a runtime of its own. An
        // `async fn` one (whose call only makes its future) runs on the runtime.
        let invoked = std::thread::scope(|s| s.spawn(|| entry(&args, fds)).join());
        let out = match invoked {
            Ok(crate::task::Invoked::Ready(r)) => r,
            Ok(crate::task::Invoked::Pending(fut)) => fut.await,
            Err(_) => Err(crate::task::Failure::Panicked(
                "the initializer's thread panicked".into(),
            )),
        };
        if let Err(message) = crate::task::initializer_outcome(out) {
            let e = Error::InitializerFailed {
                pid: sys::current_pid() as u32,
                message,
            };
            // The starting process fails its start with it; only if it cannot be told, the
            // error goes to stderr.
            match refuse_the_starter(registration.into_owned(), Failure::from(e.clone())).await {
                Ok(()) => std::process::exit(1),
                Err(_) => fail(e),
            }
        }
    }
    let keeps_segments = segments.is_some();
    let shared = Shared::new(types, segments.map(|fd| Ledger::from(fd.into_owned())));
    // Before the first request is read, so that no segment is kept without it.
    let terminate = match keeps_segments {
        true => match terminate_signal() {
            Ok(s) => Some(s),
            Err(e) => fail(e),
        },
        false => None,
    };
    let local = serve_registration(registration.into_owned(), shared.clone());
    let serving = async {
        match door {
            None => local.await,
            Some((listener, authkey, handshake_timeout)) => {
                let door = Door {
                    listener: listener.into_owned(),
                    authkey: authkey.map(Arc::from),
                    handshake_timeout,
                };
                tokio::select! {
                    r = local => r,
                    r = serve_door(door, shared.clone()) => r,
                }
            }
        }
    };
    let r = tokio::select! {
        r = serving => r,
        () = terminated(terminate) => Ok(()),
    };
    shared.remove_segments();
    if let Err(e) = r {
        fail(e);
    }
}

fn fail(e: Error) -> ! {
    eprintln!("tokio-multiprocessing manager: {e}");
    std::process::exit(1)
}

/// SIGTERM as a descriptor readable when it arrives, on the reactor, and asked for in place
/// of SIGKILL when the parent dies.
///
/// The signals a terminal sends a whole process group (Ctrl-C's SIGINT, Ctrl-\'s SIGQUIT,
/// Ctrl-Z's SIGTSTP, and SIGHUP when it goes) are ignored, as Python's manager server
/// ignores SIGINT: they would end the server before it removed its segments. The parent
/// decides what they mean; if it dies of one, its death's SIGTERM reaches the server.
fn terminate_signal() -> Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = sys::sigterm_fd()?;
    let fd = sys::register_owned(fd, tokio::io::Interest::READABLE)?;
    sys::soften_parent_death_signal()?;
    sys::ignore_terminal_signals()?;
    sys::ignore_hangup()?;
    Ok(fd)
}

/// Waits for SIGTERM; for ever without a descriptor for it (or if the reactor fails it).
async fn terminated(signal: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    match signal {
        Some(fd) if fd.readable().await.is_ok() => {}
        _ => std::future::pending().await,
    }
}

/// The user's code a server process runs, as it travels to it: each type's constructor,
/// and the initializer if there is one, as offsets into the binary both processes run,
/// with that binary's fingerprint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct UserTypes {
    #[serde(with = "serde_bytes")]
    fingerprint: Vec<u8>,
    makers: Vec<(String, i64)>,
    init: Option<Initializer>,
}

/// A server's initializer as it travels: its entry's offset, and its arguments encoded,
/// with the descriptors they hold.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Initializer {
    entry: i64,
    #[serde(with = "serde_bytes")]
    args: Vec<u8>,
    fds: Vec<crate::wire::Fd>,
}

/// An initializer found in this binary, ready to run.
struct ReadyInitializer {
    entry: InitializerEntry,
    args: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl UserTypes {
    /// The types of `types`, and `init` (an initializer's entry and its encoded arguments,
    /// whose descriptors are duplicated for the journey).
    pub(super) fn new(
        types: &HashMap<String, Maker>,
        init: Option<(InitializerEntry, &Encoded)>,
    ) -> Result<UserTypes> {
        let init = match init {
            Some((entry, args)) => Some(Initializer {
                entry: crate::task::initializer_entry_offset(entry),
                args: args.bytes.clone(),
                fds: args
                    .fds
                    .iter()
                    .map(|fd| Ok(sys::dup_fd(fd.as_fd())?.into()))
                    .collect::<Result<_>>()?,
            }),
            None => None,
        };
        Ok(UserTypes {
            fingerprint: sys::fingerprint().to_vec(),
            makers: types
                .iter()
                .map(|(name, &make)| (name.clone(), sys::offset_from_anchor(make as usize)))
                .collect(),
            init,
        })
    }

    fn resolve(self) -> Result<(HashMap<String, Maker>, Option<ReadyInitializer>)> {
        let same = sys::SameBinary::check(&self.fingerprint).ok_or_else(|| {
            Error::Protocol("the manager's user types come from another binary".into())
        })?;
        let makers = self
            .makers
            .into_iter()
            .map(|(name, offset)| Ok((name, sys::resolve_entry::<Maker>(offset, same)?)))
            .collect::<Result<_>>()?;
        let init = match self.init {
            Some(i) => Some(ReadyInitializer {
                entry: sys::resolve_entry::<InitializerEntry>(i.entry, same)?,
                args: i.args,
                fds: i.fds.into_iter().map(crate::wire::Fd::into_owned).collect(),
            }),
            None => None,
        };
        Ok((makers, init))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::proto::{LockOp, QueueOp};

    const ME: Caller = Caller { conn: 1, pid: 100 };
    const OTHER: Caller = Caller { conn: 2, pid: 200 };

    fn tag() -> Tag {
        Tag::of::<u8>()
    }

    fn id(r: Reply) -> u64 {
        match r {
            Reply::Id(id) => id,
            r => panic!("{r:?}"),
        }
    }

    /// Makes an object as `ME`, and returns its id.
    fn create(s: &mut State, initial: Initial) -> u64 {
        id(s.handle(ME, Request::Create(initial, tag())))
    }

    /// Makes an object as `ME`, holding a reference to it as a proxy does.
    fn create_held(s: &mut State, initial: Initial) -> u64 {
        let made = create(s, initial);
        s.handle(
            ME,
            Request::Incref {
                id: made,
                borrowed: false,
            },
        );
        made
    }

    /// A lock's acquire for `owner` that waits for ever.
    fn acquire(owner: u64) -> LockOp {
        LockOp::Acquire {
            owner,
            wait: Wait::Forever,
        }
    }

    #[test]
    fn python_index_rules() {
        assert_eq!(position(3, -1), Some(2));
        assert_eq!(position(3, 3), None);
        assert_eq!(position(3, -4), None);
        assert_eq!(position(0, 0), None);
    }

    #[test]
    fn a_name_is_found_only_with_the_tag_it_was_made_with() {
        let mut s = State::default();
        let q = id(s.handle(ME, Request::Create(Initial::Event, tag())));
        assert!(matches!(
            s.handle(ME, Request::Register("e".into(), q)),
            Reply::Done
        ));
        assert_eq!(id(s.handle(OTHER, Request::Lookup("e".into(), tag()))), q);
        match s.handle(OTHER, Request::Lookup("e".into(), Tag::of::<u16>())) {
            Reply::Failed(Failure::Message(m)) => assert!(m.contains("u16"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            s.handle(OTHER, Request::Lookup("nope".into(), tag())),
            Reply::Failed(_)
        ));
    }

    #[test]
    fn a_request_on_the_wrong_type_fails() {
        let mut s = State::default();
        let e = id(s.handle(ME, Request::Create(Initial::Event, tag())));
        match s.handle(ME, Request::Queue(e, QueueOp::Len)) {
            Reply::Failed(Failure::Message(m)) => assert!(m.contains("not a Queue"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            s.handle(ME, Request::Queue(99, QueueOp::Len)),
            Reply::Failed(_)
        ));
    }

    #[test]
    fn only_a_segment_keeping_server_makes_and_keeps_segments() {
        let mut plain = State::default();
        assert!(matches!(
            plain.handle(ME, Request::CreateSegment(64)),
            Reply::Failed(Failure::Message(_))
        ));
        assert!(matches!(
            plain.handle(ME, Request::Segments),
            Reply::Failed(Failure::Message(_))
        ));
        assert!(plain.take_segments().is_empty());

        let ledger = Ledger::new().unwrap();
        let starter = ledger.try_clone().unwrap();
        let mut s = State {
            segments: Some(Segments::new(ledger)),
            ..State::default()
        };
        let mut made = Vec::new();
        for size in [64, 4096] {
            match s.handle(ME, Request::CreateSegment(size)) {
                Reply::Names(mut n) if n.len() == 1 => made.push(n.remove(0)),
                r => panic!("{r:?}"),
            }
        }
        assert!(matches!(
            s.handle(OTHER, Request::CreateSegment(0)),
            Reply::Failed(Failure::Message(_))
        ));
        for (name, size) in made.iter().zip([64, 4096]) {
            let shm = crate::shared::SharedMemory::attach(name).unwrap();
            assert_eq!(shm.size(), size, "{name}");
        }
        match s.handle(OTHER, Request::Segments) {
            Reply::Names(n) => assert_eq!(n, made),
            r => panic!("{r:?}"),
        }
        // Each name was written down for the starting process.
        assert_eq!(starter.names(), made);
        // A connection's end leaves the segments: they belong to the server.
        s.release(ME);
        let shared = Shared {
            state: std::sync::Mutex::new(s),
            next_conn: AtomicU64::new(1),
        };
        shared.remove_segments();
        for name in &made {
            assert!(
                crate::shared::SharedMemory::attach(name).is_err(),
                "{name} is left"
            );
        }
        assert!(shared.state().take_segments().is_empty());
    }

    #[test]
    fn a_segment_removed_by_someone_is_forgotten() {
        let ledger = Ledger::new().unwrap();
        let starter = ledger.try_clone().unwrap();
        let mut s = State {
            segments: Some(Segments::new(ledger)),
            ..State::default()
        };
        let make = |s: &mut State| match s.handle(ME, Request::CreateSegment(64)) {
            Reply::Names(mut n) if n.len() == 1 => n.remove(0),
            r => panic!("{r:?}"),
        };
        let kept = make(&mut s);
        // A server that makes a segment at a time, each removed by its user once done.
        for _ in 0..1000 {
            let name = make(&mut s);
            crate::shared::SharedMemory::attach(&name)
                .unwrap()
                .unlink()
                .unwrap();
        }
        let last = make(&mut s);
        match s.handle(OTHER, Request::Segments) {
            Reply::Names(n) => assert_eq!(n, [kept.clone(), last.clone()]),
            r => panic!("{r:?}"),
        }
        assert_eq!(starter.names(), [kept.clone(), last.clone()]);
        // The ledger holds no more records than names were kept at once, however many
        // were made: 14 bytes each.
        assert!(starter.len() <= 14 * 66, "{} bytes", starter.len());
        for name in [kept, last] {
            crate::sys::shm_remove(&name).unwrap();
        }
    }

    /// A proxy lent by `ME` to a process that connects as `OTHER` and dies: whichever of the
    /// loan and its settling the server reads first, the object ends with the last
    /// reference (the settling read first left the loan standing for ever).
    #[test]
    fn a_loan_ends_with_its_borrower_in_either_order() {
        for settled_first in [false, true] {
            let mut s = State::default();
            let d = create_held(&mut s, Initial::Event);
            let lend = Request::Lend(d);
            let settle = Request::Incref {
                id: d,
                borrowed: true,
            };
            if settled_first {
                s.handle(OTHER, settle);
                s.handle(ME, lend);
            } else {
                s.handle(ME, lend);
                s.handle(OTHER, settle);
            }
            s.handle(ME, Request::Decref(d));
            assert!(s.objects.contains_key(&d), "the borrower holds it");
            s.release(OTHER);
            assert!(
                !s.objects.contains_key(&d),
                "settled first: {settled_first}: the object outlived its borrower"
            );
        }
    }

    /// A client's end of a connection served by `serve_connection` over a socket pair.
    fn connect(shared: &Arc<Shared>) -> Framed {
        let (mine, theirs) = sys::socketpair_stream().unwrap();
        tokio::spawn(serve_connection(
            Framed::unix(theirs).unwrap(),
            shared.clone(),
        ));
        Framed::unix(mine).unwrap()
    }

    /// Ends a client's connection as its death, or its client's drop, does: for every
    /// holder of its socket. (A child that another test of this process is starting holds
    /// a copy of every descriptor until it runs its program: dropped only, the socket would
    /// end once that child's copy is closed, later.)
    fn hang_up(link: Framed) {
        sys::shutdown_socket(link.as_fd(), true, true).unwrap();
    }

    async fn send(link: &Framed, id: u64, req: Request) {
        link.send(&mut FrameBuf::of(&(id, req)).unwrap())
            .await
            .unwrap();
    }

    /// The next reply that answers a request (heartbeats passed over), within 5 s.
    async fn reply_to(link: &Framed) -> Option<(u64, Reply)> {
        let next = async {
            loop {
                let r = link.recv().await.unwrap().decode::<(u64, Reply)>().unwrap();
                if r.0 != 0 {
                    return r;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .ok()
    }

    async fn call(link: &Framed, id: u64, req: Request) -> Reply {
        send(link, id, req).await;
        match reply_to(link).await {
            Some((got, r)) if got == id => r,
            other => panic!("request {id}: {other:?}"),
        }
    }

    /// Runs `test` on a current-thread runtime with three connections to one server.
    fn on_three_connections<F: std::future::Future<Output = ()>>(
        test: impl FnOnce(Framed, Framed, Framed) -> F,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let shared = Shared::new(HashMap::new(), None);
            test(connect(&shared), connect(&shared), connect(&shared)).await;
        });
    }

    /// A condition's waiter whose connection ends as a `notify(1)` comes (the server reads
    /// both in one turn, the end first: its socket is shut down before the notify is sent)
    /// is not the one notified: the waiter after it is.
    /// (The dead waiter's task, aborted but not yet dropped, took the notification.)
    #[test]
    fn a_notify_passes_over_a_waiter_whose_connection_ended() {
        use crate::manager::proto::ConditionOp;
        on_three_connections(|dead, live, notifier| async move {
            let c = id(call(
                &notifier,
                1,
                Request::Create(Initial::Condition { reentrant: true }, tag()),
            )
            .await);
            send(
                &notifier,
                0,
                Request::Incref {
                    id: c,
                    borrowed: false,
                },
            )
            .await;
            let lock = |owner| Request::Condition(c, ConditionOp::Lock(acquire(owner)));
            let wait = |owner| {
                Request::Condition(
                    c,
                    ConditionOp::Wait {
                        owner,
                        wait: Wait::Forever,
                    },
                )
            };
            assert!(matches!(call(&dead, 1, lock(1)).await, Reply::Held(_)));
            send(&dead, 2, wait(1)).await;
            assert!(matches!(call(&live, 1, lock(2)).await, Reply::Held(_)));
            send(&live, 2, wait(2)).await;
            // Taken once both waits have released it: both wait, the dead one first.
            assert!(matches!(call(&notifier, 2, lock(3)).await, Reply::Held(_)));
            // Past the time a wait spins: the server sleeps on the reactor.
            tokio::time::sleep(Duration::from_millis(20)).await;
            hang_up(dead);
            let notify = Request::Condition(c, ConditionOp::Notify { n: 1, owner: 3 });
            assert!(matches!(call(&notifier, 3, notify).await, Reply::Done));
            let release = Request::Condition(c, ConditionOp::Lock(LockOp::Release { owner: 3 }));
            assert!(matches!(call(&notifier, 4, release).await, Reply::Done));
            match reply_to(&live).await {
                Some((2, Reply::Waited { notified: true, .. })) => {}
                other => panic!("the live waiter's wait gave {other:?}"),
            }
        });
    }

    /// A condition's waiter notified, whose connection then ends before its wait does (it
    /// waits to retake the lock the notifier holds): its client never hears of the
    /// notification, which goes on to the waiter after it.
    #[test]
    fn a_notification_spent_on_a_waiter_whose_connection_then_ends_goes_on() {
        use crate::manager::proto::ConditionOp;
        on_three_connections(|dead, live, notifier| async move {
            async fn made(n: &Framed, rid: u64, initial: Initial) -> u64 {
                id(call(n, rid, Request::Create(initial, tag())).await)
            }
            let c = made(&notifier, 1, Initial::Condition { reentrant: true }).await;
            // A lock the dead waiter holds, so that its end can be seen.
            let marker = made(&notifier, 2, Initial::Lock { reentrant: false }).await;
            for object in [c, marker] {
                let incref = Request::Incref {
                    id: object,
                    borrowed: false,
                };
                send(&notifier, 0, incref).await;
            }
            let lock = |owner| Request::Condition(c, ConditionOp::Lock(acquire(owner)));
            let wait = |owner| {
                let wait = Wait::Forever;
                Request::Condition(c, ConditionOp::Wait { owner, wait })
            };
            assert!(matches!(
                call(&dead, 1, Request::Lock(marker, acquire(1))).await,
                Reply::Held(_)
            ));
            assert!(matches!(call(&dead, 2, lock(1)).await, Reply::Held(_)));
            send(&dead, 3, wait(1)).await;
            assert!(matches!(call(&live, 1, lock(2)).await, Reply::Held(_)));
            send(&live, 2, wait(2)).await;
            assert!(matches!(call(&notifier, 3, lock(3)).await, Reply::Held(_)));
            let notify = Request::Condition(c, ConditionOp::Notify { n: 1, owner: 3 });
            assert!(matches!(call(&notifier, 4, notify).await, Reply::Done));
            hang_up(dead);
            // The marker is free once the server has ended the dead connection.
            let take = Request::Lock(marker, acquire(3));
            let taken = call(&notifier, 5, take).await;
            assert!(
                matches!(taken, Reply::Failed(Failure::LockOwnerDied { .. })),
                "{taken:?}"
            );
            let release = Request::Condition(c, ConditionOp::Lock(LockOp::Release { owner: 3 }));
            assert!(matches!(call(&notifier, 6, release).await, Reply::Done));
            match reply_to(&live).await {
                Some((2, Reply::Waited { notified: true, .. })) => {}
                other => panic!("the live waiter's wait gave {other:?}"),
            }
        });
    }

    #[test]
    fn a_lock_left_by_a_closed_connection_is_reported_then_free() {
        let mut s = State::default();
        let l = create(&mut s, Initial::Lock { reentrant: false });
        let take = Request::Lock(l, acquire(0));
        assert!(matches!(
            s.attempt(ME, &take, false),
            Step::Done(Reply::Held(_))
        ));
        assert!(matches!(s.attempt(OTHER, &take, false), Step::Wait(_)));
        s.release(ME);
        assert!(matches!(
            s.attempt(OTHER, &take, false),
            Step::Done(Reply::Failed(Failure::LockOwnerDied { pid: 100 }))
        ));
        assert!(matches!(
            s.attempt(OTHER, &take, false),
            Step::Done(Reply::Held(_))
        ));
    }

    #[test]
    fn the_news_of_a_dead_holder_told_to_a_withdrawn_acquire_goes_to_the_next() {
        let mut s = State::default();
        let l = create(&mut s, Initial::Lock { reentrant: false });
        let take = Request::Lock(l, acquire(0));
        let told = |r: Step| {
            matches!(
                r,
                Step::Done(Reply::Failed(Failure::LockOwnerDied { pid: 100 }))
            )
        };
        let held = |r: Step| matches!(r, Step::Done(Reply::Held(_)));
        let give_back = |s: &mut State, step: Step| {
            let Step::Done(reply) = step else {
                panic!("a wait")
            };
            let undo = Undo::of(&take).and_then(|u| u.request(reply));
            s.handle(OTHER, undo.expect("an undo"));
        };
        // Told, then withdrawn: the next acquirer is told.
        assert!(held(s.attempt(ME, &take, false)));
        s.release(ME);
        let step = s.attempt(OTHER, &take, false);
        give_back(&mut s, step);
        assert!(told(s.attempt(OTHER, &take, false)));
        assert!(held(s.attempt(OTHER, &take, false)));
        // Told, then the lock taken before the news came back: it is not told again.
        s.handle(OTHER, Request::Lock(l, LockOp::Release { owner: 0 }));
        assert!(held(s.attempt(ME, &take, false)));
        s.release(ME);
        let step = s.attempt(OTHER, &take, false);
        assert!(held(s.attempt(OTHER, &take, false)));
        give_back(&mut s, step);
        s.handle(OTHER, Request::Lock(l, LockOp::Release { owner: 0 }));
        assert!(held(s.attempt(OTHER, &take, false)));
    }

    #[test]
    fn a_condition_over_a_lock_shares_it_and_keeps_it() {
        use crate::manager::proto::ConditionOp;
        let mut s = State::default();
        let l = create_held(&mut s, Initial::Lock { reentrant: false });
        let c = create_held(&mut s, Initial::ConditionOver { lock: l });
        // Taken through the lock, the condition's lock waits, and the reverse.
        assert!(matches!(
            s.attempt(ME, &Request::Lock(l, acquire(0)), false),
            Step::Done(Reply::Held(_))
        ));
        let through_condition = Request::Condition(c, ConditionOp::Lock(acquire(7)));
        assert!(matches!(
            s.attempt(OTHER, &through_condition, false),
            Step::Wait(_)
        ));
        // Held through the lock is held for the condition: notify is allowed.
        let notify = Request::Condition(c, ConditionOp::NotifyAll { owner: 7 });
        assert!(matches!(s.handle(ME, notify), Reply::Done));
        let release = Request::Condition(c, ConditionOp::Lock(LockOp::Release { owner: 7 }));
        assert!(matches!(s.handle(OTHER, release), Reply::Done));
        assert!(matches!(
            s.attempt(OTHER, &through_condition, false),
            Step::Done(Reply::Held(_))
        ));
        assert!(matches!(
            s.attempt(ME, &Request::Lock(l, acquire(0)), true),
            Step::Done(Reply::Failed(Failure::Timeout))
        ));
        // The lock's last proxy goes: the condition keeps it; with the condition, it goes.
        s.handle(ME, Request::Decref(l));
        assert!(matches!(s.object_mut(l), Some(Object::Lock(_))));
        s.handle(ME, Request::Decref(c));
        assert!(s.object_mut(c).is_none() && s.object_mut(l).is_none());
        // Over what is not a lock: refused.
        let e = create(&mut s, Initial::Event);
        assert!(matches!(
            s.handle(
                ME,
                Request::Create(Initial::ConditionOver { lock: e }, tag())
            ),
            Reply::Failed(Failure::Message(_))
        ));
    }
}
