//! [`LockProxy`] and [`RLockProxy`]: locks held by a manager (Python's `manager.Lock()` and
//! `manager.RLock()`).
//!
//! # Owners
//! A plain lock is held by the connection that took it, and may be released by anyone (as
//! Python's `Lock` may); a condition made over it counts it as held while anyone holds it.
//! A re-entrant lock is owned by a *task* on a connection: the same task may take it again,
//! and only it may release it ([`Error::NotOwner`](crate::Error::NotOwner) otherwise), as
//! the crate's [`RLock`](crate::RLock). Clones of a proxy share one connection on each
//! runtime that calls them, and so do the proxies a process receives from others, one
//! link per server while any of them lives.
//!
//! # Owner death
//! When the connection of a holder closes (its process died, dropped every proxy of that
//! manager, or dropped the runtime it took the lock on), the server releases the lock, and
//! the next acquirer gets [`Error::LockOwnerDied`](crate::Error::LockOwnerDied) with the
//! holder's pid; the lock is free again and the acquire after that takes it. This is what
//! the crate's [`Lock`](crate::Lock) does when its holder dies. An acquire dropped as it was
//! being told (its withdrawal crossing the news on the wire) gives the news back, and the
//! next acquirer is told instead, unless the lock was taken in between.

use std::sync::Arc;

use tokio::sync::Notify;

use super::proto::{Failure, LockOp, Reply, Request, Wait};
use super::server::{Caller, Step};
use super::{Handle, expect_bool, expect_done};
use crate::error::Result;
use crate::sync::task_token;

#[derive(Debug, Clone, Copy)]
struct Holder {
    caller: Caller,
    owner: u64,
    count: u32,
    /// The number of this hold, from its first level to its release: what a give-back
    /// names (see [`LockOp::ReleaseLevels`]).
    hold: u64,
}

/// The server's side of a lock (and of a condition's lock).
pub(super) struct LockState {
    reentrant: bool,
    holder: Option<Holder>,
    /// The number of the last hold begun.
    holds: u64,
    /// The pid of a holder whose connection closed, until an acquirer has been told.
    abandoned: Option<u32>,
    /// The last such pid an acquirer was told of, with the number of holds begun then: an
    /// acquire withdrawn as it was told gives the news back (see [`LockOp::Retell`]).
    told: Option<(u32, u64)>,
    freed: Arc<Notify>,
}

impl LockState {
    pub(super) fn new(reentrant: bool) -> LockState {
        LockState {
            reentrant,
            holder: None,
            holds: 0,
            abandoned: None,
            told: None,
            freed: Arc::default(),
        }
    }

    pub(super) fn handle(&mut self, caller: Caller, op: LockOp) -> Reply {
        match op {
            LockOp::Release { owner } => match self.release(caller, owner) {
                Ok(()) => Reply::Done,
                Err(f) => Reply::Failed(f),
            },
            LockOp::ReleaseLevels {
                owner,
                levels,
                hold,
            } => match self.release_levels(caller, owner, levels, hold) {
                Ok(()) => Reply::Done,
                Err(f) => Reply::Failed(f),
            },
            LockOp::Holder => Reply::Len(self.holder.map_or(0, |h| u64::from(h.caller.pid))),
            LockOp::Retell { pid } => {
                self.retell(pid);
                Reply::Done
            }
            op @ LockOp::Acquire { .. } => match self.attempt(caller, &op, true) {
                Step::Done(r) => r,
                Step::Wait(_) => Reply::Failed(Failure::Timeout),
            },
        }
    }

    /// One try at `Acquire`; `timed_out` turns a wait into [`Failure::Timeout`].
    pub(super) fn attempt(&mut self, caller: Caller, op: &LockOp, timed_out: bool) -> Step {
        let LockOp::Acquire { owner, wait } = op else {
            return Step::Done(Reply::message("this lock request does not wait"));
        };
        if let Some(reply) = self.tell() {
            return Step::Done(reply);
        }
        match &mut self.holder {
            None => Step::Done(self.hold(caller, *owner, 1)),
            Some(h) if self.reentrant && h.caller.conn == caller.conn && h.owner == *owner => {
                h.count += 1;
                Step::Done(Reply::Held(h.hold))
            }
            Some(_) if timed_out => Step::Done(match wait {
                // `try_lock` answers `false`, a timed lock `Timeout`.
                Wait::No => Reply::Bool(false),
                _ => Reply::Failed(Failure::Timeout),
            }),
            Some(_) => Step::Wait(self.freed.clone()),
        }
    }

