//! A bounded many-producer many-consumer ring of small byte messages in shared memory
//! (D. Vyukov's bounded MPMC queue), for queues between processes.
//!
//! The ring lives in a memfd mapped `MAP_SHARED` by every process holding the descriptor.
//! Each slot carries a sequence word: a producer claims position `p` by a compare-and-swap on
//! the enqueue position when the slot's sequence equals `2p` (free for `p`), copies its bytes
//! in, then publishes with sequence `2p + 1`; a consumer claims `p` when the sequence is
//! `2p + 1`, copies the bytes out, and frees the slot for lap `p + capacity` (sequence
//! `2(p + capacity)`). Doubling keeps "published at `p`" and "free for the next lap" apart
//! even for a ring of one slot. Positions only
//! grow, so items come out in the order their positions were claimed: the items of one
//! producer keep their order, and each item is taken exactly once.
//!
//! Sequences are stored minus twice the slot index, so that fresh (zero) memory is a valid empty
//! ring and pages are only allocated as slots are first used.
//!
//! A process killed between claiming a position and publishing it leaves that slot claimed
//! for ever, and the ring stalls at it: like Python's queues, a queue must not be in use by a
//! process that is killed.
//!
//! Header words (each on its own cache line where producers and consumers would contend) are
//! also open to the layer above, for its wait flags and counters.

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
const HEADER_BYTES: usize = 1024;
const MAGIC: u64 = 0x746d_7072_696e_6701;

const W_MAGIC: usize = 0;
const W_CAPACITY: usize = 1;
const W_ENQ: usize = 16;
const W_DEQ: usize = 32;
/// First header word free for the layer above (words `USER..USER + 64`).
pub(crate) const USER: usize = 48;

/// What [`ShmRing::try_pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Popped {
    /// A message of this many bytes, copied into the caller's buffer.
    Data(usize),
    /// A marker: the message travels another way.
    Marker,
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

