//! Shutting a queue down (Python 3.13's `Queue.shutdown`), for every process that holds it:
//! a word in the ring's header says whether it was, and how (see
//! [`Header::shut_down`](super::header::Header::shut_down)); it only ever grows, so a queue
//! shut down stays so.
//!
//! - After `shutdown()` ([`DRAINING`]), puts fail and gets take
//!   what is left, then fail.
//! - After `shutdown_immediate()` ([`STOPPED`]), gets fail at once too, and the caller takes
//!   out and drops every item left, counting each done in a joinable queue, so that `join`
//!   returns once the items that consumers hold are done.
//!
//! Either way every waiter, in every process, is woken to look again: both sides' eventfds
//! are written whether anyone waits or not.
//!
//! A put reads the word again once it holds its place: a small item once its slot is
//! claimed, a large one once its send is recorded. If the queue was shut down by then, it
//! gives its place up and fails. So a get that reads the word, then finds the ring empty,
//! no slot being written and no send recorded, knows no put that returns `Ok` is left to
//! land an item, and ends (see [`take_while_draining`](Inner::take_while_draining)).
//! A large item's marker is never refused: its packet is in the socket already. After
//! `shutdown_immediate()` whoever publishes a slot looks at the word again, and takes out
//! and drops what is left, as the shutdown did (see
//! [`drop_if_stopped`](Inner::drop_if_stopped)): so is an item whose marker (a dead
//! producer's, or one that waited for room) came late, and a joinable queue's `join` is not
//! left waiting for it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::{DeserializeOwned, IgnoredAny};

use super::header::{DRAINING, OPEN, STOPPED};
use super::inner::Inner;
use super::item::Taken;
use crate::error::{Error, Result};
use crate::sync::Watch;
use crate::sys::{self, Head};

/// What a put puts, which decides whether a shutdown refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PutKind {
    /// A new item: refused once the queue is shut down.
    New,
    /// An item a get took and gave back (a manager's get withdrawn after it took its item):
    /// it was in the queue before the shutdown, so a plain shutdown takes it back for the
    /// gets to come; an immediate one refuses it, as it would have dropped it, and counts it
    /// done in a joinable queue.
    PutBack,
}

impl Inner {
    /// How the queue was shut down: [`OPEN`], [`DRAINING`] or [`STOPPED`].
    #[inline]
    fn shut_down_state(&self) -> u64 {
        self.header().shut_down().load(Ordering::SeqCst)
    }

    /// Whether `shutdown()` or `shutdown_immediate()` was called, in any process.
    pub(super) fn is_shut_down(&self) -> bool {
        self.shut_down_state() != OPEN
    }

    /// [`Error::ShutDown`] if the queue was shut down so as to refuse a put of this kind.
    #[inline]
    pub(super) fn check_put(&self, kind: PutKind) -> Result<()> {
        match (self.shut_down_state(), kind) {
            (OPEN, _) | (DRAINING, PutKind::PutBack) => Ok(()),
            _ => Err(Error::ShutDown),
        }
    }

    /// [`Error::ShutDown`] once the queue was shut down immediately: no get may take.
    #[inline]
    pub(super) fn check_gets_allowed(&self) -> Result<()> {
        match self.shut_down_state() {
            STOPPED => Err(Error::ShutDown),
            _ => Ok(()),
        }
    }

    /// What a get that found the queue empty answers: [`Taken::Empty`] to wait for an item,
    /// or [`Error::ShutDown`] if none will come (see
    /// [`take_while_draining`](Self::take_while_draining)).
    #[inline]
    pub(super) fn empty_or_shut_down<T: DeserializeOwned>(self: &Arc<Self>) -> Result<Taken<T>> {
        match self.shut_down_state() {
            OPEN => Ok(Taken::Empty),
            DRAINING => self.take_while_draining(),
            _ => Err(Error::ShutDown),
        }
    }

