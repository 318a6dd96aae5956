//! `Condition`: waiters take numbered tickets; `notify(n)` moves a shared limit past the next
//! `n` live tickets and writes the eventfd; a waiter passes once the limit is past its ticket.
//!
//! Tickets and the limit change only under the condition's lock, so they need no locking of
//! their own. Tickets are served oldest first, and a waiter that arrives after a `notify` can
//! never take that notification from an older one (the newcomer's ticket is past the limit
//! the notifier set). A waiter that times out marks its ticket cancelled in a bitmap, and
//! each ticket notes its waiter's owner word (pid and start time); `notify` skips cancelled
//! tickets and those of waiters whose process is gone without counting them, so a
//! notification is never spent on a waiter that has left, or was killed. Each wait first
//! gives back the cancelled tickets at both ends of the outstanding ones (`trim`), so that
//! waits that time out with nobody to notify do not use up the slots. At most `SLOTS`
//! waiters may wait at once.
//!
//! A wait clears its ticket's owner word as it ends, so a notified ticket whose word is
//! still set belongs to a wait that has not ended yet. Should that wait end without its
//! notification (its process killed while it slept or took the lock back, or its future
//! dropped), the notification is left in a count (`PASS`) for the next holder of the lock
//! to pass on, as a `notify` would. A dropped wait leaves it itself; a killed one cannot,
//! so the waiters not yet notified watch (by pidfd) the processes of the notified waits
//! that have not ended, those sent since they began waiting, and the one that finds such a
//! process gone takes the lock to pass the notification on.
//!
//! A `notify` that moves the limit past a waiter marks it (`UNWOKEN`) before, and clears the
//! mark after, its write to the eventfd. A notifier killed between the two left the waiters
//! asleep, notified or not, until some later `notify` wrote; now the next `notify` or wait
//! (both under the lock) writes the wake-up the mark says is missing.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::lock::{Guarded, Saved};
use super::shared_state::{Layout, SharedState};
use super::{deadline, until};
use crate::error::{Error, Result};
use crate::on_drop::OnDrop;
use crate::sync::wake::{Listener, Watch};
use crate::sync::{Lock, RLock};
use crate::sys;

const NEXT: usize = 0;
const LIMIT: usize = 8;
/// Notifications spent on waits that then ended without them (their process killed, their
/// future dropped), for the next holder of the lock to pass on.
const PASS: usize = 16;
/// 1 from the moment a `notify` moves the limit past a waiter until its wake-up is written.
const UNWOKEN: usize = 24;
const BITS: usize = 64;
const SLOTS: u64 = 8192;
/// The owner word of each ticket's waiter (see [`sys::cached_owner`]), by slot; 0 once its
/// wait has ended.
const OWNERS: usize = BITS + (SLOTS as usize) / 8;
const SIZE: usize = OWNERS + (SLOTS as usize) * 8;

#[derive(Debug)]
struct ConditionLayout;

impl Layout for ConditionLayout {
    const WHAT: &'static str = "condition";
    const SIZE: usize = SIZE;
}

/// The ticket counters and cancelled-ticket bits, and the eventfd.
type Inner = SharedState<ConditionLayout>;

impl Inner {
    fn bit(&self, ticket: u64) -> (&std::sync::atomic::AtomicU32, u32) {
        let slot = ticket % SLOTS;
        (
            self.region.u32_at(BITS + (slot / 32) as usize * 4),
            1 << (slot % 32),
        )
    }

    fn cancel(&self, ticket: u64) {
        let (word, mask) = self.bit(ticket);
        word.fetch_or(mask, SeqCst);
    }

    /// Clears the ticket's bit; whether it was set.
    fn take_cancelled(&self, ticket: u64) -> bool {
        let (word, mask) = self.bit(ticket);
        word.fetch_and(!mask, SeqCst) & mask != 0
    }

    fn owner(&self, ticket: u64) -> &std::sync::atomic::AtomicU64 {
        self.region.u64_at(OWNERS + (ticket % SLOTS) as usize * 8)
    }

    /// Whether the process that took `ticket` is gone (a notification spent on it would
    /// wake no one); if so, its owner word is cleared, as its wait would have on its way out.
    fn take_gone(&self, ticket: u64) -> bool {
        let owner = self.owner(ticket);
        let word = owner.load(SeqCst);
        word != 0
            && word != sys::cached_owner()
            && sys::owner_gone(word).unwrap_or(false)
            && owner.compare_exchange(word, 0, SeqCst, SeqCst).is_ok()
    }

