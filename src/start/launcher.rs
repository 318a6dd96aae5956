//! The launcher thread: one thread of ours, living as long as the process, that every
//! re-executed child (a `spawn` child, the fork server) is started from, and that talks to the
//! fork server.
//!
//! A child's parent-death signal fires when the *thread* that started it exits, not the
//! process. Tokio's blocking threads and a test harness's threads come and go, so children
//! are started from this thread instead.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Whether the launcher thread runs (then this process has more than one thread for good,
/// and `fork` is refused in it).
static RUNNING: AtomicBool = AtomicBool::new(false);

fn launcher() -> Option<&'static mpsc::Sender<Job>> {
    static LAUNCHER: LazyLock<Option<mpsc::Sender<Job>>> = LazyLock::new(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tokio-mp-launcher".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .ok()?;
        RUNNING.store(true, Ordering::Release);
        Some(tx)
    });
    LAUNCHER.as_ref()
}

/// Whether the launcher thread runs: a thread of ours more does not change what this
/// process may do.
pub(super) fn is_running() -> bool {
    RUNNING.load(Ordering::Acquire)
}

/// Starts the launcher thread now, if it is not running: its creation overlaps the
/// preparation of the starts about to come, instead of delaying the first of them.
pub(crate) fn warm_launcher() {
    let _ = launcher();
}

/// Runs `f` on the launcher thread and returns its result.
pub(super) async fn on_launcher<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    launcher()
        .ok_or_else(|| Error::from(std::io::Error::other("cannot start the launcher thread")))?
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| Error::from(std::io::Error::other("the launcher thread is gone")))?;
    rx.await.map_err(|_| {
        Error::from(std::io::Error::other(
            "the launcher thread dropped a request",
        ))
    })
}
