//! [`Slot`]: one worker as the scheduler sees it: how to reach and kill it, and the tasks it
//! holds, in the order they were sent.

use std::collections::VecDeque;

use tokio::sync::mpsc::UnboundedSender;

use std::sync::Arc;

use super::remote::{Killer, Mark};
use crate::wire::FrameBuf;

/// One worker of the pool.
pub(super) struct Slot {
    pub(super) pid: u32,
    /// Its host, for a worker on another host of a cluster.
    pub(super) host: Option<Arc<str>>,
    pub(super) killer: Killer,
    pub(super) tx: UnboundedSender<FrameBuf>,
    /// Where the worker marks each synchronous task as it starts it.
    pub(super) started: Mark,
    /// Synchronous tasks sent, oldest first: the first one still in flight is running.
    pub(super) sync: VecDeque<u64>,
    pub(super) asyncs: Vec<u64>,
    pub(super) sent: usize,
    /// No more tasks: it was sent `Exit`, or is being killed.
    pub(super) draining: bool,
}

impl Slot {
    pub(super) fn load(&self) -> usize {
        self.sync.len() + self.asyncs.len()
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
        let region =
            StartedMark::from_fd(crate::sys::dup_fd(started.fd()).expect("dup")).expect("map");
        Slot {
            pid: 1,
            host: None,
            killer: Killer::Local(KillHandle::detached()),
            tx,
            started: Mark::Local(region),
            sync: sync.iter().copied().collect(),
            asyncs: Vec::new(),
            sent: sync.len(),
            draining: false,
        }
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
}
