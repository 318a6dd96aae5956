//! What the pool tests share: task functions, their helpers, and ways to watch workers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_multiprocessing::{self as mp, Pool, PoolBuilder};

use super::{TestResult, eventually, exists, temp_path};

/// Fails unless `builder`'s build is refused with an `InvalidArgument` that names `option`.
pub async fn refused_naming(builder: PoolBuilder, option: &str) -> TestResult {
    match builder.build().await {
        Err(mp::Error::InvalidArgument(m)) if m.contains(option) => Ok(()),
        Err(e) => Err(format!("refused, but not for its {option}: {e}").into()),
        Ok(_) => Err(format!("a pool was built with that {option}").into()),
    }
}

pub fn sqr(x: i64) -> i64 {
    x * x
}

pub fn mul(a: i64, b: i64) -> i64 {
    a * b
}

pub fn pid() -> u32 {
    std::process::id()
}

pub fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

pub async fn async_sqr(x: i64) -> i64 {
    tokio::task::yield_now().await;
    x * x
}

pub fn boom(x: i64) -> i64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

/// Writes this worker's pid to `path`, then sleeps `ms`.
pub fn pid_to_file_then_sleep(path: String, ms: u64) -> u32 {
    let _ = std::fs::write(&path, std::process::id().to_string());
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Waits (at most 30 s) until `path` exists: a task that ends when the test says so.
pub fn wait_for_file(path: String) -> u32 {
    for _ in 0..6000 {
        if std::path::Path::new(&path).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

/// Writes this worker's pid to `path`, then waits (at most 30 s) until `gate` exists.
pub fn pid_to_file_then_wait_for(path: String, gate: String) -> u32 {
    let _ = std::fs::write(&path, std::process::id().to_string());
    wait_for_file(gate)
}

pub fn touch(path: String) {
    let _ = std::fs::write(path, "ran");
}

pub fn abort_now() {
    std::process::abort();
}

/// Recurses until its stack runs out, 4 KiB a frame.
pub fn overflow_stack(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 512]);
    overflow_stack(depth + 1) + frame[7]
}

/// [`overflow_stack`] as an `async fn` task or target.
pub async fn overflow_stack_async(depth: u64) -> u64 {
    overflow_stack(depth)
}

/// Sets `started`, then waits for `gate`: an `async fn` task that keeps its worker's later
/// synchronous tasks on a task thread of the worker's.
pub async fn started_then_wait(started: mp::Event, gate: mp::Event) -> bool {
    started.set();
    gate.wait().await.is_ok()
}

/// Dies of SIGSEGV, as a worker that dereferenced a bad pointer does. Rust's runtime
/// catches the first SIGSEGV (to report stack overflows) and restores the default action;
/// the next one kills.
pub fn segfault_self() {
    for _ in 0..100 {
        let _ = std::process::Command::new("kill")
            .args(["-SEGV", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn exit_with(code: i32) {
    std::process::exit(code);
}

pub async fn read_pid(
    path: &std::path::Path,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let ok = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.parse::<u32>().is_ok())
    })
    .await;
    ensure!(ok, "the task never reported its pid");
    let pid = std::fs::read_to_string(path)?.parse::<u32>()?;
    let _ = std::fs::remove_file(path);
    Ok(pid)
}

pub fn kill9(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(std::io::Error::from)
}

/// The workers' pids, as seen from tasks: rounds of calls until every worker has answered
/// (a pool serves before all its workers are ready), or 100 rounds have passed.
pub async fn worker_pids(pool: &Pool) -> mp::Result<HashSet<u32>> {
    let mut seen = HashSet::new();
    for _ in 0..100 {
        let v = pool
            .map(sleep_ms, vec![50; 4 * pool.processes()])
            .chunksize(1)
            .await?;
        seen.extend(v);
        if seen.len() >= pool.processes() {
            break;
        }
    }
    Ok(seen)
}

pub async fn gone(pids: &HashSet<u32>) -> bool {
    let pids = pids.clone();
    eventually(Duration::from_secs(10), move || {
        pids.iter().all(|p| !exists(*p))
    })
    .await
}

/// A pool that spins for an hour after each short task: longer than any test, so that a
/// spin that missed what it waits for would show.
pub async fn spinning_pool() -> mp::Result<Pool> {
    Pool::builder()
        .processes(1)
        .spin(Duration::from_secs(3600))
        .build()
        .await
}

pub fn failing_init() {
    panic!("no database");
}

pub fn erring_init(why: String) -> Result<(), String> {
    Err(why)
}

pub static INIT_VALUE: AtomicUsize = AtomicUsize::new(0);

pub fn good_init(v: usize) {
    INIT_VALUE.store(v, Ordering::SeqCst);
}

pub fn init_value() -> usize {
    INIT_VALUE.load(Ordering::SeqCst)
}

/// Succeeds the first time (creating `path`), panics every time after.
pub fn init_once(path: String) {
    let attempts = std::fs::read_to_string(&path).map_or(0, |s| s.len());
    let _ = std::fs::write(&path, "x".repeat(attempts + 1));
    if attempts > 0 {
        panic!("initializer attempt {}", attempts + 1);
    }
}

pub static INIT_LEN: AtomicUsize = AtomicUsize::new(0);

pub fn big_init(blob: Vec<u8>) {
    INIT_LEN.store(blob.len(), Ordering::SeqCst);
}

pub fn init_len() -> usize {
    INIT_LEN.load(Ordering::SeqCst)
}

pub fn reverse(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

pub fn exiting_init() {
    std::process::exit(7);
}

/// Serialises as an error: it cannot cross.
#[derive(Debug, Deserialize)]
pub struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

pub fn take_unencodable(_u: Unencodable) -> u8 {
    1
}

/// Panics when it is encoded: a result whose `Serialize` panics.
#[derive(Debug, Deserialize)]
pub struct PanicsEncoded;

impl Serialize for PanicsEncoded {
    fn serialize<S: Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        panic!("PanicsEncoded will not be encoded");
    }
}

/// Encodes as a string, decodes only from an integer: the parent cannot decode it.
#[derive(Debug)]
pub struct Undecodable;

impl Serialize for Undecodable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("not a number")
    }
}

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(|_| Undecodable)
    }
}

