//! [`PoolStats`]: a snapshot of a pool, for a progress bar or a `/metrics` handler, and the
//! counters the scheduler keeps it in.

use std::sync::Mutex;

use crate::error::ExitCause;

/// How many of the latest worker losses a snapshot lists.
const RECENT_LOSSES: usize = 16;

/// A worker that died while the pool still wanted it (killed, crashed, out of memory), not
/// one that retired or was stopped by the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerLoss {
    /// The worker's pid.
    pub pid: u32,
    /// How it ended: the signal or exit code.
    pub cause: ExitCause,
}

/// A snapshot of a pool, from [`Pool::stats`](crate::Pool::stats). A map's chunk counts as
/// one task, as for `maxtasksperchild`: a chunk that answered counts as done even if some of
/// its inputs panicked (those failures are in the map's result, or the `imap` stream's
/// items), and as failed when it gave no answer at all (its worker died, it timed out or
/// was cancelled).
///
/// The snapshot may lag the results by a moment: a task's result reaches its caller before
/// the pool's task counts it, so right after an `.await` the task may still show as
/// running.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers running and taking tasks.
    pub workers_alive: usize,
    /// Workers being started (a start that failed waits here for its retry).
    pub workers_starting: usize,
    /// Workers lost so far (see [`WorkerLoss`]).
    pub workers_lost: u64,
    /// The latest of those losses, oldest first (at most 16).
    pub recent_losses: Vec<WorkerLoss>,
    /// Workers the pool let go so far while open, none of them lost: those that ran their
    /// [`maxtasksperchild`](crate::PoolBuilder::maxtasksperchild) tasks or reached their
    /// [`max_memory_per_child`](crate::PoolBuilder::max_memory_per_child) (each replaced),
    /// and those idle for the [`idle_timeout`](crate::PoolBuilder::idle_timeout).
    pub workers_retired: u64,
    /// Those of them retired because their memory reached `max_memory_per_child`.
    pub workers_over_memory: u64,
    /// Tasks waiting for a worker.
    pub tasks_queued: usize,
    /// Tasks sent to a worker and not answered yet.
    pub tasks_running: usize,
    /// Tasks that gave their result (a map's chunks that answered, see above).
    pub tasks_done: u64,
    /// Tasks that ended without one (a panic of an `apply`, a lost worker, a timeout, a
    /// cancel...).
    pub tasks_failed: u64,
}

/// What the scheduler publishes after each round of work, all at once, so that a snapshot
/// is consistent (a task lost with its worker is no longer running once the loss shows).
#[derive(Debug, Default)]
pub(super) struct Counters {
    stats: Mutex<PoolStats>,
}

/// The scheduler's tallies between two publications.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) done: u64,
    pub(super) failed: u64,
    pub(super) losses: Vec<WorkerLoss>,
    pub(super) retired: u64,
    pub(super) over_memory: u64,
}

impl Tally {
    /// A task ended, with its result or without.
    pub(super) fn finished(&mut self, ok: bool) {
        if ok {
            self.done += 1;
        } else {
            self.failed += 1;
        }
    }

    /// A worker was retired, by its memory or not.
    pub(super) fn retired(&mut self, over_memory: bool) {
        self.retired += 1;
        self.over_memory += u64::from(over_memory);
    }
}

impl Counters {
    /// The scheduler's state after a round of work, and what its tally counted since the
    /// last one (which it empties).
    pub(super) fn publish(
        &self,
        (alive, starting, queued, running): (usize, usize, usize, usize),
        tally: &mut Tally,
    ) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.workers_alive = alive;
        s.workers_starting = starting;
        s.tasks_queued = queued;
        s.tasks_running = running;
        s.tasks_done += std::mem::take(&mut tally.done);
        s.tasks_failed += std::mem::take(&mut tally.failed);
        s.workers_retired += std::mem::take(&mut tally.retired);
        s.workers_over_memory += std::mem::take(&mut tally.over_memory);
        for loss in tally.losses.drain(..) {
            s.workers_lost += 1;
            if s.recent_losses.len() == RECENT_LOSSES {
                s.recent_losses.remove(0);
            }
            s.recent_losses.push(loss);
        }
    }

    pub(super) fn snapshot(&self) -> PoolStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
