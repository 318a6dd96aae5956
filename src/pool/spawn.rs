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
use crate::error::{Error, Result};
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
    let frame = setup_frame(cfg)?;
    // A small setup goes out first: it waits in the socket while the child starts, so the
    // child finds it as soon as its bootstrap is done. A large one (big initializer
    // arguments) could fill the socket before anyone reads it: it goes out after the start.
    let link = Arc::new(Framed::unix(ours)?);
    let late = link.send_early(frame)?;
    let started = StartedMark::new()?;
    let mark = Fd::from(sys::dup_fd(started.fd())?);
    let mut process = Process::new(worker::worker_main, (Fd::from(theirs), mark))
        .name(format!("PoolWorker-{n}"))
        .daemon(true)
        .needs_runtime()
        .start_method(cfg.method)
        .start_timeout(cfg.start_timeout)
        .start()
        .await?;
    let pid = process.pid();
    let killer = process.kill_handle()?;
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
    let answered = {
        let setup = async {
            if let Some(mut frame) = late {
                link.send(&mut frame).await?;
            }
            link.recv().await?.decode::<SetupReply>()
        };
        tokio::select! {
            biased;
            r = setup => Ok(r),
            code = process.join() => Err(code?),
        }
    };
    let reply = match answered {
        Ok(reply) => reply,
        // The worker answers, then exits: its exit may be seen before its answer is. Gone, it
        // has written all it will, so what the socket holds is read before the death is
        // taken for the cause (an initializer's failure keeps its own text). Bounded, for a
        // socket that a child of the worker still holds.
        Err(code) => {
            let left = tokio::time::timeout(Duration::from_secs(5), link.recv()).await;
            match left.map(|r| r.and_then(|f| f.decode::<SetupReply>())) {
                Ok(Ok(reply)) => Ok(reply),
                _ => return Err(died(code)),
            }
        }
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

/// Starts a worker after `delay`, in a task of its own, which reports it on `events`.
pub(super) fn spawn_start(cfg: &Arc<Config>, events: &UnboundedSender<Event>, delay: Duration) {
    let (cfg, ev) = (cfg.clone(), events.clone());
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let started = match &cfg.cluster {
            None => start_worker(&cfg).await,
            Some(cluster) => start_remote(&cfg, cluster).await,
        };
        let _ = ev.send(Event::Started(started));
    });
}
