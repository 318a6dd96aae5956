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
//!
//! A field added to a message after the first release is an `Option` that is left out of
//! the frame when `None` and read as `None` when missing, so that a frame without it, as an
//! earlier head sent it, means what it meant then.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::start::Environment;
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
    /// Dial a worker link for `token` and start a pool worker on it, with the pool's
    /// environment variables and working directory, if it has any (`None`: the agent's
    /// own, untouched). A relative directory is taken from the agent's.
    Spawn {
        token: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<Environment>,
    },
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
    /// The worker for `token` could not be started; why, and the error itself, so that the
    /// head gives the caller the same kind of error as a local start would (an
    /// [`Error::Io`] of kind `NotFound` for a directory missing on the host, say).
    SpawnFailed {
        token: u64,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Error>,
    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Encoded;
    use crate::wire::codec::decode;

    /// The messages of the first release whose shape has grown since.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OldToAgent {
        Spawn { token: u64 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OldFromAgent {
        Spawned { token: u64, pid: u32 },
        SpawnFailed { token: u64, message: String },
    }

    fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
        Encoded::new(v).unwrap().bytes
    }

    #[test]
    fn a_frame_without_the_new_fields_means_what_it_meant() {
        let old = bytes(&OldToAgent::Spawn { token: 7 });
        match decode::<ToAgent>(&old, Vec::new()).unwrap() {
            ToAgent::Spawn {
                token: 7,
                env: None,
            } => {}
            other => panic!("{other:?}"),
        }
        // And the head sends that very frame when the pool sets nothing.
        assert_eq!(
            bytes(&ToAgent::Spawn {
                token: 7,
                env: None
            }),
            old
        );

        let old = OldFromAgent::SpawnFailed {
            token: 3,
            message: "no room".into(),
        };
        match decode::<FromAgent>(&bytes(&old), Vec::new()).unwrap() {
            FromAgent::SpawnFailed {
                token: 3,
                message,
                error: None,
            } => assert_eq!(message, "no room"),
            other => panic!("{other:?}"),
        }
        let new = FromAgent::SpawnFailed {
            token: 3,
            message: "no room".into(),
            error: None,
        };
        assert_eq!(bytes(&new), bytes(&old));
        // The reports that did not change still read as they did.
        let spawned = bytes(&OldFromAgent::Spawned { token: 1, pid: 9 });
        assert!(matches!(
            decode::<FromAgent>(&spawned, Vec::new()).unwrap(),
            FromAgent::Spawned { token: 1, pid: 9 }
        ));
    }

    #[test]
    fn a_spawn_carries_the_environment_and_a_failure_its_error() {
        let mut env = Environment::default();
        env.set("K".as_ref(), "v".as_ref()).unwrap();
        env.set_cwd("rel/dir".as_ref());
        let spawn = ToAgent::Spawn {
            token: 2,
            env: Some(env),
        };
        match decode::<ToAgent>(&bytes(&spawn), Vec::new()).unwrap() {
            ToAgent::Spawn {
                token: 2,
                env: Some(env),
            } => assert!(!env.is_untouched()),
            other => panic!("{other:?}"),
        }
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no /x");
        let failed = FromAgent::SpawnFailed {
            token: 2,
            message: "no /x".into(),
            error: Some(Error::from(io)),
        };
        match decode::<FromAgent>(&bytes(&failed), Vec::new()).unwrap() {
            FromAgent::SpawnFailed {
                error: Some(Error::Io(e)),
                ..
            } => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
