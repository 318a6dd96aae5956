//! Waking waiters in other processes: an eventfd per primitive, and a private registration of
//! it with tokio's reactor for each wait.
//!
//! # Why a registration per wait
//!
//! tokio's reactor is edge-triggered: a write to the eventfd is one readiness event for every
//! epoll that watches it. If all tasks of a process shared one registration, one task that
//! found nothing for itself would clear the shared readiness, and a second task, whose
//! condition *had* changed but which had not yet started waiting, would sleep through the
//! event. Each wait therefore registers a duplicate of the descriptor of its own
//! ([`Wake::listen`]), *before* it checks its condition: any change after the check comes with
//! an event on that registration, any change before it is seen by the check. No wake-up can be
//! lost.
//!
//! A registration costs a `dup` and an `epoll_ctl` to make and another `epoll_ctl` and a
//! `close` to drop, so a finished wait leaves its registration in a one-slot cache of the
//! handle, for the next wait in the same runtime (tokio's runtime id says which). A
//! registration in the cache stays registered, so it keeps receiving events while no one
//! waits; the next wait that takes it may wake once for nothing, re-check, and sleep again.
//! Waits that run at the same time as the cached one's user make registrations of their own.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::Result;
use crate::sys;

type Registration = AsyncFd<OwnedFd>;

/// The eventfd of a primitive.
#[derive(Debug)]
pub(crate) struct Wake {
    fd: OwnedFd,
    /// A registration a finished wait left behind, and the runtime it belongs to.
    cache: Mutex<Option<(tokio::runtime::Id, Registration)>>,
}

impl Wake {
    /// A new eventfd.
    pub(crate) fn new() -> Result<Wake> {
        Ok(Wake::from_fd(sys::eventfd(false)?))
    }

    /// Adopts an eventfd received from another process.
    pub(crate) fn from_fd(fd: OwnedFd) -> Wake {
        Wake {
            fd,
            cache: Mutex::new(None),
        }
    }

    /// The descriptor, to pass to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Adds `n` to the counter: every process watching it wakes.
    fn post(&self, n: u64) {
        if let Err(e) = sys::eventfd_add(self.fd.as_fd(), n) {
            // Only possible if the counter would overflow 2^64 - 2: waiters are awake anyway.
            tracing::debug!("eventfd write failed: {e}");
        }
    }

    /// Wakes every waiter of an eventfd used for its events only (not tokens): empties the
    /// counter, then adds 1.
    ///
    /// Emptying keeps the counter small; a counter left to grow made every later wake-up
    /// of a long ping-pong several times slower (measured: 7 µs round trips became 60-80 µs
    /// after a few thousand). It must happen here, right before the write: epoll re-checks
    /// readiness when it hands an event to `epoll_wait`, so a read of the counter between a
    /// write and a waiter's `epoll_wait` swallows that write's event. A read by `clear` or by
    /// a waiter could so lose a wake-up; a read right before our own write only swallows
    /// events that our write then delivers again, and every waiter re-checks the shared state
    /// after any wake-up.
    pub(crate) fn signal(&self) {
        let _ = sys::eventfd_take(self.fd.as_fd());
        self.post(1);
    }

    /// Registers a duplicate of the eventfd with the current runtime's reactor, for one wait.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn listen(&self) -> Result<Listener<'_>> {
        let runtime = tokio::runtime::Handle::current().id();
        let cached = self.cache.lock().ok().and_then(|mut c| c.take());
        let afd = match cached {
            Some((id, afd)) if id == runtime => afd,
            _ => {
                let dup = sys::dup_fd(self.fd.as_fd())?;
                sys::register_owned(dup, Interest::READABLE)?
            }
        };
        Ok(Listener {
            afd: Some(afd),
            runtime,
            home: self,
        })
    }
}

/// One wait's registration of a [`Wake`]; back to the handle's cache when dropped.
#[derive(Debug)]
pub(crate) struct Listener<'a> {
    afd: Option<Registration>,
    runtime: tokio::runtime::Id,
    home: &'a Wake,
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        if let (Some(afd), Ok(mut cache)) = (self.afd.take(), self.home.cache.lock()) {
            if cache.is_none() {
                *cache = Some((self.runtime, afd));
            }
        }
    }
}

impl Listener<'_> {
    fn afd(&self) -> Result<&Registration> {
        self.afd
            .as_ref()
            .ok_or_else(|| std::io::Error::other("listener used after drop").into())
    }

    /// Waits for the next event (or, the first time, for a counter that is already above 0).
    /// The caller re-checks its condition after each return.
    ///
    /// Cancel safe: nothing is consumed.
    pub(crate) async fn notified(&mut self) -> Result<()> {
        let mut g = self.afd()?.readable().await?;
        g.clear_ready();
        Ok(())
    }
}

/// A pidfd on the reactor: readable once the process has exited.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The process's owner word (see [`sys::cached_owner`]), or a bare pid.
    pub(crate) owner: u64,
    afd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches the process that `owner` names; `Ok(None)` if it has ended and been reaped.
    pub(crate) fn open(owner: u64) -> Result<Option<Watch>> {
        let Some(fd) = sys::owner_pidfd(owner)? else {
            return Ok(None);
        };
        Ok(Some(Watch {
            owner,
            afd: sys::register_owned(fd, Interest::READABLE)?,
        }))
    }

    /// Resolves once the process has exited.
    pub(crate) async fn exited(&self) -> Result<()> {
        let _g = self.afd.readable().await?;
        Ok(())
    }

    /// Whether the process has exited by now.
    pub(crate) fn has_exited(&self) -> Result<bool> {
        Ok(sys::readable_now(self.afd.get_ref().as_fd())?)
    }
}
