//! Waiting and waking without polling (see "Waiting, without polling" in the queue's docs):
//! a waiter counts itself on its side of the [`Header`](super::header::Header) and awaits
//! the side's eventfd; whoever changes the queue writes that eventfd only if someone waits
//! and has looked at the queue since the last write.
//!
//! A waker may be killed at any point. It records a write only after making it, so a waker
//! killed before its write leaves the write to the next waker, and one killed after it has
//! woken the waiters already: no state is left in which every later waker skips the write.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use super::header::Side;
use super::inner::Inner;
use crate::awake;
use crate::error::Result;
use crate::on_drop::OnDrop;
use crate::sync::Watch;
use crate::sys;

impl<'a> Side<'a> {
    /// Counts this task among the side's waiters until the guard drops, however the wait
    /// ends.
    pub(super) fn count_waiter(self) -> OnDrop<impl FnOnce() + Send + 'a> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let waiters = self.waiters;
        OnDrop::new(move || {
            waiters.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Counts a look before a waiter looks at the queue again, so that the next change
    /// writes the eventfd.
    pub(super) fn rearm(self) {
        self.looks.fetch_add(1, Ordering::SeqCst);
    }

    /// Wakes this side if someone waits there and has looked since the last wake-up.
    fn wake(self, fd: &OwnedFd) {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        let looks = self.looks.load(Ordering::SeqCst);
        if self.notified.load(Ordering::SeqCst) == looks {
            return;
        }
        if let Err(e) = sys::eventfd_add(fd.as_fd(), 1) {
            tracing::debug!("cannot wake a queue's waiters: {e}");
        }
        self.notified.store(looks, Ordering::SeqCst);
    }
}

impl Inner {
    pub(super) fn notify_consumers(&self) {
        self.header().consumers().wake(&self.items);
    }

    pub(super) fn notify_producers(&self) {
        self.header().producers().wake(&self.space);
    }

    /// Wakes every process awaiting a joinable queue's `join`.
    pub(super) fn wake_joiners(&self) {
        if let Some(done) = &self.done
            && let Err(e) = sys::eventfd_add(done.as_fd(), 1)
        {
            tracing::debug!("cannot wake a queue's joiners: {e}");
        }
    }

    /// Waits until `ready` holds, as a waiter of `side` (see the module docs); awake at
    /// first, without counting as a waiter, when this handle's last item was just now (see
    /// [`awake`](crate::awake)).
    pub(super) async fn wait_until(
        &self,
        fd: &AsyncFd<Arc<OwnedFd>>,
        side: Side<'_>,
        ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        self.wait_until_watching(fd, side, ready, || Ok(None)).await
    }

    /// [`wait_until`](Self::wait_until), which before each sleep also asks `watch` for a
    /// process whose exit should wake it to look again.
    pub(super) async fn wait_until_watching(
        &self,
        fd: &AsyncFd<Arc<OwnedFd>>,
        side: Side<'_>,
        mut ready: impl FnMut() -> Result<bool>,
        mut watch: impl FnMut() -> Result<Option<Arc<Watch>>>,
    ) -> Result<()> {
        if awake::spin_first(&self.recent, || Ok(ready()?.then_some(())))
            .await?
            .is_some()
        {
            return Ok(());
        }
        let _counted = side.count_waiter();
        let mut guard: Option<AsyncFdReadyGuard<'_, Arc<OwnedFd>>> = None;
        loop {
            side.rearm();
            let watched = watch()?;
            if ready()? {
                self.recent.mark();
                return Ok(());
            }
            if let Some(mut g) = guard.take() {
                g.clear_ready();
            }
            guard = match &watched {
                None => Some(fd.readable().await?),
                Some(w) => tokio::select! {
                    g = fd.readable() => Some(g?),
                    exited = w.exited() => {
                        exited?;
                        None
                    }
                },
            };
        }
    }
}
