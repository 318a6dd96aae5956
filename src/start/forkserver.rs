//! The `forkserver` start method.
//!
//! The server is this program re-executed once (a `spawn` child whose target is [`serve`]).
//! For each start the parent sends it the child's end of a fresh bootstrap socket; the
//! server forks, and the fork runs the same bootstrap as a re-executed child, without paying
//! for `exec` and the program's start-up. The server reaps its children itself and writes
//! each one's exit code to a pipe whose read end the parent holds.
//!
//! The parent talks to the server from the launcher thread, with blocking I/O bounded by
//! `poll` deadlines, so the server serves every runtime of the program alike and outlives
//! any of them. The server ends when the parent does: EOF on its control socket, and the
//! parent-death signal. Its children die with it (their parent-death signal), so none
//! outlives the parent.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::children::{Child, ExitSource};
use super::launcher::{on_launcher, spawn_now};
use super::{Launch, StartMethod, boot, child};
use crate::error::{Error, Result};
use crate::sys;
use crate::task::process_entry_for;
use crate::wire::frame::{send_blocking, send_early};
use crate::wire::{Encoded, Fd, FrameBuf, Hello, RecvBuf};

/// How long the server may take to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct ForkRequest {
    boot: Fd,
}

#[derive(Debug, Serialize, Deserialize)]
enum ForkReply {
    Forked { pid: i32, pidfd: Fd, status: Fd },
    Failed(String),
}

/// The parent's handle on the server. Used on the launcher thread only.
struct Server {
    control: OwnedFd,
    rb: RecvBuf,
    pid: i32,
    pidfd: OwnedFd,
    _boot: OwnedFd,
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn serve_entry(control: Fd) {
    serve(control.into_owned())
}

/// Starts the server: a `spawn` child running [`serve`]. On the launcher thread.
fn start_server() -> Result<Server> {
    let (control, control_theirs) = sys::socketpair_stream()?;
    let mut launch = Launch {
        name: "ForkServer".into(),
        entry: process_entry_for::<_, (Fd,), _>(serve_entry),
        is_async: false,
        args: Encoded::new(&(Fd::from(control_theirs),))?,
        daemon: true,
        method: StartMethod::Spawn,
        start_timeout: Duration::from_secs(60),
        inherit_argv: false,
        hello: Hello::ours(),
        track_at_exit: false,
    };
    let frame = boot::boot_frame(&mut launch)?;
    let (boot_ours, boot_theirs) = sys::socketpair_stream()?;
    let (pid, pidfd) = spawn_now(boot_theirs, false)?;
    boot::handshake_blocking(&boot_ours, pid, &pidfd, &launch, frame)?;
    tracing::debug!(pid, "fork server started");
    Ok(Server {
        control,
        rb: RecvBuf::new(),
        pid,
        pidfd,
        _boot: boot_ours,
    })
}

/// Asks the server (started on first use) to fork a child on `boot`. Returns the child's
/// pid, its pidfd and the read end of its status pipe. On the launcher thread.
fn request_fork(boot: OwnedFd) -> Result<(i32, OwnedFd, OwnedFd)> {
    let mut guard = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let server = match guard.as_mut() {
        Some(s) => s,
        None => guard.insert(start_server()?),
    };
    let exchange = |s: &mut Server| -> Result<ForkReply> {
        send_blocking(
            s.control.as_fd(),
            &mut FrameBuf::of(&ForkRequest {
                boot: Fd::from(boot),
            })?,
        )?;
        let ready = sys::poll_readable(&[s.control.as_fd(), s.pidfd.as_fd()], Some(REPLY_TIMEOUT))?;
        if !ready[0] {
            return Err(Error::Protocol(if ready[1] {
                "the fork server died".into()
            } else {
                format!("the fork server did not answer within {REPLY_TIMEOUT:?}")
            }));
        }
        s.rb.recv_blocking(s.control.as_fd())?.decode::<ForkReply>()
    };
    match exchange(server) {
        Ok(ForkReply::Forked { pid, pidfd, status }) => {
            Ok((pid, pidfd.into_owned(), status.into_owned()))
        }
        Ok(ForkReply::Failed(m)) => Err(Error::Io(std::io::Error::other(format!(
            "the fork server could not fork: {m}"
        )))),
        Err(e) => {
            if let Some(s) = guard.take() {
                sys::kill_and_reap(s.pid);
            }
            Err(Error::Io(std::io::Error::other(format!(
                "the fork server failed ({e}); it will be restarted on the next start"
            ))))
        }
    }
}

/// Starts a child with the `forkserver` method.
pub(super) async fn launch_forkserver(mut launch: Launch) -> Result<Child> {
    let frame = boot::boot_frame(&mut launch)?;
    let (ours, theirs) = sys::socketpair_stream()?;
    let frame = send_early(ours.as_fd(), frame)?;
    let (pid, pidfd, status) = on_launcher(move || request_fork(theirs)).await??;
    // A child we cannot watch must not run (the server reaps it).
    let kill = |e: &Error| {
        tracing::debug!("cannot watch fork-server child {pid}: {e}");
        let _ = sys::pidfd_send_signal(pidfd.as_fd(), sys::SIGKILL);
    };
    let status = sys::set_nonblocking(status.as_fd(), true)
        .map_err(Error::from)
        .and_then(|()| Ok(sys::register_owned(status, tokio::io::Interest::READABLE)?))
        .inspect_err(kill)?;
    let watch = sys::dup_fd(pidfd.as_fd())
        .map_err(Error::from)
        .inspect_err(kill)?;
    let mut child = Child::new(pid, watch, ExitSource::Pipe(status)).inspect_err(kill)?;
    let keepalive = boot::handshake(ours, &mut child, &launch, frame).await?;
    if launch.track_at_exit {
        child.track(launch.daemon, Some(keepalive));
    }
    Ok(child)
}

/// A child of the server, not yet reaped.
struct Forked {
    pid: i32,
    pidfd: OwnedFd,
    status: OwnedFd,
}

/// The server's loop: single-threaded, blocking, no runtime. Waits (poll) on the control
/// socket and on every child's pidfd; forks on request, reaps and reports on exit.
fn serve(control: OwnedFd) {
    let me = sys::current_pid();
    // What the server had before serving (stdio, and the runtime `#[tokio::main]` built
    // before `init()`, whose process-wide signal pipe a child's own runtime needs) stays open
    // in its children; what it opened since (this control socket, other children's pidfds
    // and status pipes) does not.
    let mut inherited = sys::open_fds().unwrap_or_default();
    inherited.retain(|&fd| fd != control.as_raw_fd());
    let mut rb = RecvBuf::new();
    let mut kids: Vec<Forked> = Vec::new();
    loop {
        let mut fds: Vec<BorrowedFd<'_>> = vec![control.as_fd()];
        fds.extend(kids.iter().map(|k| k.pidfd.as_fd()));
        let ready = match sys::poll_readable(&fds, None) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("fork server: poll failed: {e}");
                return;
            }
        };
        for i in (0..kids.len()).rev() {
            if ready[i + 1] {
                let k = kids.swap_remove(i);
                let code = sys::wait_pid_blocking(k.pid).unwrap_or(i32::MIN);
                let _ = sys::write_all_fd(k.status.as_fd(), &code.to_le_bytes());
            }
        }
        if !ready[0] {
            continue;
        }
        match rb.read_once(control.as_fd()) {
            Ok(0) | Err(_) => return, // the parent is gone
            Ok(_) => {}
        }
        loop {
            let frame = match rb.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!("fork server: bad request: {e}");
                    return;
                }
            };
            let reply = match frame.decode::<ForkRequest>() {
                Ok(req) => fork_one(me, req.boot.into_owned(), &inherited, &mut kids),
                Err(e) => ForkReply::Failed(e.to_string()),
            };
            match FrameBuf::of(&reply) {
                Ok(mut f) => {
                    if send_blocking(control.as_fd(), &mut f).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("fork server: cannot encode a reply: {e}"),
            }
        }
    }
}

