//! Waiting awake for what is due shortly.
//!
//! A process that sleeps until input arrives pays a wake-up when it comes: on a virtual
//! machine an idle vCPU takes tens of microseconds to wake, longer than a small message takes
//! to cross between processes. So a wait that begins within [`SPIN`] of its endpoint's last
//! message (the answer to what it just sent is likely on its way) first looks for its input
//! for up to [`SPIN`], and sleeps on the reactor only after. It does so only while a core is
//! spare ([`sys::core_spare`]), so a spinning process takes no time from one at work, and
//! never on a single core. An idle program spins once, at most [`SPIN`] after its last
//! message, then sleeps: it uses no CPU.
//!
//! A spinning wait looks again at once, and lets the runtime's other tasks run only every
//! [`HOLD`]: a yield to the runtime costs more than the answer takes to come (on a
//! multi-thread runtime each one wakes another worker thread to look for work, on a
//! current-thread one it polls the reactor), and a wait that yielded between looks took
//! twice as long as one that did not (a manager call from a multi-thread runtime: 27 µs
//! against 9 to 13 µs here). But a peer on the waiter's own thread (a manager served in
//! this process to a client on the same runtime) cannot answer while the wait holds it:
//! an endpoint whose input comes only after yields, or not at all, twice in a row, spins
//! yielding between every two looks, and holds its thread again only once a probe (one
//! spin in [`PROBE_EVERY`]) finds its input while holding.
//!
//! The pool's processes follow the same rule with their own bookkeeping
//! ([`PoolBuilder::spin`](crate::PoolBuilder::spin)).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::Result;
use crate::on_drop::OnDrop;
use crate::sys;

/// The longest a wait spins before it sleeps, and how soon after an endpoint's last message
/// a wait may spin at all.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// The longest a spinning wait holds its thread before it yields to the runtime's other
/// tasks.
pub(crate) const HOLD: Duration = Duration::from_micros(25);

/// Whether a wait of this process is spinning now.
static SPINNING: AtomicBool = AtomicBool::new(false);

/// A spin's input came only while the runtime ran its other tasks, or never, this many
/// times in a row before the endpoint's waits stop holding their thread (see
/// [`Recent::hold_nanos`]).
const PEER_HERE_AFTER: u32 = 2;

/// One spin in this many holds its thread all the same, so that an endpoint whose peer has
/// moved to another thread or process is found out.
const PROBE_EVERY: u32 = 32;

/// When an endpoint last moved a message: whether a wait on it may spin, and how.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// [`sys::monotonic_nanos`] at the last message (0: none yet).
    at: AtomicU64,
    /// Spins in a row whose input came right after a yield, while the runtime ran other
    /// tasks, or did not come at all: a sign that the peer runs on this thread (a server and
    /// its client on one runtime, say), where a spin that holds the thread only keeps it
    /// from answering.
    after_yield: AtomicU32,
    /// Spins so far, for [`PROBE_EVERY`].
    spins: AtomicU32,
}

/// Where in a spin its input was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// At the first look: it says nothing of where the peer runs.
    First,
    /// While the spin held its thread: the peer runs elsewhere.
    Held,
    /// Right after a yield to the runtime.
    AfterYield,
    /// Not at all: the spin ran out.
    Nothing,
}

impl Recent {
    /// Notes that the endpoint moved a message now.
    pub(crate) fn mark(&self) {
        self.at.store(sys::monotonic_nanos(), Ordering::Relaxed);
    }

    /// How long a spin on this endpoint holds its thread between yields: [`HOLD`], or 0
    /// (a yield between every two looks) while its input keeps coming only when the runtime
    /// runs other tasks, but for one spin in [`PROBE_EVERY`].
    fn hold_nanos(&self) -> u64 {
        let n = self.spins.fetch_add(1, Ordering::Relaxed);
        let here = self.after_yield.load(Ordering::Relaxed) >= PEER_HERE_AFTER;
        if here && !n.is_multiple_of(PROBE_EVERY) {
            0
        } else {
            HOLD.as_nanos() as u64
        }
    }

    /// Notes where a spin found its input.
    fn found(&self, found: Found) {
        match found {
            Found::First => {}
            Found::Held => self.after_yield.store(0, Ordering::Relaxed),
            Found::AfterYield | Found::Nothing => {
                let n = self.after_yield.load(Ordering::Relaxed);
                self.after_yield
                    .store(n.saturating_add(1).min(PEER_HERE_AFTER), Ordering::Relaxed);
            }
        }
    }

