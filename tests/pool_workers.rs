//! The life of a pool's workers, ported from CPython's `_TestPoolWorkerLifetime` and
//! `_TestPoolWorkerErrors` where they exist: initializers, `maxtasksperchild`, `async fn`
//! tasks and their concurrency, and how a worker runs and answers its tasks.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::pool::*;
use support::{TestResult, eventually, temp_path};
use tokio_multiprocessing::{self as mp, Error, Pool};

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

// An initializer that returns `Err` fails the pool's build with the error's text, as
// Python's initializer exception reaches the caller (it is not left on the worker's stderr).
async fn initializer_error_text_reaches_the_caller() -> TestResult {
    let e = Pool::builder()
        .processes(1)
        .initializer(erring_init, ("no database".to_string(),))
        .build()
        .await;
    match e {
        Err(Error::InitializerFailed { message, pid }) => {
            ensure!(
                message == r#"returned an error: "no database""#,
                "{message}"
            );
            ensure!(gone(&[pid].into()).await, "reaped");
        }
        other => return Err(format!("expected InitializerFailed, got {other:?}").into()),
    }
    Ok(())
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
    let path = temp_path("init-once");
    let pool = Pool::builder()
        .processes(1)
        .initializer(init_once, (path.to_string(),))
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
    ensure!(
        attempts == 2,
        "the initializer ran {attempts} times: a respawn loop"
    );
    Ok(())
}

// _TestPoolWorkerLifetime.test_pool_worker_lifetime: workers retire after n tasks; every
// task runs exactly once.
async fn maxtasksperchild() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .maxtasksperchild(3)
        .build()
        .await?;
    let log = temp_path("runs");
    let hs: Vec<_> = (0..30u32)
        .map(|i| pool.apply_async(log_run, (log.to_string(), i)))
        .collect();
    let pids = futures::future::try_join_all(hs).await?;
    ensure!(pids.len() == 30, "every task answered once");
    let runs = std::fs::read_to_string(&log)?;
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
    let ran_3 = distinct
        .iter()
        .filter(|p| pids.iter().filter(|x| x == p).count() == 3)
        .count() as u64;
    let counted = eventually(Duration::from_secs(10), || {
        pool.stats().workers_retired >= ran_3
    })
    .await;
    let s = pool.stats();
    ensure!(
        counted && s.workers_over_memory == 0 && s.workers_lost == 0,
        "{ran_3} workers ran their 3 tasks: {s:?}"
    );
    let v = pool.map(sqr, 0..100).chunksize(5).await?;
    ensure!(
        v == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "map across retirements"
    );
    Ok(())
}

/// Logs task `id` to `log` (see `log_run`) after taking `mib` MiB of memory for good (its
/// pages touched, so resident); returns this worker's pid.
fn log_run_keeping(log: String, id: u32, mib: usize) -> u32 {
    keep_memory(mib);
    log_run(log, id)
}

/// Takes `mib` MiB of memory for good; returns this worker's pid.
async fn keep_memory_async(mib: usize) -> u32 {
    std::mem::forget(vec![1u8; mib << 20]);
    std::process::id()
}

const MIB: u64 = 1 << 20;

