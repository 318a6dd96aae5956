//! `Process`: Python's `multiprocessing.Process`, awaited on tokio.

use std::ffi::OsStr;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::Termination;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::join_handle::JoinHandle;
use crate::start::{self, Child, Launch, StartMethod};
use crate::sys;
use crate::task::{ProcessEntry, Target, call_entry, process_entry};
use crate::wire::{Encoded, Fd, Hello};

/// [`Process::DEFAULT_START_TIMEOUT`], for the crate's own defaults.
pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// A process not started yet: its target, arguments and options. Made by [`Process::new`];
/// [`start`](ProcessBuilder::start) runs it.
///
/// `T` is what [`start`](ProcessBuilder::start) gives: a [`Process`], or for
/// [`Process::call`] a [`JoinHandle`] that also hands back the target's result.
#[must_use = "a process does nothing until it is started"]
#[derive(Debug)]
pub struct ProcessBuilder<T = Process> {
    launch: Result<Launch>,
    /// [`Process::call`]'s end of the socket the child answers on.
    answer: Option<OwnedFd>,
    _start: PhantomData<fn() -> T>,
}

/// A child process running a target (Python's `multiprocessing.Process`).
///
/// Waiting is a readiness wait on the child's pidfd, registered with tokio's reactor: no
/// thread is parked, no `SIGCHLD` handler installed, nothing polled.
///
/// The child ends when its target returns, as a program ends when `main` does: threads
/// the target started are not waited for, nor the blocking tasks (`spawn_blocking`) an
/// `async fn` target left running (Python waits for a child's non-daemon threads).
///
/// Dropping a `Process` does not stop the child (as in Python); the child is reaped when it
/// ends. At normal exit of the program, daemon children are sent SIGTERM and every child is
/// waited for. Every child dies with its parent, even when the parent is killed by SIGKILL.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
    daemon: bool,
}

impl Process {
    /// How long a child may take from its start to the end of its bootstrap (reaching
    /// [`init`](crate::init) and answering the parent) before the start fails, unless
    /// [`ProcessBuilder::start_timeout`] says otherwise.
    pub const DEFAULT_START_TIMEOUT: Duration = DEFAULT_START_TIMEOUT;

    /// Describes a process that will run `target(args)`, like
    /// `multiprocessing.Process(target=target, args=args)`.
    ///
    /// `target` is a `fn` item or a closure that captures nothing; `args` is a tuple of 0 to
    /// 6 values that implement serde's traits (pipe ends, queues and other objects of this
    /// crate included), passed as Python passes `args=(...)`. An `async fn` target runs on a
    /// runtime of the child's own. The target returns what `main` may return: `()`, an
    /// [`ExitCode`](std::process::ExitCode), or a `Result` whose `Err` is printed on the
    /// child's stderr and gives exit code 1. A panic prints its message on the child's
    /// stderr and gives exit code 1. A target that returns a value for the caller (a `u64`,
    /// say, which rustc refuses here as "the trait `Termination` is not implemented for
    /// `u64`") is started with [`Process::call`], whose handle gives the value back.
    ///
    /// Arguments are encoded here; an argument that cannot be encoded makes
    /// [`start`](ProcessBuilder::start) fail.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// fn greet(name: String, times: u32) {
    ///     for _ in 0..times {
    ///         println!("hello {name}");
    ///     }
    /// }
    /// let mut p = tokio_multiprocessing::Process::new(greet, ("bob".to_string(), 2))
    ///     .name("greeter")
    ///     .start()
    ///     .await?;
    /// assert_eq!(p.join().await?, 0);
    /// # Ok(()) }
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new<F, A, M>(target: F, args: A) -> ProcessBuilder
    where
        F: Target<A, M>,
        F::Output: Termination,
        A: Serialize + DeserializeOwned,
    {
        let _ = target;
        ProcessBuilder::describe(
            process_entry::<F, A, M>(),
            F::IS_ASYNC,
            Encoded::new(&args),
            None,
        )
    }

