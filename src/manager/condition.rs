//! [`ConditionProxy`]: a condition variable held by a manager (Python's
//! `manager.Condition()`), over a lock of its own.
//!
//! A `wait` releases the lock (every level of a re-entrant one), waits for a notification
//! (or its time), then takes the lock back at the same level before it answers, as
//! Python's `Condition.wait` does. The server does all three; the proxy's task just waits
//! for the answer.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::oneshot;

use super::lock::{LockOps, LockState, lock_methods};
use super::proto::{ConditionOp, Failure, LockOp, Reply, Request, Wait};
use super::server::{Caller, Shared, Step, deadline, object};
use super::{Handle, expect_bool, expect_done};
use crate::error::Result;
use crate::sync::task_token;

/// The server's side of a condition: its lock, and the waiters in the order they came.
pub(super) struct ConditionState {
    lock: LockState,
    waiters: VecDeque<oneshot::Sender<()>>,
}

impl ConditionState {
    pub(super) fn new(reentrant: bool) -> ConditionState {
        ConditionState {
            lock: LockState::new(reentrant),
            waiters: VecDeque::new(),
        }
    }

    pub(super) fn handle(&mut self, caller: Caller, op: ConditionOp) -> Reply {
        match op {
            ConditionOp::Lock(op) => self.lock.handle(caller, op),
            // Python's `RuntimeError: cannot notify on un-acquired lock`.
            ConditionOp::Notify { owner, .. } | ConditionOp::NotifyAll { owner }
                if !self.lock.held_by(caller, owner) =>
            {
                Reply::Failed(Failure::NotHeld)
            }
            ConditionOp::Notify { n, .. } => {
                self.notify(n as usize);
                Reply::Done
            }
            ConditionOp::NotifyAll { .. } => {
                self.notify(usize::MAX);
                Reply::Done
            }
            ConditionOp::Wait { .. } => Reply::message("this request waits"),
        }
    }

    /// Wakes up to `n` waiters still waiting (those that gave up do not count).
    fn notify(&mut self, mut n: usize) {
        while n > 0 {
            let Some(w) = self.waiters.pop_front() else {
                return;
            };
            if w.send(()).is_ok() {
                n -= 1;
            }
        }
    }

    pub(super) fn attempt(&mut self, caller: Caller, op: &ConditionOp, timed_out: bool) -> Step {
        match op {
            ConditionOp::Lock(op) => self.lock.attempt(caller, op, timed_out),
            _ => Step::Done(Reply::message("this request does not wait this way")),
        }
    }

    pub(super) fn abandon(&mut self, caller: Caller) {
        self.lock.abandon(caller);
    }
}

/// A condition's `wait`, in the server: release, wait for a notification, retake.
pub(super) async fn wait(
    shared: &Shared,
    caller: Caller,
    id: u64,
    owner: u64,
    wait: Wait,
) -> Reply {
    let (tx, rx) = oneshot::channel();
    // Queued in the same turn as the release, so no notify in between is missed.
    let levels = {
        let mut state = shared.state();
        let c = match object!(state, id, Condition) {
            Ok(c) => c,
            Err(f) => return Reply::Failed(f),
        };
        match c.lock.release_all(caller, owner) {
            Ok(levels) => {
                c.waiters.push_back(tx);
                levels
            }
            Err(f) => return Reply::Failed(f),
        }
    };
    let notified = match deadline(wait) {
        None => rx.await.is_ok(),
        Some(d) => matches!(tokio::time::timeout_at(d, rx).await, Ok(Ok(()))),
    };
    let retaken = shared
        .wait_on(None, |state, _| match object!(state, id, Condition) {
            Ok(c) => match c.lock.retake(caller, owner, levels) {
                None => Step::Done(Reply::Done),
                Some(n) => Step::Wait(n),
            },
            Err(f) => Step::Done(Reply::Failed(f)),
        })
        .await;
    match retaken {
        Reply::Done => Reply::Bool(notified),
        r => r,
    }
}

/// A condition variable held by a [`Manager`](crate::Manager) (Python's
/// `manager.Condition()`), over a re-entrant lock of its own owned by the task that takes
/// it: `lock`/`release` as [`RLockProxy`](crate::RLockProxy), `wait`, `notify` and
/// `notify_all` as the crate's [`Condition`](crate::Condition).
pub struct ConditionProxy(pub(super) Handle<()>);
proxy_traits!(ConditionProxy);

impl LockOps for ConditionProxy {
    fn lock_request(&self, op: LockOp) -> Request {
        Request::Condition(self.0.id, ConditionOp::Lock(op))
    }
    fn proxy(&self) -> &Handle<()> {
        &self.0
    }
}

impl ConditionProxy {
    lock_methods!(task_token());

    async fn wait_with(&self, wait: Wait) -> Result<bool> {
        let owner = task_token();
        let r = self
            .0
            .call(Request::Condition(
                self.0.id,
                ConditionOp::Wait { owner, wait },
            ))
            .await?;
        expect_bool(r)
    }

    /// Releases the lock, waits for a [`notify`](Self::notify), and takes the lock back
    /// (Python's `wait()`). The calling task must hold the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`](crate::Error::NotHeld) if the calling task does not hold the
    /// lock; [`Error::Closed`](crate::Error::Closed) if the server is gone.
    ///
    /// # Cancel safety
    /// A dropped `wait` is withdrawn from the server and leaves the lock released, wherever
    /// it was (if it had taken the lock back, that is given back), as the crate's
    /// [`Condition`](crate::Condition) does. A drop after the notification arrived consumes
    /// that notification.
    pub async fn wait(&self) -> Result<()> {
        self.wait_with(Wait::Forever).await.map(drop)
    }

    /// [`wait`](Self::wait) for at most `timeout`: whether it was notified (Python's
    /// `wait(timeout)`). The lock is held again either way.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        self.wait_with(Wait::For(timeout)).await
    }

    /// Wakes up to `n` waiters (Python's `notify(n)`). The calling task must hold the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`](crate::Error::NotHeld) if the calling task does not hold the
    /// lock (Python's `RuntimeError`); [`Error::Closed`](crate::Error::Closed) if the server
    /// is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have notified.
    pub async fn notify(&self, n: usize) -> Result<()> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let r = self
            .0
            .call(Request::Condition(
                self.0.id,
                ConditionOp::Notify {
                    n,
                    owner: task_token(),
                },
            ))
            .await?;
        expect_done(r)
    }

    /// Wakes every waiter (Python's `notify_all()`). The calling task must hold the lock.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have notified.
    pub async fn notify_all(&self) -> Result<()> {
        let r = self
            .0
            .call(Request::Condition(
                self.0.id,
                ConditionOp::NotifyAll {
                    owner: task_token(),
                },
            ))
            .await?;
        expect_done(r)
    }
}
