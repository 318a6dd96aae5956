//! The registry of this process's running children: what [`active_children`] lists, and
//! what the exit handler uses: at normal exit, daemon children are sent SIGTERM and every
//! child is waited for, as Python's `multiprocessing` does at interpreter exit.
//!
//! [`active_children`]: crate::active_children

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

use crate::family::ActiveChild;
use crate::sys;

struct Tracked {
    /// The order of starts, for [`running_children`].
    seq: u64,
    name: String,
    pidfd: Arc<OwnedFd>,
    daemon: bool,
    /// The parent's end of the bootstrap socket: while it is open the child sees no EOF.
    _keepalive: Option<OwnedFd>,
}

static CHILDREN: Mutex<Option<HashMap<i32, Tracked>>> = Mutex::new(None);

/// Children whose handles were dropped while they ran, in a process without the reaper
/// thread (see `reaper.rs`): reaped by [`reap_ended`] once they end, as Python's
/// `_cleanup()` reaps at each start and at `active_children()`.
static DROPPED: Mutex<Vec<(i32, Arc<OwnedFd>)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();
static SEQ: AtomicU64 = AtomicU64::new(0);

fn table<R>(f: impl FnOnce(&mut HashMap<i32, Tracked>) -> R) -> R {
    let mut guard = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Enters a running child, installing the exit handler on first use.
pub(super) fn track(
    pid: i32,
    name: String,
    pidfd: Arc<OwnedFd>,
    daemon: bool,
    keepalive: Option<OwnedFd>,
) {
    AT_EXIT.call_once(|| {
        if let Err(e) = sys::at_exit(at_exit) {
            tracing::warn!("cannot install the exit handler that joins children: {e}");
        }
    });
    table(|t| {
        t.insert(
            pid,
            Tracked {
                seq: SEQ.fetch_add(1, Ordering::Relaxed),
                name,
                pidfd,
                daemon,
                _keepalive: keepalive,
            },
        )
    });
}

/// Removes a child that has been reaped.
pub(super) fn forget(pid: i32) {
    table(|t| t.remove(&pid));
}

/// Notes child `pid` (behind `pidfd`), whose handle was dropped while it ran, for
/// [`reap_ended`].
pub(super) fn reap_later(pid: i32, pidfd: Arc<OwnedFd>) {
    DROPPED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((pid, pidfd));
}

/// Reaps child `pid` if it has ended, and forgets it; whether it had (an error says there is
/// nothing left to reap: it was reaped elsewhere).
pub(super) fn reap_if_ended(pid: i32, pidfd: &OwnedFd) -> bool {
    let ended = !matches!(sys::try_wait_pidfd(pidfd.as_fd()), Ok(None));
    if ended {
        forget(pid);
    }
    ended
}

/// Reaps the children noted by [`reap_later`] that have ended, and forgets them.
pub(super) fn reap_ended() {
    let mut dropped = DROPPED.lock().unwrap_or_else(|p| p.into_inner());
    dropped.retain(|(pid, pidfd)| !reap_if_ended(*pid, pidfd));
}

/// In a forked child: the table is its parent's copy, which lists the parent's children.
/// Emptied without closing anything, as the child closes every inherited descriptor
/// itself; its exit handler (the parent's copy too) then finds nothing to signal or wait for.
pub(super) fn forget_inherited() {
    let inherited = table(std::mem::take);
    std::mem::forget(inherited);
    let dropped = std::mem::take(&mut *DROPPED.lock().unwrap_or_else(|p| p.into_inner()));
    std::mem::forget(dropped);
}

/// The children entered and not reaped that have not ended, in the order they were started.
pub(crate) fn running_children() -> Vec<ActiveChild> {
    reap_ended();
    let mut running: Vec<(u64, ActiveChild)> = table(|t| {
        t.iter()
            .filter(|(_, c)| !sys::readable_now(c.pidfd.as_fd()).unwrap_or(true))
            .map(|(pid, c)| {
                let child =
                    ActiveChild::new(c.name.clone(), *pid as u32, c.daemon, c.pidfd.clone());
                (c.seq, child)
            })
            .collect()
    });
    running.sort_unstable_by_key(|(seq, _)| *seq);
    running.into_iter().map(|(_, c)| c).collect()
}

/// Runs at normal exit: SIGTERM to daemon children, then wait for every child.
extern "C" fn at_exit() {
    end_children()
}

/// What a process does with its children as it ends normally: SIGTERM to daemon children,
/// then wait for every child. The exit handler does it; a `fork` child, which ends without
/// running exit handlers (they are its parent's), calls it itself.
pub(super) fn end_children() {
    let tracked: Vec<Tracked> = table(|t| t.drain().map(|(_, v)| v).collect());
    for t in tracked.iter().filter(|t| t.daemon) {
        let _ = sys::pidfd_send_signal(t.pidfd.as_fd(), sys::SIGTERM);
    }
    for t in &tracked {
        let _ = sys::wait_pidfd_blocking(t.pidfd.as_fd());
    }
}