    /// Describes a process that will run `target(args)` and hand its return value back:
    /// procspawn's `spawn`, aiomultiprocess's `Worker`, pebble's `concurrent.process`, or
    /// a `ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1).submit`. Its
    /// [`start`](ProcessBuilder::start) gives a [`JoinHandle`], whose
    /// [`join`](JoinHandle::join) gives the result.
    ///
    /// `target` and `args` are as for [`new`](Self::new), and the builder's options are the
    /// same; the target returns any serde value (for an `async fn`, its future resolves to
    /// one), encoded in the child and decoded here, descriptors included. A panic comes
    /// back as a [`TaskError`](crate::TaskError) carrying its message and location, as a
    /// pool task's does, and is not printed on the child's stderr.
    ///
    /// Every call is a fresh process, with the cost of a start (an exec of the program with
    /// the default `spawn` method, 1–1.5 ms on a small VM; about a quarter of that with
    /// `forkserver`): for many short calls, a [`Pool`](crate::Pool) reuses its workers.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// fn fib(n: u64) -> u64 {
    ///     if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
    /// }
    /// let mut h = tokio_multiprocessing::Process::call(fib, (20,)).start().await?;
    /// assert_eq!(h.join().await?, 6765);
    /// # Ok(()) }
    /// ```
    pub fn call<F, A, M>(target: F, args: A) -> ProcessBuilder<JoinHandle<F::Output>>
    where
        F: Target<A, M>,
        F::Output: Serialize + DeserializeOwned,
        A: Serialize + DeserializeOwned,
    {
        let _ = target;
        let (args, answer) = match sys::socketpair_stream() {
            // An error names the arguments' type, not the wrapper that carries the socket.
            Ok((ours, theirs)) => (
                Encoded::new(&(args, Fd::from(theirs))).map_err(Error::naming::<A>),
                Some(ours),
            ),
            Err(e) => (Err(e.into()), None),
        };
        ProcessBuilder::describe(call_entry::<F, A, M>, F::IS_ASYNC, args, answer)
    }

    /// The process's name (`Process-N`, or `Process-1:N` for a child's child, unless set:
    /// see [`ProcessBuilder::name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this is a daemon process.
    pub fn daemon(&self) -> bool {
        self.daemon
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid() as u32
    }

    /// The child's process id, as [`pid`](Self::pid) (Python's `ident`, an alias of `pid`).
    ///
    /// Python's `ident` is `None` before `start()`; here a `Process` exists only once started
    /// (before, it is a [`ProcessBuilder`], which has neither method), so there is always
    /// one.
    pub fn ident(&self) -> u32 {
        self.pid()
    }