    /// The wait of `ticket`, taken by this process, ends.
    fn ended(&self, ticket: u64) {
        let _ = self
            .owner(ticket)
            .compare_exchange(sys::cached_owner(), 0, SeqCst, SeqCst);
    }

    /// The wait of `ticket` ends without its notification, if any, under the lock: it gives
    /// its ticket up.
    fn ended_unnotified(&self, ticket: u64) {
        if !self.notified(ticket) {
            self.cancel(ticket);
        }
        self.ended(ticket);
    }

    /// The wait of `ticket` is dropped, not under the lock: it gives its ticket up, and a
    /// notification already spent on it goes on to the next waiter.
    fn dropped(&self, ticket: u64) {
        if self.notified(ticket) {
            self.pass_on(1);
        } else {
            self.cancel(ticket);
            // A notify that counted the ticket just before the bit was set left the bit
            // (one that came after took it, and skipped the ticket).
            if self.notified(ticket) && self.take_cancelled(ticket) {
                self.pass_on(1);
            }
        }
        self.ended(ticket);
    }

    /// Leaves `n` notifications for the next holder of the lock to pass on, and wakes the
    /// waiters so that one of them takes the lock to do so.
    fn pass_on(&self, n: u64) {
        self.region.u64_at(PASS).fetch_add(n, SeqCst);
        self.wake.signal();
    }

    /// Writes the wake-up of the last `notify`, and notes it.
    fn wake_notified(&self) {
        self.wake.signal();
        self.region.u32_at(UNWOKEN).store(0, SeqCst);
    }

    /// Writes the wake-up of the last `notify` if its notifier died before it did (under
    /// the lock, which such a notifier held: no system call otherwise).
    fn wake_if_missed(&self) {
        if self.region.u32_at(UNWOKEN).load(SeqCst) != 0 {
            self.wake_notified();
        }
    }

    /// Whether notifications wait to be passed on.
    fn passes(&self) -> bool {
        self.region.u64_at(PASS).load(SeqCst) != 0
    }

    /// Looks at the tickets in `from..` below the limit (notified) whose waits have not
    /// ended: those of processes that are gone hold notifications that were lost, which are
    /// left to pass on; the processes of the others are watched, since each may yet die
    /// before its wait ends. Moves `from` past the tickets whose waits have ended.
    fn lost_notifications(&self, from: &mut u64) -> Result<Vec<Arc<Watch>>> {
        let me = sys::cached_owner();
        let limit = self.region.u64_at(LIMIT).load(SeqCst);
        let next = self.region.u64_at(NEXT).load(SeqCst);
        // Below this, a ticket's slot may hold a newer ticket's waiter.
        let reused = next.saturating_sub(SLOTS);
        let mut watches: Vec<Arc<Watch>> = Vec::new();
        let mut lost = 0;
        let mut low = true;
        for t in (*from).max(reused)..limit {
            let owner = self.owner(t);
            let word = owner.load(SeqCst);
            if word == 0 || word == me {
                if low && word == 0 {
                    *from = t + 1;
                }
                continue;
            }
            low = false;
            if watches.iter().any(|w| w.owner == word) {
                continue;
            }
            let live = match Watch::shared(word)? {
                Some(w) if !w.has_exited()? => Some(w),
                _ => None,
            };
            match live {
                Some(w) => watches.push(w),
                None => {
                    if owner.compare_exchange(word, 0, SeqCst, SeqCst).is_ok() {
                        lost += 1;
                    }
                }
            }
        }
        if lost > 0 {
            self.region.u64_at(PASS).fetch_add(lost, SeqCst);
        }
        Ok(watches)
    }

    fn notified(&self, ticket: u64) -> bool {
        self.region.u64_at(LIMIT).load(SeqCst) > ticket
    }

    /// Gives back the tickets of waiters that have left, at both ends of the outstanding
    /// ones: the oldest (the limit moves past them, as a `notify` would, counting none) and
    /// the newest (the next waiter takes the first of them again). `gone`: those of waiters
    /// whose process is gone too, which costs a look at each process.
    ///
    /// Called under the lock, as tickets and the limit only change there. Without it, waits
    /// that time out with nobody to notify would use up the slots one by one: the limit
    /// moves only in `notify`, and a wait is refused once `SLOTS` tickets are past it.
    fn trim(&self, gone: bool) {
        let left = |t: u64| self.take_cancelled(t) || (gone && self.take_gone(t));
        let limit = self.region.u64_at(LIMIT);
        let next = self.region.u64_at(NEXT);
        let mut lo = limit.load(SeqCst);
        let mut hi = next.load(SeqCst);
        // At most SLOTS tickets are outstanding; more can only be a damaged segment.
        let floor = hi.saturating_sub(SLOTS).max(lo);
        while hi > floor && left(hi - 1) {
            hi -= 1;
        }
        let ceiling = lo.saturating_add(SLOTS).min(hi);
        while lo < ceiling && left(lo) {
            lo += 1;
        }
        next.store(hi, SeqCst);
        limit.store(lo, SeqCst);
    }
}

