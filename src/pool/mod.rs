//! `Pool`: Python's `multiprocessing.Pool`, with futures for results and streams for `imap`.
//!
//! Files: this one holds the [`Pool`] handle; `builder.rs` its options and how it is built;
//! `spawn.rs` how a worker is started; `scheduler.rs` the task that owns the workers and
//! decides which runs what, with its maps by id in `id_map.rs`; `slot.rs` one worker as it
//! sees it; `link.rs` the reader and writer tasks of each worker's socket; `answered.rs`
//! the answers the readers log for the scheduler;
//! `worker.rs` the worker's side; `started.rs` how the pool knows which tasks a worker
//! started; `payload.rs` a task's arguments as they are sent; `map.rs` a map not yet
//! submitted; `async_result.rs`, `map_result.rs` and `imap.rs` what submissions give back,
//! with `imap_input.rs` what an `imap` reads its inputs from;
//! `proto.rs` the messages between pool and workers.

mod answered;
mod async_result;
mod builder;
mod id_map;
mod idle;
mod imap;
mod imap_input;
mod link;
mod map;
mod map_result;
mod memory_limit;
mod off_thread;
mod payload;
mod proto;
mod remote;
mod scheduler;
mod slot;
mod spawn;
mod started;
mod stats;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

pub use async_result::{AbortOnDrop, AsyncResult};
pub use builder::PoolBuilder;
pub use imap::IMap;
pub use map::Map;
pub use map_result::MapResult;
pub(crate) use remote::HostWorker;

use self::imap_input::{FromIter, FromStream, Input};
use self::map::collect_items;
use self::payload::Payload;
use self::scheduler::{Cmd, Job};
use self::stats::Counters;
pub use self::stats::{PoolStats, WorkerLoss};
use crate::error::{Error, Result, TaskError};
use crate::task::{Target, TaskEntry, chunk_entry, chunk_entry1, task_entry};

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

/// What the pool's handles (the pool, its results and streams) share.
struct Shared {
    cmds: UnboundedSender<Cmd>,
    closed: AtomicBool,
    next_id: AtomicU64,
    processes: usize,
    task_timeout: Option<Duration>,
    counters: Arc<Counters>,
    /// Whether the workers are on other hosts (arguments may not hold descriptors).
    remote: bool,
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
        self.submit_from(None, entry, payload, timeout)
    }

    /// [`submit`](Self::submit) for the `imap` stream `stream` (see [`Cmd::StreamOpened`]),
    /// if any: the scheduler takes a stream's task after a close if the stream was made
    /// before it.
    fn submit_from<R: DeserializeOwned>(
        &self,
        stream: Option<u64>,
        entry: Entry,
        payload: Result<impl Into<Payload>>,
        timeout: Option<Duration>,
    ) -> AsyncResult<R> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let payload = payload.map(Into::into);
        let job = match checked_job(
            id,
            entry,
            payload,
            timeout.or(self.task_timeout),
            tx,
            self.remote,
        ) {
            Ok(job) => Job { stream, ..job },
            Err((_, e)) => return AsyncResult::failed(e),
        };
        if self.cmds.send(Cmd::Submit(job)).is_err() {
            // The scheduler is gone: after a close or a terminate, or with its runtime.
            return AsyncResult::failed(match self.closed.load(Ordering::Acquire) {
                true => TaskError::pool_closed(),
                false => TaskError::runtime_gone(),
            });
        }
        AsyncResult::waiting(id, rx, self.cmds.clone())
    }
}

/// Where a task's answer goes.
type Reply = oneshot::Sender<scheduler::Outcome>;

