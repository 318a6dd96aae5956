//! The crate at the machine's limits, as a service in production meets them: out of
//! descriptors (`RLIMIT_NOFILE`), out of processes (a pids cgroup), signalled (SIGTERM,
//! SIGINT, SIGHUP, with and without handlers; a storm of SIGUSR1 that interrupts every
//! system call), and ended by `std::process::exit` in the middle of a map. Each limit is
//! set in a child this test starts, so that it touches that child alone; each child checks
//! on both runtimes.

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::TestResult;
use support::process::{BoxError, exit_unless_ok_on, helper_command, helper_mode, probe_passed};
use tokio_multiprocessing::{
    self as mp, Manager, Pipe, Pool, Process, Queue, SharedMemory, StartMethod,
};

fn main() {
    let mode = helper_mode();
    mp::init(); // a re-executed child never gets past this line
    if mode.as_deref() == Some("service") {
        support::process::run_as_helper(service());
    }
    support::run_one_at_a_time(trials![
        every_start_out_of_descriptors_fails_naming_the_limit_and_leaks_nothing,
        every_start_out_of_processes_fails_naming_the_limit_and_leaks_nothing,
        a_pool_whose_replacements_fail_at_a_limit_fails_its_calls_and_recovers,
        a_worker_short_of_its_threads_fails_the_build_naming_them,
        a_signalled_service_leaves_no_worker_manager_or_segment,
        nothing_fails_as_interrupted_under_a_storm_of_signals,
    ]);
}

// ---------------------------------------------------------------- what is started

/// Everything that takes descriptors or a process to start.
const STARTS: [&str; 7] = [
    "spawn",
    "forkserver",
    "pool",
    "queue",
    "pipe",
    "manager",
    "segment",
];

fn nothing() {}

fn sqr(x: i64) -> i64 {
    x * x
}

/// This worker's pid, after `ms`.
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Starts one `what` (see [`STARTS`]), uses it once across processes and ends it; `n` tells
/// a segment's name apart.
async fn start_one(what: &str, n: u32) -> mp::Result<()> {
    match what {
        "spawn" | "forkserver" => {
            let method = match what {
                "spawn" => StartMethod::Spawn,
                _ => StartMethod::ForkServer,
            };
            let mut p = Process::new(nothing, ())
                .start_method(method)
                .start()
                .await?;
            p.join().await?;
        }
        "pool" => {
            let pool = Pool::new(1).await?;
            pool.apply(sqr, (3,)).await?;
            pool.terminate().await?;
        }
        "queue" => {
            let q = Queue::<i64>::new()?;
            q.put(1).await.map_err(mp::Error::from)?;
            q.get().await?;
        }
        "pipe" => {
            let (a, b) = Pipe::<i64>::new()?;
            a.send(&1).await?;
            b.recv().await?;
        }
        "manager" => {
            let m = Manager::start().await?;
            m.dict::<String, i64>().await?.insert("a".into(), 1).await?;
            m.shutdown().await?;
        }
        _ => drop(SharedMemory::create(&segment_name(n), 4096)?),
    }
    Ok(())
}

/// The name of this process's `n`th segment.
fn segment_name(n: u32) -> String {
    format!("tkmp-limits-{}-{n}", support::unique_stem())
}

/// The names of this process's segments left in `/dev/shm`.
fn segments_left() -> Vec<String> {
    let ours = format!("tkmp-limits-{}-", support::unique_stem());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&ours))
                .collect()
        })
        .unwrap_or_default()
}

/// What a process holds that a start may leak: its descriptors and its live children.
fn holdings() -> (usize, HashSet<u32>) {
    let children = support::live_children_of(std::process::id());
    (support::open_fds(), children.into_iter().collect())
}

