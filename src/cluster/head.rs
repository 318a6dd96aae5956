//! [`Cluster`]: the head's handle, and its table of agents and their workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc::UnboundedSender, oneshot, watch};

use super::MAX_WORKERS_PER_HOST;
use super::builder::ClusterBuilder;
use super::key;
use super::proto::ToAgent;
use crate::error::{Error, ExitCause, Result};
use crate::launch::{AgentSpec, Launched, Launcher, shell_word};
use crate::start::Environment;
use crate::wire::{FrameBuf, Framed};

/// Hosts that run the workers of [`Pool`](crate::Pool)s, each through a host agent that
/// dialled back to this program (see the [module docs](crate::cluster) for the design).
///
/// Build one with [`Cluster::builder`] (or [`Cluster::from_env`]), then a pool on it with
/// [`PoolBuilder::cluster`](crate::PoolBuilder::cluster): the pool's API is the same as for
/// local workers. A task's arguments cannot carry descriptors (a local `Queue`, `Event`,
/// `Pipe` or [`Fd`](crate::Fd)): such a task fails at submission.
///
/// `Cluster` is a cheap handle; clones share it. When the last one is dropped (pools hold
/// one), the head closes every agent's connection and kills the processes its launcher
/// started: the agents kill their workers and exit.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     mp::init(); // an agent or a worker never gets past this line
///     let cluster = mp::Cluster::builder()
///         .listen("0.0.0.0:0")
///         .advertise("head.example")
///         .launcher(mp::launch::Ssh::hosts(["n1", "n2"]).workers_per_host(8))
///         .build()
///         .await?;
///     let pool = mp::Pool::builder().cluster(&cluster).build().await?;
///     assert_eq!(pool.map(square, 0..1000).await?[999], 998_001);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Cluster {
    pub(super) inner: Arc<Inner>,
}

/// What the cluster's handles share.
pub(super) struct Inner {
    pub(super) table: Arc<Table>,
    /// The address agents dial.
    pub(super) address: String,
    pub(super) local: SocketAddr,
    pub(super) launcher: Option<Box<dyn Launcher>>,
    /// Held only for a moment, so that a runtime's thread may take it.
    pub(super) launched: Mutex<Vec<Launched>>,
    /// Held by a scale for as long as it launches, on its blocking thread: scales take
    /// turns, and nothing else waits for a launch.
    pub(super) scaling: Mutex<()>,
    /// How many times [`Cluster::shutdown`] was called: a scale asked before the last one
    /// launches no more hosts.
    pub(super) shutdowns: std::sync::atomic::AtomicU64,
    /// What [`Inner::launched_jobs`] told last, and when: the starts that find no room at
    /// once (a pool's every worker) ask the engine once.
    pub(super) job_states: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
    /// Set once [`Inner::abandon`] was called: a launch that returns afterwards ends what it
    /// started at once.
    pub(super) abandoned: std::sync::atomic::AtomicBool,
    /// Dropped with the last handle: the accept loop and every session end.
    pub(super) _shutdown: watch::Sender<()>,
}

impl Inner {
    fn launched(&self) -> MutexGuard<'_, Vec<Launched>> {
        self.launched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the error of a start that found no room adds about the processes launched on
    /// this machine whose host's agent is not connected: those that ended (a launcher
    /// command that failed at once, say), with their host's number, pid and exit status,
    /// and those that still run though their agent is not connected (a command that hangs,
    /// or waits for an engine that does not start the agent); empty if there are none.
    fn launches_not_joined(&self) -> String {
        let joined = self.table.launch_ids();
        let (mut ended, mut running) = (Vec::new(), Vec::new());
        for l in self.launched().iter_mut() {
            if joined.contains(&l.host.to_string()) {
                continue;
            }
            match (l.ended(), l.pid()) {
                (Some((pid, status)), _) => {
                    ended.push(format!("host {}: pid {pid} ({status})", l.host));
                }
                (None, Some(pid)) => running.push(format!("host {}: pid {pid}", l.host)),
                (None, None) => {}
            }
        }
        let mut told = String::new();
        if !ended.is_empty() {
            told.push_str(&format!(
                "; launched processes that ended: {} (their stderr is this program's)",
                ended.join(", ")
            ));
        }
        if !running.is_empty() {
            told.push_str(&format!(
                "; launched processes that still run, their agent not connected: {}",
                running.join(", ")
            ));
        }
        told
    }

