//! `Lock` and `RLock`: mutual exclusion between processes, with the holder's pid in shared
//! memory so that a holder's death is noticed.
//!
//! # The owner of an `RLock`
//!
//! An `RLock` is owned by a *task in a process*: the pid, plus the tokio task that acquired it
//! ([`tokio::task::try_id`]). A tokio task may move between threads at every `.await`, so the
//! thread is the wrong owner; the task is what holds a Python thread's place. Code that runs
//! outside any task (the future given to `Runtime::block_on`, `#[tokio::main]`'s body) is
//! owned by its thread, which never changes under it. The same task may acquire again (the
//! count goes up); another task of the same process waits like any other process.
//! [`RLock::release`] by anyone but the owner is [`Error::NotOwner`]. A guard, though, is
//! proof of ownership: it releases its level wherever it is dropped.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use super::shared_state::{Layout, SharedState, received_as};
use super::wake::{Sleepers, Watch};
use super::{SPIN, deadline, until};
use crate::awake;
use crate::error::{Error, Result};
use crate::sys;

/// Offsets in the segment: the holder's owner word (its pid and start time, see
/// [`sys::cached_owner`]; 0 when free), which type the lock is (1 for an `RLock`: a receiver
/// refuses the other's), for an `RLock` the owning task's token and the recursion count, and
/// the sleepers' counters ([`Sleepers`]), and for an `RLock` the id of the hold (`HOLD`,
/// drawn from `HOLDS` each time the lock is taken afresh), by which a guard of a hold that
/// ended (a `Condition` wait dropped after it released every level) knows it holds nothing.
/// The start time tells a dead holder from a later process that took its pid.
const STATE: usize = 0;
const REENTRANT: usize = 8;
const TASK: usize = 16;
const COUNT: usize = 24;
const RAISED: usize = 32;
const WOKEN: usize = 40;
const HOLD: usize = 48;
const HOLDS: usize = 56;
const SIZE: usize = 64;

#[derive(Debug)]
pub(super) struct LockLayout;

/// The wake-up is an event for every sleeping waiter, not a token for one: each must look
/// again whenever the lock changes hands, since the holder whose death it watches for is
/// the one holding it now. With tokens, a waiter slept on until a token of its own while
/// the lock passed to another waiter, still watching the holder it first saw; if the new
/// holder died, nothing woke it. A waiter killed after it had taken the one token and
/// before it took the lock likewise left the lock free and the others asleep.
impl Layout for LockLayout {
    const WHAT: &'static str = "lock";
    const SIZE: usize = SIZE;
}

/// The lock word and its wake-up eventfd, shared by `Lock` and `RLock`.
pub(super) type RawLock = SharedState<LockLayout>;

