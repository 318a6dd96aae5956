//! Shared harness for the process tests (`harness = false`): each test binary's `main` calls
//! `tokio_multiprocessing::init()` first, then [`run`]. Every test runs on its own runtime and
//! is bounded by a timeout, so a bug fails the test instead of hanging CI.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};

pub mod netns;
pub mod process;

/// How long any one test may take.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A test body's result: `Err` (or a panic) fails the test.
pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// An async test, run on a fresh multi-threaded runtime under [`TEST_TIMEOUT`].
pub fn test<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = TestResult>,
{
    Trial::test(name, move || {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(2);
        run_on(rt, body)
    })
}

/// An async test, run on a fresh current-thread runtime under [`TEST_TIMEOUT`].
pub fn test_current_thread<F, Fut>(name: &'static str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = TestResult>,
{
    Trial::test(name, move || {
        run_on(tokio::runtime::Builder::new_current_thread(), body)
    })
}

fn run_on<F, Fut>(mut rt: tokio::runtime::Builder, body: F) -> Result<(), Failed>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = TestResult>,
{
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("runtime: {e}")))?;
    match rt.block_on(async move { tokio::time::timeout(TEST_TIMEOUT, body()).await }) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Failed::from(e.to_string())),
        Err(_) => Err(Failed::from(format!("timed out after {TEST_TIMEOUT:?}"))),
    }
}

