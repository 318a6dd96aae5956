//! Pool tests: real worker processes. Ported from CPython's `_TestPool`,
//! `_TestPoolWorkerLifetime` and `_TestPoolWorkerErrors` in
//! `Lib/test/_test_multiprocessing.py` (the Python case each test comes from is named),
//! plus the failure semantics Python's pool lacks.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use support::{TestResult, eventually, exists, test};
use tokio_multiprocessing::{self as mp, Error, ExitCause, Pool};

fn sqr(x: i64) -> i64 {
    x * x
}

fn mul(a: i64, b: i64) -> i64 {
    a * b
}

fn pid() -> u32 {
    std::process::id()
}

fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

async fn async_sqr(x: i64) -> i64 {
    tokio::task::yield_now().await;
    x * x
}

fn boom(x: i64) -> i64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

/// Writes this worker's pid to `path`, then sleeps `ms`.
fn pid_to_file_then_sleep(path: String, ms: u64) -> u32 {
    let _ = std::fs::write(&path, std::process::id().to_string());
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Waits (at most 30 s) until `path` exists: a task that ends when the test says so.
fn wait_for_file(path: String) -> u32 {
    for _ in 0..6000 {
        if std::path::Path::new(&path).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::id()
}

fn touch(path: String) {
    let _ = std::fs::write(path, "ran");
}

fn abort_now() {
    std::process::abort();
}

/// Dies of SIGSEGV, as a worker that dereferenced a bad pointer does. Rust's runtime
/// catches the first SIGSEGV (to report stack overflows) and restores the default action;
/// the next one kills.
fn segfault_self() {
    for _ in 0..100 {
        let _ = std::process::Command::new("kill")
            .args(["-SEGV", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn tmp_path(tag: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("tkmp-pool-{}-{tag}-{n}", std::process::id()))
        .to_string_lossy()
        .into_owned()
}
static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn read_pid(path: &str) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let ok = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(path).is_ok_and(|s| s.parse::<u32>().is_ok())
    })
    .await;
    ensure!(ok, "the task never reported its pid");
    let pid = std::fs::read_to_string(path)?.parse::<u32>()?;
    let _ = std::fs::remove_file(path);
    Ok(pid)
}

fn kill9(pid: u32) -> std::io::Result<()> {
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}

/// The workers' pids, as seen from tasks: rounds of calls until every worker has answered
/// (a pool serves before all its workers are ready), or 100 rounds have passed.
async fn worker_pids(pool: &Pool) -> mp::Result<HashSet<u32>> {
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

async fn gone(pids: &HashSet<u32>) -> bool {
    let pids = pids.clone();
    eventually(Duration::from_secs(10), move || {
        pids.iter().all(|p| !exists(*p))
    })
    .await
}

// test_apply
async fn apply() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(pool.apply(sqr, (5,)).await? == 25, "sqr(5)");
    ensure!(pool.apply(mul, (3, 4)).await? == 12, "mul(3, 4)");
    ensure!(
        pool.apply(pid, ()).await? != std::process::id(),
        "ran in a worker"
    );
    Ok(())
}

// test_map, test_map_chunksize
async fn map() -> TestResult {
    let pool = Pool::new(2).await?;
    let want: Vec<i64> = (0..100).map(|x| x * x).collect();
    ensure!(pool.map(sqr, 0..100).await? == want, "map");
    ensure!(
        pool.map(sqr, 0..100).chunksize(1).await? == want,
        "chunksize 1"
    );
    ensure!(
        pool.map(sqr, 0..100).chunksize(7).await? == want,
        "chunksize 7"
    );
    ensure!(
        pool.map(sqr, 0..100).chunksize(1000).await? == want,
        "one chunk"
    );
    let mut r = pool.map_async(sqr, 0..10);
    ensure!(
        r.get_timeout(Duration::from_secs(20)).await? == want[..10],
        "map_async"
    );
    Ok(())
}

// test_empty_iterable
async fn empty_iterable() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(
        pool.map(sqr, Vec::<i64>::new()).await?.is_empty(),
        "map of nothing"
    );
    ensure!(
        pool.starmap(mul, Vec::<(i64, i64)>::new())
            .await?
            .is_empty(),
        "starmap"
    );
    let n = pool.imap(sqr, Vec::<i64>::new()).count().await;
    ensure!(n == 0, "imap of nothing yielded {n}");
    Ok(())
}

// test_starmap, test_starmap_async
async fn starmap() -> TestResult {
    let pool = Pool::new(2).await?;
    let args: Vec<(i64, i64)> = (0..10).map(|i| (i, i + 1)).collect();
    let want: Vec<i64> = args.iter().map(|(a, b)| a * b).collect();
    ensure!(pool.starmap(mul, args.clone()).await? == want, "starmap");
    ensure!(
        pool.starmap_async(mul, args).await? == want,
        "starmap_async"
    );
    Ok(())
}

// test_imap, test_imap_unordered
async fn imap() -> TestResult {
    let pool = Pool::new(2).await?;
    let got: Vec<i64> = pool
        .imap(sqr, 0..100)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap order"
    );
    let got: Vec<i64> = pool
        .imap(sqr, 0..100)
        .chunksize(7)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap chunks"
    );
    let mut got: Vec<i64> = pool
        .imap_unordered(sqr, 0..100)
        .chunksize(3)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    got.sort();
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap_unordered set"
    );
    Ok(())
}

