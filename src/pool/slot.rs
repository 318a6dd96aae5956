//! [`Slot`]: one worker as the scheduler sees it: how to reach and kill it, the tasks it
//! holds, in the order they were sent, and the [`RoundTrip`] to it.

use std::collections::{BTreeSet, VecDeque};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::idle::Activity;
use super::proto::ToWorker;
use super::remote::{Killer, Mark};
use crate::wire::{FrameBuf, Outbox};

/// One worker of the pool.
pub(super) struct Slot {
    pub(super) pid: u32,
    /// Its host, for a worker on another host of a cluster.
    pub(super) host: Option<Arc<str>>,
    pub(super) killer: Killer,
    /// How its frames reach it: written at once when its writer task has none waiting.
    pub(super) out: Outbox,
    /// The frames of the scheduler's current round, sent together when the round ends
    /// (see [`Slot::flush`]).
    pub(super) unsent: Vec<FrameBuf>,
    /// Where the worker marks each synchronous task as it starts it.
    pub(super) started: Mark,
    /// Synchronous tasks sent, oldest first: the first one still in flight is running.
    pub(super) sync: VecDeque<u64>,
    pub(super) asyncs: Vec<u64>,
    pub(super) sent: usize,
    /// The synchronous tasks sent, counted from the first: the number of the last one sent
    /// (see [`StartedMark`](super::started::StartedMark)).
    pub(super) sync_sent: u64,
    /// The numbers of the synchronous tasks taken back from it (see
    /// [`StartedMark::take_back`](super::started::StartedMark::take_back)) that it may not
    /// have come to yet: each holds its claim word until the worker drops its task, which it
    /// does in turn, unseen by the pool. Once a task sent after one has run, the worker has
    /// passed it.
    pub(super) taken_back: BTreeSet<u64>,
    /// No more tasks: it was sent `Exit`, or is being killed.
    pub(super) draining: bool,
    /// A send to it failed (it had died, or its socket failed) before the pool heard of its
    /// exit: though the pool then kills it, its end is a loss, not one the pool chose.
    pub(super) send_failed: bool,
    /// Its memory has reached the pool's
    /// [`max_memory_per_child`](super::PoolBuilder::max_memory_per_child), as an answer
    /// said: set by its reader (see [`read_worker`](super::link::read_worker)).
    pub(super) over_memory: Arc<AtomicBool>,
    /// The round trip to it, which its prefetch covers.
    pub(super) round_trip: RoundTrip,
    /// When it last had work, for the pool's idle timeout.
    pub(super) activity: Activity,
}

/// The round trip to a worker as the scheduler measures it: from sending a task to its
/// answer's arrival, less the task's run time and its wait behind other tasks in the worker.
///
/// Each timed answer gives a sample: its arrival − its sending − the worker's run time. A
/// task sent while the worker held no other synchronous task waited behind none, so its
/// sample is the round trip itself (a *clean* sample); one sent behind others may have
/// waited for them, so its sample is only an upper bound, by how long is unknown. The
/// estimate is the least sample seen, except that a clean sample above it raises it by an
/// eighth of the difference: samples that may hold a wait only ever lower it, so a worker
/// kept busy (its tasks all queued) cannot inflate it, as TCP's min-RTT filter keeps
/// queueing out; and a link that became slower shows in the clean samples (a worker that
/// runs dry because its estimate is low is sent its next task alone).
///
/// Updated on the scheduler's thread; a sample costs a few comparisons.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RoundTrip {
    nanos: Option<u64>,
}

impl RoundTrip {
    /// Takes in one sample, in nanoseconds; `alone` says whether the task was sent while
    /// the worker held no other synchronous task.
    pub(super) fn sample(&mut self, nanos: u64, alone: bool) {
        self.nanos = match self.nanos {
            None if alone => Some(nanos),
            // A bound with an unknown wait in it says nothing of a link not yet measured.
            None => None,
            Some(est) if nanos <= est => Some(nanos),
            Some(est) if alone => Some(est + (nanos - est) / 8),
            Some(est) => Some(est),
        };
    }