impl RawLock {
    fn sleepers(&self) -> Sleepers<'_> {
        Sleepers {
            raised: self.region.u64_at(RAISED),
            woken: self.region.u64_at(WOKEN),
        }
    }

    /// Wakes the sleepers, if any, after the lock was freed; whether it did.
    fn wake_sleepers(&self) -> bool {
        let sleepers = self.sleepers();
        let Some(raised) = sleepers.due() else {
            return false;
        };
        self.wake.signal();
        sleepers.woke(raised);
        true
    }

    /// Whether the lock is an `RLock`'s.
    fn reentrant(&self) -> bool {
        self.region.u32_at(REENTRANT).load(SeqCst) != 0
    }

    /// The holder's owner word; 0 when free.
    fn holder(&self) -> u64 {
        self.region.u64_at(STATE).load(SeqCst)
    }

    /// One attempt, no system call.
    fn try_take(&self, me: u64) -> bool {
        self.region
            .u64_at(STATE)
            .compare_exchange(0, me, SeqCst, Relaxed)
            .is_ok()
    }

    /// Tries, spinning briefly while a holder releases.
    fn try_spin(&self, me: u64) -> bool {
        let state = self.region.u64_at(STATE);
        for _ in 0..SPIN {
            if state.load(Relaxed) == 0 && self.try_take(me) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Takes the lock for this process, waiting until `deadline`. It first spends a unit of
    /// the task's budget (see the module docs).
    async fn acquire(&self, deadline: Option<Instant>) -> Result<()> {
        tokio::task::coop::consume_budget().await;
        let me = sys::cached_owner();
        if self.try_take(me) || self.try_spin(me) {
            return Ok(());
        }
        until(deadline, self.acquire_slow(me)).await
    }

    async fn acquire_slow(&self, me: u64) -> Result<()> {
        // Each look reads before it tries: a compare-and-swap on a held lock takes the
        // cache line from its holder for nothing.
        let look = || Ok((self.holder() == 0 && self.try_take(me)).then_some(()));
        awake::wait(&self.recent, look, self.acquire_asleep(me)).await
    }

    async fn acquire_asleep(&self, me: u64) -> Result<()> {
        let mut listener = self.wake.listen()?;
        let mut watch: Option<Arc<Watch>> = None;
        loop {
            self.sleepers().raise();
            if self.try_take(me) {
                return Ok(());
            }
            let holder = self.holder();
            if holder == 0 {
                continue;
            }
            if holder != me && watch.as_ref().is_none_or(|w| w.owner != holder) {
                watch = Watch::shared(holder)?;
                if watch.is_none() {
                    if let Some(e) = self.recover(holder) {
                        return Err(e);
                    }
                    continue;
                }
            }
            let died = match watch.as_ref().filter(|w| w.owner == holder) {
                Some(w) => tokio::select! {
                    r = listener.notified() => { r?; false }
                    r = w.exited() => { r?; true }
                },
                None => {
                    listener.notified().await?;
                    false
                }
            };
            if died {
                watch = None;
                if let Some(e) = self.recover(holder) {
                    return Err(e);
                }
            }
        }
    }

    /// One attempt that also notices a dead holder (for `try_lock`): `Ok(true)` if taken,
    /// `Ok(false)` if a live process holds it, [`Error::LockOwnerDied`] if the holder died
    /// (the lock is then free).
    fn try_take_checked(&self, me: u64) -> Result<bool> {
        if self.try_take(me) {
            return Ok(true);
        }
        let holder = self.holder();
        if holder == 0 || holder == me || !sys::owner_gone(holder)? {
            return Ok(false);
        }
        match self.recover(holder) {
            Some(e) => Err(e),
            None => Ok(false),
        }
    }

    /// Frees the lock of a dead holder; the error for the one caller that did.
    fn recover(&self, dead: u64) -> Option<Error> {
        let freed = self
            .region
            .u64_at(STATE)
            .compare_exchange(dead, 0, SeqCst, Relaxed)
            .is_ok();
        if !freed {
            return None;
        }
        let pid = sys::owner_pid(dead);
        tracing::debug!(pid, "lock holder died; lock recovered");
        // Others may sleep on the lock too.
        self.wake_sleepers();
        Some(Error::LockOwnerDied { pid })
    }

    /// Frees the lock; `false` if it was not held.
    fn release(&self) -> bool {
        let prev = self.region.u64_at(STATE).swap(0, SeqCst);
        if prev == 0 {
            return false;
        }
        // Marked first: a waiter woken looks at it to spin.
        let sleepers = self.sleepers();
        if sleepers.due().is_some() {
            self.recent.mark();
        }
        self.wake_sleepers();
        true
    }
}

/// A lock between processes (Python's `multiprocessing.Lock`).
///
/// Not re-entrant: a second `lock()` by its holder waits, as in Python. Any process may
/// [`release`](Lock::release) it, as in Python; a guard releases it when dropped.
///
/// Clones share the same lock, and so does a `Lock` sent to another process (it is a serde
/// type whose descriptors travel by `SCM_RIGHTS`): pass it as a `Process`, Pool task or Pool
/// initializer argument.
///
/// If the holding process dies, the next acquirer gets [`Error::LockOwnerDied`] instead of
/// waiting for ever, and the lock is free again.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// async fn f(l: mp::Lock, i: u32) {
///     if let Ok(_guard) = l.lock().await {
///         println!("hello world {i}");
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> mp::Result<()> {
/// let lock = mp::Lock::new()?;
/// let mut p = mp::Process::new(f, (lock.clone(), 1)).start().await?;
/// p.join().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize)]
pub struct Lock {
    #[serde(with = "super::arc")]
    raw: Arc<RawLock>,
}

impl<'de> Deserialize<'de> for Lock {
    /// Refuses an [`RLock`]'s segment: its `release` by anyone would free an `RLock` under
    /// its owner.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = received_as(d, "a lock", |raw: &RawLock| {
            raw.reentrant().then_some("a re-entrant lock")
        })?;
        Ok(Lock { raw })
    }
}

