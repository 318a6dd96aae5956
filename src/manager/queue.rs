//! [`QueueProxy`] and [`JoinableQueueProxy`]: a queue held by a manager (Python's
//! `manager.Queue()` and `manager.JoinableQueue()`), the queue that reaches processes on
//! other machines.
//!
//! # Two ways to one queue
//! The server first keeps a queue's items itself, and every call is a round trip to it.
//! When a client on this machine (a local manager's link, a Unix socket) first uses the
//! queue, the server moves it into a [`Ring`], the crate's own [`Queue`] of encoded items,
//! and sends the client its descriptors: from then on that client puts and gets in shared
//! memory, with no round trip, while the server carries out the calls of clients on other
//! machines on the same ring. The move happens under the server's lock: items held so far
//! go into the ring in order, a joinable queue's count of items handed out and not yet
//! done goes with them, and calls waiting in the server go on waiting on the ring. A queue
//! holding an item too large for a ring slot, or more items than its ring holds, is not
//! moved; the client asks again a little later, reaching the server meanwhile.
//!
//! A ring differs from the server's queue in three ways, all the crate's `Queue`'s: an
//! unbounded queue (a `maxsize` of 0) holds [`Queue::UNBOUNDED_CAPACITY`] items before `put`
//! waits; an item given back after a withdrawn `get` of a client elsewhere goes to the back
//! (a ring has no front to put it in); and a client here waiting on the ring learns that the
//! server died from the loss of its connection (the wait ends with `ManagerLost`), not from the
//! server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::proto::{Bytes, Failure, QueueOp, Reply, Request, Wait};
use super::server::{Shared, Step, object};
use super::{Handle, decode, encode, expect_bool, expect_done, expect_len, unexpected};
use crate::error::{Error, Result};
use crate::queue::{JoinableQueue, PutError, Queue, SLOT_DATA};

/// A queue's ring: the crate's own [`Queue`] of encoded items, made when a client on this
/// machine first asks for it. From then on, clients here put and get through it directly
/// (shared memory, no server round trip), and the server carries out the calls of clients
/// elsewhere on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Ring {
    Plain(Queue<Bytes>),
    Joinable(JoinableQueue<Bytes>),
}

impl Ring {
    fn queue(&self) -> &Queue<Bytes> {
        match self {
            Ring::Plain(q) => q,
            Ring::Joinable(q) => q,
        }
    }
}

/// The server's side of a queue: its items, until a ring takes them over.
pub(super) struct QueueState {
    items: VecDeque<Bytes>,
    ring: Option<Ring>,
    maxsize: usize,
    joinable: bool,
    unfinished: usize,
    /// An item was put (wakes one getter).
    put: Arc<Notify>,
    /// An item was taken (wakes one putter).
    taken: Arc<Notify>,
    /// Every item put is done (wakes every joiner).
    done: Arc<Notify>,
    /// Items given back to a full ring, each waiting for room; they end with the queue.
    put_backs: JoinSet<()>,
    /// Shut down: puts fail, gets fail once the queue is empty.
    shut_down: bool,
    /// Shut down immediately: gets fail too.
    stopped: bool,
}

fn into_error(e: PutError<Bytes>) -> Error {
    e.into_parts().0
}

/// A failure of the crate's queue, as the proxy reports it.
fn failed(e: Error) -> Reply {
    Reply::Failed(e.into())
}

impl QueueState {
    pub(super) fn new(maxsize: usize, joinable: bool) -> QueueState {
        QueueState {
            items: VecDeque::new(),
            ring: None,
            maxsize,
            joinable,
            unfinished: 0,
            put: Arc::default(),
            taken: Arc::default(),
            done: Arc::default(),
            put_backs: JoinSet::new(),
            shut_down: false,
            stopped: false,
        }
    }