    /// The child's pidfd: it becomes readable when the child ends, so it can be waited on
    /// with any poller (Python's `sentinel`).
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.child.pidfd()
    }

    /// The exit code if the child has ended: the code it passed to `exit` (0 after its target
    /// returned, 1 after a panic), or `-N` if signal N killed it. `None` while it runs.
    ///
    /// # Errors
    /// An I/O error from checking the child's state.
    pub fn exitcode(&mut self) -> Result<Option<i32>> {
        self.child.try_wait()
    }

    /// Whether the child is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the child to end and returns its exit code (see [`exitcode`](Self::exitcode)).
    /// Once the child has been joined, each later call returns the same code at once.
    ///
    /// In a program that ignores SIGCHLD, where the kernel reaps each child itself, the
    /// exit code is the one the kernel keeps for the child's pidfd (Linux 6.15 and later).
    ///
    /// # Errors
    /// An I/O error from the kernel, waiting on the child's pidfd or reading its exit
    /// status (one that says the status is lost on an older kernel that reaped the child).
    ///
    /// # Cancel safety
    /// This method is cancel safe: it waits for readiness of the pidfd, and a join dropped
    /// before the child ends leaves the `Process` as it was.
    pub async fn join(&mut self) -> Result<i32> {
        self.child.wait().await
    }

    /// Waits at most `timeout` for the child to end: `Some(exitcode)` if it did, `None` if it
    /// is still running (Python's `join(timeout)`, which returns either way).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    ///
    /// # Cancel safety
    /// Cancel safe, like [`join`](Self::join).
    pub async fn join_timeout(&mut self, timeout: Duration) -> Result<Option<i32>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Sends SIGTERM (Python's `terminate()`); does nothing if the child has been joined.
    ///
    /// # Errors
    /// An I/O error from the kernel.
    pub fn terminate(&self) -> Result<()> {
        self.child.signal(sys::SIGTERM)
    }

    /// Sends SIGINT (Python 3.14's `interrupt()`, Ctrl-C for this child alone); does nothing
    /// if the child has been joined. A child that keeps SIGINT's default action ends with
    /// exit code -2, where Python's raises `KeyboardInterrupt` and exits with 1; one that
    /// awaits `tokio::signal::ctrl_c()` (or handles SIGINT otherwise) decides what it means,
    /// say, finishing its work and exiting 0.
    ///
    /// # Errors
    /// An I/O error from the kernel.
    pub fn interrupt(&self) -> Result<()> {
        self.child.signal(sys::SIGINT)
    }

    /// Sends SIGKILL (Python's `kill()`); does nothing if the child has been joined.
    ///
    /// # Errors
    /// An I/O error from the kernel.
    pub fn kill(&self) -> Result<()> {
        self.child.signal(sys::SIGKILL)
    }

    /// Releases what the handle holds, the child's pidfd above all, once the child has ended
    /// (Python's `close()`). Dropping the handle of an ended child does the same; `close`
    /// also says whether the child had ended.
    ///
    /// It takes the handle, so a use after `close` is a compile error rather than Python's
    /// `ValueError`. A child still running is handed back in the error, to be joined or
    /// terminated and closed again.
    ///
    /// # Errors
    /// A [`CloseError`] holding this `Process`: [`Error::ProcessRunning`] if the child is
    /// still running (Python's `ValueError`), or an I/O error from checking its state.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// fn nap() {
    ///     std::thread::sleep(std::time::Duration::from_millis(50));
    /// }
    /// let p = tokio_multiprocessing::Process::new(nap, ()).start().await?;
    /// let mut p = match p.close() {
    ///     Ok(()) => return Ok(()), // it had already ended
    ///     Err(e) => e.into_inner(), // still running: join it first
    /// };
    /// p.join().await?;
    /// p.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(mut self) -> std::result::Result<(), CloseError> {
        match self.child.try_wait() {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(CloseError {
                error: Error::ProcessRunning { pid: self.pid() },
                process: Box::new(self),
            }),
            Err(error) => Err(CloseError {
                error,
                process: Box::new(self),
            }),
        }
    }

    /// A handle that kills this process from elsewhere (another task that does not own the
    /// `Process`): a duplicate of its pidfd, so it never reaches another process that
    /// reused the pid.
    pub(crate) fn kill_handle(&self) -> Result<KillHandle> {
        Ok(KillHandle(std::sync::Arc::new(sys::dup_fd(
            self.sentinel(),
        )?)))
    }
}

/// A [`Process::close`] that failed, with the process handed back.
pub struct CloseError {
    error: Error,
    process: Box<Process>,
}

impl CloseError {
    /// Why the close failed: [`Error::ProcessRunning`], or an I/O error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The process that was not closed.
    pub fn into_inner(self) -> Process {
        *self.process
    }

    /// The error and the process.
    pub fn into_parts(self) -> (Error, Process) {
        (self.error, *self.process)
    }
}

impl std::fmt::Debug for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseError")
            .field("error", &self.error)
            .field("process", &self.process.name)
            .finish()
    }
}

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot close {}: {}", self.process.name, self.error)
    }
}

impl std::error::Error for CloseError {}

impl From<CloseError> for Error {
    fn from(e: CloseError) -> Error {
        e.error
    }
}

