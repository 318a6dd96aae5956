//! The conversation between the head and its host agents, as plain data.
//!
//! Every TCP connection to the head starts with the challenge both ways (the same exchange
//! as [`Listener`](crate::Listener)'s), then one [`Dial`] frame says what it is:
//!
//! - an agent's control connection ([`Dial::Agent`], carrying its [`Hello`], whose binary
//!   fingerprint must be ours): the head answers [`Welcome`], then sends [`ToAgent`] frames
//!   and reads [`FromAgent`] frames until one side goes away;
//! - a worker's link ([`Dial::Worker`]), dialled by an agent on the head's
//!   [`ToAgent::Spawn`] and handed to the worker process it starts: from then on it carries
//!   the pool's own frames (see `pool/proto.rs`) between the pool and that worker, directly.

use serde::{Deserialize, Serialize};

use crate::wire::Hello;

/// The first frame on every connection to the head, after the challenge.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Dial {
    /// A host agent's control connection.
    Agent(AgentHello),
    /// The link of a worker that agent `agent` starts for the head's spawn `token`.
    Worker { agent: u64, token: u64 },
}

/// Who the agent is.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AgentHello {
    /// Magic, protocol version and the agent's binary fingerprint.
    pub(crate) hello: Hello,
    /// The host's name as the host knows it.
    pub(crate) hostname: String,
    /// The id its launcher gave it (`{id}` in a command template).
    pub(crate) id: String,
    /// The agent's pid on its host.
    pub(crate) pid: u32,
    /// How many workers it may run at once (`{n}`).
    pub(crate) workers: usize,
}

/// The head's answer to an agent's hello.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Welcome {
    /// Taken in as agent `agent`; it exits (killing its workers) once it has heard nothing
    /// from the head for `head_deadline_ms`.
    Accepted { agent: u64, head_deadline_ms: u64 },
    /// Refused; why (another binary, say). The agent exits.
    Refused(String),
}

/// What the head asks of an agent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToAgent {
    /// Dial a worker link for `token` and start a pool worker on it.
    Spawn { token: u64 },
    /// Kill the worker started for `token` (its exit is reported as usual).
    Kill { token: u64 },
    /// Proof that the head lives; answered with [`FromAgent::Pong`].
    Ping,
    /// Kill every worker and exit.
    Exit,
}

/// What an agent tells the head.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromAgent {
    /// The worker for `token` runs as `pid`.
    Spawned { token: u64, pid: u32 },
    /// The worker for `token` could not be started; why.
    SpawnFailed { token: u64, message: String },
    /// The worker for `token` ended with `code` (Python's convention: `-N` for signal N),
    /// and the last task it marked as started was `last_started` (0: none), read from its
    /// started mark once it was dead.
    Exited {
        token: u64,
        code: i32,
        last_started: u64,
    },
    /// Answer to [`ToAgent::Ping`].
    Pong,
    /// A line the worker `pid` wrote on its stdout (or, if `stderr`, its stderr).
    Output {
        pid: u32,
        stderr: bool,
        line: String,
    },
}