// The issue's own: an endless iterator, 1,000 results, a bounded window of inputs read.
async fn imap_endless_input_is_read_lazily() -> TestResult {
    let pool = Pool::new(2).await?;
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let input = (0i64..).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    let got: Vec<i64> = pool
        .imap(sqr, input)
        .chunksize(4)
        .take(1000)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..1000).map(|x| x * x).collect::<Vec<_>>(),
        "first 1000"
    );
    let n = pulled.load(Ordering::Relaxed);
    // Window: 4 chunks per worker, of 4 inputs each.
    ensure!(n <= 1000 + 4 * 2 * 4, "read {n} inputs for 1000 results");
    let mut s = pool.imap_unordered(sqr, 0i64..).take(1000);
    let mut k = 0;
    while let Some(r) = s.next().await {
        r?;
        k += 1;
    }
    ensure!(k == 1000, "imap_unordered took {k}");
    Ok(())
}

// test_async
async fn apply_async() -> TestResult {
    let pool = Pool::new(2).await?;
    let mut r = pool.apply_async(sqr, (7,));
    ensure!(r.get_timeout(Duration::from_secs(20)).await? == 49, "get");
    let mut r = pool.apply_async(sqr, (8,));
    let v = (&mut r).await?;
    ensure!(v == 64, "await");
    ensure!(r.ready(), "ready after the result came");
    let hs: Vec<_> = (0..200).map(|i| pool.apply_async(sqr, (i,))).collect();
    let v = futures::future::try_join_all(hs).await?;
    ensure!(
        v == (0..200).map(|x| x * x).collect::<Vec<_>>(),
        "200 at once"
    );
    Ok(())
}

// test_async_timeout: a timed-out get leaves the task running; it can be awaited later.
async fn get_timeout_leaves_task_running() -> TestResult {
    let pool = Pool::new(1).await?;
    let gate = tmp_path("gate");
    let mut r = pool.apply_async(wait_for_file, (gate.clone(),));
    let e = r.get_timeout(Duration::from_millis(10)).await;
    ensure!(
        matches!(e, Err(Error::Timeout)),
        "expected Timeout, got {e:?}"
    );
    ensure!(!r.ready(), "not ready yet");
    ensure!(
        r.successful().is_none(),
        "successful() is None while running"
    );
    std::fs::write(&gate, "open")?;
    let worker = r.await?;
    let _ = std::fs::remove_file(&gate);
    ensure!(worker != std::process::id(), "ran in a worker");
    Ok(())
}

// test_traceback / test_wrapped_exception: a panic fails that task only, with its message.
async fn panic_fails_that_task_only() -> TestResult {
    let pool = Pool::new(2).await?;
    let before = worker_pids(&pool).await?;
    let e = pool.apply(boom, (3,)).await;
    ensure!(e.as_ref().is_err_and(|e| e.is_panic()), "is_panic: {e:?}");
    let e = e.err().ok_or("boom(3) succeeded")?;
    ensure!(e.panic_message() == Some("boom at 3"), "{e:?}");
    ensure!(
        e.panic_location()
            .is_some_and(|at| at.contains("tests/pool.rs")),
        "the panic's location: {:?}",
        e.panic_location()
    );
    ensure!(e.to_string().contains("boom at 3"), "{e}");
    ensure!(pool.apply(boom, (4,)).await? == 4, "next task");
    let e = pool.map(boom, 0..10).chunksize(2).await;
    ensure!(
        e.as_ref()
            .is_err_and(|e| e.panic_message() == Some("boom at 3") && e.input_index() == Some(3)),
        "map: {e:?}"
    );
    let items: Vec<_> = pool.imap(boom, 0..6).collect().await;
    ensure!(
        items.iter().filter(|r| r.is_err()).count() == 1,
        "one failed item"
    );
    ensure!(
        items[3].is_err() && items[5].as_ref().ok() == Some(&5),
        "{items:?}"
    );
    let mut r = pool.apply_async(boom, (3,));
    ensure!(
        tokio::time::timeout(Duration::from_secs(20), &mut r)
            .await
            .is_ok(),
        "finished"
    );
    ensure!(
        r.successful() == Some(false),
        "successful() is false after a panic"
    );
    ensure!(
        worker_pids(&pool).await? == before,
        "a panic replaces no worker"
    );
    Ok(())
}

