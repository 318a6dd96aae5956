//! The head's side of each connection: the accept loop, the challenge and the first frame,
//! then an agent's session (its messages, the heartbeat) or a worker's link handed on.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc::unbounded_channel, watch};

use super::head::{RemoteExit, Table};
use super::proto::{AgentHello, Dial, FromAgent, ToAgent, Welcome};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{FrameBuf, Framed, Transport};

/// How long a connection may take, after the challenge, to say what it is.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest first frame accepted from a connection not known yet.
const MAX_DIAL: usize = 64 * 1024;

/// Accepts connections until the cluster is dropped; each runs in a task of its own, so a
/// slow, silent or hostile one costs only itself.
pub(super) async fn accept_loop(
    listener: TcpListener,
    table: Arc<Table>,
    shutdown: watch::Receiver<()>,
) {
    let mut stop = shutdown.clone();
    loop {
        let (s, peer) = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cluster: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (table, mut stop) = (table.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.changed() => {}
                r = connection(s, peer, &table) => if let Err(e) = r {
                    tracing::warn!(%peer, "cluster: refused a connection: {e}");
                },
            }
        });
    }
}

/// One connection: the challenge, its first frame, then what it is.
async fn connection(s: tokio::net::TcpStream, peer: SocketAddr, table: &Arc<Table>) -> Result<()> {
    s.set_nodelay(true)?;
    let link = Framed::new(s.into_std()?.into(), Transport::Tcp)?;
    crate::listener::authenticate(&link, &table.key, true).await?;
    link.set_recv_limit(Some(MAX_DIAL));
    let mut frame = tokio::time::timeout(DIAL_TIMEOUT, link.recv_one())
        .await
        .map_err(|_| Error::Protocol(format!("said nothing within {DIAL_TIMEOUT:?}")))??;
    link.set_recv_limit(None);
    match frame.decode_head::<Dial>()? {
        Dial::Worker { agent, token } => {
            let tx = table
                .lock()
                .agents
                .get_mut(&agent)
                .and_then(|a| a.workers.get_mut(&token))
                .and_then(|w| w.link.take());
            match tx {
                Some(tx) => {
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
    let (tx, mut rx) = unbounded_channel::<ToAgent>();
    let agent = table.add_agent(host.clone(), hello.workers.max(1), tx);
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
                        Err(_) => {
                            return Err(Error::Protocol(format!(
                                "host {host} answered nothing for {:?}: it is lost",
                                table.heartbeat_deadline
                            )));
                        }
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
    table.remove_agent(agent);
    // What the host sends from now on is not read: the link closes.
    let _ = sys::shutdown_socket(link.as_fd(), true, true);
    match outcome {
        Err(Error::Closed) | Ok(()) => {
            tracing::warn!(%host, "cluster: host agent left; its workers are lost");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(%host, "cluster: host lost: {e}");
            Ok(())
        }
    }
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
            if let Some(w) = a.workers.get_mut(&token) {
                w.pid = Some(pid);
                if let Some(tx) = w.spawned.take() {
                    let _ = tx.send(Ok(pid));
                }
            }
        }
        FromAgent::SpawnFailed { token, message } => {
            if let Some(mut w) = a.workers.remove(&token)
                && let Some(tx) = w.spawned.take()
            {
                let _ = tx.send(Err(message));
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
                        code: Some(code),
                        last_started,
                    });
                }
            }
            drop(s);
            table.changed.notify_waiters();
        }
    }
}
