//! The child's side of the bootstrap: what [`init`](crate::init) does in a child. It reads
//! the bootstrap frame, checks the binary and the target, answers the parent, runs the target
//! and exits. Also the guard that ends a child whose `main` never called `init()`.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;

use super::handshake::{Boot, BootReply, HelloFirst, INIT_ADVICE};
use super::{ENV_BOOT, StartMethod, Stdio};
use crate::error::Error;
use crate::sys;
use crate::task::{Failure, Invoked, ProcessEntry, call_process};
use crate::wire::{FrameBuf, Framed, set_max_frame_size};

/// Exit code of a child that could not run its target.
const BOOT_FAILED: i32 = 1;

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!(
        "tokio-multiprocessing child {}: {message}",
        sys::current_pid()
    );
    std::process::exit(BOOT_FAILED)
}

/// `init()` in a re-executed child: parse `"<fd>,<parent pid>"`, then bootstrap.
pub(super) fn run_from_env(value: &OsStr) -> ! {
    let parsed = value.to_str().and_then(|v| {
        let (fd, ppid) = v.split_once(',')?;
        Some((fd.parse::<i32>().ok()?, ppid.parse::<i32>().ok()?))
    });
    let Some((fd, ppid)) = parsed else {
        fail(format!("malformed {ENV_BOOT}={value:?}"))
    };
    let sock = match sys::adopt_inherited_socket(fd) {
        Ok(s) => s,
        Err(e) => fail(format!("bootstrap descriptor {fd} is unusable: {e}")),
    };
    run_boot(sock, ppid)
}

/// Bootstraps a child from its socket: parent-death signal, handshake, then the target.
/// Never returns.
pub(super) fn run_boot(sock: OwnedFd, ppid: i32) -> ! {
    die_with_parent(ppid);
    let sock = match Framed::unix(sock) {
        Ok(s) => s,
        Err(e) => fail(format!("bootstrap socket is unusable: {e}")),
    };
    let mut frame = match sock.recv_blocking() {
        Ok(f) => f,
        // The parent gave up on this start (its future was dropped): nothing to report.
        Err(Error::Closed) => sys::exit_now(BOOT_FAILED),
        Err(e) => fail(format!("cannot read the bootstrap frame: {e}")),
    };
    let boot: Boot = match frame.decode_head() {
        Ok(b) => b,
        Err(e) => {
            // A parent of another version or binary may lay out its head otherwise: its
            // hello, first, says so.
            if let Ok(HelloFirst(hello)) = frame.decode_head()
                && let Err(e) = hello.check()
            {
                refuse(&sock, mismatch(e));
            }
            refuse(
                &sock,
                BootReply::Refused(format!("malformed bootstrap frame: {e}")),
            )
        }
    };
    let same = match boot.hello.check() {
        Ok(s) => s,
        Err(e) => refuse(&sock, mismatch(e)),
    };
    let entry: ProcessEntry = match sys::resolve_entry(boot.entry, same) {
        Ok(e) => e,
        Err(e) => refuse(&sock, BootReply::Refused(e.to_string())),
    };
    let Some(method) = StartMethod::from_u8(boot.method) else {
        refuse(
            &sock,
            BootReply::Refused(format!("unknown start method {}", boot.method)),
        )
    };
    let Some(stdio) = Stdio::take_targets(boot.stdio, &mut frame.fds) else {
        refuse(
            &sock,
            BootReply::Refused("the bootstrap frame lacks its stdout or stderr".into()),
        )
    };
    if let Err(e) = Stdio::redirect(&stdio) {
        refuse(
            &sock,
            BootReply::Refused(format!("cannot redirect stdout or stderr: {e}")),
        )
    }
    if let Some(Err(e)) = boot.env.as_ref().map(|env| env.apply_in_child()) {
        refuse(&sock, BootReply::Refused(e))
    }
    // Python's children inherit the method that started them as their default.
    super::set_start_method(method);
    set_max_frame_size(boot.max_frame as usize);
    match reply(&sock, &BootReply::Started) {
        Ok(()) => {}
        // The parent gave up on this start (its pool was closed meanwhile, say): nothing to
        // report.
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            sys::exit_now(BOOT_FAILED)
        }
        Err(e) => fail(format!("cannot answer the parent: {e}")),
    }
    tracing::debug!(name = %boot.lineage.name, "child bootstrapped");
    crate::family::become_child(boot.lineage);
    let fds = std::mem::take(&mut frame.fds);
    let code = run_entry(call_process(entry, frame.body(), fds), None);
    drop(sock);
    std::process::exit(code)
}

/// Asks for SIGKILL when the parent goes, and checks the parent did not go already.
pub(super) fn die_with_parent(ppid: i32) {
    if let Err(e) = sys::set_parent_death_signal() {
        fail(format!("cannot set the parent-death signal: {e}"));
    }
    if sys::parent_pid() != ppid {
        // The parent died before we could ask to follow it.
        sys::exit_now(BOOT_FAILED);
    }
}

