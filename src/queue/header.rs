//! [`Header`]: a typed view of the queue's words in its ring's header (the words the ring
//! leaves to the layer above, see `ShmRing::user_word`). Each side (consumers waiting for
//! items, producers waiting for room) has a waiter count and a wake-up flag on a cache line
//! of its own; a joinable queue keeps its count of unfinished items on a third, and whether
//! the queue was shut down has a fourth. This file is the only place that knows which word
//! is which.

use std::sync::atomic::AtomicU64;

use crate::sys::ShmRing;

/// Word indices among the ring's user words; 8 words apart is a cache line apart.
const CONSUMER_WAITERS: usize = 0;
const CONSUMER_NOTIFIED: usize = 1;
const CONSUMER_LOOKS: usize = 2;
const PRODUCER_WAITERS: usize = 8;
const PRODUCER_NOTIFIED: usize = 9;
const PRODUCER_LOOKS: usize = 10;
const UNFINISHED: usize = 16;
const PACKET_SENT: usize = 24;
const NEXT_TAG: usize = 25;
const SKIP_THROUGH: usize = 32;
const SHUT_DOWN: usize = 40;

/// Set in [`Header::packet_sent`] beside the holder's pid while its packet may not have
/// been sent yet.
pub(super) const SENDING: u64 = 1 << 32;

/// Set in [`Header::packet_sent`] beside the holder's pid once a joinable queue counts its
/// packet's item as unfinished, before its marker is published: a holder that dies then
/// leaves its marker to the next holder, which must not count the item again.
pub(super) const COUNTED: u64 = 1 << 33;

/// [`Header::shut_down`] of a queue that takes puts and gets.
pub(super) const OPEN: u64 = 0;

/// [`Header::shut_down`] after `shutdown()`: puts fail, gets take what is left.
pub(super) const DRAINING: u64 = 1;

/// [`Header::shut_down`] after `shutdown_immediate()`: puts and gets fail.
pub(super) const STOPPED: u64 = 2;

/// See the module docs.
#[derive(Clone, Copy)]
pub(super) struct Header<'a> {
    ring: &'a ShmRing,
}

/// The words of one side that waits (see "Waiting, without polling" in the queue's docs).
#[derive(Clone, Copy)]
pub(super) struct Side<'a> {
    /// How many tasks, in every process, wait on this side now.
    pub(super) waiters: &'a AtomicU64,
    /// Counts the looks waiters took at the queue: each waiter adds one before it looks.
    pub(super) looks: &'a AtomicU64,
    /// The count of looks the last wake-up was written for: a waker writes the eventfd only
    /// when a waiter has looked since, so at most once per look, and it records the count
    /// only after the write, so a waker that dies between the two leaves the next one to
    /// write.
    pub(super) notified: &'a AtomicU64,
}

impl<'a> Header<'a> {
    pub(super) fn of(ring: &'a ShmRing) -> Header<'a> {
        Header { ring }
    }

    /// Consumers waiting for an item.
    pub(super) fn consumers(self) -> Side<'a> {
        Side {
            waiters: self.ring.user_word(CONSUMER_WAITERS),
            looks: self.ring.user_word(CONSUMER_LOOKS),
            notified: self.ring.user_word(CONSUMER_NOTIFIED),
        }
    }

    /// Producers waiting for room.
    pub(super) fn producers(self) -> Side<'a> {
        Side {
            waiters: self.ring.user_word(PRODUCER_WAITERS),
            looks: self.ring.user_word(PRODUCER_LOOKS),
            notified: self.ring.user_word(PRODUCER_NOTIFIED),
        }
    }

    /// What the packet lock's holder has sent: its pid with [`SENDING`] from just before it
    /// sends its packet, its pid alone once the packet is in the socket (with [`COUNTED`]
    /// once its item is counted as unfinished), until the packet's marker is in the ring; 0
    /// otherwise. Whoever takes the lock next and finds it set
    /// publishes the marker of a holder that died in between (see `packet.rs`).
    pub(super) fn packet_sent(self) -> &'a AtomicU64 {
        self.ring.user_word(PACKET_SENT)
    }

    /// The tag of the next packet: the count of packet markers published. Producers read
    /// and advance it under the packet lock; a packet and its marker carry the same tag, so
    /// a consumer knows its marker's packet from another's (see `packet.rs`).
    pub(super) fn next_tag(self) -> &'a AtomicU64 {
        self.ring.user_word(NEXT_TAG)
    }

    /// The markers to skip, read and written under the take lock: 0 for none, else one more
    /// than the tag of a packet received early (for an earlier marker that had none), whose
    /// own marker and those before it stand for no packet (see `packet.rs`).
    pub(super) fn skip_through(self) -> &'a AtomicU64 {
        self.ring.user_word(SKIP_THROUGH)
    }

    /// Whether the queue was shut down, and how: [`OPEN`], [`DRAINING`] or [`STOPPED`]. It
    /// only ever grows.
    pub(super) fn shut_down(self) -> &'a AtomicU64 {
        self.ring.user_word(SHUT_DOWN)
    }

    /// A joinable queue's count of items put and not yet marked done.
    pub(super) fn unfinished(self) -> &'a AtomicU64 {
        self.ring.user_word(UNFINISHED)
    }
}