// The issue's own (CPython hangs here): SIGKILL mid-task fails that task, names pid and
// signal; the worker is replaced and the pool serves 1,000 more tasks.
async fn worker_killed_mid_task() -> TestResult {
    let pool = Pool::new(2).await?;
    let path = tmp_path("kill");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.clone(), 60_000));
    let victim = read_pid(&path).await?;
    kill9(victim)?;
    match h.await {
        Err(e) if e.is_worker_lost() => {
            ensure!(e.worker_pid() == Some(victim), "names {e}, killed {victim}");
            ensure!(e.exit_cause() == Some(ExitCause::Signal(9)), "cause {e}");
        }
        other => return Err(format!("expected WorkerLost, got {other:?}").into()),
    }
    let hs: Vec<_> = (0..1000).map(|i| pool.apply_async(sqr, (i,))).collect();
    let v = futures::future::try_join_all(hs).await?;
    ensure!(
        v == (0..1000).map(|x| x * x).collect::<Vec<_>>(),
        "1000 after"
    );
    let pids = worker_pids(&pool).await?;
    ensure!(
        pids.len() == 2 && !pids.contains(&victim),
        "replaced: {pids:?}"
    );
    Ok(())
}

/// A pool that spins for an hour after each short task: longer than any test, so that a
/// spin that missed what it waits for would show.
async fn spinning_pool() -> mp::Result<Pool> {
    Pool::builder()
        .processes(1)
        .spin(Duration::from_secs(3600))
        .build()
        .await
}

// While the pool spins for the next answer (short tasks, a spare core), a worker killed
// mid-task is still noticed at once, and the pool goes on serving.
async fn spinning_pool_notices_a_dead_worker() -> TestResult {
    let pool = spinning_pool().await?;
    for i in 0..50 {
        ensure!(pool.apply(sqr, (i,)).await? == i * i, "short task {i}");
    }
    let path = tmp_path("spin-kill");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.clone(), 60_000));
    let victim = read_pid(&path).await?;
    kill9(victim)?;
    match tokio::time::timeout(Duration::from_secs(20), h).await {
        Ok(Err(e)) if e.is_worker_lost() && e.worker_pid() == Some(victim) => {}
        other => return Err(format!("expected WorkerLost of {victim}, got {other:?}").into()),
    }
    ensure!(pool.apply(sqr, (7,)).await? == 49, "serves after");
    Ok(())
}

// A pool spinning for its next answer yields to the other tasks of its runtime: on a
// current-thread runtime, a timer fires and a spawned task runs while it spins.
async fn spinning_pool_leaves_its_runtime_free() -> TestResult {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = || -> TestResult {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let pool = spinning_pool().await?;
                for i in 0..50 {
                    ensure!(pool.apply(sqr, (i,)).await? == i * i, "short task {i}");
                }
                // The pool now spins for an answer that will not come.
                tokio::time::sleep(Duration::from_millis(5)).await;
                ensure!(tokio::spawn(async { 6 * 7 }).await? == 42, "spawned task");
                ensure!(pool.apply(sqr, (9,)).await? == 81, "serves after");
                Ok(())
            })
        };
        let _ = tx.send(run().map_err(|e| e.to_string()));
    });
    match tokio::time::timeout(Duration::from_secs(20), rx).await {
        Ok(Ok(r)) => Ok(r?),
        Ok(Err(_)) => Err("the runtime's thread panicked".into()),
        Err(_) => Err("the runtime was held by the spinning pool for 20 s".into()),
    }
}

// Tasks a worker held behind the one it was running are not lost with it: only the running
// task fails; the others run on the replacement.
async fn worker_killed_with_tasks_waiting_behind() -> TestResult {
    let pool = Pool::new(1).await?;
    let path = tmp_path("behind");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.clone(), 60_000));
    let behind: Vec<_> = (0..20).map(|i| pool.apply_async(sqr, (i,))).collect();
    let victim = read_pid(&path).await?;
    kill9(victim)?;
    ensure!(
        h.await
            .is_err_and(|e| e.is_worker_lost() && e.worker_pid() == Some(victim)),
        "the running task fails"
    );
    let v = futures::future::try_join_all(behind).await?;
    ensure!(
        v == (0..20).map(|x| x * x).collect::<Vec<_>>(),
        "the others ran: {v:?}"
    );
    Ok(())
}