    pub(super) fn handle(&mut self, op: QueueOp) -> Reply {
        if let QueueOp::Attach = op {
            return self.attach();
        }
        if let Some(ring) = self.ring.clone() {
            return self.handle_ring(&ring, op);
        }
        match op {
            QueueOp::Len => Reply::Len(self.items.len() as u64),
            // Shut down immediately since it was taken: dropped, as the items left were, and
            // done, as no consumer holds it.
            QueueOp::Unget(_) if self.stopped => {
                if self.joinable {
                    self.task_done();
                }
                Reply::Failed(Failure::ShutDown)
            }
            QueueOp::Unget(item) => {
                // Back where it was taken from; it never stopped counting as unfinished.
                self.items.push_front(item);
                self.put.notify_one();
                Reply::Done
            }
            QueueOp::MaxSize => Reply::Len(self.maxsize as u64),
            // The server's own items have no limit but `maxsize`.
            QueueOp::Full => Reply::Bool(self.maxsize > 0 && self.items.len() >= self.maxsize),
            QueueOp::Unfinished => Reply::Len(self.unfinished as u64),
            QueueOp::TaskDone if !self.joinable => not_joinable("task_done()"),
            QueueOp::TaskDone => self.task_done(),
            QueueOp::Shutdown { immediate: false } => {
                self.shut_down = true;
                self.wake_all();
                Reply::Done
            }
            op => Reply::message(format!("{op:?} waits: it cannot be answered at once")),
        }
    }

    /// Counts one item of a joinable queue done, waking the joiners if none is left.
    fn task_done(&mut self) -> Reply {
        match self.unfinished.checked_sub(1) {
            None => Reply::Failed(Failure::TaskDoneTooManyTimes),
            Some(n) => {
                self.unfinished = n;
                if n == 0 {
                    self.done.notify_waiters();
                }
                Reply::Done
            }
        }
    }

    /// Wakes every put, get and join waiting on the items the server holds, to look again.
    fn wake_all(&self) {
        self.put.notify_waiters();
        self.taken.notify_waiters();
        self.done.notify_waiters();
    }

    /// Shuts the queue the server holds down at once, dropping its items; how many.
    fn stop(&mut self) -> usize {
        self.shut_down = true;
        self.stopped = true;
        let dropped = std::mem::take(&mut self.items).len();
        if self.joinable {
            self.unfinished = self.unfinished.saturating_sub(dropped);
        }
        self.wake_all();
        dropped
    }

    fn handle_ring(&mut self, ring: &Ring, op: QueueOp) -> Reply {
        match (ring, op) {
            (_, QueueOp::Len) => Reply::Len(ring.queue().qsize() as u64),
            (_, QueueOp::MaxSize) => Reply::Len(self.maxsize as u64),
            (_, QueueOp::Full) => Reply::Bool(ring.queue().full()),
            (Ring::Joinable(q), QueueOp::Unfinished) => Reply::Len(q.unfinished() as u64),
            (Ring::Plain(_), QueueOp::Unfinished) => Reply::Len(0),
            (Ring::Joinable(q), QueueOp::TaskDone) => match q.task_done() {
                Ok(()) => Reply::Done,
                Err(e) => failed(e),
            },
            (Ring::Plain(_), QueueOp::TaskDone) => not_joinable("task_done()"),
            (_, QueueOp::Shutdown { immediate: false }) => {
                ring.queue().shutdown();
                Reply::Done
            }
            (_, QueueOp::Unget(item)) => match ring.queue().put_back_nowait(item) {
                Ok(()) => Reply::Done,
                Err(e) => match e.into_parts() {
                    // A ring cannot put back in front: behind, once there is room.
                    (Error::Full, item) => {
                        let ring = ring.clone();
                        while self.put_backs.try_join_next().is_some() {}
                        self.put_backs.spawn(async move {
                            if let Err(e) = ring.queue().put_back(item).await {
                                tracing::debug!(
                                    "a queue item could not be put back: {}",
                                    e.error()
                                );
                            }
                        });
                        Reply::Done
                    }
                    (e, _) => failed(e),
                },
            },
            (_, op) => Reply::message(format!("{op:?} waits: it cannot be answered at once")),
        }
    }

