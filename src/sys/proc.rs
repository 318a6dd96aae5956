//! Processes: spawning the same executable, forking, pidfds, reaping, parent-death signals.

use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::cvt;

/// The path that always names the executable this process is running, even if the file
/// was replaced or removed since.
const SELF_EXE: &CStr = c"/proc/self/exe";
const DEV_NULL: &CStr = c"/dev/null";

/// The descriptor number a spawned child finds its inherited descriptor at (see
/// [`spawn_exe`]): 3 where the C library closes every other descriptor in the child in one
/// step, else `inherit`'s own number.
pub(crate) fn spawned_fd(inherit: RawFd) -> RawFd {
    match add_close_from() {
        Some(_) => SPAWNED_FD,
        None => inherit,
    }
}

/// Where [`spawn_exe`] puts the inherited descriptor when it closes the rest in one step.
const SPAWNED_FD: RawFd = 3;

/// The type of glibc's `posix_spawn_file_actions_addclosefrom_np`.
type AddCloseFrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), if the C library
/// this process runs with has it: looked up at run time, so that the program still starts
/// with an older one.
fn add_close_from() -> Option<AddCloseFrom> {
    static FOUND: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let address = *FOUND.get_or_init(|| {
        // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name only looks the symbol
        // up among the loaded libraries.
        let sym = unsafe {
            libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            )
        };
        sym as usize
    });
    // SAFETY: a non-null address under that name is glibc's function, whose C signature
    // `AddCloseFrom` is.
    (address != 0).then(|| unsafe { std::mem::transmute::<usize, AddCloseFrom>(address) })
}