// abort (SIGABRT), a segfault (SIGSEGV) and exit(3) mid-task: the error names the signal or
// the exit code.
async fn worker_abort_and_exit_mid_task() -> TestResult {
    let pool = Pool::new(1).await?;
    let e = pool.apply(abort_now, ()).await;
    ensure!(
        e.as_ref()
            .is_err_and(|e| e.exit_cause() == Some(ExitCause::Signal(6))),
        "abort: {e:?}"
    );
    let e = pool.apply(segfault_self, ()).await;
    ensure!(
        e.as_ref()
            .is_err_and(|e| e.exit_cause() == Some(ExitCause::Signal(11))),
        "segfault: {e:?}"
    );
    let e = pool.apply(exit_with, (3,)).await;
    ensure!(
        e.as_ref()
            .is_err_and(|e| e.exit_cause() == Some(ExitCause::Code(3))),
        "exit: {e:?}"
    );
    ensure!(pool.apply(sqr, (3,)).await? == 9, "serves after");
    Ok(())
}

// task_timeout kills and replaces the worker; the other tasks are untouched.
async fn task_timeout_kills_and_replaces() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_secs(1))
        .build()
        .await?;
    let path = tmp_path("timeout");
    let slow = pool.apply_async(pid_to_file_then_sleep, (path.clone(), 60_000));
    let victim = read_pid(&path).await?;
    let others: Vec<_> = (0..50).map(|i| pool.apply_async(sqr, (i,))).collect();
    match slow.await {
        Err(e) if e.is_timeout() => {
            ensure!(e.worker_pid() == Some(victim), "{e} vs {victim}");
            ensure!(e.to_string().contains("1s"), "{e}");
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    let v = futures::future::try_join_all(others).await?;
    ensure!(v.len() == 50, "others done");
    ensure!(
        gone(&[victim].into()).await,
        "the timed-out worker is reaped"
    );
    ensure!(pool.apply(sqr, (9,)).await? == 81, "serves after");
    // Per call, on a pool without a default timeout.
    let pool = Pool::new(1).await?;
    let e = pool
        .apply_timeout(sleep_ms, (60_000,), Duration::from_millis(200))
        .await;
    ensure!(e.as_ref().is_err_and(|e| e.is_timeout()), "{e:?}");
    ensure!(pool.apply(sqr, (2,)).await? == 4, "serves after");
    Ok(())
}

fn failing_init() {
    panic!("no database");
}

static INIT_VALUE: AtomicUsize = AtomicUsize::new(0);

fn good_init(v: usize) {
    INIT_VALUE.store(v, Ordering::SeqCst);
}

fn init_value() -> usize {
    INIT_VALUE.load(Ordering::SeqCst)
}

// _TestInitializers.test_pool_initializer; bpo-43306: a failing initializer is an error,
// not a respawn loop.
async fn initializer() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .initializer(good_init, (42usize,))
        .build()
        .await?;
    let v = pool.map(|_x: u8| init_value(), 0..8u8).chunksize(1).await?;
    ensure!(
        v.iter().all(|&x| x == 42),
        "initializer ran in every worker: {v:?}"
    );
    drop(pool);
    let e = Pool::builder()
        .processes(2)
        .initializer(failing_init, ())
        .build()
        .await;
    let failed = match e {
        Err(Error::InitializerFailed { message, pid }) => {
            ensure!(message.contains("no database"), "{message}");
            pid
        }
        other => return Err(format!("expected InitializerFailed, got {other:?}").into()),
    };
    ensure!(gone(&[failed].into()).await, "the failed worker is reaped");
    Ok(())
}

/// Succeeds the first time (creating `path`), panics every time after.
fn init_once(path: String) {
    let attempts = std::fs::read_to_string(&path).map_or(0, |s| s.len());
    let _ = std::fs::write(&path, "x".repeat(attempts + 1));
    if attempts > 0 {
        panic!("initializer attempt {}", attempts + 1);
    }
}

static INIT_LEN: AtomicUsize = AtomicUsize::new(0);

fn big_init(blob: Vec<u8>) {
    INIT_LEN.store(blob.len(), Ordering::SeqCst);
}

fn init_len() -> usize {
    INIT_LEN.load(Ordering::SeqCst)
}

// Initializer arguments larger than a socket's buffer reach every worker.
async fn initializer_with_large_arguments() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .initializer(big_init, (vec![7u8; 4 << 20],))
        .build()
        .await?;
    let v = pool.map(|_x: u8| init_len(), 0..8u8).chunksize(1).await?;
    ensure!(v.iter().all(|&n| n == 4 << 20), "{v:?}");
    Ok(())
}

fn reverse(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

// Arguments and results larger than a socket's buffer, several in flight per worker.
async fn large_arguments_and_results() -> TestResult {
    let pool = Pool::new(2).await?;
    let blobs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 600 << 10]).collect();
    let hs: Vec<_> = blobs
        .iter()
        .map(|b| pool.apply_async(reverse, (b.clone(),)))
        .collect();
    let out = futures::future::try_join_all(hs).await?;
    ensure!(out == blobs, "apply_async echoes");
    let out = pool.map(reverse, blobs.clone()).chunksize(1).await?;
    ensure!(out == blobs, "map echoes");
    Ok(())
}

fn exiting_init() {
    std::process::exit(7);
}

