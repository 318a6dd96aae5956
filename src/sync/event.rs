//! `Event`: a flag in shared memory and an eventfd that every waiter, in every process,
//! watches.
//!
//! One 32-bit word holds the flag (bit 0) and a count of sets (the other bits), so that both change
//! in one atomic step. `set` raises the flag, counts one more set, and writes the eventfd once:
//! every process waiting on it gets a readiness event, and every waiting task in it (each wait
//! notes the events taken when it begins, see `wake.rs`) wakes and sees the flag, or a set count
//! other than the one it started with. The count makes a `set` immediately followed by a `clear`
//! still release the waiters that were waiting when it happened, as `threading.Event` does. (Were
//! the flag and the count two words, a waiter could start between a `set`'s two stores, take
//! the stale count, and be released by the second store of a set that happened before it
//! began.)
//!
//! Waiters act on the eventfd's readiness events, never on its counter; `set` signals with
//! [`Wake::signal`], which keeps the counter near 0 (see there why `clear` must not).
//!
//! A second word holds the set count whose wake-up was written, stored after the write. A
//! setter killed between raising the flag and writing left every waiter asleep on a set
//! event for good: a later `set` found the flag up and did nothing, and only waits begun
//! after it saw the flag. Now a `set` of a set event writes the wake-up that the count says
//! is missing, and so does a wait that finds it set once [`LATE`](super::wake::LATE) has
//! passed since the set began (a third word holds when): sooner, its setter is most likely
//! still at its write, and a wake-up written for it would cost every wait that comes right
//! after a set (a ping-pong of two processes) a system call and a wake-up more (see
//! [`Owed`], which the `Barrier` shares).

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::shared_state::{Layout, SharedState};
use super::wake::Owed;
use super::{deadline, until};
use crate::awake;
use crate::error::{Error, Result};

/// The word: bit 0 the flag, bits 1.. the number of sets (wrapping).
const STATE: usize = 0;
/// The number of sets (as in the word, bits 1..) whose wake-up was last written.
const WOKEN: usize = 4;
/// When the last set began (see [`Owed`]).
const SET_AT: usize = 8;
const SIZE: usize = 64;
#[derive(Debug)]
struct EventLayout;

impl Layout for EventLayout {
    const WHAT: &'static str = "event";
    const SIZE: usize = SIZE;
}

type Inner = SharedState<EventLayout>;

/// An event flag between processes (Python's `multiprocessing.Event`).
///
/// `set` wakes every waiter in every process. Clones share the same event, and so does one
/// sent to another process (a serde type whose descriptors travel by `SCM_RIGHTS`). Its
/// `Debug` shows whether it is set (Python's `repr`, `<Event at ... set>`): `Event { set: true }`.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let e = tokio_multiprocessing::Event::new()?;
/// e.set();
/// e.wait().await?;
/// assert!(e.is_set());
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "super::arc")]
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new() -> Result<Event> {
        Ok(Event {
            inner: Arc::new(Inner::new()?),
        })
    }

    /// Whether the flag is set. No system call.
    pub fn is_set(&self) -> bool {
        self.state() & 1 != 0
    }

    fn state(&self) -> u32 {
        self.inner.region.u32_at(STATE).load(SeqCst)
    }

    /// Sets the flag and wakes every waiter in every process. Setting a set event does
    /// nothing (and makes no system call), unless the setter that set it died before it
    /// woke the waiters: then this one wakes them.
    pub fn set(&self) {
        self.owed().changing();
        if self.raise() {
            self.inner.recent.mark();
            self.owed().wake(&self.inner.wake, self.state() >> 1);
        } else {
            self.wake_if_missed(true);
        }
    }

    /// The wake-up the last set owes the waiters, marked by its count of sets.
    fn owed(&self) -> Owed<'_> {
        Owed {
            woken: self.inner.region.u32_at(WOKEN),
            changed_at: self.inner.region.u64_at(SET_AT),
        }
    }

    /// Raises the flag and counts a set; whether it was down.
    fn raise(&self) -> bool {
        self.inner
            .region
            .u32_at(STATE)
            .fetch_update(SeqCst, SeqCst, |s| {
                (s & 1 == 0).then(|| (s & !1).wrapping_add(2) | 1)
            })
            .is_ok()
    }

    /// With the flag up: writes the wake-up of the last set if its setter died before it
    /// did (no system call otherwise), as [`Owed::wake_if_missed`] says when.
    fn wake_if_missed(&self, at_once: bool) {
        let now = self.state();
        if now & 1 != 0 {
            self.owed()
                .wake_if_missed(&self.inner.wake, now >> 1, at_once);
        }
    }

    /// Raises the flag and stops short of waking anyone, as a setter killed before its write
    /// to the eventfd does. A test hook only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __raise_unwoken(&self) {
        self.owed().changing();
        self.raise();
    }

    /// Clears the flag: later waits wait for the next [`set`](Self::set).
    pub fn clear(&self) {
        self.inner.region.u32_at(STATE).fetch_and(!1, SeqCst);
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
        tokio::task::coop::consume_budget().await;
        let seen = self.state();
        if seen & 1 != 0 {
            self.wake_if_missed(false);
            return Ok(());
        }
        // Set now, or set (and maybe cleared again) since the wait began.
        let raised = || {
            let now = self.state();
            now & 1 != 0 || now >> 1 != seen >> 1
        };
        let sleep = async {
            let mut listener = self.inner.wake.listen()?;
            loop {
                if raised() {
                    return Ok(());
                }
                listener.notified().await?;
            }
        };
        let look = || Ok(raised().then_some(()));
        until(deadline, awake::wait(&self.inner.recent, look, sleep)).await
    }
}
