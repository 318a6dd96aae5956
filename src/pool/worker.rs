//! The worker's side: a child process whose target is [`worker_main`].
//!
//! # How a worker runs tasks
//!
//! The worker's socket is driven by a current-thread tokio runtime on the worker's main
//! thread (or on a thread of its own when `init()` was called inside `#[tokio::main]`).
//!
//! - An `async fn` task is spawned on that runtime as soon as it arrives, so a worker runs
//!   as many at once as the pool sends it (the pool's per-worker concurrency).
//! - A synchronous task runs on the runtime's thread when no async task is running, with
//!   the runtime set aside (its `block_on` returns the task to run, and is entered again
//!   after it): the common case costs no thread hop, and the task runs as plain code, free
//!   to block on a runtime of its own. When async tasks are running, a synchronous task goes
//!   to the worker's task thread (started on first need), so it never blocks them.
//!   Synchronous tasks run one at a time, in the order they arrived; those waiting their
//!   turn (the pool sends a few ahead) can be cancelled. An async task that arrives
//!   while a synchronous one runs on the runtime's thread starts when that one ends: the
//!   pool sends async tasks to workers that hold no synchronous ones when it can.
//!
//! # How a worker answers
//!
//! Answers to short synchronous tasks go out together, one write for many, while more of
//! them follow, for at most [`MAX_HOLD`]; they go out before a task that may be long (one
//! whose function has not run here yet, or has lately taken [`SHORT_TASK_NANOS`] or more on
//! average). So only a function whose calls are mostly short but sometimes long can make
//! the answers before one of its long calls (up to [`MAX_BATCH`] of them) wait for it. Each
//! answer says how long its task ran, and the pool sizes the number of tasks it sends ahead
//! by it.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use super::proto::{Reply, Setup, SetupReply, ToWorker};
use super::started::StartedMark;
use crate::error::{Error, Result, TaskFailure};
use crate::sys::{self, SameBinary};
use crate::task::{Failure, InitializerEntry, Invoked, TaskEntry};
use crate::wire::{Encoded, Fd, Frame, FrameBuf, Framed, Transport};

/// The most answers a worker sends in one write.
const MAX_BATCH: usize = 64;

/// The longest a worker holds an answer back to send it with the next ones.
const MAX_HOLD: Duration = Duration::from_micros(200);

/// A function whose calls have lately taken less than this (on average) is short: answers
/// held back may wait for its next call. Before any other task, held answers go out.
const SHORT_TASK_NANOS: u64 = 20_000;

/// The target of every pool worker process: `sock` is its link to the pool, `started` the
/// word in which it marks each synchronous task as it starts it (see [`StartedMark`]).
pub(super) fn worker_main(sock: Fd, started: Fd) {
    sys::keep_freed_memory();
    // Its tasks' proxies to a server share one connection, from task to task.
    crate::manager::keep_links_open();
    // A terminal's Ctrl-C (or Ctrl-\, Ctrl-Z) reaches the whole foreground process group:
    // the pool's owner decides what it means (say, a graceful `close()` and `join()`), and
    // the worker dies with its owner if the owner dies of it.
    if let Err(e) = sys::ignore_terminal_signals() {
        tracing::debug!("a pool worker cannot ignore the terminal's signals: {e}");
    }
    let run = move || -> Result<()> {
        let start = setup(sock.into_owned(), started.into_owned())?;
        match runtime(start.threads, start.threads_within) {
            Ok(rt) => serve(&rt, start),
            Err(message) => {
                // The pool fails this start saying why (a build with no worker ready).
                let refused = SetupReply::Refused(message);
                start.link.send_blocking(&mut FrameBuf::of(&refused)?)?;
                Ok(())
            }
        }
    };
    let outcome = if tokio::runtime::Handle::try_current().is_ok() {
        match std::thread::Builder::new()
            .name("pool-worker".into())
            .spawn(|| {
                let _alt = sys::AltStack::for_this_thread("pool-worker");
                run()
            }) {
            Ok(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Protocol("the worker thread panicked".into()))),
            Err(e) => Err(Error::from(e)),
        }
    } else {
        run()
    };
    match outcome {
        // The pool went away (dropped, or its process died): nothing to report to anyone.
        Ok(()) | Err(Error::Closed) => {}
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => {
            eprintln!(
                "tokio-multiprocessing pool worker {}: {e}",
                sys::current_pid()
            );
            sys::flush_std_streams();
            std::process::exit(1);
        }
    }
}

