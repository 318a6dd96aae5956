//! Waking waiters in other processes: an eventfd per primitive, registered once with each
//! tokio runtime that waits on it, and shared by the waits of that runtime.
//!
//! # One registration, many waits
//!
//! tokio's reactor is edge-triggered: a write to the eventfd is one readiness event for every
//! epoll that watches it, and the readiness stays set until a task clears it. Were that all,
//! the tasks of a process could not share one registration: one task that found nothing for
//! itself would clear the readiness, and a second task, whose condition *had* changed but
//! which had not yet started waiting, would sleep through the event. So the registration
//! ([`Registered`]) counts the events its waits have taken: the task that clears the
//! readiness adds one to the count and wakes the others through a [`Notify`]. A wait notes
//! the count when it begins ([`Wake::listen`]), *before* it checks its condition, and each
//! [`Listener::notified`] returns once the count has moved past what it last saw, or on the
//! readiness itself: any change after the check comes with an event that either is still
//! pending on the registration or moved the count; any change before it is seen by the
//! check. No wake-up can be lost.
//!
//! A registration per wait did the same with a `dup` of the eventfd per waiting task: a
//! process with a thousand tasks waiting on one lock held a thousand descriptors, and past
//! the limit of open descriptors (often 1024) the waits failed with "Too many open files".
//! Now a process holds one per primitive and runtime, however many tasks wait.
//!
//! A registration costs a `dup` and an `epoll_ctl` to make and another `epoll_ctl` and a
//! `close` to drop, so the handle keeps the one of the runtime that waited last, for the next
//! waits in that runtime (tokio's runtime id says which). It stays registered, so it keeps
//! receiving events while no one waits; the next wait may wake once for nothing, re-check,
//! and sleep again. Waits in another runtime make a registration of their own, which the
//! handle keeps in its place; waits still using the one it replaced keep it until they end.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::error::Result;
use crate::sys;

/// The eventfd of a primitive.
#[derive(Debug)]
pub(crate) struct Wake {
    fd: OwnedFd,
    /// The registration of the runtime that waited last.
    cache: Mutex<Option<Arc<Registered>>>,
}

/// A duplicate of the eventfd on one runtime's reactor, shared by the waits of that runtime.
#[derive(Debug)]
pub(crate) struct Registered {
    runtime: tokio::runtime::Id,
    afd: AsyncFd<OwnedFd>,
    /// How many times a wait has taken (cleared) the readiness.
    taken: AtomicU64,
    /// Wakes the other waits when one takes the readiness.
    taken_notify: Notify,
}

impl Wake {
    /// A new eventfd.
    pub(crate) fn new() -> Result<Wake> {
        Ok(Wake::from_fd(sys::eventfd(false)?))
    }

    /// Adopts an eventfd received from another process.
    pub(crate) fn from_fd(fd: OwnedFd) -> Wake {
        Wake {
            fd,
            cache: Mutex::new(None),
        }
    }

    /// The descriptor, to pass to another process.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Adds `n` to the counter: every process watching it wakes.
    fn post(&self, n: u64) {
        if let Err(e) = sys::eventfd_add(self.fd.as_fd(), n) {
            // Only possible if the counter would overflow 2^64 - 2: waiters are awake anyway.
            tracing::debug!("eventfd write failed: {e}");
        }
    }

    /// Wakes every waiter of an eventfd used for its events only (not tokens): empties the
    /// counter, then adds 1.
    ///
    /// Emptying keeps the counter small; a counter left to grow made every later wake-up
    /// of a long ping-pong several times slower (measured: 7 µs round trips became 60-80 µs
    /// after a few thousand). It must happen here, right before the write: epoll re-checks
    /// readiness when it hands an event to `epoll_wait`, so a read of the counter between a
    /// write and a waiter's `epoll_wait` swallows that write's event. A read by `clear` or by
    /// a waiter could so lose a wake-up; a read right before our own write only swallows
    /// events that our write then delivers again, and every waiter re-checks the shared state
    /// after any wake-up.
    pub(crate) fn signal(&self) {
        let _ = sys::eventfd_take(self.fd.as_fd());
        self.post(1);
    }

