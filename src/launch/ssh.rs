//! [`Ssh`]: host agents started over the system's `ssh`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use super::{AgentSpec, Launched, Launcher, shell_word};
use crate::error::{Error, Result};

/// Starts one host agent per host over the system's `ssh` client, with the user's own
/// configuration and agent, in batch mode (it never asks for a password): one session per
/// host, which lives as long as the agent.
///
/// The executable must be this very build on every host. If a host lacks it, it is copied
/// first (over `ssh` too, read from the running process, so that a rebuild while the
/// program runs changes nothing) into a cache directory keyed by the binary's fingerprint
/// (`<cache>/<fingerprint>/<name>`, the cache being `.cache/tokio-multiprocessing` under
/// the remote home unless [`cache_dir`](Self::cache_dir) says otherwise), so a rebuilt
/// program never runs an old copy. The key goes to the agent on its stdin, never on a
/// command line; the agent exits once that input ends, so that the end of its session
/// ([`Cluster::shutdown`](crate::Cluster::shutdown), or the cluster dropped) ends it.
///
/// Frames are authenticated, not encrypted: across an untrusted network, let ssh carry the
/// connection too, with a reverse tunnel (`.option("-R").option("7000:localhost:7000")`,
/// the cluster listening on `127.0.0.1:7000` and advertising `127.0.0.1`).
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// let hosts = mp::launch::Ssh::hosts(["n1", "n2"]).workers_per_host(8);
/// # let _ = hosts;
/// ```
#[derive(Debug, Clone)]
pub struct Ssh {
    hosts: Vec<String>,
    workers: usize,
    program: Vec<String>,
    options: Vec<String>,
    cache: String,
    probe_timeout: Duration,
}

/// The exit code of `ssh` itself failing, as opposed to the remote command's.
const SSH_FAILED: i32 = 255;

impl Ssh {
    /// How long `ssh` has to reach a host, log in and answer whether the host holds the
    /// executable, unless [`probe_timeout`](Self::probe_timeout) says otherwise.
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

