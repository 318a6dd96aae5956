//! The `spawn` start method: this program re-executed (`/proc/self/exe`) with its bootstrap
//! socket inherited and named by `ENV_BOOT`; the child runs `main` up to `init()`, which
//! reads the bootstrap frame (see `handshake.rs`) and runs the target.
//!
//! The re-execution itself runs on the launcher thread (`launcher.rs`), so that the
//! child's parent-death signal follows a thread that lives as long as the program.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::handle::{Child, Unclaimed};
use super::launcher::on_launcher;
use super::{ENV_BOOT, Environment, Launch, handshake, tracker};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::send_early;

/// Re-executes this program with `child_end` inherited, its environment this program's as
/// `env` edits it. Returns the pid and its pidfd. Runs on the launcher thread (the
/// children's parent-death signal is tied to it).
pub(super) fn spawn_now(
    child_end: OwnedFd,
    inherit_argv: bool,
    env: &Environment,
) -> Result<(i32, OwnedFd)> {
    let mut argv: Vec<OsString> = std::env::args_os().collect();
    if !inherit_argv {
        argv.truncate(1);
    }
    if argv.is_empty() {
        argv.push("tokio-multiprocessing-child".into());
    }
    let child_fd = sys::spawned_fd(child_end.as_raw_fd());
    let boot_value = format!("{child_fd},{}", sys::current_pid());
    let vars = env.exec_vars();
    let tunables = vars.iter().find(|(k, _)| k == TUNABLES);
    let tunables = child_tunables(tunables.map(|(_, v)| v.as_bytes()));
    let mut env = exec_strings(vars.into_iter(), &[TUNABLES])?;
    env.push(cstring(tunables)?);
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

/// glibc's settings, read by the allocator as a process starts.
const TUNABLES: &str = "GLIBC_TUNABLES";

/// The tunable (set to 1) that has glibc's allocator ask for transparent huge pages for the large
/// blocks it maps: a child that receives a value of many megabytes then faults its memory in
/// 2 MiB at a time rather than 4 KiB (measured: a 64 MiB `apply` round trip 2.5 times
/// faster on a virtual machine, where each fault is costly).
const HUGE_PAGES: &str = "glibc.malloc.hugetlb";

/// The child's `GLIBC_TUNABLES=...` entry: ours added to the program's own, which wins where it
/// sets the same tunable. Other C libraries ignore it.
fn child_tunables(own: Option<&[u8]>) -> Vec<u8> {
    let mut kv = format!("{TUNABLES}=").into_bytes();
    match own {
        Some(own) if !own.is_empty() => {
            kv.extend_from_slice(own);
            if !own
                .windows(HUGE_PAGES.len())
                .any(|w| w == HUGE_PAGES.as_bytes())
            {
                kv.extend_from_slice(format!(":{HUGE_PAGES}=1").as_bytes());
            }
        }
        _ => kv.extend_from_slice(format!("{HUGE_PAGES}=1").as_bytes()),
    }
    kv
}

/// This program's environment for a process it re-executes, as `NAME=value` strings: every
/// variable but `except` and those that give a re-executed process its role.
pub(super) fn environment_for_exec(except: &[&str]) -> Result<Vec<CString>> {
    exec_strings(std::env::vars_os(), except)
}

/// `vars` as `NAME=value` strings for an exec: all but `except` and those that give a
/// re-executed process its role.
fn exec_strings(
    vars: impl Iterator<Item = (OsString, OsString)>,
    except: &[&str],
) -> Result<Vec<CString>> {
    vars.filter(|(k, _)| {
        k != ENV_BOOT && k != tracker::ENV_TRACKER && !except.iter().any(|e| k == e)
    })
    .map(|(k, v)| {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        cstring(kv)
    })
    .collect()
}

pub(super) fn cstring(bytes: Vec<u8>) -> Result<CString> {
    CString::new(bytes)
        .map_err(|e| Error::from(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))
}

/// Starts a child with the `spawn` method.
pub(super) async fn launch_spawn(mut launch: Launch) -> Result<Child> {
    let frame = handshake::boot_frame(&mut launch)?;
    let (ours, theirs) = sys::socketpair_stream()?;
    // A child whose frame waits for it could run its target and end before this side holds
    // its pidfd; where the kernel reaps children itself, it would then be gone.
    let frame = match sys::children_reaped_by_kernel() {
        true => Some(frame),
        false => send_early(ours.as_fd(), frame)?,
    };
    let inherit_argv = launch.inherit_argv;
    let env = std::mem::take(&mut launch.env);
    let started =
        on_launcher(move || spawn_now(theirs, inherit_argv, &env).map(Unclaimed::new)).await??;
    let (pid, pidfd) = started.claim();
    let mut child = Child::new(pid, pidfd).inspect_err(|_| sys::kill_and_reap(pid))?;
    let unstarted = child.kill_unless_started();
    let keepalive = handshake::handshake(ours, &mut child, &launch, frame).await?;
    unstarted.defuse();
    child.track(&launch, Some(keepalive));
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_asks_for_huge_pages_unless_the_program_says_otherwise() {
        assert_eq!(
            child_tunables(None),
            b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
        );
        assert_eq!(
            child_tunables(Some(b"glibc.malloc.arena_max=2")),
            b"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
        );
        assert_eq!(
            child_tunables(Some(b"glibc.malloc.hugetlb=0")),
            b"GLIBC_TUNABLES=glibc.malloc.hugetlb=0"
        );
    }
}
