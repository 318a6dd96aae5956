//! A bounded many-producer many-consumer ring of small byte messages in shared memory, for
//! queues between processes.
//!
//! The ring lives in a memfd mapped `MAP_SHARED` by every process holding the descriptor.
//! Position `p` lives in slot `p % capacity`, on lap `p / capacity`. Each slot carries a
//! state word: the lap it is on, one of four states, and the pid of the process working on
//! it:
//!
//! ```text
//!  FREE(lap) ──producer CAS──► WRITING(lap, pid) ──store──► READY(lap)
//!      ▲                                                       │ consumer CAS
//!      └──────────────── store ◄──────────────────── READING(lap, pid)
//!   FREE(lap + 1)
//! ```
//!
//! A producer claims position `p` with one compare-and-swap on the slot's word, from
//! `FREE(lap)` to `WRITING(lap, its pid)`, copies its bytes in, and publishes with
//! `READY(lap)`; a consumer claims it from `READY(lap)` to `READING(lap, its pid)`, copies
//! the bytes out, and frees the slot for the next lap. The enqueue and dequeue positions in
//! the header say where to try next: whoever finds the slot at a position already claimed
//! moves that position on by one (a compare-and-swap, so it moves once), so a process that
//! dies right after its claim holds no one up. Positions are claimed in order, so items come
//! out in the order their positions were claimed: the items of one producer keep their
//! order, and each item is taken exactly once. (This is D. Vyukov's bounded queue with the
//! claim moved from the position counter to the slot, where it can name its owner.)
//!
//! Fresh (zero) memory is a valid empty ring: every slot is `FREE` on lap 0, and pages are
//! only allocated as slots are first used.
//!
//! # Owner death
//!
//! A process killed between its claim and its last store leaves the slot `WRITING` or
//! `READING` under its pid, and the ring would stall there a lap later. So a process that
//! finds the slot it needs held under a pid other than its own waits a few spins (a live
//! owner is done within nanoseconds), then asks the kernel whether that process still
//! exists (a pidfd, as for a lock's holder). If it has ended, the slot is freed for the next
//! lap with a compare-and-swap from the very word it saw: the item being put or taken is
//! lost, as it would be had the dead process finished, and the ring goes on. A producer that
//! finds the slot held by a live process is told its pid ([`Pushed::Held`]) so that it can
//! watch for its death while it waits for room.
//!
//! A slot's word has room for a bare pid, not for the start time that an owner word (see
//! [`owner`](super::owner)) adds: should the dead owner's pid be taken by a later process
//! before anyone finds the slot, the slot waits for that process's end. It takes a death
//! within the few instructions between a claim and its last store.
//!
//! [`USER_WORDS`] header words (each on its own cache line where producers and consumers
//! would contend) are also open to the layer above, for its wait flags and counters.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use super::shm::SharedRegion;

/// Bytes of one slot: sequence word, length word, data.
pub(crate) const SLOT_BYTES: usize = 128;
/// The most data one slot holds.
pub(crate) const SLOT_DATA: usize = SLOT_BYTES - 16;
/// The length value that marks a slot as standing for a message sent another way.
const MARKER: u64 = u64::MAX;
/// The bytes of a marker's tag, in its slot's data.
const TAG_BYTES: usize = 8;
const HEADER_BYTES: usize = 1024;
const MAGIC: u64 = 0x746d_7072_696e_6702;

/// Bits of the state word: the owner's pid (low), the state, then the lap (high, modulo
/// 2^38).
const PID_BITS: u32 = 24;
const PID_MASK: u64 = (1 << PID_BITS) - 1;
const STATE_SHIFT: u32 = PID_BITS;
const LAP_SHIFT: u32 = PID_BITS + 2;
/// The pid recorded for a process whose pid does not fit (none on Linux, where pids stay
/// below 2^22): such a claim is never taken for abandoned.
const PID_UNKNOWN: u64 = PID_MASK;

const FREE: u64 = 0;
const WRITING: u64 = 1;
const READY: u64 = 2;
const READING: u64 = 3;

/// Spins on a slot held by another process before asking whether that process lives.
const HELD_SPINS: u32 = 200;

const W_MAGIC: usize = 0;
const W_CAPACITY: usize = 1;
const W_ENQ: usize = 16;
const W_DEQ: usize = 32;
/// First header word open to the layer above.
const USER: usize = 48;
/// The number of header words open to the layer above (see [`ShmRing::user_word`]).
const USER_WORDS: usize = 64;

