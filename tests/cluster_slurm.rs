//! The `Slurm` launcher against a real single-node Slurm (Debian's slurm-wlm and munge),
//! configured and started by this test in a temporary directory, on loopback only:
//! `srun` inside `salloc` (the head runs as a helper under `salloc`), and `sbatch` jobs
//! outside an allocation through `Cluster::scale`. Skipped, with a message, when not root
//! or when Slurm or munge is not installed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::process::{BoxError, helper_mode, run_as_helper};
use support::{TestResult, eventually};
use tokio_multiprocessing::{self as mp, Cluster, Pool};

fn main() {
    mp::init();
    if helper_mode().as_deref() == Some("slurm-head") {
        run_as_helper(head_in_allocation());
    }
    support::run(trials![
        srun_inside_salloc_and_sbatch_through_scale,
        a_pool_without_room_names_the_pending_job_and_its_state,
        shutdown_says_which_job_it_could_not_cancel,
        an_sbatch_that_prints_a_banner_first_still_launches_its_job,
    ]);
}

/// A launcher of `nodes` batch jobs of `workers` workers each, their output discarded.
fn batch_jobs(nodes: usize, workers: usize) -> mp::launch::Slurm {
    mp::launch::Slurm::nodes(nodes)
        .workers_per_host(workers)
        .option("--output=/dev/null")
}

/// The Slurm job and step this worker runs in, from its environment.
fn slurm_job(x: u64) -> (u64, String, String) {
    let var = |k| std::env::var(k).unwrap_or_default();
    (x * x, var("SLURM_JOB_ID"), var("SLURM_STEP_ID"))
}

