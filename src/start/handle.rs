//! [`Child`]: the parent's handle on one running child, awaited through its pidfd on tokio's
//! reactor (wait, poll, signal), and reaped in the background when the handle is dropped.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{Launch, launcher, reaper, registry};
use crate::error::{Error, Result};
use crate::on_drop::OnDrop;
use crate::sys;

/// A child just started on the launcher thread, on its way to the start that asked for it.
/// Should that start be dropped before it [`claim`](Unclaimed::claim)s the child (while it
/// awaits the launcher's answer), the child is killed and reaped: it would otherwise run,
/// or fail its bootstrap, with nothing holding its pid, and end as a zombie.
pub(super) struct Unclaimed(Option<(i32, OwnedFd)>);

impl Unclaimed {
    pub(super) fn new((pid, pidfd): (i32, OwnedFd)) -> Unclaimed {
        Unclaimed(Some((pid, pidfd)))
    }

    /// The child's pid and pidfd, for the start to watch.
    pub(super) fn claim(mut self) -> (i32, OwnedFd) {
        match self.0.take() {
            Some(child) => child,
            None => unreachable!("an Unclaimed is claimed once, as claim takes it"),
        }
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some((pid, pidfd)) = self.0.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), sys::SIGKILL);
            reaper::reap_when_ended(pid, Arc::new(pidfd));
        }
    }
}

/// A running child, awaited through its pidfd on tokio's reactor.
#[derive(Debug)]
pub(crate) struct Child {
    pid: i32,
    pidfd: AsyncFd<Arc<OwnedFd>>,
    /// The runtime whose reactor `pidfd` is registered with: its events wake only that
    /// runtime's tasks, and none once it is gone, so a wait on another runtime registers
    /// the pidfd there.
    runtime: tokio::runtime::Id,
    code: Option<i32>,
}

impl Child {
    /// Wraps a freshly started child. Must be called inside a tokio runtime.
    pub(crate) fn new(pid: i32, pidfd: OwnedFd) -> Result<Child> {
        Ok(Child {
            pid,
            pidfd: sys::register_shared(Arc::new(pidfd), Interest::READABLE)?,
            runtime: crate::runtime::current().id(),
            code: None,
        })
    }

    /// Enters the child in the registry of running children, if `launch` asks for it: at
    /// normal exit of this process, daemon children are sent SIGTERM and every child is
    /// waited for, as Python does. A child already reaped (one that answered its bootstrap
    /// and ended at once) needs neither.
    pub(crate) fn track(&self, launch: &Launch, keepalive: Option<OwnedFd>) {
        if self.code.is_some() || !launch.track_at_exit {
            return;
        }
        let pidfd = self.pidfd.get_ref().clone();
        registry::track(
            self.pid,
            launch.name.clone(),
            pidfd,
            launch.daemon,
            keepalive,
        );
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// A guard that kills the child when dropped, unless defused: it covers a start from the
    /// moment the child exists to the end of its bootstrap, so that a start dropped midway
    /// leaves no child running a target that nobody holds (the handle, dropped with it,
    /// then reaps the child).
    pub(super) fn kill_unless_started(&self) -> OnDrop<impl FnOnce() + use<>> {
        let pidfd = self.pidfd.get_ref().clone();
        OnDrop::new(move || {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), sys::SIGKILL);
        })
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

    /// Waits for the child to end and returns its exit code (`-N` for death by signal N), on
    /// whichever runtime it is awaited.
    ///
    /// # Cancel safety
    /// Cancel safe: the wait is a readiness wait on the pidfd; nothing is consumed until the
    /// child has ended.
    pub(crate) async fn wait(&mut self) -> Result<i32> {
        if let Some(c) = self.code {
            return Ok(c);
        }
        let here = crate::runtime::current().id();
        if here != self.runtime {
            let pidfd = self.pidfd.get_ref().clone();
            self.pidfd = sys::register_shared(pidfd, Interest::READABLE)?;
            self.runtime = here;
        }
        let _ready = self.pidfd.readable().await?;
        let code = sys::try_wait_pidfd(self.pidfd())?
            .ok_or_else(|| Error::Protocol("pidfd readable but the child has not exited".into()))?;
        self.finished(code);
        Ok(code)
    }

    fn finished(&mut self, code: i32) {
        self.code = Some(code);
        registry::forget(self.pid);
    }
}

impl Drop for Child {
    /// A child whose handle is dropped keeps running, as in Python; it is reaped when it
    /// ends, so it never lingers as a zombie: by the reaper thread where the launcher thread
    /// runs (a thread more changes nothing there), else (a `fork` child's parent, which must
    /// stay single-threaded to fork again) by a small task on the current runtime, or, if
    /// that runtime stops first, at the next start or `active_children()` (as Python's
    /// `_cleanup()`).
    fn drop(&mut self) {
        if self.code.is_some() {
            return;
        }
        if let Ok(Some(_)) = self.try_wait() {
            return;
        }
        if launcher::is_running() {
            reaper::reap_when_ended(self.pid, self.pidfd.get_ref().clone());
            return;
        }
        // Should the task below die with its runtime first, the next start or
        // `active_children()` reaps it.
        registry::reap_later(self.pid, self.pidfd.get_ref().clone());
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
                registry::forget(pid);
            }
        });
    }
}