/// Sweeps the margin a start of `what` is given from none up, with `limit(margin)` in
/// force during the start: each start that fails must say `naming`, and the same start must
/// succeed at once without the limit. Each margin is tried twice: the first failure may
/// leave what a process makes once and keeps (a descriptor of its own), the second must
/// leave no more descriptors, children or segments than there were before it (a failed
/// start may end the fork server, which the next start replaces). Stops at the first start
/// that succeeds under the limit.
async fn sweep<L, R>(what: &str, limit: L, naming: &str) -> Result<(), BoxError>
where
    L: Fn(u64) -> Result<R, BoxError>,
{
    start_one(what, 0)
        .await
        .map_err(|e| format!("{what}: without a limit: {e}"))?;
    for attempt in 0..80 {
        let (margin, checked) = (attempt / 2, attempt % 2 == 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (fds, children) = holdings();
        let limited = limit(margin)?;
        let n = attempt as u32 + 1;
        let r = tokio::time::timeout(Duration::from_secs(20), start_one(what, n)).await;
        drop(limited);
        let e = match r {
            Err(_) => return Err(format!("{what}: a start at margin {margin} hung").into()),
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
        };
        ensure!(
            e.contains(naming),
            "{what}: a start at margin {margin} failed without naming {naming}: {e}"
        );
        let settled = support::eventually(Duration::from_secs(10), || {
            let (now, alive) = holdings();
            now <= fds && alive.is_subset(&children)
        })
        .await;
        let (now, alive) = holdings();
        ensure!(
            settled || !checked,
            "{what}: a start failed at margin {margin} ({e}) left {now} descriptors where there \
             were {fds}, children {alive:?} where there were {children:?}"
        );
        let left = segments_left();
        ensure!(left.is_empty(), "{what}: segments left: {left:?}");
        start_one(what, 1000 + n)
            .await
            .map_err(|e| format!("{what}: after a start failed at margin {margin}: {e}"))?;
    }
    Err(format!("{what}: no start succeeded within 40 descriptors").into())
}

/// Runs `check` in a child, once on each runtime, and fails unless both pass.
async fn in_child_on_both_runtimes<F, M>(check: F) -> TestResult
where
    F: mp::Target<(bool,), M, Output = ()> + Copy,
{
    for multi_thread in [false, true] {
        let mut p = Process::new(check, (multi_thread,)).start().await?;
        probe_passed(&mut p)
            .await
            .map_err(|e| format!("multi_thread {multi_thread}: {e}"))?;
    }
    Ok(())
}

/// [`exit_unless_ok_on`] a current-thread or a two-thread runtime.
fn exit_unless_ok_on_runtime<F: Future<Output = Result<(), BoxError>>>(
    multi_thread: bool,
    what: &str,
    check: impl FnOnce() -> F,
) {
    let rt = match multi_thread {
        true => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(2);
            rt
        }
        false => tokio::runtime::Builder::new_current_thread(),
    };
    exit_unless_ok_on(rt, what, check)
}

// ---------------------------------------------------------------- descriptors

/// Sets this process's soft limit of open descriptors to `soft` until the guard is dropped,
/// which sets the soft limit back.
fn descriptor_limit(soft: u64) -> Result<DescriptorLimit, BoxError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (was, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    Ok(DescriptorLimit(was, hard))
}

/// The soft and hard limits of open descriptors before [`descriptor_limit`].
struct DescriptorLimit(u64, u64);

impl Drop for DescriptorLimit {
    fn drop(&mut self) {
        use nix::sys::resource::{Resource, setrlimit};
        let _ = setrlimit(Resource::RLIMIT_NOFILE, self.0, self.1);
    }
}

/// In a child: every start, with as few descriptors left as fail it.
fn starts_out_of_descriptors(multi_thread: bool) {
    exit_unless_ok_on_runtime(multi_thread, "out of descriptors", || async {
        for what in STARTS {
            let limit = |margin| descriptor_limit(support::open_fds() as u64 + margin);
            sweep(what, limit, "RLIMIT_NOFILE").await?;
        }
        Ok(())
    })
}

// A start that ran out of descriptors failed with "Too many open files (os error 24)" and
// nothing more, or with the internal type whose descriptor could not be duplicated: it
// names the limit now. Each leaks nothing, and the next start succeeds.
async fn every_start_out_of_descriptors_fails_naming_the_limit_and_leaks_nothing() -> TestResult {
    in_child_on_both_runtimes(starts_out_of_descriptors).await
}

// ---------------------------------------------------------------- processes