/// What [`ShmRing::try_push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// The message is in the ring.
    Done,
    /// The ring is full.
    Full,
    /// The ring is full at a slot that the live process `pid` is still putting into or
    /// taking from: it will free it at once, or, if it dies first, the next try will.
    Held(u32),
    /// The slot was claimed, and the caller's check then refused the message: the slot was
    /// given up (see [`ShmRing::try_push_then`]).
    Refused,
}

/// What [`ShmRing::try_push`] publishes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Message<'a> {
    /// These bytes (at most [`SLOT_DATA`]).
    Data(&'a [u8]),
    /// A marker with this tag: the message travels another way, and the tag tells which.
    Marker(u64),
}

/// What [`ShmRing::head`] found at the dequeue position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Head {
    /// Nothing was put there on this lap: the ring is empty, and only a later claim fills it.
    Empty,
    /// This process (its bare pid, ours included) claimed the slot and writes it: the ring
    /// is not empty, yet [`ShmRing::try_pop`] finds nothing until the slot is published, or
    /// freed (its writer gave it up, or died).
    Writing(u32),
    /// An item published, or a slot another consumer took or a producer gave up: look again.
    Moved,
}

/// What [`ShmRing::try_pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped {
    /// A message of this many bytes, copied into the caller's buffer.
    Data(usize),
    /// A marker, with its tag: the message travels another way.
    Marker(u64),
    /// A marker is the oldest message, and was left in the ring: the caller did not ask for
    /// markers.
    MarkerAhead,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ShmRing {
    /// The mapping (its descriptor, address and length, unmapped on drop).
    region: SharedRegion,
    capacity: u64,
}

fn bytes_for(capacity: u64) -> Option<usize> {
    usize::try_from(capacity)
        .ok()?
        .checked_mul(SLOT_BYTES)?
        .checked_add(HEADER_BYTES)
}

/// The name of a ring's segment (a memfd's), by which a ring received is known for one.
const RING_SEGMENT: &str = "tokio-mp-ring";

impl ShmRing {
    /// A fresh, empty ring of `capacity` slots.
    pub(crate) fn new(capacity: u64) -> io::Result<ShmRing> {
        let len = bytes_for(capacity)
            .filter(|_| capacity > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad ring capacity"))?;
        let ring = ShmRing {
            region: SharedRegion::anonymous(RING_SEGMENT, len)?,
            capacity,
        };
        ring.word(W_CAPACITY).store(capacity, Ordering::Relaxed);
        ring.word(W_MAGIC).store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps a ring received from another process, checking that it is a ring's segment and
    /// its header against its size. (Another segment written to look like a ring, a
    /// `SharedMemory`'s, would let its holder write into the queue's slots under it.)
    pub(crate) fn open(fd: OwnedFd) -> io::Result<ShmRing> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        // Known by its memfd's name, when `/proc` can tell it.
        if super::segment_name(fd.as_fd()).is_some_and(|name| name != RING_SEGMENT) {
            return Err(bad(
                "a queue's ring was received with a segment that is not one",
            ));
        }
        let size = super::fd::file_size(fd.as_fd())?;
        if size < HEADER_BYTES + SLOT_BYTES {
            return Err(bad("the shared ring is too small"));
        }
        let capacity = ((size - HEADER_BYTES) / SLOT_BYTES) as u64;
        // Sealed segments only: one that could shrink would fault under the ring's readers.
        let ring = ShmRing {
            region: SharedRegion::from_fd(fd)?,
            capacity,
        };
        if ring.word(W_MAGIC).load(Ordering::Acquire) != MAGIC
            || ring.word(W_CAPACITY).load(Ordering::Relaxed) != capacity
            || bytes_for(capacity) != Some(size)
        {
            return Err(bad("the shared ring's header does not match its size"));
        }
        Ok(ring)
    }

    /// The descriptor, to send to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Header word `i`.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < HEADER_BYTES / 8, "header word {i} out of range");
        self.region.u64_at(8 * i)
    }

