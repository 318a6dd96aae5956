//! Start methods and the child bootstrap behind [`init`].
//!
//! Every child runs the same executable. `spawn` re-executes it with an environment
//! variable naming an inherited socket; before `main`, the executable's constructor (and
//! [`init`], its fallback) finds the variable, reads the bootstrap frame from the socket
//! (handshake, target, arguments), runs the target and exits. `forkserver` re-executes once
//! into a server that forks children on request; `fork` forks the caller. The parent races
//! every wait on a child's bootstrap against the child's pidfd and a deadline, so a child
//! that dies or never reaches `init()` fails the start instead of hanging it.
//!
//! # Layout
//!
//! - `method.rs`: [`StartMethod`] and the default method (`set_start_method`, ...).
//! - `spawn.rs`, `forkserver.rs`, `fork.rs`: the three start methods, one per file.
//! - `launcher.rs`: the long-lived thread re-executed children are started from.
//! - `handshake.rs`: the bootstrap frame and the parent's side of the conversation.
//! - `bootstrap.rs`: the child's side: what [`init`] does in a child.
//! - `environment.rs`: a child's environment variables and working directory.
//! - `handle.rs`: `Child`, the parent's pidfd handle on a running child.
//! - `registry.rs`: the children the exit handler terminates (daemons) and waits for.
//! - `reaper.rs`: the thread that reaps children whose handles were dropped while they ran.

mod bootstrap;
mod environment;
mod fork;
mod forkserver;
mod handle;
mod handshake;
mod launcher;
mod method;
mod reaper;
mod registry;
mod spawn;
pub(crate) mod tracker;

use std::time::Duration;

pub(crate) use bootstrap::fresh_runtime;
pub(crate) use environment::Environment;
pub(crate) use handle::Child;
pub(crate) use launcher::warm_launcher;
pub use method::{
    StartMethod, get_all_start_methods, get_start_method, set_start_method, try_set_start_method,
};
pub(crate) use registry::running_children;

use crate::error::Result;
use crate::task::ProcessEntry;
use crate::wire::{Encoded, Hello};

/// The environment variable that tells a re-executed child where its bootstrap socket is:
/// `"<fd>,<parent pid>"`.
pub(crate) const ENV_BOOT: &str = "TOKIO_MULTIPROCESSING_BOOT";

/// Runs a child's role in place of `main`: in a process started as a child, this runs the
/// child's target (a process target, a pool worker, the fork server) and exits; it never
/// returns. Elsewhere it does nothing.
///
/// **Calling it is optional.** A re-executed child takes its role before `main`, from a
/// constructor the crate places in the executable's `.init_array`, so a child never runs any
/// of the program's `main`: not the code a `main` runs first, not a test harness. That is
/// what lets a plain `#[test]` or `#[tokio::test]` start processes and pools, and doctests
/// too. `init()` is kept as the explicit spelling of Python's `if __name__ == "__main__":`
/// guard, and as a fallback where no constructor ran. If a program calls it, it calls it
/// before starting threads of its own, as the first thing in `main` (a child that reaches
/// it edits its environment).
///
/// Because children do not run `main`, what a program sets up there (a `tracing`
/// subscriber, a global value) is not set up in its children: do that in a pool's
/// initializer or at the start of the target. A child does not receive the parent's
/// command-line arguments either (see
/// [`ProcessBuilder::inherit_argv`](crate::ProcessBuilder::inherit_argv)).
///
/// # Examples
///
/// ```
/// fn greet(name: String) {
///     println!("hello {name}");
/// }
///
/// #[tokio::main]
/// async fn main() -> tokio_multiprocessing::Result<()> {
///     tokio_multiprocessing::init(); // optional: a child never runs `main`
///     let mut p = tokio_multiprocessing::Process::new(greet, ("bob".to_string(),))
///         .start()
///         .await?;
///     assert_eq!(p.join().await?, 0);
///     Ok(())
/// }
/// ```
pub fn init() {
    if tracker::launched_as_tracker() {
        tracker::run_from_env()
    }
    if let Some(value) = std::env::var_os(ENV_BOOT) {
        crate::sys::clear_env_var(ENV_BOOT.as_ref());
        bootstrap::run_from_env(&value)
    }
    // A program a cluster's launcher started as a host agent.
    crate::cluster::run_if_agent();
}

