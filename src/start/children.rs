//! The children of this process: waiting for them on their pidfds, and the table the exit
//! handler uses to terminate daemons and wait for the rest.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Once};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::sys;

/// A running child, awaited through its pidfd on tokio's reactor.
#[derive(Debug)]
pub(crate) struct Child {
    pid: i32,
    pidfd: AsyncFd<Arc<OwnedFd>>,
    code: Option<i32>,
}

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

impl Child {
    /// Wraps a freshly started child. Must be called inside a tokio runtime.
    pub(crate) fn new(pid: i32, pidfd: OwnedFd) -> Result<Child> {
        Ok(Child {
            pid,
            pidfd: sys::register_shared(Arc::new(pidfd), Interest::READABLE)?,
            code: None,
        })
    }

    /// Enters the child in the exit handler's table: at normal exit of this process, daemon
    /// children are sent SIGTERM and every child is waited for, as Python does. A child
    /// already reaped (one that answered its bootstrap and ended at once) needs neither.
    pub(crate) fn track(&self, daemon: bool, keepalive: Option<OwnedFd>) {
        if self.code.is_some() {
            return;
        }
        AT_EXIT.call_once(|| {
            if let Err(e) = sys::at_exit(at_exit) {
                tracing::warn!("cannot install the exit handler that joins children: {e}");
            }
        });
        table(|t| {
            t.insert(
                self.pid,
                Tracked {
                    pidfd: self.pidfd.get_ref().clone(),
                    daemon,
                    _keepalive: keepalive,
                },
            )
        });
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.get_ref().as_fd()
    }

    /// The exit code, if the child is known to have ended (by an earlier wait or check).
    pub(crate) fn known_exitcode(&self) -> Option<i32> {
        self.code
    }

    /// Sends a signal, unless the child was already reaped (Python's `terminate()` on a
    /// finished process does nothing).
    pub(crate) fn signal(&self, signal: i32) -> Result<()> {
        if self.code.is_some() {
            return Ok(());
        }
        Ok(sys::pidfd_send_signal(self.pidfd(), signal)?)
    }

    /// The exit code if the child has ended, without waiting.
    pub(crate) fn try_wait(&mut self) -> Result<Option<i32>> {
        if self.code.is_some() {
            return Ok(self.code);
        }
        let code = sys::try_wait_pidfd(self.pidfd())?;
        if let Some(c) = code {
            self.finished(c);
        }
        Ok(code)
    }

    /// Waits for the child to end and returns its exit code (`-N` for death by signal N).
    ///
    /// # Cancel safety
    /// Cancel safe: the wait is a readiness wait on the pidfd; nothing is consumed until the
    /// child has ended.
    pub(crate) async fn wait(&mut self) -> Result<i32> {
        if let Some(c) = self.code {
            return Ok(c);
        }
        let _ready = self.pidfd.readable().await?;
        let code = sys::try_wait_pidfd(self.pidfd())?
            .ok_or_else(|| Error::Protocol("pidfd readable but the child has not exited".into()))?;
        self.finished(code);
        Ok(code)
    }

    fn finished(&mut self, code: i32) {
        self.code = Some(code);
        table(|t| t.remove(&self.pid));
    }
}

impl Drop for Child {
    /// A child whose handle is dropped keeps running, as in Python; it is reaped when it
    /// ends (by a small task on the current runtime), so it never lingers as a zombie.
    fn drop(&mut self) {
        if self.code.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: the exit handler still knows the child and waits for it.
            return;
        };
        let pid = self.pid;
        // A duplicate: this handle's own registration of the pidfd is still in the reactor
        // until its fields drop, and epoll refuses a second registration of one number.
        let Ok(pidfd) = sys::dup_fd(self.pidfd()) else {
            return; // the exit handler still knows the child
        };
        handle.spawn(async move {
            let Ok(fd) = sys::register_owned(pidfd, Interest::READABLE) else {
                return;
            };
            if fd.readable().await.is_ok() {
                let _ = sys::try_wait_pidfd(fd.get_ref().as_fd());
                table(|t| t.remove(&pid));
            }
        });
    }
}

/// Runs at normal exit: SIGTERM to daemon children, then wait for every child, as Python's
/// `multiprocessing` does at interpreter exit.
extern "C" fn at_exit() {
    let tracked: Vec<Tracked> = table(|t| t.drain().map(|(_, v)| v).collect());
    for t in tracked.iter().filter(|t| t.daemon) {
        let _ = sys::pidfd_send_signal(t.pidfd.as_fd(), sys::SIGTERM);
    }
    for t in &tracked {
        let _ = sys::wait_pidfd_blocking(t.pidfd.as_fd());
    }
}
