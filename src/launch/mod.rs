//! Launchers: how a [`Cluster`](crate::Cluster) gets its host agents started.
//!
//! A launcher does not run tasks and does not watch hosts: it only starts, on each host, the
//! program's own executable as a host agent (see [`Cluster`](crate::Cluster)), which dials
//! back to the head. So any engine that can run a command can host workers: [`Command`]
//! takes a template for any of them (`ip netns exec`, `kubectl`, `srun`, `mpirun`, ...);
//! [`Ssh`] runs the system's `ssh` and copies the executable where it is missing;
//! [`Slurm`] runs `srun` inside an allocation and submits `sbatch` jobs outside one.
//!
//! The cluster's key reaches each agent through the launcher's own channel (the
//! environment variable [`AUTHKEY_ENV`](crate::cluster::AUTHKEY_ENV) or the agent's stdin),
//! never through its command line, which other users of a host can read.

mod command;
mod slurm;
mod ssh;

use std::path::PathBuf;

pub use command::Command;
pub use slurm::Slurm;
pub use ssh::Ssh;

use crate::error::Result;

/// `s` as one word of a POSIX shell command line: as it is when no shell gives any of its
/// characters a meaning, else in single quotes.
pub(crate) fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd`, its stdin and stdout `/dev/null` and its stderr kept, for `limit` at most:
/// its exit status and what it wrote on stderr, or `None` if it had not ended by then (it
/// is then killed and reaped). Its stderr goes to a file in memory, read once it has ended,
/// so that a descendant that keeps it open (an ssh connection master) holds nothing up.
pub(crate) fn run_within(
    cmd: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::io::Result<Option<(std::process::ExitStatus, String)>> {
    use std::io::{Read, Seek};
    use std::os::fd::AsFd;
    let mut stderr = std::fs::File::from(crate::sys::anonymous_file("tokio-mp-stderr")?);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr.try_clone()?)
        .spawn()?;
    // The child is not reaped yet, so its pid is still its own.
    let ended = i32::try_from(child.id())
        .map_err(std::io::Error::other)
        .and_then(crate::sys::pidfd_open)
        .and_then(|fd| crate::sys::poll_readable(&[fd.as_fd()], Some(limit)))
        .map(|r| r.first().copied().unwrap_or(false));
    if !matches!(ended, Ok(true)) {
        let _ = child.kill();
        let _ = child.wait();
        return ended.map(|_| None);
    }
    let status = child.wait()?;
    let mut said = String::new();
    stderr.rewind()?;
    stderr.take(64 * 1024).read_to_string(&mut said)?;
    Ok(Some((status, said)))
}

/// What a launcher needs to start one host agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The executable to run (the path this program was started from, unless the launcher
    /// copied it elsewhere; after a rebuild while the program runs, that path holds another
    /// build, which the head refuses, naming both fingerprints).
    pub exe: PathBuf,
    /// The address the agent dials: `host:port`.
    pub address: String,
    /// The host's number among the hosts launched, from 0 (`{id}` in a template).
    pub id: usize,
    /// How many workers the agent may run at once (`{n}` in a template).
    pub workers: usize,
    /// The cluster's key, in hex, for the agent's environment or stdin.
    pub authkey_hex: String,
    /// The executable's fingerprint, in hex (the name of a cache of copies, say).
    pub fingerprint: String,
}

impl AgentSpec {
    /// The agent's arguments after the executable: a marker that [`init`](crate::init)
    /// recognises, the address, the number of workers and the id.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            crate::cluster::AGENT_FLAG.to_string(),
            self.address.clone(),
            self.workers.to_string(),
            self.id.to_string(),
        ]
    }
}

/// An agent (or whatever runs it: `ssh`, `srun`) started by a launcher; killed and reaped
/// when the cluster is dropped.
#[derive(Debug)]
pub struct Launched {
    child: Option<std::process::Child>,
    /// How the launched process ended (its pid and exit status), once it was seen to have
    /// ended: it is then reaped, and `child` is gone.
    ended: Option<(u32, std::process::ExitStatus)>,
    /// A command that cancels what was started (`scancel <job>`), run when the cluster is
    /// dropped.
    cancel: Option<std::process::Command>,
    /// What the engine calls the job (`job 12`), and the command that prints how it stands.
    state: Option<(String, Vec<String>)>,
    /// The host's number ([`AgentSpec::id`]), set by the cluster that launched it.
    pub(crate) host: usize,
    /// The launched process's descendants as it was asked to end, ended with it (see
    /// [`Launched::terminate`]).
    descendants: Vec<std::os::fd::OwnedFd>,
}

impl Launched {
    /// A launched process: reaped as soon as it ends (a launch command may exit while its
    /// agent runs on), or else killed and reaped with the cluster.
    pub fn process(child: std::process::Child) -> Launched {
        Launched {
            child: Some(child),
            ended: None,
            cancel: None,
            state: None,
            host: 0,
            descendants: Vec::new(),
        }
    }

    /// Something an engine runs (a batch job), cancelled with `cancel` when the cluster is
    /// dropped.
    pub fn job(cancel: std::process::Command) -> Launched {
        Launched {
            child: None,
            ended: None,
            cancel: Some(cancel),
            state: None,
            host: 0,
            descendants: Vec::new(),
        }
    }

    /// Nothing to reap: the engine owns what it started (a pod).
    pub fn detached() -> Launched {
        Launched {
            child: None,
            ended: None,
            cancel: None,
            state: None,
            host: 0,
            descendants: Vec::new(),
        }
    }

    /// How to learn how the job stands: `argv` prints it (Slurm's `squeue --jobs <job>`),
    /// and `name` is what the engine calls the job (`job 12`). A pool's start that finds no
    /// host's room within its start timeout runs it and tells the output in its error, so
    /// that a job that waits for resources, or one that failed before its agent joined, is
    /// named with its state.
    pub fn state(
        mut self,
        name: impl Into<String>,
        argv: impl IntoIterator<Item = impl Into<String>>,
    ) -> Launched {
        self.state = Some((name.into(), argv.into_iter().map(Into::into).collect()));
        self
    }

    /// The job's name and the command that prints how it stands, if it has one.
    pub(crate) fn state_command(&self) -> Option<(String, Vec<String>)> {
        self.state.clone()
    }

    /// The launched process's pid on this machine, if there is one.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// A descriptor of the launched process that turns readable once it ends (a pidfd),
    /// while it is not reaped; `None` when there is no process on this machine, or once it
    /// was reaped.
    pub(crate) fn end_signal(&self) -> Option<std::os::fd::OwnedFd> {
        let pid = i32::try_from(self.child.as_ref()?.id()).ok()?;
        crate::sys::pidfd_open(pid).ok()
    }

    /// How the launched process ended (its pid and exit status), if it has: it is then
    /// reaped, so that nothing is sent later to a process that took its pid. `None` while
    /// it runs, or when there is no process on this machine.
    pub(crate) fn ended(&mut self) -> Option<(u32, std::process::ExitStatus)> {
        if self.ended.is_none() {
            let c = self.child.as_mut()?;
            let status = c.try_wait().ok().flatten()?;
            self.ended = Some((c.id(), status));
            self.child = None;
        }
        self.ended
    }
}

/// How long a launched process has to end after SIGTERM before it is killed.
const GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Launched {
    /// Asks the launched process to end (SIGTERM), so that a wrapper (`srun`, `ssh`) ends
    /// its remote side cleanly, and its descendants with it: a wrapper that does not pass
    /// the signal on (`sh -c '<agent> | tee log'`) would otherwise leave the agent under it
    /// serving on, and, once it is gone, leave its children to init. Several are asked first
    /// and then reaped together ([`end_all`]), so that their grace periods run at once.
    fn terminate(&mut self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let c = self.child.as_ref()?;
        // The child is not reaped yet, so its pid is still its own.
        let fd = i32::try_from(c.id())
            .ok()
            .and_then(|pid| crate::sys::pidfd_open(pid).ok())?;
        // Listed before the signal, while they are still the launched process's.
        self.descendants = crate::sys::descendants_of(c.id());
        for p in std::iter::once(&fd).chain(&self.descendants) {
            let _ = crate::sys::pidfd_send_signal(p.as_fd(), crate::sys::SIGTERM);
        }
        Some(fd)
    }

    /// Waits until `until` for the descendants asked to end by [`Launched::terminate`]
    /// (each pidfd turns readable once its process has ended), then kills those left. They
    /// are not this process's children: whoever is their parent by then reaps them.
    fn end_descendants(&mut self, until: std::time::Instant) {
        use std::os::fd::AsFd;
        let mut left = std::mem::take(&mut self.descendants);
        while !left.is_empty() {
            let wait = until.saturating_duration_since(std::time::Instant::now());
            let fds: Vec<_> = left.iter().map(AsFd::as_fd).collect();
            let Ok(ended) = crate::sys::poll_readable(&fds, Some(wait)) else {
                break;
            };
            drop(fds);
            let mut ended = ended.into_iter();
            left.retain(|_| !ended.next().unwrap_or(false));
            if wait.is_zero() {
                break;
            }
        }
        for p in &left {
            let _ = crate::sys::pidfd_send_signal(p.as_fd(), crate::sys::SIGKILL);
        }
    }

    /// Waits until `until` for the process asked to end through `pidfd` (readable once it
    /// has ended: no polling), kills it if it is still there, reaps it, ends its descendants
    /// ([`Launched::end_descendants`]) and cancels the job.
    /// Returns why the cancel failed (the command and what it said), if it did: the job then
    /// runs on, until its agent sees the head gone.
    fn reap(
        &mut self,
        pidfd: Option<std::os::fd::OwnedFd>,
        until: std::time::Instant,
    ) -> Option<String> {
        if let Some(mut c) = self.child.take() {
            if let Some(fd) = &pidfd {
                let left = until.saturating_duration_since(std::time::Instant::now());
                let _ = crate::sys::poll_readable(&[std::os::fd::AsFd::as_fd(fd)], Some(left));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.end_descendants(until);
        let mut cancel = self.cancel.take()?;
        let line = format!("{cancel:?}");
        let failed = |why: String| Some(format!("{line} failed: {why}"));
        match cancel.stdin(std::process::Stdio::null()).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => failed(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => failed(e.to_string()),
        }
    }
}

/// How many launched processes [`end_all`] reaps, and jobs it cancels, at once.
const ENDS_AT_ONCE: usize = 16;

/// Ends every launched process: all are asked at once, then each is given what is left of
/// one grace period before it is killed; and cancels every job, [`ENDS_AT_ONCE`] at a time,
/// each on a thread of its own: a cancel that waits for its engine (`scancel` while Slurm's
/// controller does not answer) holds up no other. Returns why each cancel that failed did
/// (see [`Launched::reap`]).
pub(crate) fn end_all(launched: Vec<Launched>) -> Vec<String> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let launched: Vec<Mutex<(Launched, Option<std::os::fd::OwnedFd>)>> = launched
        .into_iter()
        .map(|mut l| {
            let fd = l.terminate();
            Mutex::new((l, fd))
        })
        .collect();
    let until = std::time::Instant::now() + GRACE;
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let reap_next = || {
        while let Some(one) = launched.get(next.fetch_add(1, Ordering::AcqRel)) {
            let mut one = one.lock().unwrap_or_else(|p| p.into_inner());
            let (l, fd) = &mut *one;
            if let Some(why) = l.reap(fd.take(), until) {
                failed.lock().unwrap_or_else(|p| p.into_inner()).push(why);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 1..launched.len().min(ENDS_AT_ONCE) {
            s.spawn(reap_next);
        }
        reap_next();
    });
    failed.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Logs the cancels that failed when a cluster's agents were ended without anyone to tell.
pub(crate) fn warn_failed(failed: &[String]) {
    for why in failed {
        tracing::warn!("cluster: a launched job was not cancelled: {why}");
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let fd = self.terminate();
        if let Some(why) = self.reap(fd, std::time::Instant::now() + GRACE) {
            warn_failed(&[why]);
        }
    }
}

/// The most jobs whose state [`job_states`] asks, so that a large cluster does not flood
/// its engine.
const STATES_ASKED: usize = 8;

/// How the jobs stand, from the commands of [`Launched::state`] (each job's name and
/// command), as the end of an error: `; the launched jobs, as their engine tells: job 12:
/// PENDING (Resources)`; empty if there are none. Each command's output, or its error, is
/// told as it is, in one line.
pub(crate) fn job_states(jobs: &[(String, Vec<String>)]) -> String {
    if jobs.is_empty() {
        return String::new();
    }
    let mut told: Vec<String> = jobs
        .iter()
        .take(STATES_ASKED)
        .map(|(name, argv)| {
            let Some((program, args)) = argv.split_first() else {
                return format!("{name}: no command to ask");
            };
            let out = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output();
            let text = match out {
                Ok(o) => {
                    let text = match String::from_utf8_lossy(&o.stdout).trim() {
                        "" => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        t => t.to_string(),
                    };
                    match text.is_empty() {
                        true => format!("`{program}` told nothing ({})", o.status),
                        false => text.split_whitespace().collect::<Vec<_>>().join(" "),
                    }
                }
                Err(e) => format!("cannot run `{program}`: {e}"),
            };
            format!("{name}: {text}")
        })
        .collect();
    if jobs.len() > STATES_ASKED {
        told.push(format!("{} more not asked", jobs.len() - STATES_ASKED));
    }
    format!(
        "; the launched jobs, as their engine tells: {}",
        told.join("; ")
    )
}

