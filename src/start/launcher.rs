//! The `spawn` start method, and the launcher thread every re-executed child is started from.
//!
//! A child's parent-death signal fires when the *thread* that started it exits, not the
//! process. Tokio's blocking threads and a test harness's threads come and go, so children
//! are started from one thread of ours that lives as long as the process.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::LazyLock;
use std::sync::mpsc;

use super::children::Child;
use super::{ENV_BOOT, Launch, boot};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::frame::send_early;

type Job = Box<dyn FnOnce() + Send>;

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
        Some(tx)
    });
    LAUNCHER.as_ref()
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
        .ok_or_else(|| Error::Io(std::io::Error::other("cannot start the launcher thread")))?
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| Error::Io(std::io::Error::other("the launcher thread is gone")))?;
    rx.await.map_err(|_| {
        Error::Io(std::io::Error::other(
            "the launcher thread dropped a request",
        ))
    })
}

/// Re-executes this program with `child_end` inherited. Returns the pid and its pidfd.
/// Runs on the launcher thread (the children's parent-death signal is tied to it).
pub(super) fn spawn_now(child_end: OwnedFd, inherit_argv: bool) -> Result<(i32, OwnedFd)> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if !inherit_argv {
        argv.truncate(1);
    }
    if argv.is_empty() {
        argv.push("tokio-multiprocessing-child".into());
    }
    let boot_value = format!("{},{}", child_end.as_raw_fd(), sys::current_pid());
    let mut env: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k == ENV_BOOT {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring(kv)?);
    }
    env.push(cstring(format!("{ENV_BOOT}={boot_value}").into_bytes())?);
    let argv = argv
        .into_iter()
        .map(|a| cstring(a.as_bytes().to_vec()))
        .collect::<Result<Vec<_>>>()?;
    let pid = sys::spawn_exe(&argv, &env, child_end.as_fd())?;
    drop(child_end);
    // Its bootstrap frame may be waiting for it already: a child we cannot watch must not run.
    let pidfd = sys::pidfd_open(pid).inspect_err(|_| sys::kill_and_reap(pid))?;
    Ok((pid, pidfd))
}

fn cstring(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes)
        .map_err(|e| Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
}

/// Starts a child with the `spawn` method.
pub(super) async fn launch_spawn(mut launch: Launch) -> Result<Child> {
    let frame = boot::boot_frame(&mut launch)?;
    let (ours, theirs) = sys::socketpair_stream()?;
    let frame = send_early(ours.as_fd(), frame)?;
    let inherit_argv = launch.inherit_argv;
    let (pid, pidfd) = on_launcher(move || spawn_now(theirs, inherit_argv)).await??;
    let mut child = Child::new(pid, pidfd).inspect_err(|_| sys::kill_and_reap(pid))?;
    let keepalive = boot::handshake(ours, &mut child, &launch, frame).await?;
    if launch.track_at_exit {
        child.track(launch.daemon, Some(keepalive));
    }
    Ok(child)
}