/// A worker whose task takes its memory past `max_memory_per_child` answers that task and
/// the tasks already sent to it, each run once, then is retired (not lost) and replaced: the
/// next task runs on another worker, and the retired one exits.
async fn a_worker_whose_memory_reaches_the_limit_is_retired_after_its_tasks() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(256 * MIB)
        .build()
        .await?;
    let log = temp_path("memory-runs");
    let first = pool.apply(log_run_keeping, (log.to_string(), 0, 0)).await?;
    // The first takes 300 MiB; the rest wait for the one worker, some sent ahead to it.
    let hs: Vec<_> = (1..=8u32)
        .map(|i| {
            let mib = if i == 1 { 300 } else { 0 };
            pool.apply_async(log_run_keeping, (log.to_string(), i, mib))
        })
        .collect();
    let pids = futures::future::try_join_all(hs).await?;
    ensure!(
        pids[0] == first,
        "the task that took the memory ran on {}, not on the worker {first}",
        pids[0]
    );
    let after = pool.apply(log_run_keeping, (log.to_string(), 9, 0)).await?;
    ensure!(
        after != first,
        "the worker {first}, at 300 MiB of a limit of 256, took another task after its own"
    );
    let mut ran: Vec<u32> = std::fs::read_to_string(&log)?
        .lines()
        .map(|l| l.parse())
        .collect::<Result<_, _>>()?;
    ran.sort();
    ensure!(
        ran == (0..=9).collect::<Vec<_>>(),
        "each task ran exactly once: {ran:?}"
    );
    ensure!(
        gone(&HashSet::from([first])).await,
        "the retired worker {first} still runs"
    );
    let counted = eventually(Duration::from_secs(10), || {
        let s = pool.stats();
        s.workers_retired == 1 && s.workers_over_memory == 1
    })
    .await;
    let stats = pool.stats();
    ensure!(
        counted && stats.workers_lost == 0,
        "one worker retired over its memory, none lost: {stats:?}"
    );
    Ok(())
}

/// The same for an `async fn` task, which the worker answers from its runtime.
async fn an_async_task_that_takes_the_memory_past_the_limit_retires_its_worker() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(256 * MIB)
        .build()
        .await?;
    let first = pool.apply(keep_memory_async, (300,)).await?;
    let next = pool.apply(pid, ()).await?;
    ensure!(
        next != first,
        "the worker {first} took another task at 300 MiB of a limit of 256"
    );
    Ok(())
}

/// Workers whose memory stays under the limit are kept, task after task.
async fn a_worker_under_its_memory_limit_is_kept() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(1024 * MIB)
        .build()
        .await?;
    let log = temp_path("kept-runs");
    let mut pids = HashSet::new();
    for i in 0..20 {
        pids.insert(pool.apply(log_run_keeping, (log.to_string(), i, 2)).await?);
    }
    ensure!(
        pids.len() == 1,
        "40 MiB taken of a limit of 1 GiB, yet the tasks ran on {pids:?}"
    );
    Ok(())
}

/// A limit that a fresh worker is over already (it says so on its stderr) retires each
/// worker after its first task, as `maxtasksperchild(1)` would: every task runs, each on a
/// worker of its own.
async fn a_limit_under_a_fresh_workers_memory_retires_it_after_each_task() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(1)
        .build()
        .await?;
    let mut pids = HashSet::new();
    for _ in 0..4 {
        pids.insert(pool.apply(pid, ()).await?);
    }
    ensure!(pids.len() == 4, "4 tasks ran on {pids:?}");
    Ok(())
}

/// Builds a pool of one forked worker whose limit is under a fresh worker's memory, and
/// gives it four tasks: the number of workers they ran on.
async fn workers_of_four_tasks_on_a_forked_limited_pool() -> mp::Result<usize> {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(1)
        .start_method(mp::StartMethod::Fork)
        .build()
        .await?;
    let mut pids = HashSet::new();
    for _ in 0..4 {
        pids.insert(pool.apply(pid, ()).await?);
    }
    Ok(pids.len())
}

/// A worker forked from a worker with a memory limit (a pool that a task builds: the fork
/// start method works in a worker's first task, before it has threads) watches its memory
/// against its own pool's limit, not its parent's.
async fn a_pool_built_by_a_limited_worker_keeps_its_own_limit() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .max_memory_per_child(1 << 40)
        .build()
        .await?;
    let workers = pool
        .apply(workers_of_four_tasks_on_a_forked_limited_pool, ())
        .await??;
    ensure!(
        workers == 4,
        "the inner pool's 4 tasks ran on {workers} workers, where its limit retires each"
    );
    Ok(())
}