    /// What the error of a start that found no room adds about the batch jobs launched (see
    /// [`Launched::state`]): how each stands, as its engine tells (a job pending for want of
    /// nodes, one that failed); empty if none was launched. The engine is asked at most
    /// once in [`JOB_STATES_FRESH`], and for [`JOB_STATES_WAIT`] at most.
    async fn launched_jobs(&self) -> String {
        let mut told = self.job_states.lock().await;
        if let Some((at, text)) = &*told
            && at.elapsed() < JOB_STATES_FRESH
        {
            return text.clone();
        }
        let jobs: Vec<(String, Vec<String>)> = self
            .launched()
            .iter()
            .filter_map(Launched::state_command)
            .collect();
        if jobs.is_empty() {
            return String::new();
        }
        let ask = tokio::task::spawn_blocking(move || crate::launch::job_states(&jobs));
        let text = match tokio::time::timeout(JOB_STATES_WAIT, ask).await {
            Ok(Ok(text)) => text,
            _ => format!("; the launched jobs' engine told nothing within {JOB_STATES_WAIT:?}"),
        };
        *told = Some((std::time::Instant::now(), text.clone()));
        text
    }

    /// Ends the agents launched so far, and each that a launch under way starts from now
    /// on as soon as it is started: nobody will hold this cluster (its build failed, or was
    /// dropped).
    pub(super) fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Release);
        self.end_launched();
    }

    /// The agents launched so far, taken: the caller ends them.
    fn take_launched(&self) -> Vec<Launched> {
        std::mem::take(&mut *self.launched())
    }

    /// Ends the agents launched so far without waiting for them: each is asked to end at
    /// once, and they share one grace period. On a runtime's thread, the wait is left to a
    /// blocking thread, which the runtime waits for when it stops: no task is held up.
    fn end_launched(&self) {
        let launched = self.take_launched();
        if launched.is_empty() {
            return;
        }
        let end = move || crate::launch::warn_failed(&crate::launch::end_all(launched));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(end)),
            Err(_) => end(),
        }
    }
}

/// Reaps launched process `pid` once it ends (`pidfd` turns readable), so that a launch
/// command that exits while its agent runs on (one that starts the agent in the background,
/// or asks an engine to, as `kubectl run` does) leaves no zombie for the cluster's life. Its
/// exit status stays, for the errors that name launches that ended.
async fn reap_when_ended(inner: Weak<Inner>, pidfd: std::os::fd::OwnedFd, pid: u32) {
    let Ok(fd) = crate::sys::register_owned(pidfd, tokio::io::Interest::READABLE) else {
        return;
    };
    if fd.readable().await.is_err() {
        return;
    }
    if let Some(inner) = inner.upgrade() {
        for l in inner.launched().iter_mut().filter(|l| l.pid() == Some(pid)) {
            l.ended();
        }
    }
}

/// The most launches a scale runs at once (see [`Cluster::scale`]).
const LAUNCHES_AT_ONCE: usize = 16;

/// How long what the engine told of the launched jobs is told again without asking.
const JOB_STATES_FRESH: Duration = Duration::from_secs(2);

/// How long the engine is given to tell how the launched jobs stand: a start's error comes
/// this much after its start timeout at most (Slurm's controller answers at once, or after
/// its message timeout of 10 s when it is down).
const JOB_STATES_WAIT: Duration = Duration::from_secs(3);

impl Drop for Inner {
    /// Ends the launched agents together ([`Inner::end_launched`]), so a cluster of many
    /// hosts is dropped in one grace period, and the drop itself holds up no task.
    fn drop(&mut self) {
        self.end_launched();
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("address", &self.address)
            .field("launcher", &self.launcher)
            .finish_non_exhaustive()
    }
}

/// The state shared by the handles and the sessions.
pub(super) struct Table {
    pub(super) key: Arc<[u8]>,
    pub(super) heartbeat_deadline: Duration,
    pub(super) head_deadline: Duration,
    state: Mutex<State>,
    /// Woken when an agent joins or leaves, or a worker ends: room may have appeared.
    pub(super) changed: Notify,
    /// Why the last connection the head refused was refused (a wrong key, another build):
    /// told with a wait for room that found none, so the program learns it, not only the
    /// log and the agent's stderr.
    last_refusal: Mutex<Option<String>>,
}

#[derive(Default)]
pub(super) struct State {
    next_agent: u64,
    next_token: u64,
    pub(super) agents: HashMap<u64, AgentEntry>,
    /// The ids of the hosts a [`Cluster::shutdown`] ended and no scale launched since: an
    /// agent that joins with one of them (one that a launch command started in the
    /// background, late) is refused, and exits.
    retired: std::collections::HashSet<String>,
    /// The ids of the hosts whose agent joined and then left (killed, its host lost) and
    /// that no agent joined with since: a scale launches them anew.
    left: std::collections::HashSet<String>,
}