    /// Header word `i` of those open to the layer above (`i <` [`USER_WORDS`]), zero in a
    /// fresh ring; words 8 apart lie on different cache lines. The layer above names them
    /// in a typed view of its own (the queue's `Header`).
    pub(crate) fn user_word(&self, i: usize) -> &AtomicU64 {
        assert!(i < USER_WORDS, "user header word {i} out of range");
        self.word(USER + i)
    }

    /// The state word, length word and data of the slot of position `pos`.
    fn slot(&self, pos: u64) -> (&AtomicU64, &AtomicU64, *mut u8) {
        let index = pos % self.capacity;
        let off = HEADER_BYTES + index as usize * SLOT_BYTES;
        debug_assert!(off + SLOT_BYTES <= self.region.len());
        // SAFETY: `index < capacity`, so the slot lies inside the mapping (whose length is
        // HEADER_BYTES + capacity * SLOT_BYTES); slots are 128-byte aligned; the two control
        // words are only ever accessed atomically.
        unsafe {
            let base = self.region.base().as_ptr().add(off);
            (
                &*base.cast::<AtomicU64>(),
                &*base.add(8).cast::<AtomicU64>(),
                base.add(16),
            )
        }
    }

    /// The number of messages in the ring (approximate while others work on it).
    pub(crate) fn len(&self) -> u64 {
        let deq = self.word(W_DEQ).load(Ordering::Acquire);
        let enq = self.word(W_ENQ).load(Ordering::Acquire);
        enq.saturating_sub(deq)
    }

    /// Appends a message: bytes (at most [`SLOT_DATA`]) or a marker.
    #[cfg(test)]
    pub(crate) fn try_push(&self, message: Message<'_>) -> Pushed {
        self.try_push_then(message, || true)
    }