    /// The queue's ring, made now from the items held so far if there is none. Refused
    /// (the server keeps the queue) when they cannot all move into a ring at once.
    fn attach(&mut self) -> Reply {
        if let Some(ring) = &self.ring {
            return Reply::Ring(ring.clone());
        }
        if self.shut_down {
            return Reply::message("a queue shut down before it had a ring stays with the server");
        }
        if self.maxsize > Queue::<Bytes>::MAX_MAXSIZE {
            return Reply::message("this queue's maxsize is too large for a ring");
        }
        let capacity = match self.maxsize {
            0 => Queue::<Bytes>::UNBOUNDED_CAPACITY,
            n => n,
        };
        // Small items only: they go into the ring's slots, which cannot refuse them.
        let fits = self.items.len() <= capacity
            && self
                .items
                .iter()
                .all(|b| b.len() + RING_ITEM_OVERHEAD <= SLOT_DATA);
        if !fits {
            return Reply::message("this queue holds too much to move into a ring now");
        }
        // Enough descriptors are kept for connections, whatever rings clients ask for.
        if !room_for_a_ring() {
            return Reply::message("the server is short of descriptors for a queue's ring");
        }
        let made = match self.joinable {
            true => JoinableQueue::with_maxsize(self.maxsize).map(Ring::Joinable),
            false => Queue::with_maxsize(self.maxsize).map(Ring::Plain),
        };
        let ring = match made {
            Ok(r) => r,
            Err(e) => return failed(e),
        };
        let moved = self.items.len();
        let mut items = std::mem::take(&mut self.items).into_iter();
        for item in items.by_ref() {
            if let Err(e) = ring.queue().put_nowait(item) {
                // Room and sizes were checked, so this should not happen; if it does, every
                // item goes back where it was, in order, and the server keeps the queue.
                let (e, item) = e.into_parts();
                while let Ok(b) = ring.queue().get_nowait() {
                    self.items.push_back(b);
                }
                self.items.push_back(item);
                self.items.extend(items);
                return Reply::message(format!("this queue could not move into a ring: {e}"));
            }
        }
        if let Ring::Joinable(q) = &ring {
            // Items handed out and not yet marked done still count.
            q.add_unfinished(self.unfinished.saturating_sub(moved) as u64);
        }
        self.ring = Some(ring.clone());
        // Waits parked on the items held so far go on with the ring.
        self.wake_all();
        Reply::Ring(ring)
    }

    pub(super) fn attempt(&mut self, op: &QueueOp, timed_out: bool) -> Step {
        if let Some(ring) = &self.ring {
            return attempt_ring(ring, op, timed_out, &self.put);
        }
        match op {
            QueueOp::Put { .. } if self.shut_down => Step::Done(Reply::Failed(Failure::ShutDown)),
            QueueOp::Get { .. } if self.stopped => Step::Done(Reply::Failed(Failure::ShutDown)),
            QueueOp::Shutdown { immediate: true } => Step::Done(Reply::Len(self.stop() as u64)),
            QueueOp::Put { item, .. } => {
                if self.maxsize > 0 && self.items.len() >= self.maxsize {
                    return match timed_out {
                        true => Step::Done(Reply::Failed(Failure::Full)),
                        false => Step::Wait(self.taken.clone()),
                    };
                }
                self.items.push_back(item.clone());
                if self.joinable {
                    self.unfinished += 1;
                }
                self.put.notify_one();
                Step::Done(Reply::Done)
            }
            QueueOp::Get { .. } => match self.items.pop_front() {
                Some(item) => {
                    self.taken.notify_one();
                    Step::Done(Reply::Item(Some(item)))
                }
                None if self.shut_down => Step::Done(Reply::Failed(Failure::ShutDown)),
                None if timed_out => Step::Done(Reply::Failed(Failure::Empty)),
                None => Step::Wait(self.put.clone()),
            },
            QueueOp::Join if !self.joinable => Step::Done(not_joinable("join()")),
            QueueOp::Join if self.unfinished == 0 => Step::Done(Reply::Done),
            QueueOp::Join => Step::Wait(self.done.clone()),
            op => Step::Done(self.handle_ref(op)),
        }
    }

    fn handle_ref(&mut self, op: &QueueOp) -> Reply {
        match op {
            QueueOp::Len => self.handle(QueueOp::Len),
            _ => Reply::message("this request does not wait"),
        }
    }
}

