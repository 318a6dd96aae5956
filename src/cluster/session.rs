//! The head's side of each connection: the accept loop, the challenge and the first frame,
//! then an agent's session (its messages, the heartbeat) or a worker's link handed on.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc::unbounded_channel, watch};

use super::MAX_WORKERS_PER_HOST;
use super::head::{RemoteExit, SpawnFailure, Table};
use super::proto::{AgentHello, Dial, FromAgent, ToAgent, Welcome};
use crate::error::{Error, ExitCause, Result};
use crate::sys;
use crate::wire::{AcceptRetry, FrameBuf, Framed, HandshakeGate, Transport, Vouch};

/// How long a connection may take, after the challenge, to say what it is.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest first frame accepted from a connection not known yet.
const MAX_DIAL: usize = 64 * 1024;

/// How often, at most, a refused connection is logged at `warn`; those in between go to
/// `debug` and are counted in the next warning, so that whoever reaches the port cannot
/// flood the log.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts connections until the cluster is dropped; each runs in a task of its own, so a
/// slow, silent or hostile one costs only itself. With [`MAX_HANDSHAKES`] connections still
/// in their challenge or first frame, the loop takes the next one once one ends or the oldest
/// not proven goes stale (see [`HandshakeGate`]), so a burst of agents and workers all get
/// through while silent sockets neither lock them out nor pile up descriptors.
///
/// [`MAX_HANDSHAKES`]: crate::MAX_HANDSHAKES
pub(super) async fn accept_loop(
    listener: TcpListener,
    table: Arc<Table>,
    shutdown: watch::Receiver<()>,
) {
    let mut stop = shutdown.clone();
    let gate = HandshakeGate::new(crate::MAX_HANDSHAKES);
    let refusals = Arc::new(Refusals::default());
    let mut retry = AcceptRetry::default();
    loop {
        let (s, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = async {
                gate.room().await;
                listener.accept().await
            } => match r {
                Ok(c) => {
                    retry.succeeded();
                    c
                }
                Err(e) => {
                    // Out of descriptors, say: the connection waits in the backlog.
                    tokio::time::sleep(retry.failed("cluster", &e)).await;
                    continue;
                }
            },
        };
        let key = table.key.clone();
        let greeting = gate.admit(move |vouch| greet(s, key, vouch));
        let (table, mut stop, refusals) = (table.clone(), shutdown.clone(), refusals.clone());
        tokio::spawn(async move {
            let connection = async {
                match greeting.await {
                    Some(Ok((link, dial))) => {
                        if let Err(e) = dispatch(link, dial, peer, &table).await {
                            tracing::warn!(%peer, "cluster: refused a connection: {e}");
                            table.refused(peer, &e);
                        }
                    }
                    Some(Err(e)) => {
                        refusals.log(peer, &e, std::time::Instant::now());
                        table.refused(peer, &e);
                    }
                    None => tracing::debug!(
                        %peer,
                        "cluster: closed a connection silent in its challenge, for a newer one"
                    ),
                }
            };
            tokio::select! {
                _ = stop.changed() => {}
                () = connection => {}
            }
        });
    }
}

/// A connection's first steps: the challenge, then its first frame, which says what it is.
/// `vouch` tells the gate once the peer has proved the key.
async fn greet(s: tokio::net::TcpStream, key: Arc<[u8]>, vouch: Vouch) -> Result<(Framed, Dial)> {
    s.set_nodelay(true)?;
    let link = Framed::new(s.into_std()?.into(), Transport::Tcp)?;
    crate::listener::authenticate_peer(&link, &key, crate::AUTH_TIMEOUT, vouch).await?;
    link.set_recv_limit(Some(MAX_DIAL));
    let mut frame = tokio::time::timeout(DIAL_TIMEOUT, link.recv_one())
        .await
        .map_err(|_| Error::Protocol(format!("said nothing within {DIAL_TIMEOUT:?}")))??;
    link.set_recv_limit(None);
    let dial = frame.decode_head::<Dial>()?;
    Ok((link, dial))
}