/// One connected agent.
pub(super) struct AgentEntry {
    pub(super) host: Arc<str>,
    /// The id its launcher gave it (the host's number, for an agent a cluster launched).
    pub(super) launch_id: String,
    pub(super) capacity: usize,
    pub(super) tx: UnboundedSender<ToAgent>,
    pub(super) workers: HashMap<u64, WorkerEntry>,
    /// Its worker starts that failed since its last one that did (a directory or a
    /// program the host lacks): a start goes to a host without such failures while one has
    /// room.
    pub(super) failed_starts: u32,
}

/// One worker an agent was asked for.
#[derive(Default)]
pub(super) struct WorkerEntry {
    pub(super) pid: Option<u32>,
    /// Where its link goes when it dials.
    pub(super) link: Option<oneshot::Sender<Framed>>,
    /// Where its pid (or why it could not start) goes.
    pub(super) spawned: Option<oneshot::Sender<std::result::Result<u32, SpawnFailure>>>,
    /// Where its end goes.
    pub(super) exit: Option<oneshot::Sender<RemoteExit>>,
}

/// Why an agent started no worker: what it said, and its error when it sent one.
#[derive(Debug)]
pub(super) struct SpawnFailure {
    pub(super) message: String,
    pub(super) error: Option<Error>,
}

impl SpawnFailure {
    /// The error of a worker start that failed on `host`: an agent's [`Error::Io`] or
    /// [`Error::InvalidArgument`] (a directory missing on the host, a variable refused) as
    /// the same variant, and kind, as a local start's, naming the host; anything else as an
    /// [`Error::Start`].
    fn into_error(self, host: &str) -> Error {
        match self.error {
            Some(Error::Io(e)) => {
                Error::from(std::io::Error::new(e.kind(), format!("host {host}: {e}")))
            }
            Some(Error::InvalidArgument(m)) => Error::InvalidArgument(format!("host {host}: {m}")),
            _ => Error::Start {
                name: format!("cluster worker on host {host}"),
                pid: 0,
                message: self.message,
            },
        }
    }
}

/// How a remote worker ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteExit {
    /// Its exit code (Python's convention), or how its host was lost
    /// ([`ExitCause::HostLost`] or [`ExitCause::HostDisconnected`]).
    pub(crate) code: std::result::Result<i32, ExitCause>,
    /// The last task its started mark showed, once it was dead (0: none, or unknown when
    /// its host was lost).
    pub(crate) last_started: u64,
}

impl RemoteExit {
    /// The end of a worker whose host was lost by `how`.
    pub(super) fn lost(how: ExitCause) -> RemoteExit {
        RemoteExit {
            code: Err(how),
            last_started: 0,
        }
    }
}

/// A remote worker started and linked, for the pool to set up.
pub(crate) struct RemoteStart {
    pub(crate) host: Arc<str>,
    pub(crate) pid: u32,
    pub(crate) link: Framed,
    pub(crate) exit: oneshot::Receiver<RemoteExit>,
    pub(crate) kill: RemoteKill,
}

/// Kills one remote worker, through its agent.
#[derive(Debug, Clone)]
pub(crate) struct RemoteKill {
    table: Weak<Table>,
    agent: u64,
    token: u64,
}

impl RemoteKill {
    /// Asks the worker's agent to kill it; its exit is reported as any other. Does nothing
    /// once the agent is gone (its workers were then reported lost).
    pub(crate) fn kill(&self) {
        if let Some(t) = self.table.upgrade()
            && let Some(a) = t.lock().agents.get(&self.agent)
        {
            let _ = a.tx.send(ToAgent::Kill { token: self.token });
        }
    }
}

impl Table {
    pub(super) fn new(
        key: Vec<u8>,
        heartbeat_deadline: Duration,
        head_deadline: Duration,
    ) -> Table {
        Table {
            key: key.into(),
            heartbeat_deadline,
            head_deadline,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            last_refusal: Mutex::new(None),
        }
    }