/// The pids controller's root, where a test makes a cgroup of its own.
const PIDS_ROOT: &str = "/sys/fs/cgroup/pids";

/// A pids cgroup of its own for a child, removed when dropped (once the child has left it).
struct PidsCgroup(String);

impl PidsCgroup {
    /// A new cgroup, or why this machine offers none (no cgroup v1 pids controller, or no
    /// right to make a cgroup in it).
    fn new() -> Result<PidsCgroup, String> {
        let dir = format!("{PIDS_ROOT}/{}", support::unique_name("tkmp-limits"));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make {dir}: {e}"))?;
        Ok(PidsCgroup(dir))
    }

    /// [`new`](Self::new)'s cgroup, or `None` after saying on stderr that `what` is skipped,
    /// and why.
    fn or_say_why(what: &str) -> Option<PidsCgroup> {
        PidsCgroup::new()
            .inspect_err(|why| eprintln!("skipped {what}: no pids cgroup of our own ({why})"))
            .ok()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // The child left it as it exited; the kernel may take a moment to say so.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Writes `value` to the cgroup file `file` of `dir`.
fn cgroup_write(dir: &str, file: &str, value: &str) -> Result<(), BoxError> {
    std::fs::write(format!("{dir}/{file}"), value)
        .map_err(|e| format!("cannot write {value} to {dir}/{file}: {e}").into())
}

/// Lets the cgroup `dir` hold only `more` tasks (processes and threads) beyond those it
/// holds now (fewer than now if negative), until the guard is dropped.
fn process_limit(dir: &str, more: i64) -> Result<ProcessLimit, BoxError> {
    let now: i64 = std::fs::read_to_string(format!("{dir}/pids.current"))?
        .trim()
        .parse()?;
    cgroup_write(dir, "pids.max", &(now + more).max(0).to_string())?;
    Ok(ProcessLimit(dir.to_string()))
}

/// The cgroup whose `pids.max` [`process_limit`] set, which it sets back to `max`.
struct ProcessLimit(String);

impl Drop for ProcessLimit {
    fn drop(&mut self) {
        let _ = cgroup_write(&self.0, "pids.max", "max");
    }
}

/// Moves this process into the cgroup `dir`.
fn enter(dir: &str) -> Result<(), BoxError> {
    cgroup_write(dir, "cgroup.procs", &std::process::id().to_string())
}

/// In a child, in its own pids cgroup: every start that makes a process, with no process
/// left to make.
fn starts_out_of_processes(dir: String, multi_thread: bool) {
    exit_unless_ok_on_runtime(multi_thread, "out of processes", || async move {
        enter(&dir)?;
        for what in ["spawn", "forkserver", "pool", "manager"] {
            sweep(
                what,
                |margin| process_limit(&dir, margin as i64),
                "RLIMIT_NPROC",
            )
            .await?;
        }
        Ok(())
    })
}

// A start that could not make a process failed with "Resource temporarily unavailable (os
// error 11)" and nothing more: it names the limits that make the kernel refuse one now.
async fn every_start_out_of_processes_fails_naming_the_limit_and_leaks_nothing() -> TestResult {
    match PidsCgroup::or_say_why("this test") {
        Some(cgroup) => in_child_with_cgroup(starts_out_of_processes, &cgroup.0).await,
        None => Ok(()),
    }
}

/// In a child, in its own pids cgroup: a pool whose worker may make a few threads only,
/// where its runtime asks for 64.
fn worker_threads_out_of_processes(dir: String, multi_thread: bool) {
    exit_unless_ok_on_runtime(multi_thread, "worker threads", || async move {
        enter(&dir)?;
        // A pool first, so that what starts workers is running before the limit is set.
        let pool = Pool::new(1).await?;
        ensure!(pool.apply(sqr, (3,)).await? == 9, "a pool before the limit");
        pool.close();
        pool.join().await?;
        let _limit = process_limit(&dir, 24)?;
        // The worker waits for its threads as long as its start may take.
        let built = Pool::builder()
            .processes(1)
            .worker_threads(64)
            .start_timeout(Duration::from_secs(5))
            .build()
            .await;
        match built {
            Err(mp::Error::Start { message, .. })
                if message.contains("runtime of 64 threads") && message.contains("over 5s") =>
            {
                Ok(())
            }
            Err(e) => Err(format!("another error: {e}").into()),
            Ok(pool) => {
                let r = tokio::time::timeout(Duration::from_secs(20), pool.apply(sqr, (3,))).await;
                Err(format!("built with its threads short; a task: {r:?}").into())
            }
        }
    })
}

// A worker that could not make the threads `worker_threads` asked for answered its start
// as ready all the same: tokio's runtime, short of threads, never ran some tasks, or (none
// made) panicked, losing the task sent. Its start now fails, naming its runtime. It waited
// 10 s for its threads whatever the pool's start timeout; it waits that timeout now.
async fn a_worker_short_of_its_threads_fails_the_build_naming_them() -> TestResult {
    match PidsCgroup::or_say_why("this test") {
        Some(cgroup) => in_child_with_cgroup(worker_threads_out_of_processes, &cgroup.0).await,
        None => Ok(()),
    }
}

/// Kills every worker of `pool` (a Pool(2) that ran a map) with `limited` in force, the
/// guard of a limit under which no worker can start: each call fails, naming `naming`,
/// rather than waits; once the limit is gone, the pool has two workers again and serves.
async fn calls_fail_while_no_worker_starts<G>(
    pool: &Pool,
    limited: impl FnOnce() -> Result<G, BoxError>,
    naming: &str,
) -> Result<(), BoxError> {
    let workers: HashSet<u32> = pool
        .map(pid_after, vec![50; 8])
        .chunksize(1)
        .await?
        .into_iter()
        .collect();
    let guard = limited()?;
    for &w in &workers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(w as i32), Signal::SIGKILL)?;
    }
    let mut failures = Vec::new();
    for i in 0..5 {
        match tokio::time::timeout(Duration::from_secs(20), pool.apply(sqr, (i,))).await {
            Err(_) => return Err(format!("call {i} hung while no worker could start").into()),
            // One that reached a worker before the kill landed.
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
        }
    }
    drop(guard);
    ensure!(
        failures.iter().any(|e| e.contains(naming)),
        "no call failed naming {naming}: {failures:?}"
    );
    let after = support::eventually(Duration::from_secs(30), || pool.stats().workers_alive == 2);
    ensure!(
        after.await,
        "the pool did not grow back: {:?}",
        pool.stats()
    );
    let v = pool.map(sqr, 0..100).await?;
    ensure!(v[99] == 99 * 99, "a map after the limit");
    Ok(())
}

