//! Start methods and the child bootstrap behind [`init`].
//!
//! Every child runs the same executable. `spawn` re-executes it with an environment variable
//! naming an inherited socket; [`init`], called first thing in `main`, finds the variable,
//! reads the bootstrap frame from the socket (handshake, target, arguments), runs the target
//! and exits. `forkserver` re-executes once into a server that forks children on request;
//! `fork` forks the caller. The parent races every wait on a child's bootstrap against the
//! child's pidfd and a deadline, so a child that dies or never reaches `init()` fails the start
//! instead of hanging it.
//!
//! # Layout
//!
//! - `method.rs`: [`StartMethod`] and the default method (`set_start_method`, ...).
//! - `spawn.rs`, `forkserver.rs`, `fork.rs`: the three start methods, one per file.
//! - `launcher.rs`: the long-lived thread re-executed children are started from.
//! - `handshake.rs`: the bootstrap frame and the parent's side of the conversation.
//! - `bootstrap.rs`: the child's side: what [`init`] does in a child.
//! - `handle.rs`: `Child`, the parent's pidfd handle on a running child.
//! - `registry.rs`: the children the exit handler terminates (daemons) and waits for.

mod bootstrap;
mod fork;
mod forkserver;
mod handle;
mod handshake;
mod launcher;
mod method;
mod registry;
mod spawn;

use std::time::Duration;

pub(crate) use handle::Child;
pub(crate) use launcher::warm_launcher;
pub use method::{StartMethod, get_all_start_methods, get_start_method, set_start_method};

use crate::error::Result;
use crate::task::ProcessEntry;
use crate::wire::{Encoded, Hello};

/// The environment variable that tells a re-executed child where its bootstrap socket is:
/// `"<fd>,<parent pid>"`.
pub(crate) const ENV_BOOT: &str = "TOKIO_MULTIPROCESSING_BOOT";

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
        bootstrap::run_from_env(&value)
    }
    // A program a cluster's launcher started as a host agent.
    crate::cluster::run_if_agent();
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
    bootstrap::refuse_if_uninitialised_child();
    match launch.method {
        StartMethod::Spawn => spawn::launch_spawn(launch).await,
        StartMethod::ForkServer => forkserver::launch_forkserver(launch).await,
        StartMethod::Fork => fork::launch_fork(launch),
    }
}
