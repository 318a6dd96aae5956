//! The `forkserver` start method.
//!
//! The server is this program re-executed once (a `spawn` child whose target is [`serve`]).
//! For each start the parent sends it the child's end of a fresh bootstrap socket; the
//! server forks, and the fork runs the same bootstrap as a re-executed child, without paying
//! for `exec` and the program's start-up.
//!
//! The server is started from the launcher thread, and the parent talks to it from a thread
//! of its own (see `launcher.rs`), with blocking I/O bounded by `poll` deadlines, so the
//! server serves every runtime of the program alike and outlives any of them, and a server
//! slow to answer holds up no `spawn` start. The server ends when the parent does: EOF on
//! its control socket, and the parent-death signal. It ignores SIGINT, as CPython's does: a
//! terminal's Ctrl-C goes to the whole process group, and what the program does about it is
//! the program's business. Its children get back the disposition the server had before.
//!
//! # The program is the parent of the server's children
//!
//! The server forks with `CLONE_PARENT` ([`sys::fork_sibling`]): each child's parent is the
//! program (its launcher thread, the server's own parent), not the server. So
//!
//! - the program reaps the children and reads their exit status itself, from their pidfds,
//!   as for `spawn` children: a child's exit code never depends on the server being alive;
//! - a child's parent-death signal follows the program's launcher thread, as a `spawn`
//!   child's does: children die with the program, and live on if only the server dies;
//! - a server that died (SIGKILL, the OOM killer) is noticed by the next start, which reaps
//!   it and starts a new one before asking it to fork: that start succeeds, and the children
//!   of the old server run on and are joined with their exit codes.
//!
//! The other way to let children outlive the server is to make the program a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), so that they are reparented to it when the server
//! dies. It was not chosen: the attribute is process-wide, so every orphaned descendant of
//! the program (a grandchild left behind by a shell the user ran, say) would become a
//! zombie in the program unless it reaped unknown processes, which would steal exit statuses
//! from the program's own `std::process` children. And the children still could not use a
//! parent-death signal while the server is their parent, since it fires at every
//! reparenting; they would need another link to the program's life.
//!
//! The price of `CLONE_PARENT` is a fork that bypasses `fork()`: `pthread_atfork` handlers
//! registered in the server (which has run nothing but `main` up to `init()`) do not run in
//! its children, and on kernels that do not report a thread's tid address (no
//! `CONFIG_CHECKPOINT_RESTORE`) or other C libraries than glibc, the C library's cached
//! thread id of a child's main thread stays the server's, which only matters to robust or
//! priority-inheriting pthread mutexes shared between processes.
//!
//! If the server dies after it received a request and before it answered, the start fails
//! (the server may or may not have forked): a child it forked then cannot answer its
//! bootstrap, whose socket the failed start closed, and ends without running its target,
//! unless it answered in the microseconds before.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::handle::{Child, Unclaimed};
use super::launcher::{on_fork_server_thread, on_launcher_blocking};
use super::spawn::spawn_now;
use super::{Launch, StartMethod, bootstrap, handshake};
use crate::error::{Error, Result};
use crate::sys;
use crate::task::process_entry_for;
use crate::wire::{Encoded, Fd, FrameBuf, Hello, RecvBuf, send_blocking, send_early};

/// How long the server may take to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
struct ForkRequest {
    boot: Fd,
}

#[derive(Debug, Serialize, Deserialize)]
enum ForkReply {
    /// A child of the program (see the module docs) runs on the bootstrap socket.
    Forked {
        pid: i32,
    },
    Failed(String),
}

/// The parent's handle on the server. Used on the fork server's thread only.
struct Server {
    control: OwnedFd,
    rb: RecvBuf,
    pid: i32,
    pidfd: OwnedFd,
    _boot: OwnedFd,
}

impl Server {
    /// Kills (if need be) and reaps the server.
    fn retire(self) {
        sys::kill_and_reap(self.pid);
        tracing::debug!(pid = self.pid, "fork server retired");
    }
}