/// The runtime of a worker's `async fn` tasks: a current-thread one, or a multi-thread one
/// of `threads` threads (see [`PoolBuilder::worker_threads`](super::PoolBuilder::worker_threads));
/// why it could not be made otherwise.
///
/// A multi-thread one is made on a thread of its own, waited for up to `within` (the pool's
/// start timeout): when the system refuses one of its threads after others started (a pids
/// cgroup, say), tokio panics, and its unwinding waits for ever for the threads that
/// started; the process, which exits once its start is refused, ends them.
fn runtime(threads: u32, within: Duration) -> std::result::Result<tokio::runtime::Runtime, String> {
    let why =
        |why: String| format!("the worker could not make its runtime of {threads} threads: {why}");
    if threads <= 1 {
        return crate::start::fresh_runtime().map_err(|e| why(e.to_string()));
    }
    let started = Arc::new(AtomicU32::new(0));
    let (tx, rx) = mpsc::sync_channel(1);
    let counted = started.clone();
    let maker = std::thread::Builder::new()
        .name("pool-worker-runtime".into())
        .spawn(move || {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads as usize)
                .on_thread_start(move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                })
                .enable_all()
                .build();
            let _ = tx.send(built);
        });
    if let Err(e) = maker {
        return Err(why(e.to_string()));
    }
    match rx.recv_timeout(within) {
        Ok(Ok(rt)) => Ok(rt),
        Ok(Err(e)) => Err(why(e.to_string())),
        Err(_) => Err(why(format!(
            "{} of them started, then the system refused one (or took over {within:?})",
            started.load(Ordering::Relaxed)
        ))),
    }
}

/// A frame that answers task `id`, which took `nanos` to run (0 when not measured). A result
/// too large for a frame is answered with [`TaskFailure::TooLarge`], its size and the limit.
fn reply_frame(id: u64, outcome: std::result::Result<Encoded, Failure>, nanos: u64) -> FrameBuf {
    let failure = match outcome {
        Ok(enc) => {
            let mut frame = FrameBuf::new();
            let sealed = frame
                .push(&Reply {
                    id,
                    nanos,
                    failure: None,
                    over_memory: super::memory_limit::reached(),
                })
                .and_then(|()| {
                    frame.push_encoded(enc);
                    frame.check_size()
                });
            match sealed {
                Ok(()) => return frame,
                Err(Error::FrameTooLarge { size, max }) => TaskFailure::TooLarge {
                    size,
                    max: max as u64,
                },
                // Only a broken encoder gets here.
                Err(e) => TaskFailure::Refused(e.to_string()),
            }
        }
        Err(f) => f.into_task_failure(),
    };
    failure_frame(id, failure, nanos)
}

/// A frame that answers task `id` with `failure`.
fn failure_frame(id: u64, failure: TaskFailure, nanos: u64) -> FrameBuf {
    let over_memory = super::memory_limit::reached();
    let reply = Reply {
        id,
        nanos,
        failure: Some(failure),
        over_memory,
    };
    FrameBuf::of(&reply).unwrap_or_else(|e| {
        // A failure's text that cannot be encoded (it cannot happen with MessagePack, which
        // encodes any string): answer with the encoder's message instead.
        let reply = Reply {
            id,
            nanos,
            failure: Some(TaskFailure::Refused(e.to_string())),
            over_memory,
        };
        FrameBuf::of(&reply).unwrap_or_default()
    })
}

/// Answers held back to go out together.
#[derive(Default)]
struct Held {
    frames: Vec<FrameBuf>,
    /// When the first of them was held.
    since: Option<Instant>,
}

