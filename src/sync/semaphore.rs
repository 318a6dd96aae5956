//! `Semaphore` and `BoundedSemaphore`: a counter in shared memory, and an eventfd that a
//! release writes when some waiter sleeps: every sleeper wakes and tries the counter again.
//!
//! Events, not tokens: a token per unit, read by one sleeper each, outlived the waits it
//! was written for and piled up until the next sleeper read them all at full CPU (see
//! "Thundering herds" in the module docs of `sync`).

use std::sync::Arc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use super::shared_state::{Layout, SharedState, received_as};
use super::wake::Sleepers;
use super::{SPIN, deadline, until};
use crate::error::{Error, Result};

/// Offsets: the value, the bound plus one (a 64-bit word; 0: unbounded, so that a bound of 0,
/// and one of `u32::MAX`, can be told from none), and the sleepers' counters ([`Sleepers`]).
const VALUE: usize = 0;
const BOUND: usize = 8;
const RAISED: usize = 16;
const WOKEN: usize = 24;
const SIZE: usize = 64;

#[derive(Debug)]
struct SemaphoreLayout;

impl Layout for SemaphoreLayout {
    const WHAT: &'static str = "semaphore";
    const SIZE: usize = SIZE;
}

/// The counter (and bound) and the eventfd that wakes sleepers.
type RawSemaphore = SharedState<SemaphoreLayout>;

impl RawSemaphore {
    /// A semaphore of `value`, bounded by `bound` if given.
    fn with_value(value: u32, bound: Option<u32>) -> Result<RawSemaphore> {
        let raw = RawSemaphore::new()?;
        raw.region.u32_at(VALUE).store(value, SeqCst);
        let stored = bound.map_or(0, |b| u64::from(b) + 1);
        raw.region.u64_at(BOUND).store(stored, SeqCst);
        Ok(raw)
    }

    /// The bound, if the semaphore is a bounded one.
    fn bound(&self) -> Option<u32> {
        let stored = self.region.u64_at(BOUND).load(Relaxed).checked_sub(1)?;
        Some(u32::try_from(stored).unwrap_or(u32::MAX))
    }

    fn try_take(&self) -> bool {
        let v = self.region.u32_at(VALUE);
        let mut cur = v.load(SeqCst);
        while cur > 0 {
            match v.compare_exchange_weak(cur, cur - 1, SeqCst, Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    async fn acquire(&self, deadline: Option<Instant>) -> Result<()> {
        tokio::task::coop::consume_budget().await;
        for _ in 0..SPIN {
            if self.try_take() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        until(deadline, self.acquire_slow()).await
    }

    async fn acquire_slow(&self) -> Result<()> {
        let mut listener = self.wake.listen()?;
        loop {
            self.sleepers().raise();
            if self.try_take() {
                return Ok(());
            }
            listener.notified().await?;
        }
    }

    fn release(&self, n: u32) -> Result<()> {
        self.add(n)?;
        let sleepers = self.sleepers();
        if let Some(raised) = sleepers.due() {
            self.wake.signal();
            sleepers.woke(raised);
        }
        Ok(())
    }

    /// Adds `n` units, within the bound.
    fn add(&self, n: u32) -> Result<()> {
        let v = self.region.u32_at(VALUE);
        let bound = self.bound();
        let mut cur = v.load(SeqCst);
        loop {
            let next = cur.checked_add(n).filter(|&x| bound.is_none_or(|b| x <= b));
            let Some(next) = next else {
                return Err(Error::SemaphoreOverRelease {
                    bound: bound.unwrap_or(u32::MAX),
                });
            };
            match v.compare_exchange_weak(cur, next, SeqCst, Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        Ok(())
    }

    fn sleepers(&self) -> Sleepers<'_> {
        Sleepers {
            raised: self.region.u64_at(RAISED),
            woken: self.region.u64_at(WOKEN),
        }
    }
}

macro_rules! semaphore_methods {
    () => {
        /// Takes one unit, waiting while the value is 0, and returns a guard that gives it
        /// back when dropped. For Python's bare `acquire()`, whose unit some later
        /// `release()` gives back, [`forget`](SemaphoreGuard::forget) the guard.
        ///
        /// # Errors
        /// [`Error::Io`] if the wait cannot be registered with the reactor.
        ///
        /// # Panics
        /// When it has to sleep outside a tokio runtime.
        ///
        /// # Cancel safety
        /// This method is cancel safe: if it loses a `select!` race, no unit was taken.
        pub async fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
            self.raw.acquire(None).await?;
            Ok(SemaphoreGuard { raw: &self.raw })
        }

        /// Like [`acquire`](Self::acquire), but gives up after `timeout` (Python's
        /// `acquire(timeout=...)`).
        ///
        /// # Errors
        /// [`Error::Timeout`] when the time runs out; otherwise as `acquire`.
        ///
        /// # Panics
        /// When it has to sleep outside a tokio runtime.
        ///
        /// # Cancel safety
        /// This method is cancel safe, like `acquire`.
        pub async fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
            self.raw.acquire(deadline(timeout)).await?;
            Ok(SemaphoreGuard { raw: &self.raw })
        }

        /// Takes one unit if the value is above 0 (Python's `acquire(block=False)`); `None`
        /// if it is 0. Makes no system call.
        pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
            // `then`, not `then_some`: a guard made for nothing would add a unit when dropped.
            self.raw
                .try_take()
                .then(|| SemaphoreGuard { raw: &self.raw })
        }

        /// The current value (Python's `get_value()`).
        pub fn get_value(&self) -> u32 {
            self.raw.region.u32_at(VALUE).load(SeqCst)
        }
    };
}

/// Holds one unit of a [`Semaphore`] or [`BoundedSemaphore`]; dropping it gives the unit
/// back (a `release()`, waking a waiter if there is one).
#[must_use = "the unit is given back as soon as the guard is dropped"]
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    raw: &'a RawSemaphore,
}

impl SemaphoreGuard<'_> {
    /// Keeps the unit without a guard (Python's bare `acquire()`); a later `release()` gives
    /// it back.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // Within the bound, since this unit was taken from the value, unless a stray
        // `release()` gave back one that never was; a drop cannot report that error.
        let _ = self.raw.release(1);
    }
}