impl ShmRing {
    /// A fresh, empty ring of `capacity` slots.
    pub(crate) fn new(capacity: u64) -> io::Result<ShmRing> {
        let len = bytes_for(capacity)
            .filter(|_| capacity > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad ring capacity"))?;
        let ring = ShmRing {
            region: SharedRegion::anonymous("tokio-mp-ring", len)?,
            capacity,
        };
        ring.word(W_CAPACITY).store(capacity, Ordering::Relaxed);
        ring.word(W_MAGIC).store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps a ring received from another process, checking its header against its size.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<ShmRing> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let size = super::fd::file_size(fd.as_fd())?;
        if size < HEADER_BYTES + SLOT_BYTES {
            return Err(bad("the shared ring is too small"));
        }
        let capacity = ((size - HEADER_BYTES) / SLOT_BYTES) as u64;
        let ring = ShmRing {
            region: SharedRegion::map(fd, size)?,
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

    /// Header word `i` (`i < USER + 64`).
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < HEADER_BYTES / 8, "header word {i} out of range");
        self.region.u64_at(8 * i)
    }

    fn slot(&self, pos: u64) -> (&AtomicU64, &AtomicU64, *mut u8, u64) {
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
                index,
            )
        }
    }

    /// The number of messages in the ring (approximate while others work on it).
    pub(crate) fn len(&self) -> u64 {
        let deq = self.word(W_DEQ).load(Ordering::Acquire);
        let enq = self.word(W_ENQ).load(Ordering::Acquire);
        enq.saturating_sub(deq)
    }

    /// Appends `data` (at most [`SLOT_DATA`] bytes), or a marker if `data` is `None`.
    /// Returns `false` if the ring is full.
    pub(crate) fn try_push(&self, data: Option<&[u8]>) -> bool {
        let enq = self.word(W_ENQ);
        let mut pos = enq.load(Ordering::Relaxed);
        loop {
            let (seq, len, bytes, index) = self.slot(pos);
            let s = seq.load(Ordering::Acquire).wrapping_add(2 * index);
            let diff = s.wrapping_sub(2 * pos) as i64;
            if diff == 0 {
                match enq.compare_exchange_weak(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => {
                        match data {
                            Some(d) => {
                                let n = d.len().min(SLOT_DATA);
                                // SAFETY: we own this slot until we publish it (we won the
                                // position, and its sequence says it is free); `bytes` has
                                // SLOT_DATA bytes of room inside the mapping.
                                unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), bytes, n) };
                                len.store(n as u64, Ordering::Relaxed);
                            }
                            None => len.store(MARKER, Ordering::Relaxed),
                        }
                        seq.store((2 * pos + 1).wrapping_sub(2 * index), Ordering::SeqCst);
                        return true;
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return false;
            } else {
                pos = enq.load(Ordering::Relaxed);
            }
        }
    }

    /// Takes the oldest message into `out` (cleared first). `Ok(None)` if the ring is empty;
    /// an error if a slot holds an impossible length (memory written by someone else).
    pub(crate) fn try_pop(&self, out: &mut Vec<u8>) -> io::Result<Option<Popped>> {
        let deq = self.word(W_DEQ);
        let mut pos = deq.load(Ordering::Relaxed);
        loop {
            let (seq, len, bytes, index) = self.slot(pos);
            let s = seq.load(Ordering::Acquire).wrapping_add(2 * index);
            let diff = s.wrapping_sub(2 * pos + 1) as i64;
            if diff == 0 {
                match deq.compare_exchange_weak(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed) {
                    Ok(_) => {
                        let n = len.load(Ordering::Relaxed);
                        let got = if n == MARKER {
                            Ok(Popped::Marker)
                        } else if n as usize <= SLOT_DATA {
                            out.clear();
                            out.resize(n as usize, 0);
                            // SAFETY: we own this slot until we free it (we won the position
                            // and its sequence says it is published); it holds `n` bytes
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
                        seq.store(
                            (2 * (pos + self.capacity)).wrapping_sub(2 * index),
                            Ordering::SeqCst,
                        );
                        return got.map(Some);
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return Ok(None);
            } else {
                pos = deq.load(Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{MFdFlags, memfd_create};

    #[test]
    fn fifo_full_and_empty() {
        let r = ShmRing::new(3).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.try_pop(&mut out).unwrap(), None);
        assert!(r.try_push(Some(b"a")));
        assert!(r.try_push(None));
        assert!(r.try_push(Some(b"ccc")));
        assert!(!r.try_push(Some(b"d")), "full");
        assert_eq!(r.len(), 3);
        assert_eq!(r.try_pop(&mut out).unwrap(), Some(Popped::Data(1)));
        assert_eq!(out, b"a");
        assert_eq!(r.try_pop(&mut out).unwrap(), Some(Popped::Marker));
        for i in 0..10u8 {
            assert!(r.try_push(Some(&[i; 5])));
            assert!(r.try_pop(&mut out).unwrap().is_some());
        }
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_ring_of_one_slot_holds_one_item() {
        let r = ShmRing::new(1).unwrap();
        let mut out = Vec::new();
        for i in 0..5u8 {
            assert!(r.try_push(Some(&[i])));
            assert!(!r.try_push(Some(&[i])), "full at one item");
            assert_eq!(r.try_pop(&mut out).unwrap(), Some(Popped::Data(1)));
            assert_eq!(out, [i]);
            assert_eq!(r.try_pop(&mut out).unwrap(), None);
        }
    }

    #[test]
    fn a_second_mapping_sees_the_same_ring() {
        let r = ShmRing::new(8).unwrap();
        let other = ShmRing::open(r.fd().try_clone_to_owned().unwrap()).unwrap();
        assert!(r.try_push(Some(b"shared")));
        let mut out = Vec::new();
        assert_eq!(other.try_pop(&mut out).unwrap(), Some(Popped::Data(6)));
        assert_eq!(out, b"shared");
    }

    #[test]
    fn a_file_of_the_wrong_shape_is_refused() {
        let fd = memfd_create(c"x", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 5000).unwrap();
        assert!(ShmRing::open(fd).is_err());
    }
}
