//! The registry of this process's children that the exit handler uses: at normal exit,
//! daemon children are sent SIGTERM and every child is waited for, as Python's
//! `multiprocessing` does at interpreter exit.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, Once};

use crate::sys;

struct Tracked {
    pidfd: Arc<OwnedFd>,
    daemon: bool,
    /// The parent's end of the bootstrap socket: while it is open the child sees no EOF.
    _keepalive: Option<OwnedFd>,
}

static CHILDREN: Mutex<Option<HashMap<i32, Tracked>>> = Mutex::new(None);
static AT_EXIT: Once = Once::new();

fn table<R>(f: impl FnOnce(&mut HashMap<i32, Tracked>) -> R) -> R {
    let mut guard = CHILDREN.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Enters a running child, installing the exit handler on first use.
pub(super) fn track(pid: i32, pidfd: Arc<OwnedFd>, daemon: bool, keepalive: Option<OwnedFd>) {
    AT_EXIT.call_once(|| {
        if let Err(e) = sys::at_exit(at_exit) {
            tracing::warn!("cannot install the exit handler that joins children: {e}");
        }
    });
    table(|t| {
        t.insert(
            pid,
            Tracked {
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

/// Runs at normal exit: SIGTERM to daemon children, then wait for every child.
extern "C" fn at_exit() {
    let tracked: Vec<Tracked> = table(|t| t.drain().map(|(_, v)| v).collect());
    for t in tracked.iter().filter(|t| t.daemon) {
        let _ = sys::pidfd_send_signal(t.pidfd.as_fd(), sys::SIGTERM);
    }
    for t in &tracked {
        let _ = sys::wait_pidfd_blocking(t.pidfd.as_fd());
    }
}
