//! The `Ssh` launcher end to end against a real `sshd` (Debian's openssh-server) running in
//! a network namespace this test makes, with a temporary host key and a temporary
//! authorized key: the executable is copied to the host's cache (it lacks it), the agent
//! starts over ssh with its key on stdin, and a pool's tasks run in the host's namespace.
//! Skipped, with a message, where namespaces cannot be made or sshd is not installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::netns::Net;
use support::process::BoxError;
use support::{TempPath, TestResult, eventually, temp_path};
use tokio_multiprocessing::{self as mp, Cluster, Pool};

/// The environment variables that tell the head helper its namespaces and ssh directory.
const NET_VAR: &str = "TKMP_TEST_NET";
const DIR_VAR: &str = "TKMP_SSH_DIR";

fn main() {
    mp::init();
    if support::process::helper_mode().as_deref() == Some("rebuilt-head") {
        support::process::run_as_helper(rebuilt_head());
    }
    support::run_mostly_waiting(trials![
        ssh_launcher_copies_the_binary_and_runs_workers_on_the_host,
        a_frozen_host_fails_the_build_instead_of_holding_it,
        a_copy_cut_short_leaves_no_file_to_run,
        a_host_frozen_midway_through_the_copy_fails_the_build,
        shutdown_ends_the_agents_on_the_host,
        a_head_rebuilt_while_it_runs_copies_the_build_it_runs,
    ]);
}

fn netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn square_where(x: u64) -> (u64, String) {
    (x * x, netns())
}

const SSHD: &str = "/usr/sbin/sshd";
const PORT: &str = "2222";

fn run(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Host and client keys, an authorized key and an sshd configuration in `dir`, for sshd
/// listening on `address`.
fn configure(dir: &Path, address: &str) -> Result<PathBuf, BoxError> {
    for key in ["host_key", "client_key"] {
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(key)))?;
    }
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
    let host_pub = std::fs::read_to_string(dir.join("host_key.pub"))?;
    std::fs::write(
        dir.join("known_hosts"),
        format!("[{address}]:{PORT} {host_pub}"),
    )?;
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {PORT}\nListenAddress {address}\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
            d = dir.display()
        ),
    )?;
    Ok(config)
}

/// A real sshd in host 0 of a [`Net`], with its keys in a temporary directory; killed
/// when dropped.
struct Sshd {
    sshd: std::process::Child,
    dir: TempPath,
    net: Net,
}

/// The host's address, in its namespace.
const HOST: &str = "10.77.1.2";