fn reply(sock: &Framed, r: &BootReply) -> crate::Result<()> {
    sock.send_blocking(&mut FrameBuf::of(r)?)
}

/// The refusal for a parent whose hello does not pass.
fn mismatch(e: Error) -> BootReply {
    match e {
        Error::BinaryMismatch { ours, theirs } => BootReply::Mismatch {
            child: ours,
            parent: theirs,
        },
        e => BootReply::Refused(e.to_string()),
    }
}

fn refuse(sock: &Framed, r: BootReply) -> ! {
    let msg = match &r {
        BootReply::Refused(m) => m.clone(),
        BootReply::Mismatch { child, parent } => {
            format!("binary mismatch: this binary is {child}, the parent's is {parent}")
        }
        BootReply::Started => String::new(),
    };
    let _ = reply(sock, &r);
    fail(format!("refusing to run the target: {msg}"))
}

/// Runs a target to the end and returns the exit code: what its result reports (0 for `()`
/// or `Ok`, 1 for an `Err`, which is printed), or 1 after a panic (whose message the panic
/// hook has printed) or undecodable arguments.
///
/// An `async fn` target runs on `runtime` if given, else on a fresh current-thread runtime;
/// if this thread is already inside a runtime (`#[tokio::main]` called `init()`, or a forked
/// child), on a thread of its own.
pub(crate) fn run_entry(
    invoked: Invoked<Result<i32, Failure>>,
    runtime: Option<tokio::runtime::Runtime>,
) -> i32 {
    let result = match invoked {
        Invoked::Ready(r) => r,
        Invoked::Pending(fut) => {
            let run = move || {
                let rt = match runtime {
                    Some(rt) => rt,
                    None => match fresh_runtime() {
                        Ok(rt) => rt,
                        Err(e) => return Err(Failure::Args(Error::from(e))),
                    },
                };
                let result = rt.block_on(fut);
                // The child ends when its target returns: a blocking task still running is
                // not waited for, as the threads the target started are not (dropping the
                // runtime would wait for it, for ever if it never returns).
                rt.shutdown_background();
                result
            };
            if tokio::runtime::Handle::try_current().is_ok() {
                let on_thread = || {
                    let _alt = sys::AltStack::for_this_thread("target");
                    run()
                };
                match std::thread::Builder::new()
                    .name("target".into())
                    .spawn(on_thread)
                {
                    Ok(t) => t.join().unwrap_or_else(|_| {
                        Err(Failure::Panicked("runtime thread panicked".into()))
                    }),
                    Err(e) => Err(Failure::Args(Error::from(e))),
                }
            } else {
                run()
            }
        }
    };
    match result {
        Ok(code) => code,
        Err(Failure::Panicked(_)) => 1,
        Err(Failure::Args(e)) => {
            eprintln!("tokio-multiprocessing child {}: {e}", sys::current_pid());
            1
        }
    }
}

/// A runtime a `fork` child built before closing its parent's descriptors, for its plain
/// target to take with [`fresh_runtime`].
static PREBUILT: std::sync::Mutex<Option<tokio::runtime::Runtime>> = std::sync::Mutex::new(None);

/// Keeps `rt`, built by a `fork` child while it still had its parent's descriptors, for
/// [`fresh_runtime`].
pub(crate) fn keep_prebuilt(rt: tokio::runtime::Runtime) {
    *PREBUILT.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt);
}

/// The runtime a child's own work runs on (an `async fn` target, a pool worker): the one
/// a `fork` child built before closing its parent's descriptors, if any, else a new
/// current-thread runtime. (After that close, tokio's signal driver could not clone the
/// parent's signal pipe: a runtime built then fails with "Bad file descriptor".)
pub(crate) fn fresh_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if let Some(rt) = PREBUILT.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Ok(rt);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Called on every start: a process that still has the bootstrap variable is a child whose
/// `main` never called `init()`. It is a copy of the parent that should not exist; tell the
/// parent why, and end it before it starts children of its own.
pub(super) fn refuse_if_uninitialised_child() {
    let Some(value) = std::env::var_os(ENV_BOOT) else {
        return;
    };
    let message = format!(
        "this process was started as a child by tokio-multiprocessing, but its `main()` did not \
         call `tokio_multiprocessing::init()` before starting a process: {INIT_ADVICE}"
    );
    let fd = value
        .to_str()
        .and_then(|v| v.split_once(','))
        .and_then(|(fd, _)| fd.parse::<i32>().ok());
    if let Some(sock) = fd.and_then(|fd| sys::adopt_inherited_socket(fd).ok()) {
        let _ = Framed::unix(sock).and_then(|s| reply(&s, &BootReply::Refused(message.clone())));
    }
    eprintln!("tokio-multiprocessing: {message}");
    sys::exit_now(BOOT_FAILED)
}
