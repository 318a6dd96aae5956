//! The word in which a worker marks each synchronous task as it starts it.
//!
//! A worker holds back answers to short tasks to send many in one write, so the answers the
//! pool has received do not tell it which tasks the worker has started. When a worker dies,
//! the pool must know: a task the worker may have started is never sent again (it fails
//! with [`TaskError::is_worker_lost`](crate::TaskError::is_worker_lost)), and only one it
//! provably never started is sent to another worker. So each worker shares one word of
//! memory with the pool (a memfd, mapped by both), and writes into it the id of each
//! synchronous task just before the task starts. It costs one store per task and no system
//! call. Once the worker is dead, the pool reads the last id written: the worker runs its
//! synchronous tasks in the order they were sent, so every task sent up to that one may
//! have started, and every task sent after it never did.
//!
//! A second word counts the cancels the pool has sent the worker. A worker that ran a task
//! outside its runtime has not had its reactor look at its socket since: before it starts
//! the next task, it reads the socket directly if this count is above the cancels it has
//! taken in, so that a cancel sent while a task ran reaches the queue before the next task
//! starts. It costs one load per task, and a system call only when a cancel was sent.
//!
//! A ring of words lets the pool take back a task it sent ahead to a busy worker, with no
//! message: for a worker left idle, or for a caller that cancels it. A worker reads its
//! socket only between tasks, so one that runs a long task would answer a message only when
//! that task ends. The pool numbers the synchronous tasks it sends each worker 1, 2, 3, ...
//! in the order it sends them (the task's `seq`), and each number has its word in the ring,
//! at `seq` modulo the ring's length. The worker claims each task before it starts it by
//! writing its number there, flagged; the pool takes the task back by writing its number
//! there, unflagged, unless the worker has claimed it; the worker drops a task whose number
//! it finds written by the pool. Each side changes the word in one atomic step that sees
//! what the other wrote, so exactly one of them has the task: a task taken back never starts
//! in the worker it was sent to (see [`StartedMark::take_back`]). Numbers, unlike task ids
//! (a task sent again keeps its id), are never reused for a worker, and a word is used again
//! only for a number [`RING`] later, once the worker has passed the task that had it: the
//! pool takes a task back only while every task it sent the worker and does not know the
//! worker passed (one it holds, or one taken back that the worker may not have come to and
//! dropped yet) is less than [`RING`] numbers old. A worker holds far fewer tasks than that
//! (the pool's prefetch is capped below it); a worker stalled while many tasks are taken back
//! from it is asked to drop the next ones by a message instead.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::sys::SharedRegion;

/// The shared words: the last task started (0: none yet, task ids start at 1), the cancels
/// sent, and the claim ring (see the module docs).
#[derive(Debug)]
pub(super) struct StartedMark(SharedRegion);

const STARTED: usize = 0;
const CANCELS: usize = 8;
const CLAIMS: usize = 16;

/// The words of the claim ring: more than the synchronous tasks a worker may hold at once.
pub(super) const RING: usize = 512;

const SIZE: usize = CLAIMS + 8 * RING;

/// In a claim word, the flag of the number of a task the worker claimed; a number without
/// it is that of a task the pool took back (or of none yet: 0).
const CLAIMED: u64 = 1 << 63;

impl StartedMark {
    /// A new word, for a worker about to start.
    pub(super) fn new() -> Result<StartedMark> {
        Ok(StartedMark(SharedRegion::anonymous(
            "tokio-multiprocessing-pool-started",
            SIZE,
        )?))
    }

    /// The word the pool made, in the worker.
    pub(super) fn from_fd(fd: OwnedFd) -> Result<StartedMark> {
        let region = SharedRegion::from_fd(fd)?;
        if region.len() < SIZE {
            return Err(Error::Protocol(format!(
                "the pool's started mark is {} bytes, not {SIZE}",
                region.len()
            )));
        }
        Ok(StartedMark(region))
    }

    /// The descriptor to hand the worker.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }

    /// In the worker: task `id` starts now.
    pub(super) fn mark(&self, id: u64) {
        self.0.u64_at(STARTED).store(id, Ordering::Release);
    }

    /// In the pool, once the worker is dead: the last task it started, 0 if none.
    pub(super) fn last(&self) -> u64 {
        self.0.u64_at(STARTED).load(Ordering::Acquire)
    }