/// `posix_spawn`'s file actions, destroyed when dropped.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut fa = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: init writes a valid, empty set of actions into the space given.
        check(unsafe { libc::posix_spawn_file_actions_init(fa.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(FileActions(unsafe { fa.assume_init() }))
    }

    fn dup2(&mut self, fd: RawFd, to: RawFd) -> io::Result<()> {
        // SAFETY: `self.0` is an initialised set of actions; integers by value.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, to) })
    }

    fn close(&mut self, fd: RawFd) -> io::Result<()> {
        // SAFETY: as in `dup2`.
        check(unsafe { libc::posix_spawn_file_actions_addclose(&mut self.0, fd) })
    }

    fn open(&mut self, fd: RawFd, path: &CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: as in `dup2`; glibc copies the NUL-terminated path.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
        })
    }

    fn close_from(&mut self, add: AddCloseFrom, from: RawFd) -> io::Result<()> {
        // SAFETY: as in `dup2`; `add` is glibc's function of that signature.
        check(unsafe { add(&mut self.0, from) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawn`'s attributes, destroyed when dropped.
struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    /// Attributes that start the child with no signal blocked and SIGPIPE at its default.
    fn new() -> io::Result<SpawnAttr> {
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: init writes valid default attributes into the space given.
        check(unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        let mut attr = SpawnAttr(unsafe { attr.assume_init() });
        let none = SigSet::empty();
        let mut defaults = SigSet::empty();
        defaults.add(Signal::SIGPIPE);
        let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF;
        // SAFETY: `attr.0` is initialised; the signal sets are valid `sigset_t`s that the
        // calls copy.
        unsafe {
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, none.as_ref()))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut attr.0,
                defaults.as_ref(),
            ))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attr)
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// A `posix_spawn` family return value (an error number, not -1 and errno) as a result.
fn check(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Starts `/proc/self/exe` with `argv` and `env`, keeping `inherit` open across the exec
/// (at [`spawned_fd`]'s number), and stdin (on `/dev/null`), stdout and stderr; no other
/// descriptor: those of ours are close-on-exec, and those the program made without that
/// flag (a C library's, a `pipe()`'s) are closed in the child, as Python's `spawn` closes
/// them, so that a child never holds a pipe's end that its parent waits to see closed.
/// Returns the child's pid.
///
/// The parent-death signal of the child refers to the calling thread: call this from a
/// thread that lives as long as the children should.
pub(crate) fn spawn_exe(
    argv: &[CString],
    env: &[CString],
    inherit: BorrowedFd<'_>,
) -> io::Result<i32> {
    let fd = inherit.as_raw_fd();
    let mut actions = FileActions::new()?;
    let child_fd = match add_close_from() {
        Some(add) => {
            // Moved to its number (a dup2 onto itself only clears close-on-exec, POSIX and
            // glibc >= 2.29), then everything above it closed at once.
            actions.dup2(fd, SPAWNED_FD)?;
            actions.close_from(add, SPAWNED_FD + 1)?;
            SPAWNED_FD
        }
        None => {
            actions.dup2(fd, fd)?;
            for other in inheritable_fds()? {
                if other != fd {
                    actions.close(other)?;
                }
            }
            fd
        }
    };
    // Children read nothing from the parent's stdin, as in Python; and a standard stream
    // the inherited descriptor stood in for (its parent had closed it) is /dev/null.
    if child_fd != 0 {
        actions.open(0, DEV_NULL, libc::O_RDONLY)?;
    }
    if (1..=2).contains(&fd) && child_fd != fd {
        actions.open(fd, DEV_NULL, libc::O_WRONLY)?;
    }
    let attr = SpawnAttr::new()?;
    let argv = null_terminated(argv);
    let env = null_terminated(env);
    let mut pid: libc::pid_t = 0;
    // SAFETY: the path, argv and env are NUL-terminated strings in null-terminated arrays
    // that outlive the call; the actions and attributes are initialised; posix_spawn
    // copies what it needs before it returns.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            SELF_EXE.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr(),
            env.as_ptr(),
        )
    })
    .map_err(out_of_processes)?;
    Ok(pid)
}

/// `e`, the kernel's refusal to make a process, naming the limit it met when that was its
/// reason (`EAGAIN`: its "Resource temporarily unavailable" says nothing of processes). The
/// error keeps its kind.
pub(crate) fn out_of_processes(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EAGAIN) => io::Error::new(
            e.kind(),
            format!(
                "cannot make a process ({e}): its user is at its limit of processes \
                 (RLIMIT_NPROC, `ulimit -u`), or its cgroup at its own (`pids.max`), or the \
                 system at its most (`kernel.pid_max`, `kernel.threads-max`)"
            ),
        ),
        _ => e,
    }
}

/// `strings` as C's null-terminated array of pointers (borrowing them).
fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// The descriptors of this process from 3 up that an exec would leave open: those without
/// close-on-exec.
fn inheritable_fds() -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if fd < 3 {
            continue;
        }
        // SAFETY: F_GETFD reads a descriptor's flags by its number and touches no memory;
        // a number closed meanwhile (the listing's own) gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// Forks this process. Refused unless the process has exactly one thread, because a child
/// forked from a multi-threaded process may only make async-signal-safe calls, and ours runs
/// arbitrary code.
///
/// Returns `Some(pid)` in the parent and `None` in the child.
pub(crate) fn fork_process() -> io::Result<Option<i32>> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the fork start method needs a single-threaded process, this one has {threads} threads"
        )));
    }
    // SAFETY: the process has exactly one thread (checked just above, and nothing of ours
    // can start one in between: the caller holds the only thread), so the child is a
    // complete copy in which any code may run.
    match unsafe { fork() }.map_err(|e| out_of_processes(e.into()))? {
        ForkResult::Parent { child } => Ok(Some(child.as_raw())),
        ForkResult::Child => Ok(None),
    }
}

/// Forks the fork server into a *sibling*: `clone(CLONE_PARENT)`, so that the new process's
/// parent is the server's own parent (the program's launcher thread), not the server. The
/// program then reaps it, reads its exit status and is the parent its parent-death signal
/// follows, exactly as for a re-executed child; the server's death does not touch it.
///
/// Unlike [`fork_process`] it accepts a process with threads besides the caller, because the
/// server's `init()` may run under `#[tokio::main]`, whose runtime threads exist before
/// `main`'s body runs.
///
/// It is glibc's `_Fork` with one more flag: the kernel writes the child's thread id where
/// glibc keeps it for the calling thread (the address the kernel holds for this thread,
/// `PR_GET_TID_ADDRESS`), and the child registers the thread's robust-futex list again. What
/// `fork()` adds on top, `pthread_atfork` handlers, does not run; the only one of ours (the
/// cached pid) is reset here by hand.
///
/// Returns `Some(pid)` in the server and `None` in the child.
pub(crate) fn fork_sibling() -> io::Result<Option<i32>> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    ))]
    {
        let tid_at = glibc_tid_address();
        let robust = robust_list();
        let mut flags = libc::CLONE_PARENT | libc::SIGCHLD;
        if tid_at.is_some() {
            flags |= libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
        }
        let tid_at = tid_at.unwrap_or(std::ptr::null_mut());
        // SAFETY: a fork-like clone: no new stack (the child runs on a copy of this one, as
        // after fork) and no shared memory (no CLONE_VM), so the child is a copy of this
        // process in which only this thread runs. The argument order (flags, stack, parent
        // tid, child tid, tls) is the kernel's default one, that of the architectures this
        // block is compiled for. `tid_at` is null or the address of this thread's own tid
        // word, which the kernel writes in the child's copy of the memory. Any other thread
        // is an idle runtime worker (see `serve`'s caller: the server took over the main
        // thread in `init()` before any user task ran) holding no lock, so the copy's locks
        // are all free.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags as libc::c_ulong,
                0 as libc::c_ulong,
                std::ptr::null_mut::<libc::c_int>(),
                tid_at,
                0 as libc::c_ulong,
            )
        };
        match cvt(r).map_err(out_of_processes)? {
            0 => {
                if let Some((head, len)) = robust {
                    // SAFETY: `head` is this thread's robust-list head as glibc registered
                    // it (read back from the kernel before the clone); it lies in the
                    // thread's descriptor, which the child has a copy of at the same
                    // address. The kernel clears the registration in a new process.
                    unsafe {
                        libc::syscall(libc::SYS_set_robust_list, head, len);
                    }
                }
                super::pid::forget_cached_pid();
                Ok(None)
            }
            pid => Ok(Some(pid as i32)),
        }
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "loongarch64"
    )))]
    {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the fork server is not supported on this architecture",
        ))
    }
}