/// In a child: a pool whose workers cannot be replaced, out of descriptors, then out of
/// processes.
fn replacements_fail(dir: String, multi_thread: bool) {
    exit_unless_ok_on_runtime(multi_thread, "replacements fail", || async move {
        for method in [StartMethod::Spawn, StartMethod::ForkServer] {
            let pool = Pool::builder()
                .processes(2)
                .start_method(method)
                .build()
                .await?;
            // No descriptor at all may be opened: not even those the killed workers free.
            let no_descriptor = || descriptor_limit(3);
            calls_fail_while_no_worker_starts(&pool, no_descriptor, "RLIMIT_NOFILE")
                .await
                .map_err(|e| format!("{method:?}, out of descriptors: {e}"))?;
            if !dir.is_empty() {
                enter(&dir)?;
                // Not even the places of the two workers about to be killed.
                let no_process = || process_limit(&dir, -2);
                calls_fail_while_no_worker_starts(&pool, no_process, "RLIMIT_NPROC")
                    .await
                    .map_err(|e| format!("{method:?}, out of processes: {e}"))?;
            }
            pool.terminate().await?;
        }
        Ok(())
    })
}

// A pool whose workers were killed while no new one could start (out of descriptors, out
// of processes) fails its calls with an error that names the limit, never leaves them
// waiting, and grows back to its size once the limit is gone.
async fn a_pool_whose_replacements_fail_at_a_limit_fails_its_calls_and_recovers() -> TestResult {
    let cgroup = PidsCgroup::or_say_why("the pool out of processes");
    let dir = cgroup.as_ref().map_or("", |c| c.0.as_str());
    in_child_with_cgroup(replacements_fail, dir).await
}