impl Sshd {
    /// `None` (with the reason printed) where sshd or namespaces are missing.
    async fn start(tag: &str) -> Result<Option<Sshd>, BoxError> {
        if !Path::new(SSHD).exists() {
            println!("skipped: {SSHD} is not installed (Debian's openssh-server)");
            return Ok(None);
        }
        let Some(net) = Net::new(1) else {
            return Ok(None);
        };
        let dir = temp_path(&format!("ssh-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let config = configure(&dir, HOST)?;
        // sshd's privilege separation directory, which the package's service makes at start.
        std::fs::create_dir_all("/run/sshd")?;
        // The host's root logs in to a home of its own, empty as a fresh account's: the
        // shell files of this machine's root (which may wait, as pyenv's rehash does for a
        // lock a killed login left) are not the host's. `ip netns exec` gives the host a
        // mount namespace of its own, where the home is bound over /root.
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let sshd = Command::new("ip")
            .args(["netns", "exec", &net.host_ns(0), "sh", "-c"])
            .arg(r#"mount --bind "$1" /root && exec "$2" -D -e -f "$3""#)
            .arg("sh")
            .args([home.as_os_str(), SSHD.as_ref(), config.as_os_str()])
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let sshd = Sshd { sshd, dir, net };
        // sshd is up once it listens.
        ensure!(
            eventually(Duration::from_secs(20), || {
                Command::new("ip")
                    .args(["netns", "exec", &sshd.net.host_ns(0), "ss", "-Hltn"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(":2222"))
            })
            .await,
            "sshd did not start"
        );
        Ok(Some(sshd))
    }

    fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// A launcher for the host, its client in the head's namespace, which routes to it.
    fn launcher(&self) -> mp::launch::Ssh {
        launcher_in(&self.net, &self.dir)
    }

    /// [`launcher`](Self::launcher), whose copy of the executable goes through the shell
    /// command `filter` (`head -c 1000`) on its way to ssh.
    fn launcher_copying_through(&self, filter: &str) -> mp::launch::Ssh {
        let ssh =
            format!(r#"case "$*" in *"cat >"*) {filter} | ssh "$@";; *) exec ssh "$@";; esac"#);
        self.launcher().program([
            "ip",
            "netns",
            "exec",
            &self.net.head_ns(),
            "sh",
            "-c",
            &ssh,
            "ssh",
        ])
    }
}

/// A launcher for the host of `net` whose sshd's keys are in `dir` (see [`Sshd`]).
fn launcher_in(net: &Net, dir: &Path) -> mp::launch::Ssh {
    let d = dir.display().to_string();
    mp::launch::Ssh::hosts([format!("root@{HOST}")])
        .workers_per_host(2)
        .program(["ip", "netns", "exec", &net.head_ns(), "ssh"])
        .option("-p")
        .option(PORT)
        .option("-i")
        .option(format!("{d}/client_key"))
        .option("-o")
        .option("IdentitiesOnly=yes")
        .option("-o")
        .option(format!("UserKnownHostsFile={d}/known_hosts"))
        .cache_dir(format!("{d}/cache"))
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SIGKILL ends a stopped sshd too.
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        self.net.signal_host(0, nix::sys::signal::Signal::SIGKILL);
    }
}

async fn ssh_launcher_copies_the_binary_and_runs_workers_on_the_host() -> TestResult {
    let Some(sshd) = Sshd::start("copies").await? else {
        return Ok(());
    };
    let cache = sshd.cache();
    let cluster = Cluster::builder()
        .listener(sshd.net.listen()?)
        .launcher(sshd.launcher().option("-o").option("ConnectTimeout=10"))
        .build()
        .await?;
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    // The binary was copied into the cache, under its fingerprint.
    let exe = std::env::current_exe()?;
    let name = exe.file_name().ok_or("no file name")?;
    let copies: Vec<PathBuf> = std::fs::read_dir(&cache)?
        .flatten()
        .map(|e| e.path().join(name))
        .collect();
    ensure!(copies.len() == 1, "cache holds {copies:?}");
    ensure!(
        std::fs::read(&copies[0])? == std::fs::read(&exe)?,
        "the copy differs from the executable"
    );
    // The pool's variable and directory reach the workers over ssh.
    let pool = Pool::builder()
        .cluster(&cluster)
        .env("TKMP_OVER_SSH", "yes")
        .current_dir(&cache)
        .build()
        .await?;
    let out = pool.map(square_where, 0..1000u64).await?;
    let here = netns();
    ensure!(
        out.iter()
            .enumerate()
            .all(|(i, (sq, ns))| *sq == (i * i) as u64 && *ns != here),
        "the tasks did not all run on the ssh host"
    );
    let (var, cwd) = pool
        .apply(var_and_dir, ("TKMP_OVER_SSH".to_string(),))
        .await?;
    ensure!(var.as_deref() == Some("yes"), "the worker has {var:?}");
    ensure!(cwd == cache, "the worker runs in {cwd:?}");
    Ok(())
}

/// The variable `name` and the working directory of the worker that runs it.
fn var_and_dir(name: String) -> (Option<String>, PathBuf) {
    let cwd = std::env::current_dir().unwrap_or_default();
    (std::env::var(name).ok(), cwd)
}

async fn a_frozen_host_fails_the_build_instead_of_holding_it() -> TestResult {
    let Some(sshd) = Sshd::start("frozen").await? else {
        return Ok(());
    };
    // The host's kernel still takes the connection; nothing answers on it.
    sshd.net.signal_host(0, nix::sys::signal::Signal::SIGSTOP);
    let built = Cluster::builder()
        .listener(sshd.net.listen()?)
        .launcher(sshd.launcher().probe_timeout(Duration::from_secs(4)))
        .build()
        .await;
    sshd.net.signal_host(0, nix::sys::signal::Signal::SIGCONT);
    let e = match built {
        Ok(_) => return Err("a cluster was built on a frozen host".into()),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains(&format!("root@{HOST}")) && e.contains("answered nothing"),
        "the error does not say that the host answered nothing: {e}"
    );
    Ok(())
}

async fn a_copy_cut_short_leaves_no_file_to_run() -> TestResult {
    let Some(sshd) = Sshd::start("cut").await? else {
        return Ok(());
    };
    // An ssh whose copy ends after 1,000 bytes of the executable, as when the connection
    // or the client ends midway: the remote side sees an end of input.
    let launcher = sshd.launcher_copying_through("head -c 1000");
    let built = Cluster::builder()
        .listener(sshd.net.listen()?)
        .launcher(launcher)
        .build()
        .await;
    let left: Vec<PathBuf> = std::fs::read_dir(sshd.cache())?
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    ensure!(left.is_empty(), "the cut copy left {left:?} in the cache");
    let e = match built {
        Ok(_) => return Err("a cluster was built on a host whose copy was cut short".into()),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains("cannot copy the executable") && e.contains("1000 of "),
        "the error does not say the copy failed: {e}"
    );
    Ok(())
}

/// A host that freezes once the copy is under way (every process of its namespace
/// stopped after the first megabyte) fails the build within a few probe timeouts, naming
/// the copy; the code before waited on the copy for ever.
async fn a_host_frozen_midway_through_the_copy_fails_the_build() -> TestResult {
    let Some(sshd) = Sshd::start("frozen-copy").await? else {
        return Ok(());
    };
    let freeze = format!(
        "{{ head -c 1000000; ip netns pids {} | xargs kill -STOP; cat; }}",
        sshd.net.host_ns(0)
    );
    // Long enough for the login before the copy on a loaded machine (3 s was overrun).
    let launcher = sshd
        .launcher_copying_through(&freeze)
        .probe_timeout(Duration::from_secs(6));
    let built = tokio::time::timeout(
        Duration::from_secs(60),
        Cluster::builder()
            .listener(sshd.net.listen()?)
            .launcher(launcher)
            .build(),
    )
    .await;
    sshd.net.signal_host(0, nix::sys::signal::Signal::SIGCONT);
    let e = match built {
        Err(_) => return Err("the build still waits on the frozen copy after 60 s".into()),
        Ok(Ok(_)) => return Err("a cluster was built on a host frozen midway".into()),
        Ok(Err(e)) => e.to_string(),
    };
    ensure!(
        e.contains("cannot copy the executable") && e.contains(&format!("root@{HOST}")),
        "the error does not name the host and the copy: {e}"
    );
    Ok(())
}

/// `shutdown` ends what it launched: over ssh, the agent on the host (and its workers), not
/// only the ssh client on this machine, and the pool loses them.
async fn shutdown_ends_the_agents_on_the_host() -> TestResult {
    let Some(sshd) = Sshd::start("shutdown").await? else {
        return Ok(());
    };
    let cluster = Cluster::builder()
        .listener(sshd.net.listen()?)
        .launcher(sshd.launcher())
        .build()
        .await?;
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(
        pool.map(square_where, 0..4u64).await?.len() == 4,
        "the pool did not serve"
    );
    cluster.clone().shutdown().await?;
    let listener = sshd.sshd.id();
    ensure!(
        eventually(Duration::from_secs(20), || cluster.hosts() == 0
            && sshd.net.pids(0) == [listener])
        .await,
        "after shutdown, {} host(s) still joined, and the host runs {:?} beside sshd {listener}",
        cluster.hosts(),
        sshd.net.pids(0)
    );
    Ok(())
}

/// A head whose executable is replaced once it runs, as a rebuild does (another file
/// renamed over its path), then runs a map on the ssh host; prints `map ok` or the error.
async fn rebuilt_head() {
    let outcome = async {
        let exe = std::env::current_exe()?;
        let other = exe.with_extension("new");
        std::fs::write(&other, "#!/bin/sh\nexit 1\n")?;
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&other, &exe)?;
        let net = Net::attach(&std::env::var(NET_VAR)?).ok_or("no namespaces")?;
        let dir = PathBuf::from(std::env::var(DIR_VAR)?);
        let cluster = Cluster::builder()
            .listener(net.listen()?)
            .launcher(launcher_in(&net, &dir))
            .build()
            .await?;
        cluster.wait_for_hosts(1, Duration::from_secs(20)).await?;
        let pool = Pool::builder().cluster(&cluster).build().await?;
        let out = pool.map(square_where, 0..10u64).await?;
        ensure!(out[9].0 == 81, "the map gave {out:?}");
        Ok::<(), BoxError>(())
    }
    .await;
    match outcome {
        Ok(()) => println!("map ok"),
        Err(e) => println!("error: {e}"),
    }
}

/// A head whose executable was replaced by a rebuild while it runs still starts its own
/// build on the host: the copy is read from the running process, where the code before
/// opened the replaced path and failed.
async fn a_head_rebuilt_while_it_runs_copies_the_build_it_runs() -> TestResult {
    let Some(sshd) = Sshd::start("rebuilt").await? else {
        return Ok(());
    };
    let head = sshd.dir.join("head");
    std::fs::copy(std::env::current_exe()?, &head)?;
    let out = tokio::time::timeout(
        Duration::from_secs(50),
        tokio::process::Command::new(&head)
            .env(support::process::MODE_VAR, "rebuilt-head")
            .env(NET_VAR, sshd.net.name())
            .env(DIR_VAR, &sshd.dir)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        printed.trim() == "map ok",
        "the rebuilt head printed {printed:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