/// Where glibc keeps the calling thread's kernel thread id (its `struct pthread`'s `tid`):
/// the address glibc gave the kernel with `set_tid_address` when the thread started. `None`
/// where the kernel does not say (`PR_GET_TID_ADDRESS` needs `CONFIG_CHECKPOINT_RESTORE`) or
/// the C library is not glibc (musl keeps another word there).
fn glibc_tid_address() -> Option<*mut libc::c_int> {
    #[cfg(target_env = "gnu")]
    {
        let mut at: *mut libc::c_int = std::ptr::null_mut();
        // SAFETY: PR_GET_TID_ADDRESS writes one pointer to the address passed, which is that
        // of a live local of pointer type.
        let r = unsafe {
            libc::prctl(
                libc::PR_GET_TID_ADDRESS,
                &mut at as *mut *mut libc::c_int,
                0,
                0,
                0,
            )
        };
        (r == 0 && !at.is_null()).then_some(at)
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// The calling thread's robust-futex list registration (head, length), as glibc made it.
fn robust_list() -> Option<(*mut libc::c_void, libc::size_t)> {
    let mut head: *mut libc::c_void = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: get_robust_list for pid 0 (this thread) writes one pointer and one size to the
    // two addresses passed, both of live locals of those types.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0 as libc::c_long,
            &mut head as *mut *mut libc::c_void,
            &mut len as *mut libc::size_t,
        )
    };
    (r == 0 && !head.is_null()).then_some((head, len))
}

/// Makes SIGINT ignored in this process (the fork server: a terminal's Ctrl-C reaches the
/// whole process group, and the server's life is the program's to decide). Returns the
/// disposition it replaced, for the server's children to take back.
pub(crate) fn ignore_sigint() -> io::Result<SavedSignal> {
    ignore_signal(Signal::SIGINT).map(SavedSignal)
}

/// Ignores the signals a terminal sends a whole foreground process group (Ctrl-C's SIGINT,
/// Ctrl-\'s SIGQUIT, Ctrl-Z's SIGTSTP), for a process whose parent decides what they mean.
pub(crate) fn ignore_terminal_signals() -> io::Result<()> {
    for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTSTP] {
        ignore_signal(sig)?;
    }
    Ok(())
}

/// Ignores SIGHUP, which a shell sends to each of its jobs' process groups when its
/// terminal goes: for a process that follows its parent's death instead (a
/// `SharedMemoryManager`'s server, which must outlive the hang-up long enough to clean up).
pub(crate) fn ignore_hangup() -> io::Result<()> {
    ignore_signal(Signal::SIGHUP).map(drop)
}

