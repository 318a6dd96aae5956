//! [`PoolBuilder`]: a pool's options, and how a pool is built from them.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::scheduler::{self, Scheduler};
use super::stats::{Counters, Tally};
use super::{LastHandle, Pool, Shared, spawn};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::start::{Environment, StartMethod};
use crate::sys;
use crate::task::{InitializerEntry, InitializerOutput, Target};
use crate::wire::Encoded;

/// What every worker of a pool is started with.
pub(super) struct Config {
    pub(super) processes: usize,
    pub(super) method: StartMethod,
    pub(super) init: Option<(InitializerEntry, Encoded)>,
    pub(super) maxtasksperchild: Option<usize>,
    /// The resident memory, in bytes, at which a worker is retired.
    pub(super) max_memory_per_child: Option<u64>,
    pub(super) concurrency: usize,
    pub(super) start_timeout: Duration,
    pub(super) spin: Duration,
    /// The CPUs this process may run on: the pool's own processes spin only on spare ones.
    pub(super) cores: usize,
    pub(super) print_panics: bool,
    /// The threads of each worker's runtime: 1 for a current-thread runtime.
    pub(super) worker_threads: usize,
    /// The cluster whose hosts run the workers; `None` for workers on this machine.
    pub(super) cluster: Option<Cluster>,
    /// How many times a task may run again when a worker dies while it may run it.
    pub(super) retries_on_worker_loss: u32,
    /// How long a worker may have no task before it is retired; `None`: for ever.
    pub(super) idle_timeout: Option<Duration>,
    /// The workers' environment variables and working directory (absolute).
    pub(super) env: Environment,
    /// Set once the pool is terminated: the starts under way cut theirs short (see
    /// [`spawn_start`](spawn::spawn_start)).
    pub(super) terminating: tokio::sync::watch::Sender<bool>,
}

impl Config {
    /// Returns once the pool is terminated.
    pub(super) async fn terminated(&self) {
        // The sender is ours: the wait ends only when the flag is set.
        let _ = self.terminating.subscribe().wait_for(|t| *t).await;
    }
}

/// Options for a [`Pool`], made by [`Pool::builder`]; [`build`](PoolBuilder::build) starts it.
#[must_use = "a pool builder does nothing until built"]
#[derive(Debug)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Result<(InitializerEntry, Encoded)>>,
    maxtasksperchild: Option<usize>,
    max_memory_per_child: Option<u64>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    concurrency: usize,
    start_timeout: Duration,
    /// `None`: the default for where the workers run.
    spin: Option<Duration>,
    print_panics: bool,
    worker_threads: usize,
    cluster: Option<Cluster>,
    retries_on_worker_loss: u32,
    idle_timeout: Option<Duration>,
    /// The workers' environment, or the first variable refused.
    env: Result<Environment>,
}