/// A counting semaphore between processes (Python's `multiprocessing.Semaphore`).
///
/// Clones share the same semaphore, and so does one sent to another process (a serde type
/// whose descriptors travel by `SCM_RIGHTS`).
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let s = tokio_multiprocessing::Semaphore::new(2)?;
/// {
///     let _unit = s.acquire().await?; // given back at the end of the block
/// }
/// s.acquire().await?.forget(); // Python's bare acquire() ...
/// s.release()?; // ... and release()
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize)]
pub struct Semaphore {
    #[serde(with = "super::arc")]
    raw: Arc<RawSemaphore>,
}

impl<'de> Deserialize<'de> for Semaphore {
    /// Refuses a [`BoundedSemaphore`]'s segment.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = received_as(d, "a semaphore", |raw: &RawSemaphore| {
            raw.bound().map(|_| "a bounded semaphore")
        })?;
        Ok(Semaphore { raw })
    }
}

/// Shows its value, as Python's `repr` (`<Semaphore(value=N)>`): `Semaphore { value: N }`.
impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.get_value())
            .finish()
    }
}

/// [`Error::InvalidArgument`] for a release of no unit (Python's `release(0)` is a
/// `ValueError`), for every semaphore's `release_n`, the manager's too.
pub(crate) fn check_release_n(n: u32) -> Result<()> {
    match n {
        0 => Err(Error::InvalidArgument(
            "a semaphore's release_n needs an n of one or more".into(),
        )),
        _ => Ok(()),
    }
}

impl Semaphore {
    /// A semaphore with the value `value`.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new(value: u32) -> Result<Semaphore> {
        Ok(Semaphore {
            raw: Arc::new(RawSemaphore::with_value(value, None)?),
        })
    }

    semaphore_methods!();

    /// Adds one unit, waking a waiter if there is one (Python's `release()`).
    ///
    /// # Errors
    /// [`Error::SemaphoreOverRelease`] if the value would pass `u32::MAX`.
    pub fn release(&self) -> Result<()> {
        self.raw.release(1)
    }

    /// Adds `n` units at once (Python's `release(n)` of `threading.Semaphore`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an `n` of 0 (Python's `ValueError: n must be one or
    /// more`); otherwise as [`release`](Self::release).
    pub fn release_n(&self, n: u32) -> Result<()> {
        check_release_n(n)?;
        self.raw.release(n)
    }

    /// Adds a unit and stops short of waking anyone, as a releaser killed before its write to
    /// the eventfd does. A test hook only (feature `test-hooks`).
    ///
    /// # Errors
    /// As [`release`](Self::release).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __release_unwoken(&self) -> Result<()> {
        self.raw.add(1)?;
        let _ = self.raw.sleepers().due();
        Ok(())
    }
}

/// A semaphore whose value may not exceed its initial value (Python's
/// `multiprocessing.BoundedSemaphore`): one release too many is an error, not a silent
/// extra unit.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let s = tokio_multiprocessing::BoundedSemaphore::new(1)?;
/// assert!(s.release().is_err()); // already at its bound
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize)]
pub struct BoundedSemaphore {
    #[serde(with = "super::arc")]
    raw: Arc<RawSemaphore>,
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    /// Refuses a [`Semaphore`]'s segment.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = received_as(d, "a bounded semaphore", |raw: &RawSemaphore| {
            raw.bound().is_none().then_some("a semaphore")
        })?;
        Ok(BoundedSemaphore { raw })
    }
}

/// Shows its value and bound, as Python's `repr` (`<BoundedSemaphore(value=N, maxvalue=M)>`):
/// `BoundedSemaphore { value: N, bound: M }`.
impl std::fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bound = self.raw.bound().unwrap_or(u32::MAX);
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.get_value())
            .field("bound", &bound)
            .finish()
    }
}

impl BoundedSemaphore {
    /// A bounded semaphore with the value and bound `value` (0 included, as Python's
    /// `BoundedSemaphore(0)`: it can be neither acquired nor released).
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            raw: Arc::new(RawSemaphore::with_value(value, Some(value))?),
        })
    }

    semaphore_methods!();

    /// Adds one unit, waking a waiter if there is one.
    ///
    /// # Errors
    /// [`Error::SemaphoreOverRelease`] if the value is already at its bound (Python's
    /// `ValueError`); the value is left as it was.
    pub fn release(&self) -> Result<()> {
        self.raw.release(1)
    }
}
