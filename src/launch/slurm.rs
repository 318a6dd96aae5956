//! [`Slurm`]: host agents started by Slurm, with `srun` inside an allocation and `sbatch`
//! jobs outside one.

use std::process::Stdio;

use super::{AgentSpec, Launched, Launcher, shell_word};
use crate::error::{Error, Result};

/// Starts host agents through Slurm (dask-jobqueue's shape): one agent per node.
///
/// - **Inside an allocation** (`SLURM_JOB_ID` is set: the program runs under `salloc` or
///   in a batch script), each host is a job step, `srun --nodes=1 --ntasks=1`, on a node of
///   the allocation.
/// - **Outside one**, each host is a batch job of its own, `sbatch --nodes=1 --ntasks=1
///   --cpus-per-task=<workers>` (a CPU for each of its workers; an
///   [`option`](Self::option) `--cpus-per-task=...` or `--exclusive` overrides it), so
///   [`Cluster::scale`](crate::Cluster::scale) asks Slurm for more nodes; each job is
///   cancelled (`scancel`) when the cluster is dropped, and a running one ends by itself
///   when the head dies (after the head deadline at most); one still pending when the head
///   dies without dropping the cluster (killed) waits in the queue until Slurm starts it,
///   and its agent then exits within 30 s, finding no head (`--time` bounds what such a job
///   may hold). A pool's start that finds no host's room
///   within its start timeout tells how each job stands, as `squeue` says (`job 12: PENDING
///   (Resources)`, or `FAILED` for one whose agent never joined), asking for 3 s at most.
///
/// The key travels in the step's or job's environment (Slurm exports the submitter's
/// environment), never on its command line. Options such as `--partition`, `--time` or
/// `--account` go to every `srun` or `sbatch` through [`option`](Self::option).
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// let nodes = mp::launch::Slurm::nodes(4)
///     .workers_per_host(32)
///     .option("--partition=compute")
///     .option("--time=01:00:00");
/// # let _ = nodes;
/// ```
#[derive(Debug, Clone)]
pub struct Slurm {
    nodes: usize,
    workers: usize,
    options: Vec<String>,
}

impl Slurm {
    /// A launcher that starts `n` nodes when the cluster is built (0: none until
    /// [`Cluster::scale`](crate::Cluster::scale)), one worker per core of this machine each
    /// unless told otherwise.
    pub fn nodes(n: usize) -> Slurm {
        Slurm {
            nodes: n,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            options: Vec::new(),
        }
    }

    /// How many workers each node runs.
    pub fn workers_per_host(mut self, n: usize) -> Slurm {
        self.workers = n.max(1);
        self
    }

    /// One more argument for every `srun` or `sbatch` (`--partition=...`, say).
    pub fn option(mut self, arg: impl Into<String>) -> Slurm {
        self.options.push(arg.into());
        self
    }

    fn start_failed(spec: &AgentSpec, message: String) -> Error {
        Error::Start {
            name: format!("host agent {} (Slurm)", spec.id),
            pid: 0,
            message,
        }
    }
}

/// The job id in what `sbatch --parsable` printed (`<id>` or `<id>;<cluster>`), on its last
/// line that holds one: a wrapper of the site's, or a filter plugin, may print other lines
/// first, and the job is submitted all the same.
fn parsable_job_id(stdout: &str) -> Option<String> {
    stdout.lines().rev().find_map(|line| {
        let id = line.trim().split(';').next()?;
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
    })
}

impl Launcher for Slurm {
    fn hosts(&self) -> usize {
        self.nodes
    }

    fn workers_per_host(&self) -> usize {
        self.workers
    }

    fn launch(&self, spec: &AgentSpec) -> Result<Launched> {
        let name = format!("tokio-multiprocessing-agent-{}", spec.id);
        if std::env::var_os("SLURM_JOB_ID").is_some() {
            let child = std::process::Command::new("srun")
                .args(["--nodes=1", "--ntasks=1", "--job-name", &name])
                .args(&self.options)
                .arg(&spec.exe)
                .args(spec.agent_args())
                .env(crate::cluster::AUTHKEY_ENV, &spec.authkey_hex)
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| Self::start_failed(spec, format!("cannot run srun: {e}")))?;
            tracing::debug!(
                id = spec.id,
                pid = child.id(),
                "host agent launched with srun"
            );
            return Ok(Launched::process(child));
        }
        let mut line = vec![shell_word(&spec.exe.display().to_string())];
        line.extend(spec.agent_args().iter().map(|a| shell_word(a)));
        let out = std::process::Command::new("sbatch")
            .args(["--parsable", "--nodes=1", "--ntasks=1", "--job-name", &name])
            .arg(format!("--cpus-per-task={}", self.workers))
            .args(&self.options)
            .arg("--wrap")
            .arg(format!("exec {}", line.join(" ")))
            .env(crate::cluster::AUTHKEY_ENV, &spec.authkey_hex)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Self::start_failed(spec, format!("cannot run sbatch: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(Self::start_failed(
                spec,
                format!(
                    "sbatch failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        let Some(job) = parsable_job_id(&stdout) else {
            return Err(Self::start_failed(
                spec,
                format!(
                    "sbatch succeeded but printed no job id ({:?}; {}): a job it submitted is \
                     not cancelled with the cluster",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        };
        tracing::debug!(id = spec.id, job = %job, "host agent submitted with sbatch");
        let mut cancel = std::process::Command::new("scancel");
        cancel.arg(&job);
        let state = [
            "squeue",
            "--noheader",
            "--states=all",
            "--jobs",
            &job,
            "--format=%T (%r)",
        ];
        Ok(Launched::job(cancel).state(format!("job {job}"), state))
    }
}