    /// Starts a wait: the registration of the current runtime (made if there is none yet),
    /// and the count of events taken so far. Call it before checking the condition waited for.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn listen(&self) -> Result<Listener> {
        let runtime = crate::runtime::current().id();
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| std::io::Error::other("a wake-up registration's lock is poisoned"))?;
        let reg = match cache.as_ref() {
            Some(r) if r.runtime == runtime => Arc::clone(r),
            _ => {
                let dup = sys::dup_fd(self.fd.as_fd())?;
                let r = Arc::new(Registered {
                    runtime,
                    afd: sys::register_owned(dup, Interest::READABLE)?,
                    taken: AtomicU64::new(0),
                    taken_notify: Notify::new(),
                });
                *cache = Some(Arc::clone(&r));
                r
            }
        };
        drop(cache);
        let seen = reg.taken.load(SeqCst);
        Ok(Listener { reg, seen })
    }
}

/// The sleepers of a `Lock` or a `Semaphore`, whose releases write the eventfd only when
/// someone sleeps: two counters in the primitive's segment, of the times waiters were about
/// to sleep (`raised`) and of those a release has woken (`woken`).
///
/// A waiter [`raise`](Self::raise)s before each last look and sleep; a release, after it has
/// freed what it releases, wakes the sleepers if any raised since the last wake-up
/// ([`due`](Self::due)), then notes that it did ([`woke`](Self::woke)). Counters, not a count
/// of sleepers that each waiter takes back as it leaves: a waiter killed while it slept
/// stayed counted for ever, and every later release wrote the eventfd. A killed waiter's
/// raise now costs one write, by the next release. Not a flag that a release lowers either:
/// a releaser killed after it lowered the flag and before it wrote left the sleepers asleep
/// for good (no later release saw the flag up). The counters are noted only after the write,
/// so a releaser killed before it leaves the next release to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sleepers<'a> {
    pub(crate) raised: &'a AtomicU64,
    pub(crate) woken: &'a AtomicU64,
}

impl Sleepers<'_> {
    /// A waiter is about to look once more, and sleep if it finds nothing.
    pub(crate) fn raise(&self) {
        self.raised.fetch_add(1, SeqCst);
    }

    /// After a release: the count to pass to [`woke`](Self::woke) once the eventfd is
    /// written, if some waiter raised since the last wake-up.
    pub(crate) fn due(&self) -> Option<u64> {
        let raised = self.raised.load(SeqCst);
        (self.woken.load(SeqCst) < raised).then_some(raised)
    }

    /// The sleepers that raised up to `raised` were woken.
    pub(crate) fn woke(&self, raised: u64) {
        self.woken.fetch_max(raised, SeqCst);
    }
}

/// How long after a process began a change of a primitive's word a wait that finds the
/// change's wake-up missing takes that process for one that died before its write to the
/// eventfd, and writes it itself (see [`Owed`]). Sooner, the process is most likely still at
/// its write, and a wake-up written for it would cost every wait that comes right after a
/// change (processes in step) a system call and a wake-up more.
pub(crate) const LATE: Duration = Duration::from_millis(1);

/// The wake-up that the last change of a primitive's word owes its sleepers (an `Event`'s
/// set, a `Barrier`'s last arrival or break): two words in the primitive's segment, when the
/// last change began (on the machine's monotonic clock, which every process shares) and the
/// mark of the last change whose wake-up was written, noted after the write. A process
/// killed between its change and its write leaves an old mark, and the next call that finds
/// it so writes the wake-up itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owed<'a> {
    pub(crate) woken: &'a AtomicU32,
    pub(crate) changed_at: &'a AtomicU64,
}