    /// The estimate in nanoseconds; 0 before the first clean sample.
    pub(super) fn nanos(&self) -> u64 {
        self.nanos.unwrap_or(0)
    }
}

impl Slot {
    pub(super) fn load(&self) -> usize {
        self.sync.len() + self.asyncs.len()
    }

    /// Whether it is to be sent no more tasks, and retired once it has answered those it
    /// holds: it was sent `maxtasks` (the pool's `maxtasksperchild`), or its memory has
    /// reached the pool's limit.
    pub(super) fn spent(&self, maxtasks: Option<usize>) -> bool {
        self.over_memory() || maxtasks.is_some_and(|m| self.sent >= m)
    }

    /// Whether the worker said that its memory reached the pool's `max_memory_per_child`.
    pub(super) fn over_memory(&self) -> bool {
        self.over_memory.load(Ordering::Acquire)
    }

    /// Whether the worker may have started synchronous task `id`: it has marked that task,
    /// or one sent after it, as started. Exact once the worker is dead; while it lives, a
    /// `false` may turn `true` at any moment. For a remote worker, it is known only once the
    /// worker's agent has reported its death: until then every task it holds may have
    /// started.
    pub(super) fn may_have_started(&self, id: u64) -> bool {
        let Some(last) = self.started.last() else {
            return true;
        };
        let pos = |x: u64| self.sync.iter().position(|&y| y == x);
        match (pos(id), pos(last)) {
            (Some(i), Some(l)) => i <= l,
            // Answered (so started), or not a synchronous task of this worker.
            (None, _) => true,
            // The last one started was answered, or none has started: every task still
            // held was sent after it.
            (Some(_), None) => false,
        }
    }

    /// The synchronous task the worker marked as started last, if it was sent after task
    /// `id`: then `id` has finished (the worker runs its synchronous tasks one at a time, in
    /// the order they were sent), though its answer may not have come, held back while the
    /// worker runs the later one, or lost with a worker that died. `None` when that is not
    /// known (a live remote worker), and for the marked task itself.
    pub(super) fn started_after(&self, id: u64) -> Option<u64> {
        let last = self.started.last()?;
        let pos = |x: u64| self.sync.iter().position(|&y| y == x);
        (pos(last)? > pos(id)?).then_some(last)
    }

    /// Sends the frames of this round: a lone one at once from this thread if the socket
    /// takes it (no wake-up of the writer task stands before it), several to the writer
    /// task, which writes them in one batch. If they cannot be sent (the writer task is gone,
    /// the socket failed), the worker is killed: its exit is reported, and its tasks are
    /// dealt with as on any death (those its started mark shows it never started, as these,
    /// go to another worker).
    pub(super) fn flush(&mut self) {
        let sent = match self.unsent.len() {
            0 => return,
            1 => self.unsent.pop().map_or(Ok(()), |f| self.out.send(f)),
            _ => self.unsent.drain(..).try_for_each(|f| self.out.queue(f)),
        };
        self.unsent.clear();
        if let Err(e) = sent {
            tracing::debug!(
                pid = self.pid,
                "cannot send to a pool worker, killing it: {e}"
            );
            self.send_failed = true;
            self.kill();
        }
    }

    /// Sends one frame outside a round (a cancel, an exit), after the round's.
    pub(super) fn send_now(&mut self, frame: FrameBuf) {
        self.unsent.push(frame);
        self.flush();
    }

    /// Asks the worker to drop task `id` if it has not started it; it answers that it did
    /// ([`TaskFailure::Cancelled`](crate::error::TaskFailure::Cancelled)), or, had the task
    /// started, nothing more than the task's own answer.
    pub(super) fn send_cancel(&mut self, id: u64) {
        if let Ok(f) = FrameBuf::of(&ToWorker::Cancel { id }) {
            self.send_now(f);
            self.started.count_cancel();
        }
    }

    /// Asks the worker, which must hold no task, to exit; it takes no task from now on.
    pub(super) fn retire(&mut self) {
        self.draining = true;
        if let Ok(f) = FrameBuf::of(&ToWorker::Exit) {
            self.send_now(f);
        }
    }