/// Shows who holds it, as Python's `repr` (`<Lock(owner=...)>`): `Lock { holder: Some(pid) }`.
impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("holder", &self.holder())
            .finish()
    }
}

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            raw: Arc::new(RawLock::new()?),
        })
    }

    /// Waits for the lock and returns a guard that releases it when dropped.
    ///
    /// The uncontended path is one atomic compare-and-swap in shared memory, with no system
    /// call; a contended one spins briefly, then sleeps on the reactor.
    ///
    /// # Errors
    /// [`Error::LockOwnerDied`] if the holder died holding the lock (the lock is then free);
    /// [`Error::Io`] if the wait cannot be registered with the reactor.
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the lock was not taken.
    pub async fn lock(&self) -> Result<LockGuard<'_>> {
        self.raw.acquire(None).await?;
        Ok(LockGuard { lock: self })
    }

    /// Like [`lock`](Self::lock), but gives up after `timeout` (Python's
    /// `acquire(timeout=...)`).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the time runs out; otherwise as [`lock`](Self::lock).
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe, like [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.raw.acquire(deadline(timeout)).await?;
        Ok(LockGuard { lock: self })
    }

    /// Takes the lock if it is free (Python's `acquire(block=False)`); `None` if a live
    /// process holds it. A free lock costs no system call; a held one, a check that its
    /// holder is alive.
    ///
    /// # Errors
    /// [`Error::LockOwnerDied`] if the holder died holding the lock (it is then free);
    /// [`Error::Io`] if the holder cannot be checked.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>> {
        Ok(self
            .raw
            .try_take_checked(sys::cached_owner())?
            // `then`, not `then_some`: a guard made for nothing would release the lock
            // (someone else's) when dropped.
            .then(|| LockGuard { lock: self }))
    }

    /// Releases the lock, whoever holds it (Python's `release()`): for a lock whose guard was
    /// [`forget`](LockGuard::forget)-ten, or that another process acquired.
    ///
    /// # Errors
    /// [`Error::NotHeld`] if the lock is not held.
    pub fn release(&self) -> Result<()> {
        if self.raw.release() {
            Ok(())
        } else {
            Err(Error::NotHeld)
        }
    }

    /// Whether some process holds the lock now.
    pub fn is_locked(&self) -> bool {
        self.raw.holder() != 0
    }

    /// The pid of the process that holds the lock now, if any.
    pub fn holder(&self) -> Option<u32> {
        Some(sys::owner_pid(self.raw.holder())).filter(|&p| p != 0)
    }

    /// The holder's owner word (see [`sys::cached_owner`]); 0 when free.
    pub(crate) fn holder_word(&self) -> u64 {
        self.raw.holder()
    }

    pub(crate) async fn acquire_until(&self, deadline: Option<Instant>) -> Result<()> {
        self.raw.acquire(deadline).await
    }

    pub(crate) fn release_raw(&self) -> bool {
        self.raw.release()
    }
}

/// Holds a [`Lock`]; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
}

impl LockGuard<'_> {
    /// Keeps the lock held without a guard (Python's bare `acquire()`); release it later
    /// with [`Lock::release`].
    pub fn forget(self) {
        std::mem::forget(self);
    }

    /// The lock this guard holds.
    pub fn lock(&self) -> &Lock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.raw.release();
    }
}

/// The identity of the running task (or of the thread, outside any task) in this process:
/// never 0.
///
/// The process's owner word is part of it: task ids and thread ids are numbered within each
/// process, so the same task id runs in every process. An `RLock` whose holder died keeps
/// the dead task's token in its segment; without the owner word, a task of the next holder's
/// process with the same id took itself for the owner between that holder's
/// compare-and-swap and its store of its own token, and entered the lock beside it.
pub(crate) fn task_token() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sys::cached_owner().hash(&mut h);
    match tokio::task::try_id() {
        Some(id) => (1u8, id).hash(&mut h),
        None => (2u8, std::thread::current().id()).hash(&mut h),
    }
    h.finish() | 1
}

/// A re-entrant lock between processes (Python's `multiprocessing.RLock`).
///
/// Owned by a task of a process (see the module docs): the owner may acquire it again, and
/// must release it as many times. Holder death is detected as for [`Lock`].
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let l = tokio_multiprocessing::RLock::new()?;
/// let a = l.lock().await?;
/// let b = l.lock().await?; // the same task: no wait
/// drop(b);
/// drop(a);
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize)]
pub struct RLock {
    #[serde(with = "super::arc")]
    raw: Arc<RawLock>,
}

impl<'de> Deserialize<'de> for RLock {
    /// Refuses a [`Lock`]'s segment.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw = received_as(d, "a re-entrant lock", |raw: &RawLock| {
            (!raw.reentrant()).then_some("a lock")
        })?;
        Ok(RLock { raw })
    }
}

