//! [`ConditionProxy`]: a condition variable held by a manager (Python's
//! `manager.Condition()`), over a lock of its own, or over one of the manager's locks that
//! it shares (Python's `manager.Condition(lock)`): every request on the condition's lock
//! then goes to that lock object, which keeps it while the condition lives.
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
use super::server::{Caller, Shared, State, Step, deadline, object, reply, wrong_type};
use super::{Handle, expect_done};
use crate::error::Result;
use crate::on_drop::OnDrop;
use crate::sync::task_token;

/// The server's side of a condition: its lock, the waiters in the order they came, each
/// with its connection and a number of its own, and the waiters notified whose waits have
/// not ended yet.
pub(super) struct ConditionState {
    lock: ConditionLock,
    waiters: VecDeque<(u64, u64, oneshot::Sender<()>)>,
    /// The connection and number of each waiter notified whose wait has not ended: should
    /// its connection end first, its client never hears of the notification, which goes on
    /// to the next waiter.
    woken: Vec<(u64, u64)>,
    /// The number the next waiter gets.
    next: u64,
}

/// A condition's lock: its own, or the lock object of this id, which it shares.
enum ConditionLock {
    Own(LockState),
    Over(u64),
}

impl ConditionState {
    pub(super) fn new(reentrant: bool) -> ConditionState {
        ConditionState {
            lock: ConditionLock::Own(LockState::new(reentrant)),
            waiters: VecDeque::new(),
            woken: Vec::new(),
            next: 0,
        }
    }

    /// A condition over the lock object `lock` (whose reference the caller counts).
    pub(super) fn over(lock: u64) -> ConditionState {
        ConditionState {
            lock: ConditionLock::Over(lock),
            waiters: VecDeque::new(),
            woken: Vec::new(),
            next: 0,
        }
    }

    /// The lock object this condition shares, if it has no lock of its own.
    pub(super) fn shared_lock(&self) -> Option<u64> {
        match self.lock {
            ConditionLock::Own(_) => None,
            ConditionLock::Over(id) => Some(id),
        }
    }

    /// Wakes up to `n` waiters still waiting (those that gave up do not count).
    fn notify(&mut self, mut n: usize) {
        while n > 0 {
            let Some((conn, number, w)) = self.waiters.pop_front() else {
                return;
            };
            if w.send(()).is_ok() {
                self.woken.push((conn, number));
                n -= 1;
            }
        }
    }

    /// Queues a waiter of connection `conn`; returns its number.
    fn enqueue(&mut self, conn: u64, tx: oneshot::Sender<()>) -> u64 {
        let number = self.next;
        self.next += 1;
        self.waiters.push_back((conn, number, tx));
        number
    }

    /// The wait of waiter `number` ended: `finished`, its reply on its way, or dropped
    /// before that (its request withdrawn, or its connection ended), in which case a
    /// notification spent on it goes on to the next waiter.
    fn ended(&mut self, number: u64, finished: bool) {
        let before = self.woken.len();
        self.woken.retain(|&(_, n)| n != number);
        if !finished && self.woken.len() < before {
            self.notify(1);
        }
    }

    /// A connection closed: its waits end, so that no notification is spent on them (their
    /// tasks, stopped, may not have let go of them yet), a notification spent on one of them
    /// whose wait had not ended goes on to the next waiter (its client never heard of it),
    /// and its hold of the condition's own lock, if any, ends. A shared lock is abandoned as
    /// the object it is.
    pub(super) fn abandon(&mut self, caller: Caller) {
        self.waiters.retain(|(conn, _, _)| *conn != caller.conn);
        let before = self.woken.len();
        self.woken.retain(|&(conn, _)| conn != caller.conn);
        self.notify(before - self.woken.len());
        if let ConditionLock::Own(l) = &mut self.lock {
            l.abandon(caller);
        }
    }
}

/// The lock of condition `id`: its own, or the lock object it shares.
pub(super) fn lock_of(state: &mut State, id: u64) -> Result<&mut LockState, Failure> {
    let shared = object!(state, id, Condition)?.shared_lock();
    match shared {
        Some(lock) => object!(state, lock, Lock),
        None => match &mut object!(state, id, Condition)?.lock {
            ConditionLock::Own(l) => Ok(l),
            // Not so: `shared_lock` said it has a lock of its own.
            ConditionLock::Over(_) => Err(wrong_type(id, "Condition with a lock of its own")),
        },
    }
}

/// Answers a request on condition `id` that never waits.
pub(super) fn handle(state: &mut State, caller: Caller, id: u64, op: ConditionOp) -> Reply {
    let (n, owner) = match op {
        ConditionOp::Lock(op) => return reply(lock_of(state, id).map(|l| l.handle(caller, op))),
        ConditionOp::Wait { .. } => return Reply::message("this request waits"),
        ConditionOp::Notify { n, owner } => (n as usize, owner),
        ConditionOp::NotifyAll { owner } => (usize::MAX, owner),
    };
    match lock_of(state, id) {
        Ok(l) if l.held_by(caller, owner) => {}
        // Python's `RuntimeError: cannot notify on un-acquired lock`.
        Ok(_) => return Reply::Failed(Failure::NotHeld),
        Err(f) => return Reply::Failed(f),
    }
    reply(object!(state, id, Condition).map(|c| {
        c.notify(n);
        Reply::Done
    }))
}

