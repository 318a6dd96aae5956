//! The scheduler: one tokio task that owns the workers, the queue of tasks and the table
//! of tasks in flight.
//!
//! Per worker, a reader task hands its answers straight to the callers and logs them for
//! the scheduler ([`Answered`]: it wakes the scheduler for them unless they may wait), and
//! tells it of the worker's death (its pidfd, on tokio's reactor) as an [`Event`]; the
//! scheduler writes the worker's frames itself or through a writer task. The scheduler
//! sends a task to the least loaded worker that has room: one running synchronous task plus
//! a few waiting behind it (enough to keep it busy across its round trip, up to
//! [`MAX_PREFETCH`], as many as the backlog warrants: see [`prefetch_for`]), or up to the
//! per-worker concurrency of `async fn` tasks. A worker left idle with nothing queued takes
//! over a synchronous task sent ahead to a busy local worker, if that worker has not claimed
//! it (see [`Scheduler::take_back_for_idle`]), so a short task does not wait behind a long
//! one while a worker idles. When a worker dies, the tasks it may have started fail with a
//! [`TaskError`] that says so (those whose answer had arrived were answered already); the
//! ones it held and provably never started (see [`StartedMark`]) go back to the head of the
//! queue. Then the worker is replaced. A worker that cannot be started is started again
//! later, with a growing delay.
//!
//! This file is the whole state machine: its handlers of commands, events and deadlines,
//! and the dispatch they share, which all keep one invariant (every task is in exactly one
//! of the queue, a worker's slot and the table in flight, until it is answered); it is kept
//! in one file, over 600 lines, so that the invariant is read in one place.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::answered::{Answer, Answered};
use super::builder::Config;
use super::id_map::IdMap;
use super::idle::{Activity, IdleSweep};
use super::link::{read_worker, write_worker};
use super::payload::Payload;
use super::proto::ToWorker;
use super::slot::{RoundTrip, Slot};
use super::spawn::{WorkerConn, spawn_start};
use super::started::{RING, TakeBack};
use super::stats::{Counters, Tally, WorkerLoss};
use crate::error::{Error, ExitCause, Result, TaskError};
use crate::wire::Frame;
use crate::wire::{FrameBuf, Outbox};

/// The most synchronous tasks a worker may hold beyond the one it runs, to hide the round
/// trip; the pool holds fewer when its tasks are long (see [`prefetch_for`]).
pub(super) const MAX_PREFETCH: usize = 256;

// A worker holds at most the task it runs and its prefetch: the claim ring has a word for each
// number it may hold unsettled (see `started`).
const _: () = assert!(MAX_PREFETCH + 1 < RING);

/// The prefetch before any task has been timed.
const FIRST_PREFETCH: usize = 8;

/// How much work, by the mean run time of the pool's tasks, a worker may hold beyond the
/// task it runs and what covers its round trip: the most a task waits behind others in a
/// worker while another worker may be idle.
const PREFETCH_BUDGET_NANOS: f64 = 1e6;

/// How many synchronous tasks a worker may hold beyond the one it runs, given the mean run
/// time of the pool's tasks (`None` before any was timed), the worker's round trip and a
/// fair share of the backlog: enough to run for [`PREFETCH_BUDGET_NANOS`] plus twice the
/// round trip, so that the worker still has work when the answer to its first task has
/// reached the pool and the pool's next task has reached the worker (a worker across a slow
/// link stays busy), few when tasks are long; never more than [`MAX_PREFETCH`] nor than the
/// fair share, so that a long task holds few others up behind it; at least one.
///
/// Twice, because the estimate is the least round trip seen ([`RoundTrip`]), and a real
/// link's trips spread above it: one that runs long must not leave the worker idle. A local
/// worker's round trip, tens of microseconds, changes little next to the budget.
fn prefetch_for(mean_nanos: Option<f64>, round_trip_nanos: u64, fair_share: usize) -> usize {
    let by_time = match mean_nanos {
        None => FIRST_PREFETCH,
        Some(m) => ((PREFETCH_BUDGET_NANOS + 2.0 * round_trip_nanos as f64) / m.max(1.0)) as usize,
    };
    by_time.min(MAX_PREFETCH).min(fair_share).max(1)
}

/// A task's answer as it reaches the caller: the frame that holds its result (after the
/// head), or why there is none.
pub(super) type Outcome = std::result::Result<Frame, TaskError>;

/// A task waiting to be sent.
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) entry: i64,
    pub(super) is_async: bool,
    pub(super) payload: Payload,
    pub(super) timeout: Option<Duration>,
    /// How many more times it may run again if a worker dies while it may be running it
    /// (see [`PoolBuilder::retries_on_worker_loss`](super::PoolBuilder::retries_on_worker_loss)).
    pub(super) retries: u32,
    /// Where the answer goes; `None` once it is in [`Replies`] (a task sent again after
    /// its worker died).
    pub(super) reply: Option<oneshot::Sender<Outcome>>,
    /// The `imap` stream it comes from (see [`Cmd::StreamOpened`]), if any.
    pub(super) stream: Option<u64>,
}

/// Where the answers of the tasks in flight go, by task id, with the worker each was sent
/// to. A worker's reader task answers from here directly (one hop less between the worker
/// and the caller); the scheduler answers from here when it fails a task. Whoever takes the
/// sender answers.
pub(super) type Replies = Arc<Mutex<IdMap<(u64, oneshot::Sender<Outcome>)>>>;

/// Takes the sender of task `id`'s answer, if nobody took it first; for worker `by` (its
/// reader), only if the task was sent to that worker: an answer to another worker's task is
/// never delivered.
pub(super) fn take_reply(
    replies: &Replies,
    id: u64,
    by: Option<u64>,
) -> Option<oneshot::Sender<Outcome>> {
    let mut map = replies.lock().unwrap_or_else(|p| p.into_inner());
    if by.is_some_and(|w| map.get(&id).is_some_and(|(sent_to, _)| *sent_to != w)) {
        return None;
    }
    map.remove(&id).map(|(_, tx)| tx)
}