    /// Notes why a connection from `peer` was refused.
    pub(super) fn refused(&self, peer: SocketAddr, why: &Error) {
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("{peer}: {why}"));
    }

    /// ` (the last connection the head refused: ...)`, or nothing if none was.
    fn last_refusal(&self) -> String {
        match &*self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => format!(" (the last connection the head refused: {why})"),
            None => String::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in an agent that its launcher called `launch_id` and that claims room for
    /// `capacity` workers, counted as at least 1 and at most [`MAX_WORKERS_PER_HOST`];
    /// returns its number, or `None` if a shutdown ended its host (see [`Table::retire`]).
    pub(super) fn add_agent(
        &self,
        (host, launch_id): (Arc<str>, String),
        capacity: usize,
        tx: UnboundedSender<ToAgent>,
    ) -> Option<u64> {
        let capacity = capacity.clamp(1, MAX_WORKERS_PER_HOST);
        let mut s = self.lock();
        if s.retired.contains(&launch_id) {
            return None;
        }
        s.left.remove(&launch_id);
        let id = s.next_agent;
        s.next_agent += 1;
        s.agents.insert(
            id,
            AgentEntry {
                host,
                launch_id,
                capacity,
                tx,
                workers: HashMap::new(),
                failed_starts: 0,
            },
        );
        drop(s);
        self.changed.notify_waiters();
        Some(id)
    }

    /// Ends the agents of the launched hosts `ids`, whatever runs them: each connected one
    /// is told to exit (it kills its workers first) and given no more workers meanwhile,
    /// and one that joins later is refused, until a scale launches its host again
    /// ([`Table::unretire`]). A launch command that started its agent in the background
    /// and exited (`setsid -f`, `hq submit`, `docker run -d`) left nothing to signal here.
    fn retire(&self, ids: impl IntoIterator<Item = String>) {
        let mut s = self.lock();
        s.retired.extend(ids);
        let State {
            agents, retired, ..
        } = &mut *s;
        for a in agents
            .values_mut()
            .filter(|a| retired.contains(&a.launch_id))
        {
            a.capacity = 0;
            let _ = a.tx.send(ToAgent::Exit);
        }
    }

    /// Lets the agent of host `id` join again: a scale launches it anew.
    fn unretire(&self, id: usize) {
        self.lock().retired.remove(&id.to_string());
    }

    /// Takes, of the hosts `ids`, those whose agent joined and left since (see
    /// [`State::left`]), for a scale to launch anew; the others stay noted for a later one.
    fn take_left(&self, ids: std::ops::Range<usize>) -> std::collections::HashSet<String> {
        let mut s = self.lock();
        let taken: std::collections::HashSet<String> = ids
            .map(|id| id.to_string())
            .filter(|id| s.left.contains(id))
            .collect();
        s.left.retain(|id| !taken.contains(id));
        taken
    }

    /// The ids their launchers gave the agents connected.
    fn launch_ids(&self) -> std::collections::HashSet<String> {
        let s = self.lock();
        s.agents.values().map(|a| a.launch_id.clone()).collect()
    }

    /// The room of the agents connected: the sum of their capacities.
    pub(super) fn room(&self) -> usize {
        let s = self.lock();
        s.agents
            .values()
            .fold(0, |room, a| room.saturating_add(a.capacity))
    }

    /// Whether an agent other than those of `tried` has room for a worker now.
    fn has_room_beside(&self, tried: &[u64]) -> bool {
        let s = self.lock();
        s.agents
            .iter()
            .any(|(id, a)| !tried.contains(id) && a.workers.len() < a.capacity)
    }

    /// Removes an agent that left or was lost: each of its workers ends as lost by `how`
    /// ([`ExitCause::HostLost`]: silent; [`ExitCause::HostDisconnected`]: its connection
    /// closed).
    pub(super) fn remove_agent(&self, agent: u64, how: ExitCause) {
        let Some(a) = ({
            let mut s = self.lock();
            let a = s.agents.remove(&agent);
            if let Some(a) = &a {
                s.left.insert(a.launch_id.clone());
            }
            a
        }) else {
            return;
        };
        for (_, w) in a.workers {
            if let Some(tx) = w.exit {
                let _ = tx.send(RemoteExit::lost(how));
            }
            if let Some(tx) = w.spawned {
                let _ = tx.send(Err(SpawnFailure {
                    message: format!("host {} was lost", a.host),
                    error: None,
                }));
            }
        }
        self.changed.notify_waiters();
    }
}

/// Where a cluster's worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerState {
    /// Asked of its agent, not running yet.
    Starting,
    /// Running (its pid is known).
    Running,
}

/// One worker of a cluster, from [`Cluster::workers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its host: the host's own name, the address it dialled from and, after `#`, the id
    /// its launcher gave its agent (`n1/10.0.0.5#0`).
    pub host: String,
    /// Its pid on its host (0 while starting).
    pub pid: u32,
    /// Where it is in its life.
    pub state: WorkerState,
}

/// Deregisters a worker start that did not finish (failed, or its future was dropped).
struct PendingStart<'a> {
    table: &'a Table,
    agent: u64,
    token: u64,
    done: bool,
}

impl Drop for PendingStart<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut s = self.table.lock();
        if let Some(a) = s.agents.get_mut(&self.agent)
            && let Some(w) = a.workers.get_mut(&self.token)
        {
            // Its agent reports the end of what it started; until then it holds its room.
            w.link = None;
            w.spawned = None;
            w.exit = None;
            let _ = a.tx.send(ToAgent::Kill { token: self.token });
            if w.pid.is_none() {
                a.workers.remove(&self.token);
            }
        }
    }
}