/// Shows who holds it and how many times, as Python's `repr` (`<RLock(owner, count)>`):
/// `RLock { holder: Some((pid, count)) }`.
impl std::fmt::Debug for RLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RLock")
            .field("holder", &self.holder())
            .finish()
    }
}

impl RLock {
    /// A new, unlocked re-entrant lock.
    ///
    /// # Errors
    /// [`Error::Io`] if the shared segment or the eventfd cannot be made.
    pub fn new() -> Result<RLock> {
        let raw = RawLock::new()?;
        raw.region.u32_at(REENTRANT).store(1, SeqCst);
        Ok(RLock { raw: Arc::new(raw) })
    }

    fn owned_by_caller(&self) -> bool {
        self.raw.holder() == sys::cached_owner()
            && self.raw.region.u64_at(TASK).load(Acquire) == task_token()
    }

    fn enter(&self) -> RLockGuard<'_> {
        let count = self.raw.region.u32_at(COUNT);
        count.store(count.load(Relaxed).saturating_add(1), Release);
        self.guard()
    }

    /// A guard of one level of the hold there is now (the caller holds the lock).
    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            hold: self.hold(),
        }
    }

    /// The id of the hold there is now.
    pub(crate) fn hold(&self) -> u64 {
        self.raw.region.u64_at(HOLD).load(Acquire)
    }

    /// Records the calling task as the owner, at `count` levels, of a hold taken afresh
    /// (a new id) or given back after a `Condition` wait (`hold`, the id it had).
    fn take_ownership(&self, count: u32, hold: Option<u64>) {
        let hold = hold.unwrap_or_else(|| {
            let holds = self.raw.region.u64_at(HOLDS);
            holds.fetch_add(1, AcqRel).wrapping_add(1)
        });
        self.raw.region.u64_at(HOLD).store(hold, Release);
        self.raw.region.u64_at(TASK).store(task_token(), Release);
        self.raw.region.u32_at(COUNT).store(count, Release);
    }

    /// Waits for the lock (at once if the calling task owns it) and returns a guard that
    /// releases one level when dropped.
    ///
    /// # Errors
    /// [`Error::LockOwnerDied`] if the holder died holding the lock (it is then free);
    /// [`Error::Io`] if the wait cannot be registered with the reactor.
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the lock was not taken.
    pub async fn lock(&self) -> Result<RLockGuard<'_>> {
        self.acquire_until(None).await?;
        Ok(self.guard())
    }

    /// Like [`lock`](Self::lock), but gives up after `timeout` (Python's
    /// `acquire(timeout=...)`).
    ///
    /// # Errors
    /// [`Error::Timeout`] when the time runs out; otherwise as [`lock`](Self::lock).
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe, like [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>> {
        self.acquire_until(deadline(timeout)).await?;
        Ok(self.guard())
    }

    /// Takes the lock if it is free or owned by the calling task (Python's
    /// `acquire(block=False)`); `None` otherwise.
    ///
    /// # Errors
    /// [`Error::LockOwnerDied`] if the holder died holding the lock (it is then free);
    /// [`Error::Io`] if the holder cannot be checked.
    pub fn try_lock(&self) -> Result<Option<RLockGuard<'_>>> {
        if self.owned_by_caller() {
            return Ok(Some(self.enter()));
        }
        if self.raw.try_take_checked(sys::cached_owner())? {
            self.take_ownership(1, None);
            return Ok(Some(self.guard()));
        }
        Ok(None)
    }

    /// Releases one level held by the calling task (Python's `release()`), for a guard that
    /// was [`forget`](RLockGuard::forget)-ten.
    ///
    /// # Errors
    /// [`Error::NotOwner`] if the calling task (in this process) does not own the lock.
    pub fn release(&self) -> Result<()> {
        if !self.owned_by_caller() {
            return Err(Error::NotOwner);
        }
        self.leave(self.hold());
        Ok(())
    }

    /// Whether the lock is held, and how many times: `(pid of the holder, count)`.
    pub fn holder(&self) -> Option<(u32, u32)> {
        let pid = sys::owner_pid(self.raw.holder());
        (pid != 0).then(|| (pid, self.raw.region.u32_at(COUNT).load(Acquire)))
    }

    /// Acquires one level for the calling task (no guard).
    pub(crate) async fn acquire_until(&self, deadline: Option<Instant>) -> Result<()> {
        if self.owned_by_caller() {
            // The raw lock's acquire spends the budget on the other path.
            tokio::task::coop::consume_budget().await;
            std::mem::forget(self.enter());
            return Ok(());
        }
        self.raw.acquire(deadline).await?;
        self.take_ownership(1, None);
        Ok(())
    }

    /// Takes the lock's word for this process and leaves the owning task unrecorded, as an
    /// acquirer is between its compare-and-swap and its store of its task. A test hook only
    /// (feature `test-hooks`).
    ///
    /// # Errors
    /// As [`lock`](Self::lock).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn __take_word_only(&self) -> Result<()> {
        self.raw.acquire(None).await
    }

    /// Releases one level of hold `hold`, if this process holds the lock and that hold has
    /// not ended.
    pub(crate) fn leave(&self, hold: u64) {
        if self.raw.holder() != sys::cached_owner() || self.hold() != hold {
            return;
        }
        let count = self.raw.region.u32_at(COUNT);
        match count.load(Acquire) {
            0 => {}
            1 => {
                count.store(0, Release);
                self.raw.region.u64_at(TASK).store(0, Release);
                self.raw.release();
            }
            n => count.store(n - 1, Release),
        }
    }

    /// Releases every level held by the calling task; returns the count and the hold's id,
    /// for [`restore`](Self::restore) (a `Condition` wait).
    ///
    /// Called through a guard, which proves ownership wherever it has moved, so only the
    /// process is checked.
    pub(crate) fn release_all(&self) -> Result<Saved> {
        if self.raw.holder() != sys::cached_owner() {
            return Err(Error::NotOwner);
        }
        let hold = self.hold();
        let n = self.raw.region.u32_at(COUNT).swap(0, AcqRel);
        self.raw.region.u64_at(TASK).store(0, Release);
        self.raw.release();
        Ok(Saved { count: n, hold })
    }

    /// Acquires again with the levels and the hold of [`release_all`](Self::release_all):
    /// the guards of that hold hold it again. Until then (and for good if the wait is
    /// dropped) the hold has ended: a guard of it released nothing when dropped.
    pub(crate) async fn restore(&self, saved: Saved) -> Result<()> {
        self.raw.acquire(None).await?;
        self.take_ownership(saved.count.max(1), Some(saved.hold));
        Ok(())
    }
}