/// One try at taking condition `id`'s lock.
pub(super) fn attempt(
    state: &mut State,
    caller: Caller,
    id: u64,
    op: &ConditionOp,
    timed_out: bool,
) -> Step {
    let step = match op {
        ConditionOp::Lock(op) => lock_of(state, id).map(|l| l.attempt(caller, op, timed_out)),
        _ => Err(Failure::Message(
            "this request does not wait this way".into(),
        )),
    };
    step.unwrap_or_else(|f| Step::Done(Reply::Failed(f)))
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
    let (levels, number) = {
        let mut state = shared.state();
        let levels = match lock_of(&mut state, id).and_then(|l| l.release_all(caller, owner)) {
            Ok(levels) => levels,
            Err(f) => return Reply::Failed(f),
        };
        let number = match object!(state, id, Condition) {
            Ok(c) => c.enqueue(caller.conn, tx),
            Err(f) => return Reply::Failed(f),
        };
        (levels, number)
    };
    // However the wait ends, the condition is told (see [`ConditionState::ended`]).
    let end = move |finished: bool| {
        if let Ok(c) = object!(shared.state(), id, Condition) {
            c.ended(number, finished);
        }
    };
    let unfinished = OnDrop::new(move || end(false));
    let notified = match deadline(wait) {
        None => rx.await.is_ok(),
        Some(d) => matches!(tokio::time::timeout_at(d, rx).await, Ok(Ok(()))),
    };
    let retaken = shared
        .wait_on(None, |state, _| match lock_of(state, id) {
            Ok(l) => l.retake(caller, owner, levels),
            Err(f) => Step::Done(Reply::Failed(f)),
        })
        .await;
    unfinished.defuse();
    end(true);
    match retaken {
        Reply::Held(hold) => Reply::Waited {
            notified,
            levels,
            hold,
        },
        r => r,
    }
}

/// A condition variable held by a [`Manager`](crate::Manager) (Python's
/// `manager.Condition()`), over a re-entrant lock of its own owned by the task that takes
/// it: `lock`/`release` as [`RLockProxy`](crate::RLockProxy), `wait`, `notify` and
/// `notify_all` as the crate's [`Condition`](crate::Condition).
///
/// Made by [`Manager::condition_with`](crate::Manager::condition_with), it is over a lock
/// of the manager instead, which it shares: `lock`/`release` take and give back that lock,
/// with its rules (a plain lock is taken by a connection and may be released by anyone; a
/// re-entrant one is owned by a task on a connection).
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
        match r {
            Reply::Waited { notified, .. } => Ok(notified),
            r => Err(super::unexpected(r)),
        }
    }

    /// Releases the lock, waits for a [`notify`](Self::notify), and takes the lock back
    /// (Python's `wait()`). The calling task must hold the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`](crate::Error::NotHeld) if the calling task does not hold the
    /// lock; [`Error::LockOwnerDied`](crate::Error::LockOwnerDied) if taking the lock back
    /// found that its holder's connection had closed while it held it (the lock is then
    /// free, and not held by this call), as the crate's [`Condition`](crate::Condition);
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// A dropped `wait` is withdrawn from the server and leaves the lock released, wherever
    /// it was (if it had taken the lock back, that is given back: the levels it took back,
    /// so a lock its task takes again after the drop stays held, and nothing if that hold
    /// has ended, as a plain lock released by another client), as the crate's
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

    /// Waits until `predicate` holds, checking it with the lock held before each
    /// [`wait`](Self::wait) (Python's `wait_for(predicate, timeout)`); with a `timeout`,
    /// gives up once it has passed. Returns the predicate's last value. The calling task must
    /// hold the lock, and holds it again when this returns.
    ///
    /// The predicate is async, so that it may read the manager's other objects (a
    /// [`ValueProxy`](crate::ValueProxy) another process changes before it notifies, say).
    ///
    /// # Errors
    /// As [`wait`](Self::wait), and the predicate's own error, which ends the call (the
    /// lock still held).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait) if dropped in a wait, which leaves the lock released; a drop
    /// while the predicate runs leaves the lock held, as it was when the call began.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing::{ConditionProxy, Manager, Process, Result, ValueProxy};
    ///
    /// /// Sets the value to 4 and notifies, holding the lock.
    /// async fn reach(cond: ConditionProxy, state: ValueProxy<i32>) -> Result<()> {
    ///     cond.lock().await?;
    ///     state.set(4).await?;
    ///     cond.notify_all().await?;
    ///     cond.release().await
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<()> {
    /// let m = Manager::start().await?;
    /// let cond = m.condition().await?;
    /// let state = m.value(0i32).await?;
    /// cond.lock().await?;
    /// let mut p = Process::new(reach, (cond.clone(), state.clone())).start().await?;
    /// let state = &state;
    /// let reached = cond.wait_for(|| async move { Ok(state.get().await? == 4) }, None).await?;
    /// assert!(reached);
    /// cond.release().await?;
    /// assert_eq!(p.join().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn wait_for<F, Fut>(
        &self,
        mut predicate: F,
        timeout: Option<Duration>,
    ) -> Result<bool>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        // A timeout too long to represent is none.
        let end = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        loop {
            if predicate().await? {
                return Ok(true);
            }
            let wait = match end {
                None => Wait::Forever,
                Some(end) => match end.saturating_duration_since(tokio::time::Instant::now()) {
                    left if left.is_zero() => return Ok(false),
                    left => Wait::For(left),
                },
            };
            self.wait_with(wait).await?;
        }
    }

    /// Wakes up to `n` waiters (Python's `notify(n)`). The calling task must hold the lock.
    ///
    /// # Errors
    /// [`Error::NotHeld`](crate::Error::NotHeld) if the calling task does not hold the lock
    /// (Python's `RuntimeError`); [`Error::ManagerLost`](crate::Error::ManagerLost) if the server
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
