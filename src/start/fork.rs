//! The `fork` start method: the caller forks itself.
//!
//! Only a single-threaded process may fork and go on running arbitrary code in the child, so
//! the method is refused otherwise. The child keeps stdio and the descriptors its arguments
//! own and closes the rest, just as a re-executed child would have only what it was handed
//! (the parent's runtime, sockets and pipes stay the parent's). It runs the target from the
//! arguments encoded before the fork, then exits without running the parent's exit handlers,
//! after doing what its own would: wait for its children and terminate its daemons.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use super::handle::Child;
use super::{Launch, bootstrap};
use crate::error::{Error, Result};
use crate::family::Lineage;
use crate::sys;
use crate::task::call_process;

/// Starts a child with the `fork` method.
pub(super) fn launch_fork(mut launch: Launch) -> Result<Child> {
    let stdio = std::mem::take(&mut launch.stdio).into_targets();
    let mut keep: Vec<RawFd> = launch.args.fds.iter().map(|f| f.as_raw_fd()).collect();
    keep.extend(stdio.iter().map(|(f, _)| f.as_raw_fd()));
    // Where the kernel reaps children itself, a child that ended before this side held its
    // pidfd would be gone, pid and exit status: the child waits for this gate until then.
    let gate = match sys::children_reaped_by_kernel() {
        true => Some(sys::eventfd(false)?),
        false => None,
    };
    keep.extend(gate.iter().map(|g| g.as_raw_fd()));
    keep.sort_unstable();
    let me = sys::current_pid();
    let lineage = Lineage::child_of_this(&launch.name, launch.daemon, &launch.identity);
    sys::flush_std_streams();
    let forked = sys::fork_process().map_err(|e| Error::Start {
        name: launch.name.clone(),
        pid: 0,
        message: format!("{e}; use the spawn or forkserver start method"),
    })?;
    let Some(pid) = forked else {
        // The child. Its parent's signal handlers would not reach the parent's runtime: the
        // defaults take their place, as in a re-executed child.
        sys::default_signal_handlers();
        // Then the report of a stack overflow, as in a re-executed child: this is the only
        // thread (a fork with more is refused), so making its alternate stack is safe.
        sys::report_stack_overflows();
        super::registry::forget_inherited();
        // Before anything reads the environment or a relative path, and while this is the
        // only thread (the runtime below starts none, but its blocking pool could).
        if let Err(e) = launch.env.apply_in_child() {
            eprintln!("tokio-multiprocessing: forked child: {e}");
            sys::exit_now(1);
        }
        // The runtime the child runs (an async target's, a pool worker's) is built before
        // the parent's descriptors are closed, because tokio's I/O driver clones a
        // process-wide signal pipe; the descriptors the new runtime opened are kept.
        // (Signals themselves are not delivered to that runtime: the pipe's sending end was
        // the parent's.)
        let runtime = match launch.needs_runtime {
            false => None,
            true => {
                let before = sys::open_fds().unwrap_or_default();
                let rt = bootstrap::fresh_runtime().unwrap_or_else(|e| {
                    eprintln!("tokio-multiprocessing: forked child cannot build a runtime: {e}");
                    sys::exit_now(1)
                });
                let after = sys::open_fds().unwrap_or_default();
                keep.extend(after.into_iter().filter(|fd| !before.contains(fd)));
                keep.sort_unstable();
                Some(rt)
            }
        };
        if let Err(e) = sys::close_all_except(&keep) {
            eprintln!("tokio-multiprocessing: forked child cannot close descriptors: {e}");
            sys::exit_now(1);
        }
        bootstrap::die_with_parent(me);
        if let Some(gate) = gate {
            wait_for_gate(gate);
        }
        if let Err(e) = sys::stdin_from_dev_null() {
            eprintln!("tokio-multiprocessing: forked child cannot redirect stdin: {e}");
        }
        if let Err(e) = super::Stdio::redirect(&stdio) {
            eprintln!("tokio-multiprocessing: forked child cannot redirect stdout or stderr: {e}");
            sys::exit_now(1);
        }
        drop(stdio);
        // Python's children inherit the method that started them as their default.
        super::set_start_method(launch.method);
        crate::family::become_child(lineage);
        let crate::wire::Encoded { bytes, fds } = launch.args;
        // A plain target that runs a runtime (a pool worker) takes it from the bootstrap.
        let runtime = match (launch.is_async, runtime) {
            (false, Some(rt)) => {
                bootstrap::keep_prebuilt(rt);
                None
            }
            (_, rt) => rt,
        };
        let code = bootstrap::run_entry(call_process(launch.entry, &bytes, fds), runtime);
        // As any child ends: its own children are waited for, its daemons terminated.
        super::registry::end_children();
        sys::exit_now(code)
    };
    // A child we cannot watch must not run on.
    let child = sys::pidfd_open(pid)
        .map_err(Error::from)
        .and_then(|pidfd| Child::new(pid, pidfd))
        .and_then(|child| match &gate {
            Some(gate) => Ok(sys::eventfd_add(gate.as_fd(), 1).map(|()| child)?),
            None => Ok(child),
        })
        .inspect_err(|_| sys::kill_and_reap(pid))?;
    child.track(&launch, None);
    Ok(child)
}

/// In a forked child: waits until the parent opens the gate (it holds the child's pidfd).
/// Should the parent die first, the parent-death signal ends the child.
fn wait_for_gate(gate: std::os::fd::OwnedFd) {
    loop {
        match sys::poll_readable(&[gate.as_fd()], None) {
            Ok(ready) if ready.first() == Some(&true) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tokio-multiprocessing: forked child cannot wait for its parent: {e}");
                sys::exit_now(1);
            }
        }
    }
}