/// What a `Condition` wait released of an [`RLock`], to take back: its levels and its hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Saved {
    count: u32,
    hold: u64,
}

/// Holds one level of an [`RLock`]; dropping it releases that level.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    /// The hold it is a level of: a guard of a hold that ended releases nothing.
    hold: u64,
}

impl RLockGuard<'_> {
    /// Keeps the level held without a guard; release it later with [`RLock::release`].
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.leave(self.hold);
    }
}

/// The lock under a `Condition`: a `Lock` or an `RLock`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Guarded {
    Lock(Lock),
    RLock(RLock),
}

impl Guarded {
    /// One attempt without waiting; whether one level was taken.
    pub(crate) fn try_acquire(&self) -> Result<bool> {
        Ok(match self {
            Guarded::Lock(l) => l.try_lock()?.map(LockGuard::forget).is_some(),
            Guarded::RLock(r) => r.try_lock()?.map(RLockGuard::forget).is_some(),
        })
    }

    pub(crate) async fn acquire(&self, deadline: Option<Instant>) -> Result<()> {
        match self {
            Guarded::Lock(l) => l.acquire_until(deadline).await,
            Guarded::RLock(r) => r.acquire_until(deadline).await,
        }
    }

    /// The id of the hold there is now (0 for a plain lock, whose guards are never stale).
    pub(crate) fn hold(&self) -> u64 {
        match self {
            Guarded::Lock(_) => 0,
            Guarded::RLock(r) => r.hold(),
        }
    }

    /// Releases one level of hold `hold` (a guard's drop).
    pub(crate) fn release(&self, hold: u64) {
        match self {
            Guarded::Lock(l) => {
                l.release_raw();
            }
            Guarded::RLock(r) => r.leave(hold),
        }
    }

    /// Releases fully for a wait; what to restore afterwards.
    pub(crate) fn release_save(&self) -> Result<Saved> {
        match self {
            Guarded::Lock(l) => l.release().map(|()| Saved { count: 1, hold: 0 }),
            Guarded::RLock(r) => r.release_all(),
        }
    }

    pub(crate) async fn acquire_restore(&self, saved: Saved) -> Result<()> {
        match self {
            Guarded::Lock(l) => l.acquire_until(None).await,
            Guarded::RLock(r) => r.restore(saved).await,
        }
    }
}
