//! [`QueueProxy`] and [`JoinableQueueProxy`]: a queue held by a manager (Python's
//! `manager.Queue()` and `manager.JoinableQueue()`), the queue that reaches processes on
//! other machines.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::proto::{Bytes, Failure, QueueOp, Reply, Request, Wait};
use super::server::Step;
use super::{Handle, decode, encode, expect_done, expect_len, unexpected};
use crate::error::Result;
use crate::queue::PutError;

/// The server's side of a queue.
pub(super) struct QueueState {
    items: VecDeque<Bytes>,
    maxsize: usize,
    joinable: bool,
    unfinished: usize,
    /// An item was put (wakes one getter).
    put: Arc<Notify>,
    /// An item was taken (wakes one putter).
    taken: Arc<Notify>,
    /// Every item put is done (wakes every joiner).
    done: Arc<Notify>,
}

impl QueueState {
    pub(super) fn new(maxsize: usize, joinable: bool) -> QueueState {
        QueueState {
            items: VecDeque::new(),
            maxsize,
            joinable,
            unfinished: 0,
            put: Arc::default(),
            taken: Arc::default(),
            done: Arc::default(),
        }
    }

    pub(super) fn handle(&mut self, op: QueueOp) -> Reply {
        match op {
            QueueOp::Len => Reply::Len(self.items.len() as u64),
            QueueOp::Unget(item) => {
                // Back where it was taken from; it never stopped counting as unfinished.
                self.items.push_front(item);
                self.put.notify_one();
                Reply::Done
            }
            QueueOp::MaxSize => Reply::Len(self.maxsize as u64),
            QueueOp::Unfinished => Reply::Len(self.unfinished as u64),
            QueueOp::TaskDone if !self.joinable => {
                Reply::message("task_done() on a queue that is not joinable")
            }
            QueueOp::TaskDone => match self.unfinished.checked_sub(1) {
                None => Reply::Failed(Failure::TaskDoneTooManyTimes),
                Some(n) => {
                    self.unfinished = n;
                    if n == 0 {
                        self.done.notify_waiters();
                    }
                    Reply::Done
                }
            },
            op => Reply::message(format!("{op:?} waits: it cannot be answered at once")),
        }
    }

    pub(super) fn attempt(&mut self, op: &QueueOp, timed_out: bool) -> Step {
        match op {
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
                None if timed_out => Step::Done(Reply::Failed(Failure::Empty)),
                None => Step::Wait(self.put.clone()),
            },
            QueueOp::Join if !self.joinable => {
                Step::Done(Reply::message("join() on a queue that is not joinable"))
            }
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

/// A queue held by a [`Manager`](crate::Manager) (Python's `manager.Queue()`): the same
/// methods and errors as the crate's [`Queue`](crate::Queue), reaching every process that
/// can reach the manager, on this machine or another. Items are encoded by the proxy; the
/// server keeps bytes. Cloning a proxy refers to the same queue.
///
/// A `get` waiting on an empty queue parks a task in the server and nothing else: other
/// requests of this proxy, and other clients, go on.
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

    async fn put_with(&self, item: T, wait: Wait) -> std::result::Result<(), PutError<T>> {
        let bytes = match encode(&self.0.link, &item) {
            Ok(b) => b,
            Err(e) => return Err(PutError::new(e, item)),
        };
        match self.op(QueueOp::Put { item: bytes, wait }).await {
            Ok(r) => expect_done(r).map_err(|e| PutError::new(e, item)),
            Err(e) => Err(PutError::new(e, item)),
        }
    }

    async fn get_with(&self, wait: Wait) -> Result<T> {
        match self.op(QueueOp::Get { wait }).await? {
            Reply::Item(Some(b)) => decode(&self.0.link, b),
            r => Err(unexpected(r)),
        }
    }

    /// Puts `item`, waiting while a bounded queue is full (Python's `put()`).
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode) if the item cannot be encoded; [`Error::Closed`](crate::Error::Closed) if the server is
    /// gone. The item is handed back in the [`PutError`].
    ///
    /// # Cancel safety
    /// Not cancel safe: a `put` dropped while it waits for room is withdrawn, but one
    /// dropped after the server took the item leaves it in the queue.
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

    /// Puts `item` if there is room now, else fails with [`Error::Full`](crate::Error::Full) (Python's
    /// `put_nowait`). It asks the server, so it is async.
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
    /// [`Error::Decode`](crate::Error::Decode) if the item is not a `T` (it is consumed); [`Error::Closed`](crate::Error::Closed) if the
    /// server is gone or unreachable (within three heartbeats).
    ///
    /// # Cancel safety
    /// Cancel safe: a `get` dropped while it waits is withdrawn from the server, and an item
    /// the server had already handed out to it is put back at the front of the queue.
    pub async fn get(&self) -> Result<T> {
        self.get_with(Wait::Forever).await
    }

    /// [`get`](Self::get), giving up after `timeout` with [`Error::Empty`](crate::Error::Empty) (Python's
    /// `get(timeout=...)`). The time is kept by the server.
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`](crate::Error::Empty).
    ///
    /// # Cancel safety
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_with(Wait::For(timeout)).await
    }

    /// Removes and returns an item if one is there now, else fails with [`Error::Empty`](crate::Error::Empty)
    /// (Python's `get_nowait`).
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
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn qsize(&self) -> Result<usize> {
        expect_len(self.op(QueueOp::Len).await?)
    }

    /// Whether the queue is empty (Python's `empty()`).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn empty(&self) -> Result<bool> {
        Ok(self.qsize().await? == 0)
    }

    /// Whether a bounded queue is full (Python's `full()`).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn full(&self) -> Result<bool> {
        let max = self.maxsize().await?;
        Ok(max > 0 && self.qsize().await? >= max)
    }

    /// The bound the queue was made with; 0 for none.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn maxsize(&self) -> Result<usize> {
        expect_len(self.op(QueueOp::MaxSize).await?)
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueueProxy<T> {
    /// Says that an item taken with `get` is dealt with (Python's `task_done()`).
    ///
    /// # Errors
    /// [`Error::TaskDoneTooManyTimes`](crate::Error::TaskDoneTooManyTimes) if called more times than items were put;
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have counted.
    pub async fn task_done(&self) -> Result<()> {
        expect_done(self.0.op(QueueOp::TaskDone).await?)
    }

    /// The number of items put and not yet marked done.
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn unfinished(&self) -> Result<usize> {
        expect_len(self.0.op(QueueOp::Unfinished).await?)
    }

    /// Waits until every item put has been marked done (Python's `join()`).
    ///
    /// # Errors
    /// [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `join` is withdrawn and changes nothing.
    pub async fn join(&self) -> Result<()> {
        expect_done(self.0.op(QueueOp::Join).await?)
    }
}
