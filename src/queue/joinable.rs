//! [`JoinableQueue`]: Python's `multiprocessing.JoinableQueue`, a [`Queue`] that counts
//! unfinished items in its ring's header; the `task_done` that brings the count to zero
//! writes an eventfd, which wakes every process awaiting `join`.

use std::fmt;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Queue;
use crate::error::{Error, Result};
use crate::sys;

/// A [`Queue`] that counts unfinished items (Python's `multiprocessing.JoinableQueue`):
/// every `put` adds one, every [`task_done`](Self::task_done) takes one away, and
/// [`join`](Self::join) waits until none is left. It derefs to [`Queue`] for everything
/// else.
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor.
    pub fn new() -> Result<JoinableQueue<T>> {
        Queue::make(0, true).map(JoinableQueue)
    }

    /// A joinable queue holding at most `maxsize` items (0: unbounded).
    ///
    /// # Errors
    /// As [`Queue::with_maxsize`].
    pub fn with_maxsize(maxsize: usize) -> Result<JoinableQueue<T>> {
        Queue::make(maxsize, true).map(JoinableQueue)
    }

    /// Says that an item taken by `get` has been processed (Python's `task_done()`).
    ///
    /// # Errors
    /// [`Error::TaskDoneTooManyTimes`] if every item put is already done (nothing changes
    /// then); [`Error::HandleClosed`] after `close`.
    pub fn task_done(&self) -> Result<()> {
        self.0.inner.check_open()?;
        let done = self.0.inner.done_fd()?;
        let w = self.0.inner.header().unfinished();
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur == 0 || (cur as i64) < 0 {
                return Err(Error::TaskDoneTooManyTimes);
            }
            match w.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            sys::eventfd_add(done.as_fd(), 1)?;
        }
        Ok(())
    }

    /// The number of items put and not yet marked done.
    pub fn unfinished(&self) -> usize {
        let n = self.0.inner.header().unfinished().load(Ordering::Acquire);
        usize::try_from(n as i64).unwrap_or(0)
    }

    /// Counts `n` more items as unfinished: those a queue that moves here from elsewhere
    /// (a manager's) had handed out and not yet seen marked done.
    pub(crate) fn add_unfinished(&self, n: u64) {
        self.0
            .inner
            .header()
            .unfinished()
            .fetch_add(n, Ordering::SeqCst);
    }

    /// Waits until every item put has been marked done (Python's `join()`), in whichever
    /// process.
    ///
    /// An item stays unfinished until a `task_done` for it, whatever became of it: one whose
    /// consumer was killed before its `task_done` (during its `get`, say), or whose `get`
    /// failed with [`Error::Decode`] and was not followed by a `task_done`, keeps `join`
    /// waiting for ever, as in Python. Where consumers may die, bound the wait (with
    /// `tokio::time::timeout`) and read [`unfinished`](Self::unfinished). An item counts
    /// once it is in the queue, so a producer killed while its `put` waits for room counts
    /// nothing, and the large item of one killed after sending it is published by another
    /// process and counted once; only a producer killed in the few instructions between
    /// counting its item and publishing it leaves it counted (in Python, any producer
    /// killed between its `put` and its feeder's write).
    ///
    /// It first spends a unit of the task's budget with tokio's scheduler, as `get` and an
    /// [`Event`](crate::Event)'s `wait` do: a `join` with nothing unfinished returns without
    /// waiting, so a loop of them would otherwise never yield to the other tasks.
    ///
    /// # Errors
    /// [`Error::HandleClosed`] after `close`; an I/O error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: it only waits.
    pub async fn join(&self) -> Result<()> {
        tokio::task::coop::consume_budget().await;
        self.0.inner.check_open()?;
        if self.unfinished() == 0 {
            return Ok(());
        }
        let r = self.0.inner.reactor()?;
        let Some(done) = &r.done else {
            return Err(Error::InvalidArgument("not a JoinableQueue".into()));
        };
        loop {
            // The eventfd is never drained: every `task_done` that reaches zero writes to
            // it, which is a new readiness edge for every process waiting.
            let mut g = done.readable().await.map_err(Error::from)?;
            if self.unfinished() == 0 {
                return Ok(());
            }
            g.clear_ready();
        }
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> JoinableQueue<T> {
    /// The queue's items as a [`futures::Stream`]; see [`Queue::into_stream`]. Each item
    /// taken still wants its [`task_done`](Self::task_done): keep a clone for it.
    ///
    /// # Cancel safety
    /// `next()` is cancel safe: a receive it began goes on inside the stream, for the next
    /// call; dropping the stream loses nothing, as a dropped `get` does.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        self.0.into_stream()
    }

    /// The queue's sending side as a [`futures::Sink`]; see [`Queue::into_sink`]. Each item
    /// put counts as unfinished until its [`task_done`](Self::task_done).
    ///
    /// # Cancel safety
    /// As [`Queue::into_sink`].
    pub fn into_sink(self) -> crate::PutSink<T> {
        self.0.into_sink()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let q = Queue::deserialize(d)?;
        if q.inner.done.is_none() {
            return Err(serde::de::Error::custom(
                "a plain Queue arrived where a JoinableQueue was expected",
            ));
        }
        Ok(JoinableQueue(q))
    }
}