/// The refusals of connections that did not get through [`greet`]: how many since the last
/// one logged at `warn`, and when that was.
#[derive(Default)]
struct Refusals {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Refusals {
    /// Logs the refusal of `peer` at `now`: at `warn` if none was for [`REFUSAL_WARN_EVERY`],
    /// with the number logged at `debug` since; otherwise at `debug`.
    fn log(&self, peer: SocketAddr, e: &Error, now: std::time::Instant) {
        match self.note(now) {
            Some(0) => tracing::warn!(%peer, "cluster: refused a connection: {e}"),
            Some(quiet) => tracing::warn!(
                %peer,
                "cluster: refused a connection: {e} ({quiet} more refused since the last \
                 warning, logged at debug)"
            ),
            None => tracing::debug!(%peer, "cluster: refused a connection: {e}"),
        }
    }

    /// Counts a refusal at `now`: `Some(those in between)` if it is to be logged at `warn`.
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, quiet) = &mut *s;
        match last {
            Some(t) if now.saturating_duration_since(*t) < REFUSAL_WARN_EVERY => {
                *quiet += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(quiet))
            }
        }
    }
}

/// What a connection that passed [`greet`] is: a worker's link handed to whoever waits for
/// it, or an agent's session.
async fn dispatch(link: Framed, dial: Dial, peer: SocketAddr, table: &Arc<Table>) -> Result<()> {
    match dial {
        Dial::Worker { agent, token } => {
            let tx = table
                .lock()
                .agents
                .get_mut(&agent)
                .and_then(|a| a.workers.get_mut(&token))
                .and_then(|w| w.link.take());
            match tx {
                Some(tx) => {
                    // A link that goes dead while its agent answers fails within about
                    // the heartbeat deadline, so that the worker's tasks fail as lost.
                    sys::fail_when_silent(link.as_fd(), table.heartbeat_deadline)?;
                    let _ = tx.send(link);
                    Ok(())
                }
                None => Err(Error::Protocol(format!(
                    "a worker link for agent {agent}, spawn {token}, which nobody waits for"
                ))),
            }
        }
        Dial::Agent(hello) => agent_session(link, peer, hello, table).await,
    }
}

/// An agent's session: checks its hello, then relays the pool's requests to it and its
/// reports back, pinging it, until it leaves or stays silent past the heartbeat deadline.
async fn agent_session(
    link: Framed,
    peer: SocketAddr,
    hello: AgentHello,
    table: &Arc<Table>,
) -> Result<()> {
    // The host's own name, the address it dialled from, and its launcher's id (several
    // agents may share a machine).
    let host: Arc<str> = if hello.id.is_empty() {
        format!("{}/{}", hello.hostname, peer.ip()).into()
    } else {
        format!("{}/{}#{}", hello.hostname, peer.ip(), hello.id).into()
    };
    if let Err(e) = hello.hello.check() {
        let message = match e {
            Error::BinaryMismatch { ours, theirs } => format!(
                "host {host} runs another build of the program: its binary's fingerprint is \
                 {theirs}, the head's is {ours}"
            ),
            e => format!("host {host}: {e}"),
        };
        let _ = link
            .send(&mut FrameBuf::of(&Welcome::Refused(message.clone()))?)
            .await;
        return Err(Error::Protocol(message));
    }
    if hello.workers > MAX_WORKERS_PER_HOST {
        tracing::warn!(
            %host,
            "cluster: host claims {} workers; it is given at most {MAX_WORKERS_PER_HOST}",
            hello.workers
        );
    }
    let (tx, mut rx) = unbounded_channel::<ToAgent>();
    let Some(agent) = table.add_agent((host.clone(), hello.id.clone()), hello.workers, tx) else {
        let message = format!(
            "host {host} was ended by the cluster's shutdown; it joins again once a scale \
             launches it"
        );
        let _ = link
            .send(&mut FrameBuf::of(&Welcome::Refused(message.clone()))?)
            .await;
        return Err(Error::Protocol(message));
    };
    let head_deadline_ms = u64::try_from(table.head_deadline.as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(%host, agent, pid = hello.pid, id = %hello.id, workers = hello.workers, "cluster: host agent joined");
    let link = Arc::new(link);
    let outcome = async {
        link.send(&mut FrameBuf::of(&Welcome::Accepted {
            agent,
            head_deadline_ms,
        })?)
        .await?;
        let writer = {
            let link = link.clone();
            let ping = (table.heartbeat_deadline.min(table.head_deadline) / 4)
                .max(Duration::from_millis(5));
            async move {
                let mut ticker = tokio::time::interval(ping);
                loop {
                    let msg = tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => m,
                            None => return Ok::<(), Error>(()),
                        },
                        _ = ticker.tick() => ToAgent::Ping,
                    };
                    link.send(&mut FrameBuf::of(&msg)?).await?;
                }
            }
        };
        let reader = async {
            loop {
                let mut frame =
                    match tokio::time::timeout(table.heartbeat_deadline, link.recv()).await {
                        Ok(r) => r?,
                        Err(_) => return Err(Error::Timeout),
                    };
                on_report(table, agent, frame.decode_head::<FromAgent>()?);
            }
        };
        tokio::select! {
            r = writer => r,
            r = reader => r,
        }
    }
    .await;
    // A silent host is lost by the heartbeat; any other end closed its connection (the
    // agent's, or the head's own on a frame it could not read).
    let how = match outcome {
        Err(Error::Timeout) => ExitCause::HostLost,
        _ => ExitCause::HostDisconnected,
    };
    table.remove_agent(agent, how);
    // What the host sends from now on is not read: the link closes.
    let _ = sys::shutdown_socket(link.as_fd(), true, true);
    match outcome {
        Err(Error::Closed) | Ok(()) => {
            tracing::warn!(%host, "cluster: host agent left; its workers are lost");
        }
        Err(Error::Timeout) => tracing::warn!(
            %host,
            "cluster: host lost: it answered nothing for {:?}",
            table.heartbeat_deadline
        ),
        Err(e) => tracing::warn!(%host, "cluster: host lost: {e}"),
    }
    Ok(())
}