fn fork_one(me: i32, boot: OwnedFd, inherited: &[RawFd], kids: &mut Vec<Forked>) -> ForkReply {
    let pid = match sys::fork_in_server() {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            // The child: keep what the server inherited and the bootstrap socket, close
            // everything else (the server's control socket, other children's pidfds and
            // pipes). The values that owned those numbers are never dropped: run_boot does
            // not return.
            let mut keep = inherited.to_vec();
            keep.push(boot.as_raw_fd());
            keep.sort_unstable();
            if let Err(e) = sys::close_all_except(&keep) {
                eprintln!("tokio-multiprocessing: forked child cannot close descriptors: {e}");
                sys::exit_now(1);
            }
            child::run_boot(boot, me)
        }
        Err(e) => return ForkReply::Failed(e.to_string()),
    };
    drop(boot);
    let opened = sys::pidfd_open(pid).and_then(|pidfd| Ok((pidfd, sys::pipe_cloexec()?)));
    match opened {
        Ok((pidfd, (status_r, status_w))) => {
            let reply = match sys::dup_fd(pidfd.as_fd()) {
                Ok(dup) => ForkReply::Forked {
                    pid,
                    pidfd: Fd::from(dup),
                    status: Fd::from(status_r),
                },
                Err(e) => {
                    // The client will not know of it: it must not run (the loop reaps it).
                    sys::kill_pid(pid);
                    ForkReply::Failed(e.to_string())
                }
            };
            kids.push(Forked {
                pid,
                pidfd,
                status: status_w,
            });
            reply
        }
        Err(e) => {
            sys::kill_and_reap(pid);
            ForkReply::Failed(e.to_string())
        }
    }
}
