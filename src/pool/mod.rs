//! `Pool`: Python's `multiprocessing.Pool`, with futures for results and streams for `imap`.
//!
//! Files: this one holds the builder and the [`Pool`] handle; `scheduler.rs` the task that
//! owns the workers; `worker.rs` the worker's side; `started.rs` how the pool knows which
//! tasks a worker started; `async_result.rs`, `map_result.rs` and `imap.rs` what
//! submissions give back; `proto.rs` the messages between pool and workers.

mod async_result;
mod imap;
mod map_result;
mod proto;
mod scheduler;
mod started;
mod worker;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

pub use async_result::AsyncResult;
pub use imap::IMap;
pub use map_result::MapResult;

use self::imap::NextChunk;
use self::proto::{Setup, SetupReply};
use self::scheduler::{Cmd, Job, Scheduler};
use self::started::StartedMark;
use crate::error::{Error, Result, TaskError};
use crate::process::Process;
use crate::start::StartMethod;
use crate::sys;
use crate::task::{
    ChunkOut, ProcessEntry, Target, TaskEntry, chunk_entry, chunk_entry1, process_entry, task_entry,
};
use crate::wire::frame::{SharedBytes, send_early};
use crate::wire::plain::{Items, SharedItems};
use crate::wire::{Encoded, Fd, FrameBuf, FrameReader, FrameWriter, Hello, framed, into_stream};

static WORKER_COUNTER: AtomicUsize = AtomicUsize::new(1);

/// The send buffer each end of a worker's socket asks for, in bytes.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// How long a pool's processes wait actively for what is due shortly, unless
/// [`PoolBuilder::spin`] says otherwise.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Encodes the chunk of a map's input from one index to another.
type ChunkEncoder = Box<dyn Fn(usize, usize) -> Result<Payload> + Send>;

/// What runs a task (or a map's chunks) in a worker.
#[derive(Debug, Clone, Copy)]
struct Entry {
    entry: TaskEntry,
    /// Whether the target is an `async fn`.
    is_async: bool,
}

impl Entry {
    fn of<F: Target<A, M>, A, M>(entry: TaskEntry) -> Entry {
        Entry {
            entry,
            is_async: F::IS_ASYNC,
        }
    }
}

/// What every worker of a pool is started with.
struct Config {
    processes: usize,
    method: StartMethod,
    init: Option<(ProcessEntry, Encoded)>,
    maxtasksperchild: Option<usize>,
    concurrency: usize,
    start_timeout: Duration,
    spin: Duration,
    /// The CPUs this process may run on: the pool's own processes spin only on spare ones.
    cores: usize,
    print_panics: bool,
}

/// A started worker, before the scheduler takes it.
struct WorkerConn {
    pid: u32,
    pidfd: OwnedFd,
    process: Process,
    reader: FrameReader,
    writer: FrameWriter,
    started: StartedMark,
}