async fn max_memory_per_child_of_zero_is_an_error() -> TestResult {
    refused_naming(
        Pool::builder().max_memory_per_child(0),
        "max_memory_per_child",
    )
    .await
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

// loky's `idle_worker_timeout`: workers with no task for the timeout exit, the pool keeps
// serving, and the next tasks start workers again, up to the pool's size.
async fn idle_workers_exit_and_come_back_with_work() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .idle_timeout(Duration::from_millis(100))
        .build()
        .await?;
    let first = worker_pids(&pool).await?;
    ensure!(first.len() == 2, "both workers served: {first:?}");
    let idle = eventually(Duration::from_secs(10), || {
        let s = pool.stats();
        s.workers_alive == 0 && s.workers_starting == 0
    })
    .await;
    ensure!(idle, "workers left after 10 s idle: {:?}", pool.stats());
    ensure!(
        gone(&first).await,
        "the retired workers still run: {first:?}"
    );
    let s = pool.stats();
    ensure!(
        s.workers_lost == 0 && s.workers_retired == 2 && s.workers_over_memory == 0,
        "2 idle workers retired, none lost: {s:?}"
    );
    let v = pool.map(sqr, 0..20).chunksize(1).await?;
    ensure!(
        v == (0..20).map(|x| x * x).collect::<Vec<_>>(),
        "map after: {v:?}"
    );
    let second = worker_pids(&pool).await?;
    ensure!(
        second.len() == 2,
        "the pool grew back to its size: {second:?}"
    );
    ensure!(
        first.is_disjoint(&second),
        "new workers: {first:?} {second:?}"
    );
    // A stream outlives the retirements of the workers it runs on.
    let mut stream = pool.imap(sleep_ms, [0, 300, 0]).chunksize(1);
    let mut streamed = 0;
    while let Some(r) = futures::StreamExt::next(&mut stream).await {
        r?;
        streamed += 1;
    }
    ensure!(streamed == 3, "{streamed} of 3 items");
    ensure!(
        gone(&second).await,
        "the second workers still run: {second:?}"
    );
    // A pool left with no worker closes and joins at once.
    ensure!(
        eventually(Duration::from_secs(10), || pool.stats().workers_alive == 0).await,
        "workers left: {:?}",
        pool.stats()
    );
    pool.close();
    tokio::time::timeout(Duration::from_secs(30), pool.join()).await??;
    ensure!(pool.stats().workers_lost == 0, "lost: {:?}", pool.stats());
    Ok(())
}

// A worker running a task longer than the idle timeout is not retired, and tasks that come
// as workers retire are neither lost nor run twice.
async fn idle_timeout_loses_no_task() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .idle_timeout(Duration::from_millis(5))
        .build()
        .await?;
    ensure!(
        pool.apply(sleep_ms, (100,)).await.is_ok(),
        "a task longer than the timeout"
    );
    let log = temp_path("idle-runs");
    let mut hs = Vec::new();
    for i in 0..200u32 {
        hs.push(pool.apply_async(log_run, (log.to_string(), i)));
        if i % 40 == 39 {
            // Once the tasks so far have run, the workers retire: the next ones come while
            // the last may still be exiting, and find a pool to grow back.
            let retired = eventually(Duration::from_secs(10), || {
                let s = pool.stats();
                // The tasks so far and the long one, done (the snapshot lags).
                let done = s.tasks_done == u64::from(i) + 2;
                done && s.workers_alive == 0 && s.workers_starting == 0
            })
            .await;
            ensure!(retired, "workers left: {:?}", pool.stats());
        }
    }
    let pids: HashSet<u32> = futures::future::try_join_all(hs)
        .await?
        .into_iter()
        .collect();
    ensure!(pids.len() >= 5, "each round ran on new workers: {pids:?}");
    let runs = std::fs::read_to_string(&log)?;
    let mut ran: Vec<u32> = runs.lines().map(|l| l.parse()).collect::<Result<_, _>>()?;
    ran.sort();
    ensure!(
        ran == (0..200).collect::<Vec<_>>(),
        "each task ran exactly once: {ran:?}"
    );
    ensure!(pool.stats().workers_lost == 0, "lost: {:?}", pool.stats());
    Ok(())
}