/// The descriptors a ring holds (a joinable queue's, nine), and those the server keeps
/// free for connections whatever rings clients ask for.
const RING_DESCRIPTORS: u64 = 9;
const SPARE_DESCRIPTORS: u64 = 128;

/// Whether this process can take on a ring's descriptors and keep a margin.
pub(super) fn room_for_a_ring() -> bool {
    crate::sys::descriptors_left().is_none_or(|n| n >= RING_DESCRIPTORS + SPARE_DESCRIPTORS)
}

/// The bytes a ring adds to an encoded item (its MessagePack header as a byte string).
const RING_ITEM_OVERHEAD: usize = 5;

fn not_joinable(what: &str) -> Reply {
    Reply::message(format!("{what} on a queue that is not joinable"))
}

/// One try at a request that may wait, on a ring; `wait` is only a sign that it must
/// (a ring's waits are its own, see [`wait`]).
fn attempt_ring(ring: &Ring, op: &QueueOp, timed_out: bool, wait: &Arc<Notify>) -> Step {
    let must_wait = |e: Failure| match timed_out {
        true => Step::Done(Reply::Failed(e)),
        false => Step::Wait(wait.clone()),
    };
    match (ring, op) {
        (_, QueueOp::Put { item, .. }) => match ring.queue().put_nowait(item.clone()) {
            Ok(()) => Step::Done(Reply::Done),
            Err(e) => match e.into_parts().0 {
                Error::Full => must_wait(Failure::Full),
                e => Step::Done(failed(e)),
            },
        },
        (_, QueueOp::Get { .. }) => match ring.queue().get_nowait() {
            Ok(item) => Step::Done(Reply::Item(Some(item))),
            Err(Error::Empty) => must_wait(Failure::Empty),
            Err(e) => Step::Done(failed(e)),
        },
        (Ring::Joinable(q), QueueOp::Join) if q.unfinished() == 0 => Step::Done(Reply::Done),
        (Ring::Joinable(_), QueueOp::Join) => Step::Wait(wait.clone()),
        (Ring::Plain(_), QueueOp::Join) => Step::Done(not_joinable("join()")),
        // Drained by a wait of its own (see `wait_on_ring`): a drain may wait for the take
        // lock that a consumer holds.
        (_, QueueOp::Shutdown { immediate: true }) => Step::Wait(wait.clone()),
        _ => Step::Done(Reply::message("this request does not wait")),
    }
}

/// A queue's `put`, `get` or `join` that may wait, in the server: on the items it holds
/// (woken by their notifications), or, once the queue is a ring, on the ring.
pub(super) async fn wait(
    shared: &Shared,
    id: u64,
    op: QueueOp,
    deadline: Option<tokio::time::Instant>,
) -> Reply {
    let mut moved = None;
    let reply = shared
        .wait_on(deadline, |state, timed_out| {
            match object!(state, id, Queue) {
                Ok(q) => match &q.ring {
                    Some(ring) => {
                        moved = Some(ring.clone());
                        Step::Done(Reply::Done)
                    }
                    None => q.attempt(&op, timed_out),
                },
                Err(f) => Step::Done(Reply::Failed(f)),
            }
        })
        .await;
    match moved {
        Some(ring) => wait_on_ring(&ring, op, deadline).await,
        None => reply,
    }
}

/// Waits on a ring, until `deadline` if there is one.
async fn wait_on_ring(ring: &Ring, op: QueueOp, deadline: Option<tokio::time::Instant>) -> Reply {
    async fn until<F: std::future::Future>(
        deadline: Option<tokio::time::Instant>,
        f: F,
    ) -> Option<F::Output> {
        match deadline {
            None => Some(f.await),
            Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        }
    }
    match (ring, op) {
        (_, QueueOp::Put { item, .. }) => match until(deadline, ring.queue().put(item)).await {
            Some(Ok(())) => Reply::Done,
            Some(Err(e)) => failed(into_error(e)),
            None => Reply::Failed(Failure::Full),
        },
        (_, QueueOp::Get { .. }) => match until(deadline, ring.queue().get()).await {
            Some(Ok(item)) => Reply::Item(Some(item)),
            Some(Err(e)) => failed(e),
            None => Reply::Failed(Failure::Empty),
        },
        (Ring::Joinable(q), QueueOp::Join) => match q.join().await {
            Ok(()) => Reply::Done,
            Err(e) => failed(e),
        },
        (Ring::Plain(_), QueueOp::Join) => not_joinable("join()"),
        (_, QueueOp::Shutdown { immediate: true }) => match ring.queue().shutdown_immediate().await
        {
            Ok(n) => Reply::Len(n as u64),
            Err(e) => failed(e),
        },
        _ => Reply::message("this request does not wait"),
    }
}

