//! Workers on other hosts of a [`Cluster`](crate::Cluster), as the pool sees them, and the
//! host agent's way of starting one.
//!
//! A remote worker is the local worker (`worker.rs`, unchanged) started by a host agent with
//! a TCP socket to this pool as its link. Three things differ on this side, each an enum
//! with a local and a remote arm: its [`Life`] (a local worker's end is its pidfd; a remote
//! one's is its agent's report, or its host being declared lost), its [`Killer`] (a pidfd
//! signal, or a request to its agent) and its [`Mark`] (the started mark is read here for a
//! local worker; for a remote one the agent reads it once the worker is dead and reports
//! it, and while it lives every task it holds may have started).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::builder::Config;
use super::proto::SetupReply;
use super::spawn::{WorkerConn, answer_left, died_in_setup, setup_frame};
use super::started::{StartedMark, TakeBack};
use super::worker;
use crate::cluster::{Cluster, RemoteExit, RemoteKill};
use crate::error::{Error, ExitCause, Result};
use crate::on_drop::OnDrop;
use crate::process::{KillHandle, Process};
use crate::start::Environment;
use crate::sys;
use crate::wire::Fd;

/// How a worker's end is seen.
pub(super) enum Life {
    Local(Process),
    Remote {
        exit: Option<oneshot::Receiver<RemoteExit>>,
        /// Where its agent's report of the last task started goes.
        last: Arc<AtomicU64>,
    },
}

/// How a worker ended.
pub(super) enum Ended {
    /// It exited with this code (Python's convention); `Err` if it could not be waited for.
    Exited(Result<i32>),
    /// Its host was lost (silent, or its connection closed: the cause says which):
    /// nothing it sends is to be taken any more.
    HostLost(ExitCause),
}

impl Ended {
    pub(super) fn cause(&self) -> ExitCause {
        match self {
            Ended::Exited(Ok(c)) => ExitCause::from_exitcode(*c),
            Ended::Exited(Err(_)) => ExitCause::Signal(sys::SIGKILL),
            Ended::HostLost(how) => *how,
        }
    }
}

impl Life {
    /// Waits for the worker's end. Cancel safe; once it has returned, a remote worker's
    /// later calls return [`Ended::HostLost`] (call it once).
    pub(super) async fn join(&mut self) -> Ended {
        match self {
            Life::Local(p) => Ended::Exited(p.join().await),
            Life::Remote { exit, last } => {
                let Some(rx) = exit.as_mut() else {
                    return Ended::HostLost(ExitCause::HostDisconnected);
                };
                let r = rx.await;
                *exit = None;
                match r {
                    Ok(RemoteExit {
                        code: Ok(code),
                        last_started,
                    }) => {
                        last.store(last_started, Ordering::Release);
                        Ended::Exited(Ok(code))
                    }
                    Ok(RemoteExit { code: Err(how), .. }) => Ended::HostLost(how),
                    // The cluster is gone, and its connections with it.
                    Err(_) => Ended::HostLost(ExitCause::HostDisconnected),
                }
            }
        }
    }

    /// Kills the worker.
    pub(super) fn kill(&self, killer: &Killer) {
        match self {
            Life::Local(p) => {
                let _ = p.kill();
            }
            Life::Remote { .. } => killer.kill(),
        }
    }
}

/// Kills one worker, from any task.
#[derive(Debug, Clone)]
pub(super) enum Killer {
    Local(KillHandle),
    Remote(RemoteKill),
}

impl Killer {
    pub(super) fn kill(&self) {
        match self {
            Killer::Local(k) => k.kill(),
            Killer::Remote(k) => k.kill(),
        }
    }
}

/// The value a remote worker's [`Mark`] holds while the worker lives: not known.
const UNKNOWN: u64 = u64::MAX;

/// Where the pool reads the last task a worker started.
#[derive(Debug)]
pub(super) enum Mark {
    Local(StartedMark),
    Remote(Arc<AtomicU64>),
}

impl Mark {
    /// The last task the worker started (0 if none); `None` when it is not known (a
    /// remote worker that lives, or whose host was lost): every task it holds may have
    /// started.
    pub(super) fn last(&self) -> Option<u64> {
        match self {
            Mark::Local(m) => Some(m.last()),
            Mark::Remote(v) => match v.load(Ordering::Acquire) {
                UNKNOWN => None,
                n => Some(n),
            },
        }
    }

    /// Takes the synchronous task numbered `seq` back from a local worker that has not
    /// claimed it (see [`StartedMark::take_back`](super::started::StartedMark::take_back));
    /// a remote worker shares no memory with the pool, and gives nothing back
    /// ([`TakeBack::Later`]).
    pub(super) fn take_back(&self, seq: u64) -> TakeBack {
        match self {
            Mark::Local(m) => m.take_back(seq),
            Mark::Remote(_) => TakeBack::Later,
        }
    }