impl Held {
    fn push(&mut self, frame: FrameBuf) {
        self.since.get_or_insert_with(Instant::now);
        self.frames.push(frame);
    }

    /// Whether they must go now: the batch is full, or its first answer has waited
    /// [`MAX_HOLD`].
    fn is_due(&self) -> bool {
        self.frames.len() >= MAX_BATCH || self.since.is_some_and(|t| t.elapsed() >= MAX_HOLD)
    }

    /// Sends them all, if any, in one batch.
    async fn flush(&mut self, wr: &Framed) -> Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        wr.send_batch(&mut self.frames).await?;
        self.frames.clear();
        self.since = None;
        Ok(())
    }
}

/// The worker's task thread: runs one synchronous task at a time, handed over while async
/// tasks are running.
struct Lane {
    tx: Option<mpsc::Sender<(u64, TaskEntry, Frame)>>,
    busy: bool,
    done: UnboundedSender<Done>,
    started: Arc<StartedMark>,
}

impl Lane {
    fn push(&mut self, id: u64, entry: TaskEntry, frame: Frame) -> Result<()> {
        if self.tx.is_none() {
            let (tx, rx) = mpsc::channel::<(u64, TaskEntry, Frame)>();
            let done = self.done.clone();
            let started = self.started.clone();
            std::thread::Builder::new()
                .name("pool-tasks".into())
                .spawn(move || {
                    let _alt = sys::AltStack::for_this_thread("pool-tasks");
                    while let Ok((id, entry, frame)) = rx.recv() {
                        started.mark(id);
                        let (out, nanos) = run_sync(entry, frame);
                        if done.send(Done::Lane(reply_frame(id, out, nanos))).is_err() {
                            break;
                        }
                    }
                })?;
            self.tx = Some(tx);
        }
        match &self.tx {
            Some(tx) if tx.send((id, entry, frame)).is_ok() => {
                self.busy = true;
                Ok(())
            }
            _ => Err(Error::Protocol("the worker's task thread is gone".into())),
        }
    }
}

/// An answer produced away from the main loop.
enum Done {
    Lane(FrameBuf),
    Async(FrameBuf),
}

/// Runs a synchronous task to its end; also says how long it took, in nanoseconds.
fn run_sync(entry: TaskEntry, mut frame: Frame) -> (std::result::Result<Encoded, Failure>, u64) {
    let t = Instant::now();
    let fds: Vec<OwnedFd> = std::mem::take(&mut frame.fds);
    let out = match crate::task::call_task(entry, frame.body(), fds) {
        Invoked::Ready(r) => r,
        Invoked::Pending(_) => Err(Failure::Args(Error::Protocol(
            "a task sent as synchronous returned a future".into(),
        ))),
    };
    let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    (out, nanos.max(1))
}

/// A task function the worker has resolved, and how long it takes.
struct Known {
    entry: TaskEntry,
    /// The mean run time of its synchronous calls lately, in nanoseconds; `None` before
    /// the first.
    mean_nanos: Option<u64>,
}

/// A synchronous task received and not started.
struct Queued {
    id: u64,
    offset: i64,
    entry: TaskEntry,
    frame: Frame,
    /// The pool allows a spin for the next task after this one.
    spin: bool,
    /// The task has a timeout (see [`ToWorker::Task`]).
    timed: bool,
    /// Its number among the synchronous tasks sent to this worker (see [`ToWorker::Task`]).
    seq: u64,
}

/// The worker's state between frames.
struct Worker {
    same: SameBinary,
    entries: HashMap<i64, Known>,
    /// Synchronous tasks received and not started, in arrival order.
    queue: VecDeque<Queued>,
    async_running: usize,
    done: UnboundedSender<Done>,
    exiting: bool,
    /// The cancels received, to compare with those the pool sent (see [`StartedMark`]).
    cancels_taken: u64,
}

impl Worker {
    fn entry(&mut self, offset: i64) -> std::io::Result<TaskEntry> {
        if let Some(k) = self.entries.get(&offset) {
            return Ok(k.entry);
        }
        let entry = sys::resolve_entry::<TaskEntry>(offset, self.same)?;
        self.entries.insert(
            offset,
            Known {
                entry,
                mean_nanos: None,
            },
        );
        Ok(entry)
    }