    /// Releases one level; a re-entrant lock only for its owner.
    pub(super) fn release(&mut self, caller: Caller, owner: u64) -> Result<(), Failure> {
        let Some(h) = &mut self.holder else {
            return Err(match self.reentrant {
                true => Failure::NotOwner,
                false => Failure::NotHeld,
            });
        };
        if self.reentrant {
            if h.caller.conn != caller.conn || h.owner != owner {
                return Err(Failure::NotOwner);
            }
            h.count -= 1;
            if h.count > 0 {
                return Ok(());
            }
        }
        self.holder = None;
        self.freed.notify_waiters();
        Ok(())
    }

    /// Releases the lock wholly if `owner` (a task of `caller`) holds it: a condition's wait.
    /// Returns the levels released.
    pub(super) fn release_all(&mut self, caller: Caller, owner: u64) -> Result<u32, Failure> {
        match self.holder {
            Some(h) if self.held_by(caller, owner) => {
                self.holder = None;
                self.freed.notify_waiters();
                Ok(h.count)
            }
            _ => Err(Failure::NotHeld),
        }
    }

    /// Begins a hold of `count` levels by `owner` (a task of `caller`) on a free lock,
    /// answering its number.
    fn hold(&mut self, caller: Caller, owner: u64, count: u32) -> Reply {
        self.holds += 1;
        self.holder = Some(Holder {
            caller,
            owner,
            count,
            hold: self.holds,
        });
        Reply::Held(self.holds)
    }

    /// Releases `levels` levels of hold number `hold`, if it is still the lock's (and, a
    /// re-entrant lock, `owner`'s, a task of `caller`); a plain lock wholly. What a
    /// withdrawn `acquire` or condition wait gives back: the levels it was granted, while
    /// those its task took since stay held, and a hold begun after its own ended (a plain
    /// lock released by another client, then taken) is left alone.
    fn release_levels(
        &mut self,
        caller: Caller,
        owner: u64,
        levels: u32,
        hold: u64,
    ) -> Result<(), Failure> {
        let ours = self.holder.is_some_and(|h| h.hold == hold);
        if !ours || !self.held_by(caller, owner) {
            return Err(Failure::NotHeld);
        }
        if let Some(h) = &mut self.holder
            && self.reentrant
            && h.count > levels
        {
            h.count -= levels;
            return Ok(());
        }
        self.holder = None;
        self.freed.notify_waiters();
        Ok(())
    }

    /// Whether `owner` on `caller`'s connection holds the lock. A plain lock, which anyone
    /// may release, counts as held by whoever asks while anyone holds it (Python's
    /// `Condition._is_owned` over a `Lock`).
    pub(super) fn held_by(&self, caller: Caller, owner: u64) -> bool {
        self.holder
            .is_some_and(|h| !self.reentrant || (h.caller.conn == caller.conn && h.owner == owner))
    }

    /// Takes the lock back at `count` levels after a condition's wait (answering the number
    /// of the hold it begins, [`Reply::Held`]), or names the wait to do first. A lock whose
    /// holder's connection closed is reported ([`Failure::LockOwnerDied`]) and left free, as
    /// to any acquirer.
    pub(super) fn retake(&mut self, caller: Caller, owner: u64, count: u32) -> Step {
        if self.holder.is_some() {
            return Step::Wait(self.freed.clone());
        }
        if let Some(reply) = self.tell() {
            return Step::Done(reply);
        }
        Step::Done(self.hold(caller, owner, count))
    }

    /// Tells an acquirer, if a holder's connection closed since the last was told.
    fn tell(&mut self) -> Option<Reply> {
        let pid = self.abandoned.take()?;
        self.told = Some((pid, self.holds));
        Some(Reply::Failed(Failure::LockOwnerDied { pid }))
    }

    /// An acquire that was told of `pid` was withdrawn, its client never to hear it: the
    /// next acquirer is told instead, unless the lock has been taken since (that taker was
    /// the one to tell, and the news is lost with the race).
    fn retell(&mut self, pid: u32) {
        if self.abandoned.is_none() && self.told == Some((pid, self.holds)) {
            self.abandoned = Some(pid);
            self.told = None;
        }
    }

    /// A connection closed: its hold, if any, ends, and the next acquirer is told.
    pub(super) fn abandon(&mut self, caller: Caller) {
        if self.holder.is_some_and(|h| h.caller.conn == caller.conn) {
            self.holder = None;
            self.abandoned = Some(caller.pid);
            self.freed.notify_waiters();
        }
    }
}

/// Requests on a lock, whether its own object or a condition's.
pub(super) trait LockOps {
    fn lock_request(&self, op: LockOp) -> Request;
    fn proxy(&self) -> &Handle<()>;
}

pub(super) async fn acquire(p: &impl LockOps, owner: u64, wait: Wait) -> Result<bool> {
    match p
        .proxy()
        .call(p.lock_request(LockOp::Acquire { owner, wait }))
        .await?
    {
        Reply::Held(_) => Ok(true),
        r => expect_bool(r),
    }
}