/// Starts one worker: a child process running `worker::worker_main` on one end of a socket
/// pair, set up (handshake and initializer) over it.
async fn start_worker(cfg: &Config) -> Result<WorkerConn> {
    let (ours, theirs) = sys::socketpair_stream()?;
    // A chunk of a large map (a megabyte or more) fits in the socket whole, each way: a
    // sender does not wait for the reader's wake-ups a few hundred kilobytes at a time, and
    // the next chunk arrives while a worker runs this one. Memory is taken only for bytes in
    // flight.
    for end in [&ours, &theirs] {
        if let Err(e) = sys::grow_send_buffer(end.as_fd(), SOCKET_BUFFER) {
            tracing::debug!("cannot grow a pool socket's send buffer: {e}");
        }
    }
    let n = WORKER_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut frame = FrameBuf::of(&Setup {
        hello: Hello::ours(),
        init: cfg
            .init
            .as_ref()
            .map(|(e, _)| crate::task::process_entry_offset(*e)),
        spin_nanos: u64::try_from(cfg.spin.as_nanos()).unwrap_or(u64::MAX),
        print_panics: cfg.print_panics,
    })?;
    if let Some((_, args)) = &cfg.init {
        frame.push_encoded(clone_encoded(args)?);
    }
    // A small setup goes out first: it waits in the socket while the child starts, so the
    // child finds it as soon as its bootstrap is done. A large one (big initializer
    // arguments) could fill the socket before anyone reads it: it goes out after the start.
    let late = send_early(ours.as_fd(), frame)?;
    let (mut reader, writer) = framed(into_stream(ours)?);
    let started = StartedMark::new()?;
    let mark = Fd::from(sys::dup_fd(started.fd())?);
    let mut process = Process::new(worker::worker_main, (Fd::from(theirs), mark))
        .name(format!("PoolWorker-{n}"))
        .daemon(true)
        .start_method(cfg.method)
        .start_timeout(cfg.start_timeout)
        .start()
        .await?;
    let pid = process.pid();
    let pidfd = sys::dup_fd(process.sentinel())?;
    let setup = async {
        if let Some(mut frame) = late {
            writer.send(&mut frame).await?;
        }
        reader.recv().await?.decode::<SetupReply>()
    };
    let died = |code: i32| {
        let message = format!(
            "the worker died ({}) during its setup",
            crate::ExitCause::from_exitcode(code)
        );
        if cfg.init.is_some() {
            Error::InitializerFailed { pid, message }
        } else {
            Error::Start {
                name: format!("PoolWorker-{n}"),
                pid,
                message,
            }
        }
    };
    let reply = tokio::select! {
        biased;
        r = setup => r,
        code = process.join() => return Err(died(code?)),
    };
    // A worker that died in its setup (its initializer aborted, say) closed the socket first.
    let reply = match reply {
        Err(Error::Closed | Error::Io(_)) => {
            match tokio::time::timeout(Duration::from_secs(5), process.join()).await {
                Ok(Ok(code)) => return Err(died(code)),
                _ => Err(Error::Closed),
            }
        }
        other => other,
    };
    let err = match reply {
        Ok(SetupReply::Ready) => {
            return Ok(WorkerConn {
                pid,
                pidfd,
                reader,
                writer,
                process,
                started,
            });
        }
        Ok(SetupReply::InitFailed(message)) => {
            // The worker exits by itself after reporting.
            let _ = tokio::time::timeout(Duration::from_secs(5), process.join()).await;
            return Err(Error::InitializerFailed { pid, message });
        }
        Ok(SetupReply::Refused(message)) => Error::Start {
            name: process.name().to_string(),
            pid,
            message,
        },
        Err(e) => e,
    };
    let _ = process.kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), process.join()).await;
    Err(err)
}

/// A task's arguments as they are sent: their encoding, then, for a chunk of plain numbers,
/// the chunk's bytes, shared with the rest of the map's input.
pub(super) struct Payload {
    head: Encoded,
    shared: Option<SharedBytes>,
}

impl From<Encoded> for Payload {
    fn from(head: Encoded) -> Payload {
        Payload { head, shared: None }
    }
}

impl Payload {
    /// A copy for one more worker: the encoding copied, descriptors duplicated, shared
    /// bytes shared.
    fn try_clone(&self) -> Result<Payload> {
        Ok(Payload {
            head: clone_encoded(&self.head)?,
            shared: self.shared.clone(),
        })
    }

    /// The size of the arguments in a frame, in bytes.
    fn len(&self) -> usize {
        self.head.bytes.len() + self.shared.as_ref().map_or(0, |s| s.as_slice().len())
    }

    /// Appends the arguments to a task's frame.
    fn push_to(self, frame: &mut FrameBuf) {
        frame.push_encoded(self.head);
        if let Some(s) = self.shared {
            frame.push_shared(s);
        }
    }
}

