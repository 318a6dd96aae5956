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

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::sys::SharedRegion;

/// The shared words: the last task started (0: none yet, task ids start at 1), and the
/// cancels sent.
#[derive(Debug)]
pub(super) struct StartedMark(SharedRegion);

const STARTED: usize = 0;
const CANCELS: usize = 8;
const SIZE: usize = 16;

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
}