/// What the pool's handles ask of the scheduler.
pub(super) enum Cmd {
    Submit(Job),
    /// Task `id` was submitted, and its arguments are being encoded off the caller's
    /// thread: it counts as queued (a close waits for it) until its [`Cmd::Expected`].
    Expect(u64),
    /// The task announced by [`Cmd::Expect`], with its arguments; `None` if they could not
    /// be encoded or its caller gave up (its handle has its answer already).
    Expected {
        id: u64,
        job: Option<Job>,
    },
    /// Cancel task `id`; `running` says whether to kill its worker if it may have started.
    Cancel {
        id: u64,
        running: bool,
    },
    /// An `imap` stream was made, under this id: its inputs count as submitted, so a close
    /// lets the stream submit them all (and waits for them) until [`Cmd::StreamEnded`].
    /// Unless the pool was closed first: then its tasks are refused as any others.
    StreamOpened(u64),
    /// The stream has submitted all its inputs, or was dropped.
    StreamEnded(u64),
    Close,
    Join(oneshot::Sender<()>),
    Terminate(Option<oneshot::Sender<()>>),
}

/// What the worker tasks tell the scheduler.
pub(super) enum Event {
    /// Workers answered tasks: their answers wait in [`Answered`], which the scheduler
    /// takes in before anything else at every wake-up.
    Answered,
    Exited {
        wid: u64,
        cause: ExitCause,
        /// Why the pool killed it, if it did: what it sent could not be read.
        killed_because: Option<Arc<str>>,
    },
    Started(Result<WorkerConn>),
}

/// What woke the scheduler.
enum Woke {
    Event(Event),
    Cmd(Option<Cmd>),
    Deadline,
}

/// A task sent to a worker and not answered.
struct Running {
    wid: u64,
    entry: i64,
    is_async: bool,
    timeout: Option<Duration>,
    /// Whether the worker has (as far as we know) started it.
    started: bool,
    /// The arguments, kept while the task waits in a worker so it can be sent again if
    /// that worker dies before starting it (and while it runs, if it may be retried, or if
    /// [`kept_while_running`]).
    copy: Option<Payload>,
    retries: u32,
    deadline: Option<Instant>,
    /// When it was sent (in the round of dispatch that sent it).
    sent_at: std::time::Instant,
    /// Whether it was sent to a worker that held no other synchronous task, so that it
    /// waited behind none (see [`RoundTrip`](super::slot::RoundTrip)).
    alone: bool,
    /// A synchronous task's number among those sent to its worker, by which it is taken
    /// back (see [`StartedMark`](super::started::StartedMark)); 0 for an `async fn` task.
    seq: u64,
    /// Its worker was asked to drop it (see [`Slot::send_cancel`]): it is never sent again,
    /// to another worker or the same.
    cancel_sent: bool,
}

/// Worker starts in progress when the scheduler begins, from
/// [`PoolBuilder::build`](super::PoolBuilder::build).
pub(super) struct Starts {
    /// Starts still running, to be reported on the events channel.
    pub(super) pending: usize,
    /// Starts that failed, to be tried again.
    pub(super) failed: usize,
}

/// The largest arguments kept while their synchronous task runs (see [`kept_while_running`]).
const KEEP_WHILE_RUNNING: usize = 1 << 20;

/// Whether a task's arguments are kept while it runs, not only while it waits in a worker:
/// a synchronous task's, up to [`KEEP_WHILE_RUNNING`] bytes. A worker marks each
/// synchronous task as it starts it, so one whose worker died before that mark is sent
/// again, even the task it was taken to be running (a worker may die between receiving a
/// task and starting it); an `async fn` task is not marked, and whether it started is not
/// known.
fn kept_while_running(is_async: bool, payload: &Payload) -> bool {
    !is_async && payload.len() <= KEEP_WHILE_RUNNING
}

/// The first delay before a failed worker start is tried again; it doubles with each
/// failure in a row, up to [`MAX_RESTART_DELAY`].
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(10);

/// The longest delay before a failed worker start is tried again.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// How many worker starts in a row must fail, while the pool has no worker, before each
/// further failure fails the tasks waiting: with the delays above, some 30 ms after the
/// first, for a failure that lasts (no descriptors left, say).
const FAILED_STARTS_TO_GIVE_UP: u32 = 3;

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking tasks.
    Open,
    /// Closed: no new tasks; those queued run, then the workers exit.
    Closed,
    /// Terminated: every worker is killed, every task not finished fails.
    Terminating,
}

pub(super) struct Scheduler {
    cfg: Arc<Config>,
    cmds: UnboundedReceiver<Cmd>,
    cmds_open: bool,
    events: UnboundedReceiver<Event>,
    events_tx: UnboundedSender<Event>,
    queue: VecDeque<Job>,
    /// Tasks announced by [`Cmd::Expect`] and not yet arrived: whether each was cancelled
    /// meanwhile.
    expected: IdMap<bool>,
    /// The `imap` streams made while the pool was open that may still submit tasks.
    streams: BTreeSet<u64>,
    workers: IdMap<Slot>,
    /// The workers' writer tasks. Each holds its worker's link and pidfd; the scheduler
    /// awaits their end before it answers [`Cmd::Join`] and [`Cmd::Terminate`], so that a
    /// pool that has ended holds no descriptor of its workers.
    writers: JoinSet<()>,
    /// How to end each worker's writer task once the worker has exited.
    writer_of: IdMap<AbortHandle>,
    next_wid: u64,
    starting: usize,
    in_flight: IdMap<Running>,
    deadlines: BTreeSet<(Instant, u64)>,
    phase: Phase,
    /// Why no worker can be started any more (a failed initializer); the pool fails its
    /// tasks with it once no worker is left.
    broken: Option<Error>,
    /// Worker starts that failed in a row; the next start waits longer for each.
    start_failures: u32,
    waiters: Vec<oneshot::Sender<()>>,
    replies: Replies,
    /// The mean run time of the synchronous tasks answered lately, in nanoseconds.
    mean_nanos: Option<f64>,
    /// Whether the readers may spin for the next answer (see [`Scheduler::update_spin`]).
    spin: Arc<AtomicBool>,
    /// The answers the readers logged, not yet taken in.
    answered: Arc<Answered>,
    /// Where they are taken to (kept, so as not to allocate at each wake-up).
    taken: Vec<Answer>,
    /// What [`Pool::stats`](super::Pool::stats) reads.
    counters: Arc<Counters>,
    /// What happened since the last publication to `counters`.
    tally: Tally,
    /// The sweeps for idle workers, with an idle timeout.
    idle: Option<IdleSweep>,
}

