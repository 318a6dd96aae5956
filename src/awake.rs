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
//! against 9 to 13 µs here).
//!
//! The pool's processes follow the same rule with their own bookkeeping
//! ([`PoolBuilder::spin`](crate::PoolBuilder::spin)).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// When an endpoint last moved a message: whether a wait on it may spin.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// [`sys::monotonic_nanos`] at the last message (0: none yet).
    at: AtomicU64,
}

impl Recent {
    /// Notes that the endpoint moved a message now.
    pub(crate) fn mark(&self) {
        self.at.store(sys::monotonic_nanos(), Ordering::Relaxed);
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
    let found = spin(look).await?;
    if found.is_some() {
        recent.mark();
    }
    Ok(found)
}

/// Looks for input with `look` until it finds some or [`SPIN`] has passed, yielding to the
/// runtime's other tasks every [`HOLD`]; looks once only while another wait of this process
/// spins. `Ok(None)`: nothing came; the caller sleeps on the reactor.
///
/// # Cancel safety
/// Cancel safe if `look` is: it takes nothing but what `look` returns, which it returns at
/// once.
async fn spin<T>(mut look: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    // One wait of this process spins at a time: a server with many connections, or a
    // program with many waits at once, keeps at most one core awake.
    if SPINNING
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return look();
    }
    let _turn = OnDrop::new(|| SPINNING.store(false, Ordering::Release));
    let start = sys::monotonic_nanos();
    let until = start.saturating_add(SPIN.as_nanos() as u64);
    let mut hold_until = start.saturating_add(HOLD.as_nanos() as u64);
    loop {
        if let Some(v) = look()? {
            return Ok(Some(v));
        }
        let now = sys::monotonic_nanos();
        if now >= until {
            return Ok(None);
        }
        if now >= hold_until {
            tokio::task::yield_now().await;
            hold_until = sys::monotonic_nanos().saturating_add(HOLD.as_nanos() as u64);
        } else {
            std::hint::spin_loop();
        }
    }
}