/// A copy of encoded arguments, descriptors duplicated, for one more worker.
fn clone_encoded(e: &Encoded) -> Result<Encoded> {
    let fds = e
        .fds
        .iter()
        .map(|f| sys::dup_fd(f.as_fd()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Encoded {
        bytes: e.bytes.clone(),
        fds,
    })
}

/// Options for a [`Pool`], made by [`Pool::builder`]; [`build`](PoolBuilder::build) starts it.
#[must_use = "a pool builder does nothing until built"]
#[derive(Debug)]
pub struct PoolBuilder {
    processes: Option<usize>,
    init: Option<Result<(ProcessEntry, Encoded)>>,
    maxtasksperchild: Option<usize>,
    method: Option<StartMethod>,
    task_timeout: Option<Duration>,
    concurrency: usize,
    start_timeout: Duration,
    spin: Duration,
    print_panics: bool,
}

impl PoolBuilder {
    /// The number of worker processes (Python's `processes`); the default is the number of
    /// cores available to this process. 0 makes [`build`](Self::build) fail.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A function every worker runs once, before its first task (Python's `initializer`
    /// and `initargs`). Like a task, `f` is a `fn` item or a closure that captures nothing,
    /// and `args` a tuple of serde values (descriptors included: each worker gets its own
    /// copy). It returns what `main` may return: `()`, or a `Result` whose `Err` counts as a
    /// failure. If it fails in the first worker to be ready (a panic, say),
    /// [`build`](Self::build) fails with [`Error::InitializerFailed`]; if it fails in a later
    /// or a replacement worker, no worker is started again, and once no worker is left,
    /// tasks fail with that error.
    pub fn initializer<F, A, M>(mut self, f: F, args: A) -> Self
    where
        F: Target<A, M>,
        F::Output: std::process::Termination,
        A: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.init = Some(Encoded::new(&args).map(|a| (process_entry::<F, A, M>(), a)));
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

    /// The start method for the workers; the default is
    /// [`get_start_method`](crate::get_start_method)'s at build time.
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Kills (and replaces) a worker whose task runs longer than `timeout`; that task fails
    /// with a [`TaskError`] for which [`is_timeout`](TaskError::is_timeout) holds. The clock starts when the worker starts the task. For a
    /// map, it bounds each chunk. [`Pool::apply_timeout`] sets one per call.
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

    /// How long a worker may take to start; the default is
    /// [`DEFAULT_START_TIMEOUT`](crate::DEFAULT_START_TIMEOUT).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// How long the pool's processes wait actively (spinning on their socket, not sleeping)
    /// for what is due shortly, when tasks are short; the default is
    /// [`DEFAULT_SPIN`](crate::DEFAULT_SPIN), and [`Duration::ZERO`] turns it off.
    ///
    /// A process that sleeps until input arrives pays a wake-up, which on a virtual machine
    /// can cost tens of microseconds, more than a short task. So while the tasks are
    /// shorter than `spin` and a core is spare (fewer workers busy than cores, so that no
    /// worker at work loses time to it), a worker spins up to `spin` for its next task after
    /// each one, and the pool spins up to `spin` for the next answer after each one,
    /// yielding to the other tasks of its runtime as it does. This roughly halves the round
    /// trip of one `apply` after another, at the cost of up to `spin` of CPU time each time
    /// a process goes idle. Spinning is off on a machine with a single core.
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
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

    /// Starts the workers, all at once, each through its initializer, and returns the pool
    /// as soon as one is ready; the others take tasks as they become ready.
    ///
    /// A worker that cannot be started (the system is out of descriptors or processes, say)
    /// is logged and started again later, with a growing delay (from 10 ms up to 5 s), for as
    /// long as the pool lives; the pool serves with the workers it has meanwhile. While the
    /// pool has no worker at all, each failed start fails the tasks waiting with its error.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `processes(0)` or `maxtasksperchild(0)`;
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
    /// Cancel safe: a build dropped midway leaves no pool; the workers it started find
    /// their socket closed and end.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> tokio_multiprocessing::Result<()> {
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
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.maxtasksperchild == Some(0) {
            return Err(Error::InvalidArgument(
                "maxtasksperchild must be at least 1 (or not set)".into(),
            ));
        }
        let method = self.method.unwrap_or_else(crate::get_start_method);
        if method != StartMethod::Fork {
            // Spawned and fork-server workers are started from the launcher thread: it
            // starts while the workers' setup is prepared.
            crate::start::warm_launcher();
        }
        let cfg = Arc::new(Config {
            processes,
            method,
            init: self.init.transpose()?,
            maxtasksperchild: self.maxtasksperchild,
            concurrency: self.concurrency,
            start_timeout: self.start_timeout,
            // On a single core, a process that spins only delays the one it waits for.
            spin: if cores > 1 { self.spin } else { Duration::ZERO },
            cores,
            print_panics: self.print_panics,
        });
        // All the workers start at once; the pool serves as soon as one is ready, and the
        // others join it as they come (Python's `Pool()` does not wait for its workers).
        // A failed initializer in the first to finish fails `build`, and the others, their
        // socket closed, end by themselves; a worker that could not be started is started
        // again by the pool later, unless none could be.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..processes {
            scheduler::spawn_start(&cfg, &events_tx, Duration::ZERO);
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
        tokio::spawn(Scheduler::new(cfg, rx, (events_tx, events), first, starts).run());
        tracing::debug!(processes, "pool started");
        Ok(Pool {
            shared: Arc::new(Shared {
                cmds: tx,
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                processes,
                task_timeout: self.task_timeout,
            }),
        })
    }
}