    /// After `shutdown()`, a get that found the queue empty looks again, now that it knows
    /// of the shutdown, and ends on [`Error::ShutDown`] only if no item can come:
    ///
    /// - A small item's put checks the shutdown word once its slot is claimed, and gives the
    ///   slot up if it was shut down (see [`ShmRing::try_push_then`]); a large item's put
    ///   checks it once its send is recorded ([`Header::packet_sent`]). So a put that read
    ///   "open" there claimed its slot, or recorded its send, before this get read the word.
    /// - So a send recorded means a marker to come: the get waits ([`Taken::Empty`]), as it
    ///   waits for a producer that sends (see [`sender_to_watch`](Self::sender_to_watch)).
    ///   A sender that died has its marker published here first (see
    ///   [`no_packet_awaits_its_marker`](Self::no_packet_awaits_its_marker)), so that a
    ///   get that does not wait takes its item too.
    /// - Then it takes again. If the ring is empty, and the slot at its head is not being
    ///   written, no put claimed a slot in time; one being written is waited for, watching
    ///   its writer (see [`writer_to_watch`](Self::writer_to_watch)), since items may be
    ///   published behind it.
    ///
    /// [`ShmRing::try_push_then`]: crate::sys::ShmRing::try_push_then
    /// [`Header::packet_sent`]: super::header::Header::packet_sent
    #[cold]
    fn take_while_draining<T: DeserializeOwned>(self: &Arc<Self>) -> Result<Taken<T>> {
        if !self.no_packet_awaits_its_marker()? {
            return Ok(Taken::Empty);
        }
        loop {
            match self.try_take_any()? {
                Taken::Empty => {}
                taken => return Ok(taken),
            }
            match self.ring.head() {
                Head::Empty => return Err(Error::ShutDown),
                Head::Writing(_) => return Ok(Taken::Empty),
                // Published, or taken, or given up, since the take looked: again.
                Head::Moved => {}
            }
        }
    }

    /// After `shutdown()`, the process writing the oldest slot, for a get that waits for it
    /// to wake should it die there (its slot is then freed, and no put comes to wake it);
    /// `None` if no other process writes it.
    pub(super) fn writer_to_watch(&self) -> Result<Option<Arc<Watch>>> {
        if self.shut_down_state() != DRAINING {
            return Ok(None);
        }
        match self.ring.head() {
            Head::Writing(pid) if pid != sys::cached_pid() => {
                Ok(Watch::open(u64::from(pid))?.map(Arc::new))
            }
            _ => Ok(None),
        }
    }

    /// Shuts the queue down to `state` ([`DRAINING`] or [`STOPPED`]), unless it was shut
    /// down further already, and wakes every waiter on both sides.
    pub(super) fn shut_down(&self, state: u64) {
        self.header().shut_down().fetch_max(state, Ordering::SeqCst);
        // Ordered before the drain's looks at the ring, as a publisher's slot is before its
        // look at the word (see `drop_if_stopped`): one of the two sees the other.
        std::sync::atomic::fence(Ordering::SeqCst);
        for fd in [&self.items, &self.space] {
            if let Err(e) = sys::eventfd_add(fd.as_fd(), 1) {
                tracing::debug!("cannot wake a queue's waiters for its shutdown: {e}");
            }
        }
    }

    /// Called by whoever just published a slot: once the queue was shut down immediately,
    /// takes out and drops every item left, this one among them (see the module docs), as
    /// [`drain`](Self::drain) does. It does not wait: the take lock is held only across
    /// steps that do not wait, or freed from a dead holder, so it is tried again until had.
    #[inline]
    pub(super) fn drop_if_stopped(&self) {
        // No fence needed on this path, which every put takes: the slot was published by a
        // sequentially consistent store, which comes before this sequentially consistent
        // load in their single order; the shutdown's fence orders its side.
        if self.shut_down_state() == STOPPED {
            self.drop_left();
        }
    }

    /// The body of [`drop_if_stopped`](Self::drop_if_stopped), once the queue was shut down
    /// immediately.
    #[cold]
    fn drop_left(&self) {
        loop {
            match self.drop_one(self.try_take_any()) {
                Ok(Some(true)) => {}
                Ok(Some(false)) => return,
                Ok(None) => std::thread::yield_now(),
                Err(e) => {
                    tracing::debug!("cannot drop an item put after an immediate shutdown: {e}");
                    return;
                }
            }
        }
    }