/// Ignores SIGTERM, for a process that must outlive the others long enough to clean up after
/// them (the segment tracker: a `kill` of every process of a program, as a service manager
/// sends, ends the program, whose end then ends the tracker).
pub(crate) fn ignore_sigterm() -> io::Result<()> {
    ignore_signal(Signal::SIGTERM).map(drop)
}

/// Makes this process the leader of a new session, with no controlling terminal: signals a
/// terminal or a shell sends to the program's process group no longer reach it.
pub(crate) fn start_own_session() -> io::Result<()> {
    nix::unistd::setsid().map(drop).map_err(io::Error::from)
}

/// Makes SIGPIPE ignored, as Rust's start-up does before `main` (for a process that takes
/// its role before it): a write to a closed pipe or socket is then an `EPIPE` error instead
/// of the end of the process.
pub(crate) fn ignore_sigpipe() -> io::Result<()> {
    ignore_signal(Signal::SIGPIPE).map(drop)
}

/// Puts every signal that has a handler back to its default and keeps those ignored, as
/// `execve` does: for a forked child, whose handlers are its parent's. Tokio's, for one,
/// write to a pipe the child no longer has, so they would swallow a SIGTERM or Ctrl-C's
/// SIGINT. Async-signal-safe: only `sigaction` calls.
pub(crate) fn default_signal_handlers() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: a zeroed `sigaction` is a valid value of the plain C struct, and the
        // first call only reads the disposition into it.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: see above; a signal the C library keeps for itself gives an error, and is
        // left alone.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0
            || old.sa_sigaction == libc::SIG_DFL
            || old.sa_sigaction == libc::SIG_IGN
        {
            continue;
        }
        // SAFETY: zeroed, with SIG_DFL as its handler: the default disposition, which runs
        // no code in signal context.
        let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
        default.sa_sigaction = libc::SIG_DFL;
        // SAFETY: as above.
        unsafe { libc::sigaction(sig, &default, std::ptr::null_mut()) };
    }
}

/// Sets `sig` to be ignored; returns the disposition it replaced.
fn ignore_signal(sig: Signal) -> io::Result<nix::sys::signal::SigAction> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, sigaction};
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in signal context, so no handler of ours can break an
    // invariant of the interrupted code.
    Ok(unsafe { sigaction(sig, &ignore) }?)
}

/// Puts back the SIGINT disposition [`ignore_sigint`] replaced (in a child forked since).
pub(crate) fn restore_sigint(saved: &SavedSignal) -> io::Result<()> {
    // SAFETY: the disposition is the one this very memory image had before `ignore_sigint`
    // (the child is a copy of the process that saved it): the default, ignore, or a handler
    // installed then, whose code and data are in the copy as they were.
    unsafe { nix::sys::signal::sigaction(Signal::SIGINT, &saved.0) }?;
    Ok(())
}

/// A signal disposition saved to be restored.
pub(crate) struct SavedSignal(nix::sys::signal::SigAction);

/// Whether the process behind `pidfd` is a child of this process, not yet reaped (for a
/// pid another process reported, such as the fork server's children).
pub(crate) fn is_own_child(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    match waitid(
        Id::PIDFd(pidfd),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
    ) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::ECHILD) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Whether the kernel reaps this process's children itself as they end (SIGCHLD ignored, or
/// handled with `SA_NOCLDWAIT`): a child that ends before its parent holds its pidfd is then
/// gone, pid and exit status, so a start must not let a child run that far before.
pub(crate) fn children_reaped_by_kernel() -> bool {
    // SAFETY: a zeroed `sigaction` is a valid value of the plain C struct; the call only
    // reads the disposition into it.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: see above; no disposition is changed.
    if unsafe { libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) } != 0 {
        return false;
    }
    old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0
}

/// Sends SIGKILL to our child `pid`, which has not been reaped (so the pid is still its).
pub(crate) fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Kills our child `pid` (not yet reaped) and reaps it: a start that failed leaves nothing
/// behind.
pub(crate) fn kill_and_reap(pid: i32) {
    kill_pid(pid);
    let _ = wait_pid_blocking(pid);
}

/// The number of threads in this process, from `/proc/self/status`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads line in /proc/self/status"))
}

/// A pidfd for `pid`: readable once the process has exited.
///
/// Race-free only for our own children that we have not reaped (their pid cannot be reused
/// until then).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers by value and touches none of our memory.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: on success the kernel handed us a fresh descriptor (close-on-exec by
    // definition) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd of `pid`; `None` if there is no such process (any more).
