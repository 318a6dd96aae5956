//! [`Cluster`]: the same [`Pool`](crate::Pool) with workers on other machines.
//!
//! # Shape
//!
//! The head (the user's program) listens on TCP. A launcher (see [`crate::launch`]) starts
//! one *host agent* per host: the program's own executable, which becomes an agent before
//! `main` (the crate's constructor, or [`init`](crate::init)) when its arguments begin with
//! [`AGENT_FLAG`]. The agent dials the
//! head, both prove they hold the cluster's key (the HMAC-SHA256 challenge both ways, as
//! [`Listener`](crate::Listener)), and the agent says hello with its binary's fingerprint: a
//! different build is refused, with a message naming the host and both fingerprints,
//! because functions cross as offsets in the very same binary.
//!
//! When a pool built on the cluster wants a worker, the head asks an agent with room to
//! spawn one. The agent dials a fresh connection for it (challenge again, then the spawn's
//! token), starts a pool worker with the local machinery (pidfd, die-with-parent, the
//! shared started mark, the pool's [`env`](crate::PoolBuilder::env) and
//! [`current_dir`](crate::PoolBuilder::current_dir), which the spawn carries) and hands it
//! that socket. So **a worker's frames go to the pool
//! directly over TCP**, not relayed through the agent: no extra hop for each task, and the
//! worker's code is the local worker's, unchanged. The agent stays on its control
//! connection: it reports each worker's pid, and when one dies its exit cause and the last
//! task its started mark shows, so the pool knows which held tasks never started (sent to
//! another worker) and which may have (failed with
//! [`TaskError::is_worker_lost`](crate::TaskError::is_worker_lost), naming the host).
//!
//! The agent also reads each worker's stdout and stderr (pipes it gives the worker) and
//! sends them to the head line by line, where they become `tracing` events at INFO level,
//! target `tokio_multiprocessing::worker`, with the fields `host`, `pid` and `stream`.
//!
//! # Liveness
//!
//! The head pings each agent; an agent that answers nothing for the cluster's
//! [`heartbeat_deadline`](ClusterBuilder::heartbeat_deadline) (default 10 s) is declared
//! lost: its workers' tasks fail ([`ExitCause::HostLost`](crate::ExitCause::HostLost), "its
//! host stopped answering") and whatever it sends later is dropped. An agent whose
//! connection closes (killed, say) is lost at once, its workers' tasks failing saying so
//! ([`ExitCause::HostDisconnected`](crate::ExitCause::HostDisconnected)). An agent that
//! hears nothing from the head for the [`head_deadline`](ClusterBuilder::head_deadline)
//! (default 60 s), or sees its connection closed, kills its workers and exits; workers also
//! end when their own link closes. A worker's link that goes dead while its agent answers
//! (its packets lost on the way) fails on the head's side once silent for the heartbeat
//! deadline (TCP keep-alive probes and `TCP_USER_TIMEOUT`), and on the worker's once silent
//! for the head deadline: the head has the agent kill the worker, and its tasks fail as
//! those of a worker that died, saying its link went silent.
//!
//! # Trust
//!
//! Frames are authenticated at the handshake, not encrypted. Across an untrusted network,
//! carry the connection through an ssh tunnel (`ssh -R`) or a VPN. The key reaches agents
//! through their environment ([`AUTHKEY_ENV`]) or stdin, never their command line.
//!
//! # Layers
//!
//! This module sits beside the pool rather than above it, on purpose: the head's pool asks
//! the [`Cluster`] for workers (`pool::remote`), the agent starts them with the pool's own
//! worker code (`pool::HostWorker`), and the start-up (`start::before_main`) asks this
//! module whether the process was launched as an agent. Each of these crossings is one
//! function; the wire, the handshake and the worker loop are the local ones.
//!
//! # Files
//!
//! `builder.rs` the options; `head.rs` the [`Cluster`] handle and its table of agents and
//! workers; `session.rs` the head's side of each connection; `agent.rs` the agent's side;
//! `proto.rs` the messages; `key.rs` the key and the environment.

mod agent;
mod builder;
mod head;
mod key;
mod proto;
mod session;

pub use builder::ClusterBuilder;
pub use head::{Cluster, WorkerInfo, WorkerState};
pub use key::{ADDRESS_ENV, ADVERTISE_ENV, AUTHKEY_ENV};

pub(crate) use agent::{END_WITH_INPUT, launched_as_agent, run_if_agent};
pub(crate) use head::{RemoteExit, RemoteKill};

/// The first argument that makes [`init`](crate::init) run the host agent.
pub const AGENT_FLAG: &str = "--tokio-multiprocessing-agent";

/// The most workers one host agent may run. An agent asked for more refuses to start; the
/// head counts an agent that claims more (another build, say) as having this many, so one
/// host cannot make a pool start workers without bound.
pub const MAX_WORKERS_PER_HOST: usize = 4096;