    /// Whether calls of the function at `offset` have lately been short enough that
    /// answers may wait for them (see [`SHORT_TASK_NANOS`]).
    fn is_short(&self, offset: i64) -> bool {
        self.entries
            .get(&offset)
            .and_then(|k| k.mean_nanos)
            .is_some_and(|m| m < SHORT_TASK_NANOS)
    }

    fn timed(&mut self, offset: i64, nanos: u64) {
        if let Some(k) = self.entries.get_mut(&offset) {
            k.mean_nanos = Some(match k.mean_nanos {
                None => nanos,
                Some(m) => (m * 3 + nanos) / 4,
            });
        }
    }

    /// The next synchronous task to start, claimed in the started mark; the tasks the pool
    /// took back are dropped, unanswered (the pool sent them to another worker, or answered
    /// them cancelled).
    fn next_task(&mut self, mark: &StartedMark) -> Option<Queued> {
        while let Some(q) = self.queue.pop_front() {
            if mark.claim(q.seq) {
                return Some(q);
            }
        }
        None
    }

    /// Takes in what the pool sent, answering at once what needs no task; `false` when the
    /// pool is gone (nothing more will come, and nobody waits for answers).
    async fn take_in(&mut self, r: Result<Frame>, wr: &Framed) -> Result<bool> {
        match r {
            Ok(frame) => {
                if let Some(mut f) = self.take(frame)? {
                    wr.send(&mut f).await?;
                }
                Ok(true)
            }
            Err(Error::Closed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes in one frame from the pool; returns an answer to send at once, if any.
    fn take(&mut self, mut frame: Frame) -> Result<Option<FrameBuf>> {
        let (id, entry, is_async, spin, timed, seq) = match frame.decode_head::<ToWorker>()? {
            ToWorker::Exit => {
                self.exiting = true;
                return Ok(None);
            }
            ToWorker::Cancel { id } => {
                self.cancels_taken += 1;
                let before = self.queue.len();
                self.queue.retain(|q| q.id != id);
                if self.queue.len() == before {
                    return Ok(None);
                }
                return Ok(Some(failure_frame(id, TaskFailure::Cancelled, 0)));
            }
            ToWorker::Task {
                id,
                entry,
                is_async,
                spin,
                timed,
                seq,
            } => (id, entry, is_async, spin, timed, seq),
        };
        let offset = entry;
        let entry = match self.entry(offset) {
            Ok(e) => e,
            Err(e) => {
                return Ok(Some(reply_frame(id, Err(Failure::Args(Error::from(e))), 0)));
            }
        };
        if !is_async {
            self.queue.push_back(Queued {
                id,
                offset,
                entry,
                frame,
                spin,
                timed,
                seq,
            });
            return Ok(None);
        }
        let fds = std::mem::take(&mut frame.fds);
        let invoked = crate::task::call_task(entry, frame.body(), fds);
        drop(frame);
        self.async_running += 1;
        let done = self.done.clone();
        tokio::spawn(async move {
            let out = match invoked {
                Invoked::Ready(r) => r,
                Invoked::Pending(fut) => fut.await,
            };
            let _ = done.send(Done::Async(reply_frame(id, out, 0)));
        });
        Ok(None)
    }
}

/// A worker after its setup frame, before its runtime.
struct Start {
    /// The link to the pool (holding what was read beyond the setup frame).
    link: Framed,
    same: SameBinary,
    /// The initializer (its entry and the frame holding its arguments), still to run;
    /// `None` when there is none and the pool has been told `Ready`.
    init: Option<(i64, Frame)>,
    spin: Duration,
    /// Where synchronous tasks are marked as they start.
    started: Arc<StartedMark>,
    /// The threads of its runtime: 1 for a current-thread runtime.
    threads: u32,
    /// How long it waits for them to start.
    threads_within: Duration,
}

/// Reads the setup frame and checks it, without a runtime (blocking). `Ready` is answered
/// once the runtime is made, and the initializer, if any, has run (see [`serve`]).
fn setup(sock: OwnedFd, started: OwnedFd) -> Result<Start> {
    // A Unix socket from a local pool, or a TCP socket to a cluster's head.
    let transport = Transport::of(sock.as_fd())?;
    let link = Framed::new(sock, transport)?;
    let mut frame = link.recv_blocking()?;
    let setup: Setup = frame.decode_head()?;
    crate::task::record_panics(setup.print_panics);
    if let Some(limit) = setup.max_memory {
        super::memory_limit::watch(limit);
    }
    let reply = |r: &SetupReply| link.send_blocking(&mut FrameBuf::of(r)?);
    let same = match setup.hello.check() {
        Ok(s) => s,
        Err(e) => {
            reply(&SetupReply::Refused(e.to_string()))?;
            return Err(e);
        }
    };
    // Ready is answered once the runtime is made (see `serve`).
    let init = setup.init.map(|offset| (offset, frame));
    Ok(Start {
        link,
        same,
        init,
        spin: Duration::from_nanos(setup.spin_nanos),
        started: Arc::new(StartedMark::from_fd(started)?),
        threads: setup.worker_threads,
        threads_within: Duration::from_nanos(setup.start_timeout_nanos),
    })
}

/// Serves the pool until it is gone or tells the worker to exit. The runtime drives the
/// socket and the `async fn` tasks; a synchronous task (and a synchronous initializer) runs
/// on this thread outside it, as plain code, so that it may block on a runtime of its own
/// as a `Process` target may: [`Serving::step`] returns each one to run here.
fn serve(rt: &tokio::runtime::Runtime, start: Start) -> Result<()> {
    let link = start.link;
    let reply = match start.init {
        Some((offset, frame)) => match run_initializer(rt, offset, start.same, frame) {
            Ok(()) => SetupReply::Ready,
            Err(message) => SetupReply::InitFailed(message),
        },
        None => SetupReply::Ready,
    };
    rt.block_on(link.send(&mut FrameBuf::of(&reply)?))?;
    if !matches!(reply, SetupReply::Ready) {
        return Ok(());
    }
    tracing::debug!(pid = sys::current_pid(), "pool worker ready");
    let started = start.started;
    let (done_tx, done_rx) = unbounded_channel::<Done>();
    let mut serving = Serving {
        remote: link.transport() == Transport::Tcp,
        link,
        lane: Lane {
            tx: None,
            busy: false,
            done: done_tx.clone(),
            started: started.clone(),
        },
        w: Worker {
            same: start.same,
            entries: HashMap::new(),
            queue: VecDeque::new(),
            async_running: 0,
            done: done_tx,
            exiting: false,
            cancels_taken: 0,
        },
        done_rx,
        held: Held::default(),
        spin: start.spin,
        spin_next: false,
        seen: false,
    };
    let mut ran = None;
    loop {
        match rt.block_on(serving.step(ran.take()))? {
            Step::Exit => return Ok(()),
            Step::Run(q) => {
                started.mark(q.id);
                let (out, nanos) = run_sync(q.entry, q.frame);
                ran = Some(Ran {
                    id: q.id,
                    offset: q.offset,
                    may_spin: q.spin,
                    out,
                    nanos,
                });
            }
        }
    }
}

/// What [`Serving::step`] asks of the thread that drives it.
enum Step {
    /// Run this synchronous task here, outside the runtime, then step again with its
    /// [`Ran`].
    Run(Queued),
    /// The pool is gone, or told the worker to exit and everything is answered.
    Exit,
}

/// A synchronous task run by [`serve`]'s thread, and its outcome.
struct Ran {
    id: u64,
    offset: i64,
    may_spin: bool,
    out: std::result::Result<Encoded, Failure>,
    nanos: u64,
}

/// The worker's serving state, kept across the steps between synchronous tasks.
struct Serving {
    link: Framed,
    lane: Lane,
    w: Worker,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<Done>,
    held: Held,
    spin: Duration,
    remote: bool,
    /// The last task was short and the pool allows a spin for the next one.
    spin_next: bool,
    /// Input seen by a spin, not yet by the reactor: read it directly.
    seen: bool,
}

impl Serving {
    /// Answers the synchronous task that just ran, if any, then serves until the next
    /// synchronous task is due on this thread (or the worker is done).
    async fn step(&mut self, ran: Option<Ran>) -> Result<Step> {
        let Serving {
            link,
            lane,
            w,
            done_rx,
            held,
            spin,
            remote,
            spin_next,
            seen,
        } = self;
        let (rd, wr) = (&*link, &*link);
        if let Some(Ran {
            id,
            offset,
            may_spin,
            out,
            nanos,
        }) = ran
        {
            w.timed(offset, nanos);
            *spin_next = may_spin && u128::from(nanos) < spin.as_nanos();
            held.push(reply_frame(id, out, nanos));
            // Otherwise they go at once when the queue is empty, when the batch is full,
            // or when its first answer has waited `MAX_HOLD`.
            if w.queue.is_empty() || held.is_due() {
                held.flush(wr).await?;
            }
        }
        loop {
            // Everything that has arrived is taken in before a task starts, so that a
            // cancel sent behind a task reaches the queue first. After a task ran outside
            // the runtime, the reactor has not looked at the socket since: a cancel the
            // pool says it sent is read from the socket directly, and so is everything on
            // a cluster's host, whose pool shares no memory to say it (a system call per
            // task beside a network round trip).
            loop {
                let direct = *seen || *remote || lane.started.cancels() > w.cancels_taken;
                let next = if direct {
                    rd.try_recv()
                } else {
                    rd.recv().now_or_never()
                };
                let Some(r) = next else { break };
                if !w.take_in(r, wr).await? {
                    return Ok(Step::Exit);
                }
            }
            *seen = false;
            if !lane.busy
                && let Some(q) = w.next_task(&lane.started)
            {
                if w.async_running == 0 {
                    // Answers go out together while short tasks follow each other here,
                    // but never wait for a task that may be long, nor for one that may be
                    // killed.
                    if q.timed || !w.is_short(q.offset) {
                        held.flush(wr).await?;
                    }
                    return Ok(Step::Run(q));
                }
                lane.push(q.id, q.entry, q.frame)?;
            }
            held.flush(wr).await?;
            if w.exiting && w.queue.is_empty() && !lane.busy && w.async_running == 0 {
                return Ok(Step::Exit);
            }
            // After a short task, the next one may be just behind: wait for it awake. A
            // worker on a cluster's host also looks whether a core of its host is spare:
            // the pool, on another machine, cannot tell.
            if *spin_next && !lane.busy && w.async_running == 0 && (!*remote || sys::core_spare()) {
                *spin_next = false;
                if rd.spin_for_input(*spin) {
                    *seen = true;
                    continue;
                }
            }
            tokio::select! {
                r = rd.recv() => if !w.take_in(r, wr).await? {
                    return Ok(Step::Exit);
                },
                Some(done) = done_rx.recv() => {
                    let mut f = match done {
                        Done::Lane(f) => {
                            lane.busy = false;
                            f
                        }
                        Done::Async(f) => {
                            w.async_running -= 1;
                            f
                        }
                    };
                    wr.send(&mut f).await?;
                }
            }
        }
    }
}

/// Runs the initializer: a synchronous one on this thread outside the runtime (as plain
/// code, like a synchronous task), an `async fn` one on the runtime. `Err` carries its
/// failure for the pool.
fn run_initializer(
    rt: &tokio::runtime::Runtime,
    offset: i64,
    same: SameBinary,
    mut frame: Frame,
) -> std::result::Result<(), String> {
    let entry: InitializerEntry = sys::resolve_entry(offset, same).map_err(|e| e.to_string())?;
    let fds = std::mem::take(&mut frame.fds);
    let out = match entry(frame.body(), fds) {
        Invoked::Ready(r) => r,
        Invoked::Pending(fut) => rt.block_on(fut),
    };
    crate::task::initializer_outcome(out)
}