/// Why one request to a server got no answer.
enum Unanswered {
    /// The request never reached the server: no child can exist, asking again is safe.
    NotSent(Error),
    /// The request was sent: the server may have forked before it failed.
    Sent(Error),
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn serve_entry(control: Fd) {
    serve(control.into_owned())
}

/// Starts the server: a `spawn` child running [`serve`]. On the launcher thread, whose
/// children die with it (see `launcher.rs`).
fn start_server() -> Result<Server> {
    let (control, control_theirs) = sys::socketpair_stream()?;
    let mut launch = Launch {
        name: "ForkServer".into(),
        identity: Vec::new(),
        entry: process_entry_for::<_, (Fd,), _>(serve_entry),
        is_async: false,
        needs_runtime: false,
        args: Encoded::new(&(Fd::from(control_theirs),))?,
        daemon: true,
        method: StartMethod::Spawn,
        start_timeout: Duration::from_secs(60),
        inherit_argv: false,
        hello: Hello::ours(),
        track_at_exit: false,
        stdio: super::Stdio::default(),
        env: super::Environment::default(),
    };
    let frame = handshake::boot_frame(&mut launch)?;
    let (boot_ours, boot_theirs) = sys::socketpair_stream()?;
    let (pid, pidfd) = spawn_now(boot_theirs, false, &super::Environment::default())?;
    handshake::handshake_blocking(&boot_ours, pid, &pidfd, &launch, frame)?;
    tracing::debug!(pid, "fork server started");
    Ok(Server {
        control,
        rb: RecvBuf::new(),
        pid,
        pidfd,
        _boot: boot_ours,
    })
}

/// Sends one fork request for `boot` and reads the answer.
fn exchange(s: &mut Server, boot: &OwnedFd) -> std::result::Result<ForkReply, Unanswered> {
    let request = sys::dup_fd(boot.as_fd())
        .map_err(Error::from)
        .and_then(|boot| {
            FrameBuf::of(&ForkRequest {
                boot: Fd::from(boot),
            })
        });
    let mut request = request.map_err(Unanswered::NotSent)?;
    send_blocking(s.control.as_fd(), &mut request).map_err(Unanswered::NotSent)?;
    let ready = sys::poll_readable(&[s.control.as_fd(), s.pidfd.as_fd()], Some(REPLY_TIMEOUT))
        .map_err(|e| Unanswered::Sent(e.into()))?;
    if !ready[0] {
        return Err(Unanswered::Sent(Error::Protocol(if ready[1] {
            "it died".into()
        } else {
            format!("it did not answer within {REPLY_TIMEOUT:?}")
        })));
    }
    s.rb.recv_blocking(s.control.as_fd())
        .and_then(|f| f.decode::<ForkReply>())
        .map_err(Unanswered::Sent)
}

/// Asks the server to fork a child on `boot`, and returns the child's pid and pidfd. Starts
/// the server on first use, and again if it died: a server found dead before the request,
/// or one that could not be sent the request, is replaced and asked in its stead. On the
/// fork server's thread.
fn request_fork(boot: OwnedFd) -> Result<(i32, OwnedFd)> {
    let mut guard = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    let mut attempt = 0;
    let reply = loop {
        attempt += 1;
        if let Some(s) = guard.take_if(|s| !matches!(sys::readable_now(s.pidfd.as_fd()), Ok(false)))
        {
            tracing::debug!(pid = s.pid, "the fork server died; starting another");
            s.retire();
        }
        let server = match guard.as_mut() {
            Some(s) => s,
            None => guard.insert(on_launcher_blocking(start_server)??),
        };
        match exchange(server, &boot) {
            Ok(reply) => break reply,
            Err(Unanswered::NotSent(e)) if attempt < 2 => {
                tracing::debug!("cannot reach the fork server ({e}); starting another");
                if let Some(s) = guard.take() {
                    s.retire();
                }
            }
            Err(Unanswered::NotSent(e) | Unanswered::Sent(e)) => {
                if let Some(s) = guard.take() {
                    s.retire();
                }
                return Err(Error::from(std::io::Error::other(format!(
                    "the fork server failed ({e}); it will be restarted on the next start"
                ))));
            }
        }
    };
    match reply {
        ForkReply::Forked { pid } if pid > 0 => {
            // Our child (CLONE_PARENT), unreaped: its pid is its own until we reap it. One we
            // cannot watch must not run.
            let pidfd = sys::pidfd_open(pid).inspect_err(|_| sys::kill_and_reap(pid))?;
            if !sys::is_own_child(pidfd.as_fd())? {
                return Err(Error::Protocol(format!(
                    "the fork server reported process {pid}, which is not a child of this process"
                )));
            }
            Ok((pid, pidfd))
        }
        ForkReply::Forked { pid } => Err(Error::Protocol(format!(
            "the fork server reported pid {pid}"
        ))),
        ForkReply::Failed(m) => Err(Error::from(std::io::Error::other(format!(
            "the fork server could not fork: {m}"
        )))),
    }
}

/// Starts a child with the `forkserver` method.
pub(super) async fn launch_forkserver(mut launch: Launch) -> Result<Child> {
    // The server's directory is this process's as it was when the server started: the
    // child enters this process's current one, as a spawned child starts in it (Python's
    // forkserver children do the same, from their preparation data).
    launch.env.default_cwd_to_current();
    let frame = handshake::boot_frame(&mut launch)?;
    let (ours, theirs) = sys::socketpair_stream()?;
    // A child whose frame waits for it could run its target and end before this side holds
    // its pidfd; where the kernel reaps children itself, it would then be gone.
    let frame = match sys::children_reaped_by_kernel() {
        true => Some(frame),
        false => send_early(ours.as_fd(), frame)?,
    };
    // The server's answer is waited for at most the start's timeout: a server that does
    // not answer (stopped, swapped out) fails the start as a child that does not answer
    // would. The request goes on meanwhile; a child the server forks after all is then
    // killed and reaped when its answer comes (an `Unclaimed` dropped).
    let ask = on_fork_server_thread(move || request_fork(theirs).map(Unclaimed::new));
    let started = match tokio::time::timeout(launch.start_timeout, ask).await {
        Ok(r) => r??,
        Err(_) => {
            return Err(Error::Start {
                name: launch.name.clone(),
                pid: 0,
                message: format!(
                    "the fork server did not fork it within {:?} (the start timeout)",
                    launch.start_timeout
                ),
            });
        }
    };
    let (pid, pidfd) = started.claim();
    let mut child = Child::new(pid, pidfd).inspect_err(|_| sys::kill_and_reap(pid))?;
    let unstarted = child.kill_unless_started();
    let keepalive = handshake::handshake(ours, &mut child, &launch, frame).await?;
    unstarted.defuse();
    child.track(&launch, Some(keepalive));
    Ok(child)
}

/// The server's loop: single-threaded, blocking, no runtime. Waits (poll) on the control
/// socket and forks on request. It has no children to reap: the program is their parent.
fn serve(control: OwnedFd) {
    // The program: the parent of the server, and of every child it forks.
    let program = sys::parent_pid();
    let sigint = match sys::ignore_sigint() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("fork server: cannot ignore SIGINT: {e}");
            return;
        }
    };
    // What the server had before serving (stdio, and the runtime `#[tokio::main]` built
    // before `init()`, whose process-wide signal pipe a child's own runtime needs) stays open
    // in its children; what it opened since (this control socket) does not.
    let mut inherited = sys::open_fds().unwrap_or_default();
    inherited.retain(|&fd| fd != control.as_raw_fd());
    let mut rb = RecvBuf::new();
    loop {
        match sys::poll_readable(&[control.as_fd()], None) {
            Ok(_) => {}
            Err(e) => {
                tracing::error!("fork server: poll failed: {e}");
                return;
            }
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
                Ok(req) => fork_one(program, req.boot.into_owned(), &inherited, &sigint),
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

fn fork_one(
    program: i32,
    boot: OwnedFd,
    inherited: &[RawFd],
    sigint: &sys::SavedSignal,
) -> ForkReply {
    match sys::fork_sibling() {
        Ok(Some(pid)) => ForkReply::Forked { pid },
        Ok(None) => {
            // The child: keep what the server inherited and the bootstrap socket, close
            // everything else (the server's control socket). The values that owned those
            // numbers are never dropped: run_boot does not return.
            let mut keep = inherited.to_vec();
            keep.push(boot.as_raw_fd());
            keep.sort_unstable();
            if let Err(e) = sys::close_all_except(&keep) {
                eprintln!("tokio-multiprocessing: forked child cannot close descriptors: {e}");
                sys::exit_now(1);
            }
            if let Err(e) = sys::restore_sigint(sigint) {
                eprintln!("tokio-multiprocessing: forked child cannot restore SIGINT: {e}");
                sys::exit_now(1);
            }
            bootstrap::run_boot(boot, program)
        }
        Err(e) => ForkReply::Failed(e.to_string()),
    }
}