/// Kills one process, from any task: see [`Process::kill_handle`].
#[derive(Debug, Clone)]
pub(crate) struct KillHandle(std::sync::Arc<std::os::fd::OwnedFd>);

impl KillHandle {
    /// Sends SIGKILL; does nothing once the process is gone.
    pub(crate) fn kill(&self) {
        let _ = sys::pidfd_send_signal(self.0.as_fd(), sys::SIGKILL);
    }

    /// A handle that reaches no process (its descriptor is not a pidfd), for unit tests.
    #[cfg(test)]
    pub(crate) fn detached() -> KillHandle {
        let null = std::fs::File::open("/dev/null").expect("/dev/null opens");
        KillHandle(std::sync::Arc::new(null.into()))
    }
}

/// Python's repr: `<Process(Process-1, started)>`, `<Process(Process-1, stopped[SIGTERM])>`.
/// The state is what is known without a system call: call [`Process::is_alive`] or
/// [`Process::exitcode`] first to refresh it.
impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.child.known_exitcode() {
            None => "started".to_string(),
            Some(0) => "stopped".to_string(),
            Some(c) if c < 0 => match sys::signal_name(-c) {
                Some(name) => format!("stopped[{name}]"),
                None => format!("stopped[{c}]"),
            },
            Some(c) => format!("stopped[{c}]"),
        };
        let daemon = if self.daemon { ", daemon" } else { "" };
        write!(f, "<Process({}, {state}{daemon})>", self.name)
    }
}

/// Python's repr of a process not started: `<Process(Process-1, initial)>`.
impl<T> std::fmt::Display for ProcessBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.launch {
            Ok(l) => {
                let daemon = if l.daemon { ", daemon" } else { "" };
                write!(f, "<Process({}, initial{daemon})>", l.name)
            }
            Err(e) => write!(f, "<Process(invalid: {e})>"),
        }
    }
}

impl AsFd for Process {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sentinel()
    }
}

impl AsRawFd for Process {
    fn as_raw_fd(&self) -> RawFd {
        self.sentinel().as_raw_fd()
    }
}

impl<T> ProcessBuilder<T> {
    /// A process that runs `entry` on `args`, with Python's default name and options.
    fn describe(
        entry: ProcessEntry,
        is_async: bool,
        args: Result<Encoded>,
        answer: Option<OwnedFd>,
    ) -> ProcessBuilder<T> {
        let identity = crate::family::next_child_identity();
        let numbers: Vec<String> = identity.iter().map(|n| n.to_string()).collect();
        ProcessBuilder {
            launch: args.map(|args| Launch {
                name: format!("Process-{}", numbers.join(":")),
                identity,
                entry,
                is_async,
                needs_runtime: is_async,
                args,
                // Python's rule: the flag is inherited from the creating process.
                daemon: crate::family::current_process().daemon(),
                method: start::get_start_method(),
                start_timeout: DEFAULT_START_TIMEOUT,
                inherit_argv: false,
                hello: Hello::ours(),
                track_at_exit: true,
                stdio: start::Stdio::default(),
                env: start::Environment::default(),
            }),
            answer,
            _start: PhantomData,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Launch)) -> Self {
        if let Ok(l) = &mut self.launch {
            f(l);
        }
        self
    }

    /// As [`with`](Self::with), for a change that may be refused: the builder then holds
    /// the error, which [`start`](ProcessBuilder::start) returns.
    fn try_with(mut self, f: impl FnOnce(&mut Launch) -> Result<()>) -> Self {
        if let Ok(l) = &mut self.launch
            && let Err(e) = f(l)
        {
            self.launch = Err(e);
        }
        self
    }