impl Owed<'_> {
    /// A change of the word is about to be made: notes when.
    pub(crate) fn changing(&self) {
        self.changed_at
            .store(sys::machine_monotonic_nanos(), SeqCst);
    }

    /// Writes the wake-up of the change marked `mark` on `wake`, then notes it.
    pub(crate) fn wake(&self, wake: &Wake, mark: u32) {
        wake.signal();
        self.woken.store(mark, SeqCst);
    }

    /// Writes the wake-up of the change marked `mark` if its maker died before it did:
    /// `at_once`, or (for a wait) only once [`LATE`] has passed since the change began.
    pub(crate) fn wake_if_missed(&self, wake: &Wake, mark: u32, at_once: bool) {
        if self.woken.load(SeqCst) != mark && (at_once || self.late()) {
            self.wake(wake, mark);
        }
    }

    /// Whether [`LATE`] has passed since the last change began.
    fn late(&self) -> bool {
        let since = sys::machine_monotonic_nanos().saturating_sub(self.changed_at.load(SeqCst));
        since >= LATE.as_nanos() as u64
    }
}

/// One wait on a [`Wake`]: the shared registration and the count of events it last saw.
#[derive(Debug)]
pub(crate) struct Listener {
    reg: Arc<Registered>,
    seen: u64,
}

impl Listener {
    /// Waits for an event after the last one this wait saw (after [`Wake::listen`], the first
    /// time). The caller re-checks its condition after each return; a return may be for
    /// nothing.
    ///
    /// Cancel safe: an event this wait takes is counted for the others before it returns.
    pub(crate) async fn notified(&mut self) -> Result<()> {
        let reg = &*self.reg;
        loop {
            let other = reg.taken_notify.notified();
            tokio::pin!(other);
            // Enabled before the count is read: a take after the read wakes it.
            other.as_mut().enable();
            let now = reg.taken.load(SeqCst);
            if now != self.seen {
                self.seen = now;
                return Ok(());
            }
            tokio::select! {
                r = reg.afd.readable() => {
                    let mut g = r?;
                    g.clear_ready();
                    self.seen = reg.taken.fetch_add(1, SeqCst).wrapping_add(1);
                    reg.taken_notify.notify_waiters();
                    return Ok(());
                }
                () = &mut other => {}
            }
        }
    }
}

/// A pidfd on the reactor: readable once the process has exited.
#[derive(Debug)]
pub(crate) struct Watch {
    /// The process's owner word (see [`sys::cached_owner`]), or a bare pid.
    pub(crate) owner: u64,
    afd: AsyncFd<OwnedFd>,
}

impl Watch {
    /// Watches the process that `owner` names; `Ok(None)` if it has ended and been reaped.
    pub(crate) fn open(owner: u64) -> Result<Option<Watch>> {
        let Some(fd) = sys::owner_pidfd(owner)? else {
            return Ok(None);
        };
        Ok(Some(Watch {
            owner,
            afd: sys::register_owned(fd, Interest::READABLE)?,
        }))
    }

    /// Watches the process that `owner` names, with a watch shared by every wait of this
    /// runtime that watches it now: a thousand tasks waiting on one lock holder hold one
    /// pidfd, not a thousand. `Ok(None)` if the process has ended and been reaped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn shared(owner: u64) -> Result<Option<Arc<Watch>>> {
        type Shared = Vec<(tokio::runtime::Id, Weak<Watch>)>;
        static SHARED: Mutex<Shared> = Mutex::new(Vec::new());
        let runtime = crate::runtime::current().id();
        let mut shared = SHARED
            .lock()
            .map_err(|_| std::io::Error::other("the shared watches' lock is poisoned"))?;
        shared.retain(|(_, w)| w.strong_count() > 0);
        let found = shared
            .iter()
            .filter(|(id, _)| *id == runtime)
            .filter_map(|(_, w)| w.upgrade())
            .find(|w| w.owner == owner);
        if let Some(w) = found {
            return Ok(Some(w));
        }
        let Some(w) = Watch::open(owner)?.map(Arc::new) else {
            return Ok(None);
        };
        shared.push((runtime, Arc::downgrade(&w)));
        Ok(Some(w))
    }

    /// Resolves once the process has exited.
    pub(crate) async fn exited(&self) -> Result<()> {
        let _g = self.afd.readable().await?;
        Ok(())
    }

    /// Whether the process has exited by now.
    pub(crate) fn has_exited(&self) -> Result<bool> {
        Ok(sys::readable_now(self.afd.get_ref().as_fd())?)
    }
}
