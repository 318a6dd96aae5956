//! [`Answered`]: the answers that the workers' readers have handed to their callers and the
//! scheduler has yet to take in (to count them, free the worker's room, time the round
//! trip).
//!
//! A reader logs each answer here. It wakes the scheduler for it unless the scheduler said,
//! at the end of its last round, that it may take the answer in later (nothing waits for the
//! room it frees: see `Scheduler::may_defer`) and the reader will look again shortly (it
//! spins for the next answer). Then the answer waits for the scheduler's next wake-up,
//! which takes in everything logged before doing anything else, or for the reader, which
//! wakes the scheduler before it goes to sleep. So a caller that awaits one task after
//! another wakes the scheduler once per task (its submission), where each answer woke it
//! too: on a multi-thread runtime that second wake-up pushed the caller off its thread and
//! woke another thread to take it.

use std::sync::Mutex;

/// One worker's answer to one task, as the scheduler takes it in.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) wid: u64,
    pub(super) id: u64,
    /// The worker's run time of a synchronous task (0 for other answers).
    pub(super) nanos: u64,
    /// Whether the answer reached its caller (nobody had answered it first), and if so,
    /// whether it carried a result.
    pub(super) answered: Option<bool>,
    /// When the answer arrived (the worker's round trip is measured by it).
    pub(super) at: std::time::Instant,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct Answered {
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    answers: Vec<Answer>,
    /// A wake-up of the scheduler was asked for since it last took the answers in.
    woken: bool,
    /// Whether answers may wait for the scheduler's next wake-up.
    deferrable: bool,
}

impl Answered {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs `answer`; returns whether the caller is to wake the scheduler for it. It need
    /// not if a wake-up is on its way, or if `looks_again` (the reader looks for the next
    /// answer shortly, and wakes the scheduler before it sleeps) and the scheduler allows
    /// answers to wait.
    pub(super) fn add(&self, answer: Answer, looks_again: bool) -> bool {
        let mut log = self.log();
        log.answers.push(answer);
        if log.woken || (looks_again && log.deferrable) {
            return false;
        }
        log.woken = true;
        true
    }

    /// Whether answers wait with no wake-up of the scheduler asked for: the caller, about to
    /// sleep, is to ask for one (and this counts it as asked).
    pub(super) fn unseen(&self) -> bool {
        let mut log = self.log();
        if log.answers.is_empty() || log.woken {
            return false;
        }
        log.woken = true;
        true
    }

    /// Moves the answers logged so far to `into`, oldest first.
    pub(super) fn take(&self, into: &mut Vec<Answer>) {
        let mut log = self.log();
        into.append(&mut log.answers);
        log.woken = false;
    }

    /// Sets whether answers may wait for the scheduler's next wake-up; returns whether any
    /// are waiting now, which the scheduler, about to sleep, takes in first.
    pub(super) fn allow_waiting(&self, deferrable: bool) -> bool {
        let mut log = self.log();
        log.deferrable = deferrable;
        !log.answers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: u64) -> Answer {
        Answer {
            wid: 0,
            id,
            nanos: 0,
            answered: Some(true),
            at: std::time::Instant::now(),
        }
    }

    #[test]
    fn an_answer_wakes_the_scheduler_unless_it_may_wait() {
        let a = Answered::default();
        assert!(a.add(answer(1), true), "not deferrable yet");
        assert!(!a.add(answer(2), false), "a wake-up is on its way");
        let mut got = Vec::new();
        a.take(&mut got);
        assert_eq!(got.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);
        assert!(!a.allow_waiting(true));
        assert!(!a.add(answer(3), true), "deferred: the reader looks again");
        assert!(a.add(answer(4), false), "the reader will not look again");
        assert!(!a.unseen(), "the wake-up was asked for");
    }

    #[test]
    fn a_deferred_answer_is_seen_before_sleep() {
        let a = Answered::default();
        a.allow_waiting(true);
        assert!(!a.add(answer(1), true));
        assert!(
            a.unseen(),
            "the reader, about to sleep, wakes the scheduler"
        );
        assert!(!a.unseen(), "once");
        let mut got = Vec::new();
        a.take(&mut got);
        assert!(!a.add(answer(2), true));
        assert!(
            a.allow_waiting(false),
            "the scheduler, no longer allowing waits, finds the answer waiting"
        );
    }
}