    /// Names the process (Python's `name=`). The default is Python's: `Process-N` for the
    /// N-th process the main process describes, and in a child `Process-1:N` for the N-th
    /// its parent `Process-1` describes (a pool's worker numbers its own children after its
    /// place among its parent's processes, not after its `PoolWorker-N` name).
    pub fn name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with(|l| l.name = name)
    }

    /// Makes it a daemon (Python's `daemon=True`): at normal exit of the program it is
    /// terminated (SIGTERM) rather than waited for. The default is the creating process's
    /// own flag, as in Python: a daemon's children are daemons unless told otherwise (Python
    /// refuses to start them at all; here every child dies with its parent, so a terminated
    /// daemon leaves none behind).
    pub fn daemon(self, daemon: bool) -> Self {
        self.with(|l| l.daemon = daemon)
    }

    /// Chooses the start method for this process; the default is
    /// [`get_start_method`](crate::get_start_method)'s.
    pub fn start_method(self, method: StartMethod) -> Self {
        self.with(|l| l.method = method)
    }

    /// How long the child may take to complete its bootstrap; the default is
    /// [`Process::DEFAULT_START_TIMEOUT`]. A `forkserver` start also waits at most this long
    /// for the fork server to fork the child.
    pub fn start_timeout(self, timeout: Duration) -> Self {
        self.with(|l| l.start_timeout = timeout)
    }

    /// Says that the child runs a tokio runtime although its target is a plain function
    /// that builds it with [`fresh_runtime`](crate::start::fresh_runtime) (a pool
    /// worker), so that a `fork` child builds it first.
    pub(crate) fn needs_runtime(self) -> Self {
        self.with(|l| l.needs_runtime = true)
    }

    /// Points the child's stdout at `fd` (procspawn's `Builder::stdout`, subprocess's
    /// `stdout=`): a file, or the write end of a pipe whose read end this process reads.
    /// What the target prints, and what the programs it runs print unless told otherwise,
    /// goes there; by default a child writes to this process's stdout. The child gets its
    /// own copy: this process's closes when the builder is started or dropped, so the
    /// reader of a pipe sees its end once the child and its own children are gone.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io::Read;
    /// let (mut reader, writer) = std::os::unix::net::UnixStream::pair()?;
    /// let mut p = tokio_multiprocessing::Process::new(|| println!("hello"), ())
    ///     .stdout(writer)
    ///     .start()
    ///     .await?;
    /// p.join().await?;
    /// let mut out = String::new();
    /// reader.read_to_string(&mut out)?; // (a blocking read: the child has ended)
    /// assert_eq!(out, "hello\n");
    /// # Ok(()) }
    /// ```
    pub fn stdout(self, fd: impl Into<OwnedFd>) -> Self {
        let fd = fd.into();
        self.with(|l| l.stdio.stdout = Some(fd))
    }

    /// Points the child's stderr at `fd`, as [`stdout`](Self::stdout) does its stdout: a
    /// target's panic message, and what it writes with `eprintln!`, go there.
    pub fn stderr(self, fd: impl Into<OwnedFd>) -> Self {
        let fd = fd.into();
        self.with(|l| l.stdio.stderr = Some(fd))
    }

    /// Sets an environment variable in the child (procspawn's `Builder::env`, an entry of
    /// subprocess's `env=`, `std::process::Command::env`). The child starts from this
    /// process's environment, edited by [`env`](Self::env), [`envs`](Self::envs),
    /// [`env_remove`](Self::env_remove) and [`env_clear`](Self::env_clear) in the order they
    /// are called, as `Command`'s are: the last call for a name wins. This process's own
    /// environment is left as it is.
    ///
    /// Every start method makes the same edits. A `spawn` child is executed
    /// with them, so the dynamic loader (`LD_LIBRARY_PATH`) and the C library see them; a
    /// `fork` child sets them in its copy of this process's environment before anything
    /// else; a `forkserver` child in its copy of the fork server's, which is this process's
    /// environment as it was when the server started (a variable this process set since
    /// reaches such a child only through these methods). Either way they are in place
    /// before the target runs. The crate's own variables (its bootstrap's, and glibc's
    /// allocator tunable `GLIBC_TUNABLES` that a `spawn` child starts with) serve the start
    /// and do not outlive it where the builder removed or cleared them.
    ///
    /// # Errors
    /// [`start`](ProcessBuilder::start) fails with [`Error::InvalidArgument`], naming the
    /// variable, if `key` is empty, holds `=` or a NUL byte, or is the crate's own
    /// `TOKIO_MULTIPROCESSING_BOOT` or `TOKIO_MULTIPROCESSING_TRACKER`, or if `value` holds
    /// a NUL byte.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// use tokio_multiprocessing::Process;
    ///
    /// fn level() -> Option<String> {
    ///     std::env::var("LOG_LEVEL").ok()
    /// }
    /// let mut h = Process::call(level, ()).env("LOG_LEVEL", "debug").start().await?;
    /// assert_eq!(h.join().await?.as_deref(), Some("debug"));
    /// assert!(std::env::var_os("LOG_LEVEL").is_none()); // this process's is unchanged
    ///
    /// let bad = Process::call(level, ()).env("A=B", "1").start().await;
    /// assert!(matches!(bad, Err(tokio_multiprocessing::Error::InvalidArgument(_))));
    /// # Ok(()) }
    /// ```
    pub fn env(self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.try_with(|l| l.env.set(key.as_ref(), value.as_ref()))
    }

    /// Sets several environment variables in the child, as [`env`](Self::env) does each
    /// (subprocess's `env=` dictionary; loky's `env=`, which sets variables in every
    /// worker, is [`PoolBuilder::envs`](crate::PoolBuilder::envs)). With
    /// [`env_clear`](Self::env_clear) first, they are the child's whole environment, as a
    /// subprocess's `env=` is.
    ///
    /// # Errors
    /// As [`env`](Self::env), for the first variable refused.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// fn all_vars() -> Vec<(String, String)> {
    ///     std::env::vars().collect()
    /// }
    /// let mut h = tokio_multiprocessing::Process::call(all_vars, ())
    ///     .env_clear()
    ///     .envs([("LANG", "C"), ("MODE", "batch")])
    ///     .start()
    ///     .await?;
    /// let vars = h.join().await?;
    /// assert_eq!(vars, [("LANG".into(), "C".into()), ("MODE".into(), "batch".into())]);
    /// # Ok(()) }
    /// ```
    pub fn envs<I, K, V>(self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        self.try_with(|l| {
            vars.into_iter()
                .try_for_each(|(k, v)| l.env.set(k.as_ref(), v.as_ref()))
        })
    }

    /// Removes an environment variable from the child's environment (procspawn's and
    /// `Command`'s `env_remove`), whether this process has it or an earlier
    /// [`env`](Self::env) set it.
    ///
    /// # Errors
    /// [`start`](ProcessBuilder::start) fails with [`Error::InvalidArgument`], naming the
    /// variable, if `key` is empty or holds `=` or a NUL byte.
    pub fn env_remove(self, key: impl AsRef<OsStr>) -> Self {
        self.try_with(|l| l.env.remove(key.as_ref()))
    }

    /// Leaves the child none of this process's environment variables, nor those set by
    /// earlier calls: only those set after this call (procspawn's and `Command`'s
    /// `env_clear`, subprocess's `env={...}`). See [`envs`](Self::envs) for an example.
    pub fn env_clear(self) -> Self {
        self.with(|l| l.env.clear())
    }

    /// Runs the child in directory `dir` (procspawn's and `Command`'s `current_dir`,
    /// subprocess's `cwd=`): its working directory when the target starts, whatever the
    /// start method. A relative `dir` is taken from this process's working directory when
    /// the child is started. By default a child starts in this process's working directory,
    /// whatever the method (a `forkserver` child enters it, as Python's does).
    ///
    /// # Errors
    /// [`start`](ProcessBuilder::start) fails, before any child exists, with an
    /// [`Error::Io`] that names `dir`, of kind [`NotFound`](std::io::ErrorKind::NotFound)
    /// if it does not exist, [`NotADirectory`](std::io::ErrorKind::NotADirectory) if it is
    /// not a directory, [`PermissionDenied`](std::io::ErrorKind::PermissionDenied) if it
    /// may not be entered (Python's `FileNotFoundError`, `NotADirectoryError`,
    /// `PermissionError`). A directory removed after that check fails the start with
    /// [`Error::Start`] (a `fork` child then exits with code 1, naming it on its stderr).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// use tokio_multiprocessing::{Error, Process};
    ///
    /// fn cwd() -> std::path::PathBuf {
    ///     std::env::current_dir().unwrap_or_default()
    /// }
    /// let mut h = Process::call(cwd, ()).current_dir("/").start().await?;
    /// assert_eq!(h.join().await?, std::path::Path::new("/"));
    ///
    /// match Process::call(cwd, ()).current_dir("/no/such/dir").start().await {
    ///     Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn current_dir(self, dir: impl AsRef<Path>) -> Self {
        self.with(|l| l.env.set_cwd(dir.as_ref()))
    }

    /// Gives the child `env` (a pool's, for each of its workers) in place of what the
    /// builder's calls set.
    pub(crate) fn environment(self, env: start::Environment) -> Self {
        self.with(|l| l.env = env)
    }

    /// Gives a `spawn` child the parent's command-line arguments (by default it gets only
    /// the program name, so that argument parsing before [`init`](crate::init) sees none).
    pub fn inherit_argv(self, inherit: bool) -> Self {
        self.with(|l| l.inherit_argv = inherit)
    }

    /// Sends `fingerprint` in place of this binary's in the handshake, so that tests can see
    /// the child refuse it. A test hook only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn __forge_fingerprint(self, fingerprint: Vec<u8>) -> Self {
        self.with(|l| l.hello = Hello::with_fingerprint(fingerprint))
    }

    async fn start_process(self) -> Result<(Process, Option<OwnedFd>)> {
        let launch = self.launch?;
        let (name, daemon) = (launch.name.clone(), launch.daemon);
        let child = start::launch(launch).await?;
        tracing::debug!(pid = child.pid(), %name, "process started");
        let process = Process {
            child,
            name,
            daemon,
        };
        Ok((process, self.answer))
    }
}

