//! How the pool starts a worker: a child process running the worker's side on one end of a
//! socket pair, set up (handshake and initializer) over it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::builder::Config;
use super::payload::clone_encoded;
use super::proto::{Setup, SetupReply};
use super::remote::{Killer, Life, Mark, start_remote};
use super::scheduler::Event;
use super::started::StartedMark;
use super::worker;
use crate::error::{Error, ExitCause, Result};
use crate::on_drop::OnDrop;
use crate::process::Process;
use crate::sys;
use crate::wire::{Fd, FrameBuf, Framed, Hello};

static WORKER_COUNTER: AtomicUsize = AtomicUsize::new(1);

/// The send buffer each end of a worker's socket asks for, in bytes.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A started worker, before the scheduler takes it.
pub(super) struct WorkerConn {
    pub(super) pid: u32,
    /// Its host, for a worker on another host of a cluster.
    pub(super) host: Option<Arc<str>>,
    pub(super) killer: Killer,
    pub(super) life: Life,
    /// The worker's link, for the reader task and the writer task (the same socket).
    pub(super) reader: Arc<Framed>,
    pub(super) writer: Arc<Framed>,
    pub(super) started: Mark,
}

/// The setup frame for a worker of `cfg`: the hello, the initializer and its arguments.
pub(super) fn setup_frame(cfg: &Config) -> Result<FrameBuf> {
    let mut frame = FrameBuf::of(&Setup {
        hello: Hello::ours(),
        init: cfg
            .init
            .as_ref()
            .map(|(e, _)| crate::task::initializer_entry_offset(*e)),
        spin_nanos: u64::try_from(cfg.spin.as_nanos()).unwrap_or(u64::MAX),
        print_panics: cfg.print_panics,
        worker_threads: u32::try_from(cfg.worker_threads).unwrap_or(u32::MAX),
        start_timeout_nanos: u64::try_from(cfg.start_timeout.as_nanos()).unwrap_or(u64::MAX),
        max_memory: cfg.max_memory_per_child,
    })?;
    if let Some((_, args)) = &cfg.init {
        frame.push_encoded(clone_encoded(args)?);
    }
    Ok(frame)
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
    let mut frame = setup_frame(cfg)?;
    // The setup goes out once the child is started and covered by `unclaimed` below: sent
    // before, it let the child run its initializer while the start was still under way, and
    // a start dropped then (its build gone) left a worker whose initializer never ends
    // running for ever, as nothing had its pid yet to kill it.
    let link = Arc::new(Framed::unix(ours)?);
    let started = StartedMark::new()?;
    let mark = Fd::from(sys::dup_fd(started.fd())?);
    let mut process = Process::new(worker::worker_main, (Fd::from(theirs), mark))
        .name(format!("PoolWorker-{n}"))
        .daemon(true)
        .needs_runtime()
        .start_method(cfg.method)
        .start_timeout(cfg.start_timeout)
        .environment(cfg.env.clone())
        .start()
        .await?;
    let pid = process.pid();
    let killer = process.kill_handle()?;
    // Until it is handed over, a worker dies with its start: a start dropped (its pool, or
    // the build, gone) would otherwise leave it to live as long as its initializer runs,
    // which may be for ever, and only then to find its socket closed.
    let unclaimed = OnDrop::new({
        let killer = killer.clone();
        move || killer.kill()
    });
    let died = |code: i32| {
        let name = format!("PoolWorker-{n}");
        died_in_setup(cfg, name, pid, ExitCause::from_exitcode(code))
    };
    let answered = {
        let setup = async {
            link.send(&mut frame).await?;
            link.recv().await?.decode::<SetupReply>()
        };
        tokio::select! {
            biased;
            // The pool was terminated: the worker is killed and reaped here, so that the
            // pool's `terminate` returns once it is gone.
            () = cfg.terminated() => {
                let _ = process.kill();
                process.join().await?;
                return Err(Error::Closed);
            }
            r = setup => Ok(r),
            code = process.join() => Err(code?),
        }
    };
    let reply = match answered {
        Ok(reply) => reply,
        Err(code) => match answer_left(&link).await {
            Some(reply) => Ok(reply),
            None => return Err(died(code)),
        },
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
            unclaimed.defuse();
            return Ok(WorkerConn {
                pid,
                host: None,
                killer: Killer::Local(killer),
                reader: link.clone(),
                writer: link,
                life: Life::Local(process),
                started: Mark::Local(started),
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

/// What a worker whose exit was seen during its setup had answered: a worker answers,
/// then exits, and its exit may be seen first (a local worker's on its pidfd, a remote one's
/// in its agent's report). Gone, it has written all it will, so what its connection holds
/// is read before the exit is taken for the cause (an initializer's failure keeps its own
/// text); bounded by [`ANSWER_AFTER_EXIT`], for a connection that a child of the worker
/// still holds.
pub(super) async fn answer_left(link: &Framed) -> Option<SetupReply> {
    match tokio::time::timeout(ANSWER_AFTER_EXIT, link.recv()).await {
        Ok(Ok(frame)) => frame.decode::<SetupReply>().ok(),
        _ => None,
    }
}

/// How long [`answer_left`] reads.
const ANSWER_AFTER_EXIT: Duration = Duration::from_secs(5);

/// The error of worker `name` (`pid`) that ended by `cause` before it answered its setup:
/// the initializer's failure if the pool has one (it is what runs then), unless the worker
/// was killed from outside (SIGKILL: the OOM killer, a `kill -9`) or lost with its host,
/// which says nothing of the initializer: that start failed, and the next one may succeed.
pub(super) fn died_in_setup(cfg: &Config, name: String, pid: u32, cause: ExitCause) -> Error {
    let message = format!("the worker died ({cause}) during its setup");
    let from_outside = matches!(
        cause,
        ExitCause::Signal(crate::sys::SIGKILL) | ExitCause::HostLost | ExitCause::HostDisconnected
    );
    if cfg.init.is_some() && !from_outside {
        Error::InitializerFailed { pid, message }
    } else {
        Error::Start { name, pid, message }
    }
}

/// Starts a worker after `delay`, in a task of its own, which reports it on `events`.
///
/// A pool terminated meanwhile cuts the start short, which then reports
/// [`Error::Closed`]: during the delay; while a local worker is set up (its initializer may
/// run for ever), by killing and reaping it; at any point of a start on a cluster's host
/// (which may wait long for the host's room), by dropping it. A local worker's bootstrap,
/// bounded by the start timeout, runs to its end, so that its worker is reaped too.
pub(super) fn spawn_start(cfg: &Arc<Config>, events: &UnboundedSender<Event>, delay: Duration) {
    let (cfg, ev) = (cfg.clone(), events.clone());
    tokio::spawn(async move {
        let start = async {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cfg.terminated() => return Err(Error::Closed),
                }
            }
            match &cfg.cluster {
                None => start_worker(&cfg).await,
                Some(cluster) => tokio::select! {
                    started = start_remote(&cfg, cluster) => started,
                    () = cfg.terminated() => Err(Error::Closed),
                },
            }
        };
        let started = tokio::select! {
            started = start => started,
            // Nobody waits for it any more (the pool, or its build, is gone): the start is
            // dropped, and a local worker with it.
            () = ev.closed() => return,
        };
        let _ = ev.send(Event::Started(started));
    });
}
