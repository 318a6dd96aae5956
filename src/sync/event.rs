//! `Event`: a flag in shared memory and an eventfd that every waiter, in every process,
//! watches.
//!
//! `set` raises the flag, counts one more set, and writes the eventfd once: every process
//! waiting on it gets a readiness event, and every waiting task in it (each wait has its own
//! registration) wakes and sees the flag, or a set count other than the one it started with.
//! The count makes a `set` immediately followed by a `clear` still release the waiters that
//! were waiting when it happened, as `threading.Event` does. `clear` drains the eventfd.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::time::Instant;

use super::wake::Wake;
use super::{FdRef, deadline, map_received, until};
use crate::error::{Error, Result};
use crate::sys::SharedRegion;
use crate::wire::PassFd;

const FLAG: usize = 0;
const SETS: usize = 4;
const SIZE: usize = 64;

#[derive(Debug)]
struct Inner {
    region: SharedRegion,
    wake: Wake,
}

/// An event flag between processes (Python's `multiprocessing.Event`).
///
/// `set` wakes every waiter in every process. Clones share the same event, and so does one
/// sent to another process (a serde type whose descriptors travel by `SCM_RIGHTS`).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> tokio_multiprocessing::Result<()> {
/// let e = tokio_multiprocessing::Event::new()?;
/// e.set();
/// e.wait().await?;
/// assert!(e.is_set());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Event {
    inner: Arc<Inner>,
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new() -> Result<Event> {
        Ok(Event {
            inner: Arc::new(Inner {
                region: SharedRegion::anonymous("tokio-multiprocessing-event", SIZE)?,
                wake: Wake::new(false)?,
            }),
        })
    }

    /// Whether the flag is set. No system call.
    pub fn is_set(&self) -> bool {
        self.inner.region.u32_at(FLAG).load(SeqCst) != 0
    }

    /// Sets the flag and wakes every waiter in every process. Setting a set event does
    /// nothing (and makes no system call).
    pub fn set(&self) {
        if self.inner.region.u32_at(FLAG).swap(1, SeqCst) == 0 {
            self.inner.region.u32_at(SETS).fetch_add(1, SeqCst);
            self.inner.wake.post(1);
        }
    }

    /// Clears the flag: later waits wait for the next [`set`](Self::set).
    pub fn clear(&self) {
        if self.inner.region.u32_at(FLAG).swap(0, SeqCst) != 0 {
            self.inner.wake.drain();
        }
    }

    /// Waits until the flag is set (at once if it is).
    ///
    /// # Errors
    /// [`Error::Io`] if the wait cannot be registered with the reactor.
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: waiting consumes nothing.
    pub async fn wait(&self) -> Result<()> {
        self.wait_until(None).await
    }

    /// Waits at most `timeout`; returns whether the flag was set (Python's
    /// `wait(timeout)`, which returns `False` on timeout rather than raising).
    ///
    /// # Errors
    /// As [`wait`](Self::wait); a timeout is `Ok(false)`, not an error.
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe, like [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        match self.wait_until(deadline(timeout)).await {
            Ok(()) => Ok(true),
            Err(Error::Timeout) => Ok(self.is_set()),
            Err(e) => Err(e),
        }
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> Result<()> {
        let sets = self.inner.region.u32_at(SETS);
        let seen = sets.load(SeqCst);
        if self.is_set() {
            return Ok(());
        }
        until(deadline, async {
            let mut listener = self.inner.wake.listen()?;
            loop {
                if self.is_set() || sets.load(SeqCst) != seen {
                    return Ok(());
                }
                listener.notified().await?;
            }
        })
        .await
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (FdRef(self.inner.region.fd()), FdRef(self.inner.wake.fd())).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (region, wake) = <(PassFd, PassFd)>::deserialize(d)?;
        Ok(Event {
            inner: Arc::new(Inner {
                region: map_received(region, SIZE, "event")?,
                wake: Wake::from_fd(wake.0),
            }),
        })
    }
}