    /// Appends a message: bytes (at most [`SLOT_DATA`]) or a marker; calls `claimed` once
    /// the slot is ours and written, just before the message is published, and only then:
    /// what it does happens before any consumer can take the message, and not at all when
    /// there is no room. (A process killed between the two leaves it done for a message
    /// that is lost.)
    ///
    /// Should `claimed` answer `false`, the message is not published: the slot is freed for
    /// the next lap, as a dead producer's is (see "Owner death"), and consumers step over
    /// it ([`Pushed::Refused`]). A check made there comes after the claim, a sequentially
    /// consistent compare-and-swap, in the single order of such operations: a consumer that
    /// changes what the check reads, then looks at the slot, finds it claimed, or finds that
    /// the check refused.
    pub(crate) fn try_push_then(
        &self,
        message: Message<'_>,
        claimed: impl FnOnce() -> bool,
    ) -> Pushed {
        let me = owner_id();
        let enq = self.word(W_ENQ);
        let mut pos = enq.load(Ordering::Acquire);
        loop {
            let (state, len, bytes) = self.slot(pos);
            let lap = pos / self.capacity;
            let w = state.load(Ordering::Acquire);
            match lap_order(w, lap) {
                std::cmp::Ordering::Equal if kind(w) == FREE => {
                    if state
                        .compare_exchange(
                            w,
                            word(lap, WRITING, me),
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ = enq.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
                    let (d, n) = match &message {
                        Message::Data(d) => (*d, d.len().min(SLOT_DATA)),
                        Message::Marker(tag) => (&tag.to_le_bytes()[..], TAG_BYTES),
                    };
                    // SAFETY: we own this slot until we publish it (our compare-and-swap
                    // moved it from free to ours); `bytes` has SLOT_DATA bytes of room inside
                    // the mapping, and `n` is at most that (TAG_BYTES < SLOT_DATA).
                    unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), bytes, n) };
                    let n = match message {
                        Message::Data(_) => n as u64,
                        Message::Marker(_) => MARKER,
                    };
                    len.store(n, Ordering::Relaxed);
                    if !claimed() {
                        state.store(word(lap + 1, FREE, 0), Ordering::SeqCst);
                        // As a consumer that finds the slot given up moves on past it: a
                        // ring left with nothing but this slot says it is empty.
                        let deq = self.word(W_DEQ);
                        let _ =
                            deq.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
                        return Pushed::Refused;
                    }
                    state.store(word(lap, READY, 0), Ordering::SeqCst);
                    return Pushed::Done;
                }
                std::cmp::Ordering::Less => match kind(w) {
                    // Last lap's item is still there: full.
                    READY | FREE => return Pushed::Full,
                    _ => match self.release_if_abandoned(state, w) {
                        Some(pid) => return Pushed::Held(pid),
                        None => continue,
                    },
                },
                // The position was claimed by another producer (this lap or, if we lag,
                // an earlier one): move the position on and try the next.
                _ => {
                    let _ = enq.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
                    pos = enq.load(Ordering::Acquire);
                }
            }
        }
    }

    /// Takes the oldest message into `out` (cleared first). `Ok(None)` if the ring is empty;
    /// [`Popped::MarkerAhead`] if it is a marker and `markers` is false (it stays); an error
    /// if a slot holds an impossible length (memory written by someone else).
    pub(crate) fn try_pop(&self, out: &mut Vec<u8>, markers: bool) -> io::Result<Option<Popped>> {
        let me = owner_id();
        let deq = self.word(W_DEQ);
        let mut pos = deq.load(Ordering::Acquire);
        loop {
            let (state, len, bytes) = self.slot(pos);
            let lap = pos / self.capacity;
            let w = state.load(Ordering::Acquire);
            match lap_order(w, lap) {
                std::cmp::Ordering::Equal if kind(w) == READY => {
                    // Written before the slot was published, which our load of `w` saw.
                    if !markers && len.load(Ordering::Relaxed) == MARKER {
                        return Ok(Some(Popped::MarkerAhead));
                    }
                    if state
                        .compare_exchange(
                            w,
                            word(lap, READING, me),
                            Ordering::SeqCst,
                            Ordering::Relaxed,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    let _ = deq.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
                    let n = len.load(Ordering::Relaxed);
                    let got = if n == MARKER {
                        let mut tag = [0u8; TAG_BYTES];
                        // SAFETY: we own this slot until we free it; its data holds the
                        // marker's tag, TAG_BYTES bytes inside the mapping.
                        unsafe {
                            std::ptr::copy_nonoverlapping(bytes, tag.as_mut_ptr(), TAG_BYTES)
                        };
                        Ok(Popped::Marker(u64::from_le_bytes(tag)))
                    } else if n as usize <= SLOT_DATA {
                        out.clear();
                        out.resize(n as usize, 0);
                        // SAFETY: we own this slot until we free it (our compare-and-swap
                        // moved it from published to ours); it holds `n` bytes
                        // (n <= SLOT_DATA, checked) inside the mapping.
                        unsafe {
                            std::ptr::copy_nonoverlapping(bytes, out.as_mut_ptr(), n as usize)
                        };
                        Ok(Popped::Data(n as usize))
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a queue slot claims {n} bytes"),
                        ))
                    };
                    state.store(word(lap + 1, FREE, 0), Ordering::SeqCst);
                    return got.map(Some);
                }
                // Not put yet, or still being put.
                std::cmp::Ordering::Equal if kind(w) == FREE => return Ok(None),
                std::cmp::Ordering::Equal if kind(w) == WRITING => {
                    if self.release_if_abandoned(state, w).is_some() {
                        return Ok(None);
                    }
                }
                // Last lap's item is not taken yet: nothing was put here for this lap.
                std::cmp::Ordering::Less => return Ok(None),
                // Taken by another consumer (this lap or, if we lag, an earlier one): move
                // the position on and try the next.
                _ => {
                    let _ = deq.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
                    pos = deq.load(Ordering::Acquire);
                }
            }
        }
    }

    /// What the slot at the dequeue position holds now, on its lap: a consumer that found
    /// the ring empty tells "nothing was put" from "an item is being written" by it.
    pub(crate) fn head(&self) -> Head {
        let pos = self.word(W_DEQ).load(Ordering::SeqCst);
        let (state, _, _) = self.slot(pos);
        let w = state.load(Ordering::SeqCst);
        match (lap_order(w, pos / self.capacity), kind(w)) {
            (std::cmp::Ordering::Equal, FREE) | (std::cmp::Ordering::Less, _) => Head::Empty,
            (std::cmp::Ordering::Equal, WRITING) => Head::Writing((w & PID_MASK) as u32),
            _ => Head::Moved,
        }
    }

    /// A slot found `w`, held (writing or reading) by another process: waits a few spins for
    /// it to move on, then, if the holder has ended, frees the slot for the next lap (see
    /// "Owner death"). `None` if the slot moved on or was freed (look again), else the live
    /// holder's pid.
    fn release_if_abandoned(&self, state: &AtomicU64, w: u64) -> Option<u32> {
        for _ in 0..HELD_SPINS {
            if state.load(Ordering::Acquire) != w {
                return None;
            }
            std::hint::spin_loop();
        }
        let pid = w & PID_MASK;
        let holder = pid as u32;
        if pid == PID_UNKNOWN || pid == owner_id() {
            return Some(holder);
        }
        // A bare pid: the slot's word has no room for a start time (see "Owner death").
        match super::owner_gone(u64::from(holder)) {
            Ok(true) => {
                let next = word((w >> LAP_SHIFT).wrapping_add(1), FREE, 0);
                if state
                    .compare_exchange(w, next, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::debug!(
                        pid = holder,
                        "a queue slot held by a dead process was freed"
                    );
                }
                None
            }
            Ok(false) => Some(holder),
            Err(e) => {
                tracing::debug!(
                    pid = holder,
                    "cannot tell whether a queue slot's holder lives: {e}"
                );
                Some(holder)
            }
        }
    }
}

