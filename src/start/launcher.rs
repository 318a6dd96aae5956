//! The launcher thread: one thread of ours, living as long as the process, that every
//! re-executed child (a `spawn` child, the fork server) is started from; and the fork
//! server's thread, which talks to the fork server.
//!
//! A child's parent-death signal fires when the *thread* that started it exits, not the
//! process. Tokio's blocking threads and a test harness's threads come and go, so children
//! are started from this thread instead.
//!
//! The requests to the fork server go through a thread of their own: a server that is slow
//! to answer (stopped, swapped out) then holds up only the starts that need it, never a
//! `spawn` start (a pool's new worker, a manager) waiting behind it on the launcher thread.
//! The server's children are still the launcher thread's (see `forkserver.rs`), whichever
//! thread asked for them.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send>;

/// Whether the launcher thread runs (then this process has more than one thread for good,
/// and `fork` is refused in it).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// A thread of ours, named `name`, that runs the jobs sent to it one after another for the
/// rest of the process's life; `None` if it cannot be started.
fn job_thread(name: &str) -> Option<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .ok()?;
    RUNNING.store(true, Ordering::Release);
    Some(tx)
}

fn launcher() -> Option<&'static mpsc::Sender<Job>> {
    static LAUNCHER: LazyLock<Option<mpsc::Sender<Job>>> =
        LazyLock::new(|| job_thread("tokio-mp-launcher"));
    LAUNCHER.as_ref()
}

fn fork_server_thread() -> Option<&'static mpsc::Sender<Job>> {
    static FORK_SERVER: LazyLock<Option<mpsc::Sender<Job>>> =
        LazyLock::new(|| job_thread("tokio-mp-forkserver"));
    FORK_SERVER.as_ref()
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
    on_thread(launcher(), "launcher", f).await
}

/// Runs `f` on the fork server's thread and returns its result.
pub(super) async fn on_fork_server_thread<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    on_thread(fork_server_thread(), "fork server's", f).await
}

/// Runs `f` on the launcher thread from another thread of ours, waiting for its result
/// (the fork server's thread, to start a server).
pub(super) fn on_launcher_blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    send_job(launcher(), "launcher", move || {
        let _ = tx.send(f());
    })?;
    rx.recv().map_err(|_| dropped("launcher"))
}

async fn on_thread<R: Send + 'static>(
    thread: Option<&'static mpsc::Sender<Job>>,
    what: &'static str,
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    send_job(thread, what, move || {
        let _ = tx.send(f());
    })?;
    rx.await.map_err(|_| dropped(what))
}

fn send_job(
    thread: Option<&'static mpsc::Sender<Job>>,
    what: &str,
    job: impl FnOnce() + Send + 'static,
) -> Result<()> {
    thread
        .ok_or_else(|| std::io::Error::other(format!("cannot start the {what} thread")))?
        .send(Box::new(job))
        .map_err(|_| Error::from(std::io::Error::other(format!("the {what} thread is gone"))))
}

fn dropped(what: &str) -> Error {
    Error::from(std::io::Error::other(format!(
        "the {what} thread dropped a request"
    )))
}