/// Task `id` with its arguments, checked; arguments that cannot fit in a frame fail here,
/// before anything is queued (the scheduler checks the whole frame again, head included,
/// before sending it), and so do arguments holding descriptors on a pool whose workers may
/// be on other hosts (`remote`). On failure, the reply is given back with the error.
fn checked_job(
    id: u64,
    entry: Entry,
    payload: Result<Payload>,
    timeout: Option<Duration>,
    reply: Reply,
    remote: bool,
) -> std::result::Result<Job, (Reply, TaskError)> {
    let payload = match payload {
        Ok(p) => p,
        Err(e) => return Err((reply, TaskError::local(e))),
    };
    if remote && payload.has_fds() {
        let e = Error::InvalidArgument(
            "the task's arguments hold descriptors (a local Queue, Event, Pipe or Fd), which \
             cannot cross to another host of a cluster; share state through a remote Manager"
                .into(),
        );
        return Err((reply, TaskError::local(e)));
    }
    let max = crate::wire::max_frame_size();
    if payload.len() > max {
        let e = Error::FrameTooLarge {
            size: payload.len() as u64,
            max,
        };
        return Err((reply, TaskError::local(e)));
    }
    Ok(Job {
        id,
        entry: crate::task::task_entry_offset(entry.entry),
        is_async: entry.is_async,
        payload,
        timeout,
        retries: 0,
        reply: Some(reply),
        stream: None,
    })
}

/// A process pool (Python's `multiprocessing.Pool`): worker processes that run tasks
/// submitted from async code, awaited without blocking a thread.
///
/// A task is a `fn` item or a closure that captures nothing, with its arguments as a tuple
/// of serde values (queues, pipes and other objects of this crate included) and a serde
/// result; `async fn` tasks run on the worker's own runtime (see
/// [`PoolBuilder::concurrency`]).
///
/// Arguments are owned values: a function taking `&str` (or any borrow) cannot be a task,
/// and rustc reports it as "implementation of `Deserialize` is not general enough" for the
/// argument tuple. Take `String` (or the owned type) instead.
///
/// The result crosses back the same way, so it is a serde value too. [`Error`] and
/// [`TaskError`] are, so a task that uses this crate's objects (a proxy, a queue) may return
/// [`Result<T>`](crate::Result): an error it meets reaches the caller as itself, as Python
/// pickles a worker's exception (an empty queue's [`Error::Empty`] in the worker is
/// `Error::Empty` in the caller, an `io::Error` keeps its kind and `errno`), and
/// `pool.apply(f, args).await??` gives it.
///
/// A worker that dies (a signal, an abort, the OOM killer) fails the task it was running,
/// with a [`TaskError`] naming its pid and the signal or exit code
/// ([`is_worker_lost`](TaskError::is_worker_lost)), and the tasks it had finished whose
/// answers it still held back to send together, saying so
/// ([`is_answer_lost`](TaskError::is_answer_lost)); tasks it never started go to another
/// worker, but for those their callers cancelled, which fail as cancelled. Its death is
/// seen at once on its pidfd. It is replaced and the pool keeps serving. A task that
/// panics fails with a [`TaskError`] carrying the panic's message and location
/// ([`is_panic`](TaskError::is_panic)), for that task only.
///
/// `Pool` is a cheap handle: clones share the pool (hand one to each task of a service, as
/// with an `Arc`). Dropping the last handle terminates the pool (Python's `with Pool() as
/// p:`): its workers are killed and reaped, tasks still pending fail
/// ([`TaskError::is_pool_closed`]). To let queued tasks finish, [`close`](Self::close) and
/// [`join`](Self::join) it first.
///
/// The pool's task runs on the runtime that built it, which must be driven for the pool to
/// serve. When that runtime ends (a `#[tokio::test]`'s, or one made for a few calls), the
/// pool ends with it, as terminated: its workers are killed, even one amid a long task, and
/// its calls fail ([`TaskError::is_pool_closed`]).
///
/// # How workers run tasks
///
/// A pool's task (spawned on the runtime that built it) sends each task to the least loaded
/// worker, a few ahead to hide the round trip when many are queued. In a worker:
///
/// - a synchronous task runs on the worker's main thread when no `async fn` task is running
///   there, and on a task thread of the worker's otherwise, so it never blocks them; they run
///   one at a time, in order, as plain code outside any runtime (so a task, or a
///   synchronous initializer, may block on a tokio runtime of its own, as a `Process`
///   target may);
/// - an `async fn` task runs on the worker's own current-thread runtime, up to
///   [`PoolBuilder::concurrency`] at once.
///
/// When a worker dies, only the tasks it may have started fail (a worker marks each task in
/// memory shared with the pool before it starts it), so no task runs twice; those it held
/// and never started are sent to another worker, even the one it was sent while idle (if
/// its arguments take at most 1 MiB; an `async fn` task is not marked, and fails).
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     mp::init(); // optional: a worker takes its role before `main`
///     let pool = mp::Pool::builder().processes(4).build().await?;
///     assert_eq!(pool.apply(square, (7,)).await?, 49);
///     let squares = pool.map(square, 0..1000).chunksize(64).await?;
///     assert_eq!(squares[999], 998_001);
///     pool.close();
///     pool.join().await?;
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
    /// Shared by the clones of this handle: the last one dropped terminates the pool.
    _last: Arc<LastHandle>,
}

