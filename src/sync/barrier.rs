//! `Barrier`: one 64-bit word in shared memory holds the generation, the number of parties
//! that arrived, whether the barrier is broken, and whether the previous generation ended
//! broken; every change is a compare-and-swap. The last party to arrive starts the next
//! generation and writes the eventfd; everyone waiting wakes and sees the generation move.
//!
//! A waiter learns how its generation ended from the word itself when the generation moved
//! on by one (the usual case), or from a 64-entry ring of outcomes if it moved on further
//! before the waiter looked.
//!
//! A second word holds the generation and broken bit whose wake-up was last written, stored
//! after the write. A party killed between its change of the word (as the last to arrive,
//! or breaking the barrier) and its write left the waiters asleep for good, their generation
//! over; now `abort`, `reset` and every wait write a wake-up that the word says is missing
//! (a wait, only once [`LATE`](super::wake::LATE) has passed since the change began: sooner, its
//! maker is most likely still at its write, and parties in step would each pay a system
//! call and a wake-up more per generation). A third word holds when the change began.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::shared_state::{Layout, SharedState};
use super::wake::Owed;
use super::{deadline, until};
use crate::error::{Error, Result};
use crate::on_drop::OnDrop;
use crate::sys::SharedRegion;

const STATE: usize = 0;
const PARTIES: usize = 8;
/// The generation and broken bit (`State::woken_mark`) whose wake-up was last written.
const WOKEN: usize = 12;
const RING: usize = 16;
const RING_LEN: u32 = 64;
/// When the word's generation or broken bit last began to change (see [`Owed`]).
const CHANGED_AT: usize = RING + 4 * RING_LEN as usize;
const SIZE: usize = CHANGED_AT + 8;

const GEN_MASK: u32 = (1 << 31) - 1;

#[derive(Clone, Copy, PartialEq, Eq)]
struct State {
    generation: u32,
    prev_broken: bool,
    count: u32,
    broken: bool,
}

impl State {
    fn unpack(w: u64) -> State {
        State {
            generation: (w >> 33) as u32 & GEN_MASK,
            prev_broken: w & (1 << 32) != 0,
            count: ((w >> 1) & 0x7fff_ffff) as u32,
            broken: w & 1 != 0,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.generation & GEN_MASK) << 33)
            | (u64::from(self.prev_broken) << 32)
            | (u64::from(self.count & 0x7fff_ffff) << 1)
            | u64::from(self.broken)
    }

    /// What a wake-up written for this state marks in the `WOKEN` word: its generation and
    /// whether it is broken.
    fn woken_mark(self) -> u32 {
        (self.generation << 1) | u32::from(self.broken)
    }

    fn next(self, prev_broken: bool) -> State {
        State {
            generation: (self.generation + 1) & GEN_MASK,
            prev_broken,
            count: 0,
            broken: false,
        }
    }
}

#[derive(Debug)]
struct BarrierLayout;

impl Layout for BarrierLayout {
    const WHAT: &'static str = "barrier";
    const SIZE: usize = SIZE;

    fn check(region: &SharedRegion) -> std::result::Result<(), String> {
        match region.u32_at(PARTIES).load(SeqCst) {
            0 => Err("a barrier segment with 0 parties".into()),
            _ => Ok(()),
        }
    }
}

/// The state word, the party count and the ring of outcomes, and the eventfd.
type Inner = SharedState<BarrierLayout>;

impl Inner {
    fn word(&self) -> &AtomicU64 {
        self.region.u64_at(STATE)
    }

    fn load(&self) -> State {
        State::unpack(self.word().load(SeqCst))
    }

    fn cas(&self, old: State, new: State) -> bool {
        if new.woken_mark() != old.woken_mark() {
            self.owed().changing();
        }
        self.word()
            .compare_exchange(old.pack(), new.pack(), SeqCst, Relaxed)
            .is_ok()
    }

    /// The wake-up the word's last change owes the waiters, marked by `State::woken_mark`.
    fn owed(&self) -> Owed<'_> {
        Owed {
            woken: self.region.u32_at(WOKEN),
            changed_at: self.region.u64_at(CHANGED_AT),
        }
    }

    /// Wakes every waiter for the change to `now`, and notes it.
    fn signal(&self, now: State) {
        self.owed().wake(&self.wake, now.woken_mark());
    }

    /// Writes the wake-up of the last change of the word if its maker died before it did,
    /// as [`Owed::wake_if_missed`] says when.
    fn signal_if_missed(&self, at_once: bool) {
        self.owed()
            .wake_if_missed(&self.wake, self.load().woken_mark(), at_once);
    }

    fn record(&self, generation: u32, broken: bool) {
        self.region
            .u32_at(RING + 4 * (generation % RING_LEN) as usize)
            .store(u32::from(broken), SeqCst);
    }

    /// How generation `g` ended, once the word shows a later one.
    fn outcome(&self, now: State, g: u32, index: u32) -> Result<u32> {
        let broken = if now.generation == ((g + 1) & GEN_MASK) {
            now.prev_broken
        } else {
            self.region
                .u32_at(RING + 4 * (g % RING_LEN) as usize)
                .load(SeqCst)
                != 0
        };
        if broken {
            Err(Error::BrokenBarrier)
        } else {
            Ok(index)
        }
    }

    /// Breaks generation `g` (a timeout or a dropped wait); how it ended if it already had.
    fn break_generation(&self, g: u32, index: u32) -> Result<u32> {
        loop {
            let s = self.load();
            if s.generation != g {
                return self.outcome(s, g, index);
            }
            if s.broken {
                return Err(Error::BrokenBarrier);
            }
            let broken = State { broken: true, ..s };
            if self.cas(s, broken) {
                self.signal(broken);
                return Err(Error::BrokenBarrier);
            }
        }
    }
}