/// A condition variable between processes (Python's `multiprocessing.Condition`), over a
/// [`Lock`] or an [`RLock`] (the default, as in Python).
///
/// Waiting and notifying go through the guard that [`lock`](Self::lock) returns, so the
/// lock is held, as Python requires, by construction. Clones share the same condition, and
/// so does one sent to another process. At most 8192 waits, in all processes together, may
/// wait on one condition at a time (Python has no such bound); one more fails.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let c = tokio_multiprocessing::Condition::new()?;
/// let g = c.lock().await?;
/// let (g, notified) = g.wait_timeout(std::time::Duration::from_millis(10)).await?;
/// assert!(!notified);
/// g.notify_all();
/// # Ok(()) }
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Guarded,
    #[serde(with = "super::arc")]
    inner: Arc<Inner>,
}

/// Shows its lock and who holds it, as Python's `repr` (`<Condition(<Lock(owner=...)>, N)>`).
impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .finish()
    }
}

impl Condition {
    /// A condition over a new [`RLock`].
    ///
    /// # Errors
    /// [`Error::Io`] if a shared segment or an eventfd cannot be made.
    pub fn new() -> Result<Condition> {
        Condition::make(Guarded::RLock(RLock::new()?))
    }

    /// A condition over `lock` (Python's `Condition(lock)`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_lock(lock: Lock) -> Result<Condition> {
        Condition::make(Guarded::Lock(lock))
    }

    /// A condition over the re-entrant `lock`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_rlock(lock: RLock) -> Result<Condition> {
        Condition::make(Guarded::RLock(lock))
    }

    fn make(lock: Guarded) -> Result<Condition> {
        Ok(Condition {
            lock,
            inner: Arc::new(Inner::new()?),
        })
    }

    /// Acquires the underlying lock (Python's `with cond:`).
    ///
    /// # Errors
    /// As [`Lock::lock`] / [`RLock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the lock was not taken.
    pub async fn lock(&self) -> Result<ConditionGuard<'_>> {
        self.lock.acquire(None).await?;
        Ok(ConditionGuard::of(self))
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
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<ConditionGuard<'_>> {
        self.lock.acquire(deadline(timeout)).await?;
        Ok(ConditionGuard::of(self))
    }

    /// Takes the underlying lock if it is free (or, for an `RLock`, owned by the calling
    /// task) (Python's `acquire(block=False)`); `None` otherwise.
    ///
    /// # Errors
    /// As [`Lock::try_lock`] / [`RLock::try_lock`].
    pub fn try_lock(&self) -> Result<Option<ConditionGuard<'_>>> {
        Ok(self.lock.try_acquire()?.then(|| ConditionGuard::of(self)))
    }

    /// Releases the lock, waits for a notification (or the deadline), takes the lock again.
    /// Returns whether it was notified.
    ///
    /// Called for a guard that the caller has given up: on `Ok` the lock is held again (the
    /// caller makes a new guard); on `Err` the guard's level is not held any more.
    async fn wait_inner(&self, deadline: Option<Instant>) -> Result<bool> {
        let inner = &*self.inner;
        let next = inner.region.u64_at(NEXT);
        let full = || {
            next.load(SeqCst)
                .saturating_sub(inner.region.u64_at(LIMIT).load(SeqCst))
                >= SLOTS
        };
        // Notifications lost by waits that ended without them go to the waiters before
        // this one; a notifier killed before it woke the waiters leaves that to this wait.
        if inner.passes() {
            self.notify(0);
        } else {
            inner.wake_if_missed();
        }
        inner.trim(false);
        if full() {
            inner.trim(true);
        }
        let ticket = next.load(SeqCst);
        if full() {
            self.lock.release(self.lock.hold());
            return Err(Error::from(std::io::Error::other(format!(
                "more than {SLOTS} waiters on one condition"
            ))));
        }
        let mut listener = match inner.wake.listen() {
            Ok(l) => l,
            Err(e) => {
                self.lock.release(self.lock.hold());
                return Err(e);
            }
        };
        inner.take_cancelled(ticket);
        inner.owner(ticket).store(sys::cached_owner(), SeqCst);
        next.store(ticket + 1, SeqCst);
        // Read under the lock: notifications from here on are sent while this wait waits.
        let arrived = inner.region.u64_at(LIMIT).load(SeqCst);
        let saved = match self.lock.release_save() {
            Ok(s) => s,
            Err(e) => {
                inner.cancel(ticket);
                inner.ended(ticket);
                return Err(e);
            }
        };
        // A wait dropped before it ends gives its ticket up, and passes on a notification
        // spent on it.
        let leave = OnDrop::new(|| inner.dropped(ticket));
        let waited = until(deadline, self.sleep(ticket, arrived, saved, &mut listener)).await;
        let back = match waited {
            Ok(Woke::Holding) => Ok(()),
            Ok(Woke::Failed(e)) => {
                leave.defuse();
                inner.dropped(ticket);
                return Err(e);
            }
            _ => self.lock.acquire_restore(saved).await,
        };
        leave.defuse();
        let notified = inner.notified(ticket);
        if back.is_ok() && matches!(waited, Ok(_) | Err(Error::Timeout)) {
            inner.ended_unnotified(ticket);
        } else {
            // The wait fails: a notification spent on it goes on.
            inner.dropped(ticket);
        }
        back?;
        match waited {
            Ok(_) => Ok(true),
            Err(Error::Timeout) => Ok(notified),
            Err(e) => {
                self.lock.release(self.lock.hold());
                Err(e)
            }
        }
    }

    /// The sleep of [`wait_inner`](Self::wait_inner) until `ticket` is notified, with the
    /// lock released (`saved` levels of it). `arrived`: the limit when the ticket was taken.
    ///
    /// A notification spent on a waiter that then dies before its wait ends (killed while it
    /// slept or while it took the lock back) would wake no one: the waiters not notified yet
    /// watch the processes of those notified whose waits have not ended, and when one is
    /// found gone, take the lock and pass its notification on, as `notify` would (to the
    /// oldest live waiter: this one, or one before it, which was waiting when the lost
    /// notification was sent). Only notifications sent while this wait waited are looked
    /// at, so a wait is never woken by one sent before it began.
    async fn sleep(
        &self,
        ticket: u64,
        arrived: u64,
        saved: Saved,
        listener: &mut Listener,
    ) -> Result<Woke> {
        let inner = &*self.inner;
        let mut from = arrived;
        let mut watches: Vec<Arc<Watch>>;
        loop {
            if inner.notified(ticket) {
                return Ok(Woke::Notified);
            }
            // The watches of the last look are kept until this one is made, which shares
            // those it needs again.
            watches = inner.lost_notifications(&mut from)?;
            if inner.passes() {
                if let Err(e) = self.lock.acquire_restore(saved).await {
                    // The lock is free (its holder died) but not taken: another waiter
                    // passes the notifications on.
                    inner.wake.signal();
                    return Ok(Woke::Failed(e));
                }
                self.notify(0);
                if inner.notified(ticket) {
                    return Ok(Woke::Holding);
                }
                if let Err(e) = self.lock.release_save() {
                    return Ok(Woke::Failed(e));
                }
                continue;
            }
            if watches.is_empty() {
                listener.notified().await?;
            } else {
                let died =
                    futures::future::select_all(watches.iter().map(|w| Box::pin(w.exited())));
                tokio::select! {
                    r = listener.notified() => r?,
                    (r, _, _) = died => r?,
                }
            }
        }
    }

    /// Moves the limit past the next `n` live tickets, and past as many more as there are
    /// notifications left to pass on; wakes the waiters if it moved past any (or if the
    /// last notify's notifier died before it woke them).
    fn notify(&self, n: usize) {
        if self.move_limit(n) {
            self.inner.wake_notified();
        } else {
            self.inner.wake_if_missed();
        }
    }

    /// The limit's move of [`notify`](Self::notify); whether it moved past a live ticket.
    fn move_limit(&self, n: usize) -> bool {
        let inner = &*self.inner;
        let passed = inner.region.u64_at(PASS).swap(0, SeqCst);
        let n = n.saturating_add(usize::try_from(passed).unwrap_or(usize::MAX));
        let limit = inner.region.u64_at(LIMIT);
        let mut at = limit.load(SeqCst);
        // At most SLOTS tickets are outstanding; more can only be a damaged segment.
        let end = inner
            .region
            .u64_at(NEXT)
            .load(SeqCst)
            .min(at.saturating_add(SLOTS));
        let mut woken = 0;
        while woken < n && at < end {
            // A ticket given up, or whose process died waiting, takes no notification.
            if !inner.take_cancelled(at) && !inner.take_gone(at) {
                woken += 1;
            }
            at += 1;
        }
        if woken > 0 {
            inner.region.u32_at(UNWOKEN).store(1, SeqCst);
        }
        limit.store(at, SeqCst);
        woken > 0
    }
}