// An initializer that kills its process is an initializer failure too, naming the cause.
async fn initializer_that_exits() -> TestResult {
    let e = Pool::builder()
        .processes(1)
        .initializer(exiting_init, ())
        .build()
        .await;
    match e {
        Err(Error::InitializerFailed { message, pid }) => {
            ensure!(message.contains("exit code 7"), "{message}");
            ensure!(gone(&[pid].into()).await, "reaped");
        }
        other => return Err(format!("expected InitializerFailed, got {other:?}").into()),
    }
    Ok(())
}

// bpo-43306: a replacement worker whose initializer fails is not restarted in a loop; the
// tasks get the initializer's failure.
async fn failing_initializer_of_a_replacement() -> TestResult {
    let path = tmp_path("init-once");
    let pool = Pool::builder()
        .processes(1)
        .initializer(init_once, (path.clone(),))
        .build()
        .await?;
    let e = pool.apply(abort_now, ()).await;
    ensure!(e.as_ref().is_err_and(|e| e.is_worker_lost()), "{e:?}");
    let e = pool.apply(sqr, (2,)).await;
    match e.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::InitializerFailed { message, .. }) => {
            ensure!(message.contains("initializer attempt 2"), "{message}")
        }
        other => return Err(format!("expected InitializerFailed, got {other:?}").into()),
    }
    let e = pool.apply(sqr, (2,)).await;
    ensure!(
        matches!(
            e.as_ref().err().and_then(|e| e.caller_error()),
            Some(Error::InitializerFailed { .. })
        ),
        "again: {e:?}"
    );
    let attempts = std::fs::read_to_string(&path)?.len();
    let _ = std::fs::remove_file(&path);
    ensure!(
        attempts == 2,
        "the initializer ran {attempts} times: a respawn loop"
    );
    Ok(())
}

/// Serialises as an error: it cannot cross.
#[derive(Debug, Deserialize)]
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

fn take_unencodable(_u: Unencodable) -> u8 {
    1
}

/// Encodes as a string, decodes only from an integer: the parent cannot decode it.
#[derive(Debug)]
struct Undecodable;

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

fn make_undecodable() -> Undecodable {
    Undecodable
}

fn make_unencodable() -> Unencodable {
    Unencodable
}

// _TestPoolWorkerErrors.test_unpickleable_result: a result the worker cannot encode fails
// that task (20 times over) and loses no worker.
async fn unencodable_result() -> TestResult {
    let pool = Pool::new(2).await?;
    let before = worker_pids(&pool).await?;
    for _ in 0..20 {
        match pool.apply(make_unencodable, ()).await {
            Err(e) => {
                let text = e.to_string();
                ensure!(
                    text.contains("could not encode the task's result"),
                    "{text}"
                );
                ensure!(text.contains("Unencodable"), "{text}");
                ensure!(text.contains("refuses"), "{text}");
            }
            other => return Err(format!("expected Encode, got {other:?}").into()),
        }
    }
    ensure!(worker_pids(&pool).await? == before, "no worker was lost");
    Ok(())
}

// _TestPool.test_map_unplicklable: an argument that cannot be encoded fails that call at
// submission; a result the parent cannot decode fails that task, naming the type.
async fn unencodable_argument_and_undecodable_result() -> TestResult {
    let pool = Pool::new(1).await?;
    let before = pool.apply(pid, ()).await?;
    let mut h = pool.apply_async(take_unencodable, (Unencodable,));
    ensure!(h.ready(), "failed at submission, nothing sent");
    let e = h.await;
    match e.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::Encode { type_name, message }) => {
            ensure!(type_name.contains("Unencodable"), "{type_name}");
            ensure!(message.contains("refuses"), "{message}");
        }
        _ => return Err(format!("expected Encode, got {e:?}").into()),
    }
    let e = pool.apply(make_undecodable, ()).await;
    match e.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::Decode { type_name, .. }) => {
            ensure!(type_name.contains("Undecodable"), "{type_name}")
        }
        _ => return Err(format!("expected Decode, got {e:?}").into()),
    }
    ensure!(pool.apply(pid, ()).await? == before, "the worker survived");
    Ok(())
}

// test_terminate, test_close / join: calls after close or terminate fail clearly.
async fn closed_pool() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(
        matches!(pool.join().await, Err(Error::PoolRunning)),
        "join while running"
    );
    let pids = worker_pids(&pool).await?;
    let pending = pool.map_async(sleep_ms, vec![100; 4]);
    pool.close();
    ensure!(
        pool.apply(sqr, (1,))
            .await
            .is_err_and(|e| e.is_pool_closed()),
        "apply after close"
    );
    ensure!(
        pending.await?.len() == 4,
        "queued work finishes after close"
    );
    tokio::time::timeout(Duration::from_secs(20), pool.join()).await??;
    ensure!(gone(&pids).await, "workers exited after close + join");

    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let long = pool.apply_async(sleep_ms, (60_000,));
    pool.terminate().await?;
    ensure!(
        long.await.is_err_and(|e| e.is_pool_closed()),
        "terminated task"
    );
    ensure!(
        pool.apply(sqr, (1,))
            .await
            .is_err_and(|e| e.is_pool_closed()),
        "apply after terminate"
    );
    ensure!(gone(&pids).await, "terminate reaps the workers");
    Ok(())
}

