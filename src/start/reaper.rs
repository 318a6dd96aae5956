//! The reaper: one thread of ours, started the first time the handle of a running child is
//! dropped, that reaps such children as they end, whatever becomes of the runtime the handle
//! was dropped on. A task on that runtime would not do: a `#[tokio::test]`'s runtime, or one
//! a program builds for a while, stops right after the body that dropped a pool or a
//! `Process`, and its tasks with it, which left the children as zombies, with their pidfds
//! and bootstrap sockets open, for the rest of the program.
//!
//! The thread sleeps in poll(2) on the children's pidfds and on an eventfd that says one was
//! added; it wakes only for those, and so uses no CPU while nothing ends.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, LazyLock, Mutex};

use super::registry;
use crate::sys;

struct Reaper {
    /// Written when a child is added, so that the thread polls its pidfd too.
    added: OwnedFd,
    /// The children to reap, by pid.
    children: Mutex<Vec<(i32, Arc<OwnedFd>)>>,
}

impl Reaper {
    fn children(&self) -> std::sync::MutexGuard<'_, Vec<(i32, Arc<OwnedFd>)>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls the children and reaps each that ends, for as long as the process lives.
    fn run(&self) {
        loop {
            let watched: Vec<(i32, Arc<OwnedFd>)> = self.children().clone();
            let mut fds: Vec<BorrowedFd<'_>> = vec![self.added.as_fd()];
            fds.extend(watched.iter().map(|(_, fd)| fd.as_fd()));
            let ready = match sys::poll_readable(&fds, None) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("the reaper of dropped children stops: {e}");
                    return;
                }
            };
            if ready[0] {
                let _ = sys::eventfd_take(self.added.as_fd());
            }
            for ((pid, fd), _) in watched.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
                if registry::reap_if_ended(*pid, fd) {
                    self.children().retain(|(p, _)| p != pid);
                }
            }
        }
    }
}

static REAPER: LazyLock<Option<&'static Reaper>> = LazyLock::new(|| {
    let added = match sys::eventfd(false) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("cannot make the reaper's eventfd: {e}");
            return None;
        }
    };
    let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
        added,
        children: Mutex::new(Vec::new()),
    }));
    match std::thread::Builder::new()
        .name("tokio-mp-reaper".into())
        .spawn(move || reaper.run())
    {
        Ok(_) => Some(reaper),
        Err(e) => {
            tracing::warn!("cannot start the reaper thread: {e}");
            None
        }
    }
});

/// Reaps child `pid` (behind `pidfd`) when it ends, and forgets it in the registry. If the
/// reaper thread cannot run, the exit handler still waits for the child.
pub(super) fn reap_when_ended(pid: i32, pidfd: Arc<OwnedFd>) {
    let Some(reaper) = *REAPER else {
        return;
    };
    reaper.children().push((pid, pidfd));
    if let Err(e) = sys::eventfd_add(reaper.added.as_fd(), 1) {
        tracing::warn!("cannot wake the reaper thread: {e}");
    }
}