    /// Drops what a take found, counting it done in a joinable queue: `Some(true)` for an
    /// item (one that does not decode too), `Some(false)` if none was left, `None` if
    /// another consumer held the take lock.
    fn drop_one(&self, taken: Result<Taken<IgnoredAny>>) -> Result<Option<bool>> {
        match taken {
            Ok(Taken::Item(_)) | Err(Error::Decode { .. }) => {
                self.uncount();
                Ok(Some(true))
            }
            Ok(Taken::Empty) => Ok(Some(false)),
            Ok(Taken::Busy) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes out and drops every item left, counting each done in a joinable queue; the
    /// number dropped. An item that cannot be decoded is dropped too.
    pub(super) async fn drain(self: &Arc<Self>) -> Result<usize> {
        let mut dropped = 0;
        loop {
            let taken = match self.try_take_any::<IgnoredAny>() {
                Ok(Taken::Busy) => match self.take.lock().await {
                    Ok(guard) => self.take_locked(guard),
                    Err(Error::LockOwnerDied { pid }) => {
                        tracing::debug!(pid, "a queue's take lock was freed from its dead holder");
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                other => other,
            };
            match self.drop_one(taken)? {
                Some(true) => dropped += 1,
                Some(false) => return Ok(dropped),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::item::Item;
    use super::super::{JoinableQueue, Queue};
    use crate::error::Error;
    use crate::sys::{Message, Pushed};

    /// An item a get took and gives back (a manager's get withdrawn after it took it) was
    /// in the queue before a plain shutdown: it goes back in, for the gets to come, small or
    /// large, where a new item is refused. After an immediate shutdown it is refused too.
    #[test]
    fn an_item_put_back_after_a_shutdown_is_kept_unless_immediate() {
        for len in [1, 1000, 100_000] {
            let q = JoinableQueue::<Vec<u8>>::new().unwrap();
            q.put_nowait(vec![1; len]).unwrap();
            let taken = q.get_nowait().unwrap();
            q.shutdown();
            assert!(matches!(
                q.put_nowait(vec![2; len]).map_err(|e| e.into_parts().0),
                Err(Error::ShutDown)
            ));
            q.put_back_nowait(taken).unwrap();
            assert_eq!(q.unfinished(), 1, "counted once, {len} bytes");
            let again = q.get_nowait().unwrap();
            assert_eq!(again, vec![1; len]);
            assert!(matches!(q.get_nowait(), Err(Error::ShutDown)));

            let q = Queue::<Vec<u8>>::new().unwrap();
            q.put_nowait(vec![1; len]).unwrap();
            let taken = q.get_nowait().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            assert_eq!(rt.block_on(q.shutdown_immediate()).unwrap(), 0);
            let refused = rt.block_on(q.put_back(taken));
            assert!(matches!(
                refused.map_err(|e| e.into_parts().0),
                Err(Error::ShutDown)
            ));
        }
    }

    /// A get after `shutdown()` that finds the oldest slot still being written (its
    /// producer, preempted between claiming the slot and publishing it, may have items
    /// published behind it) waits for it, rather than failing as if the queue were empty:
    /// consumers that end on `ShutDown` left those items in the queue.
    #[test]
    fn a_get_after_a_shutdown_waits_for_a_slot_still_being_written() {
        let q = Queue::<u32>::new().unwrap();
        let Ok(Item::Small(first)) = q.inner.encode(&1u32) else {
            panic!("a u32 fits a slot");
        };
        let mut during = None;
        let pushed = q.inner.ring.try_push_then(Message::Data(&first), || {
            q.put_nowait(2).unwrap();
            q.shutdown();
            during = Some(q.get_nowait());
            true
        });
        assert_eq!(pushed, Pushed::Done);
        assert!(
            matches!(during, Some(Err(Error::Empty))),
            "a get while the slot is written: {during:?}"
        );
        assert_eq!(q.get_nowait().unwrap(), 1);
        assert_eq!(q.get_nowait().unwrap(), 2);
        assert!(matches!(q.get_nowait(), Err(Error::ShutDown)));
    }

    /// An item put back after an immediate shutdown is dropped, as the shutdown dropped the
    /// items left, and counts as done: no consumer holds it to call `task_done`, so `join`
    /// returns, whether it is put back at once or after a wait.
    #[test]
    fn an_item_refused_after_an_immediate_shutdown_counts_as_done() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for len in [1, 1000, 100_000] {
            for wait in [false, true] {
                let q = JoinableQueue::<Vec<u8>>::new().unwrap();
                q.put_nowait(vec![1; len]).unwrap();
                q.put_nowait(vec![2; len]).unwrap();
                let taken = q.get_nowait().unwrap();
                assert_eq!(rt.block_on(q.shutdown_immediate()).unwrap(), 1);
                assert_eq!(q.unfinished(), 1, "the item taken, {len} bytes");
                let refused = match wait {
                    false => q.put_back_nowait(taken),
                    true => rt.block_on(q.put_back(taken)),
                };
                assert!(matches!(
                    refused.map_err(|e| e.into_parts().0),
                    Err(Error::ShutDown)
                ));
                assert_eq!(q.unfinished(), 0, "{len} bytes, waiting: {wait}");
                rt.block_on(q.join()).unwrap();
            }
        }
    }
}