/// What the pool's handles (the pool, its results and streams) share.
struct Shared {
    cmds: UnboundedSender<Cmd>,
    closed: AtomicBool,
    next_id: AtomicU64,
    processes: usize,
    task_timeout: Option<Duration>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Queues one task (or chunk) and returns the handle on its answer.
    fn submit<R: DeserializeOwned>(
        &self,
        entry: Entry,
        payload: Result<impl Into<Payload>>,
        timeout: Option<Duration>,
    ) -> AsyncResult<R> {
        if self.closed.load(Ordering::Acquire) {
            return AsyncResult::failed(TaskError::pool_closed());
        }
        let payload: Payload = match payload {
            Ok(p) => p.into(),
            Err(e) => return AsyncResult::failed(TaskError::local(e)),
        };
        // Arguments that cannot fit in a frame fail here, before anything is queued (the
        // scheduler checks the whole frame again, head included, before sending it).
        let max = crate::wire::max_frame_size();
        if payload.len() > max {
            return AsyncResult::failed(TaskError::local(Error::FrameTooLarge {
                size: payload.len() as u64,
                max,
            }));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let job = Job {
            id,
            entry: crate::task::task_entry_offset(entry.entry),
            is_async: entry.is_async,
            payload,
            timeout: timeout.or(self.task_timeout),
            reply: Some(tx),
        };
        if self.cmds.send(Cmd::Submit(job)).is_err() {
            return AsyncResult::failed(TaskError::pool_closed());
        }
        AsyncResult::waiting(id, rx, self.cmds.clone())
    }
}

/// A map's input, in a vector whose memory is faulted in by huge pages when it is large.
fn collect_items<I: IntoIterator>(iterable: I) -> Vec<I::Item> {
    let it = iterable.into_iter();
    let mut items = Vec::with_capacity(it.size_hint().0);
    sys::advise_huge_pages(&mut items);
    items.extend(it);
    items
}

/// Python's default chunk size for `map`: `ceil(len / (4 × workers))`, at least 1.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

/// A process pool (Python's `multiprocessing.Pool`): worker processes that run tasks
/// submitted from async code, awaited without blocking a thread.
///
/// A task is a `fn` item or a closure that captures nothing, with its arguments as a tuple
/// of serde values (queues, pipes and other objects of this crate included) and a serde
/// result; `async fn` tasks run on the worker's own runtime (see
/// [`PoolBuilder::concurrency`]).
///
/// A worker that dies (a signal, an abort, the OOM killer) fails only the tasks it was
/// running, with a [`TaskError`] naming its pid and the signal or exit code
/// ([`is_worker_lost`](TaskError::is_worker_lost)): its death
/// is seen at once on its pidfd. It is replaced and the pool keeps serving. A task that
/// panics fails with a [`TaskError`] carrying the panic's message and location
/// ([`is_panic`](TaskError::is_panic)), for that task only.
///
/// Dropping the pool terminates it (Python's `with Pool() as p:`): its workers are killed
/// and reaped, tasks still pending fail ([`TaskError::is_pool_closed`]). To let queued tasks
/// finish, [`close`](Self::close) and [`join`](Self::join) it first.
///
/// # How workers run tasks
///
/// A pool's task (spawned on the runtime that built it) sends each task to the least loaded
/// worker, a few ahead to hide the round trip when many are queued. In a worker:
///
/// - a synchronous task runs on the worker's main thread when no `async fn` task is running
///   there, and on a task thread of the worker's otherwise, so it never blocks them; they run
///   one at a time, in order;
/// - an `async fn` task runs on the worker's own current-thread runtime, up to
///   [`PoolBuilder::concurrency`] at once.
///
/// When a worker dies, only the tasks it may have started fail (a worker marks each task in
/// memory shared with the pool before it starts it), so no task runs twice; those it held
/// and never started are sent to another worker.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     mp::init(); // a worker never gets past this line
///     let pool = mp::Pool::builder().processes(4).build().await?;
///     assert_eq!(pool.apply(square, (7,)).await?, 49);
///     let squares = pool.map(square, 0..1000).chunksize(64).await?;
///     assert_eq!(squares[999], 998_001);
///     pool.close();
///     pool.join().await?;
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl Pool {
    /// A builder with Python's defaults: one worker per available core, no initializer,
    /// workers that never retire, no task timeout.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            init: None,
            maxtasksperchild: None,
            method: None,
            task_timeout: None,
            concurrency: 1,
            start_timeout: crate::DEFAULT_START_TIMEOUT,
            spin: crate::DEFAULT_SPIN,
            print_panics: false,
        }
    }

    /// Starts a pool of `processes` workers with the other defaults of [`Pool::builder`].
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    ///
    /// # Cancel safety
    /// As [`PoolBuilder::build`].
    pub async fn new(processes: usize) -> Result<Pool> {
        Pool::builder().processes(processes).build().await
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.shared.processes
    }

    /// Runs `f(args)` in a worker and returns its result (Python's `apply`).
    ///
    /// # Errors
    /// As [`AsyncResult`].
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the task: it runs to its end and its result is
    /// discarded (see [`AsyncResult`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(pool: &tokio_multiprocessing::Pool) -> tokio_multiprocessing::Result<()> {
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// assert_eq!(pool.apply(add, (2, 3)).await?, 5);
    /// # Ok(()) }
    /// ```
    pub async fn apply<F, A, M>(&self, f: F, args: A) -> std::result::Result<F::Output, TaskError>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned,
    {
        self.apply_async(f, args).await
    }

    /// Runs `f(args)` in a worker, killing (and replacing) the worker if the task runs longer
    /// than `timeout`: the task then fails ([`TaskError::is_timeout`]).
    ///
    /// # Errors
    /// As [`AsyncResult`].
    ///
    /// # Cancel safety
    /// As [`apply`](Self::apply).
    pub async fn apply_timeout<F, A, M>(
        &self,
        f: F,
        args: A,
        timeout: Duration,
    ) -> std::result::Result<F::Output, TaskError>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.shared
            .submit(
                Entry::of::<F, A, M>(task_entry::<F, A, M>()),
                Encoded::new(&args),
                Some(timeout),
            )
            .await
    }

    /// Submits `f(args)` now and returns a handle on its result (Python's `apply_async`);
    /// the handle is a future. An argument that cannot be encoded fails the handle at once
    /// and nothing is sent.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(pool: &tokio_multiprocessing::Pool) -> tokio_multiprocessing::Result<()> {
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// let handles: Vec<_> = (0..100).map(|i| pool.apply_async(square, (i,))).collect();
    /// let results = futures::future::try_join_all(handles).await?;
    /// assert_eq!(results[9], 81);
    /// # Ok(()) }
    /// ```
    pub fn apply_async<F, A, M>(&self, f: F, args: A) -> AsyncResult<F::Output>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.shared.submit(
            Entry::of::<F, A, M>(task_entry::<F, A, M>()),
            Encoded::new(&args),
            None,
        )
    }

    /// Applies `f` to every item, in the workers, and returns the results in input order
    /// (Python's `map`). Await the returned [`Map`]; set its chunk size with
    /// [`Map::chunksize`] first if the default does not suit.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(pool: &tokio_multiprocessing::Pool) -> tokio_multiprocessing::Result<()> {
    /// fn cube(x: i64) -> i64 {
    ///     x * x * x
    /// }
    /// assert_eq!(pool.map(cube, 0..4).await?, vec![0, 1, 8, 27]);
    /// let many = pool.map(cube, 0..100_000).chunksize(1000).await?;
    /// assert_eq!(many.len(), 100_000);
    /// # Ok(()) }
    /// ```
    pub fn map<F, T, M, I>(&self, f: F, iterable: I) -> Map<'_, F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = T>,
    {
        let _ = f;
        let entry = Entry::of::<F, (T,), M>(chunk_entry1::<F, T, M>());
        self.map_items(collect_items(iterable), entry)
    }

    /// [`map`](Self::map) submitted now, with the default chunk size (Python's
    /// `map_async`); for another chunk size, `pool.map(f, it).chunksize(n).submit()`.
    pub fn map_async<F, T, M, I>(&self, f: F, iterable: I) -> MapResult<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = T>,
    {
        self.map(f, iterable).submit()
    }

    /// Like [`map`](Self::map) for a function of several arguments: each item is a tuple of
    /// arguments (Python's `starmap`).
    pub fn starmap<F, A, M, I>(&self, f: F, iterable: I) -> Map<'_, F::Output>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        let entry = Entry::of::<F, A, M>(chunk_entry::<F, A, M>());
        self.map_items(collect_items(iterable), entry)
    }

    /// A [`Map`] over `items`, each chunk of which is encoded (a slice of `items`) when it is
    /// sent and run by `entry` in a worker.
    fn map_items<T, R>(&self, items: Vec<T>, entry: Entry) -> Map<'_, R>
    where
        T: Serialize + Send + 'static,
    {
        let len = items.len();
        let encode: ChunkEncoder = match SharedItems::new(items) {
            Ok(shared) => Box::new(move |from, to| {
                let (head, bytes) = shared.chunk(from..to)?;
                Ok(Payload {
                    head: Encoded {
                        bytes: head,
                        fds: Vec::new(),
                    },
                    shared: Some(bytes),
                })
            }),
            Err(items) => Box::new(move |from, to| {
                Encoded::new(&Items::new(&items, from..to)).map(Payload::from)
            }),
        };
        Map {
            pool: self,
            _result: std::marker::PhantomData,
            len,
            encode,
            entry,
            chunksize: None,
        }
    }

    /// [`starmap`](Self::starmap) submitted now, with the default chunk size (Python's
    /// `starmap_async`).
    pub fn starmap_async<F, A, M, I>(&self, f: F, iterable: I) -> MapResult<F::Output>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        self.starmap(f, iterable).submit()
    }

    fn imap_inner<F, T, M, I>(&self, f: F, iterable: I, ordered: bool) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let _ = f;
        let mut it = iterable.into_iter();
        let mut buf: Vec<T> = Vec::new();
        let next_chunk: NextChunk = Box::new(move |n| {
            buf.clear();
            buf.extend(it.by_ref().take(n));
            if buf.is_empty() {
                return None;
            }
            Some((buf.len(), Encoded::new(&Items::all(&buf))))
        });
        IMap::new(
            self.shared.clone(),
            next_chunk,
            Entry::of::<F, (T,), M>(chunk_entry1::<F, T, M>()),
            ordered,
        )
    }

    /// Applies `f` to every item and streams the results in input order (Python's `imap`).
    /// Input is read lazily, with a bounded window of pending chunks (see [`IMap`]), so the
    /// iterator may be endless.
    pub fn imap<F, T, M, I>(&self, f: F, iterable: I) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        self.imap_inner(f, iterable, true)
    }

    /// Like [`imap`](Self::imap), yielding results as they complete (Python's
    /// `imap_unordered`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(pool: &tokio_multiprocessing::Pool) -> tokio_multiprocessing::Result<()> {
    /// use futures::StreamExt;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// // An endless input: only a bounded window of it is read ahead.
    /// let mut results = pool.imap_unordered(square, 0u64..).chunksize(100).take(1000);
    /// while let Some(r) = results.next().await {
    ///     let _square = r?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn imap_unordered<F, T, M, I>(&self, f: F, iterable: I) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        self.imap_inner(f, iterable, false)
    }

    /// Stops taking tasks (Python's `close()`): tasks already submitted run to their end,
    /// then the workers exit. Later submissions fail ([`TaskError::is_pool_closed`]).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.cmds.send(Cmd::Close);
    }

    /// Waits for every worker to exit (Python's `join()`), after [`close`](Self::close) or
    /// [`terminate`](Self::terminate).
    ///
    /// # Errors
    /// [`Error::PoolRunning`] if the pool was neither closed nor terminated.
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropping it changes nothing.
    pub async fn join(&self) -> Result<()> {
        if !self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::PoolRunning);
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.cmds.send(Cmd::Join(tx)).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }

    /// Kills the workers at once (Python's `terminate()`) and waits until they are reaped.
    /// Tasks not finished fail ([`TaskError::is_pool_closed`]).
    ///
    /// # Errors
    /// None so far; the `Result` leaves room for reporting a worker that could not be reaped.
    ///
    /// # Cancel safety
    /// Cancel safe: the termination goes on if the future is dropped.
    pub async fn terminate(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.shared.cmds.send(Cmd::Terminate(Some(tx))).is_ok() {
            let _ = rx.await;
        }
        Ok(())
    }
}