pub(crate) fn pidfd_of(pid: u32) -> io::Result<Option<OwnedFd>> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(None);
    };
    match pidfd_open(raw) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The most descendants [`descendants_of`] gives pidfds of.
const MAX_DESCENDANTS: usize = 16 * 1024;

/// Pidfds of the live descendants of `pid` (its children, theirs, and so on), as
/// `/proc/<pid>/task/<tid>/children` lists them. A process that forks or exits meanwhile may
/// be missed; a pidfd is kept only if its process still has the parent it was listed under
/// once the pidfd pins it, so that a pid reused in between is never taken for a descendant.
pub(crate) fn descendants_of(pid: u32) -> Vec<OwnedFd> {
    let mut found = Vec::new();
    let mut parents = vec![pid];
    while let Some(parent) = parents.pop() {
        for child in children_of(parent) {
            if found.len() >= MAX_DESCENDANTS {
                return found;
            }
            let Ok(Some(fd)) = pidfd_of(child) else {
                continue;
            };
            if parent_of(child) == Some(parent) {
                found.push(fd);
                parents.push(child);
            }
        }
    }
    found
}

/// The children of `pid`, from each of its threads' `children` list in `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The parent of `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid ...`, where the
/// command's name may hold spaces and parentheses: the fields after the last `)` are read).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `signal` to the process behind `pidfd`; a process that already exited is not an
/// error (it cannot be a recycled pid: the pidfd pins the process).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the syscall takes a descriptor, a signal number and a null siginfo pointer
    // (allowed: the kernel then fills in a default), none of which borrow our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match cvt(r) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Python's exit code convention: the exit status, or `-N` for death by signal N.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(-(sig as i32)),
        _ => None,
    }
}

/// Reaps our child behind `pidfd` if it has exited; `None` if it is still running.
///
/// A child the kernel reaped itself, as it does in a program that ignores SIGCHLD, is no
/// child to wait for any more (`ECHILD`): its exit code is then the one the kernel kept for
/// its pidfd, and an error says why where the kernel keeps none.
pub(crate) fn try_wait_pidfd(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    match waitid(
        Id::PIDFd(pidfd),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    ) {
        Ok(status) => Ok(exit_code(status)),
        Err(nix::errno::Errno::ECHILD) => reaped_exit_code(pidfd).map(Some),
        Err(e) => Err(e.into()),
    }
}

/// The exit code of the process behind `pidfd`, which ended and was reaped by someone else
/// (the kernel, in a program that ignores SIGCHLD): Linux keeps it for the pidfd from 6.15
/// on (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`).
fn reaped_exit_code(pidfd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: `pidfd_info` is a plain C struct of integers, for which zero is a valid value.
    let mut info: libc::pidfd_info = unsafe { std::mem::zeroed() };
    info.mask = u64::from(libc::PIDFD_INFO_EXIT);
    // SAFETY: PIDFD_GET_INFO writes at most `size_of::<pidfd_info>()` bytes (the size its
    // request number encodes) into `info`, which lives for the call; `pidfd` is open.
    let r = unsafe { libc::ioctl(pidfd.as_raw_fd(), libc::PIDFD_GET_INFO, &mut info) };
    if r == 0 && info.mask & u64::from(libc::PIDFD_INFO_EXIT) != 0 {
        let status = info.exit_code;
        return Ok(if libc::WIFSIGNALED(status) {
            -libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        });
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "the child's exit status is lost: it was reaped by another wait, or by the kernel \
         because this program ignores SIGCHLD (SIG_IGN), and this kernel (before Linux 6.15) \
         keeps no exit status for pidfds",
    ))
}

/// Waits for our child `pid` to exit and reaps it, blocking the calling thread. For the fork
/// server (single-threaded, no runtime) and for the exit handler.
pub(crate) fn wait_pid_blocking(pid: i32) -> io::Result<i32> {
    wait_until_exited(|| waitpid(Pid::from_raw(pid), None))
}

/// Whether `e` says the process waited for is no child of ours (`ECHILD`): in a program
/// that ignores SIGCHLD, the kernel reaps its children itself.
pub(crate) fn is_no_child(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECHILD)
}