impl Scheduler {
    /// A scheduler that starts with worker `first`, takes in more as the `starts` pending
    /// (begun with [`spawn_start`] on `events_tx`) are reported on `events`, and starts
    /// again those that failed.
    pub(super) fn new(
        cfg: Arc<Config>,
        cmds: UnboundedReceiver<Cmd>,
        (events_tx, events): (UnboundedSender<Event>, UnboundedReceiver<Event>),
        first: WorkerConn,
        starts: Starts,
        counters: Arc<Counters>,
    ) -> Scheduler {
        let idle = cfg.idle_timeout.map(IdleSweep::new);
        let mut s = Scheduler {
            cfg,
            cmds,
            cmds_open: true,
            events,
            events_tx,
            queue: VecDeque::new(),
            expected: IdMap::default(),
            streams: BTreeSet::new(),
            workers: IdMap::default(),
            writers: JoinSet::new(),
            writer_of: IdMap::default(),
            next_wid: 0,
            starting: starts.pending,
            in_flight: IdMap::default(),
            deadlines: BTreeSet::new(),
            phase: Phase::Open,
            broken: None,
            start_failures: u32::try_from(starts.failed).unwrap_or(u32::MAX),
            waiters: Vec::new(),
            replies: Arc::new(Mutex::new(IdMap::default())),
            mean_nanos: None,
            spin: Arc::new(AtomicBool::new(false)),
            answered: Arc::default(),
            taken: Vec::new(),
            idle,
            counters,
            tally: Tally::default(),
        };
        s.add_worker(first);
        for _ in 0..starts.failed {
            s.start_later();
        }
        s
    }

    /// Runs until the pool is closed (or terminated) and every worker is gone.
    pub(super) async fn run(mut self) {
        loop {
            // A terminated pool waits for the workers still starting too, as Python's
            // terminate joins them: their starts are cut short (see `spawn_start`).
            if self.phase != Phase::Open && self.workers.is_empty() && self.starting == 0 {
                break;
            }
            let deadline = self.deadlines.first().map(|(t, _)| *t);
            let deadline = match (deadline, self.idle.as_ref().and_then(IdleSweep::due)) {
                (Some(t), Some(u)) => Some(t.min(u)),
                (t, u) => t.or(u),
            };
            let woke = tokio::select! {
                biased;
                Some(ev) = self.events.recv() => Woke::Event(ev),
                cmd = self.cmds.recv(), if self.cmds_open => Woke::Cmd(cmd),
                () = sleep_until(deadline), if deadline.is_some() => Woke::Deadline,
            };
            // The answers logged before what woke it come first: a worker's exit is
            // reported after its last answers, a cancel finds an answered task answered.
            self.take_answers();
            match woke {
                Woke::Event(ev) => self.on_event(ev),
                Woke::Cmd(Some(c)) => self.on_cmd(c),
                Woke::Cmd(None) => {
                    self.cmds_open = false;
                    self.terminate();
                }
                Woke::Deadline => {
                    self.on_deadlines();
                    self.sweep_idle();
                }
            }
            // Take in everything else that is ready before dispatching.
            while let Ok(ev) = self.events.try_recv() {
                self.take_answers();
                self.on_event(ev);
            }
            while self.cmds_open {
                match self.cmds.try_recv() {
                    Ok(c) => self.on_cmd(c),
                    Err(_) => break,
                }
            }
            self.dispatch();
            // Answers logged as deferred meanwhile, which may not wait any more, are taken in
            // now; those logged from here on wake the scheduler unless they may wait.
            if self.answered.allow_waiting(self.may_defer()) {
                self.take_answers();
                self.dispatch();
            }
            self.update_spin();
            let alive = self.workers.values().filter(|s| !s.draining).count();
            let now = (alive, self.starting, self.queue.len(), self.in_flight.len());
            self.counters.publish(now, &mut self.tally);
        }
        self.fail_unfinished();
        // Each writer task was ended as its worker's exit was taken in; the readers closed
        // what they held before reporting it.
        while self.writers.join_next().await.is_some() {}
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
        tracing::debug!("pool scheduler finished");
    }

    /// Whether the pool's processes may spin (see [`PoolBuilder::spin`]) with `busy`
    /// workers busy: while the tasks are short and a core is spare, so that spinning takes
    /// no time from a worker at work.
    fn may_spin(&self, busy: usize) -> bool {
        let limit = self.cfg.spin.as_nanos() as f64;
        // A cluster's workers run on their hosts' cores, not on ours: each host's worker
        // looks at its own before it spins.
        let spare = self.cfg.cluster.is_some() || busy < self.cfg.cores;
        self.mean_nanos.is_some_and(|m| m < limit) && spare
    }

    /// The number of workers with tasks in flight.
    fn busy(&self) -> usize {
        self.workers.values().filter(|s| s.load() > 0).count()
    }

    /// Tells the readers whether they may spin for the next answer.
    fn update_spin(&self) {
        self.spin
            .store(self.may_spin(self.busy()), Ordering::Relaxed);
    }

    /// Fails every task queued or in flight as the pool's end does: closed.
    fn fail_unfinished(&mut self) {
        for job in std::mem::take(&mut self.queue) {
            self.answer_job(job, Err(TaskError::pool_closed()));
        }
        for (id, _) in std::mem::take(&mut self.in_flight) {
            self.answer(id, Err(TaskError::pool_closed()));
        }
    }

    /// Answers a task that is not in flight.
    fn answer_job(&mut self, job: Job, outcome: Outcome) {
        self.answer_unsent(job.id, job.reply, outcome);
    }

    /// Answers task `id`, which is not in flight, through `reply` if it still holds its
    /// sender, else through the table of replies (a task sent again after its worker died).
    fn answer_unsent(
        &mut self,
        id: u64,
        reply: Option<oneshot::Sender<Outcome>>,
        outcome: Outcome,
    ) {
        if let Some(tx) = reply.or_else(|| take_reply(&self.replies, id, None)) {
            self.tally.finished(outcome.is_ok());
            let _ = tx.send(outcome);
        }
    }

    /// Answers a task in flight, unless its worker's answer got there first; says which.
    fn answer(&mut self, id: u64, outcome: Outcome) -> bool {
        match take_reply(&self.replies, id, None) {
            Some(tx) => {
                self.tally.finished(outcome.is_ok());
                let _ = tx.send(outcome);
                true
            }
            None => false,
        }
    }