/// Terminates the pool when the last [`Pool`] handle is dropped: the workers are killed and
/// reaped by the pool's task. (Results and streams hold the pool's [`Shared`] part, not
/// this: a pool dropped while an `imap` stream is read is terminated.)
#[derive(Debug)]
struct LastHandle(Arc<Shared>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        let _ = self.0.cmds.send(Cmd::Terminate(None));
    }
}

impl Pool {
    /// How long a pool's processes wait actively for what is due shortly, unless
    /// [`PoolBuilder::spin`] says otherwise.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

    /// The most threads [`PoolBuilder::worker_threads`] gives a worker's runtime: more are
    /// refused at [`build`](PoolBuilder::build), where a worker would fail to make them
    /// (or, for a count near `usize::MAX`, abort on the memory to count them).
    pub const MAX_WORKER_THREADS: usize = 1024;

    /// A builder with Python's defaults: one worker per available core, no initializer,
    /// workers that never retire, no task timeout.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::new()
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

    /// A snapshot of the pool: its workers alive, starting and lost so far (with the latest
    /// causes), and its tasks queued, running, done and failed; enough for a progress bar or
    /// a `/metrics` handler. It reads a few counters and takes no lock the pool's task holds
    /// for long. The counts follow the callers: a task's result may reach its caller before
    /// it counts as done, by at most the pool's [`spin`](PoolBuilder::spin) when nothing
    /// else happens in the pool.
    pub fn stats(&self) -> PoolStats {
        self.shared.counters.snapshot()
    }

    /// Runs `f(args)` in a worker and returns its result (Python's `apply`).
    ///
    /// # Errors
    /// As [`AsyncResult`].
    ///
    /// # Cancel safety
    /// The task is submitted when the future is first polled: a future dropped before that
    /// submits nothing. Dropping it later does not cancel the task: it runs to its end and
    /// its result is discarded (see [`AsyncResult`]). To submit at once, use
    /// [`apply_async`](Self::apply_async).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// # let pool = &tokio_multiprocessing::Pool::new(2).await?;
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// assert_eq!(pool.apply(add, (2, 3)).await?, 5);
    /// # Ok(()) }
    /// ```
    pub async fn apply<F, A, M>(&self, f: F, args: A) -> std::result::Result<F::Output, TaskError>
    where
        F: Target<A, M>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned,
    {
        self.apply_async(f, args).await
    }