/// The child's role taken before `main`, from the executable's constructor
/// (`sys::constructor`): a process started as a child, as a segment tracker, or launched as
/// a cluster's host agent, runs its role here and exits. Any other process returns at once,
/// untouched.
pub(crate) fn before_main() {
    if std::env::var_os(ENV_BOOT).is_none()
        && !tracker::launched_as_tracker()
        && !crate::cluster::launched_as_agent()
    {
        return;
    }
    // Rust's start-up has not given closed standard descriptors /dev/null, nor ignored
    // SIGPIPE, nor set up its report of stack overflows, and will not run in this process.
    if let Err(e) = crate::sys::open_closed_standard_fds() {
        tracing::debug!("cannot open /dev/null on a closed standard descriptor: {e}");
    }
    if let Err(e) = crate::sys::ignore_sigpipe() {
        tracing::debug!("cannot ignore SIGPIPE before main: {e}");
    }
    crate::sys::report_stack_overflows();
    init()
}

/// Everything needed to start one child.
pub(crate) struct Launch {
    pub(crate) name: String,
    /// Python's `_identity` (see [`Lineage`](crate::family::Lineage)).
    pub(crate) identity: Vec<usize>,
    pub(crate) entry: ProcessEntry,
    /// Whether the target is an `async fn` (it runs on the runtime a fork child builds
    /// first).
    pub(crate) is_async: bool,
    /// Whether the child runs a tokio runtime: an `async fn` target's, or the one a
    /// crate's own plain target builds (a pool worker's). A `fork` child builds it before
    /// it closes its parent's descriptors, which tokio's signal driver needs.
    pub(crate) needs_runtime: bool,
    pub(crate) args: Encoded,
    pub(crate) daemon: bool,
    pub(crate) method: StartMethod,
    pub(crate) start_timeout: Duration,
    pub(crate) inherit_argv: bool,
    pub(crate) hello: Hello,
    /// Whether the exit handler should wait for (or terminate) this child.
    pub(crate) track_at_exit: bool,
    /// Where the child's stdout and stderr go, when not to this process's.
    pub(crate) stdio: Stdio,
    /// The child's environment variables and working directory, when not this process's.
    pub(crate) env: Environment,
}

/// Where a child's stdout and stderr go: `None` leaves the parent's.
#[derive(Default)]
pub(crate) struct Stdio {
    pub(crate) stdout: Option<std::os::fd::OwnedFd>,
    pub(crate) stderr: Option<std::os::fd::OwnedFd>,
}

impl Stdio {
    /// Which descriptors follow the arguments' in a bootstrap frame: bit 0 stdout, bit 1
    /// stderr.
    pub(crate) fn flags(&self) -> u8 {
        u8::from(self.stdout.is_some()) | (u8::from(self.stderr.is_some()) << 1)
    }

    /// The descriptors in the order they follow the arguments', with their targets.
    pub(crate) fn into_targets(self) -> Vec<(std::os::fd::OwnedFd, i32)> {
        [(self.stdout, 1), (self.stderr, 2)]
            .into_iter()
            .filter_map(|(fd, target)| Some((fd?, target)))
            .collect()
    }

    /// Takes the descriptors that `flags` says follow the arguments' off the end of `fds`,
    /// with their targets; `None` if `fds` holds too few.
    pub(crate) fn take_targets(
        flags: u8,
        fds: &mut Vec<std::os::fd::OwnedFd>,
    ) -> Option<Vec<(std::os::fd::OwnedFd, i32)>> {
        let count = (flags & 3).count_ones() as usize;
        let first = fds.len().checked_sub(count)?;
        let targets = [(1u8, 1), (2, 2)]
            .into_iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, target)| target);
        Some(fds.split_off(first).into_iter().zip(targets).collect())
    }

    /// Points this process's stdout and stderr where `targets` say.
    ///
    /// # Errors
    /// An I/O error from `dup2`.
    pub(crate) fn redirect(targets: &[(std::os::fd::OwnedFd, i32)]) -> std::io::Result<()> {
        use std::os::fd::AsFd;
        for (fd, target) in targets {
            crate::sys::redirect_std(fd.as_fd(), *target)?;
        }
        Ok(())
    }
}

/// Starts a child as `launch` says.
pub(crate) async fn launch(mut launch: Launch) -> Result<Child> {
    crate::sys::keep_constructor();
    registry::reap_ended();
    bootstrap::refuse_if_uninitialised_child();
    launch.env.check(&launch.name)?;
    match launch.method {
        StartMethod::Spawn => spawn::launch_spawn(launch).await,
        StartMethod::ForkServer => forkserver::launch_forkserver(launch).await,
        StartMethod::Fork => fork::launch_fork(launch),
    }
}