/// A queue held by a [`Manager`](crate::Manager) (Python's `manager.Queue()`): the same
/// methods and errors as the crate's [`Queue`](crate::Queue), reaching every process that
/// can reach the manager, on this machine or another. Items are encoded by the proxy; the
/// server keeps bytes. Cloning a proxy refers to the same queue.
///
/// The process that started the manager ([`Manager::start`](crate::Manager::start), a
/// builder's `start` or `serve`) and the processes it passes proxies to put and get through the
/// queue's ring in shared memory, as the crate's [`Queue`](crate::Queue) does, with no
/// round trip to the server; the server carries out, on the same ring, the calls of clients
/// that [`connect`](crate::Manager::connect) by address. Such a queue, when unbounded, then holds
/// [`Queue::UNBOUNDED_CAPACITY`](crate::Queue::UNBOUNDED_CAPACITY) items before `put` waits,
/// like the crate's `Queue`, and a ring costs each such process eight descriptors.
///
/// A `get` waiting on an empty queue waits on the ring, or parks a task in the server, and
/// holds up nothing else: other requests of this proxy, and other clients, go on.
pub struct QueueProxy<T>(pub(super) Handle<T>);
proxy_traits!(QueueProxy<T>);

/// A joinable queue held by a [`Manager`](crate::Manager) (Python's
/// `manager.JoinableQueue()`): a [`QueueProxy`] whose items are counted until
/// [`task_done`](Self::task_done), so that [`join`](Self::join) waits for all of them.
/// Derefs to [`QueueProxy`] for `put`, `get` and the sizes.
pub struct JoinableQueueProxy<T>(pub(super) QueueProxy<T>);

impl<T> Clone for JoinableQueueProxy<T> {
    fn clone(&self) -> Self {
        JoinableQueueProxy(self.0.clone())
    }
}

impl<T> serde::Serialize for JoinableQueueProxy<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> serde::Deserialize<'de> for JoinableQueueProxy<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        QueueProxy::deserialize(d).map(JoinableQueueProxy)
    }
}

impl<T> std::fmt::Debug for JoinableQueueProxy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<JoinableQueueProxy object #{}>", self.0.0.id)
    }
}

impl<T> std::ops::Deref for JoinableQueueProxy<T> {
    type Target = QueueProxy<T>;
    fn deref(&self) -> &QueueProxy<T> {
        &self.0
    }
}

impl<T: Serialize + DeserializeOwned> QueueProxy<T> {
    async fn op(&self, op: QueueOp) -> Result<Reply> {
        self.0.call(Request::Queue(self.0.id, op)).await
    }

    /// The queue's ring, if this process reaches it directly (see [`Ring`]).
    async fn ring(&self) -> Option<Ring> {
        self.0.link.ring(self.0.id).await
    }

    /// The queue's ring, for a call that takes no wait on it (a `qsize`, a `task_done`):
    /// first spends a unit of the task's budget with tokio's scheduler, as the crate's queue
    /// does for a `put` or a `get`. Such a call on a ring returns without touching the
    /// reactor, so a task that loops on it would otherwise never yield, and starve every
    /// other task of its runtime (a task that polls `get_nowait` for the item another task
    /// of a current-thread runtime is to put, say, would poll for ever).
    async fn ring_at_once(&self) -> Option<Ring> {
        tokio::task::coop::consume_budget().await;
        self.ring().await
    }

    /// A wait on the ring, ended with [`Error::ManagerLost`](crate::Error::ManagerLost) if
    /// the connection to the server is lost meanwhile (the server is gone: nothing will come).
    async fn on_ring<R>(&self, wait: impl std::future::Future<Output = Result<R>>) -> Result<R> {
        tokio::select! {
            biased;
            r = wait => r,
            e = self.0.link.until_lost() => Err(e),
        }
    }

