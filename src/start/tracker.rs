//! The segment tracker: a process that removes the named shared memory segments whose
//! creator ended without removing them (killed by a signal, or ended without dropping the
//! handle), as Python's resource tracker does.
//!
//! A process's first tracked segment starts its tracker: this program re-executed with one
//! end of a packet socket pair, which forks at once, so that the tracker is no child of the
//! program and the process started exits (the creator reaps it). The tracker leaves the
//! program's session and ignores the signals sent to a whole program (a terminal's, a
//! service manager's SIGTERM): it ends when the creator does. The creator keeps the other
//! end, close-on-exec, and tells the tracker of each segment as it makes it (`+`, a number
//! and the name, with the segment's descriptor), and again once its handle removed or kept
//! the name or went (`-` and the number).
//!
//! When every process holding the creator's end has ended, however it ended, the tracker
//! reads the end of the socket. It removes each name it still holds that still names the
//! segment it was given, not one someone made again under that name, says so on standard
//! error (as Python's tracker warns of "leaked shared_memory objects"), and exits.
//!
//! The tracker holds a descriptor of each segment it holds, as many as its creator has
//! made and not removed, so it raises its limit of open descriptors as far as it may when
//! it starts: its creator may raise its own later (or have lowered its soft limit for a
//! while), and a tracker kept to the limit its creator had at its first segment let the
//! segments past it go untracked.
//!
//! A forked child has its parent's copy of the creator's state; the first segment it makes
//! starts a tracker of its own (the inherited socket was closed by the fork start method,
//! and its number may now be another file's, so it is never used or closed).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use super::spawn::{cstring, environment_for_exec};
use crate::error::Result;
use crate::sys;

/// The environment variable that makes a re-executed process the tracker:
/// `"<fd>,<creator pid>"`.
pub(crate) const ENV_TRACKER: &str = "TOKIO_MULTIPROCESSING_TRACKER";

/// A message: the tag, the segment's number, then (for `+`) its name.
const HEAD: usize = 9;

/// Room for the longest message: a name has at most 251 bytes.
const MOST: usize = HEAD + 256;

/// The tracker of this process, once a segment started it.
struct Link {
    /// The process that started it; in another (a forked child), it is not this process's.
    owner: i32,
    sock: OwnedFd,
    next: u64,
}

enum State {
    None,
    Running(Link),
    /// The tracker could not start (warned once); names are not tracked.
    Failed {
        owner: i32,
    },
}

static STATE: Mutex<State> = Mutex::new(State::None);

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A segment the tracker holds for this process: dropping it tells the tracker to forget it.
#[derive(Debug)]
pub(crate) struct Tracked {
    id: u64,
    owner: i32,
}

/// Starts this process's tracker if it has none, before the process makes a segment: a
/// creator killed while it makes its first segment then leaves no name behind (starting a
/// tracker takes a process start, a millisecond or more, and the segment is named only once
/// the tracker holds it, where the system can name a segment after making it). If it cannot
/// start, a warning says so once, and [`track`] finds it failed.
pub(crate) fn start_before_a_segment() {
    let _ = running_link(&mut state(), sys::current_pid());
}

/// Tells this process's tracker (started now if it has none) of the segment named `name`,
/// behind `segment`, which this process just made. `None` if there is no tracker to tell
/// (it could not start: a warning said so once).
pub(crate) fn track(name: &str, segment: BorrowedFd<'_>) -> Option<Tracked> {
    let me = sys::current_pid();
    let mut state = state();
    // A second time with a new tracker if the first is found gone (someone killed it).
    for attempt in 0..2 {
        let link = running_link(&mut state, me)?;
        let id = link.next;
        link.next += 1;
        let mut message = message(b'+', id);
        message.extend_from_slice(name.as_bytes());
        match sys::send_with_fds(link.sock.as_fd(), &message, &[segment.as_raw_fd()]) {
            Ok(_) => return Some(Tracked { id, owner: me }),
            Err(e) if attempt == 0 => {
                tracing::warn!("the shared memory segment tracker is gone ({e}); starting another");
                *state = State::None;
            }
            Err(e) => {
                warn_untracked(&e);
                *state = State::Failed { owner: me };
            }
        }
    }
    None
}

/// This process's link to its tracker, started now if it has none; `None` if it cannot
/// start.
fn running_link(state: &mut State, me: i32) -> Option<&mut Link> {
    let ours = match state {
        State::Running(link) => link.owner == me,
        State::Failed { owner } if *owner == me => return None,
        State::Failed { .. } | State::None => false,
    };
    if !ours {
        if let State::Running(inherited) = std::mem::replace(state, State::None) {
            // A forked child's copy of its parent's link: the number is no longer the
            // socket's, so it is neither used nor closed.
            std::mem::forget(inherited.sock);
        }
        *state = match start(me) {
            Ok(sock) => State::Running(Link {
                owner: me,
                sock,
                next: 0,
            }),
            Err(e) => {
                warn_untracked(&e);
                State::Failed { owner: me }
            }
        };
    }
    match state {
        State::Running(link) => Some(link),
        State::Failed { .. } | State::None => None,
    }
}

fn warn_untracked(e: &dyn std::fmt::Display) {
    tracing::warn!(
        "cannot start the shared memory segment tracker ({e}): a named segment whose creator is killed keeps its name"
    );
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let State::Running(link) = &*state()
            && link.owner == self.owner
            && self.owner == sys::current_pid()
        {
            let _ = sys::send_with_fds(link.sock.as_fd(), &message(b'-', self.id), &[]);
        }
    }
}

