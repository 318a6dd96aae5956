//! [`IdleSweep`]: how the scheduler finds the workers that had no task for the pool's
//! [`idle_timeout`](super::PoolBuilder::idle_timeout), to retire them.
//!
//! The scheduler looks at its workers every quarter of the timeout, rather than timing each
//! task: a task costs nothing more, and an idle pool wakes four times per timeout until its
//! last worker is gone, then not at all. A worker counts as active at a look if it holds a
//! task or was sent one since the look before, so it is retired between the timeout and a
//! quarter more after its last task ended.

use std::time::Duration;

use tokio::time::Instant;

/// The scheduler's sweeps for idle workers.
#[derive(Debug)]
pub(super) struct IdleSweep {
    timeout: Duration,
    /// The next sweep; `None` while no worker may be retired (none is left).
    next: Option<Instant>,
}

/// One worker's activity, as the sweeps saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    /// How many tasks it had been sent at the last sweep.
    sent: usize,
    /// The last sweep (or its start) that found it active.
    active_at: Instant,
}

impl Activity {
    /// A worker that joined the pool at `now`.
    pub(super) fn new(now: Instant) -> Activity {
        Activity {
            sent: 0,
            active_at: now,
        }
    }
}

impl IdleSweep {
    pub(super) fn new(timeout: Duration) -> IdleSweep {
        IdleSweep {
            timeout,
            next: None,
        }
    }

    /// When the next sweep is due, if one is.
    pub(super) fn due(&self) -> Option<Instant> {
        self.next
    }

    /// Plans a sweep, if none is planned: a worker joined at `now`.
    pub(super) fn arm(&mut self, now: Instant) {
        if self.next.is_none() {
            self.next = Some(now + self.period());
        }
    }

    /// Ends a sweep made at `now`: the next is due a period later if a worker may still be
    /// retired, and none is planned otherwise.
    pub(super) fn swept(&mut self, now: Instant, workers_left: bool) {
        self.next = workers_left.then(|| now + self.period());
    }

    /// Whether a worker that holds `load` tasks and was sent `sent` in all has been idle for
    /// the timeout at `now`; notes its activity for the next sweep.
    pub(super) fn expired(
        &self,
        activity: &mut Activity,
        load: usize,
        sent: usize,
        now: Instant,
    ) -> bool {
        if load > 0 || sent != activity.sent {
            *activity = Activity {
                sent,
                active_at: now,
            };
            return false;
        }
        now.duration_since(activity.active_at) >= self.timeout
    }

    fn period(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(4);

    #[test]
    fn a_worker_is_retired_a_timeout_after_the_sweep_that_last_saw_it_active() {
        let sweep = IdleSweep::new(TIMEOUT);
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        assert!(!sweep.expired(&mut a, 0, 0, t0 + TIMEOUT / 2));
        // Sent a task since: active, whatever the clock says.
        assert!(!sweep.expired(&mut a, 0, 1, t0 + TIMEOUT * 2));
        assert!(!sweep.expired(&mut a, 0, 1, t0 + TIMEOUT * 3 - Duration::from_millis(1)));
        assert!(sweep.expired(&mut a, 0, 1, t0 + TIMEOUT * 3));
    }

    #[test]
    fn a_worker_that_holds_a_task_is_never_idle() {
        let sweep = IdleSweep::new(TIMEOUT);
        let t0 = Instant::now();
        let mut a = Activity::new(t0);
        for i in 1..10 {
            assert!(!sweep.expired(&mut a, 1, 1, t0 + TIMEOUT * i));
        }
        assert!(sweep.expired(&mut a, 0, 1, t0 + TIMEOUT * 10));
    }

    #[test]
    fn sweeps_stop_once_no_worker_is_left_and_start_again_with_one() {
        let mut sweep = IdleSweep::new(TIMEOUT);
        assert_eq!(sweep.due(), None);
        let t0 = Instant::now();
        sweep.arm(t0);
        assert_eq!(sweep.due(), Some(t0 + TIMEOUT / 4));
        // A second worker joining does not put the sweep off.
        sweep.arm(t0 + Duration::from_millis(10));
        assert_eq!(sweep.due(), Some(t0 + TIMEOUT / 4));
        sweep.swept(t0 + TIMEOUT, true);
        assert_eq!(sweep.due(), Some(t0 + TIMEOUT + TIMEOUT / 4));
        sweep.swept(t0 + TIMEOUT * 2, false);
        assert_eq!(sweep.due(), None);
    }
}
