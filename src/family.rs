//! This process, its parent and its children as Python's `multiprocessing` shows them:
//! [`current_process`], [`parent_process`] and [`active_children`].

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::sys;

/// The name of a process that no process of this crate started (Python's main process).
pub const MAIN_PROCESS_NAME: &str = "MainProcess";

/// What a child is told of itself and of its parent when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Lineage {
    pub(crate) name: String,
    pub(crate) daemon: bool,
    /// The parent's owner word (its pid and start time, see [`sys::cached_owner`]).
    pub(crate) parent: u64,
    pub(crate) parent_name: String,
    /// Python's `_identity`: the child's number among its parent's children, after its
    /// parent's own identity (empty in the main process).
    pub(crate) identity: Vec<usize>,
}

impl Lineage {
    /// The lineage of a child of this process named `name`, whose identity is `identity`.
    pub(crate) fn child_of_this(name: &str, daemon: bool, identity: &[usize]) -> Lineage {
        Lineage {
            name: name.to_string(),
            daemon,
            parent: sys::cached_owner(),
            parent_name: current_process().name,
            identity: identity.to_vec(),
        }
    }
}

/// How many children this process has numbered, plus one: the number of the next one.
static COUNTER: AtomicUsize = AtomicUsize::new(1);

/// The identity of this process's next child: this process's own, with the next number
/// after it (Python's `_identity`, which its default name `Process-1:2` spells).
pub(crate) fn next_child_identity() -> Vec<usize> {
    let mut identity = lineage().map(|l| l.identity).unwrap_or_default();
    identity.push(COUNTER.fetch_add(1, Ordering::Relaxed));
    identity
}

/// This process's lineage; `None` in a process that no process of this crate started.
static LINEAGE: Mutex<Option<Lineage>> = Mutex::new(None);

fn lineage() -> Option<Lineage> {
    LINEAGE.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Takes on the lineage a child was started with, before its target runs (a forked child
/// replaces the one it inherited from its parent's memory).
pub(crate) fn become_child(lineage: Lineage) {
    // A forked child numbers its own children from 1, as Python's does.
    COUNTER.store(1, Ordering::Relaxed);
    *LINEAGE.lock().unwrap_or_else(|p| p.into_inner()) = Some(lineage);
}

/// A process as Python's `multiprocessing.current_process()` shows one: its name, pid and
/// daemon flag. Made by [`current_process`]; an [`ActiveChild`] derefs to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    name: String,
    pid: u32,
    daemon: bool,
}

impl ProcessInfo {
    /// The name it was started with ([`ProcessBuilder::name`](crate::ProcessBuilder::name),
    /// `Process-N` by default, `PoolWorker-N` in a pool's worker), or
    /// [`MAIN_PROCESS_NAME`] in a process that no process of this crate started.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its process id, as [`pid`](Self::pid) (Python's `current_process().ident`, an alias
    /// of `pid`).
    pub fn ident(&self) -> u32 {
        self.pid
    }

    /// Whether it was started as a daemon.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// Python's repr: `<Process(Process-1, started)>`, `<Process(MainProcess, started)>`.
impl std::fmt::Display for ProcessInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let daemon = if self.daemon { ", daemon" } else { "" };
        write!(f, "<Process({}, started{daemon})>", self.name)
    }
}

/// This process: its name, pid and daemon flag (Python's
/// `multiprocessing.current_process()`). In a process that no process of this crate
/// started, the name is [`MAIN_PROCESS_NAME`].
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// use tokio_multiprocessing as mp;
///
/// fn who() -> String {
///     mp::current_process().name().to_string()
/// }
/// assert_eq!(mp::current_process().name(), "MainProcess");
/// let pool = mp::Pool::new(1).await?;
/// assert!(pool.apply(who, ()).await?.starts_with("PoolWorker-"));
/// # Ok(()) }
/// ```
pub fn current_process() -> ProcessInfo {
    let (name, daemon) = match lineage() {
        Some(l) => (l.name, l.daemon),
        None => (MAIN_PROCESS_NAME.to_string(), false),
    };
    ProcessInfo {
        name,
        pid: sys::current_pid() as u32,
        daemon,
    }
}