    fn add_worker(&mut self, w: WorkerConn) {
        let now = Instant::now();
        if let Some(idle) = &mut self.idle {
            idle.arm(now);
        }
        let wid = self.next_wid;
        self.next_wid += 1;
        let (tx, rx) = unbounded_channel();
        let out = Outbox::new(tx, w.writer.clone());
        let writer = write_worker(w.writer, rx, out.counter(), w.killer.clone());
        self.writer_of.insert(wid, self.writers.spawn(writer));
        let over_memory = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_worker(
            wid,
            over_memory.clone(),
            w.reader,
            (w.life, w.killer.clone()),
            (self.events_tx.clone(), self.answered.clone()),
            self.replies.clone(),
            (self.spin.clone(), self.cfg.spin),
        ));
        self.workers.insert(
            wid,
            Slot {
                pid: w.pid,
                host: w.host,
                killer: w.killer,
                out,
                unsent: Vec::new(),
                started: w.started,
                sync: VecDeque::new(),
                asyncs: Vec::new(),
                sent: 0,
                sync_sent: 0,
                taken_back: BTreeSet::new(),
                draining: false,
                send_failed: false,
                over_memory,
                round_trip: RoundTrip::default(),
                activity: Activity::new(now),
            },
        );
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Submit(mut job) => {
                job.retries = self.cfg.retries_on_worker_loss;
                let of_open_stream = job.stream.is_some_and(|s| self.streams.contains(&s));
                if self.phase == Phase::Terminating
                    || (self.phase == Phase::Closed && !of_open_stream)
                {
                    self.answer_job(job, Err(TaskError::pool_closed()));
                } else if let (Some(e), true) = (&self.broken, self.workers.is_empty()) {
                    let e = TaskError::local(e.clone());
                    self.answer_job(job, Err(e));
                } else {
                    self.queue.push_back(job);
                    self.regrow();
                }
            }
            Cmd::Expect(id) => {
                self.expected.insert(id, false);
            }
            Cmd::Expected { id, mut job } => {
                let cancelled = self.expected.remove(&id).unwrap_or(false);
                if let Some(job) = &mut job {
                    job.retries = self.cfg.retries_on_worker_loss;
                }
                match job {
                    None => {}
                    Some(job) if cancelled => self.answer_job(job, Err(TaskError::cancelled())),
                    // Submitted before a close: it runs, as the tasks queued then do.
                    Some(job) if self.phase == Phase::Terminating => {
                        self.answer_job(job, Err(TaskError::pool_closed()))
                    }
                    Some(job) => match (&self.broken, self.workers.is_empty()) {
                        (Some(e), true) => {
                            let e = TaskError::local(e.clone());
                            self.answer_job(job, Err(e));
                        }
                        _ => {
                            self.queue.push_back(job);
                            self.regrow();
                        }
                    },
                }
            }
            Cmd::Cancel { id, running } => self.cancel(id, running),
            Cmd::StreamOpened(id) => {
                if self.phase == Phase::Open {
                    self.streams.insert(id);
                }
            }
            Cmd::StreamEnded(id) => {
                self.streams.remove(&id);
            }
            Cmd::Close => {
                if self.phase == Phase::Open {
                    self.phase = Phase::Closed;
                }
            }
            Cmd::Join(tx) => self.waiters.push(tx),
            Cmd::Terminate(tx) => {
                self.waiters.extend(tx);
                self.terminate();
            }
        }
    }

    /// Whether no task is waiting for a worker: none queued, none on its way, and no stream
    /// left that may submit more.
    fn drained(&self) -> bool {
        self.queue.is_empty() && self.expected.is_empty() && self.streams.is_empty()
    }

    fn terminate(&mut self) {
        self.phase = Phase::Terminating;
        self.cfg.terminating.send_replace(true);
        self.streams.clear();
        for job in std::mem::take(&mut self.queue) {
            self.answer_job(job, Err(TaskError::pool_closed()));
        }
        for (id, _) in std::mem::take(&mut self.in_flight) {
            self.answer(id, Err(TaskError::pool_closed()));
        }
        self.deadlines.clear();
        for slot in self.workers.values_mut() {
            slot.kill();
        }
    }

    /// Cancels task `id`: a queued one is removed. A synchronous one sent to a worker on
    /// this machine is settled in the worker's claim word (see [`Scheduler::take_back`]):
    /// taken back, it never starts; claimed, it runs. Where that cannot settle it (a worker
    /// on another host, or, rarely, one that was sent [`RING`] tasks since the oldest it may
    /// not have come to), the worker is asked to drop it, and answers either that it did or
    /// with the task's result; should it die first, the task fails as cancelled if it never
    /// started. A task that runs (or may be the one running) runs on unless `running`, in
    /// which case its worker is killed.
    fn cancel(&mut self, id: u64, running: bool) {
        if let Some(cancelled) = self.expected.get_mut(&id) {
            *cancelled = true;
            return;
        }
        if let Some(pos) = self.queue.iter().position(|j| j.id == id) {
            if let Some(job) = self.queue.remove(pos) {
                self.answer_job(job, Err(TaskError::cancelled()));
            }
            return;
        }
        let Some(run) = self.in_flight.get(&id) else {
            return;
        };
        let (wid, is_async) = (run.wid, run.is_async);
        match self.take_back(id) {
            TakeBack::Taken => {
                self.out_of_flight(id);
                self.answer(id, Err(TaskError::cancelled()));
                // Taken back before it started, it may have been the task the worker was
                // taken to run: the one behind it is that now, and its clock runs.
                self.mark_started(wid);
                return;
            }
            TakeBack::Later if !is_async => {
                // No worker is killed for a task it may never start, which would fail the
                // one it is running: only the first one it holds may be running.
                if let Some(slot) = self.workers.get_mut(&wid)
                    && !(running && slot.sync.front() == Some(&id))
                {
                    slot.send_cancel(id);
                    if let Some(run) = self.in_flight.get_mut(&id) {
                        run.cancel_sent = true;
                    }
                    return;
                }
            }
            TakeBack::Later | TakeBack::Claimed => {}
        }
        if !running {
            // It runs on, and its caller gets its result.
            return;
        }
        self.out_of_flight(id);
        if !self.answer(id, Err(TaskError::cancelled())) {
            // It finished first: nothing to stop.
            return;
        }
        if let Some(slot) = self.workers.get_mut(&wid) {
            tracing::debug!(
                pid = slot.pid,
                id,
                "cancelling a running task: killing its worker"
            );
            slot.kill();
        }
    }

    fn on_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(running) = self.moved_on_from(id) {
                // The task finished, its answer held back by the worker while it runs a
                // later one: that one is timed instead, from now, unless it already is.
                if let Some(run) = self.in_flight.get_mut(&id) {
                    run.deadline = None;
                }
                if self.in_flight.get(&running).is_some_and(|r| !r.started) {
                    self.time_from_now(running);
                }
                continue;
            }
            let Some(run) = self.in_flight.remove(&id) else {
                continue;
            };
            let Some((pid, host)) = self.workers.get(&run.wid).map(|s| (s.pid, s.host.clone()))
            else {
                continue;
            };
            let timeout = run.timeout.unwrap_or_default();
            if !self.answer(id, Err(TaskError::timed_out(host.as_ref(), pid, timeout))) {
                // Its answer got there first.
                continue;
            }
            let Some(slot) = self.workers.get_mut(&run.wid) else {
                continue;
            };
            tracing::debug!(pid = slot.pid, id, "task timed out: killing its worker");
            slot.kill();
        }
    }

    /// Takes in the answers the readers logged (see [`Answered`]).
    fn take_answers(&mut self) {
        let mut taken = std::mem::take(&mut self.taken);
        self.answered.take(&mut taken);
        for a in taken.drain(..) {
            self.on_answer(a);
        }
        self.taken = taken;
    }

    /// Whether answers may wait in [`Answered`] until the scheduler's next wake-up: nothing
    /// waits for what taking one in does. No task is queued for the room it frees, no worker
    /// holds a task behind the one answered (whose clock would start at the answer), no
    /// task's timeout runs, no worker is to be retired after a number of tasks, and the pool
    /// is open with nobody waiting for it to drain. What an answer changes beyond these (the
    /// counts of [`Pool::stats`](super::Pool::stats), the measures of run time and round
    /// trip) lags by at most the readers' spin
    /// (see [`PoolBuilder::spin`](super::PoolBuilder::spin)).
    fn may_defer(&self) -> bool {
        self.phase == Phase::Open
            && self.queue.is_empty()
            && self.expected.is_empty()
            && self.deadlines.is_empty()
            && self.waiters.is_empty()
            && self.cfg.maxtasksperchild.is_none()
            && self.cfg.max_memory_per_child.is_none()
            && self.workers.values().all(|s| s.load() <= 1 && !s.draining)
    }

    fn on_answer(&mut self, answer: Answer) {
        let Answer {
            wid,
            id,
            nanos,
            answered,
            at,
        } = answer;
        if let Some(ok) = answered {
            self.tally.finished(ok);
        }
        if nanos > 0 {
            let n = nanos as f64;
            self.mean_nanos = Some(self.mean_nanos.map_or(n, |m| m + (n - m) / 8.0));
        }
        if self.in_flight.get(&id).is_some_and(|r| r.wid != wid) {
            // Not this worker's task: its reader did not deliver the answer either.
            let pid = self.workers.get(&wid).map(|s| s.pid);
            tracing::warn!(id, ?pid, "a pool worker answered a task it was not given");
            return;
        }
        if let Some(slot) = self.workers.get_mut(&wid) {
            if let Some(p) = slot.sync.iter().position(|&x| x == id) {
                slot.sync.remove(p);
            } else if let Some(p) = slot.asyncs.iter().position(|&x| x == id) {
                slot.asyncs.swap_remove(p);
            }
        }
        if let Some(run) = self.out_of_flight(id)
            && nanos > 0
            && !run.is_async
            && let Some(slot) = self.workers.get_mut(&wid)
        {
            // It ran (a task dropped on a cancel answers with no run time): the worker
            // has passed every task sent before it, those taken back included.
            while slot.taken_back.first().is_some_and(|&s| s < run.seq) {
                slot.taken_back.pop_first();
            }
            let total = at.saturating_duration_since(run.sent_at).as_nanos();
            let trip = u64::try_from(total)
                .unwrap_or(u64::MAX)
                .saturating_sub(nanos);
            slot.round_trip.sample(trip, run.alone);
        }
        self.mark_started(wid);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Answered => {}
            Event::Exited {
                wid,
                cause,
                killed_because,
            } => self.on_exit(wid, cause, killed_because),
            Event::Started(Ok(w)) => {
                self.starting -= 1;
                self.start_failures = 0;
                self.add_worker(w);
                if self.phase == Phase::Terminating
                    && let Some(slot) = self.workers.get_mut(&(self.next_wid - 1))
                {
                    slot.kill();
                }
            }
            Event::Started(Err(e)) => {
                self.starting -= 1;
                if self.phase == Phase::Terminating {
                    // Cut short by the termination, or failed with no use any more.
                    tracing::debug!("a pool worker's start ended with the pool: {e}");
                    return;
                }
                if matches!(e, Error::InitializerFailed { .. }) {
                    tracing::warn!(
                        "a pool worker's initializer failed; no worker is started again: {e}"
                    );
                    self.broken = Some(e);
                    self.replenish();
                    return;
                }
                self.start_failures = self.start_failures.saturating_add(1);
                tracing::warn!(
                    failures_in_a_row = self.start_failures,
                    "cannot start a pool worker (it will be tried again): {e}"
                );
                if self.workers.is_empty() && self.start_failures >= FAILED_STARTS_TO_GIVE_UP {
                    // Nothing can run the tasks waiting, and starts keep failing: they fail
                    // with the reason, rather than wait for a start that may never succeed.
                    // One start that failed (a worker killed while it started, by the OOM
                    // killer say, or a moment out of processes) fails none: a pool between
                    // a retired worker and its replacement has no worker either.
                    for job in std::mem::take(&mut self.queue) {
                        self.answer_job(job, Err(TaskError::local(e.clone())));
                    }
                }
                if self.wants_workers() {
                    self.start_later();
                }
            }
        }
    }

    /// Starts a worker after a delay that grows with the failed starts in a row.
    fn start_later(&mut self) {
        let doublings = self.start_failures.saturating_sub(1).min(16);
        let delay = FIRST_RESTART_DELAY
            .saturating_mul(1 << doublings)
            .min(MAX_RESTART_DELAY);
        self.starting += 1;
        spawn_start(&self.cfg, &self.events_tx, delay);
    }

    /// The synchronous task its worker runs now, if the worker has marked one sent after
    /// task `id` as started (see [`Slot::started_after`]).
    fn moved_on_from(&self, id: u64) -> Option<u64> {
        let wid = self.in_flight.get(&id)?.wid;
        self.workers.get(&wid)?.started_after(id)
    }

    /// Task `id` counts as started now, and its clock, if it has a timeout, runs from now.
    fn time_from_now(&mut self, id: u64) {
        let Some(run) = self.in_flight.get_mut(&id) else {
            return;
        };
        run.started = true;
        let kept = run
            .copy
            .as_ref()
            .is_some_and(|p| kept_while_running(run.is_async, p));
        if run.retries == 0 && !kept {
            run.copy = None;
        }
        if let Some(d) = run.deadline.take() {
            self.deadlines.remove(&(d, id));
        }
        // A timeout too long to represent is none.
        if let Some(d) = run.timeout.and_then(crate::sync::deadline) {
            run.deadline = Some(d);
            self.deadlines.insert((d, id));
        }
    }

    /// The first synchronous task a worker holds that is still in flight has started.
    fn mark_started(&mut self, wid: u64) {
        let Some(slot) = self.workers.get(&wid) else {
            return;
        };
        let first = slot
            .sync
            .iter()
            .find(|id| self.in_flight.contains_key(id))
            .copied();
        if let Some(id) = first
            && self.in_flight.get(&id).is_some_and(|r| !r.started)
        {
            self.time_from_now(id);
        }
    }

    fn on_exit(&mut self, wid: u64, cause: ExitCause, killed_because: Option<Arc<str>>) {
        let Some(slot) = self.workers.remove(&wid) else {
            return;
        };
        // Nothing more is to be sent to it: its writer task ends now, even one that waits
        // on a link that takes nothing any more (a lost host's), and drops its descriptors.
        if let Some(writer) = self.writer_of.remove(&wid) {
            writer.abort();
        }
        while self.writers.try_join_next().is_some() {}
        if slot.draining && !slot.send_failed {
            tracing::debug!(pid = slot.pid, %cause, "pool worker exited");
        } else {
            tracing::warn!(
                pid = slot.pid,
                host = slot.host.as_deref().unwrap_or("local"),
                %cause,
                killed_because = killed_because.as_deref().unwrap_or("-"),
                tasks_held = slot.load(),
                "pool worker died; it is replaced"
            );
            self.tally.losses.push(WorkerLoss {
                pid: slot.pid,
                cause,
            });
        }
        let mut requeue = Vec::new();
        // Tasks that had finished, whose answers the worker held back and lost: answered
        // after the task that was running, so that a map that meets one of them first finds
        // that task's error already there (see `MapResult`).
        let mut answers_lost = Vec::new();
        for id in slot.sync.iter().chain(slot.asyncs.iter()) {
            let Some(run) = self.out_of_flight(*id) else {
                continue;
            };
            // The worker is dead, so its started mark is final: a task it may have started
            // is never sent again, unless the caller allowed retries and has not since
            // cancelled it (a retry would be a queued task, which a cancel drops).
            let never_started = !run.is_async && !slot.may_have_started(*id);
            if never_started && run.cancel_sent {
                // Its caller cancelled it, and it never started: it is cancelled.
                self.answer(*id, Err(TaskError::cancelled()));
                continue;
            }
            match (never_started, run.copy) {
                (true, Some(payload)) => requeue.push(Job {
                    id: *id,
                    entry: run.entry,
                    is_async: run.is_async,
                    payload,
                    timeout: run.timeout,
                    retries: run.retries,
                    reply: None,
                    stream: None,
                }),
                (false, Some(payload)) if run.retries > 0 && !run.cancel_sent => {
                    tracing::debug!(id, pid = slot.pid, "running a lost worker's task again");
                    requeue.push(Job {
                        id: *id,
                        entry: run.entry,
                        is_async: run.is_async,
                        payload,
                        timeout: run.timeout,
                        retries: run.retries - 1,
                        reply: None,
                        stream: None,
                    });
                }
                _ => {
                    let e = TaskError::worker_lost_on(slot.host.as_ref(), slot.pid, cause)
                        .killed_because(killed_because.as_ref());
                    if !run.is_async && slot.started_after(*id).is_some() {
                        answers_lost.push((*id, e.answer_lost()));
                    } else {
                        self.answer(*id, Err(e));
                    }
                }
            }
        }
        for (id, e) in answers_lost {
            self.answer(id, Err(e));
        }
        for job in requeue.into_iter().rev() {
            self.queue.push_front(job);
        }
        self.replenish();
        if self.workers.is_empty()
            && self.starting == 0
            && let Some(e) = self.broken.clone()
        {
            for job in std::mem::take(&mut self.queue) {
                self.answer_job(job, Err(TaskError::local(e.clone())));
            }
        }
    }

    /// Starts workers until the pool has its size again (none once it is closed and has
    /// nothing queued, or once starting has proved hopeless).
    fn replenish(&mut self) {
        if self.phase == Phase::Terminating || self.broken.is_some() {
            if self.workers.is_empty()
                && self.starting == 0
                && let Some(e) = self.broken.clone()
            {
                for job in std::mem::take(&mut self.queue) {
                    self.answer_job(job, Err(TaskError::local(e.clone())));
                }
            }
            return;
        }
        let live = self.workers.values().filter(|s| !s.draining).count();
        let wanted = if self.wants_workers() {
            self.cfg.processes
        } else {
            0
        };
        for _ in live + self.starting..wanted {
            self.starting += 1;
            spawn_start(&self.cfg, &self.events_tx, Duration::ZERO);
        }
    }

    /// Whether the pool wants workers up to its size: not once it is closed and has nothing
    /// left to run, nor, with an idle timeout, while it has nothing to run (idle workers
    /// were let go; it grows again when tasks come, see [`Scheduler::regrow`]).
    fn wants_workers(&self) -> bool {
        if self.phase != Phase::Open && self.drained() {
            return false;
        }
        self.idle.is_none() || !self.queue.is_empty() || !self.expected.is_empty()
    }

    /// Brings a pool that let idle workers go back to its size, as a task comes: loky's
    /// executor starts its missing workers at each submission.
    fn regrow(&mut self) {
        if self.idle.is_some() {
            self.replenish();
        }
    }

    /// Retires the workers idle for the pool's idle timeout, when a sweep is due.
    fn sweep_idle(&mut self) {
        let Some(idle) = &mut self.idle else {
            return;
        };
        let now = Instant::now();
        if idle.due().is_none_or(|t| t > now) {
            return;
        }
        // A closed pool retires its workers as it drains (see `retire_idle`).
        let mut left = false;
        if self.phase == Phase::Open {
            for slot in self.workers.values_mut().filter(|s| !s.draining) {
                let (load, sent) = (slot.load(), slot.sent);
                if idle.expired(&mut slot.activity, load, sent, now) {
                    tracing::debug!(pid = slot.pid, "retiring an idle pool worker");
                    slot.retire();
                    self.tally.retired(false);
                } else {
                    left = true;
                }
            }
        }
        idle.swept(now, left);
    }

    /// The least loaded worker with room for a task of this kind: for a synchronous task,
    /// one it runs plus its [`prefetch_for`] waiting; for an `async fn` task, the pool's
    /// per-worker concurrency.
    fn pick(&self, is_async: bool) -> Option<u64> {
        let max = self.cfg.maxtasksperchild;
        let conc = self.cfg.concurrency;
        let fair_share = self.queue.len() / self.workers.len().max(1);
        let prefetch = |s: &Slot| prefetch_for(self.mean_nanos, s.round_trip.nanos(), fair_share);
        self.workers
            .iter()
            .filter(|(_, s)| !s.draining && !s.spent(max))
            .filter(|(_, s)| {
                if is_async {
                    s.asyncs.len() < conc
                } else {
                    s.sync.len() <= prefetch(s)
                }
            })
            // An async task goes where no synchronous task holds the worker's thread, if it
            // can (see worker.rs); otherwise, to the least loaded worker.
            .min_by_key(|(_, s)| (if is_async { s.sync.len() } else { 0 }, s.load()))
            .map(|(w, _)| *w)
    }

    fn dispatch(&mut self) {
        // One clock reading stamps the whole round, taken once something is sent.
        let mut now = None;
        while let Some(job) = self.queue.front() {
            let Some(wid) = self.pick(job.is_async) else {
                break;
            };
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            let sent_at = *now.get_or_insert_with(std::time::Instant::now);
            self.send_job(wid, job, sent_at);
        }
        if now.is_some() {
            self.workers.values_mut().for_each(Slot::flush);
        }
        if self.take_back_for_idle() {
            let sent_at = std::time::Instant::now();
            while let Some(job) = self.queue.front() {
                let Some(wid) = self.pick(job.is_async) else {
                    break;
                };
                let Some(job) = self.queue.pop_front() else {
                    break;
                };
                self.send_job(wid, job, sent_at);
            }
            self.workers.values_mut().for_each(Slot::flush);
        }
        self.retire_idle();
    }

    /// With nothing queued, takes back for each idle worker a synchronous task sent ahead
    /// to another, one that waits there behind a task that may be long, and queues it
    /// again; says whether it took any. A task is taken back only if its worker has not
    /// claimed it (see [`StartedMark::take_back`](super::started::StartedMark::take_back)),
    /// so it runs once; its caller's reply stays where it is, and follows it. Only the last
    /// task sent to a worker is taken, and only from local workers (a remote one shares no
    /// memory with the pool); never an `async fn` task.
    fn take_back_for_idle(&mut self) -> bool {
        if !self.queue.is_empty() || self.phase == Phase::Terminating {
            return false;
        }
        let max = self.cfg.maxtasksperchild;
        let mut idle = self
            .workers
            .values()
            .filter(|s| !s.draining && s.load() == 0 && !s.spent(max))
            .count();
        let mut tried = Vec::new();
        while idle > 0 {
            let from = self
                .workers
                .iter()
                .filter(|(w, s)| !s.draining && s.sync.len() >= 2 && !tried.contains(*w))
                .max_by_key(|(_, s)| s.sync.len())
                .map(|(w, _)| *w);
            let Some(wid) = from else {
                break;
            };
            match self.take_back_last(wid) {
                Some(job) => {
                    self.queue.push_back(job);
                    idle -= 1;
                }
                None => tried.push(wid),
            }
        }
        !self.queue.is_empty()
    }

    /// Takes back the last synchronous task sent to worker `wid`, if it is one sent ahead
    /// (behind another) that the worker has not claimed, its arguments were kept, and its
    /// caller has not cancelled it.
    fn take_back_last(&mut self, wid: u64) -> Option<Job> {
        let id = *self.workers.get(&wid)?.sync.back()?;
        let run = self.in_flight.get(&id)?;
        if run.started
            || run.copy.is_none()
            || run.cancel_sent
            || self.take_back(id) != TakeBack::Taken
        {
            return None;
        }
        let run = self.out_of_flight(id)?;
        tracing::debug!(id, wid, "took a task sent ahead back for an idle worker");
        Some(Job {
            id,
            entry: run.entry,
            is_async: false,
            payload: run.copy?,
            timeout: run.timeout,
            retries: run.retries,
            reply: None,
            stream: None,
        })
    }

    /// Takes task `id` out of flight, its deadline with it; what the pool held of it.
    fn out_of_flight(&mut self, id: u64) -> Option<Running> {
        let run = self.in_flight.remove(&id)?;
        if let Some(d) = run.deadline {
            self.deadlines.remove(&(d, id));
        }
        Some(run)
    }

    /// Takes synchronous task `id` back from its local worker, if the worker has not
    /// claimed it (see [`StartedMark::take_back`](super::started::StartedMark::take_back)):
    /// once [`TakeBack::Taken`], the worker never starts it and no longer holds it, and the
    /// task stays in flight for the caller to end or send again.
    fn take_back(&mut self, id: u64) -> TakeBack {
        let Some(run) = self.in_flight.get(&id) else {
            return TakeBack::Later;
        };
        let Some(slot) = self.workers.get_mut(&run.wid) else {
            return TakeBack::Later;
        };
        if run.is_async {
            return TakeBack::Later;
        }
        // A claim word serves numbers RING apart: with a task that old still unsettled, the
        // word of `run.seq` may be that task's too (see `started`). Unsettled are the tasks
        // the worker holds and those taken back that it may not have dropped yet.
        let oldest = slot.sync.front().and_then(|o| self.in_flight.get(o));
        let oldest = [oldest.map(|o| o.seq), slot.taken_back.first().copied()]
            .into_iter()
            .flatten()
            .min();
        if oldest.is_some_and(|o| slot.sync_sent.saturating_sub(o) >= RING as u64) {
            return TakeBack::Later;
        }
        let took = slot.started.take_back(run.seq);
        if took == TakeBack::Taken {
            slot.taken_back.insert(run.seq);
            if let Some(p) = slot.sync.iter().position(|&x| x == id) {
                slot.sync.remove(p);
            }
            slot.sent = slot.sent.saturating_sub(1);
        }
        took
    }

    /// Sends `job` to worker `wid`; `sent_at` stamps it for the worker's round trip.
    fn send_job(&mut self, wid: u64, job: Job, sent_at: std::time::Instant) {
        let idle = self.workers.get(&wid).is_some_and(|s| s.load() == 0);
        let spin = self.may_spin(self.busy() + usize::from(idle));
        let Some(slot) = self.workers.get_mut(&wid) else {
            self.queue.push_front(job);
            return;
        };
        let started = job.is_async || slot.sync.is_empty();
        let copy = if started && job.retries == 0 && !kept_while_running(job.is_async, &job.payload)
        {
            None
        } else {
            job.payload.try_clone().ok()
        };
        let seq = if job.is_async { 0 } else { slot.sync_sent + 1 };
        let mut frame = match FrameBuf::of(&ToWorker::Task {
            id: job.id,
            entry: job.entry,
            is_async: job.is_async,
            spin,
            timed: job.timeout.is_some(),
            seq,
        }) {
            Ok(f) => f,
            Err(e) => {
                self.answer_job(job, Err(TaskError::local(e)));
                return;
            }
        };
        job.payload.push_to(&mut frame);
        if let Err(e) = frame.check_size() {
            // Too large with its head: it fails alone, and the worker never sees it.
            self.answer_unsent(job.id, job.reply, Err(TaskError::local(e)));
            return;
        }
        {
            let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
            match job.reply {
                Some(tx) => {
                    replies.insert(job.id, (wid, tx));
                }
                // Sent again after its worker died: its answer is this worker's now.
                None => {
                    if let Some((sent_to, _)) = replies.get_mut(&job.id) {
                        *sent_to = wid;
                    }
                }
            }
        }
        slot.unsent.push(frame);
        slot.sent += 1;
        if job.is_async {
            slot.asyncs.push(job.id);
        } else {
            slot.sync_sent = seq;
            slot.sync.push_back(job.id);
        }
        // A timeout too long to represent is none.
        let deadline = match (started, job.timeout.and_then(crate::sync::deadline)) {
            (true, Some(d)) => {
                self.deadlines.insert((d, job.id));
                Some(d)
            }
            _ => None,
        };
        self.in_flight.insert(
            job.id,
            Running {
                wid,
                entry: job.entry,
                is_async: job.is_async,
                timeout: job.timeout,
                started,
                copy,
                retries: job.retries,
                deadline,
                sent_at,
                alone: started,
                seq,
                cancel_sent: false,
            },
        );
    }

    /// Sends `Exit` to every worker that holds nothing and should stop: it has run its
    /// `maxtasksperchild` or reached its `max_memory_per_child`, or the pool is closed and
    /// nothing is queued.
    fn retire_idle(&mut self) {
        let closing = self.phase != Phase::Open && self.drained();
        let max = self.cfg.maxtasksperchild;
        for slot in self.workers.values_mut() {
            if slot.draining || slot.load() > 0 {
                continue;
            }
            if closing {
                slot.retire();
            } else if slot.spent(max) {
                slot.retire();
                self.tally.retired(slot.over_memory());
            }
        }
    }
}

