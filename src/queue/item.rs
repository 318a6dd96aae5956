//! An item as the queue carries it: encoded once, put the way its size calls for (in a
//! ring slot, in a packet, or spilled to a memfd), and taken and decoded on the other side.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SLOT_DATA;
use super::inner::Inner;
use super::packet::TAG_LEN;
use super::shutdown::PutKind;
use super::spill::{Spilled, Spilling};
use crate::error::{Error, Result};
use crate::sync::{LockGuard, until};
use crate::sys::{self, Popped, Pushed};
use crate::wire::codec;
use crate::wire::max_frame_size;

/// The first byte of a packet: the item's encoding follows.
const KIND_INLINE: u8 = 0;
/// The first byte of a packet: the item's length follows, its encoding is in a memfd.
const KIND_SPILLED: u8 = 1;

/// What a look for an item found.
pub(super) enum Taken<T> {
    /// The oldest item, taken.
    Item(T),
    /// No item now.
    Empty,
    /// A packet's marker is the oldest item, and another consumer holds the take lock.
    Busy,
}

/// The oldest slot of the ring, taken (see `take_slot`).
enum Slot<T> {
    /// A small item.
    Item(T),
    /// A marker, with its tag: its packet is in the socket.
    Marker(u64),
    /// A marker, left in the ring.
    MarkerAhead,
}

/// An item encoded for the queue.
pub(super) enum Item {
    /// Fits a ring slot.
    Small(Vec<u8>),
    /// Goes through the socket: packet bytes and descriptors.
    Packet(Vec<u8>, Vec<OwnedFd>),
}