// test_context: dropping the pool (Python's `with Pool()`) kills its workers, no zombie.
async fn drop_terminates_workers() -> TestResult {
    let fds = support::open_fds();
    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let _in_flight = pool.apply_async(sleep_ms, (60_000,));
    drop(pool);
    ensure!(gone(&pids).await, "no worker left, not even a zombie");
    drop(_in_flight);
    ensure!(
        eventually(Duration::from_secs(10), || support::open_fds() <= fds).await,
        "descriptors leaked: {} before, {} after",
        fds,
        support::open_fds()
    );
    Ok(())
}

// cancel(): a queued task is removed and never runs; a running one's worker is replaced.
async fn cancel_queued_and_running() -> TestResult {
    let pool = Pool::new(1).await?;
    let path = tmp_path("running");
    let running = pool.apply_async(pid_to_file_then_sleep, (path.clone(), 60_000));
    let victim = read_pid(&path).await?;
    let marker = tmp_path("never");
    // Twenty: some wait in the pool's queue, some were sent ahead to the worker.
    let queued: Vec<_> = (0..20)
        .map(|_| pool.apply_async(touch, (marker.clone(),)))
        .collect();
    for q in &queued {
        q.cancel();
    }
    for q in queued {
        let e = q.await;
        ensure!(e.as_ref().is_err_and(|e| e.is_cancelled()), "queued: {e:?}");
    }
    running.cancel();
    let e = running.await;
    ensure!(
        e.as_ref().is_err_and(|e| e.is_cancelled()),
        "running: {e:?}"
    );
    ensure!(gone(&[victim].into()).await, "its worker was killed");
    let after = pool.apply(pid, ()).await?;
    ensure!(after != victim, "replaced");
    ensure!(
        !std::path::Path::new(&marker).exists(),
        "a cancelled task ran"
    );
    Ok(())
}

/// Appends `id` to the file at `log` (one line per run), returns this worker's pid.
fn log_run(log: String, id: u32) -> u32 {
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

// _TestPoolWorkerLifetime.test_pool_worker_lifetime: workers retire after n tasks; every
// task runs exactly once.
async fn maxtasksperchild() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .maxtasksperchild(3)
        .build()
        .await?;
    let log = tmp_path("runs");
    let hs: Vec<_> = (0..30u32)
        .map(|i| pool.apply_async(log_run, (log.clone(), i)))
        .collect();
    let pids = futures::future::try_join_all(hs).await?;
    ensure!(pids.len() == 30, "every task answered once");
    let runs = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let mut ran: Vec<u32> = runs.lines().map(|l| l.parse()).collect::<Result<_, _>>()?;
    ran.sort();
    ensure!(
        ran == (0..30).collect::<Vec<_>>(),
        "each task ran exactly once: {ran:?}"
    );
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    ensure!(
        distinct.len() >= 10,
        "30 tasks, 3 per worker: {} workers",
        distinct.len()
    );
    for p in &distinct {
        ensure!(
            pids.iter().filter(|x| *x == p).count() <= 3,
            "worker {p} ran more than 3"
        );
    }
    let v = pool.map(sqr, 0..100).chunksize(5).await?;
    ensure!(
        v == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "map across retirements"
    );
    Ok(())
}

// _TestPoolWorkerLifetime.test_pool_worker_lifetime_early_close
async fn maxtasksperchild_early_close() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .maxtasksperchild(1)
        .build()
        .await?;
    let hs: Vec<_> = (0..6).map(|i| pool.apply_async(sqr, (i,))).collect();
    pool.close();
    tokio::time::timeout(Duration::from_secs(30), pool.join()).await??;
    let v = futures::future::try_join_all(hs).await?;
    ensure!(v == vec![0, 1, 4, 9, 16, 25], "{v:?}");
    Ok(())
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

async fn overlap(ms: u64) -> usize {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    PEAK.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    PEAK.load(Ordering::SeqCst)
}

