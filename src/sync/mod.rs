//! Synchronisation primitives between processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Condition`], [`Event`] and [`Barrier`].
//!
//! # Design
//!
//! Each primitive is a small shared-memory segment (a memfd mapped `MAP_SHARED`) that holds
//! its state, plus an eventfd that wakes waiters. Both are descriptors, so a primitive is a
//! serde type: sending it to another process (as a `Process` argument, or a Pool task or
//! initializer argument) passes the two descriptors by `SCM_RIGHTS`, and the receiver maps the
//! same pages. Nothing is named in the file system, so nothing can leak when a process is
//! killed: the kernel frees the segment with its last descriptor or mapping.
//! The pair is one type, `SharedState` (`shared_state.rs`), whose serde impl every primitive
//! uses; a primitive names its segment's layout (size, checks) with a small marker type.
//! A wait that leaves a mark in the segment (a waiter count, an arrived party, a ticket)
//! undoes it on every way out, cancellation included, through one guard, `OnDrop`
//! (`crate::on_drop`, shared with the queues).
//!
//! The state is read and changed only with atomic instructions on the shared pages. The
//! fast paths (an uncontended `lock`, a `release` with no waiter, `Event::is_set`) make no
//! system call at all. Before it sleeps, a contended acquirer spins briefly (a holder in
//! another process usually releases within a few hundred nanoseconds); then it raises the
//! segment's sleepers' counter and sleeps on the eventfd, awaited on tokio's reactor. No
//! thread is parked and nothing is polled on a timer.
//!
//! A wait that finds what it waits for returns without touching the reactor, so each
//! `lock`, `acquire` and `wait` first spends a unit of its task's budget with tokio's
//! scheduler, as tokio's own `Mutex` and `Semaphore` do: a task that loops on an uncontended
//! lock or a set event yields now and then, and never starves the other tasks of its
//! runtime. The spend comes before anything is taken, so cancel safety is unchanged.
//!
//! # Lost wake-ups
//!
//! A `Lock`'s or `Semaphore`'s waiter counts a raise of its sleepers' counter *before* each
//! last attempt to take the lock (or a unit) and sleep; a releaser frees the lock *before*
//! it reads the raises, and writes the eventfd if some came since the last write (see
//! `Sleepers` in `wake.rs`). Both use sequentially consistent operations, so either the
//! waiter's attempt sees the lock free, or the releaser sees the raise and writes the
//! eventfd (or, killed before it could, leaves the raise for the next release). The eventfd
//! keeps what was written (a counter), so a write made before the waiter starts to sleep
//! still wakes it. Every waiter it wakes raises again before it looks and sleeps again.
//! Each wait also notes the events its process's registration of the eventfd has taken
//! before checking its condition (see `wake.rs`), so two tasks of one process never steal
//! each other's events, and a thousand waiting tasks share one descriptor.
//!
//! # Thundering herds
//!
//! A write to an eventfd wakes every process that waits on it: epoll offers no exclusive
//! wake-up through tokio. Every primitive's eventfd carries events, not tokens: a contended
//! release of a `Lock` or `Semaphore` wakes every sleeping waiter, each tries the shared
//! state once, and those that lose sleep again. Tokens (`EFD_SEMAPHORE`, one read per
//! waiter) would wake one process per unit, but they outlive the waits they were written
//! for: a waiter that left, or was killed, after a release wrote its token leaves it in the
//! counter, and they pile up until a later sleeper reads them all, one read each, at full
//! CPU. An event leaves the counter at 1 (see [`Wake::signal`](wake::Wake::signal)), so a
//! sleeper wakes at most once for what came before it. A `Lock`'s waiters must all look
//! anyway, for the holder's death (see `LockLayout`). `Event::set`,
//! `Condition::notify_all` and a full `Barrier` wake everyone on purpose;
//! `Condition::notify(n)` wakes everyone once but only the `n` oldest waiters pass.
//!
//! # Owner death
//!
//! A `Lock` or `RLock` records its holder's pid in the segment. A waiter that sleeps also
//! opens a pidfd of the holder and awaits it together with the eventfd; when the holder dies
//! (even by SIGKILL), the waiter takes the lock back from the dead pid with a
//! compare-and-swap and returns [`Error::LockOwnerDied`](crate::Error::LockOwnerDied); the
//! lock is then free. Exactly one acquirer gets the error per death. (A pid can be reused by
//! a new process; if that happens between the holder's death and a waiter's `pidfd_open`,
//! the death goes unnoticed. Linux hands out pids in increasing order, so this needs the pid
//! space to wrap around in between.)

mod barrier;
mod condition;
mod event;
mod lock;
mod semaphore;
mod shared_state;
mod wake;

pub(crate) use lock::task_token;
pub(crate) use wake::Watch;

pub use barrier::Barrier;
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard, RLock, RLockGuard};
pub(crate) use semaphore::check_release_n;
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};

pub(crate) use shared_state::map_received;

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// How many times a contended acquirer retries before it sleeps.
const SPIN: u32 = 200;

/// The deadline `timeout` from now (`None` when it is too far to represent: wait for ever).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The deadline `timeout` from now, where one is needed even for a timeout too long to
/// represent (`Duration::MAX`, say): then a century from now, which never comes.
pub(crate) fn deadline_or_never(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    deadline(timeout.min(CENTURY)).unwrap_or_else(Instant::now)
}

/// Runs `fut` until `deadline`, if any; [`Error::Timeout`] after it.
pub(crate) async fn until<T>(
    deadline: Option<Instant>,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(d) => tokio::time::timeout_at(d, fut)
            .await
            .unwrap_or(Err(Error::Timeout)),
    }
}

/// serde for an `Arc<T>` field: the `T` itself (`#[serde(with = "arc")]`).
pub(crate) mod arc {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<T: Serialize, S: Serializer>(
        v: &Arc<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        (**v).serialize(s)
    }

    pub(crate) fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<T>, D::Error> {
        T::deserialize(d).map(Arc::new)
    }
}