impl Drop for Pool {
    /// Terminates the pool: the workers are killed and reaped by the pool's task.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.cmds.send(Cmd::Terminate(None));
    }
}

/// A [`Pool::map`] or [`Pool::starmap`] not yet submitted: set [`chunksize`](Self::chunksize)
/// if needed, then await it (or [`submit`](Self::submit) it for a [`MapResult`]).
#[must_use = "a map does nothing until awaited or submitted"]
pub struct Map<'p, R> {
    pool: &'p Pool,
    _result: std::marker::PhantomData<fn() -> R>,
    len: usize,
    encode: ChunkEncoder,
    entry: Entry,
    chunksize: Option<usize>,
}

impl<R> std::fmt::Debug for Map<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("len", &self.len)
            .field("chunksize", &self.chunksize)
            .finish_non_exhaustive()
    }
}

impl<'p, R: DeserializeOwned + 'static> Map<'p, R> {
    /// Sends the items to the workers `n` at a time (Python's `chunksize`). The default is
    /// Python's: `ceil(len / (4 × processes))`. 0 counts as 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Submits every chunk now and returns the handle on the results (Python's
    /// `map_async`).
    pub fn submit(self) -> MapResult<R> {
        let size = self
            .chunksize
            .unwrap_or_else(|| default_chunksize(self.len, self.pool.processes()));
        let mut chunks = Vec::with_capacity(self.len.div_ceil(size));
        let mut from = 0;
        while from < self.len {
            let to = (from + size).min(self.len);
            chunks.push(self.pool.shared.submit::<ChunkOut<R>>(
                self.entry,
                (self.encode)(from, to),
                None,
            ));
            from = to;
        }
        MapResult::new(chunks, self.len, size)
    }
}

impl<'p, R: DeserializeOwned + 'static> std::future::IntoFuture for Map<'p, R> {
    type Output = std::result::Result<Vec<R>, TaskError>;
    type IntoFuture = MapResult<R>;

    /// Submits the map; see [`MapResult`] for what dropping it does.
    fn into_future(self) -> MapResult<R> {
        self.submit()
    }
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn default_chunksize_is_pythons() {
        // divmod(len, 4 * workers), plus one if there is a remainder.
        assert_eq!(default_chunksize(1_000_000, 2), 125_000);
        assert_eq!(default_chunksize(10, 2), 2);
        assert_eq!(default_chunksize(9, 2), 2);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(1, 8), 1);
        assert_eq!(default_chunksize(0, 8), 1);
    }
}