    /// Runs `f(args)` in a worker, killing (and replacing) the worker if the task runs longer
    /// than `timeout`: the task then fails ([`TaskError::is_timeout`]), and so do other
    /// `async fn` tasks running on that worker, as their worker lost (see
    /// [`PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout)). The clock starts
    /// when the task starts running, not when it is submitted: time spent queued behind
    /// other tasks does not count (bound the whole wait with `tokio::time::timeout` or
    /// [`AsyncResult::get_timeout`]).
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
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.shared
            .submit_args(
                Entry::of::<F, A, M>(task_entry::<F, A, M>()),
                args,
                Some(timeout),
            )
            .await
    }

    /// Submits `f(args)` now and returns a handle on its result (Python's `apply_async`);
    /// the handle is a future. An argument that cannot be encoded fails the handle at once
    /// and nothing is sent.
    ///
    /// # Panics
    /// If the arguments' `Serialize` panics while they are encoded in place (their first
    /// MiB). Arguments larger than that are encoded on a blocking thread of the runtime:
    /// a panic there fails the handle with [`Error::Encode`] carrying the panic's message.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// # let pool = &tokio_multiprocessing::Pool::new(2).await?;
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
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.shared
            .submit_args(Entry::of::<F, A, M>(task_entry::<F, A, M>()), args, None)
    }

    /// Applies `f` to every item, in the workers, and returns the results in input order
    /// (Python's `map`). Await the returned [`Map`]; set its chunk size with
    /// [`Map::chunksize`] first if the default does not suit.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// # let pool = &tokio_multiprocessing::Pool::new(2).await?;
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
        Map::new(self, collect_items(iterable), entry)
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
        Map::new(self, collect_items(iterable), entry)
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

    fn imap_of<F, T, M>(&self, f: F, input: Box<dyn Input>, ordered: bool) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        IMap::new(
            self.shared.clone(),
            input,
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
        self.imap_of(f, Box::new(FromIter::new(iterable.into_iter())), true)
    }

    /// Like [`imap`](Self::imap), yielding results as they complete (Python's
    /// `imap_unordered`).
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// # let pool = &tokio_multiprocessing::Pool::new(2).await?;
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
        self.imap_of(f, Box::new(FromIter::new(iterable.into_iter())), false)
    }

    /// [`imap`](Self::imap) over an asynchronous input: the results of `f` on the items of
    /// `input` (any [`futures::Stream`]: a channel's receiver, lines read from a socket), in
    /// input order.
    ///
    /// The stream polls `input` when it is polled itself, and only while it has room in its
    /// window of chunks submitted and not yet yielded (see [`IMap`]): a producer feeding
    /// `input` through a bounded channel waits while the workers are behind. A chunk holds
    /// the items `input` has ready, up to the chunk size: an item that comes alone goes to a
    /// worker at once, not held back to fill a chunk. The results end after the result of
    /// `input`'s last item.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// # let pool = &tokio_multiprocessing::Pool::new(2).await?;
    /// use futures::{SinkExt, StreamExt};
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// // Items that arrive while the results are read, through a bounded channel.
    /// let (mut tx, rx) = futures::channel::mpsc::channel(16);
    /// tokio::spawn(async move {
    ///     for x in 0..100u64 {
    ///         if tx.send(x).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// });
    /// let squares: Vec<u64> = pool.imap_stream(square, rx).map(|r| r.unwrap()).collect().await;
    /// assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    /// # Ok(()) }
    /// ```
    pub fn imap_stream<F, T, M, S>(&self, f: F, input: S) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        S: futures::Stream<Item = T> + Send + 'static,
    {
        self.imap_of(f, Box::new(FromStream::new(input)), true)
    }

    /// [`imap_stream`](Self::imap_stream), yielding results as they complete (Python's
    /// `imap_unordered`, over an asynchronous input).
    pub fn imap_unordered_stream<F, T, M, S>(&self, f: F, input: S) -> IMap<F::Output>
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        S: futures::Stream<Item = T> + Send + 'static,
    {
        self.imap_of(f, Box::new(FromStream::new(input)), false)
    }

    /// Stops taking tasks (Python's `close()`): tasks already submitted run to their end,
    /// then the workers exit. Later submissions fail ([`TaskError::is_pool_closed`]). The
    /// inputs of an [`imap`](Self::imap) or [`imap_unordered`](Self::imap_unordered)
    /// stream made before count as submitted: the stream reads and submits them all.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _ = self.shared.cmds.send(Cmd::Close);
    }

    /// Waits for every worker to exit (Python's `join()`), after [`close`](Self::close) or
    /// [`terminate`](Self::terminate). After a close, that is once every task submitted has
    /// run, those of the `imap` streams made before the close included: such a stream
    /// submits its inputs as it is read, so read it to its end (or drop it) before awaiting
    /// `join`, or alongside.
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