    /// Whether a wait beginning now may spin: the last message was within [`SPIN`], and a
    /// core is spare.
    fn may_spin(&self) -> bool {
        let at = self.at.load(Ordering::Relaxed);
        at != 0
            && sys::monotonic_nanos().saturating_sub(at) < SPIN.as_nanos() as u64
            && sys::core_spare()
    }
}

/// Waits for what `look` finds: awake with [`spin`] first, if `recent` allows, then asleep
/// in `sleep`.
///
/// # Cancel safety
/// Cancel safe if `look` and `sleep` are.
pub(crate) async fn wait<T>(
    recent: &Recent,
    look: impl FnMut() -> Result<Option<T>>,
    sleep: impl Future<Output = Result<T>>,
) -> Result<T> {
    if let Some(v) = spin_first(recent, look).await? {
        return Ok(v);
    }
    let v = sleep.await?;
    recent.mark();
    Ok(v)
}

/// The awake part of [`wait`]: what `look` finds while `recent` allows a spin; `Ok(None)`
/// when the caller is to sleep (and then [`Recent::mark`] what it receives), for a wait
/// whose look and sleep need the same state.
///
/// # Cancel safety
/// Cancel safe if `look` is.
pub(crate) async fn spin_first<T>(
    recent: &Recent,
    look: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    if !recent.may_spin() {
        return Ok(None);
    }
    let found = spin(recent, look).await?;
    if found.is_some() {
        recent.mark();
    }
    Ok(found)
}

/// Looks for input with `look` until it finds some or [`SPIN`] has passed, yielding to the
/// runtime's other tasks every [`HOLD`] (or between every two looks, see
/// [`Recent::hold_nanos`]); looks once only while another wait of this process spins.
/// `Ok(None)`: nothing came; the caller sleeps on the reactor.
///
/// # Cancel safety
/// Cancel safe if `look` is: it takes nothing but what `look` returns, which it returns at
/// once.
async fn spin<T>(
    recent: &Recent,
    mut look: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    // One wait of this process spins at a time: a server with many connections, or a
    // program with many waits at once, keeps at most one core awake.
    if SPINNING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return look();
    }
    let _turn = OnDrop::new(|| SPINNING.store(false, Ordering::Release));
    let hold = recent.hold_nanos();
    let start = sys::monotonic_nanos();
    let until = start.saturating_add(SPIN.as_nanos() as u64);
    let mut hold_until = start.saturating_add(hold);
    let mut at = Found::First;
    loop {
        if let Some(v) = look()? {
            recent.found(at);
            return Ok(Some(v));
        }
        let now = sys::monotonic_nanos();
        if now >= until {
            recent.found(Found::Nothing);
            return Ok(None);
        }
        if now >= hold_until {
            tokio::task::yield_now().await;
            hold_until = sys::monotonic_nanos().saturating_add(hold);
            at = Found::AfterYield;
        } else {
            std::hint::spin_loop();
            at = Found::Held;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELD: u64 = HOLD.as_nanos() as u64;

    /// The holds of the next `n` spins on `r`.
    fn holds(r: &Recent, n: u32) -> Vec<u64> {
        (0..n).map(|_| r.hold_nanos()).collect()
    }

    #[test]
    fn a_peer_on_this_thread_stops_the_holding_but_for_probes() {
        let r = Recent::default();
        assert_eq!(holds(&r, 3), [HELD; 3], "a new endpoint holds its thread");
        r.found(Found::AfterYield);
        assert_eq!(r.hold_nanos(), HELD, "once is no sign");
        r.found(Found::Nothing);
        let next = holds(&r, PROBE_EVERY);
        let probes = next.iter().filter(|&&h| h == HELD).count();
        assert_eq!(probes, 1, "one probe in {PROBE_EVERY}: {next:?}");
        assert!(next.iter().all(|&h| h == HELD || h == 0), "{next:?}");
    }

    #[test]
    fn input_found_while_holding_brings_the_holding_back() {
        let r = Recent::default();
        for _ in 0..PEER_HERE_AFTER {
            r.found(Found::AfterYield);
        }
        r.found(Found::First);
        assert!(holds(&r, 4).contains(&0), "a first look says nothing");
        r.found(Found::Held);
        assert_eq!(holds(&r, PROBE_EVERY), vec![HELD; PROBE_EVERY as usize]);
    }
}
