//! The `forkserver` start method.
//!
//! The server is this program re-executed once (a `spawn` child whose target is [`serve`]).
//! For each start the parent sends it the child's end of a fresh bootstrap socket; the
//! server forks, and the fork runs the same bootstrap as a re-executed child, without paying
//! for `exec` and the program's start-up. The server reaps its children itself and writes
//! each one's exit code to a pipe whose read end the parent holds.
//!
//! The server ends when the parent does: EOF on its control socket, and the parent-death
//! signal. Its children die with it (their parent-death signal), so none outlives the parent.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::children::{Child, ExitSource};
use super::{Launch, StartMethod, boot, child, launcher};
use crate::error::{Error, Result};
use crate::sys;
use crate::task::process_entry_for;
use crate::wire::{
    FrameBuf, FrameReader, FrameWriter, Hello, PassFd, RecvBuf, framed, into_stream,
};

#[derive(Debug, Serialize, Deserialize)]
struct ForkRequest {
    boot: PassFd,
}

#[derive(Debug, Serialize, Deserialize)]
enum ForkReply {
    Forked {
        pid: i32,
        pidfd: PassFd,
        status: PassFd,
    },
    Failed(String),
}

struct Server {
    rd: FrameReader,
    wr: FrameWriter,
    _child: Child,
}

static SERVER: Mutex<Option<Server>> = Mutex::const_new(None);

async fn start_server() -> Result<Server> {
    let (ours, theirs) = sys::socketpair_stream()?;
    let launch = Launch {
        name: "ForkServer".into(),
        entry: process_entry_for::<_, (PassFd,), _>(serve_entry),
        args: crate::wire::Encoded::new(&(PassFd(theirs),))?,
        daemon: true,
        method: StartMethod::Spawn,
        start_timeout: Duration::from_secs(60),
        inherit_argv: false,
        hello: Hello::ours(),
        track_at_exit: false,
    };
    let child = launcher::launch_spawn(launch).await?;
    let (rd, wr) = framed(into_stream(ours)?);
    Ok(Server {
        rd,
        wr,
        _child: child,
    })
}

fn serve_entry(control: PassFd) {
    serve(control.0)
}

/// Asks the server (started on first use) to fork a child on `boot`. Returns the child's
/// pid, its pidfd and the read end of its status pipe.
async fn request_fork(boot: OwnedFd) -> Result<(i32, OwnedFd, OwnedFd)> {
    // The exchange runs in a task of its own: if the caller is cancelled midway, the request
    // and its reply still pair up, and the server stays usable.
    let task = tokio::spawn(async move {
        let mut guard = SERVER.lock().await;
        let server = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(start_server().await?),
        };
        let exchange = async {
            server
                .wr
                .send(&mut FrameBuf::of(&ForkRequest { boot: PassFd(boot) })?)
                .await?;
            server.rd.recv().await?.decode::<ForkReply>()
        };
        match exchange.await {
            Ok(ForkReply::Forked { pid, pidfd, status }) => Ok((pid, pidfd.0, status.0)),
            Ok(ForkReply::Failed(m)) => Err(Error::Io(std::io::Error::other(format!(
                "the fork server could not fork: {m}"
            )))),
            Err(e) => {
                *guard = None;
                Err(Error::Io(std::io::Error::other(format!(
                    "the fork server is gone ({e}); it will be restarted on the next start"
                ))))
            }
        }
    });
    task.await
        .map_err(|e| Error::Io(std::io::Error::other(format!("fork request failed: {e}"))))?
}

/// Starts a child with the `forkserver` method.
pub(super) async fn launch_forkserver(mut launch: Launch) -> Result<Child> {
    let (ours, theirs) = sys::socketpair_stream()?;
    let (pid, pidfd, status) = request_fork(theirs).await?;
    sys::set_nonblocking(status.as_fd(), true)?;
    let mut child = Child::new(
        pid,
        pidfd,
        ExitSource::Pipe(sys::register_owned(status, tokio::io::Interest::READABLE)?),
    )?;
    let keepalive = boot::handshake(ours, &mut child, &mut launch).await?;
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
                Ok(req) => fork_one(me, req.boot.0, &mut kids),
                Err(e) => ForkReply::Failed(e.to_string()),
            };
            match FrameBuf::of(&reply) {
                Ok(mut f) => {
                    if crate::wire::frame::send_blocking(control.as_fd(), &mut f).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!("fork server: cannot encode a reply: {e}"),
            }
        }
    }
}

fn fork_one(me: i32, boot: OwnedFd, kids: &mut Vec<Forked>) -> ForkReply {
    let pid = match sys::fork_in_server() {
        Ok(Some(pid)) => pid,
        Ok(None) => {
            // The child: keep stdio and the bootstrap socket, close everything else (the
            // server's control socket, other children's pidfds and pipes). The values that
            // owned those numbers are never dropped: run_boot does not return.
            let raw = std::os::fd::AsRawFd::as_raw_fd(&boot);
            if let Err(e) = sys::close_all_except(&[raw]) {
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
                    pidfd: PassFd(dup),
                    status: PassFd(status_r),
                },
                Err(e) => ForkReply::Failed(e.to_string()),
            };
            kids.push(Forked {
                pid,
                pidfd,
                status: status_w,
            });
            reply
        }
        Err(e) => {
            sys::kill_pid(pid);
            let _ = sys::wait_pid_blocking(pid);
            ForkReply::Failed(e.to_string())
        }
    }
}
