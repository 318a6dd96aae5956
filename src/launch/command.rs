//! [`Command`]: a host agent started by any command, from a template.

use std::process::Stdio;

use super::{AgentSpec, Launched, Launcher};
use crate::error::{Error, Result};

/// Starts each host agent with a command made from a template, for any engine that runs a
/// command: `ip netns exec`, `kubectl exec`, `hq submit`, `condor_submit`, `nomad`,
/// `mpirun`, `docker run`...
///
/// The template is split on whitespace into the program and its arguments (no shell; write
/// `sh -c '...'` as one argument with [`Command::argv`] for one), and in each argument
/// `{exe}` becomes the executable, `{address}` the head's address, `{n}` the workers per
/// host, `{id}` the host's number and `{agent}` the whole agent line (`{exe}` and
/// [`AgentSpec::agent_args`], as arguments of their own: `{agent}` must be an argument by
/// itself, else the launch fails). Nothing is shell-quoted. The key is put in the
/// command's environment as [`AUTHKEY_ENV`](crate::cluster::AUTHKEY_ENV) (`ip netns exec`,
/// `sudo -E`, `env` and `srun` pass it on; `docker run` needs `-e`, `mpirun` `-x`).
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// // Two "hosts" that are network namespaces of this machine.
/// let hosts = mp::launch::Command::new("ip netns exec ns{id} {agent}")
///     .hosts(2)
///     .workers_per_host(4);
/// # let _ = hosts;
/// ```
#[derive(Debug, Clone)]
pub struct Command {
    argv: Vec<String>,
    hosts: usize,
    workers: usize,
}

impl Command {
    /// A launcher running `template` (split on whitespace) once per host; one host and
    /// one worker per available core unless told otherwise.
    pub fn new(template: &str) -> Command {
        Command::argv(template.split_whitespace().map(str::to_string))
    }

    /// A launcher running exactly these arguments (placeholders replaced in each).
    pub fn argv(argv: impl IntoIterator<Item = impl Into<String>>) -> Command {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            hosts: 1,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// How many hosts (agents) to start when the cluster is built.
    pub fn hosts(mut self, n: usize) -> Command {
        self.hosts = n;
        self
    }

    /// How many workers each host runs.
    pub fn workers_per_host(mut self, n: usize) -> Command {
        self.workers = n.max(1);
        self
    }

    /// The command line for `spec`, placeholders replaced.
    pub fn line(&self, spec: &AgentSpec) -> Vec<String> {
        let mut out = Vec::new();
        for arg in &self.argv {
            if arg == "{agent}" {
                out.push(spec.exe.display().to_string());
                out.extend(spec.agent_args());
                continue;
            }
            out.push(
                arg.replace("{exe}", &spec.exe.display().to_string())
                    .replace("{address}", &spec.address)
                    .replace("{n}", &spec.workers.to_string())
                    .replace("{id}", &spec.id.to_string()),
            );
        }
        out
    }
}

impl Launcher for Command {
    fn hosts(&self) -> usize {
        self.hosts
    }

    fn workers_per_host(&self) -> usize {
        self.workers
    }

    fn launch(&self, spec: &AgentSpec) -> Result<Launched> {
        if let Some(arg) = self
            .argv
            .iter()
            .find(|a| a.contains("{agent}") && a.as_str() != "{agent}")
        {
            return Err(Error::InvalidArgument(format!(
                "{{agent}} must be an argument of its own in the launcher's template, not \
                 part of {arg:?} (write `sh -c` lines with {{exe}}, {{address}}, {{n}} and {{id}})"
            )));
        }
        let line = self.line(spec);
        let Some((program, args)) = line.split_first() else {
            return Err(Error::InvalidArgument(
                "the launcher's command template is empty".into(),
            ));
        };
        let child = std::process::Command::new(program)
            .args(args)
            .env(crate::cluster::AUTHKEY_ENV, &spec.authkey_hex)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Error::Start {
                name: format!("host agent {} ({program})", spec.id),
                pid: 0,
                message: e.to_string(),
            })?;
        tracing::debug!(id = spec.id, pid = child.id(), "host agent launched");
        Ok(Launched::process(child))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AgentSpec {
        AgentSpec {
            exe: "/opt/app".into(),
            address: "head:7000".into(),
            id: 3,
            workers: 8,
            authkey_hex: "00".into(),
            fingerprint: "ff".into(),
        }
    }

    #[test]
    fn placeholders_are_replaced_and_agent_stands_for_the_whole_line() {
        let line = Command::new("ip netns exec ns{id} env N={n} {agent}").line(&spec());
        assert_eq!(line[..5], ["ip", "netns", "exec", "ns3", "env"]);
        assert_eq!(line[5], "N=8");
        assert_eq!(line[6], "/opt/app");
        assert_eq!(line[7..], spec().agent_args()[..]);
    }

    #[test]
    fn agent_inside_another_argument_is_refused() {
        let c = Command::argv(["sh", "-c", "exec {agent} 2>log"]);
        assert!(matches!(c.launch(&spec()), Err(Error::InvalidArgument(_))));
    }
}