impl Inner {
    pub(super) fn encode<T: Serialize>(&self, item: &T) -> Result<Item> {
        thread_local! {
            /// Reused for encoding: an item's bytes up to a packet's worth, and a large
            /// item's small pieces on their way to its spill file.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => self.encode_with(&mut buf, item),
            Err(_) => self.encode_with(&mut Vec::new(), item),
        })
    }

    fn encode_with<T: Serialize>(&self, bytes: &mut Vec<u8>, item: &T) -> Result<Item> {
        bytes.clear();
        bytes.push(KIND_INLINE);
        let mut fds = Vec::new();
        let mut out = Spilling::new(self, bytes, max_frame_size());
        // What the encoding would tell others (a manager proxy's loan) waits until the item
        // is known to be one that can be put.
        let (encoded, kept) = codec::held_back(|| codec::encode_to(&mut out, &mut fds, item));
        encoded?;
        let spilled = out.finish()?;
        if fds.len() >= sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "a queue item may hold at most {} descriptors, this one holds {}",
                sys::MAX_FDS_PER_MESSAGE - 1,
                fds.len()
            )));
        }
        kept.done();
        match spilled {
            Spilled::Inline if fds.is_empty() && bytes.len() - 1 <= SLOT_DATA => {
                Ok(Item::Small(bytes[1..].to_vec()))
            }
            Spilled::Inline => Ok(Item::Packet(bytes.clone(), fds)),
            Spilled::File(file, len) => {
                let mut head = vec![KIND_SPILLED];
                head.extend_from_slice(&(len as u64).to_be_bytes());
                let mut all = Vec::with_capacity(fds.len() + 1);
                all.push(file);
                all.extend(fds);
                Ok(Item::Packet(head, all))
            }
        }
    }

    /// Puts an encoded item, waiting for room. Cancel safe: a small item is published in one
    /// step; a packet is sent and its marker published under the packet lock, and once the
    /// packet is sent its marker always follows.
    ///
    /// It first spends a unit of the task's budget with tokio's scheduler (see
    /// [`coop`](tokio::task::coop)), as tokio's channels do: a small item's put finds room
    /// without touching the reactor, so a task that loops on puts to a queue with room would
    /// otherwise never yield, and starve every other task of its worker (all of them, and
    /// the timers, on a current-thread runtime).
    pub(super) async fn put_item(
        self: &Arc<Self>,
        item: &Item,
        deadline: Option<tokio::time::Instant>,
        kind: PutKind,
    ) -> Result<()> {
        tokio::task::coop::consume_budget().await;
        self.check_open()?;
        self.check_put(kind)?;
        let r = self.reactor()?;
        match item {
            Item::Small(b) => until(deadline, self.push_waiting(&r, Some((b, kind)), false)).await,
            Item::Packet(bytes, fds) => self.put_packet(&r, bytes, fds, deadline, kind).await,
        }
    }

    /// Puts an encoded item if there is room now, else fails with [`Error::Full`].
    pub(super) fn put_item_now(self: &Arc<Self>, item: Item, kind: PutKind) -> Result<()> {
        self.check_put(kind)?;
        match item {
            Item::Small(b) => match self.try_push(Some((&b, kind))) {
                Pushed::Done => Ok(()),
                Pushed::Refused => Err(Error::ShutDown),
                Pushed::Full | Pushed::Held(_) => Err(Error::Full),
            },
            Item::Packet(bytes, fds) => self.put_packet_now(&bytes, &fds, kind),
        }
    }

    /// Takes the oldest slot of the ring: a small item, decoded (once taken it is consumed,
    /// even if it fails to decode), or a marker's tag; with `markers` false a marker is
    /// left in place ([`Slot::MarkerAhead`]). `None` if the ring is empty.
    fn take_slot<T: DeserializeOwned>(&self, markers: bool) -> Result<Option<Slot<T>>> {
        let mut buf = self.rbuf.lock().unwrap_or_else(|p| p.into_inner());
        let popped = self.ring.try_pop(&mut buf, markers)?;
        if matches!(popped, Some(Popped::Data(_) | Popped::Marker(_))) {
            self.recent.mark();
            self.notify_producers();
        }
        Ok(match popped {
            None => None,
            Some(Popped::Data(n)) => Some(Slot::Item(codec::decode(&buf[..n], Vec::new())?)),
            Some(Popped::Marker(tag)) if markers => Some(Slot::Marker(tag)),
            Some(Popped::MarkerAhead) if !markers => Some(Slot::MarkerAhead),
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "a queue's ring answered {other:?} where markers were{} asked for",
                    if markers { "" } else { " not" }
                )));
            }
        })
    }

    /// Takes the oldest item now, if there is one, as a get does: [`Error::ShutDown`] after
    /// `shutdown_immediate()`, or after `shutdown()` once the queue is empty (see
    /// `shutdown.rs`); else as [`try_take_any`](Self::try_take_any).
    pub(super) fn try_take<T: DeserializeOwned>(self: &Arc<Self>) -> Result<Taken<T>> {
        self.check_gets_allowed()?;
        match self.try_take_any()? {
            Taken::Empty => self.empty_or_shut_down(),
            taken => Ok(taken),
        }
    }

    /// [`try_take`](Self::try_take) for a get that does not wait: if it finds the queue
    /// empty, and a producer that sent a packet died before it published the packet's
    /// marker, it publishes that marker (see
    /// [`no_packet_awaits_its_marker`](Self::no_packet_awaits_its_marker)) and takes again,
    /// as a get that waits does once it sees that producer's death.
    pub(super) fn try_take_now<T: DeserializeOwned>(self: &Arc<Self>) -> Result<Taken<T>> {
        match self.try_take()? {
            Taken::Empty
                if self.header().packet_sent().load(Ordering::SeqCst) != 0
                    && self.no_packet_awaits_its_marker()? =>
            {
                self.try_take()
            }
            taken => Ok(taken),
        }
    }

    /// Takes the oldest item now, if there is one, shut down or not. A packet's marker is
    /// taken under the take lock (see [`take_locked`](Self::take_locked)); [`Taken::Busy`]
    /// if another consumer holds it now.
    pub(super) fn try_take_any<T: DeserializeOwned>(&self) -> Result<Taken<T>> {
        if let Some(kept) = self.take_kept_back() {
            return kept.map(Taken::Item);
        }
        loop {
            match self.take_slot(false)? {
                None => return Ok(Taken::Empty),
                Some(Slot::Item(v)) => return Ok(Taken::Item(v)),
                Some(Slot::Marker(_) | Slot::MarkerAhead) => {}
            }
            match self.take.try_lock() {
                Ok(Some(guard)) => return self.take_locked(guard),
                Ok(None) => return Ok(Taken::Busy),
                Err(Error::LockOwnerDied { pid }) => {
                    tracing::debug!(pid, "a queue's take lock was freed from its dead holder");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the oldest item, holding the take lock (`guard`) while it takes a packet's
    /// marker and receives the packet, so that a consumer that dies in between is the only
    /// one to leave its packet in the socket: the next consumer to receive a packet knows it
    /// by its tag and drops it (see [`recv_packet_for`](Self::recv_packet_for)). A marker
    /// whose packet is not in the socket stands for no item (its producer died before it
    /// sent it), and the next slot is taken instead.
    ///
    /// A packet may carry descriptors (one always, for an item spilled to a file): in a
    /// process with none free the kernel drops them, and the item with them. So it first
    /// makes sure one is free, and fails before the marker is taken, leaving the item in
    /// the queue, if not.
    pub(super) fn take_locked<T: DeserializeOwned>(
        &self,
        guard: LockGuard<'_>,
    ) -> Result<Taken<T>> {
        if let Some(kept) = self.take_kept_back() {
            return kept.map(Taken::Item);
        }
        if let Err(e) = sys::descriptor_free(self.rx.as_fd()) {
            return Err(std::io::Error::other(format!(
                "cannot take a queue item that may carry a descriptor: {e}; the item stays in \
                 the queue"
            ))
            .into());
        }
        loop {
            let tag = match self.take_slot(true)? {
                None => return Ok(Taken::Empty),
                Some(Slot::Item(v)) => return Ok(Taken::Item(v)),
                Some(Slot::Marker(tag)) => tag,
                // `take_slot` answers it only when markers are not asked for.
                Some(Slot::MarkerAhead) => continue,
            };
            let mut pbuf = self.pbuf.lock().unwrap_or_else(|p| p.into_inner());
            match self.recv_packet_for(tag, &mut pbuf)? {
                Some((n, fds)) => {
                    drop(guard);
                    let item = pbuf.get(TAG_LEN..n).ok_or_else(|| {
                        Error::Protocol("a queue packet shorter than its tag arrived".into())
                    })?;
                    return self.decode_packet(item, fds).map(Taken::Item);
                }
                None => self.forget_marker(),
            }
        }
    }

    /// Takes the oldest item, waiting until one is there: the body of every `get`. Cancel
    /// safe: an item is only taken by a step that does not wait. A wait also watches a
    /// producer that sent a packet without its marker yet, to publish the marker should it
    /// die (see [`sender_to_watch`](Self::sender_to_watch)); a producer about to send wakes
    /// the waiters to look at it.
    ///
    /// It first spends a unit of the task's budget with tokio's scheduler, as
    /// [`put_item`](Self::put_item) does: a small item is taken without touching the
    /// reactor, so a loop of gets from a queue that always holds one would never yield.
    pub(super) async fn take_waiting<T: DeserializeOwned>(self: &Arc<Self>) -> Result<T> {
        tokio::task::coop::consume_budget().await;
        let mut r = None;
        loop {
            let mut got = self.try_take()?;
            if let Taken::Empty = got {
                let reactor = match &r {
                    Some(reactor) => reactor,
                    None => r.insert(self.reactor()?),
                };
                self.wait_until_watching(
                    &reactor.items,
                    self.header().consumers(),
                    || {
                        got = self.try_take()?;
                        Ok(!matches!(got, Taken::Empty))
                    },
                    || match self.sender_to_watch(reactor)? {
                        Some(w) => Ok(Some(w)),
                        None => self.writer_to_watch(),
                    },
                )
                .await?;
            }
            match got {
                Taken::Item(v) => return Ok(v),
                Taken::Empty => {}
                // Another consumer receives a packet: the next marker waits for the lock.
                Taken::Busy => match self.take.lock().await {
                    Ok(guard) => {
                        self.check_gets_allowed()?;
                        if let Taken::Item(v) = self.take_locked(guard)? {
                            return Ok(v);
                        }
                    }
                    Err(Error::LockOwnerDied { pid }) => {
                        tracing::debug!(pid, "a queue's take lock was freed from its dead holder");
                    }
                    Err(e) => return Err(e),
                },
            }
        }
    }

    fn decode_packet<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        fds: VecDeque<OwnedFd>,
    ) -> Result<T> {
        match bytes.first() {
            Some(&KIND_INLINE) => codec::decode(&bytes[1..], fds.into()),
            // Not measured by this process's frame limit: the item exists already, in a
            // sealed file whose size is checked, so taking it allocates nothing that the
            // producer did not; and a ring has no front to give a refused item back to.
            Some(&KIND_SPILLED) if bytes.len() == 9 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&bytes[1..9]);
                let len = usize::try_from(u64::from_be_bytes(len)).map_err(|_| {
                    Error::Protocol("a spilled queue item larger than memory".into())
                })?;
                self.unspill(len, fds)
            }
            _ => Err(Error::Protocol(
                "a queue packet of an unknown kind arrived".into(),
            )),
        }
    }
}