/// Repeats a blocking wait until it reports an exit (retrying on `EINTR` and on reports of
/// stops and continues).
fn wait_until_exited(mut wait: impl FnMut() -> nix::Result<WaitStatus>) -> io::Result<i32> {
    loop {
        match wait() {
            Ok(status) => {
                if let Some(code) = exit_code(status) {
                    return Ok(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the kernel to SIGKILL this process when the thread that started it exits.
pub(crate) fn set_parent_death_signal() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    Ok(())
}

/// The eventfd [`on_sigterm`] counts SIGTERMs on; -1 until [`sigterm_fd`] sets it.
static SIGTERM_EVENT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// The SIGTERM handler of [`sigterm_fd`]: adds one to its eventfd. Async-signal-safe: an
/// atomic load and `write(2)`, with `errno` kept as it was.
extern "C" fn on_sigterm(_: libc::c_int) {
    let fd = SIGTERM_EVENT.load(std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let one: u64 = 1;
    // SAFETY: `__errno_location` gives this thread's errno, valid for the thread's life; the
    // write reads 8 bytes from a local `u64`, to a descriptor this process never closes.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, (&raw const one).cast(), std::mem::size_of::<u64>());
        *errno = saved;
    }
}

/// SIGTERM as a descriptor that becomes readable when it arrives, for a process that ends
/// its work before it exits. The handler is this process's own, set here, and writes to a
/// descriptor made here: no handler state a forked process inherited (a runtime's of its
/// parent) is involved, and whichever thread takes the signal, the descriptor hears of it.
/// Call it once per process: the handler's copy of an earlier call's descriptor stays
/// open.
pub(crate) fn sigterm_fd() -> io::Result<OwnedFd> {
    use std::os::fd::IntoRawFd;
    let fd = super::eventfd::eventfd(false)?;
    // The handler's own descriptor, open for the rest of the process's life.
    let handlers = super::dup_fd(fd.as_fd())?.into_raw_fd();
    SIGTERM_EVENT.store(handlers, std::sync::atomic::Ordering::Relaxed);
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_sigterm),
        nix::sys::signal::SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler is async-signal-safe (see `on_sigterm`).
    unsafe { nix::sys::signal::sigaction(Signal::SIGTERM, &action) }?;
    Ok(fd)
}

/// Asks for SIGTERM instead of SIGKILL when the thread that started this process exits, if
/// a parent-death signal is set: for a process that catches SIGTERM to clean up.
pub(crate) fn soften_parent_death_signal() -> io::Result<()> {
    if nix::sys::prctl::get_pdeathsig()?.is_some() {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    }
    Ok(())
}

/// This process's parent pid.
pub(crate) fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// Runs `f` when the process exits normally (`exit`, or returning from `main`).
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with the C ABI and no arguments, as atexit requires.
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit refused the handler"));
    }
    Ok(())
}

/// Flushes Rust's stdout and stderr buffers.
pub(crate) fn flush_std_streams() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

/// Ends this process at once with `code`, running no exit handlers and no destructors
/// (what a forked child must do: the handlers belong to its parent). Flushes Rust's standard
/// streams first.
pub(crate) fn exit_now(code: i32) -> ! {
    flush_std_streams();
    // SAFETY: _exit ends the process; it is async-signal-safe and touches no memory of ours.
    unsafe { libc::_exit(code) }
}

/// Removes an environment variable.
///
/// Called only in a child, before its target runs and before code of ours starts a thread
/// in it (see [`set_env_var`] for the three ways a child gets there).
pub(crate) fn clear_env_var(name: &OsStr) {
    // SAFETY: no other thread of this process reads or writes the environment at this point,
    // as argued at `set_env_var`, whose callers are this function's.
    unsafe { std::env::remove_var(name) }
}

/// Sets an environment variable (`name` non-empty, without `=` or NUL; `value` without NUL:
/// checked by the caller, so this does not panic).
///
/// Called only in a child, before its target runs and before code of ours starts a thread
/// in it: a re-executed child from the executable's constructor, before `main`, or from
/// `init()`, whose docs ask that it come before the program starts threads; a child of the
/// fork server, forked from the server's only thread that runs code of ours; a `fork` child
/// of a process that `fork_process` found single-threaded, before it builds its runtime.
pub(crate) fn set_env_var(name: &OsStr, value: &OsStr) {
    // SAFETY: no other thread of this process reads or writes the environment at this point.
    // A re-executed child reaches this line before `main` (from the constructor, when the
    // process has one thread), or from `init()`, which `main` calls before starting any
    // thread (a documented requirement of `init()`). A forked child (by the fork server or
    // by `fork_process`) has one thread, as `fork` copies only the calling thread, and none
    // of the parent's threads held std's environment lock at the fork: `fork_process`'s
    // parent had no other thread, and the fork server's other threads, if `init()` was
    // called from an async `main`, are its idle runtime's, which never touch the
    // environment. The target, which may start threads, runs only after this call.
    unsafe { std::env::set_var(name, value) }
}

/// Checks that `dir` is a directory this process may enter (search permission), as a child
/// will: `NotFound`, `NotADirectory` or `PermissionDenied` otherwise.
pub(crate) fn check_enterable_dir(dir: &std::path::Path) -> io::Result<()> {
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    nix::unistd::access(dir, nix::unistd::AccessFlags::X_OK)?;
    Ok(())
}

/// This process's pid.
pub(crate) fn current_pid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Takes ownership of a descriptor this process inherited from its parent (its number came
/// in the bootstrap environment variable). Checks that it is an open socket.
pub(crate) fn adopt_inherited_socket(raw: RawFd) -> io::Result<OwnedFd> {
    let st = nix::sys::stat::fstat(
        // SAFETY: fstat only reads `raw`; if it is not open the call fails with EBADF.
        unsafe { BorrowedFd::borrow_raw(raw) },
    )?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::other(format!(
            "descriptor {raw} is not a socket"
        )));
    }
    nix::fcntl::fcntl(
        // SAFETY: checked open just above; we only set a flag on it.
        unsafe { BorrowedFd::borrow_raw(raw) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    // SAFETY: the descriptor is open (fstat succeeded) and was handed to this process for it
    // alone: the parent kept its own end, and no code here has wrapped this number before
    // (`init()` consumes the environment variable that names it).
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Whether `fd` is readable now, without waiting.
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(poll_readable(&[fd], Some(std::time::Duration::ZERO))?
        .first()
        .copied()
        .unwrap_or(false))
}

/// Blocks until at least one of `fds` is readable (or hung up); returns a flag per fd.
/// `timeout` of `None` waits for ever.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    // A signal cuts a wait short: the next waits for what is left, so that a stream of
    // signals cannot stretch the timeout.
    let deadline = timeout.map(|d| std::time::Instant::now() + d);
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let left = at.saturating_duration_since(std::time::Instant::now());
                // Rounded up: a poll for less than a millisecond would not wait at all.
                PollTimeout::try_from(
                    left.div_duration_f64(std::time::Duration::from_millis(1))
                        .ceil() as u64,
                )
                .unwrap_or(PollTimeout::MAX)
            }
        };
        match poll(&mut pfds, timeout) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(pfds
        .iter()
        .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}

/// Waits (blocking the thread) for our child behind `pidfd` to exit, and reaps it.
pub(crate) fn wait_pidfd_blocking(pidfd: BorrowedFd<'_>) -> io::Result<i32> {
    wait_until_exited(|| waitid(Id::PIDFd(pidfd), WaitPidFlag::WEXITED))
}

/// A bare fork whose child exits at once, reaped with `waitpid`: the floor the `fork` start
/// method is measured against. A bench hook only (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub(crate) fn fork_and_reap() -> io::Result<()> {
    match fork_process()? {
        Some(pid) => wait_pid_blocking(pid).map(drop),
        None => exit_now(0),
    }
}