    /// Tells a local worker that one more cancel was sent to it (see
    /// [`StartedMark`](super::started::StartedMark)); a remote worker shares no memory with
    /// the pool.
    pub(super) fn count_cancel(&self) {
        if let Mark::Local(m) = self {
            m.count_cancel();
        }
    }
}

/// Starts a worker on a host of `cluster` and sets it up as a local one is.
pub(super) async fn start_remote(cfg: &Config, cluster: &Cluster) -> Result<WorkerConn> {
    let w = cluster.start_worker(cfg.start_timeout, &cfg.env).await?;
    let (pid, host) = (w.pid, w.host.clone());
    let link = Arc::new(w.link);
    let killer = Killer::Remote(w.kill);
    let last = Arc::new(AtomicU64::new(UNKNOWN));
    let mut life = Life::Remote {
        exit: Some(w.exit),
        last: last.clone(),
    };
    // Until it is handed over, the worker dies with its start, as a local one does: a start
    // dropped (its pool, or the build, gone) would otherwise leave it, and the room it
    // takes on its host, for as long as its initializer runs.
    let unclaimed = OnDrop::new({
        let killer = killer.clone();
        move || killer.kill()
    });
    let name = || format!("cluster worker {pid} on host {host}");
    // No time limit: the initializer has none, as locally. A host lost or a link gone
    // silent ends the wait.
    let setup = async {
        let mut frame = setup_frame(cfg)?;
        link.send(&mut frame).await?;
        link.recv().await?.decode::<SetupReply>()
    };
    let reply = tokio::select! {
        r = setup => r,
        ended = life.join() => {
            // Nothing is taken from a host declared lost.
            let left = match ended {
                Ended::HostLost(_) => None,
                Ended::Exited(_) => answer_left(&link).await,
            };
            match left {
                Some(reply) => Ok(reply),
                None => return Err(died_in_setup(cfg, name(), pid, ended.cause())),
            }
        }
    };
    let err = match reply {
        Ok(SetupReply::Ready) => {
            unclaimed.defuse();
            return Ok(WorkerConn {
                pid,
                host: Some(host),
                killer,
                life,
                reader: link.clone(),
                writer: link,
                started: Mark::Remote(last),
            });
        }
        Ok(SetupReply::InitFailed(message)) => Error::InitializerFailed { pid, message },
        Ok(SetupReply::Refused(message)) => Error::Start {
            name: name(),
            pid,
            message,
        },
        Err(e) => e,
    };
    killer.kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), life.join()).await;
    Err(err)
}

/// A pool worker a host agent started for the head, on a link the agent dialled.
pub(crate) struct HostWorker {
    process: Process,
    mark: StartedMark,
    /// The read ends of the worker's stdout and stderr, until taken.
    output: Option<(OwnedFd, OwnedFd)>,
}

/// The target of a cluster's pool worker: its stdout and stderr go to the pipes its agent
/// reads (and forwards to the head), then it is a pool worker like any other.
fn host_worker_main(sock: Fd, started: Fd, stdout: Fd, stderr: Fd) {
    for (fd, target) in [(stdout, 1), (stderr, 2)] {
        if let Err(e) = sys::redirect_std(fd.into_owned().as_fd(), target) {
            tracing::debug!("a cluster worker keeps its descriptor {target}: {e}");
        }
    }
    worker::worker_main(sock, started);
}

impl HostWorker {
    /// Starts a pool worker whose link to the pool is `link` (a connected TCP socket), with
    /// the pool's environment `env` (see [`PoolBuilder::env`](crate::PoolBuilder::env)).
    pub(crate) async fn start(link: OwnedFd, env: Environment) -> Result<HostWorker> {
        let mark = StartedMark::new()?;
        let theirs = Fd::from(sys::dup_fd(mark.fd())?);
        let (out_r, out_w) = sys::pipe()?;
        let (err_r, err_w) = sys::pipe()?;
        let process = Process::new(
            host_worker_main,
            (Fd::from(link), theirs, Fd::from(out_w), Fd::from(err_w)),
        )
        .name("ClusterWorker")
        .daemon(true)
        .environment(env)
        .start()
        .await?;
        Ok(HostWorker {
            process,
            mark,
            output: Some((out_r, err_r)),
        })
    }

    /// The read ends of the worker's stdout and stderr (once).
    pub(crate) fn take_output(&mut self) -> Option<(OwnedFd, OwnedFd)> {
        self.output.take()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(crate) fn kill_handle(&self) -> Result<KillHandle> {
        self.process.kill_handle()
    }

    /// Waits for its exit code.
    pub(crate) async fn join(&mut self) -> Result<i32> {
        self.process.join().await
    }

    /// The last task it marked as started (0: none); final once it is dead.
    pub(crate) fn last_started(&self) -> u64 {
        self.mark.last()
    }
}