async fn idle_timeout_of_zero_is_an_error() -> TestResult {
    refused_naming(Pool::builder().idle_timeout(Duration::ZERO), "idle_timeout").await
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

// A synchronous task that blocks does not hold up the async tasks running in its worker.
async fn sync_task_does_not_block_async_tasks() -> TestResult {
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let (started, gate, done) = (temp_path("started"), temp_path("gate"), temp_path("done"));
    let a = pool.apply_async(
        async_gate_then_done,
        (started.to_string(), gate.to_string(), done.to_string()),
    );
    let ok = eventually(Duration::from_secs(20), || started.exists()).await;
    ensure!(ok, "the async task never started");
    // Blocks until the async task, which waits for the gate, has finished.
    let s = pool.apply_async(block_until_file, (done.to_string(),));
    std::fs::write(&gate, "open")?;
    ensure!(a.await?, "the async task ran to its end");
    ensure!(s.await?, "the blocking task saw the async task finish");
    Ok(())
}

// A finished task's answer is not held back while its worker runs the next task, which may
// be long: here the next one blocks until the test has seen the first answer.
async fn answer_not_held_behind_the_next_task() -> TestResult {
    let pool = Pool::new(1).await?;
    let (first, second) = (temp_path("hold-first"), temp_path("hold-second"));
    let gate = pool.apply_async(wait_for_file, (first.to_string(),));
    // Queued behind the gate, and sent ahead to the worker while it waits.
    let quick = pool.apply_async(sqr, (7,));
    let long = pool.apply_async(block_until_file, (second.to_string(),));
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
    Ok(())
}

// A short task sent ahead to a worker busy with a long one is taken back when the other
// worker goes idle, and runs there, as CPython's shared queue serves it: its answer comes
// while the long task still runs (it ends only when the test opens its gate).
async fn a_task_sent_ahead_runs_on_the_worker_that_goes_idle() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(worker_pids(&pool).await?.len() == 2, "both workers serve");
    // The medium task goes to the second worker; the short one, both workers busy, is sent
    // ahead to one of them.
    short_task_passes_a_gated_one(&pool, "steal-gate", Some(300)).await
}

// Right after build, a short task sent behind a long one, to the only worker ready then,
// is taken back by the second worker once it has started: its answer comes while the long
// task still runs (it ends only when the test opens its gate).
async fn a_task_sent_ahead_before_the_other_worker_started_runs_there() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .start_method(mp::StartMethod::Spawn)
        .build()
        .await?;
    short_task_passes_a_gated_one(&pool, "steal-start-gate", None).await
}

/// Sends `pool` a task that ends only once the test opens its gate (a file named for
/// `tag`), then a task of `medium_ms` if given, then a short one: the short one's answer
/// must come before the gate opens, from another worker than the gated task's.
async fn short_task_passes_a_gated_one(
    pool: &Pool,
    tag: &str,
    medium_ms: Option<u64>,
) -> TestResult {
    let gate = temp_path(tag);
    let mut long = pool.apply_async(wait_for_file, (gate.to_string(),));
    let medium = medium_ms.map(|ms| pool.apply_async(sleep_ms, (ms,)));
    let short = pool.apply_async(pid, ());
    let got = tokio::time::timeout(Duration::from_secs(20), short).await;
    let long_done = long.ready();
    std::fs::write(&gate, "go")?;
    let long_pid = long.await?;
    if let Some(medium) = medium {
        medium.await?;
    }
    let short_pid = match got {
        Ok(r) => r?,
        Err(_) => return Err("the short task waited behind the long one".into()),
    };
    ensure!(!long_done, "the long task ended before its gate opened");
    ensure!(
        short_pid != long_pid,
        "the short task ran on the long one's worker"
    );
    Ok(())
}