    /// In the pool: one more cancel was sent to the worker.
    pub(super) fn count_cancel(&self) {
        self.0.u64_at(CANCELS).fetch_add(1, Ordering::Release);
    }

    /// In the worker: the cancels sent so far.
    pub(super) fn cancels(&self) -> u64 {
        self.0.u64_at(CANCELS).load(Ordering::Acquire)
    }

    /// The claim word of the task numbered `seq`.
    fn claim_word(&self, seq: u64) -> &std::sync::atomic::AtomicU64 {
        // The remainder is below RING, which fits in usize.
        let slot = (seq % RING as u64) as usize;
        self.0.u64_at(CLAIMS + 8 * slot)
    }

    /// In the pool: takes back the synchronous task the pool numbered `seq` for this worker
    /// (see the module docs), if the worker has not claimed it. Once [`TakeBack::Taken`],
    /// the worker never starts the task; [`TakeBack::Claimed`] once the worker has claimed
    /// it (it runs it, or has run it).
    pub(super) fn take_back(&self, seq: u64) -> TakeBack {
        let word = self.claim_word(seq);
        let seen = word.load(Ordering::Acquire);
        if seen == seq | CLAIMED {
            return TakeBack::Claimed;
        }
        if seen == seq {
            return TakeBack::Taken;
        }
        // The word holds a task RING numbers earlier (or nothing): only the worker's claim
        // of `seq` can change it meanwhile.
        match word.compare_exchange(seen, seq, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => TakeBack::Taken,
            Err(_) => TakeBack::Claimed,
        }
    }

    /// In the worker: claims the synchronous task numbered `seq`, next in its queue; `false`
    /// if the pool took it back (it must not start).
    pub(super) fn claim(&self, seq: u64) -> bool {
        self.claim_word(seq).swap(seq | CLAIMED, Ordering::AcqRel) != seq
    }
}

/// What [`StartedMark::take_back`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TakeBack {
    /// The task is the pool's again: its worker never starts it.
    Taken,
    /// The worker has claimed the task: it runs it, or has run it.
    Claimed,
    /// Not known now: the worker (on another host) shares no memory with the pool.
    Later,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_taken_back_is_never_claimed_and_a_claimed_one_never_taken() {
        let m = StartedMark::new().expect("memfd");
        // Taken back before its turn: the worker, claiming it, is told to drop it.
        assert_eq!(m.take_back(1), TakeBack::Taken);
        assert!(!m.claim(1));
        // Claimed: no longer taken back.
        assert!(m.claim(2));
        assert_eq!(m.take_back(2), TakeBack::Claimed);
        // Several behind the one running are taken back at once, each dropped in its turn.
        for seq in 4..20 {
            assert_eq!(m.take_back(seq), TakeBack::Taken);
        }
        assert!(m.claim(3));
        for seq in 4..20 {
            assert!(!m.claim(seq), "task {seq} was taken back");
        }
        assert!(m.claim(20));
    }

    #[test]
    fn a_word_used_again_settles_the_new_number_alone() {
        // Task 3 claimed and task 3 + RING taken back share a word: neither answer leaks
        // into the other.
        let m = StartedMark::new().expect("memfd");
        let later = 3 + RING as u64;
        assert!(m.claim(3));
        assert_eq!(m.take_back(later), TakeBack::Taken);
        assert!(!m.claim(later));
        let after = later + RING as u64;
        assert!(m.claim(after), "a number not taken back is claimed");
        assert_eq!(m.take_back(after), TakeBack::Claimed);
    }

    #[test]
    fn a_claim_of_a_task_dropped_after_another_leaves_that_one_claimed() {
        // Task 2 claimed (it runs), task 3 behind it taken back; the worker, done with 2,
        // claims 3 and drops it. Task 2 must not be taken back now.
        let m = StartedMark::new().expect("memfd");
        assert!(m.claim(1));
        assert!(m.claim(2));
        assert_eq!(m.take_back(3), TakeBack::Taken);
        assert!(!m.claim(3));
        assert_eq!(
            m.take_back(2),
            TakeBack::Claimed,
            "task 2 ran; taking it back would run it twice"
        );
        assert_eq!(m.take_back(4), TakeBack::Taken);
    }
}