impl Cluster {
    /// How long an agent may stay silent before the head declares its host lost, unless
    /// [`ClusterBuilder::heartbeat_deadline`] says otherwise.
    pub const DEFAULT_HEARTBEAT_DEADLINE: Duration = Duration::from_secs(10);

    /// How long an agent waits without hearing from the head before it kills its workers
    /// and exits, unless [`ClusterBuilder::head_deadline`] says otherwise.
    pub const DEFAULT_HEAD_DEADLINE: Duration = Duration::from_secs(60);

    /// A builder: listen on `127.0.0.1:0`, a random 32-byte key, no launcher.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// A cluster whose address and key come from the environment, like `RAY_ADDRESS`:
    /// listen on [`ADDRESS_ENV`](super::ADDRESS_ENV) (`0.0.0.0:7000`, say) with the key in
    /// hex in [`AUTHKEY_ENV`](super::AUTHKEY_ENV), and tell agents to dial
    /// [`ADVERTISE_ENV`](super::ADVERTISE_ENV) if it is set (a name the agents' machines
    /// or pods resolve; else the listening address, with 127.0.0.1 for a wildcard, as
    /// [`ClusterBuilder::advertise`] says); agents are started by hand or by an engine
    /// (see [`worker_command`](Self::worker_command)). `None` when
    /// [`ADDRESS_ENV`](super::ADDRESS_ENV) is not set, so that a program can fall back to
    /// a local pool with no code change.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the key is missing or not hex, or a variable is not
    /// UTF-8; as [`ClusterBuilder::build`].
    ///
    /// # Cancel safety
    /// As [`ClusterBuilder::build`].
    pub async fn from_env() -> Result<Option<Cluster>> {
        let Some(address) = env_text(super::ADDRESS_ENV)? else {
            return Ok(None);
        };
        let Some(hex) = env_text(super::AUTHKEY_ENV)? else {
            return Err(Error::InvalidArgument(format!(
                "{} is set but {} (the key, in hex) is not",
                super::ADDRESS_ENV,
                super::AUTHKEY_ENV
            )));
        };
        let mut builder = Cluster::builder()
            .listen(address)
            .authkey(key::from_hex(&hex)?);
        if let Some(advertised) = env_text(super::ADVERTISE_ENV)? {
            builder = builder.advertise(advertised);
        }
        Ok(Some(builder.build().await?))
    }

    /// The address agents dial, `host:port`.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The address the head listens on (with the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// The cluster's key.
    pub fn authkey(&self) -> &[u8] {
        &self.inner.table.key
    }

    /// The command line that starts one host agent with `workers` workers by hand (or from
    /// an engine's job file): this program's executable, [`AGENT_FLAG`](super::AGENT_FLAG),
    /// the address, the workers and an id, 0 (agents that share a machine are told apart
    /// by their ids: change the last number for each). The key is not in it: put it, in
    /// hex, in the agent's environment as [`AUTHKEY_ENV`](super::AUTHKEY_ENV), or write it
    /// on the agent's stdin. The line is for a POSIX shell: a word that holds a space or
    /// another character the shell would read (an executable under `My Programs/`) is in
    /// single quotes.
    ///
    /// # Errors
    /// An I/O error when this program's executable cannot be found.
    pub fn worker_command(&self, workers: usize) -> Result<String> {
        let spec = self.spec(0, workers)?;
        let mut line = vec![shell_word(&spec.exe.display().to_string())];
        line.extend(spec.agent_args().iter().map(|a| shell_word(a)));
        Ok(line.join(" "))
    }

    fn spec(&self, id: usize, workers: usize) -> Result<AgentSpec> {
        Ok(AgentSpec {
            exe: crate::sys::executable_path()?,
            address: self.inner.address.clone(),
            id,
            workers,
            authkey_hex: key::to_hex(&self.inner.table.key),
            fingerprint: crate::error::hex(crate::sys::fingerprint()),
        })
    }