impl PoolBuilder {
    /// Python's defaults (see [`Pool::builder`]).
    pub(super) fn new() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            maxtasksperchild: None,
            max_memory_per_child: None,
            method: None,
            task_timeout: None,
            concurrency: 1,
            start_timeout: crate::Process::DEFAULT_START_TIMEOUT,
            spin: None,
            print_panics: false,
            worker_threads: 1,
            cluster: None,
            retries_on_worker_loss: 0,
            idle_timeout: None,
            env: Ok(Environment::default()),
        }
    }

    /// Sets an environment variable in every worker the pool starts, replacements included
    /// (loky's `get_reusable_executor(env={...})`), as
    /// [`ProcessBuilder::env`](crate::ProcessBuilder::env) sets it in one child: in place
    /// before the initializer runs, with every start method, this process's environment
    /// untouched.
    ///
    /// On a [`cluster`](Self::cluster) it applies to the workers on every host (Ray's
    /// `runtime_env={"env_vars": ...}`, Dask-jobqueue's `job_script_prologue`): each start
    /// carries the variables to the host's agent, which sets them in the worker it starts,
    /// over the agent's own environment (what its launcher gave it).
    ///
    /// # Errors
    /// [`build`](Self::build) fails with [`Error::InvalidArgument`], naming the variable, as
    /// [`ProcessBuilder::env`](crate::ProcessBuilder::env) says. On a cluster, a start
    /// whose variables make its request to a host larger than the maximum frame size (see
    /// [`set_max_frame_size`](crate::set_max_frame_size)) fails with
    /// [`Error::FrameTooLarge`], and the host serves on.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// fn threads(_: u32) -> Option<String> {
    ///     std::env::var("OMP_NUM_THREADS").ok()
    /// }
    /// let pool = tokio_multiprocessing::Pool::builder()
    ///     .processes(2)
    ///     .env("OMP_NUM_THREADS", "1")
    ///     .build()
    ///     .await?;
    /// let seen = pool.map(threads, 0..4).await?;
    /// assert!(seen.iter().all(|s| s.as_deref() == Some("1")));
    /// # Ok(()) }
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        if let Ok(env) = &mut self.env
            && let Err(e) = env.set(key.as_ref(), value.as_ref())
        {
            self.env = Err(e);
        }
        self
    }

    /// Sets several environment variables in every worker, as [`env`](Self::env) does each
    /// (loky's `env={...}`).
    ///
    /// # Errors
    /// As [`env`](Self::env), for the first variable refused.
    pub fn envs<I, K, V>(self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        vars.into_iter().fold(self, |b, (k, v)| b.env(k, v))
    }

    /// Runs every worker the pool starts, replacements included, in directory `dir`, as
    /// [`ProcessBuilder::current_dir`](crate::ProcessBuilder::current_dir) runs one child.
    /// A relative `dir` is taken from this process's working directory when the pool is
    /// built, and the workers started later use that same directory.
    ///
    /// On a [`cluster`](Self::cluster) (Ray's `runtime_env={"working_dir": ...}`, though no
    /// files are copied), `dir` is a path on the hosts, checked by each host's agent when it
    /// starts a worker, and a relative `dir` is taken from the agent's working directory
    /// (where its launcher started it: the login's home directory for
    /// [`Ssh`](crate::launch::Ssh)).
    ///
    /// # Errors
    /// [`build`](Self::build) fails, before it starts any worker, with an [`Error::Io`]
    /// that names `dir`, of kind `NotFound`, `NotADirectory` or `PermissionDenied`, as
    /// [`ProcessBuilder::current_dir`](crate::ProcessBuilder::current_dir) says. On a
    /// cluster, a worker's start on a host that lacks `dir` goes on to the next host with
    /// room, and the hosts where it failed are tried last by the starts after it; a start
    /// that no host with room could make fails with the last host's error, which names the
    /// host too. When no worker can start, `build` returns it (see [`build`](Self::build)
    /// for the starts that fail later).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        if let Ok(env) = &mut self.env {
            env.set_cwd(dir.as_ref());
        }
        self
    }

    /// Runs a task again, up to `n` times, when the worker running it dies (or its host
    /// is lost) before it answers, instead of failing it with
    /// [`TaskError::is_worker_lost`](crate::TaskError::is_worker_lost); the default is 0.
    ///
    /// This gives up at-most-once: a task may then run more than once, in part or in full
    /// (a lost host may even have finished it), so use it only for idempotent tasks. A
    /// task that times out or is cancelled is never run again.
    pub fn retries_on_worker_loss(mut self, n: u32) -> Self {
        self.retries_on_worker_loss = n;
        self
    }

    /// Runs the workers on the hosts of `cluster` instead of this machine; the pool's API
    /// is unchanged. The default number of processes is then the cluster's: its launcher's
    /// hosts times its workers per host (or the room of the agents connected). That room is
    /// shared by every pool on the cluster: a second pool gets what the first leaves. The
    /// start method does not apply (agents start workers with their own default);
    /// [`env`](Self::env) and [`current_dir`](Self::current_dir) apply on the hosts.
    ///
    /// A task whose arguments hold descriptors (a local `Queue`, `Event`, `Pipe` or
    /// [`Fd`](crate::Fd)) fails at submission: descriptors cannot cross to another host
    /// (share state through a remote [`Manager`](crate::Manager)). A worker lost with its
    /// host fails the tasks it may have started with a [`TaskError`](crate::TaskError) that
    /// names the host ([`TaskError::worker_host`](crate::TaskError::worker_host)); the
    /// tasks it held and never started are sent to another worker.
    pub fn cluster(mut self, cluster: &Cluster) -> Self {
        self.cluster = Some(cluster.clone());
        self
    }

    /// The number of worker processes (Python's `processes`); the default is the number of
    /// cores available to this process. 0 makes [`build`](Self::build) fail.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function every worker runs once, before its first task (Python's `initializer`
    /// and `initargs`). Like a task, `f` is a `fn` item or a closure that captures nothing,
    /// and `args` a tuple of serde values (descriptors included: each worker gets its own
    /// copy). It returns what `main` may return ([`InitializerOutput`]): `()`, or a `Result`
    /// whose `Err` counts as a failure, its `Debug` text carried in the error (Python's
    /// exception from the initializer). If it fails in the first worker to be ready (an
    /// `Err` or a panic), [`build`](Self::build) fails with [`Error::InitializerFailed`],
    /// whose message says how; if it fails in a later
    /// or a replacement worker, no worker is started again, and once no worker is left,
    /// tasks fail with that error. A worker killed by SIGKILL while its initializer runs
    /// (the OOM killer, say), or lost with its host, is a failed start, not a failed
    /// initializer: it is started again as any failed start is (see [`build`](Self::build)).
    pub fn initializer<F, A, M>(mut self, f: F, args: A) -> Self
    where
        F: Target<A, M>,
        F::Output: InitializerOutput,
        A: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.init = Some(crate::task::initializer::<F, A, M>(&args));
        self
    }

    /// Retires a worker after it has run `n` tasks (a chunk of a map counts as one task, as
    /// in Python), replacing it with a fresh one. No task is lost or run twice: a retiring
    /// worker is sent no more than `n` tasks and stops once it has answered them all. 0 makes
    /// [`build`](Self::build) fail, as Python's `ValueError`.
    pub fn maxtasksperchild(mut self, n: usize) -> Self {
        self.maxtasksperchild = Some(n);
        self
    }

    /// Retires a worker whose resident memory (its RSS) has reached `bytes`, replacing it
    /// with a fresh one, as Celery's `worker_max_memory_per_child` does: a worker that leaks,
    /// or keeps the memory a large task took, gives it back to the system. The task that
    /// took it there completes and answers, and so do those already sent to the worker; it
    /// is sent no more, and stops once it has answered them all, so no task is lost or run
    /// twice. A retired worker is not a loss ([`PoolStats::workers_lost`]).
    ///
    /// A worker reads its memory after a task unless it read it less than a millisecond
    /// before (tasks of a few microseconds each would feel a system call apiece): so after
    /// every task that ran a millisecond or more, and otherwise within a millisecond's tasks.
    /// The memory of a worker started by [`Fork`](StartMethod::Fork) counts the pages it
    /// still shares with the pool's process. 0 makes [`build`](Self::build) fail.
    ///
    /// [`PoolStats::workers_lost`]: crate::PoolStats::workers_lost
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Lets a worker that has had no task for `timeout` exit, freeing its memory, as loky's
    /// `idle_worker_timeout` (and `get_reusable_executor(timeout=)`) does; by default
    /// workers live as long as the pool. When a task comes to a pool with fewer workers than
    /// its size, the missing ones are started again, and the task goes to the first worker
    /// ready: a service idle for the night holds no worker, and its first task of the day
    /// waits one start.
    ///
    /// A worker is retired between `timeout` and a quarter more after its last task ended
    /// (the pool looks at its workers every quarter of `timeout`, and not at all once none
    /// is left). A worker that holds a task, or one sent since the last look, is never
    /// retired, so no task is lost or run twice. [`Pool::stats`] counts the workers alive;
    /// a retired worker is no loss. A timeout of zero makes [`build`](Self::build) fail.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// use std::time::Duration;
    /// use tokio_multiprocessing::Pool;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = Pool::builder()
    ///     .processes(2)
    ///     .idle_timeout(Duration::from_millis(50))
    ///     .build()
    ///     .await?;
    /// assert_eq!(pool.apply(square, (3,)).await?, 9);
    /// while pool.stats().workers_alive > 0 {
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    /// }
    /// // No worker is left; the next task starts them again.
    /// assert_eq!(pool.apply(square, (4,)).await?, 16);
    /// # Ok(()) }
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// The start method for the workers; the default is
    /// [`get_start_method`](crate::get_start_method)'s at build time.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Kills (and replaces) a worker whose task runs longer than `timeout`; that task fails
    /// with a [`TaskError`](crate::TaskError) for which
    /// [`is_timeout`](crate::TaskError::is_timeout) holds. The clock starts when the pool
    /// learns that the worker started the task (the answer before it came, or the worker
    /// marked it), so a task is never blamed for the time of another. For a map, it bounds
    /// each chunk. [`Pool::apply_timeout`] sets one per call. Other `async fn` tasks
    /// running on the killed worker fail as their worker lost, as with
    /// [`AsyncResult::cancel`](crate::AsyncResult::cancel).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How many `async fn` tasks one worker runs at once (like aiomultiprocess's
    /// `childconcurrency`); the default is 1. Synchronous tasks run one at a time per worker
    /// whatever this says.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long a worker may take to start, up to its initializer (for a cluster's worker:
    /// to find room on a host, be spawned by its agent and dial its link); the default is
    /// [`Process::DEFAULT_START_TIMEOUT`](crate::Process::DEFAULT_START_TIMEOUT). The
    /// initializer itself has no time limit, as in Python: where it may hang, bound
    /// [`build`](Self::build) with `tokio::time::timeout` (a build dropped kills the workers
    /// it started).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long the pool's processes wait actively (spinning on their socket, not sleeping)
    /// for what is due shortly, when tasks are short; the default is
    /// [`Pool::DEFAULT_SPIN`], and [`Duration::ZERO`] turns it off.
    ///
    /// A process that sleeps until input arrives pays a wake-up, which on a virtual machine
    /// can cost tens of microseconds, more than a short task. So while the tasks are
    /// shorter than `spin` and a core is spare (fewer workers busy than cores, so that no
    /// worker at work loses time to it, and no more threads runnable on the machine than
    /// it has cores), a worker spins up to `spin` for its next task after each one, and the
    /// pool spins up to `spin` for the next answer after each one, yielding to the other
    /// tasks of its runtime as it does. This roughly halves the round trip of one `apply`
    /// after another, at the cost of up to `spin` of CPU time each time a process goes idle.
    /// Spinning is off on a machine with a single core. On a [`cluster`](Self::cluster),
    /// each host's worker judges by its own host's cores, and the pool by this machine's.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = Some(spin);
        self
    }

    /// Whether a task's panic is also printed on the worker's stderr, as Rust prints a
    /// panic (the default is no). Either way the panic travels in the task's error, with its
    /// message, its location and, when `RUST_BACKTRACE` is set, the worker's backtrace (see
    /// [`TaskError::panic_backtrace`](crate::TaskError::panic_backtrace)), as Python's pool
    /// carries the remote traceback; so by default a panicking task leaves the terminal
    /// (a progress bar, say) alone.
    pub fn print_panics(mut self, print: bool) -> Self {
        self.print_panics = print;
        self
    }

    /// Runs each worker's `async fn` tasks on a multi-thread tokio runtime of `n` threads
    /// (as `#[tokio::main]` does), rather than on the current-thread runtime of the default
    /// (`n` of 0 or 1; aiomultiprocess's `loop_initializer` chooses a worker's event loop
    /// the same way). A task may then call `tokio::task::block_in_place`, which panics on
    /// a current-thread runtime, and the tasks it spawns run on every thread of its
    /// worker. Synchronous tasks run as before, one at a time per worker.
    ///
    /// Not with the [`Fork`](StartMethod::Fork) start method, whose children build their
    /// runtime before they close their parent's descriptors, nor with more than
    /// [`Pool::MAX_WORKER_THREADS`]: [`build`](Self::build) fails. A worker that cannot make
    /// its threads (the system refuses them, or they take longer than the
    /// [`start_timeout`](Self::start_timeout)) fails its start, saying so, before it takes a
    /// task.
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n.max(1);
        self
    }

    /// Starts the workers, all at once, each through its initializer, and returns the pool
    /// as soon as one is ready; the others take tasks as they become ready.
    ///
    /// A worker that cannot be started (the system is out of descriptors or processes, say)
    /// is logged and started again later, with a growing delay (from 10 ms up to 5 s), for as
    /// long as the pool lives; the pool serves with the workers it has meanwhile. While the
    /// pool has no worker at all and starts have failed three times in a row, each failed
    /// start fails the tasks waiting with its error; a single failed start (a worker killed
    /// while it started, say) fails none, though the pool has no worker for a moment (as
    /// between a worker retired by [`maxtasksperchild`](Self::maxtasksperchild) and its
    /// replacement).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `processes(0)`, `maxtasksperchild(0)` or
    /// `max_memory_per_child(0)`, for [`worker_threads`](Self::worker_threads) refused, for
    /// an environment variable refused (see [`env`](Self::env)); an [`Error::Io`] naming the
    /// directory for a [`current_dir`](Self::current_dir) that cannot be entered (on a
    /// cluster, on every host with room, naming the last one tried);
    /// [`Error::Encode`] if the initializer's arguments cannot be encoded;
    /// [`Error::InitializerFailed`] if the initializer failed in the first worker to finish
    /// its start; otherwise the error of the last worker to fail, when none could be
    /// started ([`Error::Start`], or the system's error). On error, the workers started
    /// find their socket closed and end. A later worker whose initializer fails is handled
    /// like a replacement whose initializer fails (see [`initializer`](Self::initializer)).
    ///
    /// # Panics
    /// Outside a tokio runtime (the pool's task is spawned on the current one).
    ///
    /// # Cancel safety
    /// Cancel safe: a build dropped midway leaves no pool, and kills the workers it
    /// started (an initializer that hangs would keep them for ever).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// use std::time::Duration;
    ///
    /// fn connect(url: String) {
    ///     // open a per-worker connection, say
    ///     let _ = url;
    /// }
    /// let pool = tokio_multiprocessing::Pool::builder()
    ///     .processes(4)
    ///     .initializer(connect, ("db://local".to_string(),))
    ///     .maxtasksperchild(1000)
    ///     .task_timeout(Duration::from_secs(30))
    ///     .build()
    ///     .await?;
    /// # drop(pool);
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Pool> {
        // The CPUs this process may run on decide whether a core is spare to spin on.
        let cores = sys::cpus_allowed();
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument(
                    "a pool needs at least one process".into(),
                ));
            }
            Some(n) => n,
            None => match &self.cluster {
                Some(c) => c.capacity(),
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
        };
        let mut env = self.env?;
        // A cluster's hosts check the directory, each against its agent's own.
        if self.cluster.is_none() {
            env.check("the pool's workers")?;
        }
        let init = self.init.transpose()?;
        if self.cluster.is_some() && init.as_ref().is_some_and(|(_, a)| !a.fds.is_empty()) {
            return Err(Error::InvalidArgument(
                "the initializer's arguments hold descriptors, which cannot cross to another \
                 host of a cluster; share state through a remote Manager"
                    .into(),
            ));
        }
        if self.maxtasksperchild == Some(0) {
            return Err(Error::InvalidArgument(
                "maxtasksperchild must be at least 1 (or not set)".into(),
            ));
        }
        if self.max_memory_per_child == Some(0) {
            return Err(Error::InvalidArgument(
                "max_memory_per_child must be at least 1 byte (or not set)".into(),
            ));
        }
        if self.idle_timeout == Some(Duration::ZERO) {
            return Err(Error::InvalidArgument(
                "idle_timeout must be more than zero (or not set)".into(),
            ));
        }
        if self.worker_threads > Pool::MAX_WORKER_THREADS {
            return Err(Error::InvalidArgument(format!(
                "worker_threads may be at most {} (Pool::MAX_WORKER_THREADS), not {}",
                Pool::MAX_WORKER_THREADS,
                self.worker_threads
            )));
        }
        let method = self.method.unwrap_or_else(crate::get_start_method);
        if self.worker_threads > 1 && method == StartMethod::Fork && self.cluster.is_none() {
            return Err(Error::InvalidArgument(
                "worker_threads needs the spawn or forkserver start method: a fork child \
                 builds its runtime before it closes its parent's descriptors, as a \
                 current-thread one"
                    .into(),
            ));
        }
        if method != StartMethod::Fork && self.cluster.is_none() {
            // Spawned and fork-server workers are started from the launcher thread: it
            // starts while the workers' setup is prepared.
            crate::start::warm_launcher();
        }
        let cfg = Arc::new(Config {
            processes,
            method,
            init,
            maxtasksperchild: self.maxtasksperchild,
            max_memory_per_child: self.max_memory_per_child,
            concurrency: self.concurrency,
            start_timeout: self.start_timeout,
            // On a single core, a process that spins only delays the one it waits for.
            spin: match self.spin {
                _ if cores <= 1 => Duration::ZERO,
                Some(spin) => spin,
                None => Pool::DEFAULT_SPIN,
            },
            cores,
            print_panics: self.print_panics,
            worker_threads: self.worker_threads,
            cluster: self.cluster,
            retries_on_worker_loss: self.retries_on_worker_loss,
            idle_timeout: self.idle_timeout,
            env,
            terminating: tokio::sync::watch::Sender::new(false),
        });
        let remote = cfg.cluster.is_some();
        // All the workers start at once; the pool serves as soon as one is ready, and the
        // others join it as they come (Python's `Pool()` does not wait for its workers).
        // A failed initializer in the first to finish fails `build`, and the others, their
        // socket closed, end by themselves; a worker that could not be started is started
        // again by the pool later, unless none could be.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..processes {
            spawn::spawn_start(&cfg, &events_tx, Duration::ZERO);
        }
        let mut failed = 0;
        let first = loop {
            match events.recv().await {
                Some(scheduler::Event::Started(Ok(w))) => break w,
                Some(scheduler::Event::Started(Err(e))) => {
                    failed += 1;
                    if failed == processes || matches!(e, Error::InitializerFailed { .. }) {
                        return Err(e);
                    }
                    tracing::warn!("cannot start a pool worker (it will be retried): {e}");
                }
                Some(_) => continue,
                None => return Err(Error::Protocol("the worker starts were lost".into())),
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let starts = scheduler::Starts {
            pending: processes - 1 - failed,
            failed,
        };
        let counters = Arc::new(Counters::default());
        // Until the scheduler's first round: the worker that is ready and those starting.
        counters.publish((1, starts.pending, 0, 0), &mut Tally::default());
        tokio::spawn(
            Scheduler::new(
                cfg,
                rx,
                (events_tx, events),
                first,
                starts,
                counters.clone(),
            )
            .run(),
        );
        tracing::debug!(processes, "pool started");
        let shared = Arc::new(Shared {
            cmds: tx,
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            processes,
            task_timeout: self.task_timeout,
            counters,
            remote,
        });
        Ok(Pool {
            _last: Arc::new(LastHandle(shared.clone())),
            shared,
        })
    }
}