/// Whether a task spawned before a loop of `round` runs within `rounds` rounds: on a
/// current-thread runtime, a loop whose futures are always ready and never spend the task's
/// budget with tokio's scheduler starves every other task (and timer) of the runtime.
/// `round` gets the round's number.
pub async fn lets_others_run<F, Fut>(
    rounds: u32,
    mut round: F,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = TestResult>,
{
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let ran = std::sync::Arc::new(AtomicBool::new(false));
    let other = tokio::spawn({
        let ran = ran.clone();
        async move { ran.store(true, SeqCst) }
    });
    let mut n = 0;
    while !ran.load(SeqCst) {
        if n == rounds {
            other.await?;
            return Ok(false);
        }
        round(n).await?;
        n += 1;
    }
    other.await?;
    Ok(true)
}

/// `m` locked, poisoned or not: for tests that lock only within one poll, so that the lock
/// spends nothing of tokio's budget.
pub fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails unless a loop of `round` (given the kind and the round's number) lets a task
/// spawned before it run, for each kind of `kinds`: each kind's loop runs as
/// [`lets_others_run`] runs it, and the error names the kinds that starved it.
pub async fn none_starve<F, Fut>(kinds: &[&'static str], rounds: u32, round: F) -> TestResult
where
    F: Fn(&'static str, u32) -> Fut,
    Fut: Future<Output = TestResult>,
{
    let mut starved = Vec::new();
    for &what in kinds {
        if !lets_others_run(rounds, |n| round(what, n)).await? {
            starved.push(what);
        }
    }
    match starved.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "a task spawned before {rounds} rounds of these never ran: {starved:?}"
        )
        .into()),
    }
}

/// The trials for async test functions, each named once: `trials![a, b]` is
/// `vec![test("a", a), test("b", b)]`.
#[macro_export]
macro_rules! trials {
    ($($name:ident),* $(,)?) => {
        vec![$($crate::support::test(stringify!($name), $name)),*]
    };
}

/// Runs the trials with libtest's command-line arguments (filters, `--list`, `--test-threads`).
pub fn run(trials: Vec<Trial>) -> ! {
    let args = Arguments::from_args();
    libtest_mimic::run(&args, trials).exit()
}

/// How many trials [`run_mostly_waiting`] runs at once.
pub const WAITING_AT_ONCE: usize = 8;

/// Runs the trials as [`run`] does, [`WAITING_AT_ONCE`] at a time unless `--test-threads`
/// says otherwise: for a file whose tests spend most of their time waiting (for a heartbeat
/// deadline, a peer in another process or network namespace, a timeout), not computing, so
/// that as many run at once on a machine of two cores as on one of eight.
pub fn run_mostly_waiting(trials: Vec<Trial>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(WAITING_AT_ONCE);
    libtest_mimic::run(&args, trials).exit()
}

/// Runs the trials as [`run`] does, one at a time unless `--test-threads` says otherwise:
/// for a file whose tests count this process's descriptors or children.
pub fn run_one_at_a_time(trials: Vec<Trial>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    libtest_mimic::run(&args, trials).exit()
}

/// The pids of the live (not zombie) children of `pid`.
pub fn live_children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(path) {
            for c in s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()) {
                if !is_zombie_or_gone(c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// This process's children, zombies included.
pub fn all_children() -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` is gone or a zombie.
pub fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// A `sleep 60` that took `pid`, a pid that is free now, as a later process takes a dead
/// one's on a busy machine: the kernel's next pid is set through
/// `/proc/sys/kernel/ns_last_pid`. `Err` with the reason if this machine does not let us
/// (not root), or if other processes kept taking the pid first.
///
/// It starts two clock ticks (20 ms) after the call at least, so that its start time differs
/// from that of a process that had the pid and started just before the call: the kernel,
/// which hands pids out in turn, never gives a pid again so soon.
pub fn process_with_pid(pid: u32) -> Result<KilledOnDrop, String> {
    std::thread::sleep(std::time::Duration::from_millis(20));
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .map_err(|e| format!("cannot choose the next pid ({e}); it needs root"))?;
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .map_err(|e| format!("cannot start sleep: {e}"))?;
        if child.id() == pid {
            return Ok(KilledOnDrop(child));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    Err(format!("other processes took pid {pid} first 200 times"))
}

/// A child process that is killed and reaped when dropped.
pub struct KilledOnDrop(pub std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A name for something every process on the machine sees (an abstract socket, a shared
/// memory segment, a temporary file): `tag`, then [`unique_stem`], then a counter.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{n}", unique_stem())
}

/// This process's part of every [`unique_name`]: its id and 64 random bits. The random bits
/// keep it apart from a process of the same id in another pid namespace that shares the
/// network namespace or the directory (two containers on one host).
pub fn unique_stem() -> &'static str {
    use std::io::Read;
    use std::sync::OnceLock;
    static STEM: OnceLock<String> = OnceLock::new();
    STEM.get_or_init(|| {
        let mut bytes = [0u8; 8];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        let random = match read {
            Ok(()) => u64::from_ne_bytes(bytes),
            // Without /dev/urandom the clock's nanoseconds still part two runs.
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        format!("{}-{random:016x}", std::process::id())
    })
}

/// A fresh path in the temporary directory, unique to this test process (see
/// [`unique_name`]), that nothing exists at yet. Whatever is made there (a file, a socket, a
/// directory and its contents) is removed when the `TempPath` is dropped, so a test that
/// fails midway leaves nothing behind either. It derefs to a [`Path`](std::path::Path);
/// `to_string()` gives the path as a task's `String` argument.
pub fn temp_path(tag: &str) -> TempPath {
    TempPath(std::env::temp_dir().join(unique_name(&format!("tkmp-{tag}"))))
}

/// A path that [`temp_path`] gave, removed with what is there when dropped.
#[derive(Debug)]
pub struct TempPath(std::path::PathBuf);

impl std::ops::Deref for TempPath {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempPath {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempPath {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl std::fmt::Display for TempPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display().fmt(f)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                let _ = std::fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

/// Whether the program `tool` can be run (its `--version` starts), for a test that needs it.
pub fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok()
}

/// Whether `pid` exists at all (zombie included).
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// This process's address space, in bytes (`VmSize` of `/proc/self/status`).
pub fn address_space() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmSize in /proc/self/status".to_string())
}

/// The number of descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The CPU time (user and system, in clock ticks) that process `pid` has used so far.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; the slice starts at field 3.
    let field = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    field(14)
        .zip(field(15))
        .map(|(u, s)| u + s)
        .ok_or_else(|| format!("no CPU times in /proc/{pid}/stat"))
}

/// Waits for a child to say on `started` that it is about to wait, and lets it go to sleep
/// in its wait.
pub async fn once_asleep(started: &tokio_multiprocessing::Event) -> TestResult {
    started.wait_timeout(Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Waits for `p` to say on `started` that it is about to wait, lets it go to sleep in its
/// wait, then kills it there and reaps it.
pub async fn kill_once_asleep(
    p: &mut tokio_multiprocessing::Process,
    started: &tokio_multiprocessing::Event,
) -> TestResult {
    once_asleep(started).await?;
    p.kill()?;
    p.join().await?;
    Ok(())
}

/// How many `write` system calls this process (all its threads) has made so far.
pub fn writes_made() -> Result<u64, String> {
    let io = std::fs::read_to_string("/proc/self/io").map_err(|e| e.to_string())?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| "no syscw in /proc/self/io".to_string())
}

/// How many connections wait in the backlog of the listening socket at `address` (a TCP
/// port on this machine, or a Unix socket path), not accepted yet: the kernel's sockets of
/// their server side, which no process holds a descriptor of (their inode is 0).
pub fn not_accepted(address: &tokio_multiprocessing::Address) -> usize {
    match address {
        tokio_multiprocessing::Address::Tcp(a) => {
            let port = a.port();
            // State 01 is ESTABLISHED; the inode is the tenth field.
            proc_net_lines(&["/proc/net/tcp", "/proc/net/tcp6"], |f| {
                let local = f.get(1).and_then(|a| a.rsplit_once(':'));
                local.and_then(|(_, p)| u16::from_str_radix(p, 16).ok()) == Some(port)
                    && f.get(3) == Some(&"01")
                    && f.get(9) == Some(&"0")
            })
        }
        tokio_multiprocessing::Address::Unix(path) => {
            let path = path.display().to_string();
            // Num RefCount Protocol Flags Type St Inode Path.
            proc_net_lines(&["/proc/net/unix"], |f| {
                f.get(6) == Some(&"0") && f.get(7) == Some(&path.as_str())
            })
        }
    }
}

/// How many lines of the `/proc/net` `tables` (past their heading) `wanted` keeps, given
/// each line's fields.
fn proc_net_lines(tables: &[&str], wanted: impl Fn(&[&str]) -> bool) -> usize {
    tables
        .iter()
        .filter_map(|t| std::fs::read_to_string(t).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|l| wanted(&l.split_whitespace().collect::<Vec<_>>()))
                .count()
        })
        .sum()
}

/// How many descriptors this process holds for TCP connections whose local port is `port`:
/// the connections a server listening there has accepted and not closed yet (its listening
/// socket is not counted). Unlike [`open_fds`], other tests running beside do not change it.
pub fn connections_on_port(port: u16) -> usize {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // State 0A is LISTEN.
            if local_port == Some(port)
                && fields.get(3) != Some(&"0A")
                && let Some(inode) = fields.get(9)
            {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| inodes.contains(&target.display().to_string()))
                .count()
        })
        .unwrap_or(0)
}

/// A child that holds TCP connections which never send a byte (see [`SilentSockets::open`]).
pub struct SilentSockets {
    holder: tokio_multiprocessing::Process,
    release: tokio_multiprocessing::Event,
}

/// How many silent connections the tests of a server open: more than
/// [`MAX_HANDSHAKES`](tokio_multiprocessing::MAX_HANDSHAKES).
pub const SILENT: usize = 400;

impl SilentSockets {
    /// Starts a child that opens [`SILENT`] connections to `address`, and waits until all are
    /// open. Within 10 s, half the timeout of the challenge: a server that stopped taking
    /// connections would keep the last ones in its backlog until the first ones timed out.
    pub async fn open(address: std::net::SocketAddr) -> Result<SilentSockets, process::BoxError> {
        use tokio_multiprocessing::Event;
        let (opened, release) = (Event::new()?, Event::new()?);
        let args = (address, SILENT, opened.clone(), release.clone());
        let sockets = SilentSockets {
            holder: start(hold_silent_sockets, args).await?,
            release,
        };
        // On failure, dropping `sockets` ends the child.
        if !opened.wait_timeout(Duration::from_secs(10)).await? {
            return Err("the server stopped taking connections: \
                        the silent sockets could not all connect"
                .into());
        }
        Ok(sockets)
    }

    /// Closes the connections: the child ends (with 0, within 30 s).
    pub async fn close(mut self) -> TestResult {
        self.release.set();
        join_ok(&mut self.holder).await
    }
}

/// A test that fails before [`SilentSockets::close`] leaves no child behind.
impl Drop for SilentSockets {
    fn drop(&mut self) {
        // A child already joined is not signalled.
        let _ = self.holder.kill();
    }
}

/// The child of [`SilentSockets`]: opens `n` connections to `address`, sets `opened`, then
/// holds them until `release` is set (at most [`TEST_TIMEOUT`]). Exits with 3 if a
/// connection cannot be made.
async fn hold_silent_sockets(
    address: std::net::SocketAddr,
    n: usize,
    opened: tokio_multiprocessing::Event,
    release: tokio_multiprocessing::Event,
) {
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        match tokio::net::TcpStream::connect(address).await {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("silent socket {i}: {e}");
                std::process::exit(3)
            }
        }
    }
    opened.set();
    let _ = release.wait_timeout(TEST_TIMEOUT).await;
    drop(held);
}

/// Waits (up to `limit`) until `cond` holds, checking every 10 ms. For tests only: observing
/// another process's state from outside has no event to wait on.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fails with `msg` unless `cond`.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// The binary of example `name`, which `cargo test` builds beside the test binaries.
pub fn example(name: &str) -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("no target directory")?;
    let path = dir.join("examples").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not built", path.display()))
    }
}

/// Runs example `name` (at most 40 s, stdin from `/dev/null`) and returns its standard output;
/// it must exit with 0.
pub async fn run_example(name: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut cmd = tokio::process::Command::new(example(name)?);
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(40), cmd.output())
        .await
        .map_err(|_| format!("{name} did not finish within 40 s"))??;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts `f(args)` in a child process.
pub async fn start<A, F, M>(
    f: F,
    args: A,
) -> tokio_multiprocessing::Result<tokio_multiprocessing::Process>
where
    F: tokio_multiprocessing::Target<A, M>,
    F::Output: std::process::Termination,
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    tokio_multiprocessing::Process::new(f, args).start().await
}

/// A child's exit code; an error if it has not ended within 30 s (a bound on a hang).
pub async fn join_code(
    p: &mut tokio_multiprocessing::Process,
) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    match p.join_timeout(Duration::from_secs(30)).await? {
        Some(c) => Ok(c),
        None => Err(format!("child {} did not end", p.pid()).into()),
    }
}

/// Succeeds if the child exits with code 0 (within 30 s).
pub async fn join_ok(p: &mut tokio_multiprocessing::Process) -> TestResult {
    let code = join_code(p).await?;
    ensure!(code == 0, "child {} ended with {code}", p.pid());
    Ok(())
}

/// Succeeds once this process has `before` descriptors open again (within `limit`).
pub async fn fds_return_to(before: usize, limit: Duration) -> TestResult {
    ensure!(
        eventually(limit, || open_fds() == before).await,
        "descriptors leaked: {before} before, {} after",
        open_fds()
    );
    Ok(())
}

pub mod pool;
pub mod runtimes;

/// Sends `value` as a `Connection<S>` and receives it as a `Connection<R>` (a listener and
/// a client whose types differ, as two programs' may).
pub async fn send_as<S, R>(
    value: S,
) -> Result<tokio_multiprocessing::Result<R>, tokio_multiprocessing::Error>
where
    S: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let l = tokio_multiprocessing::Listener::new(None)?;
    let address = l.address().clone();
    let sender = tokio::spawn(async move {
        let conn = tokio_multiprocessing::Client::connect::<S>(address, None).await?;
        conn.send(&value).await?;
        // Held until the receiver has read the message.
        conn.recv_bytes().await.map(drop)
    });
    let conn = l.accept::<R>().await?;
    let got = conn.recv().await;
    drop(conn);
    let _ = sender.await;
    Ok(got)
}
