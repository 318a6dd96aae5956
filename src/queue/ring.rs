//! The ring side of a put: publishing a slot (an item's bytes, or the marker of a packet)
//! in the shared ring, and waiting for room in it, including room held by a process that
//! may have died (see "Processes killed midway" in the queue's docs).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::unix::AsyncFdReadyGuard;

use super::header::COUNTED;
use super::inner::Inner;
use super::reactor::Reactor;
use super::shutdown::PutKind;
use crate::error::{Error, Result};
use crate::sync::Watch;
use crate::sys::{self, Message, Pushed};

impl Inner {
    /// Publishes a slot now, counting it as unfinished for a joinable queue: `data`, or
    /// (`None`) the marker of the packet tagged [`next_tag`](super::header::Header::next_tag).
    /// If the ring is full, says whether a live process holds the slot needed (see
    /// [`Pushed::Held`]).
    ///
    /// A marker is published by the packet lock's holder, which then advances the tag and
    /// clears its record of a packet sent (see `packet.rs`). A holder that dies before the
    /// tag advances leaves the next holder to publish the same marker again, and one that
    /// dies after leaves it to publish a marker for the next tag: a marker too many, whose
    /// consumer finds no packet of its tag and skips it, rather than one too few.
    pub(super) fn try_push(&self, data: Option<(&[u8], PutKind)>) -> Pushed {
        self.try_push_counted(data, false)
    }

    /// [`try_push`](Self::try_push) of a slot that a joinable queue counts as unfinished
    /// already (`counted`): a marker whose put returned before it was published (see
    /// `push_marker`).
    ///
    /// The slot is counted once it is ours, just before it is published, so that no
    /// consumer's `task_done` for it comes first, and a try that finds no room counts
    /// nothing: a producer killed while it waits for room leaves no count behind, for
    /// `join` to wait on for ever. A marker counted already clears its record of that
    /// ([`COUNTED`]) at the same point instead: a holder killed after the marker is out and
    /// before its record is cleared leaves the next holder to publish a marker too many,
    /// which it counts, as the consumer that skips it uncounts it.
    ///
    /// An item's bytes are refused once the slot is claimed, if the queue was shut down so
    /// as to refuse its kind of put ([`Pushed::Refused`]): a get that sees the shutdown,
    /// then finds the ring empty, is then sure no item comes after it (see `shutdown.rs`).
    /// A marker is never refused: its packet is in the socket already.
    pub(super) fn try_push_counted(&self, data: Option<(&[u8], PutKind)>, counted: bool) -> Pushed {
        let header = self.header();
        let joinable = self.done.is_some();
        // Only a marker reads the tag: the word shares its cache line with the packet lock's
        // record, which small items leave alone.
        let message = match data {
            Some((d, _)) => Message::Data(d),
            None => Message::Marker(header.next_tag().load(Ordering::SeqCst)),
        };
        let pushed = self.ring.try_push_then(message, || {
            if let Some((_, kind)) = data
                && self.check_put(kind).is_err()
            {
                return false;
            }
            if counted {
                header.packet_sent().fetch_and(!COUNTED, Ordering::SeqCst);
            } else if joinable {
                header.unfinished().fetch_add(1, Ordering::SeqCst);
            }
            true
        });
        if let (Message::Marker(tag), Pushed::Done) = (message, &pushed) {
            header.next_tag().store(tag + 1, Ordering::SeqCst);
            header.packet_sent().store(0, Ordering::SeqCst);
        }
        if pushed == Pushed::Done {
            self.recent.mark();
            self.notify_consumers();
            self.drop_if_stopped();
            return pushed;
        }
        match pushed {
            // Our own process (another thread) frees it and wakes us as any consumer does.
            Pushed::Held(pid) if pid == sys::cached_pid() => Pushed::Full,
            // A get may wait for the slot given up, to see whether it is published.
            Pushed::Refused => {
                self.notify_consumers();
                Pushed::Refused
            }
            other => other,
        }
    }

    /// Forgets a marker that stood for no packet (see [`take_locked`](Self::take_locked)): a
    /// joinable queue counted it as unfinished.
    pub(super) fn forget_marker(&self) {
        tracing::debug!("a queue marker stood for no packet: its dead producer never sent it");
        self.uncount();
    }

    /// Counts one more item as unfinished, in a joinable queue.
    pub(super) fn count(&self) {
        if self.done.is_some() {
            self.header().unfinished().fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Counts one item fewer as unfinished, in a joinable queue, waking the joiners if none
    /// is left.
    pub(super) fn uncount(&self) {
        if self.done.is_some() && self.header().unfinished().fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake_joiners();
        }
    }

    /// Publishes a slot, waiting for room: an item's bytes, or (`None`) a marker. An item
    /// fails with [`Error::ShutDown`](crate::Error::ShutDown) if the queue is shut down
    /// meanwhile so as to refuse its kind of put. While the slot it needs is held by a live
    /// process, it also watches that process: should it die there, its slot is freed by the
    /// next try (see "Owner death" in the ring's docs), and no consumer would wake us.
    ///
    /// `counted`: a joinable queue counts the slot as unfinished already (see
    /// [`try_push_counted`](Self::try_push_counted)).
    pub(super) async fn push_waiting(
        &self,
        r: &Reactor,
        item: Option<(&[u8], PutKind)>,
        counted: bool,
    ) -> Result<()> {
        match self.try_push_counted(item, counted) {
            Pushed::Done => return Ok(()),
            Pushed::Refused => return Err(Error::ShutDown),
            Pushed::Full | Pushed::Held(_) => {}
        }
        let producers = self.header().producers();
        let _counted = producers.count_waiter();
        let mut guard: Option<AsyncFdReadyGuard<'_, Arc<OwnedFd>>> = None;
        let mut watch: Option<Watch> = None;
        loop {
            producers.rearm();
            // A marker's packet is out already: its marker always follows.
            if let Some((_, kind)) = item {
                self.check_put(kind)?;
            }
            match self.try_push_counted(item, counted) {
                Pushed::Done => return Ok(()),
                Pushed::Refused => return Err(Error::ShutDown),
                Pushed::Full => watch = None,
                Pushed::Held(pid) => {
                    // A slot's word has room for a bare pid only (see the ring's docs).
                    let owner = u64::from(pid);
                    if watch.as_ref().is_none_or(|w| w.owner != owner) {
                        watch = Watch::open(owner)?;
                        if watch.is_none() {
                            // Gone already: the next try frees its slot.
                            continue;
                        }
                    }
                }
            }
            if let Some(mut g) = guard.take() {
                g.clear_ready();
            }
            match &watch {
                Some(w) => tokio::select! {
                    g = r.space.readable() => guard = Some(g?),
                    died = w.exited() => {
                        died?;
                        watch = None;
                    }
                },
                None => guard = Some(r.space.readable().await?),
            }
        }
    }
}