/// In a process group of its own: a pool maps 40 tasks of 50 ms; when Ctrl-C's SIGINT
/// reaches the group (`ready` tells the test when to send it), a `ctrl_c` handler closes
/// the pool and lets the map drain. Exits 0 when every task completed and no worker was
/// lost or started again.
async fn drain_on_ctrl_c(ready: String) -> Result<(), String> {
    nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
        .map_err(|e| format!("setpgid: {e}"))?;
    let pool = Pool::new(2).await.map_err(|e| e.to_string())?;
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    // The handler is in place before the test is told to press Ctrl-C.
    if futures::poll!(&mut ctrl_c).is_ready() {
        return Err("SIGINT before the map".into());
    }
    let map = pool.map(sleep_ms, vec![50u64; 40]).chunksize(1).submit();
    let _ = std::fs::write(&ready, "mapping");
    ctrl_c.await.map_err(|e| format!("ctrl_c: {e}"))?;
    pool.close();
    let done = map
        .await
        .map_err(|e| format!("the map after Ctrl-C: {e}"))?;
    pool.join().await.map_err(|e| e.to_string())?;
    let s = pool.stats();
    if done.len() != 40 || s.workers_lost != 0 || s.tasks_failed != 0 || s.tasks_done != 40 {
        return Err(format!("{} results, {s:?}", done.len()));
    }
    Ok(())
}

// Issue 12: Ctrl-C reaches the whole foreground process group. The workers ignore it, so a
// program that drains on Ctrl-C finishes every task, respawns nothing and leaves nothing.
async fn ctrl_c_to_the_group_lets_the_owner_drain_the_pool() -> TestResult {
    let ready = temp_path("ctrl-c");
    let mut p = mp::Process::new(drain_on_ctrl_c, (ready.to_string(),))
        .start()
        .await?;
    let pgid = p.pid() as i32;
    let started = eventually(Duration::from_secs(20), || ready.exists()).await;
    ensure!(started, "the map never started");
    // A terminal sends it to every process of the foreground group: the owner and its
    // workers alike.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let code = tokio::time::timeout(Duration::from_secs(30), p.join()).await;
    ensure!(matches!(code, Ok(Ok(0))), "the owner ended with {code:?}");
    let empty = eventually(Duration::from_secs(10), || {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_err()
    })
    .await;
    ensure!(empty, "processes of the group are left");
    Ok(())
}

/// A synchronous task that blocks on a tokio runtime of its own (as a plain `Process`
/// target may, or a library with a blocking API built on tokio).
fn on_own_runtime(x: i64) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the task");
    rt.block_on(async move {
        tokio::task::yield_now().await;
        x + 1
    })
}

/// An initializer that does the same with a multi-thread runtime.
fn init_on_own_runtime() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime for the initializer");
    rt.block_on(tokio::task::yield_now());
}

/// Runs in a spawned child, which has a single thread: a pool of forked workers serves an
/// apply and a map on a current-thread runtime. Exits 0 if they were right.
fn fork_pool_probe() {
    support::process::exit_unless_ok("fork pool probe", || async {
        let pool = Pool::builder()
            .processes(2)
            .start_method(mp::StartMethod::Fork)
            .build()
            .await?;
        let one = pool.apply(sqr, (7,)).await?;
        let many = pool.map(sqr, 0..100).chunksize(10).await?;
        let lost = pool.stats().workers_lost;
        pool.terminate().await?;
        match (
            one,
            many == (0..100).map(|x| x * x).collect::<Vec<_>>(),
            lost,
        ) {
            (49, true, 0) => Ok(()),
            other => Err(format!("apply, map, workers lost: {other:?}").into()),
        }
    });
}

// A pool whose workers are forked (from a single-threaded process) serves: its workers build
// their runtime before they close their parent's descriptors, instead of dying with "Bad
// file descriptor" on their first task and being replaced, again and again.
async fn fork_pool_serves() -> TestResult {
    let mut p = mp::Process::new(fork_pool_probe, ())
        .start_method(mp::StartMethod::Spawn)
        .start()
        .await?;
    support::process::probe_passed(&mut p).await
}