/// Starts host agents for a [`Cluster`](crate::Cluster): one per host, each running
/// [`AgentSpec::exe`] with [`AgentSpec::agent_args`] and the key in its environment or on
/// its stdin.
pub trait Launcher: Send + Sync + std::fmt::Debug + 'static {
    /// How many hosts to start when the cluster is built.
    fn hosts(&self) -> usize;

    /// How many workers each host runs.
    fn workers_per_host(&self) -> usize;

    /// Starts the agent of host `spec.id`. A cluster calls it for several hosts at once,
    /// each on a thread of its own, and again for a host whose launch failed when it is
    /// scaled again.
    ///
    /// # Errors
    /// The engine's error when the agent cannot be started (the command is missing, say).
    fn launch(&self, spec: &AgentSpec) -> Result<Launched>;
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn a_shell_reads_back_every_word_as_it_was() {
        let words = [
            "/usr/bin/app",
            "/home/me/My Programs/app",
            "it's",
            "$HOME",
            "`id`",
            "a;b|c&d",
            "~",
            "*",
            "",
            "--address=10.0.0.1:5000",
            "line\nbreak",
        ];
        let line: Vec<String> = words.iter().map(|w| shell_word(w)).collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {}", line.join(" ")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let read: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
        let expected: Vec<&[u8]> = words
            .iter()
            .map(|w| w.as_bytes())
            .chain([&b""[..]])
            .collect();
        assert_eq!(read, expected);
        assert_eq!(
            shell_word("/usr/bin/app"),
            "/usr/bin/app",
            "quoted a plain word"
        );
    }
}