/// Points stdin at `/dev/null` (a forked child reads nothing of its parent's input).
pub(crate) fn stdin_from_dev_null() -> io::Result<()> {
    let null = nix::fcntl::open(DEV_NULL, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut stdin = std::mem::ManuallyDrop::new(
        // SAFETY: descriptor 0 is only borrowed as the target of dup2, which replaces it
        // atomically; ManuallyDrop keeps this wrapper from closing it afterwards.
        unsafe { OwnedFd::from_raw_fd(0) },
    );
    nix::unistd::dup2(&null, &mut stdin)?;
    Ok(())
}

/// Opens `/dev/null` on each standard descriptor (0, 1, 2) that is closed, as Rust's own
/// start-up does before `main`. A child takes its role before that start-up runs, so without
/// this the first descriptors it opened (its runtime's, its connections') would take those
/// numbers, and what it prints would go into them.
pub(crate) fn open_closed_standard_fds() -> io::Result<()> {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed one fails with EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1 {
            continue;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBADF) {
            return Err(err);
        }
        // The lowest free number, which is `fd`: those below it are open by now.
        let null = nix::fcntl::open(DEV_NULL, OFlag::O_RDWR, Mode::empty())?;
        if null.as_raw_fd() == fd {
            let _ = null.into_raw_fd();
        } else {
            redirect_std(null.as_fd(), fd)?;
        }
    }
    Ok(())
}

