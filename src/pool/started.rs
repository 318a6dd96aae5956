//! The word in which a worker marks each synchronous task as it starts it.
//!
//! A worker holds back answers to short tasks to send many in one write, so the answers the
//! pool has received do not tell it which tasks the worker has started. When a worker dies,
//! the pool must know: a task the worker may have started is never sent again (it fails with
//! [`TaskError::is_worker_lost`](crate::TaskError::is_worker_lost)), and only one it provably never started
//! is sent to another worker. So each worker shares one word of memory with the pool (a
//! memfd, mapped by both), and writes into it the id of each synchronous task just before
//! the task starts. It costs one store per task and no system call. Once the worker is dead,
//! the pool reads the last id written: the worker runs its synchronous tasks in the order
//! they were sent, so every task sent up to that one may have started, and every task sent
//! after it never did.
//!
//! A second word counts the cancels the pool has sent the worker. A worker that ran a task
//! outside its runtime has not had its reactor look at its socket since: before it starts
//! the next task, it reads the socket directly if this count is above the cancels it has
//! taken in, so that a cancel sent while a task ran reaches the queue before the next task
//! starts. It costs one load per task, and a system call only when a cancel was sent.
//!
//! A third word lets the pool take back a task it sent ahead to a busy worker, for a worker
//! left idle, with no message: a worker reads its socket only between tasks, so one that
//! runs a long task would answer a message only when that task ends. The pool numbers the
//! synchronous tasks it sends each worker 1, 2, 3, ... in the order it sends them (the
//! task's `seq`), and the worker claims each one before it starts it by writing its number
//! there, flagged. The pool takes task `seq` back by writing `seq` there, unflagged, only if
//! the number claimed last is below it; the worker drops a task whose number it finds
//! written by the pool. Numbers, unlike task ids (a task sent again keeps its id), only grow
//! along a worker's queue, so a claim of a later task, even one the worker then drops,
//! proves the worker has passed `seq`. Each side changes the word in one atomic step that
//! sees what the other wrote, so exactly one of them has the task: a task taken back never
//! starts in the worker it was sent to (see [`StartedMark::take_back`]).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::sys::SharedRegion;

/// The shared words: the last task started (0: none yet, task ids start at 1), the cancels
/// sent, and the claim word (see the module docs).
#[derive(Debug)]
pub(super) struct StartedMark(SharedRegion);

const STARTED: usize = 0;
const CANCELS: usize = 8;
const CLAIM: usize = 16;
const SIZE: usize = 24;

/// In the claim word, the flag of the number of a task the worker claimed; a number without
/// it, other than 0, is that of a task the pool took back and the worker has not seen yet.
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

    /// In the pool: takes back the synchronous task the pool numbered `seq` for this worker
    /// (see the module docs), if the worker has not claimed it. Once [`TakeBack::Taken`],
    /// the worker never starts the task; [`TakeBack::Claimed`] once the worker has claimed
    /// `seq` or any task after it (it runs `seq`, or has run it); [`TakeBack::Later`] while
    /// another task taken back waits for the worker to see it (one at a time).
    pub(super) fn take_back(&self, seq: u64) -> TakeBack {
        let word = self.0.u64_at(CLAIM);
        let mut seen = word.load(Ordering::Acquire);
        loop {
            if seen != 0 && seen & CLAIMED == 0 {
                return TakeBack::Later;
            }
            if seen & !CLAIMED >= seq {
                return TakeBack::Claimed;
            }
            match word.compare_exchange(seen, seq, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return TakeBack::Taken,
                Err(now) => seen = now,
            }
        }
    }

    /// In the worker: claims the synchronous task numbered `seq`, next in its queue. Returns
    /// the number of the task the pool took back since the last claim, if any: `seq` itself
    /// (the task must not start), or that of a task behind it, to drop when its turn comes.
    pub(super) fn claim(&self, seq: u64) -> Option<u64> {
        let was = self.0.u64_at(CLAIM).swap(seq | CLAIMED, Ordering::AcqRel);
        (was != 0 && was & CLAIMED == 0).then_some(was)
    }
}

/// What [`StartedMark::take_back`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TakeBack {
    /// The task is the pool's again: its worker never starts it.
    Taken,
    /// The worker has claimed the task: it runs it, or has run it.
    Claimed,
    /// Not known now: the worker has not seen another task taken back, or (a worker on
    /// another host) shares no memory with the pool.
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
        assert_eq!(m.claim(1), Some(1));
        // Claimed: no longer taken back.
        assert_eq!(m.claim(2), None);
        assert_eq!(m.take_back(2), TakeBack::Claimed);
        // Taken back behind the task claimed next: that claim reports it, to drop later.
        assert_eq!(m.take_back(4), TakeBack::Taken);
        assert_eq!(m.take_back(5), TakeBack::Later, "one taken back at a time");
        assert_eq!(m.claim(3), Some(4));
        assert_eq!(
            m.take_back(5),
            TakeBack::Taken,
            "seen: the next may be taken"
        );
    }

    #[test]
    fn a_claim_of_a_task_dropped_after_another_proves_that_one_claimed() {
        // Task 2 claimed (it runs), task 3 behind it taken back; the worker, done with 2,
        // claims 3 and drops it. Task 2 must not be taken back now: the word shows 3.
        let m = StartedMark::new().expect("memfd");
        assert_eq!(m.claim(1), None);
        assert_eq!(m.claim(2), None);
        assert_eq!(m.take_back(3), TakeBack::Taken);
        assert_eq!(m.claim(3), Some(3));
        assert_eq!(
            m.take_back(2),
            TakeBack::Claimed,
            "task 2 ran; taking it back would run it twice"
        );
        assert_eq!(m.take_back(3), TakeBack::Claimed);
        assert_eq!(m.take_back(4), TakeBack::Taken);
    }
}