/// A munge daemon, slurmctld and slurmd for one node (this machine, at 127.0.0.1),
/// stopped and their directory removed when dropped. One at a time: the node is this
/// machine, and the tests point the launcher at theirs through the environment.
struct MiniSlurm {
    dir: PathBuf,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Taken by each [`MiniSlurm`] while it runs.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl MiniSlurm {
    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    async fn start() -> Result<Option<MiniSlurm>, BoxError> {
        MiniSlurm::start_with("").await
    }

    /// [`start`](Self::start), with the lines `conf` added to its `slurm.conf`.
    async fn start_with(conf: &str) -> Result<Option<MiniSlurm>, BoxError> {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            println!("skipped: the Slurm test runs slurmd, which needs root");
            return Ok(None);
        }
        for tool in [
            "/usr/sbin/munged",
            "/usr/sbin/slurmctld",
            "/usr/sbin/slurmd",
            "/usr/bin/sbatch",
        ] {
            if !Path::new(tool).exists() {
                println!("skipped: {tool} is not installed (Debian's slurm-wlm and munge)");
                return Ok(None);
            }
        }
        let turn = TURN.lock().await;
        let dir = std::env::temp_dir().join(support::unique_name("tkmp-slurm"));
        let slurm = MiniSlurm {
            dir: dir.clone(),
            _turn: turn,
        };
        for sub in ["state", "spool", "munge"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let munge = dir.join("munge");
        std::fs::set_permissions(&munge, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
        std::fs::write(munge.join("munge.key"), key)?;
        std::fs::set_permissions(
            munge.join("munge.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )?;
        let m = |f: &str| munge.join(f).display().to_string();
        run(Command::new("munged").args([
            &format!("--key-file={}", m("munge.key")),
            &format!("--socket={}", m("sock")),
            &format!("--pid-file={}", m("pid")),
            &format!("--log-file={}", m("log")),
            &format!("--seed-file={}", m("seed")),
            "--force",
        ]))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // Two ports the kernel picks free on loopback, let go just before the daemons bind
        // them: a port derived from the pid would meet a run with the same pid in another
        // container on the same network.
        let (ctld_port, d_port) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0")?;
            let b = std::net::TcpListener::bind("127.0.0.1:0")?;
            (a.local_addr()?.port(), b.local_addr()?.port())
        };
        let d = dir.display();
        std::fs::write(
            slurm.conf(),
            format!(
                "ClusterName=tkmp\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={ctld_port}\n\
                 SlurmdPort={d_port}\nAuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\n\
                 SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/ctld.pid\nSlurmdPidFile={d}/d.pid\n\
                 SlurmctldLogFile={d}/ctld.log\nSlurmdLogFile={d}/d.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nReturnToService=2\n\
                 MpiDefault=none\nSwitchType=switch/none\nJobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n{conf}",
                m("sock"),
            ),
        )?;
        let conf = slurm.conf();
        run(Command::new("slurmctld").arg("-i").arg("-f").arg(&conf))?;
        run(Command::new("slurmd").arg("-f").arg(&conf))?;
        ensure!(
            eventually(Duration::from_secs(30), || slurm.idle()).await,
            "the node did not come up: {}",
            std::fs::read_to_string(slurm.dir.join("d.log")).unwrap_or_default()
        );
        // SAFETY: the launcher's commands, which read the environment when they start, run
        // only in the test that holds this instance, one at a time.
        unsafe {
            std::env::set_var("SLURM_CONF", slurm.conf());
            std::env::remove_var("SLURM_JOB_ID");
        }
        Ok(Some(slurm))
    }

    /// This machine's name, the node's.
    fn node() -> Result<String, BoxError> {
        Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?
            .trim()
            .to_string())
    }

    /// A Slurm command with this instance's configuration.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf()).env_remove("SLURM_JOB_ID");
        c
    }

    fn idle(&self) -> bool {
        self.command("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) slurmctld, as a controller that does not
    /// answer.
    fn signal_controller(&self, signal: nix::sys::signal::Signal) -> Result<(), BoxError> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("ctld.pid"))?
            .trim()
            .parse()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// Succeeds once no job is listed (within 30 s); else names those left `after` what.
    async fn no_job_left(&self, after: &str) -> TestResult {
        ensure!(
            eventually(Duration::from_secs(30), || self.jobs().is_empty()).await,
            "jobs left after {after}: {}",
            self.jobs()
        );
        Ok(())
    }

    fn jobs(&self) -> String {
        self.command("squeue")
            .args(["-h", "-o", "%i"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|e| e.to_string())
    }
}

fn run(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

impl Drop for MiniSlurm {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = self.command("scancel").arg("--user=root").status();
        let pids: Vec<Pid> = ["ctld.pid", "d.pid", "munge/pid"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .filter_map(|p| p.trim().parse::<i32>().ok())
            .map(Pid::from_raw)
            .collect();
        for &pid in &pids {
            let _ = kill(pid, Signal::SIGTERM);
        }
        // The daemons are not our children: wait for them to be gone, then insist.
        for _ in 0..500 {
            if pids.iter().all(|&p| kill(p, None).is_err()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for &pid in &pids {
            let _ = kill(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The head as `salloc` runs it: a cluster whose agent `srun` starts, a map, one line.
async fn head_in_allocation() {
    let outcome = async {
        let cluster = Cluster::builder()
            .launcher(mp::launch::Slurm::nodes(1).workers_per_host(2))
            .build()
            .await?;
        cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
        let pool = Pool::builder().cluster(&cluster).build().await?;
        let out = pool.map(slurm_job, 0..1000u64).await?;
        let ok = out
            .iter()
            .enumerate()
            .all(|(i, (sq, _, _))| *sq == (i * i) as u64);
        let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
        let in_step = out.iter().all(|(_, j, step)| *j == job && !step.is_empty());
        Ok::<_, BoxError>(format!("map {ok} in a step of job {job}: {in_step}"))
    }
    .await;
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => println!("error: {e}"),
    }
}

async fn srun_inside_salloc_and_sbatch_through_scale() -> TestResult {
    let Some(slurm) = MiniSlurm::start().await? else {
        return Ok(());
    };
    // srun inside salloc: the head runs in the allocation.
    let exe = std::env::current_exe()?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::from({
            let mut c = slurm.command("salloc");
            c.args(["--nodes=1", "--quiet"])
                .arg(&exe)
                .env(support::process::MODE_VAR, "slurm-head")
                .stdin(std::process::Stdio::null());
            c
        })
        .kill_on_drop(true)
        .output(),
    )
    .await??;
    let printed = String::from_utf8_lossy(&out.stdout);
    ensure!(
        printed.starts_with("map true in a step of job ") && printed.trim_end().ends_with(": true"),
        "the head under salloc printed {printed:?} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    // sbatch outside an allocation: scale(1) submits a job whose agent joins.
    let cluster = Cluster::builder()
        .launcher(batch_jobs(0, 2))
        .build()
        .await?;
    ensure!(
        eventually(Duration::from_secs(30), || slurm.jobs().is_empty()).await,
        "the allocation's job is still listed: {}",
        slurm.jobs()
    );
    ensure!(cluster.hosts() == 0, "a host before scale");
    cluster.scale(1).await?;
    let job = slurm.jobs();
    ensure!(!job.is_empty(), "scale(1) submitted no job");
    let cpus = slurm
        .command("squeue")
        .args(["-h", "-o", "%C", "-j", &job])
        .output()?;
    let cpus = String::from_utf8_lossy(&cpus.stdout).trim().to_string();
    ensure!(cpus == "2", "the job of 2 workers asked for {cpus:?} CPUs");
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(pool.processes() == 2, "{} processes", pool.processes());
    let out = pool.map(slurm_job, 0..1000u64).await?;
    ensure!(
        out.iter()
            .enumerate()
            .all(|(i, (sq, j, _))| *sq == (i * i) as u64 && *j == job),
        "the tasks did not run in job {job}"
    );
    drop(pool);
    drop(cluster);
    slurm.no_job_left("the cluster was dropped").await?;
    Ok(())
}

async fn a_pool_without_room_names_the_pending_job_and_its_state() -> TestResult {
    let Some(slurm) = MiniSlurm::start().await? else {
        return Ok(());
    };
    // A drained node takes no job: the agent's job waits.
    run(slurm.command("scontrol").args([
        "update",
        &format!("NodeName={}", MiniSlurm::node()?),
        "State=DRAIN",
        "Reason=tkmp-test",
    ]))?;
    let cluster = Cluster::builder()
        .launcher(batch_jobs(1, 1))
        .build()
        .await?;
    let job = slurm.jobs();
    ensure!(!job.is_empty(), "no job submitted");
    let e = match Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(2))
        .build()
        .await
    {
        Ok(_) => return Err("a pool started with its only job pending".into()),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains("no host of the cluster had room")
            && e.contains(&format!("job {job}: PENDING (")),
        "the error does not name the pending job {job}: {e}"
    );
    drop(cluster);
    slurm.no_job_left("the cluster was dropped").await?;
    Ok(())
}

async fn shutdown_says_which_job_it_could_not_cancel() -> TestResult {
    use nix::sys::signal::Signal;
    // A `scancel` gives up on a controller that does not answer after this (10 s unless told).
    let Some(slurm) = MiniSlurm::start_with("MessageTimeout=3\n").await? else {
        return Ok(());
    };
    let cluster = Cluster::builder()
        .launcher(batch_jobs(1, 1))
        .build()
        .await?;
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    let job = slurm.jobs();
    // scancel cannot reach a controller that does not answer.
    slurm.signal_controller(Signal::SIGSTOP)?;
    let ended = cluster.clone().shutdown().await;
    slurm.signal_controller(Signal::SIGCONT)?;
    match ended {
        Ok(()) => return Err(format!("shutdown said it ended job {job}, which runs on").into()),
        Err(e) => {
            let e = e.to_string();
            ensure!(
                e.contains(&format!("\"scancel\" \"{job}\" failed")),
                "the error does not name the cancel of job {job}: {e}"
            );
        }
    }
    // Its agent, told to exit, ends the job all the same, while the cluster lives.
    slurm.no_job_left("shutdown").await?;
    drop(cluster);
    Ok(())
}

/// An `sbatch` that prints a line before the job id (a site's wrapper, or a filter plugin,
/// that greets): the job it submitted is the cluster's, whose agent joins and serves, and
/// which is cancelled with the cluster. The code before took the greeting for the id and
/// failed the build ("sbatch failed (exit status: 0)"), leaving the job it had submitted
/// running, never cancelled.
async fn an_sbatch_that_prints_a_banner_first_still_launches_its_job() -> TestResult {
    let Some(slurm) = MiniSlurm::start().await? else {
        return Ok(());
    };
    let bin = slurm.dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let sbatch = bin.join("sbatch");
    std::fs::write(
        &sbatch,
        "#!/bin/sh\necho 'Welcome: jobs go to partition debug'\nexec /usr/bin/sbatch \"$@\"\n",
    )?;
    std::fs::set_permissions(&sbatch, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut wrapped = std::ffi::OsString::from(bin.as_os_str());
    wrapped.push(":");
    wrapped.push(&path);
    // SAFETY: as in `MiniSlurm::start`: the launcher's commands run only in the test that
    // holds the Slurm instance, one at a time.
    unsafe { std::env::set_var("PATH", &wrapped) };
    let built = Cluster::builder().launcher(batch_jobs(1, 1)).build().await;
    // SAFETY: as above.
    unsafe { std::env::set_var("PATH", &path) };
    let cluster = match built {
        Ok(c) => c,
        Err(e) => {
            return Err(
                format!("the build failed ({e}), with jobs {:?} left", slurm.jobs()).into(),
            );
        }
    };
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(
        pool.apply(slurm_job, (7,)).await?.0 == 49,
        "the job's worker"
    );
    drop(pool);
    drop(cluster);
    slurm.no_job_left("the cluster was dropped").await?;
    Ok(())
}