    async fn put_with(&self, item: T, wait: Wait) -> std::result::Result<(), PutError<T>> {
        let bytes = match encode(&self.0.link, &item) {
            Ok(b) => b,
            Err(e) => return Err(PutError::new(e, item)),
        };
        let ring = match wait {
            Wait::No => self.ring_at_once().await,
            _ => self.ring().await,
        };
        if let Some(ring) = ring {
            let q = ring.queue();
            let put = match wait {
                Wait::No => q.put_nowait(bytes).map_err(into_error),
                wait => {
                    let put = async {
                        match wait {
                            Wait::For(d) => q.put_timeout(bytes, d).await,
                            _ => q.put(bytes).await,
                        }
                        .map_err(into_error)
                    };
                    self.on_ring(put).await
                }
            };
            return put.map_err(|e| PutError::new(e, item));
        }
        match self.op(QueueOp::Put { item: bytes, wait }).await {
            Ok(r) => expect_done(r).map_err(|e| PutError::new(e, item)),
            Err(e) => Err(PutError::new(e, item)),
        }
    }

    async fn get_with(&self, wait: Wait) -> Result<T> {
        let ring = match wait {
            Wait::No => self.ring_at_once().await,
            _ => self.ring().await,
        };
        if let Some(ring) = ring {
            let q = ring.queue();
            let item = match wait {
                Wait::Forever => self.on_ring(q.get()).await,
                Wait::No => q.get_nowait(),
                Wait::For(d) => self.on_ring(q.get_timeout(d)).await,
            };
            return decode(&self.0.link, item?);
        }
        match self.op(QueueOp::Get { wait }).await? {
            Reply::Item(Some(b)) => decode(&self.0.link, b),
            r => Err(unexpected(r)),
        }
    }