/// A barrier for a fixed number of parties, in any processes (Python's
/// `multiprocessing.Barrier`).
///
/// Each [`wait`](Self::wait) returns the party's arrival index, `0..parties`. A timeout, a
/// dropped wait or [`abort`](Self::abort) breaks the barrier: every waiter, and every later
/// `wait` until [`reset`](Self::reset), gets [`Error::BrokenBarrier`]. Python's `action`
/// callable has no counterpart: run it on the party that gets index 0.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let b = tokio_multiprocessing::Barrier::new(1)?;
/// assert_eq!(b.wait().await?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Barrier {
    #[serde(with = "super::arc")]
    inner: Arc<Inner>,
}

/// Shows its parties, how many wait and whether it is broken, as Python's `repr`
/// (`<Barrier at ...: waiters=N/P>`, or `broken`).
impl std::fmt::Debug for Barrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.broken())
            .finish()
    }
}

impl Barrier {
    /// A barrier for `parties` parties.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `parties` is 0 or above 2^31 - 1 (Python's
    /// `ValueError`); [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new(parties: u32) -> Result<Barrier> {
        if parties == 0 || parties > 0x7fff_ffff {
            return Err(Error::InvalidArgument(
                "a barrier needs 1 to 2^31 - 1 parties".into(),
            ));
        }
        let inner = Inner::new()?;
        inner.region.u32_at(PARTIES).store(parties, SeqCst);
        Ok(Barrier {
            inner: Arc::new(inner),
        })
    }

    /// Waits until all parties have called `wait`; returns this party's arrival index
    /// (`0` for the first, `parties - 1` for the last, which releases the others).
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`] if the barrier is or becomes broken (an abort, a reset, a
    /// timed-out or dropped wait); [`Error::Io`] if the wait cannot be registered.
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping a wait after it arrived breaks the barrier, as a timeout
    /// does (the other parties would otherwise wait for a party that left).
    pub async fn wait(&self) -> Result<u32> {
        self.wait_until(None).await
    }

    /// Like [`wait`](Self::wait), but breaks the barrier after `timeout` (Python's
    /// `wait(timeout)`).
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`], on timeout too; otherwise as [`wait`](Self::wait).
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        self.wait_until(deadline(timeout)).await
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> Result<u32> {
        tokio::task::coop::consume_budget().await;
        let inner = &*self.inner;
        inner.signal_if_missed(false);
        let parties = self.parties();
        let (g, index) = loop {
            let s = inner.load();
            if s.broken {
                return Err(Error::BrokenBarrier);
            }
            if s.count + 1 >= parties {
                let next = s.next(false);
                if inner.cas(s, next) {
                    inner.record(s.generation, false);
                    inner.signal(next);
                    return Ok(s.count);
                }
            } else if inner.cas(
                s,
                State {
                    count: s.count + 1,
                    ..s
                },
            ) {
                break (s.generation, s.count);
            }
        };
        // A wait dropped after its party arrived breaks the barrier.
        let leave = OnDrop::new(|| {
            let _ = inner.break_generation(g, 0);
        });
        let waited = until(deadline, async {
            let mut listener = inner.wake.listen()?;
            loop {
                let s = inner.load();
                if s.generation != g {
                    return inner.outcome(s, g, index);
                }
                if s.broken {
                    return Err(Error::BrokenBarrier);
                }
                listener.notified().await?;
            }
        })
        .await;
        leave.defuse();
        match waited {
            Err(Error::Timeout) => inner.break_generation(g, index),
            Err(e @ Error::Io(_)) => {
                let _ = inner.break_generation(g, index);
                Err(e)
            }
            other => other,
        }
    }

    /// Breaks the barrier: every waiter, and every `wait` until [`reset`](Self::reset), gets
    /// [`Error::BrokenBarrier`] (Python's `abort()`).
    pub fn abort(&self) {
        let inner = &*self.inner;
        loop {
            let s = inner.load();
            if s.broken {
                inner.signal_if_missed(true);
                return;
            }
            let broken = State { broken: true, ..s };
            if inner.cas(s, broken) {
                inner.signal(broken);
                return;
            }
        }
    }

    /// Arrives as the last party and stops short of waking the others, as a party killed
    /// before its write to the eventfd does. A test hook only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __arrive_last_unwoken(&self) {
        let inner = &*self.inner;
        loop {
            let s = inner.load();
            if inner.cas(s, s.next(false)) {
                inner.record(s.generation, false);
                return;
            }
        }
    }

    /// Returns the barrier to its empty, unbroken state; parties waiting now get
    /// [`Error::BrokenBarrier`] (Python's `reset()`).
    pub fn reset(&self) {
        let inner = &*self.inner;
        loop {
            let s = inner.load();
            let broke = s.broken || s.count > 0;
            let next = s.next(broke);
            if inner.cas(s, next) {
                inner.record(s.generation, broke);
                inner.signal(next);
                return;
            }
        }
    }

    /// The number of parties the barrier waits for.
    pub fn parties(&self) -> u32 {
        self.inner.region.u32_at(PARTIES).load(SeqCst)
    }

    /// How many parties wait now (Python's `n_waiting`).
    pub fn n_waiting(&self) -> u32 {
        let s = self.inner.load();
        if s.broken { 0 } else { s.count }
    }

    /// Whether the barrier is broken (Python's `broken`).
    pub fn broken(&self) -> bool {
        self.inner.load().broken
    }
}