pub(super) async fn release(p: &impl LockOps, owner: u64) -> Result<()> {
    expect_done(
        p.proxy()
            .call(p.lock_request(LockOp::Release { owner }))
            .await?,
    )
}

macro_rules! lock_methods {
    ($owner:expr) => {
        /// Takes the lock, waiting while another holds it; it is held until
        /// [`release`](Self::release) (Python's `acquire()`).
        ///
        /// # Errors
        /// [`Error::LockOwnerDied`](crate::Error::LockOwnerDied) if the previous holder's
        /// connection closed while it held the lock (the lock is then free, and not held
        /// by this call); [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
        ///
        /// # Cancel safety
        /// Cancel safe: a dropped `lock` is withdrawn from the server, and a lock the server
        /// had already granted to it is released: only the hold granted to it, so that if
        /// that hold has ended meanwhile (a plain lock released by another), the lock is
        /// left as it is.
        pub async fn lock(&self) -> Result<()> {
            super::lock::acquire(self, $owner, Wait::Forever)
                .await
                .map(drop)
        }

        /// [`lock`](Self::lock), giving up after `timeout` with
        /// [`Error::Timeout`](crate::Error::Timeout). The time is kept by the server.
        ///
        /// # Errors
        /// As [`lock`](Self::lock), and [`Error::Timeout`](crate::Error::Timeout).
        ///
        /// # Cancel safety
        /// As [`lock`](Self::lock).
        pub async fn lock_timeout(&self, timeout: std::time::Duration) -> Result<()> {
            super::lock::acquire(self, $owner, Wait::For(timeout))
                .await
                .map(drop)
        }

        /// Takes the lock if it is free now: `Ok(true)` if taken (Python's
        /// `acquire(blocking=False)`).
        ///
        /// # Errors
        /// As [`lock`](Self::lock).
        ///
        /// # Cancel safety
        /// As [`lock`](Self::lock).
        pub async fn try_lock(&self) -> Result<bool> {
            super::lock::acquire(self, $owner, Wait::No).await
        }

        /// Releases the lock (Python's `release()`).
        ///
        /// # Errors
        /// [`Error::NotHeld`](crate::Error::NotHeld) if the lock is not held (a re-entrant
        /// lock: [`Error::NotOwner`](crate::Error::NotOwner) unless the calling task owns it);
        /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
        ///
        /// # Cancel safety
        /// Not cancel safe: a dropped call may or may not have released the lock.
        pub async fn release(&self) -> Result<()> {
            super::lock::release(self, $owner).await
        }
    };
}
pub(super) use lock_methods;

/// A lock held by a [`Manager`](crate::Manager) (Python's `manager.Lock()`): the methods and
/// errors of the crate's [`Lock`](crate::Lock), without a guard (release it with
/// [`release`](Self::release)). See the module notes on owner death: a holder whose
/// connection closes frees the lock, and the next acquirer gets
/// [`Error::LockOwnerDied`](crate::Error::LockOwnerDied).
pub struct LockProxy(pub(super) Handle<()>);
proxy_traits!(LockProxy);

/// A re-entrant lock held by a [`Manager`](crate::Manager) (Python's `manager.RLock()`),
/// owned by the task that took it: the methods and errors of the crate's
/// [`RLock`](crate::RLock).
pub struct RLockProxy(pub(super) Handle<()>);
proxy_traits!(RLockProxy);

/// A manager's lock that a condition can be made over, so that the two share it
/// ([`Manager::condition_with`](crate::Manager::condition_with), Python's
/// `manager.Condition(lock)`): a [`LockProxy`] or an [`RLockProxy`].
pub trait ConditionLock: super::SharedProxy {}
impl ConditionLock for LockProxy {}
impl ConditionLock for RLockProxy {}

impl LockOps for LockProxy {
    fn lock_request(&self, op: LockOp) -> Request {
        Request::Lock(self.0.id, op)
    }
    fn proxy(&self) -> &Handle<()> {
        &self.0
    }
}

impl LockOps for RLockProxy {
    fn lock_request(&self, op: LockOp) -> Request {
        Request::Lock(self.0.id, op)
    }
    fn proxy(&self) -> &Handle<()> {
        &self.0
    }
}

impl LockProxy {
    lock_methods!(0);

    /// The pid of the process holding the lock, if any.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn holder(&self) -> Result<Option<u32>> {
        holder(self).await
    }
}

impl RLockProxy {
    lock_methods!(task_token());

    /// The pid of the process holding the lock, if any.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn holder(&self) -> Result<Option<u32>> {
        holder(self).await
    }
}

async fn holder(p: &impl LockOps) -> Result<Option<u32>> {
    match p.proxy().call(p.lock_request(LockOp::Holder)).await? {
        Reply::Len(0) => Ok(None),
        Reply::Len(pid) => Ok(Some(pid as u32)),
        r => Err(super::unexpected(r)),
    }
}