    /// Starts hosts through the launcher until it has started `hosts` in all (Dask's
    /// `scale`); does nothing when it has started that many already. A host whose agent
    /// joined and then left (killed, its host lost) counts as missing: its launch is ended
    /// (its process given the 2 s grace, its batch job cancelled) and it is launched anew,
    /// so `scale(n)` brings a cluster that lost hosts back to `n`. Pools built on the
    /// cluster use the new hosts' room for the workers they start from then on. It returns
    /// once the launcher has started them (an ssh session opened, a job submitted), not once
    /// their agents are connected: see [`wait_for_hosts`](Self::wait_for_hosts).
    ///
    /// The launcher's commands (an ssh probe and copy, `sbatch`) run on a blocking thread,
    /// not on the runtime's, and nothing on a runtime's thread waits for them: meanwhile a
    /// pool built on the cluster counts the hosts launched so far, and
    /// [`shutdown`](Self::shutdown) ends those (one launched after it is ended with the
    /// cluster's last handle) and stops the scale: it launches no more hosts. Scales take
    /// turns. The hosts are launched up to 16 at a time, so that a hundred ssh probes and
    /// copies, or `sbatch` calls, take about as long as a few.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a cluster without a launcher; the launcher's error,
    /// or, when several launches failed, an [`Error::Start`] naming each host with its
    /// error. The others are tried all the same; those that started stay launched, and a
    /// later scale launches only the hosts still missing. An
    /// I/O error of kind [`Interrupted`](std::io::ErrorKind::Interrupted) when
    /// [`shutdown`](Self::shutdown) was called while it scaled.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped midway, the launches already under way go on (on their
    /// blocking thread) and count as started, and those not begun are not started.
    pub async fn scale(&self, hosts: usize) -> Result<()> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cluster = self.clone();
        let epoch = self.inner.shutdowns.load(Ordering::Acquire);
        // Cleared when this future ends, dropped or not: a launch not begun by then is not.
        let wanted = Arc::new(AtomicBool::new(true));
        let _gone = crate::on_drop::OnDrop::new({
            let wanted = wanted.clone();
            move || wanted.store(false, Ordering::Release)
        });
        tokio::task::spawn_blocking(move || cluster.scale_blocking(hosts, epoch, &wanted))
            .await
            .map_err(|e| Error::from(std::io::Error::other(e)))?
    }

    /// Ends every agent this handle's cluster launched and waits for them (Dask's
    /// `cluster.close()`): each launched process is sent SIGTERM, with its descendants (an
    /// agent under a wrapper such as `sh -c '... | tee log'`), and what is left of them a
    /// grace period of 2 s later SIGKILL; batch jobs are cancelled (`scancel`), 16 at once.
    /// The joined agent of each launched host is also told to exit, so that one a launch
    /// command started in the background and left (`setsid -f`, `hq submit`, `docker run
    /// -d`) ends too; one that joins afterwards is refused, until a [`scale`](Self::scale)
    /// launches its host again. The hosts' workers end with their agents, so a pool on this
    /// cluster loses them: their started tasks fail with a [`TaskError`](crate::TaskError)
    /// whose [`is_worker_lost`](crate::TaskError::is_worker_lost) holds. Agents started by
    /// hand (from [`worker_command`](Self::worker_command)) are the user's to end, unless
    /// they took the id of a launched host; they exit once the head is gone for their head
    /// deadline. The head itself stops with its last handle.
    ///
    /// Dropping the last handle ends the agents too, without waiting.
    ///
    /// # Errors
    /// An I/O error if the blocking thread that ends them cannot run, or one that names each
    /// job whose cancel failed, with what the engine said (`scancel` could not reach
    /// Slurm's controller, say): such a job's agent, if it had joined, exits all the same
    /// (told to), which ends its job; one not joined yet (a job still pending) is refused
    /// when it joins, or exits once the cluster's last handle is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: the agents are ended on a blocking thread, which goes on if the wait is
    /// dropped.
    pub async fn shutdown(self) -> Result<()> {
        self.inner
            .shutdowns
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let launched = self.inner.take_launched();
        self.inner
            .table
            .retire(launched.iter().map(|l| l.host.to_string()));
        let failed = tokio::task::spawn_blocking(move || crate::launch::end_all(launched))
            .await
            .map_err(|e| Error::from(std::io::Error::other(e)))?;
        match failed.is_empty() {
            true => Ok(()),
            false => Err(Error::from(std::io::Error::other(format!(
                "not every launched job was cancelled: {}",
                failed.join("; ")
            )))),
        }
    }

    /// [`scale`](Self::scale) on the caller's thread, asked when [`shutdown`](Self::shutdown)
    /// had been called `epoch` times; it launches no more once `wanted` is cleared (its
    /// caller is gone) or a shutdown came since.
    ///
    /// The hosts missing (the numbers below `hosts` that no launched agent has) are launched
    /// [`LAUNCHES_AT_ONCE`] at a time, each on a thread of its own: an ssh probe and copy,
    /// or an `sbatch`, takes as long for a hundred hosts as for a few. A launch that fails
    /// fails the scale, after the others have been tried, naming each host that failed;
    /// those that started stay launched, and a later scale tries again only the ones
    /// missing.
    fn scale_blocking(
        &self,
        hosts: usize,
        epoch: u64,
        wanted: &std::sync::atomic::AtomicBool,
    ) -> Result<()> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let Some(launcher) = &self.inner.launcher else {
            return Err(Error::InvalidArgument(
                "this cluster has no launcher to start hosts with".into(),
            ));
        };
        let _turn = self.inner.scaling.lock().unwrap_or_else(|p| p.into_inner());
        // This blocking thread's runtime, which watches each launched process for its end.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let interrupted = || self.inner.shutdowns.load(Ordering::Acquire) != epoch;
        // A host whose agent joined and left is launched anew, its old launch ended first
        // (an ssh session or a process killed, a batch job cancelled; one that still runs
        // is given the grace period), outside the lock.
        let left = self.inner.table.take_left(0..hosts);
        let (missing, ended): (Vec<usize>, Vec<Launched>) = {
            let mut launched = self.inner.launched();
            let ended = launched
                .extract_if(.., |l| left.contains(&l.host.to_string()))
                .collect();
            let have: std::collections::HashSet<usize> = launched.iter().map(|l| l.host).collect();
            ((0..hosts).filter(|id| !have.contains(id)).collect(), ended)
        };
        drop(ended);
        let next = AtomicUsize::new(0);
        // Set once a shutdown has stopped a launch from beginning.
        let stopped = AtomicBool::new(false);
        let failed = Mutex::new(Vec::new());
        let launch_next = || {
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                let Some(&id) = missing.get(i) else { return };
                if interrupted() {
                    stopped.store(true, Ordering::Release);
                }
                if !wanted.load(Ordering::Acquire) || stopped.load(Ordering::Acquire) {
                    return;
                }
                self.inner.table.unretire(id);
                let launched = self
                    .spec(id, launcher.workers_per_host())
                    .and_then(|spec| launcher.launch(&spec));
                match launched {
                    Ok(mut agent) => {
                        agent.host = id;
                        let watch = agent.end_signal().zip(agent.pid());
                        let mut launched = self.inner.launched();
                        // Read under the lock that `abandon` takes after setting it: an
                        // agent is either taken by it, or ended here.
                        if self.inner.abandoned.load(Ordering::Acquire) {
                            drop(launched);
                            // Dropped, a launched agent is ended (and waited for).
                            drop(agent);
                            continue;
                        }
                        launched.push(agent);
                        drop(launched);
                        if let (Some(rt), Some((pidfd, pid))) = (&runtime, watch) {
                            rt.spawn(reap_when_ended(Arc::downgrade(&self.inner), pidfd, pid));
                        }
                    }
                    Err(e) => failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((id, e)),
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..missing.len().min(LAUNCHES_AT_ONCE) {
                s.spawn(launch_next);
            }
            launch_next();
        });
        let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
        failed.sort_by_key(|(id, _)| *id);
        if failed.len() == 1 {
            return Err(failed.remove(0).1);
        }
        if !failed.is_empty() {
            let each: Vec<String> = failed
                .iter()
                .map(|(id, e)| format!("host {id}: {e}"))
                .collect();
            return Err(Error::Start {
                name: format!("{} of {} host agents", failed.len(), missing.len()),
                pid: 0,
                message: each.join("; "),
            });
        }
        if stopped.into_inner() {
            return Err(Error::from(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the cluster was shut down while it scaled: no more hosts are launched",
            )));
        }
        Ok(())
    }

    /// The number of hosts whose agent is connected.
    pub fn hosts(&self) -> usize {
        self.inner.table.lock().agents.len()
    }

    /// Waits until `n` agents are connected.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`.
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub async fn wait_for_hosts(&self, n: usize, timeout: Duration) -> Result<()> {
        let table = &self.inner.table;
        let wait = async {
            loop {
                let changed = table.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if table.lock().agents.len() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout)
    }

    /// The workers of the cluster: host, pid and state.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let s = self.inner.table.lock();
        let mut out = Vec::new();
        for a in s.agents.values() {
            for w in a.workers.values() {
                out.push(WorkerInfo {
                    host: a.host.to_string(),
                    pid: w.pid.unwrap_or(0),
                    state: if w.pid.is_some() {
                        WorkerState::Running
                    } else {
                        WorkerState::Starting
                    },
                });
            }
        }
        out
    }

    /// How many workers a pool on this cluster runs unless told: the launcher's hosts times
    /// its workers per host, or else the room of the agents connected (at least 1).
    pub(crate) fn capacity(&self) -> usize {
        let launched = self.inner.launched().len();
        if let (Some(l), true) = (&self.inner.launcher, launched > 0) {
            return launched.saturating_mul(l.workers_per_host().min(MAX_WORKERS_PER_HOST));
        }
        self.inner.table.room().max(1)
    }

    /// Starts a worker on the host with the most room, with `env` applied by its agent,
    /// waiting up to `timeout` for room, the agent's spawn and the worker's link. A host
    /// whose last start failed comes after every host with room whose last start did not,
    /// and after those whose last starts failed fewer times in a row; a start its agent
    /// could not make (the pool's directory is missing there, say) is tried on the next
    /// host with room, and fails with that error once no host with room is left untried.
    pub(crate) async fn start_worker(
        &self,
        timeout: Duration,
        env: &Environment,
    ) -> Result<RemoteStart> {
        let table = &*self.inner.table;
        let deadline = crate::sync::deadline_or_never(timeout);
        let timed_out = |what: &str| Error::Start {
            name: "cluster worker".into(),
            pid: 0,
            message: format!("{what} within {timeout:?}"),
        };
        // A request too large for a frame would end the link to whichever host it went
        // to, and every worker there: it fails this start alone instead.
        let env = (!env.is_untouched()).then(|| env.clone());
        let spawn = |token| ToAgent::Spawn {
            token,
            env: env.clone(),
        };
        FrameBuf::of(&spawn(u64::MAX))?.check_size()?;
        // The agents that failed to start this worker.
        let mut tried = Vec::new();
        let (mut pending, host, pid, link, exit_rx) = loop {
            let (pending, host, link_rx, spawned_rx, exit_rx) = loop {
                let changed = table.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let mut guard = table.lock();
                    let s = &mut *guard;
                    let best = s
                        .agents
                        .iter_mut()
                        .filter(|(_, a)| a.workers.len() < a.capacity)
                        .max_by_key(|(id, a)| {
                            (
                                !tried.contains(*id),
                                std::cmp::Reverse(a.failed_starts),
                                a.capacity - a.workers.len(),
                                std::cmp::Reverse(**id),
                            )
                        });
                    if let Some((&agent, a)) = best {
                        let token = s.next_token;
                        s.next_token += 1;
                        let (link_tx, link_rx) = oneshot::channel();
                        let (spawned_tx, spawned_rx) = oneshot::channel();
                        let (exit_tx, exit_rx) = oneshot::channel();
                        a.workers.insert(
                            token,
                            WorkerEntry {
                                pid: None,
                                link: Some(link_tx),
                                spawned: Some(spawned_tx),
                                exit: Some(exit_tx),
                            },
                        );
                        let _ = a.tx.send(spawn(token));
                        let pending = PendingStart {
                            table,
                            agent,
                            token,
                            done: false,
                        };
                        break (pending, a.host.clone(), link_rx, spawned_rx, exit_rx);
                    }
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    let mut e = timed_out(&format!(
                        "no host of the cluster had room for a worker{}",
                        table.last_refusal()
                    ));
                    if let Error::Start { message, .. } = &mut e {
                        message.push_str(&self.inner.launches_not_joined());
                        message.push_str(&self.inner.launched_jobs().await);
                    }
                    return Err(e);
                }
            };
            let both = async {
                let pid = match spawned_rx.await {
                    Ok(Ok(pid)) => pid,
                    // Its agent could not start it there (the directory is missing, say):
                    // another host may.
                    Ok(Err(failure)) => return Ok(Err(failure.into_error(&host))),
                    Err(_) => {
                        return Err(Error::Start {
                            name: format!("cluster worker on host {host}"),
                            pid: 0,
                            message: "its host was lost".into(),
                        });
                    }
                };
                let link = link_rx.await.map_err(|_| Error::Start {
                    name: format!("cluster worker on host {host}"),
                    pid,
                    message: "its host was lost before the worker's link came".into(),
                })?;
                Ok(Ok((pid, link)))
            };
            let started = tokio::time::timeout_at(deadline, both)
                .await
                .map_err(|_| timed_out(&format!("the agent on host {host} started no worker")))??;
            match started {
                Ok((pid, link)) => break (pending, host, pid, link, exit_rx),
                Err(e) => {
                    tried.push(pending.agent);
                    if !table.has_room_beside(&tried) {
                        return Err(e);
                    }
                    tracing::debug!("trying another host for a cluster worker: {e}");
                }
            }
        };
        pending.done = true;
        let kill = RemoteKill {
            table: Arc::downgrade(&self.inner.table),
            agent: pending.agent,
            token: pending.token,
        };
        Ok(RemoteStart {
            host,
            pid,
            link,
            exit: exit_rx,
            kill,
        })
    }
}

/// The environment variable `name`, `None` if unset; an error if it is not UTF-8.
fn env_text(name: &str) -> Result<Option<String>> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|_| Error::InvalidArgument(format!("{name} is not UTF-8"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_counts_for_at_most_the_workers_a_host_may_run() {
        let table = Table::new(
            b"k".to_vec(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        for host in ["a", "b", "c"] {
            table.add_agent((host.into(), String::new()), usize::MAX, tx.clone());
        }
        table.add_agent(("d".into(), String::new()), 0, tx);
        assert_eq!(table.room(), 3 * MAX_WORKERS_PER_HOST + 1);
    }
}