/// The process that started this one, as Python's `multiprocessing.parent_process()`
/// shows it. Made by [`parent_process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentProcess {
    name: String,
    /// Its owner word: a later process that takes its pid is not it.
    owner: u64,
}

impl ParentProcess {
    /// The parent's name, as its own [`current_process`] gave it when it started this
    /// process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        sys::owner_pid(self.owner)
    }

    /// Whether the parent still runs. A child of this crate dies with its parent, so a child
    /// mostly finds it alive; the answer is the kernel's all the same, and a later process
    /// that took the parent's pid is not taken for it.
    ///
    /// # Errors
    /// An I/O error if the kernel cannot be asked (no pidfd support).
    pub fn is_alive(&self) -> Result<bool> {
        Ok(!sys::owner_gone(self.owner)?)
    }
}

/// Python's repr, as a parent: `<Process(MainProcess, parent)>`.
impl std::fmt::Display for ParentProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<Process({}, parent)>", self.name)
    }
}

/// The process that started this one (its name and pid), or `None` in a process that no
/// process of this crate started (Python's `multiprocessing.parent_process()`).
pub fn parent_process() -> Option<ParentProcess> {
    lineage().map(|l| ParentProcess {
        name: l.parent_name,
        owner: l.parent,
    })
}

/// A child of this process that runs still, as [`active_children`] lists it: its name, pid
/// and daemon flag (it derefs to its [`ProcessInfo`]), and signals sent through its pidfd
/// (which pins the process, so a signal can never reach another process that took its pid
/// after it was reaped).
#[derive(Debug, Clone)]
pub struct ActiveChild {
    info: ProcessInfo,
    pidfd: Arc<OwnedFd>,
}

impl ActiveChild {
    pub(crate) fn new(name: String, pid: u32, daemon: bool, pidfd: Arc<OwnedFd>) -> ActiveChild {
        ActiveChild {
            info: ProcessInfo { name, pid, daemon },
            pidfd,
        }
    }

    /// Sends SIGTERM, as [`Process::terminate`](crate::Process::terminate); a child that
    /// ended meanwhile is not an error. Its [`Process`](crate::Process) handle (or the
    /// pool that owns it) sees the exit.
    ///
    /// # Errors
    /// An I/O error from `pidfd_send_signal`.
    pub fn terminate(&self) -> Result<()> {
        Ok(sys::pidfd_send_signal(self.pidfd.as_fd(), sys::SIGTERM)?)
    }

    /// Sends SIGINT, as [`Process::interrupt`](crate::Process::interrupt). Pool workers and
    /// manager servers ignore it (Ctrl-C is their owner's to decide).
    ///
    /// # Errors
    /// As [`terminate`](Self::terminate).
    pub fn interrupt(&self) -> Result<()> {
        Ok(sys::pidfd_send_signal(self.pidfd.as_fd(), sys::SIGINT)?)
    }

    /// Sends SIGKILL, as [`Process::kill`](crate::Process::kill).
    ///
    /// # Errors
    /// As [`terminate`](Self::terminate).
    pub fn kill(&self) -> Result<()> {
        Ok(sys::pidfd_send_signal(self.pidfd.as_fd(), sys::SIGKILL)?)
    }
}

impl std::ops::Deref for ActiveChild {
    type Target = ProcessInfo;

    fn deref(&self) -> &ProcessInfo {
        &self.info
    }
}

/// Python's repr: `<Process(Process-1, started)>`.
impl std::fmt::Display for ActiveChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info.fmt(f)
    }
}

/// The children of this process that run still, in the order their starts completed (their
/// handshake with this process ended; Python's `multiprocessing.active_children()` gives no
/// order): every [`Process`](crate::Process), pool worker and manager server this process
/// started and that has not ended. Children started together, such as a pool's workers, may
/// come in any order of their names or pids (`PoolWorker-2` before `PoolWorker-1`). Unlike
/// Python's, the call reaps nothing: a child's handle (or its pool) does that.
pub fn active_children() -> Vec<ActiveChild> {
    crate::start::running_children()
}