/// This process's id as recorded in a slot it claims.
fn owner_id() -> u64 {
    let pid = u64::from(super::cached_pid());
    if pid >= PID_UNKNOWN { PID_UNKNOWN } else { pid }
}

/// A slot's state word.
fn word(lap: u64, state: u64, pid: u64) -> u64 {
    (lap << LAP_SHIFT) | (state << STATE_SHIFT) | pid
}

fn kind(w: u64) -> u64 {
    (w >> STATE_SHIFT) & 3
}

/// How the lap of state word `w` compares with `lap`, modulo 2^38 (no process lags by half
/// of that).
fn lap_order(w: u64, lap: u64) -> std::cmp::Ordering {
    let d = ((w >> LAP_SHIFT).wrapping_sub(lap) << LAP_SHIFT) as i64;
    d.cmp(&0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{MFdFlags, memfd_create};

    #[test]
    fn fifo_full_and_empty() {
        let r = ShmRing::new(3).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
        assert_eq!(r.try_push(Message::Data(b"a")), Pushed::Done);
        assert_eq!(r.try_push(Message::Marker(7)), Pushed::Done);
        assert_eq!(r.try_push(Message::Data(b"ccc")), Pushed::Done);
        assert_eq!(r.try_push(Message::Data(b"d")), Pushed::Full);
        assert_eq!(r.len(), 3);
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"a");
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Marker(7)));
        for i in 0..10u8 {
            assert_eq!(r.try_push(Message::Data(&[i; 5])), Pushed::Done);
            assert!(r.try_pop(&mut out, true).unwrap().is_some());
        }
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_marker_stays_unless_asked_for() {
        let r = ShmRing::new(4).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.try_push(Message::Marker(u64::MAX - 1)), Pushed::Done);
        assert_eq!(r.try_push(Message::Data(b"b")), Pushed::Done);
        assert_eq!(
            r.try_pop(&mut out, false).unwrap(),
            Some(Popped::MarkerAhead)
        );
        assert_eq!(r.len(), 2, "a marker not asked for stays");
        assert_eq!(
            r.try_pop(&mut out, true).unwrap(),
            Some(Popped::Marker(u64::MAX - 1))
        );
        assert_eq!(r.try_pop(&mut out, false).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"b");
    }

    /// A message the check refuses once its slot is claimed is not published: the ring
    /// stays empty (its length too, not counting the slot given up), and takes the next
    /// message in order, on this lap and the next.
    #[test]
    fn a_refused_message_leaves_no_trace() {
        let r = ShmRing::new(2).unwrap();
        let mut out = Vec::new();
        for round in 0..3u8 {
            assert_eq!(
                r.try_push_then(Message::Data(b"no"), || false),
                Pushed::Refused
            );
            assert_eq!(r.len(), 0, "round {round}");
            assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
            assert_eq!(r.try_push(Message::Data(&[round])), Pushed::Done);
            assert_eq!(r.len(), 1);
            assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
            assert_eq!(out, [round]);
        }
        // Behind an item not taken yet, the slot given up is stepped over by the consumer.
        assert_eq!(r.try_push(Message::Data(b"a")), Pushed::Done);
        assert_eq!(
            r.try_push_then(Message::Data(b"no"), || false),
            Pushed::Refused
        );
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_ring_of_one_slot_holds_one_item() {
        let r = ShmRing::new(1).unwrap();
        let mut out = Vec::new();
        for i in 0..5u8 {
            assert_eq!(r.try_push(Message::Data(&[i])), Pushed::Done);
            assert_eq!(
                r.try_push(Message::Data(&[i])),
                Pushed::Full,
                "full at one item"
            );
            assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
            assert_eq!(out, [i]);
            assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
        }
    }

    #[test]
    fn a_second_mapping_sees_the_same_ring() {
        let r = ShmRing::new(8).unwrap();
        let other = ShmRing::open(r.fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(r.try_push(Message::Data(b"shared")), Pushed::Done);
        let mut out = Vec::new();
        assert_eq!(
            other.try_pop(&mut out, true).unwrap(),
            Some(Popped::Data(6))
        );
        assert_eq!(out, b"shared");
    }

    /// The pid of a process that has ended and been reaped.
    fn dead_pid() -> u64 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        u64::from(pid)
    }

    #[test]
    fn a_slot_held_by_a_dead_consumer_is_freed() {
        let r = ShmRing::new(2).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.try_push(Message::Data(b"a")), Pushed::Done);
        assert_eq!(r.try_push(Message::Data(b"b")), Pushed::Done);
        // A consumer died right after claiming position 0 (before moving the position on).
        let (state, _, _) = r.slot(0);
        state.store(word(0, READING, dead_pid()), Ordering::SeqCst);
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"b");
        // Position 2 needs slot 0 again: its holder is dead, so it is freed ("a" is lost).
        assert_eq!(r.try_push(Message::Data(b"c")), Pushed::Done);
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"c");
        assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
    }

    #[test]
    fn a_slot_held_by_a_dead_producer_is_skipped() {
        let r = ShmRing::new(4).unwrap();
        let mut out = Vec::new();
        // A producer died right after claiming position 0; another put at position 1.
        let (state, _, _) = r.slot(0);
        state.store(word(0, WRITING, dead_pid()), Ordering::SeqCst);
        assert_eq!(r.try_push(Message::Data(b"b")), Pushed::Done);
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"b");
        assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
        for i in 0..12u8 {
            assert_eq!(r.try_push(Message::Data(&[i])), Pushed::Done);
            assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
            assert_eq!(out, [i]);
        }
    }

    #[test]
    fn a_slot_held_by_a_live_process_is_waited_for() {
        let r = ShmRing::new(1).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.try_push(Message::Data(b"a")), Pushed::Done);
        // Our parent (alive) is taking position 0.
        let parent = u64::from(nix::unistd::getppid().as_raw() as u32);
        let (state, _, _) = r.slot(0);
        state.store(word(0, READING, parent), Ordering::SeqCst);
        assert_eq!(r.try_push(Message::Data(b"b")), Pushed::Held(parent as u32));
        assert_eq!(r.try_pop(&mut out, true).unwrap(), None);
        // It finishes: the slot is free for the next lap.
        state.store(word(1, FREE, 0), Ordering::SeqCst);
        assert_eq!(r.try_push(Message::Data(b"b")), Pushed::Done);
        assert_eq!(r.try_pop(&mut out, true).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"b");
    }

    /// Another segment written to look like a ring (a `SharedMemory`'s, whose holder may
    /// write any bytes) is refused: its holder could write into the slots under the queue.
    #[test]
    fn a_segment_made_for_something_else_is_not_taken_for_a_ring() {
        use std::io::Read;
        use std::os::unix::fs::FileExt;

        let real = ShmRing::new(4).unwrap();
        let mut bytes = Vec::new();
        std::fs::File::from(real.fd().try_clone_to_owned().unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        let fake = SharedRegion::anonymous("tokio-mp-shm", bytes.len()).unwrap();
        std::fs::File::from(fake.fd().try_clone_to_owned().unwrap())
            .write_all_at(&bytes, 0)
            .unwrap();
        assert!(ShmRing::open(fake.fd().try_clone_to_owned().unwrap()).is_err());
        assert!(ShmRing::open(real.fd().try_clone_to_owned().unwrap()).is_ok());
    }

    #[test]
    fn a_file_of_the_wrong_shape_is_refused() {
        let fd = memfd_create(c"x", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 5000).unwrap();
        assert!(ShmRing::open(fd).is_err());
    }
}