// A synchronous task, a map's chunk of them and a synchronous initializer run as plain
// code: they may block on a runtime of their own, as a plain `Process` target may, instead
// of panicking with "Cannot start a runtime from within a runtime".
async fn sync_task_may_block_on_its_own_runtime() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .initializer(init_on_own_runtime, ())
        .build()
        .await?;
    ensure!(pool.apply(on_own_runtime, (1,)).await? == 2, "apply");
    let got = pool.map(on_own_runtime, 0..10).chunksize(5).await?;
    ensure!(got == (1..11).collect::<Vec<_>>(), "map: {got:?}");
    Ok(())
}

/// `x + 1`, computed inside `tokio::task::block_in_place`, and whether the task's runtime
/// has several threads.
async fn add_one_in_place(x: u32) -> (u32, bool) {
    let multi = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    (tokio::task::block_in_place(|| x + 1), multi)
}

/// `worker_threads(2)`: a worker's `async fn` tasks run on a multi-thread runtime, where
/// `block_in_place` works. By default they run on a current-thread one, where it panics and
/// the task fails as panicked. With the fork start method the build is refused, naming the
/// option.
async fn worker_threads_give_async_tasks_a_multi_thread_runtime() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .worker_threads(2)
        .build()
        .await?;
    ensure!(
        pool.apply(add_one_in_place, (41,)).await? == (42, true),
        "a multi-thread worker"
    );
    pool.close();
    pool.join().await?;
    let pool = Pool::new(1).await?;
    let r = pool.apply(add_one_in_place, (41,)).await;
    ensure!(
        r.as_ref().is_err_and(|e| e.is_panic()),
        "block_in_place on a current-thread worker: {r:?}"
    );
    pool.close();
    pool.join().await?;
    let fork = Pool::builder()
        .processes(1)
        .worker_threads(2)
        .start_method(mp::StartMethod::Fork);
    refused_naming(fork, "worker_threads")
        .await
        .map_err(|e| format!("fork: {e}").into())
}

// `worker_threads(usize::MAX)` built a pool whose every worker aborted on the memory to
// count its threads, each task failing as a worker lost to SIGABRT, and one of 100,000
// spent minutes making threads before it took a task. More than the most is refused.
async fn worker_threads_over_the_most_are_refused() -> TestResult {
    for n in [Pool::MAX_WORKER_THREADS + 1, usize::MAX] {
        refused_naming(
            Pool::builder().processes(1).worker_threads(n),
            "worker_threads",
        )
        .await
        .map_err(|e| format!("{n}: {e}"))?;
    }
    Ok(())
}

fn main() {
    mp::init();
    support::run(trials![
        worker_threads_give_async_tasks_a_multi_thread_runtime,
        worker_threads_over_the_most_are_refused,
        ctrl_c_to_the_group_lets_the_owner_drain_the_pool,
        spinning_pool_leaves_its_runtime_free,
        initializer,
        initializer_with_large_arguments,
        initializer_that_exits,
        initializer_error_text_reaches_the_caller,
        failing_initializer_of_a_replacement,
        maxtasksperchild,
        maxtasksperchild_early_close,
        a_worker_whose_memory_reaches_the_limit_is_retired_after_its_tasks,
        an_async_task_that_takes_the_memory_past_the_limit_retires_its_worker,
        a_worker_under_its_memory_limit_is_kept,
        a_limit_under_a_fresh_workers_memory_retires_it_after_each_task,
        max_memory_per_child_of_zero_is_an_error,
        a_pool_built_by_a_limited_worker_keeps_its_own_limit,
        idle_workers_exit_and_come_back_with_work,
        idle_timeout_loses_no_task,
        idle_timeout_of_zero_is_an_error,
        async_tasks_and_concurrency,
        sync_task_does_not_block_async_tasks,
        sync_task_may_block_on_its_own_runtime,
        fork_pool_serves,
        answer_not_held_behind_the_next_task,
        a_task_sent_ahead_runs_on_the_worker_that_goes_idle,
        a_task_sent_ahead_before_the_other_worker_started_runs_there,
    ]);
}