/// How the sleep of a wait ended.
enum Woke {
    /// Notified; the lock is to be taken back.
    Notified,
    /// Notified while it held the lock to pass notifications on: it holds it still.
    Holding,
    /// Taking the lock to pass notifications on failed: the lock is not held.
    Failed(Error),
}

/// Holds a [`Condition`]'s lock; waits and notifications go through it. Dropping it releases
/// the lock (one level of an `RLock`).
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ConditionGuard<'a> {
    cond: &'a Condition,
    /// The hold of the lock it is a level of (see [`RLock`]): a guard of a hold that ended
    /// releases nothing.
    hold: u64,
}

impl<'a> ConditionGuard<'a> {
    /// A guard of a level of the hold of `cond`'s lock there is now (the caller holds it).
    fn of(cond: &'a Condition) -> ConditionGuard<'a> {
        ConditionGuard {
            cond,
            hold: cond.lock.hold(),
        }
    }

    /// Releases the lock, waits until notified, and takes the lock again (Python's
    /// `wait()`); returns the guard.
    ///
    /// # Errors
    /// [`Error::LockOwnerDied`] if taking the lock back found its holder dead (the lock is
    /// then free); [`Error::Io`] if the wait cannot be registered, or if 8192 waits wait on
    /// the condition already. On an error the guard is gone and its level of the lock
    /// released.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Dropping the future releases the lock for good (the guard is consumed), every level of
    /// an [`RLock`] included: the guards of its outer levels then hold nothing, and their drop
    /// releases nothing (not the hold another task took since). A notification that arrived
    /// before the drop goes on to the next waiter, as one spent on a waiter that is killed
    /// before its wait returns does.
    pub async fn wait(self) -> Result<ConditionGuard<'a>> {
        let cond = self.cond;
        std::mem::forget(self);
        cond.wait_inner(None).await?;
        Ok(ConditionGuard::of(cond))
    }