/// A scheduler dropped before its end (its runtime shut down, which drops its task) kills
/// the workers it still holds: nothing serves them any more, and one running a long task
/// would otherwise live on until that task ends, though its pool was dropped (or is of no
/// use without its runtime). At its end it holds none.
///
/// It also fails the tasks it held, as a terminated pool does, and publishes its last
/// [`PoolStats`](super::PoolStats): no worker, no task queued or running. A pool whose runtime
/// ended otherwise showed its workers alive and its tasks running for good.
impl Drop for Scheduler {
    fn drop(&mut self) {
        for slot in self.workers.values_mut() {
            slot.kill();
        }
        self.fail_unfinished();
        self.counters.publish((0, 0, 0, 0), &mut self.tally);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1000;

    /// The prefetch before round trips counted: the budget over the mean run time.
    fn budget_only(mean_nanos: f64) -> usize {
        ((PREFETCH_BUDGET_NANOS / mean_nanos) as usize).clamp(1, MAX_PREFETCH)
    }

    #[test]
    fn an_answer_reaches_its_caller_only_from_the_worker_it_was_sent_to() {
        let replies: Replies = Arc::default();
        let (tx, mut rx) = oneshot::channel();
        replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(5, (1, tx));
        assert!(
            take_reply(&replies, 5, Some(2)).is_none(),
            "worker 2 took worker 1's task"
        );
        assert!(rx.try_recv().is_err(), "answered by the wrong worker");
        let tx = take_reply(&replies, 5, Some(1)).expect("worker 1's task is its to answer");
        assert!(tx.send(Err(TaskError::cancelled())).is_ok());
        assert!(take_reply(&replies, 5, None).is_none(), "answered twice");
    }

    #[test]
    fn a_slow_link_gets_enough_prefetch_to_cover_its_round_trip() {
        // 200 µs tasks behind a 2 ms round trip: the worker needs 10 to run through it,
        // and holds twice that beyond the budget's 5.
        let n = prefetch_for(Some(200_000.0), 2000 * US, usize::MAX);
        assert!(n >= 10, "{n}");
        assert_eq!(n, 25);
        // A 1 ms round trip (0.5 ms each way): 5 for the budget, 10 for the link.
        assert_eq!(prefetch_for(Some(200_000.0), 1000 * US, usize::MAX), 15);
    }

    #[test]
    fn a_local_round_trip_keeps_the_budget_figure() {
        for mean in [5_000.0, 50_000.0, 200_000.0, 2_000_000.0] {
            let before = budget_only(mean);
            for trip in [0, 20 * US, 50 * US] {
                let n = prefetch_for(Some(mean), trip, usize::MAX);
                assert!(
                    n >= before && n <= before + before / 10 + 1,
                    "{mean} {trip}: {n}"
                );
            }
            assert_eq!(prefetch_for(Some(mean), 0, usize::MAX), before);
        }
    }

    #[test]
    fn the_prefetch_stays_within_its_caps() {
        // Tiny tasks on a slow link: no more than the most.
        assert_eq!(
            prefetch_for(Some(100.0), 50_000 * US, usize::MAX),
            MAX_PREFETCH
        );
        // The fair share of the backlog caps it, whatever the round trip.
        assert_eq!(prefetch_for(Some(200_000.0), 2000 * US, 3), 3);
        // Long tasks still hold one waiting, as does an empty backlog.
        assert_eq!(prefetch_for(Some(1e9), 2000 * US, usize::MAX), 1);
        assert_eq!(prefetch_for(Some(200_000.0), 2000 * US, 0), 1);
        // Before any task was timed, the first figure, whatever the round trip.
        assert_eq!(prefetch_for(None, 2000 * US, usize::MAX), FIRST_PREFETCH);
        assert_eq!(prefetch_for(None, 0, 2), 2);
    }
}