impl ProcessBuilder {
    /// Starts the child and waits for it to complete its bootstrap (Python's `start()`).
    ///
    /// # Errors
    /// [`Error::Encode`] if an argument could not be encoded; [`Error::InvalidArgument`] for
    /// an environment variable the builder refused (see [`env`](Self::env)); an
    /// [`Error::Io`] naming the directory for a [`current_dir`](Self::current_dir) that
    /// cannot be entered; [`Error::BinaryMismatch`] if
    /// the child runs another binary; [`Error::Start`] if the child died or timed out before
    /// completing its bootstrap (a `main` that does not call [`init`](crate::init) first is
    /// the usual cause, and the message says so) or if the `fork` method was refused.
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway kills the child it may have started, which
    /// is reaped in the background; its target may have begun to run.
    pub async fn start(self) -> Result<Process> {
        Ok(self.start_process().await?.0)
    }
}

impl<R: DeserializeOwned + Send + 'static> ProcessBuilder<JoinHandle<R>> {
    /// Starts the child of a [`Process::call`], as [`ProcessBuilder::start`] starts a
    /// process, and gives the handle that joins it and hands back its result.
    ///
    /// # Errors
    /// As [`ProcessBuilder::start`], and an I/O error if the kernel refused the socket the
    /// child answers on (descriptor limit).
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`ProcessBuilder::start`].
    pub async fn start(self) -> Result<JoinHandle<R>> {
        match self.start_process().await? {
            (process, Some(answer)) => JoinHandle::new(process, answer),
            (_, None) => Err(Error::InvalidArgument(
                "a called process has no socket to answer on".into(),
            )),
        }
    }
}

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("name", &self.name)
            .field("daemon", &self.daemon)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

#[allow(dead_code)]
fn _error_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Error>();
}