    /// Like [`wait`](Self::wait), for at most `timeout`; also returns whether it was notified
    /// (Python's `wait(timeout)`). The lock is held again in both cases.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(self, timeout: Duration) -> Result<(ConditionGuard<'a>, bool)> {
        let cond = self.cond;
        std::mem::forget(self);
        let notified = cond.wait_inner(deadline(timeout)).await?;
        Ok((ConditionGuard::of(cond), notified))
    }

    /// Waits until `predicate()` holds, checking it under the lock before each wait
    /// (Python's `wait_for(predicate, timeout)`); with a `timeout`, gives up after it.
    /// Returns the guard and the predicate's last value.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_for(
        self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<(ConditionGuard<'a>, bool)> {
        tokio::task::coop::consume_budget().await;
        let end = timeout.and_then(deadline);
        let cond = self.cond;
        let mut guard = self;
        loop {
            if predicate() {
                return Ok((guard, true));
            }
            if end.is_some_and(|e| Instant::now() >= e) {
                return Ok((guard, false));
            }
            std::mem::forget(guard);
            cond.wait_inner(end).await?;
            guard = ConditionGuard::of(cond);
        }
    }

    /// Wakes up to `n` of the processes and tasks waiting on the condition, oldest first
    /// (Python's `notify(n)`).
    pub fn notify(&self, n: usize) {
        self.cond.notify(n);
    }

    /// Wakes every waiter (Python's `notify_all()`).
    pub fn notify_all(&self) {
        self.cond.notify(usize::MAX);
    }

    /// Notifies `n` waiters and stops short of waking them, as a notifier killed before its
    /// write to the eventfd does. A test hook only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __notify_unwoken(&self, n: usize) {
        self.cond.move_limit(n);
    }
}

impl Drop for ConditionGuard<'_> {
    fn drop(&mut self) {
        self.cond.lock.release(self.hold);
    }
}