    /// Kills the worker; its exit is reported by its reader, and it is replaced.
    pub(super) fn kill(&mut self) {
        self.draining = true;
        self.killer.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::started::StartedMark;
    use crate::process::KillHandle;

    fn slot(sync: &[u64], started: &StartedMark) -> Slot {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (ours, _theirs) = crate::sys::socketpair_stream().expect("socketpair");
        let link = Arc::new(crate::wire::Framed::unix(ours).expect("framed"));
        let region =
            StartedMark::from_fd(crate::sys::dup_fd(started.fd()).expect("dup")).expect("map");
        Slot {
            pid: 1,
            host: None,
            killer: Killer::Local(KillHandle::detached()),
            out: Outbox::new(tx, link),
            unsent: Vec::new(),
            started: Mark::Local(region),
            sync: sync.iter().copied().collect(),
            asyncs: Vec::new(),
            sent: sync.len(),
            sync_sent: sync.len() as u64,
            taken_back: BTreeSet::new(),
            draining: false,
            send_failed: false,
            over_memory: Arc::new(AtomicBool::new(false)),
            round_trip: RoundTrip::default(),
            activity: Activity::new(tokio::time::Instant::now()),
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn queueing_does_not_inflate_the_round_trip() {
        let mut rt = RoundTrip::default();
        rt.sample(2 * MS, true);
        // A worker kept busy: every task waited behind others, up to 10 ms.
        for i in 0..1000 {
            rt.sample(2 * MS + (i % 10) * MS, false);
        }
        assert_eq!(rt.nanos(), 2 * MS);
    }

    #[test]
    fn a_queued_sample_sets_no_first_round_trip() {
        let mut rt = RoundTrip::default();
        rt.sample(8 * MS, false);
        assert_eq!(rt.nanos(), 0);
        rt.sample(MS, true);
        assert_eq!(rt.nanos(), MS);
    }

    #[test]
    fn any_lower_sample_lowers_the_round_trip() {
        let mut rt = RoundTrip::default();
        rt.sample(2 * MS, true);
        rt.sample(MS, false);
        assert_eq!(rt.nanos(), MS);
        rt.sample(MS / 2, true);
        assert_eq!(rt.nanos(), MS / 2);
    }

    #[test]
    fn clean_samples_raise_the_round_trip_gradually() {
        let mut rt = RoundTrip::default();
        rt.sample(100_000, true);
        // One outlier moves it an eighth of the way.
        rt.sample(8 * MS + 100_000, true);
        assert_eq!(rt.nanos(), MS + 100_000);
        // A link that became slower: its clean samples bring the estimate to it.
        for _ in 0..100 {
            rt.sample(2 * MS, true);
        }
        assert!(rt.nanos() > 2 * MS - 1000 && rt.nanos() <= 2 * MS);
    }

    #[test]
    fn tasks_sent_after_the_marked_one_never_started() {
        let mark = StartedMark::new().expect("memfd");
        let s = slot(&[10, 11, 12], &mark);
        // Nothing marked: none of them started.
        assert!(!s.may_have_started(10) && !s.may_have_started(12));
        mark.mark(11);
        assert!(s.may_have_started(10) && s.may_have_started(11));
        assert!(!s.may_have_started(12));
        // The marked task was answered (it left the list): those still held came after.
        let s = slot(&[12], &mark);
        assert!(!s.may_have_started(12));
        // A task no longer held was answered, so it started.
        assert!(s.may_have_started(10));
    }

    #[test]
    fn tasks_sent_before_the_marked_one_finished() {
        let mark = StartedMark::new().expect("memfd");
        let s = slot(&[10, 11, 12], &mark);
        assert_eq!(s.started_after(10), None);
        mark.mark(11);
        assert_eq!(s.started_after(10), Some(11));
        // The marked one may have finished or not; those after it never started.
        assert_eq!(s.started_after(11), None);
        assert_eq!(s.started_after(12), None);
    }
}