    /// Puts `item`, waiting while a bounded queue is full (Python's `put()`).
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode) if the item cannot be encoded;
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone. The item is handed
    /// back in the [`PutError`].
    ///
    /// # Cancel safety
    /// Through a ring (a client on this machine, see the module notes), cancel safe as the
    /// crate's [`Queue::put`]. Through the server, not cancel safe: a `put` dropped while it
    /// waits for room is withdrawn, but one dropped after the server took the item leaves it
    /// in the queue.
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_with(item, Wait::Forever).await
    }

    /// [`put`](Self::put), giving up after `timeout` with [`Error::Full`](crate::Error::Full).
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`Error::Full`](crate::Error::Full).
    ///
    /// # Cancel safety
    /// As [`put`](Self::put).
    pub async fn put_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> std::result::Result<(), PutError<T>> {
        self.put_with(item, Wait::For(timeout)).await
    }

    /// Puts `item` if there is room now, else fails with
    /// [`Error::Full`](crate::Error::Full) (Python's `put_nowait`). It asks the server, so
    /// it is async.
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`Error::Full`](crate::Error::Full).
    ///
    /// # Cancel safety
    /// As [`put`](Self::put).
    pub async fn put_nowait(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_with(item, Wait::No).await
    }

    /// Removes and returns the next item, waiting until one is there (Python's `get()`).
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode) if the item is not a `T` (it is consumed);
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone or unreachable
    /// (within three heartbeats).
    ///
    /// # Cancel safety
    /// Cancel safe: a `get` dropped while it waits is withdrawn from the server, and an item
    /// the server had already handed out to it is put back: at the front of a queue the
    /// server holds, at the back of one in a ring (see the type's notes).
    pub async fn get(&self) -> Result<T> {
        self.get_with(Wait::Forever).await
    }

    /// [`get`](Self::get), giving up after `timeout` with
    /// [`Error::Empty`](crate::Error::Empty) (Python's `get(timeout=...)`). The time is
    /// kept by the server.
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`](crate::Error::Empty).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_with(Wait::For(timeout)).await
    }

    /// Removes and returns an item if one is there now, else fails with
    /// [`Error::Empty`](crate::Error::Empty) (Python's `get_nowait`).
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`](crate::Error::Empty).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn get_nowait(&self) -> Result<T> {
        self.get_with(Wait::No).await
    }

    /// The number of items in the queue (Python's `qsize()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn qsize(&self) -> Result<usize> {
        if let Some(ring) = self.ring_at_once().await {
            return Ok(ring.queue().qsize());
        }
        expect_len(self.op(QueueOp::Len).await?)
    }

    /// Whether the queue is empty (Python's `empty()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn empty(&self) -> Result<bool> {
        Ok(self.qsize().await? == 0)
    }

    /// Whether the queue is full, so that a `put` would wait (Python's `full()`): it holds
    /// `maxsize` items, or, unbounded and in a ring (see the type's notes),
    /// [`Queue::UNBOUNDED_CAPACITY`](crate::Queue::UNBOUNDED_CAPACITY), the most a ring
    /// holds. An unbounded queue that the server holds (one only clients connected by
    /// address use) is never full.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn full(&self) -> Result<bool> {
        if let Some(ring) = self.ring_at_once().await {
            return Ok(ring.queue().full());
        }
        expect_bool(self.op(QueueOp::Full).await?)
    }

    /// The bound the queue was made with; 0 for none.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn maxsize(&self) -> Result<usize> {
        if let Some(ring) = self.ring_at_once().await {
            return Ok(ring.queue().maxsize());
        }
        expect_len(self.op(QueueOp::MaxSize).await?)
    }

    /// Shuts the queue down for every process that reaches it, as the crate's
    /// [`Queue::shutdown`] does (Python 3.13's `shutdown()`): puts fail with
    /// [`Error::ShutDown`](crate::Error::ShutDown), and gets take the items left, then fail
    /// with it rather than wait. Every put and get waiting now wakes to that.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have shut the queue down.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(ring) = self.ring_at_once().await {
            ring.queue().shutdown();
            return Ok(());
        }
        expect_done(self.op(QueueOp::Shutdown { immediate: false }).await?)
    }

    /// Shuts the queue down at once, as the crate's [`Queue::shutdown_immediate`] does:
    /// gets fail too, the items left are dropped (in a joinable queue, each counts as done),
    /// and this returns how many.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have shut the queue down; once it
    /// has, gets fail whether the items left were dropped or not.
    pub async fn shutdown_immediate(&self) -> Result<usize> {
        if let Some(ring) = self.ring().await {
            return self.on_ring(ring.queue().shutdown_immediate()).await;
        }
        expect_len(self.op(QueueOp::Shutdown { immediate: true }).await?)
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> QueueProxy<T> {
    /// The queue's items as a [`futures::Stream`], each taken by a [`get`](Self::get), for
    /// `while let Some(item) = items.next().await`, stream combinators, or a pool's
    /// [`imap_stream`](crate::Pool::imap_stream). It ends once the queue is shut down and
    /// empty ([`Error::ShutDown`](crate::Error::ShutDown)); an item that is not a `T` yields
    /// its [`Error::Decode`](crate::Error::Decode) in its place, and any other error (the
    /// server lost, [`Error::ManagerLost`](crate::Error::ManagerLost)) is the stream's last
    /// item. Call it on a clone to go on putting through this proxy.
    ///
    /// # Cancel safety
    /// As [`get`](Self::get)'s: `next()` that loses a race leaves the `get` it began going
    /// on inside the stream, for the next call.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        crate::receive_stream::receives(self, |q| async move {
            let r = q.get().await;
            (q, r)
        })
    }

    /// The queue's sending side as a [`futures::Sink`], each item sent put by a
    /// [`put`](Self::put), in order: for `items.map(Ok).forward(q.into_sink())`. A failed
    /// put hands its item back in its [`PutError`], and the sink goes on with the next (the
    /// server lost, each put fails with [`Error::ManagerLost`](crate::Error::ManagerLost)).
    /// Call it on a clone to go on getting through this proxy.
    ///
    /// # Cancel safety
    /// See [`PutSink`](crate::PutSink): dropping the sink with a put in progress may lose
    /// that item, as a dropped `put`; `close().await` first loses nothing.
    pub fn into_sink(self) -> crate::PutSink<T> {
        crate::PutSink::new(self, |q, item| async move { q.put(item).await })
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueueProxy<T> {
    /// Says that an item taken with `get` is dealt with (Python's `task_done()`).
    ///
    /// # Errors
    /// [`Error::TaskDoneTooManyTimes`](crate::Error::TaskDoneTooManyTimes) if called more times
    /// than items were put; [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is
    /// gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have counted.
    pub async fn task_done(&self) -> Result<()> {
        if let Some(Ring::Joinable(q)) = self.0.ring_at_once().await {
            return q.task_done();
        }
        expect_done(self.0.op(QueueOp::TaskDone).await?)
    }

    /// The number of items put and not yet marked done.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn unfinished(&self) -> Result<usize> {
        if let Some(Ring::Joinable(q)) = self.0.ring_at_once().await {
            return Ok(q.unfinished());
        }
        expect_len(self.0.op(QueueOp::Unfinished).await?)
    }

    /// Waits until every item put has been marked done (Python's `join()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `join` is withdrawn and changes nothing.
    pub async fn join(&self) -> Result<()> {
        // The ring's `join` returns at once, touching nothing, when nothing is unfinished.
        if let Some(Ring::Joinable(q)) = self.0.ring_at_once().await {
            return self.0.on_ring(q.join()).await;
        }
        expect_done(self.0.op(QueueOp::Join).await?)
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> JoinableQueueProxy<T> {
    /// The queue's items as a [`futures::Stream`]; see [`QueueProxy::into_stream`]. Each
    /// item taken still wants its [`task_done`](Self::task_done): keep a clone for it.
    ///
    /// # Cancel safety
    /// As [`QueueProxy::into_stream`].
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        self.0.into_stream()
    }

    /// The queue's sending side as a [`futures::Sink`]; see [`QueueProxy::into_sink`]. Each
    /// item put counts as unfinished until its [`task_done`](Self::task_done).
    ///
    /// # Cancel safety
    /// As [`QueueProxy::into_sink`].
    pub fn into_sink(self) -> crate::PutSink<T> {
        self.0.into_sink()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's `shutdown(immediate=True)` counts each item it drops done, so that `join`
    /// returns once consumers are done with theirs. A get withdrawn after it took its item
    /// gives the item back; after an immediate shutdown that item is dropped too and counts
    /// done, in the server's own items as in a ring, or `join` would wait for ever.
    #[tokio::test]
    async fn an_item_given_back_after_an_immediate_shutdown_counts_as_done() {
        for ring in [false, true] {
            let mut q = QueueState::new(0, true);
            for i in 0..2u8 {
                let put = QueueOp::Put {
                    item: Bytes::from(vec![i]),
                    wait: Wait::Forever,
                };
                assert!(matches!(q.attempt(&put, false), Step::Done(Reply::Done)));
            }
            if ring {
                assert!(matches!(q.attach(), Reply::Ring(_)));
            }
            let get = QueueOp::Get {
                wait: Wait::Forever,
            };
            let taken = match q.attempt(&get, false) {
                Step::Done(Reply::Item(Some(item))) => item,
                _ => panic!("no item taken, ring: {ring}"),
            };
            let dropped = match &q.ring {
                Some(r) => match wait_on_ring(r, QueueOp::Shutdown { immediate: true }, None).await
                {
                    Reply::Len(n) => n,
                    _ => panic!("the ring's immediate shutdown failed"),
                },
                None => match q.attempt(&QueueOp::Shutdown { immediate: true }, false) {
                    Step::Done(Reply::Len(n)) => n,
                    _ => panic!("the immediate shutdown failed"),
                },
            };
            assert_eq!(dropped, 1, "ring: {ring}");
            assert!(matches!(
                q.handle(QueueOp::Unget(taken)),
                Reply::Failed(Failure::ShutDown)
            ));
            assert!(
                matches!(q.handle(QueueOp::Unfinished), Reply::Len(0)),
                "the item given back still counts, ring: {ring}"
            );
            assert!(matches!(
                q.attempt(&QueueOp::Join, false),
                Step::Done(Reply::Done)
            ));
        }
    }
}
