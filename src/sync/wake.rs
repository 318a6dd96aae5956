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
//! lost, at the price of a `dup` and two `epoll_ctl` calls per wait that actually sleeps (the
//! uncontended paths never get here).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::Result;
use crate::sys;

/// The eventfd of a primitive.
#[derive(Debug)]
pub(crate) struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new eventfd; `semaphore` for token counting (each waiter takes one token).
    pub(crate) fn new(semaphore: bool) -> Result<Wake> {
        Ok(Wake {
            fd: sys::eventfd(semaphore)?,
        })
    }

    /// Adopts an eventfd received from another process.
    pub(crate) fn from_fd(fd: OwnedFd) -> Wake {
        Wake { fd }
    }

    /// The descriptor, to pass to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Posts `n` (tokens, or just an event): every process watching it wakes.
    pub(crate) fn post(&self, n: u64) {
        if let Err(e) = sys::eventfd_add(self.fd.as_fd(), n) {
            // Only possible if the counter would overflow 2^64 - 2: waiters are awake anyway.
            tracing::debug!("eventfd write failed: {e}");
        }
    }

    /// Takes what the counter holds, if anything (a token in semaphore mode).
    pub(crate) fn drain(&self) {
        let _ = sys::eventfd_take(self.fd.as_fd());
    }

    /// Registers a duplicate of the eventfd with the current runtime's reactor, for one wait.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn listen(&self) -> Result<Listener> {
        let dup = sys::dup_fd(self.fd.as_fd())?;
        Ok(Listener {
            afd: sys::register_owned(dup, Interest::READABLE)?,
        })
    }
}

/// One wait's registration of a [`Wake`].
#[derive(Debug)]
pub(crate) struct Listener {
    afd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// Waits for the next event (or, the first time, for a counter that is already above 0).
    /// The caller re-checks its condition after each return.
    ///
    /// Cancel safe: nothing is consumed.
    pub(crate) async fn notified(&mut self) -> Result<()> {
        let mut g = self.afd.readable().await?;
        g.clear_ready();
        Ok(())
    }

    /// Waits until it has taken one token off a semaphore-mode eventfd.
    ///
    /// Cancel safe: a token is taken only in the poll that returns `Ready`.
    pub(crate) async fn take_token(&mut self) -> Result<()> {
        loop {
            let mut g = self.afd.readable().await?;
            match g.try_io(|fd| sys::eventfd_take(fd.get_ref().as_fd())) {
                Ok(r) => return r.map(drop).map_err(Into::into),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A pidfd on the reactor: readable once the process has exited.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(crate) pid: u32,
    afd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches `pid`; `Ok(None)` if there is no such process any more.
    pub(crate) fn open(pid: u32) -> Result<Option<Watch>> {
        let Ok(raw) = i32::try_from(pid) else {
            return Ok(None);
        };
        match sys::pidfd_open(raw) {
            Ok(fd) => Ok(Some(Watch {
                pid,
                afd: sys::register_owned(fd, Interest::READABLE)?,
            })),
            Err(e) if e.raw_os_error() == Some(sys::ESRCH) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Resolves once the process has exited.
    pub(crate) async fn exited(&self) -> Result<()> {
        let _g = self.afd.readable().await?;
        Ok(())
    }
}