/// Runs `check` with the cgroup `dir` (empty for none) in a child, once on each runtime
/// (the child moves itself into the cgroup).
async fn in_child_with_cgroup<F, M>(check: F, dir: &str) -> TestResult
where
    F: mp::Target<(String, bool), M, Output = ()> + Copy,
{
    for multi_thread in [false, true] {
        let mut p = Process::new(check, (dir.to_string(), multi_thread))
            .start()
            .await?;
        probe_passed(&mut p)
            .await
            .map_err(|e| format!("multi_thread {multi_thread}: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------- signals

/// How the service helper meets a signal (`TKMP_HOW`): `plain`, no handler (the signal's
/// default action ends it); `exit`, tokio handlers that call `std::process::exit` at once;
/// `return`, tokio handlers after which `main` returns, dropping what it holds;
/// `exit-mid-map`, no signal: it calls `std::process::exit` in the middle of a map.
const HOWS: [&str; 4] = ["plain", "exit", "return", "exit-mid-map"];

/// The helper: a service with a pool of two, a manager with a dict, a named segment (its
/// name in `TKMP_SEGMENT`) and a long map running. Prints the pids of the workers and of the
/// manager's server, then meets a signal as `TKMP_HOW` says.
async fn service() {
    if let Err(e) = serve().await {
        eprintln!("service: {e}");
        std::process::exit(3);
    }
}

async fn serve() -> Result<(), BoxError> {
    use std::io::Write;
    use tokio::signal::unix::{SignalKind, signal};
    let how = std::env::var("TKMP_HOW")?;
    let pool = Pool::new(2).await?;
    let mut pids: HashSet<u32> = pool
        .map(pid_after, vec![50; 8])
        .chunksize(1)
        .await?
        .into_iter()
        .collect();
    let m = Manager::start().await?;
    m.dict::<String, i64>().await?.insert("a".into(), 1).await?;
    pids.insert(m.pid().ok_or("no manager pid")?);
    let segment = SharedMemory::create(&std::env::var("TKMP_SEGMENT")?, 4096)?;
    let map = pool.map_async(pid_after, vec![2000; 100]);
    let mut handlers = Vec::new();
    if how == "exit" || how == "return" {
        for kind in [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ] {
            handlers.push(signal(kind)?);
        }
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("{}", pids.join(","));
    std::io::stdout().flush()?;
    if how == "exit-mid-map" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::process::exit(0);
    }
    if handlers.is_empty() {
        std::future::pending::<()>().await;
    }
    let any = handlers.iter_mut().map(|h| Box::pin(h.recv()));
    futures::future::select_all(any).await;
    if how == "exit" {
        std::process::exit(0);
    }
    drop((segment, m, pool, map));
    Ok(())
}

/// Starts the service helper that meets `signal` as `how` says, signals it, and fails
/// unless it ends and its workers, its manager's server and its segment go with it.
async fn service_ends_whole(how: &str, sig: Option<Signal>) -> TestResult {
    use tokio::io::AsyncBufReadExt;
    let segment = support::unique_name("tkmp-limits-service");
    let mut cmd = helper_command("service")?;
    cmd.env("TKMP_HOW", how)
        .env("TKMP_SEGMENT", &segment)
        .stdout(std::process::Stdio::piped());
    let mut helper = cmd.spawn()?;
    let stdout = helper.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    let mut stdout = tokio::io::BufReader::new(stdout);
    let read = stdout.read_line(&mut line);
    tokio::time::timeout(Duration::from_secs(30), read).await??;
    let pids: Vec<u32> = line
        .trim()
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    ensure!(pids.len() == 3, "{how}: the helper said {line:?}");
    if let Some(sig) = sig {
        let pid = helper.id().ok_or("the helper has no pid")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)?;
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), helper.wait()).await;
    ensure!(ended.is_ok(), "{how}: the helper did not end on {sig:?}");
    let path = std::path::Path::new("/dev/shm").join(&segment);
    let gone = support::eventually(Duration::from_secs(20), || {
        pids.iter().all(|&p| support::is_zombie_or_gone(p)) && !path.exists()
    })
    .await;
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| !support::is_zombie_or_gone(p))
        .collect();
    let segment_left = path.exists();
    for &p in &left {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(&path);
    ensure!(
        gone,
        "{how}, {sig:?}: processes {left:?} of {pids:?} left, segment left: {segment_left}"
    );
    Ok(())
}

// README: children die with their parent, a killed creator's segment is removed by its
// tracker. A service's parent meets SIGTERM, SIGINT or SIGHUP without handlers, with tokio
// handlers that exit or return, or calls `std::process::exit` mid-map: its pool's workers,
// its manager's server and its named segment all go.
async fn a_signalled_service_leaves_no_worker_manager_or_segment() -> TestResult {
    for how in HOWS {
        match how {
            "exit-mid-map" => service_ends_whole(how, None).await?,
            _ => {
                for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                    service_ends_whole(how, Some(sig)).await?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- interrupted calls

extern "C" fn on_sigusr1(_: nix::libc::c_int) {}

/// Pool, queue, pipe, lock, event, process and manager calls in turn.
async fn everything_once() -> mp::Result<()> {
    let pool = Pool::new(2).await?;
    for _ in 0..5 {
        let v = pool.map(sqr, 0..500).chunksize(1).await?;
        ensure_len(v.len(), 500, "map")?;
    }
    for i in 0..100 {
        pool.apply(sqr, (i,)).await?;
    }
    pool.terminate().await?;
    let q = Queue::<Vec<u8>>::new()?;
    let (a, b) = Pipe::<Vec<u8>>::new()?;
    let lock = mp::Lock::new()?;
    let event = mp::Event::new()?;
    for i in 0..1000 {
        q.put(vec![1; i % 300]).await.map_err(mp::Error::from)?;
        ensure_len(q.get().await?.len(), i % 300, "queue")?;
        a.send(&vec![1; i * 7 % 3000]).await?;
        ensure_len(b.recv().await?.len(), i * 7 % 3000, "pipe")?;
        drop(lock.lock().await?);
        event.set();
        event.wait().await?;
        event.clear();
    }
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        for _ in 0..10 {
            let mut p = Process::new(nothing, ())
                .start_method(method)
                .start()
                .await?;
            p.join().await?;
        }
    }
    let m = Manager::start().await?;
    let d = m.dict::<String, i64>().await?;
    for i in 0..500 {
        d.insert(format!("{i}"), i).await?;
    }
    m.shutdown().await?;
    Ok(())
}

/// `Err` unless `len == want`.
fn ensure_len(len: usize, want: usize, what: &str) -> mp::Result<()> {
    match len == want {
        true => Ok(()),
        false => Err(mp::Error::InvalidArgument(format!(
            "{what}: {len} bytes came back of {want}"
        ))),
    }
}

/// In a child: [`everything_once`] while a thread sends the process SIGUSR1, whose handler
/// has no `SA_RESTART`, every 100 µs.
fn everything_under_a_storm(multi_thread: bool) {
    exit_unless_ok_on_runtime(multi_thread, "storm", || async {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let act = SigAction::new(
            SigHandler::Handler(on_sigusr1),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        unsafe { sigaction(Signal::SIGUSR1, &act) }?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let sent = std::sync::Arc::new(AtomicU64::new(0));
        let me = nix::unistd::getpid();
        let storm = std::thread::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            move || {
                while !stop.load(Relaxed) {
                    if nix::sys::signal::kill(me, Signal::SIGUSR1).is_ok() {
                        sent.fetch_add(1, Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        });
        let r = everything_once().await;
        stop.store(true, Relaxed);
        storm.join().map_err(|_| "the storm's thread panicked")?;
        r?;
        ensure!(
            sent.load(Relaxed) > 100,
            "only {} signals",
            sent.load(Relaxed)
        );
        Ok(())
    })
}

// Every call of the crate restarts a system call that a signal interrupted (EINTR): none
// fails as `Interrupted` while SIGUSR1 arrives every 100 µs.
async fn nothing_fails_as_interrupted_under_a_storm_of_signals() -> TestResult {
    in_child_on_both_runtimes(everything_under_a_storm).await
}