pub fn make_undecodable() -> Undecodable {
    Undecodable
}

pub fn make_unencodable() -> Unencodable {
    Unencodable
}

/// Appends `id` to the file at `log` (one line per run), returns this worker's pid.
/// Takes `mib` MiB of memory for good (its pages touched, so resident); returns this
/// worker's pid.
pub fn keep_memory(mib: usize) -> u32 {
    std::mem::forget(vec![1u8; mib << 20]);
    std::process::id()
}

pub fn log_run(log: String, id: u32) -> u32 {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        // One write per line: appends from several workers never interleave within it.
        let _ = f.write_all(format!("{id}\n").as_bytes());
    }
    std::process::id()
}

pub static RUNNING: AtomicUsize = AtomicUsize::new(0);

pub static PEAK: AtomicUsize = AtomicUsize::new(0);

pub async fn overlap(ms: u64) -> usize {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    PEAK.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    PEAK.load(Ordering::SeqCst)
}

/// Announces it started, waits (on the worker's runtime) for `gate`, then creates `done`.
pub async fn async_gate_then_done(started: String, gate: String, done: String) -> bool {
    let _ = std::fs::write(&started, "1");
    for _ in 0..6000 {
        if std::path::Path::new(&gate).exists() {
            let _ = std::fs::write(&done, "1");
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Blocks its thread until `path` exists (at most 30 s); whether it appeared.
pub fn block_until_file(path: String) -> bool {
    for _ in 0..6000 {
        if std::path::Path::new(&path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

pub fn halve(x: f64) -> f32 {
    (x / 2.0) as f32
}

pub fn widen(x: i8) -> i64 {
    i64::from(x) * 1000
}

pub fn label(x: u16) -> String {
    format!("#{x}")
}

pub fn byte_or_boom(x: u8) -> u8 {
    if x == 77 {
        panic!("boom at 77");
    }
    x ^ 0xff
}

/// The first worker to claim `claim` returns at once; every other waits (at most 30 s)
/// until `gate` exists.
pub fn init_first_then_gate(claim: String, gate: String) {
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&claim)
        .is_ok()
    {
        return;
    }
    block_until_file(gate);
}

/// Runs 100 short tasks on `pool` (files named after `tag`): having seen runs that short,
/// the pool then sends tasks ahead to a worker that runs one.
pub async fn send_ahead_from_now_on(pool: &Pool, tag: &str) -> super::TestResult {
    let path = temp_path(&format!("{tag}-warm"));
    let warm: Vec<_> = (0..100)
        .map(|_| pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 0)))
        .collect();
    for w in warm {
        w.await?;
    }
    Ok(())
}

/// On `pool`, of one worker: a task sent ahead to the worker while another runs there, then
/// cancelled, never runs, and no worker is killed for it (either kind of cancel).
pub async fn cancel_behind_a_running_task(pool: &Pool) -> super::TestResult {
    send_ahead_from_now_on(pool, "behind").await?;
    for (round, kill_if_running) in [false, true, false, true].into_iter().enumerate() {
        let path = temp_path(&format!("behind-{round}"));
        let marker = temp_path(&format!("behind-never-{round}"));
        let first = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 1_500));
        let behind = pool.apply_async(pid_to_file_then_sleep, (marker.to_string(), 0));
        let worker = read_pid(&path).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        match kill_if_running {
            true => behind.cancel(),
            false => behind.cancel_if_queued(),
        }
        let e = behind.await;
        ensure!(
            e.as_ref().is_err_and(|e| e.is_cancelled()),
            "round {round}: {e:?}"
        );
        ensure!(first.await? == worker, "round {round}: the first task");
        ensure!(
            pool.apply(pid, ()).await? == worker,
            "round {round}: a worker was killed"
        );
        ensure!(!marker.exists(), "round {round}: the cancelled task ran");
    }
    Ok(())
}