/// Takes in one report of agent `agent`.
fn on_report(table: &Table, agent: u64, report: FromAgent) {
    let mut s = table.lock();
    let Some(a) = s.agents.get_mut(&agent) else {
        return;
    };
    match report {
        FromAgent::Pong => {}
        FromAgent::Output { pid, stderr, line } => {
            let stream = if stderr { "stderr" } else { "stdout" };
            tracing::info!(target: "tokio_multiprocessing::worker", host = %a.host, pid, stream, "{line}");
        }
        FromAgent::Spawned { token, pid } => {
            a.failed_starts = 0;
            if let Some(w) = a.workers.get_mut(&token) {
                w.pid = Some(pid);
                if let Some(tx) = w.spawned.take() {
                    let _ = tx.send(Ok(pid));
                }
            }
        }
        FromAgent::SpawnFailed {
            token,
            message,
            error,
        } => {
            a.failed_starts = a.failed_starts.saturating_add(1);
            if let Some(mut w) = a.workers.remove(&token)
                && let Some(tx) = w.spawned.take()
            {
                let _ = tx.send(Err(SpawnFailure { message, error }));
            }
            drop(s);
            table.changed.notify_waiters();
        }
        FromAgent::Exited {
            token,
            code,
            last_started,
        } => {
            if let Some(mut w) = a.workers.remove(&token) {
                tracing::debug!(host = %a.host, pid = ?w.pid, code, "cluster: worker exited");
                if let Some(tx) = w.exit.take() {
                    let _ = tx.send(RemoteExit {
                        code: Ok(code),
                        last_started,
                    });
                }
            }
            drop(s);
            table.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_warn_once_per_interval_and_count_the_rest() {
        let r = Refusals::default();
        let t0 = std::time::Instant::now();
        assert_eq!(r.note(t0), Some(0), "the first is a warning");
        for i in 1..=5 {
            assert_eq!(r.note(t0 + Duration::from_millis(i)), None, "then debug");
        }
        let later = t0 + REFUSAL_WARN_EVERY + Duration::from_millis(1);
        assert_eq!(
            r.note(later),
            Some(5),
            "the next warning counts those in between"
        );
        assert_eq!(r.note(later), None);
    }
}