// async fn tasks run on the worker's runtime, several at once when asked.
async fn async_tasks_and_concurrency() -> TestResult {
    let pool = Pool::new(1).await?;
    ensure!(pool.apply(async_sqr, (6,)).await? == 36, "async apply");
    ensure!(
        pool.map(async_sqr, 0..10).await? == (0..10).map(|x| x * x).collect::<Vec<_>>(),
        "async map"
    );
    let pool = Pool::builder().processes(1).concurrency(4).build().await?;
    // Twice the concurrency: the cap of 4 is put to the test.
    let hs: Vec<_> = (0..8).map(|_| pool.apply_async(overlap, (300,))).collect();
    let peaks = futures::future::try_join_all(hs).await?;
    ensure!(
        peaks.iter().any(|&p| p >= 2),
        "ran one at a time: {peaks:?}"
    );
    ensure!(
        peaks.iter().all(|&p| p <= 4),
        "more than 4 at once: {peaks:?}"
    );
    // A synchronous task beside them runs on the task thread, and all finish.
    let a = pool.apply_async(overlap, (200,));
    let s = pool.apply_async(sleep_ms, (100,));
    a.await?;
    s.await?;
    Ok(())
}

/// Announces it started, waits (on the worker's runtime) for `gate`, then creates `done`.
async fn async_gate_then_done(started: String, gate: String, done: String) -> bool {
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
fn block_until_file(path: String) -> bool {
    for _ in 0..6000 {
        if std::path::Path::new(&path).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

// A synchronous task that blocks does not hold up the async tasks running in its worker.
async fn sync_task_does_not_block_async_tasks() -> TestResult {
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let (started, gate, done) = (tmp_path("started"), tmp_path("gate"), tmp_path("done"));
    let a = pool.apply_async(
        async_gate_then_done,
        (started.clone(), gate.clone(), done.clone()),
    );
    let ok = eventually(Duration::from_secs(20), || {
        std::path::Path::new(&started).exists()
    })
    .await;
    ensure!(ok, "the async task never started");
    // Blocks until the async task, which waits for the gate, has finished.
    let s = pool.apply_async(block_until_file, (done.clone(),));
    std::fs::write(&gate, "open")?;
    ensure!(a.await?, "the async task ran to its end");
    ensure!(s.await?, "the blocking task saw the async task finish");
    for p in [started, gate, done] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

// A finished task's answer is not held back while its worker runs the next task, which may
// be long: here the next one blocks until the test has seen the first answer.
async fn answer_not_held_behind_the_next_task() -> TestResult {
    let pool = Pool::new(1).await?;
    let (first, second) = (tmp_path("hold-first"), tmp_path("hold-second"));
    let gate = pool.apply_async(wait_for_file, (first.clone(),));
    // Queued behind the gate, and sent ahead to the worker while it waits.
    let quick = pool.apply_async(sqr, (7,));
    let long = pool.apply_async(block_until_file, (second.clone(),));
    let rest: Vec<_> = (0..50).map(|i| pool.apply_async(sqr, (i,))).collect();
    std::fs::write(&first, "go")?;
    let got = tokio::time::timeout(Duration::from_secs(20), quick).await;
    std::fs::write(&second, "go")?;
    ensure!(
        matches!(got, Ok(Ok(49))),
        "the answer waited for the next task: {got:?}"
    );
    gate.await?;
    ensure!(long.await?, "the long task saw its file");
    let v = futures::future::try_join_all(rest).await?;
    ensure!(v == (0..50).map(|x| x * x).collect::<Vec<_>>(), "{v:?}");
    for p in [first, second] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

fn halve(x: f64) -> f32 {
    (x / 2.0) as f32
}

fn widen(x: i8) -> i64 {
    i64::from(x) * 1000
}

fn label(x: u16) -> String {
    format!("#{x}")
}

fn byte_or_boom(x: u8) -> u8 {
    if x == 77 {
        panic!("boom at 77");
    }
    x ^ 0xff
}

// Sequences of plain numbers travel as one `bin`, others as arrays: both round-trip through
// real workers, with each item's failure in its place.
async fn map_over_number_types() -> TestResult {
    let pool = Pool::new(2).await?;
    let xs: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.5 - 100.0).collect();
    let got = pool.map(halve, xs.clone()).chunksize(64).await?;
    ensure!(
        got == xs.iter().map(|x| halve(*x)).collect::<Vec<_>>(),
        "f64 → f32"
    );
    let got = pool.map(widen, i8::MIN..=i8::MAX).await?;
    ensure!(
        got == (i8::MIN..=i8::MAX).map(widen).collect::<Vec<_>>(),
        "i8 → i64"
    );
    let got = pool.map(label, 0u16..300).chunksize(7).await?;
    ensure!(
        got == (0u16..300).map(label).collect::<Vec<_>>(),
        "u16 → String"
    );
    let got: Vec<_> = pool
        .imap(byte_or_boom, 0u8..=255)
        .chunksize(50)
        .collect()
        .await;
    ensure!(got.len() == 256, "{} results", got.len());
    for (x, r) in (0u8..=255).zip(&got) {
        match (x, r) {
            (77, Err(e)) => {
                ensure!(e.input_index() == Some(77), "{e:?}");
                ensure!(
                    e.panic_message().is_some_and(|m| m.contains("boom at 77")),
                    "{e:?}"
                );
            }
            (x, Ok(y)) => ensure!(*y == x ^ 0xff, "{x} gave {y}"),
            (x, r) => ensure!(false, "{x} gave {r:?}"),
        }
    }
    Ok(())
}

/// The first worker to claim `claim` returns at once; every other waits (at most 30 s)
/// until `gate` exists.
fn init_first_then_gate(claim: String, gate: String) {
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

// A pool serves as soon as one worker is ready; the others take tasks once they are.
async fn pool_serves_before_all_workers_are_ready() -> TestResult {
    let (claim, gate) = (tmp_path("claim"), tmp_path("gate"));
    let built = tokio::time::timeout(
        Duration::from_secs(20),
        Pool::builder()
            .processes(2)
            .initializer(init_first_then_gate, (claim.clone(), gate.clone()))
            .build(),
    )
    .await;
    let Ok(built) = built else {
        std::fs::write(&gate, "open")?;
        return Err("build waited for every worker".into());
    };
    let pool = built?;
    let first = pool.apply(pid, ()).await?;
    std::fs::write(&gate, "open")?;
    let seen = worker_pids(&pool).await?;
    ensure!(
        seen.len() == 2 && seen.contains(&first),
        "the second worker joined: {seen:?}"
    );
    for p in [claim, gate] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

// test_make_pool: a pool of 0 processes is an error.
async fn zero_processes() -> TestResult {
    let e = Pool::builder().processes(0).build().await;
    ensure!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    Ok(())
}

// Workers started by the fork server serve like any other.
async fn forkserver_workers() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .start_method(mp::StartMethod::ForkServer)
        .build()
        .await?;
    ensure!(
        pool.map(sqr, 0..50).await? == (0..50).map(|x| x * x).collect::<Vec<_>>(),
        "map"
    );
    Ok(())
}

fn main() {
    mp::init();
    // Descriptor counts are process-wide: that test runs alone, before the others.
    let args = libtest_mimic::Arguments::from_args();
    let alone = libtest_mimic::Arguments {
        test_threads: Some(1),
        ..args.clone()
    };
    let first = libtest_mimic::run(
        &alone,
        vec![test("drop_terminates_workers", drop_terminates_workers)],
    );
    let rest = libtest_mimic::run(
        &args,
        vec![
            test("apply", apply),
            test("map", map),
            test("empty_iterable", empty_iterable),
            test("starmap", starmap),
            test("imap", imap),
            test(
                "imap_endless_input_is_read_lazily",
                imap_endless_input_is_read_lazily,
            ),
            test("apply_async", apply_async),
            test(
                "get_timeout_leaves_task_running",
                get_timeout_leaves_task_running,
            ),
            test("panic_fails_that_task_only", panic_fails_that_task_only),
            test("worker_killed_mid_task", worker_killed_mid_task),
            test(
                "spinning_pool_notices_a_dead_worker",
                spinning_pool_notices_a_dead_worker,
            ),
            test(
                "spinning_pool_leaves_its_runtime_free",
                spinning_pool_leaves_its_runtime_free,
            ),
            test(
                "worker_killed_with_tasks_waiting_behind",
                worker_killed_with_tasks_waiting_behind,
            ),
            test(
                "failing_initializer_of_a_replacement",
                failing_initializer_of_a_replacement,
            ),
            test(
                "worker_abort_and_exit_mid_task",
                worker_abort_and_exit_mid_task,
            ),
            test(
                "task_timeout_kills_and_replaces",
                task_timeout_kills_and_replaces,
            ),
            test("initializer", initializer),
            test(
                "unencodable_argument_and_undecodable_result",
                unencodable_argument_and_undecodable_result,
            ),
            test("closed_pool", closed_pool),
            test("cancel_queued_and_running", cancel_queued_and_running),
            test("maxtasksperchild", maxtasksperchild),
            test("maxtasksperchild_early_close", maxtasksperchild_early_close),
            test("async_tasks_and_concurrency", async_tasks_and_concurrency),
            test(
                "sync_task_does_not_block_async_tasks",
                sync_task_does_not_block_async_tasks,
            ),
            test("unencodable_result", unencodable_result),
            test("initializer_that_exits", initializer_that_exits),
            test("large_arguments_and_results", large_arguments_and_results),
            test(
                "initializer_with_large_arguments",
                initializer_with_large_arguments,
            ),
            test("zero_processes", zero_processes),
            test("map_over_number_types", map_over_number_types),
            test(
                "pool_serves_before_all_workers_are_ready",
                pool_serves_before_all_workers_are_ready,
            ),
            test(
                "answer_not_held_behind_the_next_task",
                answer_not_held_behind_the_next_task,
            ),
            test("forkserver_workers", forkserver_workers),
        ],
    );
    let failed = first.has_failed() || rest.has_failed();
    std::process::exit(if failed { 101 } else { 0 });
}