    /// A launcher for these hosts (`name`, `user@name`, or an alias of the ssh config),
    /// one agent each; one worker per core of this machine unless told otherwise.
    pub fn hosts(hosts: impl IntoIterator<Item = impl Into<String>>) -> Ssh {
        Ssh {
            hosts: hosts.into_iter().map(Into::into).collect(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            program: vec!["ssh".into()],
            options: Vec::new(),
            cache: ".cache/tokio-multiprocessing".into(),
            probe_timeout: Ssh::DEFAULT_PROBE_TIMEOUT,
        }
    }

    /// How many workers each host runs.
    pub fn workers_per_host(mut self, n: usize) -> Ssh {
        self.workers = n.max(1);
        self
    }

    /// One more argument for `ssh`, before the host (`-p`, `2222`, `-i`, a path, `-o`,
    /// `ProxyJump=bastion`...).
    pub fn option(mut self, arg: impl Into<String>) -> Ssh {
        self.options.push(arg.into());
        self
    }

    /// The ssh client to run, with whatever wraps it (`["ssh"]` by default; say
    /// `["ip", "netns", "exec", "ns", "ssh"]`).
    pub fn program(mut self, argv: impl IntoIterator<Item = impl Into<String>>) -> Ssh {
        self.program = argv.into_iter().map(Into::into).collect();
        self
    }

    /// How long `ssh` has to reach a host, log in and answer whether the host holds the
    /// executable, the first thing a launch asks; past it, the `ssh` is killed and the
    /// launch fails, naming the host. A host that takes the connection and answers nothing
    /// (frozen, or its login hung on a home directory that does not answer) would otherwise
    /// hold the launch, and so the cluster's build or scale, for ever: ssh has no such
    /// limit of its own. The copy that may follow takes as long as the executable needs to
    /// cross, but a host that answers nothing for this long midway through it (ssh's
    /// keepalives, `ServerAliveInterval` a third of it, go unanswered) fails the launch too.
    /// Any limit is taken, up to `Duration::MAX`; the copy's silence counts as some 24.8
    /// days at most, the longest ssh's options hold.
    pub fn probe_timeout(mut self, limit: Duration) -> Ssh {
        self.probe_timeout = limit;
        self
    }

    /// Where the executable is cached on the hosts (relative to the remote home, or
    /// absolute).
    pub fn cache_dir(mut self, dir: impl Into<String>) -> Ssh {
        self.cache = dir.into();
        self
    }

    /// `ssh` with its options in batch mode, for `host`, running `remote`.
    fn command(&self, host: &str, remote: &str) -> Result<std::process::Command> {
        self.command_with(host, remote, &[])
    }

    /// [`command`](Self::command), with `extra` options after the user's (ssh takes the
    /// first value it is given for an option, so the user's win).
    fn command_with(
        &self,
        host: &str,
        remote: &str,
        extra: &[String],
    ) -> Result<std::process::Command> {
        let Some((program, wrapper)) = self.program.split_first() else {
            return Err(Error::InvalidArgument("the ssh program is empty".into()));
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(wrapper)
            .args(["-o", "BatchMode=yes"])
            .args(&self.options)
            .args(extra)
            .arg("--")
            .arg(host)
            .arg(remote);
        Ok(cmd)
    }

    /// The executable's path on the hosts, and its directory.
    fn remote_exe(&self, spec: &AgentSpec) -> (String, String) {
        let name = spec
            .exe
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let dir = format!("{}/{}", self.cache, spec.fingerprint);
        (format!("{dir}/{name}"), dir)
    }

    /// Copies the executable to `host` unless it has it already.
    fn ensure_copied(&self, host: &str, spec: &AgentSpec) -> Result<()> {
        let (exe, dir) = self.remote_exe(spec);
        let start_failed = |message: String| Error::Start {
            name: format!("host agent on {host}"),
            pid: 0,
            message,
        };
        let probe = super::run_within(
            &mut self.command(host, &format!("test -x {}", shell_word(&exe)))?,
            self.probe_timeout,
        )
        .map_err(|e| start_failed(format!("cannot run ssh: {e}")))?;
        let Some((status, said)) = probe else {
            return Err(start_failed(format!(
                "ssh to {host} answered nothing within {:?}: the host, its sshd or its login \
                 hangs",
                self.probe_timeout
            )));
        };
        if status.success() {
            return Ok(());
        }
        // 255 is ssh's own failure (no route, a refused key), not the test's answer.
        if status.code() == Some(SSH_FAILED) {
            return Err(start_failed(format!(
                "ssh cannot reach {host}: {}",
                said.trim()
            )));
        }
        tracing::debug!(%host, %exe, "copying the executable");
        // Written under a temporary name, then renamed once whole: an agent never runs half
        // a file. The input ends early, for `cat` as for the end of the file, when the
        // connection or the client ends midway: the size tells them apart, and a part is
        // removed. In `sh`, whatever the login shell.
        // This program's own copy is read from the running process: its path may hold
        // another build by now (a rebuild while it runs).
        let binary = match spec.fingerprint == crate::error::hex(crate::sys::fingerprint()) {
            true => crate::sys::open_executable(),
            false => std::fs::File::open(&spec.exe),
        }
        .map_err(|e| start_failed(format!("cannot read {}: {e}", spec.exe.display())))?;
        let size = binary.metadata()?.len();
        let tmp = format!("{}.part.$$", shell_word(&exe));
        let script = format!(
            "mkdir -p {d} && cat > {tmp} && test $(wc -c < {tmp}) -eq {size} && \
             chmod 755 {tmp} && mv -f {tmp} {e} || {{ n=$(wc -c < {tmp}); rm -f {tmp}; \
             echo \"$n of {size} bytes written\" >&2; exit 1; }}",
            d = shell_word(&dir),
            e = shell_word(&exe),
        );
        let script = format!("sh -c {}", shell_word(&script));
        let out = self
            .command_with(host, &script, &self.silence_limit())?
            .stdin(binary)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| start_failed(format!("cannot run ssh: {e}")))?;
        if !out.status.success() {
            return Err(start_failed(format!(
                "cannot copy the executable to {exe}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// The options that end an `ssh` whose host answers nothing for the probe timeout:
    /// the connection's set-up is bounded by it, and once logged in, three keepalives a
    /// third of it apart that go unanswered end the session. ssh refuses a time over
    /// `i32::MAX` seconds ("invalid time value") and counts a connection timeout in
    /// milliseconds in an `int`: a longer probe timeout (up to `Duration::MAX`) counts as
    /// [`MOST_SILENCE_SECS`] here.
    fn silence_limit(&self) -> Vec<String> {
        let secs = self.probe_timeout.as_secs().clamp(3, MOST_SILENCE_SECS);
        vec![
            "-o".into(),
            format!("ConnectTimeout={secs}"),
            "-o".into(),
            format!("ServerAliveInterval={}", secs / 3),
            "-o".into(),
            "ServerAliveCountMax=3".into(),
        ]
    }

    /// Where the executable is cached on `host` (the cache directory, the binary's
    /// fingerprint and its file name), for `spec`.
    pub fn cached_path(&self, spec: &AgentSpec) -> String {
        self.remote_exe(spec).0
    }
}

/// The longest silence, in seconds, ssh's options are given (some 24.8 days: the most whose
/// milliseconds fit ssh's `int`).
const MOST_SILENCE_SECS: u64 = i32::MAX as u64 / 1000;

impl Launcher for Ssh {
    fn hosts(&self) -> usize {
        self.hosts.len()
    }

    fn workers_per_host(&self) -> usize {
        self.workers
    }

    fn launch(&self, spec: &AgentSpec) -> Result<Launched> {
        let Some(host) = self.hosts.get(spec.id) else {
            return Err(Error::InvalidArgument(format!(
                "the ssh launcher has {} hosts, not {}",
                self.hosts.len(),
                spec.id + 1
            )));
        };
        self.ensure_copied(host, spec)?;
        let (exe, _) = self.remote_exe(spec);
        let mut line = vec![shell_word(&exe)];
        line.extend(spec.agent_args().iter().map(|a| shell_word(a)));
        let mut child = self
            .command(host, &format!("exec {}", line.join(" ")))?
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Start {
                name: format!("host agent on {host}"),
                pid: 0,
                message: format!("cannot run ssh: {e}"),
            })?;
        // The agent reads its key from its first line of input; the next tells it to exit
        // once its input ends, which is when this ssh ends: the write end stays open with
        // the process, so that ending the session (a shutdown) ends the remote agent.
        let told = match child.stdin.as_mut() {
            Some(stdin) => stdin.write_all(
                format!("{}\n{}\n", spec.authkey_hex, crate::cluster::END_WITH_INPUT).as_bytes(),
            ),
            None => Ok(()),
        };
        let launched = Launched::process(child);
        if let Err(e) = told {
            return Err(Error::Start {
                name: format!("host agent on {host}"),
                pid: launched.pid().unwrap_or(0),
                message: format!("cannot write the key to ssh: {e}"),
            });
        }
        tracing::debug!(%host, pid = ?launched.pid(), "host agent launched over ssh");
        Ok(launched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_takes_the_silence_limit_of_any_probe_timeout() {
        if std::process::Command::new("ssh")
            .arg("-V")
            .output()
            .is_err()
        {
            println!("skipped: no ssh");
            return;
        }
        for timeout in [
            Duration::ZERO,
            Ssh::DEFAULT_PROBE_TIMEOUT,
            Duration::from_secs(40 * 86_400),
            Duration::MAX,
        ] {
            let options = Ssh::hosts(["n1"]).probe_timeout(timeout).silence_limit();
            // `-G` prints the configuration ssh would use, and connects nowhere.
            let out = std::process::Command::new("ssh")
                .arg("-G")
                .args(&options)
                .arg("n1")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{timeout:?}: {options:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn a_host_ssh_cannot_reach_is_named_with_ssh_s_reason() {
        // An `ssh` that fails as ssh does (exit 255, its reason on stderr).
        let ssh = Ssh::hosts(["n1"]).program([
            "sh",
            "-c",
            "echo 'ssh: connect to host n1 port 22: Connection refused' >&2; exit 255",
            "ssh",
        ]);
        let spec = AgentSpec {
            exe: std::env::current_exe().unwrap(),
            address: "head:7000".into(),
            id: 0,
            workers: 1,
            authkey_hex: "00".into(),
            fingerprint: "ff".into(),
        };
        let e = ssh.launch(&spec).unwrap_err().to_string();
        assert!(
            e.contains("cannot reach n1") && e.contains("Connection refused"),
            "{e}"
        );
    }
}