fn message(tag: u8, id: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(MOST);
    m.push(tag);
    m.extend_from_slice(&id.to_le_bytes());
    m
}

/// Starts the tracker of process `me`; returns our end of its socket.
fn start(me: i32) -> Result<OwnedFd> {
    sys::keep_constructor();
    let (ours, theirs) = sys::socketpair_seqpacket()?;
    let fd = sys::spawned_fd(theirs.as_raw_fd());
    let mut env = environment_for_exec(&[])?;
    env.push(cstring(format!("{ENV_TRACKER}={fd},{me}").into_bytes())?);
    let argv0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "tokio-multiprocessing-tracker".into());
    let argv = [cstring(
        std::os::unix::ffi::OsStrExt::as_bytes(argv0.as_os_str()).to_vec(),
    )?];
    let pid = sys::spawn_exe(&argv, &env, theirs.as_fd())?;
    drop(theirs);
    match sys::wait_pid_blocking(pid) {
        Ok(0) => Ok(ours),
        Ok(code) => Err(crate::Error::from(std::io::Error::other(format!(
            "its first process exited with {code}"
        )))),
        // A program that ignores SIGCHLD has its children reaped by the kernel: whether the
        // tracker started shows only in the socket, which the first message tries.
        Err(e) if sys::is_no_child(&e) => Ok(ours),
        Err(e) => Err(e.into()),
    }
}

/// Whether this process was started as a tracker.
pub(super) fn launched_as_tracker() -> bool {
    std::env::var_os(ENV_TRACKER).is_some()
}

/// The tracker's role, in a process started as one: forks away, then tracks until the
/// creator ends. Never returns.
pub(super) fn run_from_env() -> ! {
    let value = std::env::var_os(ENV_TRACKER).unwrap_or_default();
    let parsed = value.to_str().and_then(|v| {
        let (fd, creator) = v.split_once(',')?;
        Some((fd.parse::<i32>().ok()?, creator.parse::<i32>().ok()?))
    });
    let Some((fd, creator)) = parsed else {
        fail(format!("malformed {ENV_TRACKER}={value:?}"))
    };
    sys::clear_env_var(OsStr::new(ENV_TRACKER));
    let sock = sys::adopt_inherited_socket(fd)
        .unwrap_or_else(|e| fail(format!("descriptor {fd} is unusable: {e}")));
    match sys::fork_process() {
        Ok(Some(_)) => sys::exit_now(0),
        Ok(None) => {}
        Err(e) => fail(format!("cannot fork: {e}")),
    }
    if let Err(e) = detach() {
        eprintln!("tokio-multiprocessing segment tracker: {e}");
    }
    // The creator's limit when it made its first segment says nothing of how many it holds
    // later; if it cannot be raised, the segments past it go untracked as before.
    let _ = sys::raise_descriptor_limit();
    track_until_end(sock.as_fd(), creator);
    sys::exit_now(0)
}

fn fail(message: String) -> ! {
    eprintln!("tokio-multiprocessing segment tracker: {message}");
    sys::exit_now(1)
}

/// Out of the program's session and deaf to the signals sent to all of a program; holding
/// none of its standard streams but stderr (a reader of the program's stdout waits for no
/// tracker).
fn detach() -> std::io::Result<()> {
    sys::start_own_session()?;
    sys::ignore_terminal_signals()?;
    sys::ignore_hangup()?;
    sys::ignore_sigterm()?;
    sys::stdin_from_dev_null()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    sys::redirect_std(null.as_fd(), 1)
}

/// Holds the segments the creator tells of until the end of its socket, then removes the
/// names left.
fn track_until_end(sock: BorrowedFd<'_>, creator: i32) {
    let mut held: HashMap<u64, (String, OwnedFd)> = HashMap::new();
    let mut buf = [0u8; MOST];
    let mut fds = VecDeque::new();
    loop {
        fds.clear();
        let n = match sys::recv_with_fds(sock, &mut buf, &mut fds) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // One message came whole but its descriptor did not (this process at its
            // descriptor limit): that segment alone goes untracked.
            Err(e) if e.raw_os_error().is_none() => {
                eprintln!(
                    "tokio-multiprocessing segment tracker: a segment of process {creator} goes untracked: {e}"
                );
                continue;
            }
            Err(e) => {
                // The creator may still be running: removing its names now would take them
                // from under it, so they are left.
                eprintln!(
                    "tokio-multiprocessing segment tracker: stops tracking the segments of process {creator}: {e}"
                );
                return;
            }
        };
        if n == 0 {
            break;
        }
        let Some((&tag, rest)) = buf[..n].split_first() else {
            continue;
        };
        let Some((id, name)) = rest.split_first_chunk::<8>() else {
            continue;
        };
        let id = u64::from_le_bytes(*id);
        match (tag, fds.pop_front(), std::str::from_utf8(name)) {
            (b'+', Some(fd), Ok(name)) => {
                held.insert(id, (name.to_string(), fd));
            }
            (b'-', _, _) => {
                held.remove(&id);
            }
            _ => {}
        }
    }
    let mut left: Vec<(u64, (String, OwnedFd))> = held.into_iter().collect();
    left.sort_unstable_by_key(|(id, _)| *id);
    for (_, (name, fd)) in left {
        if let Ok(true) = sys::shm_remove_own(&name, fd.as_fd()) {
            eprintln!(
                "tokio-multiprocessing: removed the shared memory segment {name:?}, which process {creator} made and did not remove before it ended"
            );
        }
    }
}