/// Points standard descriptor `target` (1 for stdout, 2 for stderr) at `fd`.
pub(crate) fn redirect_std(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if !(0..=2).contains(&target) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut std_fd = std::mem::ManuallyDrop::new(
        // SAFETY: `target` is 0, 1 or 2, only borrowed as the target of dup2, which replaces
        // it atomically; ManuallyDrop keeps this wrapper from closing it afterwards.
        unsafe { OwnedFd::from_raw_fd(target) },
    );
    nix::unistd::dup2(fd, &mut std_fd)?;
    Ok(())
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// The name of signal `n` (`"SIGTERM"`), if it is one.
pub(crate) fn signal_name(n: i32) -> Option<&'static str> {
    Signal::try_from(n).ok().map(Signal::as_str)
}

/// The number of CPUs this process may run on (its affinity mask), in one system call; 1 if
/// the mask cannot be read.
pub(crate) fn cpus_allowed() -> usize {
    use nix::sched::{CpuSet, sched_getaffinity};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .count()
            .max(1),
        Err(_) => 1,
    }
}

/// The size of a transparent huge page on the machines we run on.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the spare capacity of `v` with huge pages where it covers whole
/// ones: a vector about to be filled with megabytes faults its memory in 2 MiB at a time,
/// not 4 KiB. Only a hint: nothing changes where the kernel declines it (or on other
/// systems), and the vector's contents and validity are untouched either way.
pub(crate) fn advise_huge_pages<T>(v: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        let spare = v.spare_capacity_mut();
        let start = spare.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(spare);
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = end - end % HUGE_PAGE;
        if last > first
            && let Some(ptr) = std::ptr::NonNull::new(first as *mut libc::c_void)
        {
            // SAFETY: `first..last` lies within the vector's allocation, which we hold
            // mutably; MADV_HUGEPAGE changes only how the kernel backs those pages later,
            // not their contents or whether they are mapped.
            let _ = unsafe {
                nix::sys::mman::madvise(
                    ptr,
                    last - first,
                    nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
                )
            };
        }
    }
}

/// Makes this process keep the memory it frees for its next allocations, instead of giving
/// large blocks back to the kernel at once and faulting fresh zeroed pages in for the next
/// ones. For a pool worker, which allocates and frees buffers of the same sizes task after
/// task. (glibc only; other allocators are left as they are.)
pub(crate) fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc's thresholds for serving allocations from mmap and
    // for trimming the heap; every value is valid for both (the mmap one is at glibc's
    // ceiling of 32 MiB on 64-bit), and it is called before the worker allocates much.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::time::Duration;

    extern "C" fn ignore(_: libc::c_int) {}

    #[test]
    fn a_stream_of_signals_does_not_stretch_a_poll_timeout() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let action = SigAction::new(
            SigHandler::Handler(ignore),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, which is async-signal-safe; no one else in this
        // test binary handles SIGURG.
        unsafe { sigaction(Signal::SIGURG, &action) }.unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let poller = {
            let done = done.clone();
            std::thread::spawn(move || {
                let ready = poll_readable(&[r.as_fd()], Some(Duration::from_millis(100)));
                done.store(true, SeqCst);
                ready
            })
        };
        let thread = std::os::unix::thread::JoinHandleExt::as_pthread_t(&poller);
        // Far more signals, over far longer than the timeout, than a poll that starts its
        // timeout again after each would ever outlast.
        let mut sent = 0;
        while !done.load(SeqCst) && sent < 1000 {
            // SAFETY: the thread is joined only below, so its handle stays valid (a thread
            // that has ended and is not joined yet gets no signal: ESRCH).
            unsafe { libc::pthread_kill(thread, libc::SIGURG) };
            sent += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        let outlasted = !done.load(SeqCst);
        let ready = poller.join().unwrap().unwrap();
        assert!(!outlasted, "the poll outlasted {sent} signals over 10 s");
        assert_eq!(ready, vec![false]);
    }
}
