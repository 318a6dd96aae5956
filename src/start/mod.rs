//! Start methods and the child bootstrap behind [`init`].
//!
//! Every child runs the same executable. `spawn` re-executes it with an environment variable
//! naming an inherited socket; [`init`], called first thing in `main`, finds the variable,
//! reads the bootstrap frame from the socket (handshake, target, arguments), runs the target
//! and exits. `forkserver` re-executes once into a server that forks children on request;
//! `fork` forks the caller. The parent races every wait on a child's bootstrap against the
//! child's pidfd and a deadline, so a child that dies or never reaches `init()` fails the start
//! instead of hanging it.

mod boot;
mod child;
mod children;
mod fork;
mod forkserver;
mod launcher;

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

pub(crate) use children::Child;
pub(crate) use launcher::warm_launcher;

use crate::error::{Error, Result};
use crate::task::ProcessEntry;
use crate::wire::{Encoded, Hello};

/// The environment variable that tells a re-executed child where its bootstrap socket is:
/// `"<fd>,<parent pid>"`.
pub(crate) const ENV_BOOT: &str = "TOKIO_MULTIPROCESSING_BOOT";

/// How a child process comes to life, as in Python's `multiprocessing.set_start_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-execute this program (`/proc/self/exe`); the child runs `main` up to
    /// [`init`], which runs the target. Safe whatever threads the parent has. The default.
    #[default]
    Spawn,
    /// Ask a fork server to fork a child: the server is this program re-executed once, which
    /// forks a copy of itself per child, so starts are fast whatever threads the parent has.
    ForkServer,
    /// Fork the calling process directly: the fastest start. Refused with an error unless the
    /// caller has a single thread (a `current_thread` runtime that has not started blocking
    /// threads), because forking a multi-threaded process (tokio's default runtime included)
    /// is unsound.
    Fork,
}

impl StartMethod {
    fn to_u8(self) -> u8 {
        match self {
            StartMethod::Spawn => 0,
            StartMethod::ForkServer => 1,
            StartMethod::Fork => 2,
        }
    }

    fn from_u8(v: u8) -> Option<StartMethod> {
        match v {
            0 => Some(StartMethod::Spawn),
            1 => Some(StartMethod::ForkServer),
            2 => Some(StartMethod::Fork),
            _ => None,
        }
    }

    /// Python's name for this method: `"spawn"`, `"forkserver"` or `"fork"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
            StartMethod::Fork => "fork",
        }
    }
}

impl std::str::FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<StartMethod> {
        match s {
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            "fork" => Ok(StartMethod::Fork),
            other => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown start method {other:?} (expected spawn, forkserver or fork)"),
            ))),
        }
    }
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(0);

/// Sets the start method used when a [`Process`](crate::Process) or pool does not name one
/// (Python's `multiprocessing.set_start_method`).
///
/// A child inherits the method that started it as its own default, as in Python: a child
/// started with [`StartMethod::ForkServer`], explicitly or because the parent set it here,
/// starts its own children with the fork server too.
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(method.to_u8(), Ordering::Relaxed);
}

/// The start method used when none is named (Python's `multiprocessing.get_start_method`):
/// in the program, [`StartMethod::Spawn`] unless changed by [`set_start_method`]; in a
/// child, the method that started it, unless the child changed it.
pub fn get_start_method() -> StartMethod {
    StartMethod::from_u8(DEFAULT_METHOD.load(Ordering::Relaxed)).unwrap_or_default()
}

/// Every start method this platform offers, the default first (Python's
/// `multiprocessing.get_all_start_methods`).
///
/// As in Python, "the default" is the platform's, [`StartMethod::default()`], which
/// [`get_start_method`] returns until [`set_start_method`] changes it; the list does not
/// follow [`set_start_method`]. [`StartMethod::Fork`] is listed although it is refused in a
/// process with more than one thread.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{StartMethod, get_all_start_methods};
///
/// let methods = get_all_start_methods();
/// assert_eq!(methods[0], StartMethod::default());
/// assert!(methods.contains(&StartMethod::ForkServer));
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    let default = StartMethod::default();
    let mut all = vec![default];
    all.extend(
        [
            StartMethod::Fork,
            StartMethod::Spawn,
            StartMethod::ForkServer,
        ]
        .into_iter()
        .filter(|&m| m != default),
    );
    all
}

/// Makes this program able to run children: call it first thing in `main`.
///
/// In the parent it returns at once. In a child it runs the child's role (a process target,
/// a pool worker, the fork server) and exits: it never returns. This is Python's
/// `if __name__ == "__main__":` guard turned around.
///
/// Children started with [`StartMethod::Spawn`] run this very program again, so **code before
/// `init()` runs again in every child**: keep it to nothing, or to what children need too.
/// Call it before the program starts threads of its own. It works in a synchronous `main` and
/// in `#[tokio::main]`; in the latter the runtime exists already when `init()` runs, so a
/// synchronous `main` that calls `init()` and then builds the runtime is a little lighter.
/// A child does not receive the parent's command-line arguments (see
/// [`ProcessBuilder::inherit_argv`](crate::ProcessBuilder::inherit_argv)).
///
/// If a program starts children but never calls `init()`, each child runs `main` from the
/// top as if it were the parent; the first call it makes into this crate ends it, and the
/// parent's start fails with an error that names `init()`.
///
/// # Examples
///
/// ```no_run
/// fn greet(name: String) {
///     println!("hello {name}");
/// }
///
/// #[tokio::main]
/// async fn main() -> tokio_multiprocessing::Result<()> {
///     tokio_multiprocessing::init(); // a child never gets past this line
///     let mut p = tokio_multiprocessing::Process::new(greet, ("bob".to_string(),))
///         .start()
///         .await?;
///     p.join().await?;
///     Ok(())
/// }
/// ```
pub fn init() {
    if let Some(value) = std::env::var_os(ENV_BOOT) {
        crate::sys::clear_env_var(ENV_BOOT.as_ref());
        child::run_from_env(&value)
    }
}

/// Everything needed to start one child.
pub(crate) struct Launch {
    pub(crate) name: String,
    pub(crate) entry: ProcessEntry,
    /// Whether the target is an `async fn` (a fork child builds its runtime first).
    pub(crate) is_async: bool,
    pub(crate) args: Encoded,
    pub(crate) daemon: bool,
    pub(crate) method: StartMethod,
    pub(crate) start_timeout: Duration,
    pub(crate) inherit_argv: bool,
    pub(crate) hello: Hello,
    /// Whether the exit handler should wait for (or terminate) this child.
    pub(crate) track_at_exit: bool,
}

/// Starts a child as `launch` says.
pub(crate) async fn launch(launch: Launch) -> Result<Child> {
    child::refuse_if_uninitialised_child();
    match launch.method {
        StartMethod::Spawn => launcher::launch_spawn(launch).await,
        StartMethod::ForkServer => forkserver::launch_forkserver(launch).await,
        StartMethod::Fork => fork::launch_fork(launch),
    }
}
