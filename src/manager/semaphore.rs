//! [`SemaphoreProxy`] and [`BoundedSemaphoreProxy`]: semaphores held by a manager (Python's
//! `manager.Semaphore()` and `manager.BoundedSemaphore()`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::proto::{Failure, Reply, Request, SemaphoreOp, Wait};
use super::server::Step;
use super::{Handle, expect_done, expect_len};
use crate::error::Result;

/// The server's side of a semaphore.
pub(super) struct SemaphoreState {
    value: u32,
    /// The initial value, for a bounded semaphore.
    bound: Option<u32>,
    released: Arc<Notify>,
}

impl SemaphoreState {
    pub(super) fn new(value: u32, bounded: bool) -> SemaphoreState {
        SemaphoreState {
            value,
            bound: bounded.then_some(value),
            released: Arc::default(),
        }
    }

    pub(super) fn handle(&mut self, op: SemaphoreOp) -> Reply {
        match op {
            SemaphoreOp::Value => Reply::Len(u64::from(self.value)),
            SemaphoreOp::Release(n) => {
                // Past its bound, or past `u32::MAX` for an unbounded one: an error, as the
                // crate's own `Semaphore` gives.
                let bound = self.bound.unwrap_or(u32::MAX);
                let Some(value) = self.value.checked_add(n).filter(|&v| v <= bound) else {
                    return Reply::Failed(Failure::SemaphoreOverRelease { bound });
                };
                self.value = value;
                self.released.notify_waiters();
                Reply::Done
            }
            SemaphoreOp::Acquire { .. } => Reply::message("this request waits"),
        }
    }

    pub(super) fn attempt(&mut self, op: &SemaphoreOp, timed_out: bool) -> Step {
        let SemaphoreOp::Acquire { wait } = op else {
            return Step::Done(Reply::message("this request does not wait"));
        };
        if self.value > 0 {
            self.value -= 1;
            return Step::Done(Reply::Bool(true));
        }
        match (timed_out, wait) {
            (true, Wait::No) => Step::Done(Reply::Bool(false)),
            (true, _) => Step::Done(Reply::Failed(Failure::Timeout)),
            (false, _) => Step::Wait(self.released.clone()),
        }
    }
}

macro_rules! semaphore_methods {
    () => {
        async fn acquire_with(&self, wait: Wait) -> Result<bool> {
            let r = self
                .0
                .call(Request::Semaphore(self.0.id, SemaphoreOp::Acquire { wait }))
                .await?;
            super::expect_bool(r)
        }

        /// Takes one unit, waiting while the value is 0 (Python's `acquire()`). Give it
        /// back with [`release`](Self::release).
        ///
        /// # Errors
        /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
        ///
        /// # Cancel safety
        /// Cancel safe: a dropped `acquire` is withdrawn from the server, and a unit the
        /// server had already granted to it is given back.
        pub async fn acquire(&self) -> Result<()> {
            self.acquire_with(Wait::Forever).await.map(drop)
        }

        /// [`acquire`](Self::acquire), giving up after `timeout` with
        /// [`Error::Timeout`](crate::Error::Timeout).
        ///
        /// # Errors
        /// As [`acquire`](Self::acquire), and [`Error::Timeout`](crate::Error::Timeout).
        ///
        /// # Cancel safety
        /// As [`acquire`](Self::acquire).
        pub async fn acquire_timeout(&self, timeout: Duration) -> Result<()> {
            self.acquire_with(Wait::For(timeout)).await.map(drop)
        }

        /// Takes one unit if the value is above 0 now: `Ok(true)` if taken.
        ///
        /// # Errors
        /// As [`acquire`](Self::acquire).
        ///
        /// # Cancel safety
        /// As [`acquire`](Self::acquire).
        pub async fn try_acquire(&self) -> Result<bool> {
            self.acquire_with(Wait::No).await
        }

        /// The current value (Python's `get_value()`).
        ///
        /// # Errors
        /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
        ///
        /// # Cancel safety
        /// Cancel safe: it changes nothing.
        pub async fn get_value(&self) -> Result<u32> {
            let r = self
                .0
                .call(Request::Semaphore(self.0.id, SemaphoreOp::Value))
                .await?;
            Ok(expect_len(r)? as u32)
        }
    };
}

/// A semaphore held by a [`Manager`](crate::Manager) (Python's `manager.Semaphore(value)`):
/// the methods and errors of the crate's [`Semaphore`](crate::Semaphore), without a guard.
pub struct SemaphoreProxy(pub(super) Handle<()>);
proxy_traits!(SemaphoreProxy);

/// A bounded semaphore held by a [`Manager`](crate::Manager) (Python's
/// `manager.BoundedSemaphore(value)`): releasing it above its initial value is an error.
pub struct BoundedSemaphoreProxy(pub(super) Handle<()>);
proxy_traits!(BoundedSemaphoreProxy);

impl SemaphoreProxy {
    semaphore_methods!();

    /// Gives one unit back, waking a waiter (Python's `release()`).
    ///
    /// # Errors
    /// [`Error::SemaphoreOverRelease`](crate::Error::SemaphoreOverRelease) if the value
    /// would pass `u32::MAX`, as the crate's own [`Semaphore`](crate::Semaphore) says;
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have released.
    pub async fn release(&self) -> Result<()> {
        self.release_n(1).await
    }

    /// Gives `n` units back (Python's `release(n)`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an `n` of 0 (Python's
    /// `ValueError`), as the crate's [`Semaphore::release_n`](crate::Semaphore::release_n);
    /// otherwise as [`release`](Self::release).
    ///
    /// # Cancel safety
    /// As [`release`](Self::release).
    pub async fn release_n(&self, n: u32) -> Result<()> {
        crate::sync::check_release_n(n)?;
        let r = self
            .0
            .call(Request::Semaphore(self.0.id, SemaphoreOp::Release(n)))
            .await?;
        expect_done(r)
    }
}

impl BoundedSemaphoreProxy {
    semaphore_methods!();

    /// Gives one unit back (Python's `release()`).
    ///
    /// # Errors
    /// [`Error::SemaphoreOverRelease`](crate::Error::SemaphoreOverRelease) if that would raise the
    /// value above its initial one; [`Error::ManagerLost`](crate::Error::ManagerLost) if the server
    /// is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have released.
    pub async fn release(&self) -> Result<()> {
        let r = self
            .0
            .call(Request::Semaphore(self.0.id, SemaphoreOp::Release(1)))
            .await?;
        expect_done(r)
    }
}
