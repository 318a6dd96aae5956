//! Pool failures under fire: workers killed mid-task and while they hold batched tasks,
//! tasks that time out, chunks of an `imap` that fail, worker starts that fail. Every task
//! of these tests writes its input to a log (an `O_APPEND` file) as it runs, so that a test
//! can tell which inputs ran and how many times.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use support::pool::*;
use support::{TestResult, eventually, temp_path};
use tokio_multiprocessing::{self as mp, Error, ExitCause, Pool};

fn main() {
    mp::init();
    support::run(
        trials![
            a_task_the_worker_started_is_not_sent_again,
            kill_storm_runs_no_task_twice_and_resolves_every_call,
            kill_storm_while_tasks_are_taken_back_runs_none_twice,
            a_task_cancelled_if_queued_either_never_runs_or_gives_its_result,
            tasks_taken_back_from_a_stalled_worker_never_run,
            tasks_cancelled_on_a_stalled_worker_that_dies_never_run,
            imap_yields_one_item_per_input_when_a_chunk_times_out,
            imap_unordered_names_the_inputs_of_a_lost_chunk,
            a_worker_death_names_the_task_that_was_running,
            build_succeeds_with_the_workers_that_start_and_the_rest_follow,
            a_worker_killed_while_it_starts_fails_no_waiting_task,
            a_worker_killed_in_its_initializer_leaves_the_pool_serving,
            a_build_dropped_while_initializers_hang_kills_its_workers,
            maxtasksperchild_of_zero_is_an_error,
            worker_killed_mid_task,
            spinning_pool_notices_a_dead_worker,
            worker_killed_with_tasks_waiting_behind,
            a_task_sent_to_a_worker_that_dies_before_starting_it_runs_on_another,
            worker_abort_and_exit_mid_task,
            a_task_that_overflows_its_stack_aborts_as_a_program_does,
            task_timeout_kills_and_replaces,
            a_timeout_blames_the_task_that_overran,
            a_timeout_runs_for_the_task_behind_one_cancelled_before_it_started,
            a_timeout_too_long_to_represent_is_none,
        ]
        .into_iter()
        .chain([
            support::test_current_thread(
                "a_worker_a_send_finds_dead_counts_as_lost",
                a_worker_a_send_finds_dead_counts_as_lost,
            ),
            support::test(
                "a_worker_a_send_finds_dead_counts_as_lost_multi_thread",
                a_worker_a_send_finds_dead_counts_as_lost,
            ),
        ])
        .collect(),
    );
}

/// The log this worker writes to, kept open so that a logging task stays short (a worker
/// holds back answers only to tasks that have proved short).
static LOG: Mutex<Option<(String, std::fs::File)>> = Mutex::new(None);

/// Appends `[x]` and a newline to the log at `path` (one `write`, `O_APPEND`), then sleeps
/// `ms`; returns `x` and this worker's pid. A log it cannot open or write panics, so that its
/// call fails with the cause rather than returning `Ok` for a run the log does not show.
fn log_then_sleep(path: String, x: u64, ms: u64) -> (u64, u32) {
    let mut log = LOG.lock().unwrap_or_else(|p| p.into_inner());
    if log.as_ref().is_none_or(|(p, _)| *p != path) {
        match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
        {
            Ok(f) => *log = Some((path.to_string(), f)),
            Err(e) => panic!("cannot open the log {path}: {e}"),
        }
    }
    if let Some((_, f)) = log.as_mut()
        && let Err(e) = f.write_all(format!("[{x}]\n").as_bytes())
    {
        panic!("cannot log {x} to {path}: {e}");
    }
    drop(log);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
    (x, std::process::id())
}

/// How many times each input was logged.
///
/// A worker SIGKILLed in the middle of its write can leave the start of an entry: the
/// kernel copies a write into the page cache a page at a time and stops at a page boundary
/// when the writer has a fatal signal, so `[68` may be followed directly by the next
/// worker's `[69203]`. Entries are therefore bracketed and read by their brackets, not by
/// lines; a torn one (no closing bracket) is a run that was cut short and is not counted.
/// A log that cannot be read, or that holds anything else, panics with what it holds: an
/// unreadable log must not pass for one in which nothing ran.
fn runs(path: &Path) -> HashMap<u64, usize> {
    let bytes = std::fs::read(path);
    let path = path.display();
    let bytes = bytes.unwrap_or_else(|e| panic!("cannot read the log {path}: {e}"));
    let text = String::from_utf8_lossy(&bytes);
    let mut n = HashMap::new();
    let mut pieces = text.split('[');
    let before = pieces.next().unwrap_or_default();
    for piece in pieces {
        let whole = piece
            .strip_suffix("]\n")
            .or_else(|| piece.strip_suffix(']'))
            .and_then(|x| x.parse::<u64>().ok());
        let torn = piece.bytes().all(|b| b.is_ascii_digit());
        match whole {
            Some(x) => *n.entry(x).or_insert(0) += 1,
            None if torn => {}
            None => panic!(
                "the log {path} ({} bytes) holds an entry that is not `[number]`: {:?}",
                bytes.len(),
                piece.chars().take(64).collect::<String>()
            ),
        }
    }
    assert!(
        before.is_empty(),
        "the log {path} starts with {before:?}, not an entry"
    );
    n
}

// The case of issue 10: ten short calls and a long one in one batch to a Pool(1); the
// worker is killed while the long one runs. The long one must not run again (it started),
// and every call that returned `Ok` ran exactly once; the calls sent after the long one,
// which never started, are run by the replacement.
async fn a_task_the_worker_started_is_not_sent_again() -> TestResult {
    let pool = Pool::new(1).await?;
    let log = temp_path("started");
    // The function proves short, so that the worker holds its answers back to send them
    // together.
    let mut victim = 0;
    for x in 0..20 {
        victim = pool.apply(log_then_sleep, (log.to_string(), x, 0)).await?.1;
    }
    let mut handles = Vec::new();
    for x in 100..110 {
        handles.push(pool.apply_async(log_then_sleep, (log.to_string(), x, 0)));
    }
    let long = pool.apply_async(log_then_sleep, (log.to_string(), 200, 3000));
    for x in 300..305 {
        handles.push(pool.apply_async(log_then_sleep, (log.to_string(), x, 0)));
    }
    let started = eventually(Duration::from_secs(20), || runs(&log).contains_key(&200)).await;
    ensure!(started, "the long call never started");
    kill9(victim)?;
    let long = long.await;
    ensure!(
        long.as_ref().is_err_and(|e| e.is_worker_lost()),
        "the long call: {long:?}"
    );
    let mut ok = Vec::new();
    for h in handles {
        match h.await {
            Ok((x, _)) => ok.push(x),
            Err(e) if e.is_worker_lost() => {}
            Err(e) => return Err(format!("unexpected error {e}").into()),
        }
    }
    let n = runs(&log);
    ensure!(
        n.get(&200) == Some(&1),
        "the long call ran {:?} times",
        n.get(&200)
    );
    ensure!(n.values().all(|&c| c == 1), "an input ran twice: {n:?}");
    for x in &ok {
        ensure!(
            n.get(x) == Some(&1),
            "{x} returned Ok but ran {:?} times",
            n.get(x)
        );
    }
    for x in 300..305 {
        ensure!(
            ok.contains(&x),
            "{x}, sent after the long call, was not run again"
        );
    }
    Ok(())
}

// Workers SIGKILLed over and over while 100,000 short tasks stream through a pool: every
// call resolves (a result or `WorkerLost`), no input runs twice, and every `Ok` matches
// exactly one logged run.
async fn kill_storm_runs_no_task_twice_and_resolves_every_call() -> TestResult {
    const TASKS: u64 = 100_000;
    let pool = Arc::new(Pool::new(2).await?);
    let log = temp_path("storm");
    let latest = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let killer = {
        let (latest, stop) = (latest.clone(), stop.clone());
        tokio::spawn(async move {
            let mut kills = 0u32;
            let mut killed = HashSet::new();
            loop {
                tokio::select! {
                    () = stop.notified() => return kills,
                    () = tokio::time::sleep(Duration::from_millis(7)) => {}
                }
                let pid = latest.load(Ordering::Relaxed);
                if pid != 0 && killed.insert(pid) {
                    let _ = kill9(pid);
                    kills += 1;
                }
            }
        })
    };
    let mut pending = FuturesUnordered::new();
    for x in 0..TASKS {
        pending.push(pool.apply_async(log_then_sleep, (log.to_string(), x, 0)));
    }
    let (mut ok, mut lost) = (Vec::new(), 0usize);
    while let Some(r) = pending.next().await {
        match r {
            Ok((x, pid)) => {
                latest.store(pid, Ordering::Relaxed);
                ok.push(x);
            }
            Err(e) if e.is_worker_lost() => lost += 1,
            Err(e) => return Err(format!("a call failed with {e}").into()),
        }
    }
    stop.notify_one();
    let kills = killer.await?;
    storm_verdict(&log, &ok, lost, TASKS, kills)
}

/// What a storm of kills must leave: every one of `calls` resolved (`ok` with results, the
/// `lost` others with `WorkerLost`), at least five kills, no input in the run log at `log`
/// twice, and every `Ok` matching exactly one logged run.
fn storm_verdict(log: &Path, ok: &[u64], lost: usize, calls: u64, kills: u32) -> TestResult {
    let n = runs(log);
    ensure!(
        ok.len() + lost == calls as usize,
        "{} calls resolved of {calls}",
        ok.len() + lost
    );
    ensure!(
        kills >= 5,
        "only {kills} workers were killed: the storm did not happen"
    );
    let twice: Vec<_> = n.iter().filter(|&(_, &c)| c > 1).collect();
    ensure!(twice.is_empty(), "inputs that ran twice: {twice:?}");
    for x in ok {
        ensure!(
            n.get(x) == Some(&1),
            "{x} returned Ok but ran {:?} times",
            n.get(x)
        );
    }
    Ok(())
}

// Workers SIGKILLed at random while waves of one long task and several short ones go
// through a pool, each wave submitted while the last runs, so that tasks sent ahead behind
// long ones are taken back for the workers that go idle: every call resolves (a result or
// `WorkerLost`), no input runs twice, and every `Ok` matches exactly one logged run.
async fn kill_storm_while_tasks_are_taken_back_runs_none_twice() -> TestResult {
    const WAVES: u64 = 60;
    const SHORT: u64 = 24;
    let pool = Pool::new(3).await?;
    let log = temp_path("steal-storm");
    let pids = Arc::new(Mutex::new(Vec::<u32>::new()));
    let stop = Arc::new(tokio::sync::Notify::new());
    let killer = {
        let (pids, stop) = (pids.clone(), stop.clone());
        tokio::spawn(async move {
            let mut kills = 0u32;
            let mut killed = HashSet::new();
            let mut turn = 0usize;
            loop {
                tokio::select! {
                    () = stop.notified() => return kills,
                    () = tokio::time::sleep(Duration::from_millis(45)) => {}
                }
                turn += 7;
                let pid = {
                    let seen = pids.lock().unwrap_or_else(|p| p.into_inner());
                    let live: Vec<u32> = seen
                        .iter()
                        .copied()
                        .filter(|p| !killed.contains(p))
                        .collect();
                    live.get(turn % live.len().max(1)).copied()
                };
                if let Some(pid) = pid {
                    killed.insert(pid);
                    let _ = kill9(pid);
                    kills += 1;
                }
            }
        })
    };
    let mut pending = FuturesUnordered::new();
    let mut next = 0u64;
    let (mut ok, mut lost) = (Vec::new(), 0usize);
    let mut record = |r: Result<(u64, u32), mp::TaskError>, ok: &mut Vec<u64>| -> TestResult {
        match r {
            Ok((x, pid)) => {
                let mut seen = pids.lock().unwrap_or_else(|p| p.into_inner());
                if !seen.contains(&pid) {
                    seen.push(pid);
                }
                ok.push(x);
            }
            Err(e) if e.is_worker_lost() => lost += 1,
            Err(e) => return Err(format!("a call failed with {e}").into()),
        }
        Ok(())
    };
    for _ in 0..WAVES {
        pending.push(pool.apply_async(log_then_sleep, (log.to_string(), next, 120)));
        next += 1;
        for _ in 0..SHORT {
            pending.push(pool.apply_async(log_then_sleep, (log.to_string(), next, 0)));
            next += 1;
        }
        // Until as many answers as the wave has short tasks: the next wave is sent while
        // its long task (or an earlier one) runs.
        for _ in 0..SHORT {
            match pending.next().await {
                Some(r) => record(r, &mut ok)?,
                None => break,
            }
        }
    }
    while let Some(r) = pending.next().await {
        record(r, &mut ok)?;
    }
    stop.notify_one();
    let kills = killer.await?;
    storm_verdict(&log, &ok, lost, next, kills)
}

// `cancel_if_queued` on tasks sent ahead to a worker that is starting them, rounds on
// end: a task whose handle says it was cancelled never ran, and one that ran resolves to
// its result (the run log decides), whichever way each race between the cancel and the
// worker's start went. Every other round waits for its first task's result before the
// cancels, so that the worker is amid the batch whatever the machine's load.
async fn a_task_cancelled_if_queued_either_never_runs_or_gives_its_result() -> TestResult {
    const ROUNDS: u64 = 1500;
    const BATCH: u64 = 8;
    let pool = Pool::new(1).await?;
    let log = temp_path("cancel-race");
    let (mut ok, mut cancelled) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let handles: Vec<_> = (0..BATCH)
            .map(|i| {
                let x = round * BATCH + i;
                (x, pool.apply_async(log_then_sleep, (log.to_string(), x, 0)))
            })
            .collect();
        let mut handles = handles.into_iter();
        if round % 2 == 1
            && let Some((x, first)) = handles.next()
        {
            let (got, _) = first.await?;
            ensure!(got == x, "task {x} answered {got}");
            ok.push(x);
        }
        let handles: Vec<_> = handles.collect();
        for (_, h) in handles.iter().rev() {
            h.cancel_if_queued();
        }
        settle(handles, &mut ok, &mut cancelled).await?;
    }
    ensure!(
        !ok.is_empty() && !cancelled.is_empty(),
        "{} ran and {} were cancelled: the races did not happen",
        ok.len(),
        cancelled.len()
    );
    cancel_verdict(&log, &ok, &cancelled)
}

/// Awaits the handles of `log_then_sleep` calls, each with its input: the inputs of those
/// that returned go to `ok`, those cancelled to `cancelled`; any other failure fails.
async fn settle(
    handles: Vec<(u64, mp::AsyncResult<(u64, u32)>)>,
    ok: &mut Vec<u64>,
    cancelled: &mut Vec<u64>,
) -> TestResult {
    for (x, h) in handles {
        match h.await {
            Ok((got, _)) => {
                ensure!(got == x, "task {x} answered {got}");
                ok.push(x);
            }
            Err(e) if e.is_cancelled() => cancelled.push(x),
            Err(e) => return Err(format!("task {x} failed with {e}").into()),
        }
    }
    Ok(())
}

/// What cancels must leave in the run log at `log`: no input `cancelled` ran, and every
/// `ok` one ran exactly once.
fn cancel_verdict(log: &Path, ok: &[u64], cancelled: &[u64]) -> TestResult {
    let n = runs(log);
    let ran_though_cancelled: Vec<u64> = cancelled
        .iter()
        .copied()
        .filter(|x| n.contains_key(x))
        .collect();
    ensure!(
        ran_though_cancelled.is_empty(),
        "{} of {} tasks said cancelled ran: {:?}",
        ran_though_cancelled.len(),
        cancelled.len(),
        &ran_though_cancelled[..ran_though_cancelled.len().min(10)]
    );
    for x in ok {
        ensure!(
            n.get(x) == Some(&1),
            "{x} returned Ok but ran {:?} times",
            n.get(x)
        );
    }
    Ok(())
}

/// Writes its worker's pid to `started`, then blocks its worker's runtime until `gate`
/// exists (at most 30 s): an `async fn` task that never yields, so that its worker reads
/// nothing meanwhile.
async fn block_the_worker_until(started: String, gate: String) -> bool {
    let _ = std::fs::write(&started, std::process::id().to_string());
    block_until_file(gate)
}

// A worker stalled (by an `async fn` task that blocks its runtime) while three times as many
// tasks as its claim ring has words are sent to it and cancelled one by one: a task whose
// handle says it was cancelled never runs, one that ran resolves to its result, and every
// call resolves. A claim word serves numbers 512 apart; the worker has not yet come to the
// task taken back with a word when the pool's cancels reach the number 512 later.
async fn tasks_taken_back_from_a_stalled_worker_never_run() -> TestResult {
    cancels_on_a_stalled_worker(false).await
}

/// [`block_the_worker_until`], then stays 30 s on the worker's runtime, without blocking it.
async fn block_the_worker_then_stay(started: String, gate: String) -> bool {
    let opened = block_the_worker_until(started, gate).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    opened
}

// As above, but the stalled worker is killed instead of going on: none of its tasks had
// started, so every one resolves as cancelled, and none runs on the worker that replaces
// it, not even those the worker was only asked (by a message it never read) to drop.
async fn tasks_cancelled_on_a_stalled_worker_that_dies_never_run() -> TestResult {
    cancels_on_a_stalled_worker(true).await
}

/// On a Pool(1) whose worker is stalled, 1536 tasks sent to it and cancelled one by one
/// ([`cancel_if_queued`](mp::AsyncResult::cancel_if_queued)); then the worker goes on, or
/// is killed if `kill`.
async fn cancels_on_a_stalled_worker(kill: bool) -> TestResult {
    const TASKS: u64 = 1536;
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let (started, gate, log) = (
        temp_path("stall-started"),
        temp_path("stall-gate"),
        temp_path("stall-log"),
    );
    let stall = pool.apply_async(
        block_the_worker_until,
        (started.to_string(), gate.to_string()),
    );
    let worker = read_pid(&started).await?;
    let mut handles = Vec::new();
    for x in 0..TASKS {
        // Taken in by the pool (sent, or queued once the worker holds all it may), then
        // cancelled: each task counts in one of these until the end.
        let seen = |s: mp::PoolStats| {
            s.tasks_running as u64 + s.tasks_queued as u64 + s.tasks_done + s.tasks_failed
        };
        let before = seen(pool.stats());
        let h = pool.apply_async(log_then_sleep, (log.to_string(), x, 0));
        let taken_in = async {
            while seen(pool.stats()) <= before {
                tokio::task::yield_now().await;
            }
        };
        ensure!(
            tokio::time::timeout(Duration::from_secs(20), taken_in)
                .await
                .is_ok(),
            "the pool never took task {x} in"
        );
        h.cancel_if_queued();
        handles.push((x, h));
    }
    if kill {
        kill9(worker)?;
        let lost = stall.await;
        ensure!(
            lost.as_ref().is_err_and(|e| e.is_worker_lost()),
            "the stalling task of a killed worker gave {lost:?}"
        );
    } else {
        std::fs::write(&gate, "1")?;
        ensure!(stall.await?, "the stalling task never saw its gate");
    }
    // A worker runs its tasks in turn: once a task sent after them all has run, every one
    // of them has run or been dropped.
    let (last, _) = pool
        .apply(log_then_sleep, (log.to_string(), TASKS, 0))
        .await?;
    let mut ok = vec![last];
    let mut cancelled = Vec::new();
    settle(handles, &mut ok, &mut cancelled).await?;
    let least = if kill { TASKS as usize } else { 512 };
    ensure!(
        cancelled.len() >= least,
        "{} tasks of {TASKS} were cancelled, not {least}: {:?} ran",
        cancelled.len(),
        &ok[..ok.len().min(10)]
    );
    cancel_verdict(&log, &ok, &cancelled)
}

/// `x`, except that input 100 sleeps 30 s first.
fn slow_at_100(x: u64) -> u64 {
    if x == 100 {
        std::thread::sleep(Duration::from_secs(30));
    }
    x
}

/// `x`, except that input 500 aborts its worker.
fn abort_at_500(x: u64) -> u64 {
    if x == 500 {
        std::process::abort();
    }
    x
}

// Issue 10's case: one chunk of 64 times out; the stream still has 1,000 items, each in
// its place, and the 64 of the failed chunk are errors naming their input.
async fn imap_yields_one_item_per_input_when_a_chunk_times_out() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_secs(1))
        .build()
        .await?;
    let got: Vec<_> = pool
        .imap(slow_at_100, 0..1000)
        .chunksize(64)
        .collect()
        .await;
    ensure!(got.len() == 1000, "{} items for 1000 inputs", got.len());
    for (i, r) in got.iter().enumerate() {
        if (64..128).contains(&i) {
            ensure!(
                r.as_ref()
                    .is_err_and(|e| e.is_timeout() && e.input_index() == Some(i)),
                "item {i}: {r:?}"
            );
        } else {
            ensure!(r.as_ref().ok() == Some(&(i as u64)), "item {i}: {r:?}");
        }
    }
    Ok(())
}

// A chunk whose worker dies yields an error per input in `imap_unordered` too, each naming
// its input, and the other inputs all arrive, but for the chunks whose answers the worker
// held back when it died, which say so.
async fn imap_unordered_names_the_inputs_of_a_lost_chunk() -> TestResult {
    let pool = Pool::new(2).await?;
    let got: Vec<_> = pool
        .imap_unordered(abort_at_500, 0..1000)
        .chunksize(64)
        .collect()
        .await;
    ensure!(got.len() == 1000, "{} items for 1000 inputs", got.len());
    let mut ok = HashSet::new();
    let mut failed = HashSet::new();
    // The chunks the dying worker had finished before, their answers held back to go out
    // together, are lost with it, and say so.
    let mut answer_lost = HashSet::new();
    for r in got {
        match r {
            Ok(x) => {
                ok.insert(x as usize);
            }
            Err(e) if e.is_worker_lost() => {
                let i = e.input_index().ok_or("an error without its input")?;
                if e.is_answer_lost() {
                    answer_lost.insert(i / 64);
                } else {
                    failed.insert(i);
                }
            }
            Err(e) => return Err(format!("unexpected error {e}").into()),
        }
    }
    ensure!(failed == (448..512).collect(), "failed inputs: {failed:?}");
    let lost_or_failed = |x: &usize| (448..512).contains(x) || answer_lost.contains(&(x / 64));
    ensure!(
        ok == (0..1000).filter(|x| !lost_or_failed(x)).collect(),
        "{} results, and the answers of chunks {answer_lost:?} lost",
        ok.len()
    );
    Ok(())
}

/// `x`, except that input 150 kills its worker.
fn abort_at_150(x: u64) -> u64 {
    if x == 150 {
        std::process::abort();
    }
    x
}

// A worker holds back the answers of short tasks to send several together; one killed by
// a task loses the answers of those it ran before. Those fail saying their answer was lost,
// and a map names the input that killed the worker, not the first of those.
async fn a_worker_death_names_the_task_that_was_running() -> TestResult {
    let pool = Pool::new(1).await?;
    for round in 0..3 {
        let e = match pool.map(abort_at_150, 0..200).chunksize(1).await {
            Ok(_) => return Err("a map with an aborting input succeeded".into()),
            Err(e) => e,
        };
        ensure!(
            e.input_index() == Some(150) && e.is_worker_lost() && !e.is_answer_lost(),
            "round {round}: the map failed with {e} for input {:?}",
            e.input_index()
        );
        let got: Vec<_> = pool.imap(abort_at_150, 0..200).chunksize(1).collect().await;
        for (i, r) in got.iter().enumerate() {
            match r {
                Ok(x) => ensure!(*x == i as u64 && i != 150, "item {i}: {x}"),
                Err(e) if i == 150 => ensure!(
                    e.is_worker_lost() && !e.is_answer_lost(),
                    "the aborting item: {e}"
                ),
                Err(e) => ensure!(
                    i < 150
                        && e.is_answer_lost()
                        && e.to_string().contains("after the task finished"),
                    "item {i}: {e}"
                ),
            }
        }
    }
    Ok(())
}

/// This worker's pid, after `ms` (so that a map spreads over every worker).
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// In a child whose descriptors are limited to 64: a Pool(32) builds with the workers that
/// fit; once the limit is raised and those workers are killed, the pool starts new ones and
/// serves. Exits 0 when all held, 1 with a message otherwise.
async fn pool_under_a_descriptor_limit() -> Result<(), String> {
    let me = std::process::id().to_string();
    let limit = |n: &str| {
        std::process::Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={n}:")])
            .status()
            .map_err(|e| format!("prlimit: {e}"))
            .and_then(|s| {
                s.success()
                    .then_some(())
                    .ok_or("prlimit failed".to_string())
            })
    };
    limit("64")?;
    let pool = Pool::builder()
        .processes(32)
        .build()
        .await
        .map_err(|e| format!("build under the limit: {e}"))?;
    let mut before = HashSet::new();
    for _ in 0..20 {
        let v = pool
            .map(pid_after, vec![20; 64])
            .chunksize(1)
            .await
            .map_err(|e| format!("map under the limit: {e}"))?;
        before.extend(v);
    }
    if before.is_empty() || before.len() >= 32 {
        return Err(format!(
            "{} workers under a limit of 64 descriptors",
            before.len()
        ));
    }
    limit("4096")?;
    for &p in &before {
        let _ = kill9(p);
    }
    let mut after = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while after.len() <= before.len() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "{} workers before the kill, {} after",
                before.len(),
                after.len()
            ));
        }
        match pool.map(pid_after, vec![20; 64]).chunksize(1).await {
            Ok(v) => after.extend(v.into_iter().filter(|p| !before.contains(p))),
            Err(e) if e.is_worker_lost() => {}
            Err(e) => return Err(format!("a task failed after the limit was raised: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

// Issue 10: under RLIMIT_NOFILE=64, Pool(32) failed to build although a dozen workers fit,
// and a pool whose starts had failed three times never started a worker again.
async fn build_succeeds_with_the_workers_that_start_and_the_rest_follow() -> TestResult {
    if !support::installed("prlimit") {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return Ok(());
    }
    let mut p = mp::Process::new(pool_under_a_descriptor_limit, ())
        .start()
        .await?;
    let code = tokio::time::timeout(Duration::from_secs(55), p.join()).await;
    ensure!(matches!(code, Ok(Ok(0))), "the child ended with {code:?}");
    Ok(())
}

/// Queues `n` calls at once on `pool`, whose workers are the only children of this process,
/// while a thread SIGKILLs every other worker once `ripe` holds for it (the first one ripe
/// is killed if `kill_first`); fails unless every call succeeds and at least `min_kills`
/// workers were killed.
async fn every_call_survives_killing_every_other_worker(
    pool: &Pool,
    n: i64,
    kill_first: bool,
    ripe: impl Fn(u32) -> bool + Send + 'static,
    min_kills: u32,
) -> TestResult {
    let me = std::process::id();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut seen, mut kills, mut kill_next) = (HashSet::new(), 0u32, kill_first);
            while !stop.load(Ordering::Relaxed) {
                for child in support::live_children_of(me) {
                    if ripe(child) && seen.insert(child) {
                        if kill_next && kill9(child).is_ok() {
                            kills += 1;
                        }
                        kill_next = !kill_next;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            kills
        }
    });
    let calls: Vec<_> = (0..n).map(|x| pool.apply_async(sqr, (x,))).collect();
    let mut failed = Vec::new();
    for (x, call) in (0..).zip(calls) {
        match call.await {
            Ok(y) if y == x * x => {}
            other => failed.push(format!("{x}: {other:?}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().map_err(|_| "the killer panicked")?;
    ensure!(
        failed.is_empty(),
        "{} of {n} calls failed: {failed:?}",
        failed.len()
    );
    ensure!(kills >= min_kills, "only {kills} workers killed");
    Ok(())
}

/// Runs in a child, whose children are only its pool's workers: a Pool(1) whose worker
/// retires after each task, so that the pool has no worker while each replacement starts,
/// and a thread that SIGKILLs every other new worker as soon as it appears (most often
/// while it starts; a task it was running is retried). Every one of 20 tasks queued at
/// once still runs, where each start so killed failed every task queued. Exits 0 if so.
fn killed_while_starting_probe() {
    support::process::exit_unless_ok("killed while starting", || async {
        let pool = Pool::builder()
            .processes(1)
            .maxtasksperchild(1)
            .retries_on_worker_loss(1)
            .build()
            .await?;
        every_call_survives_killing_every_other_worker(&pool, 20, true, |_| true, 5).await
    });
}

/// Announces this worker's initializer in `dir` (a file named by its pid), then takes
/// 300 ms.
fn announce_then_init(dir: String) {
    let _ = std::fs::write(format!("{dir}/{}", std::process::id()), "");
    std::thread::sleep(Duration::from_millis(300));
}

/// Runs in a child, whose children are only its pool's workers: a Pool(1) with an
/// initializer, whose worker retires after each task, and a thread that SIGKILLs every
/// other new worker while its initializer runs (as the OOM killer may). Every one of 8
/// tasks queued at once still runs, where the first such kill was taken for the
/// initializer's failure: no worker was started again and every task failed with
/// `InitializerFailed`. Exits 0 if so.
fn killed_in_initializer_probe() {
    support::process::exit_unless_ok("killed in its initializer", || async {
        let dir = temp_path("init-kill");
        std::fs::create_dir(&dir)?;
        let pool = Pool::builder()
            .processes(1)
            .maxtasksperchild(1)
            .initializer(announce_then_init, (dir.to_string(),))
            .build()
            .await?;
        // A worker is ripe once its initializer runs; the build's first one is spared.
        let announced = dir.to_path_buf();
        let ripe = move |pid: u32| announced.join(pid.to_string()).exists();
        every_call_survives_killing_every_other_worker(&pool, 8, false, ripe, 3).await
    });
}

/// A worker SIGKILLed while its initializer runs is a failed start, started again, not a
/// failed initializer that stops the pool from starting workers: a pool whose workers
/// retire keeps serving (each such kill left it with no worker for good).
async fn a_worker_killed_in_its_initializer_leaves_the_pool_serving() -> TestResult {
    let mut p = mp::Process::new(killed_in_initializer_probe, ())
        .start()
        .await?;
    support::process::probe_passed(&mut p).await
}

/// A worker start that fails once while the pool has no worker (its replacement killed as
/// it starts, the pool's one worker retired by `maxtasksperchild`) fails none of the tasks
/// queued: they wait for the next start. Each such start failed every task queued.
async fn a_worker_killed_while_it_starts_fails_no_waiting_task() -> TestResult {
    let mut p = mp::Process::new(killed_while_starting_probe, ())
        .start()
        .await?;
    support::process::probe_passed(&mut p).await
}

// test_pool_maxtasksperchild_invalid: Python raises ValueError for 0.
/// An initializer that says which worker runs it, then never returns.
fn report_then_hang(pids: mp::Queue<u32>) {
    let _ = pids.put_nowait(std::process::id());
    std::thread::sleep(Duration::from_secs(3600));
}

async fn a_build_dropped_while_initializers_hang_kills_its_workers() -> TestResult {
    // The builder's cancel safety: a build dropped midway leaves no pool, and no worker.
    // Here every initializer hangs, so the build never ends by itself.
    let pids = mp::Queue::<u32>::new()?;
    let build = Pool::builder()
        .processes(2)
        .initializer(report_then_hang, (pids.clone(),))
        .build();
    let both = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::pin!(build);
        let mut both = Vec::new();
        while both.len() < 2 {
            tokio::select! {
                r = &mut build => return Err(format!("the build ended: {:?}", r.map(drop))),
                pid = pids.get() => both.push(pid.map_err(|e| e.to_string())?),
            }
        }
        Ok(both)
    })
    .await;
    let both = match both {
        Ok(Ok(both)) => both,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err("the initializers did not both start".into()),
    };
    for pid in both {
        ensure!(
            eventually(Duration::from_secs(20), || support::is_zombie_or_gone(pid)).await,
            "worker {pid} lives on after its pool's build was dropped"
        );
    }
    Ok(())
}

async fn maxtasksperchild_of_zero_is_an_error() -> TestResult {
    let e = Pool::builder()
        .processes(1)
        .maxtasksperchild(0)
        .build()
        .await;
    ensure!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    Ok(())
}

// The issue's own (CPython hangs here): SIGKILL mid-task fails that task, names pid and
// signal; the worker is replaced and the pool serves 1,000 more tasks.
async fn worker_killed_mid_task() -> TestResult {
    let pool = Pool::new(2).await?;
    let path = temp_path("kill");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
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

// While the pool spins for the next answer (short tasks, a spare core), a worker killed
// mid-task is still noticed at once, and the pool goes on serving.
async fn spinning_pool_notices_a_dead_worker() -> TestResult {
    let pool = spinning_pool().await?;
    for i in 0..50 {
        ensure!(pool.apply(sqr, (i,)).await? == i * i, "short task {i}");
    }
    let path = temp_path("spin-kill");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
    let victim = read_pid(&path).await?;
    kill9(victim)?;
    match tokio::time::timeout(Duration::from_secs(20), h).await {
        Ok(Err(e)) if e.is_worker_lost() && e.worker_pid() == Some(victim) => {}
        other => return Err(format!("expected WorkerLost of {victim}, got {other:?}").into()),
    }
    ensure!(pool.apply(sqr, (7,)).await? == 49, "serves after");
    Ok(())
}

// Tasks a worker held behind the one it was running are not lost with it: only the running
// task fails; the others run on the replacement.
async fn worker_killed_with_tasks_waiting_behind() -> TestResult {
    let pool = Pool::new(1).await?;
    let path = temp_path("behind");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
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

// A task sent to an idle worker that dies before it starts the task (here the worker is
// stopped, so it never reads it, then SIGKILLed) never ran: it runs on the replacement, as
// the tasks waiting behind a lost one do. It failed with `WorkerLost`: the first task sent
// to an idle worker counted as started, whatever the worker had marked.
async fn a_task_sent_to_a_worker_that_dies_before_starting_it_runs_on_another() -> TestResult {
    let pool = Pool::new(1).await?;
    let victim = pool.apply(pid, ()).await?;
    let stopped = i32::try_from(victim)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stopped),
        nix::sys::signal::Signal::SIGSTOP,
    )?;
    let h = pool.apply_async(pid, ());
    ensure!(
        eventually(Duration::from_secs(20), || pool.stats().tasks_running == 1).await,
        "the task was not sent to the stopped worker"
    );
    kill9(victim)?;
    let ran_on = h.await?;
    ensure!(
        ran_on != victim,
        "the task answered from the dead worker {victim}"
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

// A task that overflows its stack is told as a program's overflow is ("thread 'main' has
// overflowed its stack", on the worker's stderr), and aborts its worker, on the worker's main
// thread and on the task thread a synchronous task runs on while an `async fn` task runs;
// before, the worker died of a bare SIGSEGV with nothing printed, which reads as a bad
// pointer. The pool serves on.
async fn a_task_that_overflows_its_stack_aborts_as_a_program_does() -> TestResult {
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let aborted = |e: &Result<u64, mp::TaskError>| {
        e.as_ref()
            .is_err_and(|e| e.exit_cause() == Some(ExitCause::Signal(6)))
    };
    let e = pool.apply(overflow_stack, (0,)).await;
    ensure!(aborted(&e), "on the main thread: {e:?}");
    let e = pool.apply(overflow_stack_async, (0,)).await;
    ensure!(aborted(&e), "async: {e:?}");
    let (started, gate) = (mp::Event::new()?, mp::Event::new()?);
    let waiting = pool.apply_async(started_then_wait, (started.clone(), gate.clone()));
    started.wait().await?;
    let e = pool.apply(overflow_stack, (0,)).await;
    ensure!(aborted(&e), "on a task thread: {e:?}");
    ensure!(
        waiting.await.is_err(),
        "the async task died with its worker"
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
    let path = temp_path("timeout");
    let slow = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
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

// A task sent behind another, on a stalled worker, with a timeout: the one before it is
// cancelled before the worker starts it. The task behind starts in its place when the worker
// goes on, and its timeout falls (its worker killed), rather than it running unbounded.
async fn a_timeout_runs_for_the_task_behind_one_cancelled_before_it_started() -> TestResult {
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let (started, gate) = (temp_path("untimed-started"), temp_path("untimed-gate"));
    // It stays, without blocking the worker once the gate is open: no answer comes until
    // the task behind has run long past its timeout.
    let _stall = pool.apply_async(
        block_the_worker_then_stay,
        (started.to_string(), gate.to_string()),
    );
    read_pid(&started).await?;
    let first = pool.apply_async(sleep_ms, (0,));
    ensure!(
        eventually(Duration::from_secs(10), || pool.stats().tasks_running == 2).await,
        "the first task was not sent"
    );
    let behind = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.apply_timeout(sleep_ms, (20_000,), Duration::from_millis(300))
                .await
        })
    };
    ensure!(
        eventually(Duration::from_secs(10), || pool.stats().tasks_running == 3).await,
        "the task behind was not sent"
    );
    first.cancel();
    let cancelled = first.await;
    ensure!(
        cancelled.as_ref().is_err_and(|e| e.is_cancelled()),
        "the first task gave {cancelled:?}"
    );
    std::fs::write(&gate, "1")?;
    let timed = tokio::time::timeout(Duration::from_secs(10), behind)
        .await
        .map_err(|_| "the task behind ran on past its timeout")??;
    ensure!(
        timed.as_ref().is_err_and(|e| e.is_timeout()),
        "the task behind gave {timed:?}"
    );
    Ok(())
}

// A worker sends the answers of short tasks together, holding the first back while it runs
// the next: the timeout must fall on the task that overran, and none of the others' answers
// may be lost with the worker.
async fn a_timeout_blames_the_task_that_overran() -> TestResult {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(500))
        .build()
        .await?;
    // Known as short: the worker holds their answers back.
    pool.map(sleep_ms, vec![0; 200]).await?;
    let calls: Vec<_> = (0..30u64)
        .map(|i| pool.apply_async(sleep_ms, (if i == 20 { 3_000 } else { 0 },)))
        .collect();
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        match (i, r) {
            (20, Err(e)) if e.is_timeout() => {}
            (20, other) => return Err(format!("task 20 overran, yet: {other:?}").into()),
            (_, Ok(_)) => {}
            (i, Err(e)) => return Err(format!("task {i} finished in time, yet: {e}").into()),
        }
    }
    // A short task with a timeout, then a long one without, among short ones: the first
    // finished, and its timeout kills nothing while the second runs.
    let pool = Pool::new(1).await?;
    pool.map(sleep_ms, vec![0; 200]).await?;
    let before: Vec<_> = (0..10).map(|_| pool.apply_async(sleep_ms, (0,))).collect();
    // Submitted at its first poll, in order behind the others.
    let mut timed = Box::pin(pool.apply_timeout(sleep_ms, (0,), Duration::from_millis(300)));
    let first = futures::poll!(&mut timed);
    let long = pool.apply_async(sleep_ms, (1_500,));
    let after: Vec<_> = (0..18).map(|_| pool.apply_async(sleep_ms, (0,))).collect();
    let timed = match first {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => timed.await,
    };
    ensure!(timed.is_ok(), "the short task with a timeout: {timed:?}");
    ensure!(long.await.is_ok(), "the long task without one");
    for r in futures::future::join_all(before.into_iter().chain(after)).await {
        r?;
    }
    Ok(())
}

// `Duration::MAX` (or any time too long to represent) as a timeout means none: the task runs
// to its end and the pool serves on.
async fn a_timeout_too_long_to_represent_is_none() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::MAX)
        .build()
        .await?;
    ensure!(
        pool.apply(sleep_ms, (50,)).await.is_ok(),
        "a task under task_timeout(MAX)"
    );
    let earlier = pool.apply_async(sleep_ms, (300,));
    ensure!(
        pool.apply_timeout(sqr, (3,), Duration::MAX).await? == 9,
        "apply_timeout(MAX)"
    );
    ensure!(earlier.await.is_ok(), "the task submitted before");
    ensure!(pool.apply(sqr, (4,)).await? == 16, "serves after");
    ensure!(pool.stats().workers_lost == 0, "{:?}", pool.stats());
    Ok(())
}

// A worker killed just before the pool sent it a task, so that the send found it dead before
// the pool heard of its exit, was taken for one the pool had killed itself: its death was
// not counted in `stats()` (`workers_lost`, `recent_losses`) nor logged at `warn`. It counts
// as lost now, and the task sent to it runs on its replacement. On a current-thread
// runtime the test's thread holds the runtime from the kill to the send, so that the
// scheduler sends before the worker's reader hears of the exit.
async fn a_worker_a_send_finds_dead_counts_as_lost() -> TestResult {
    let pool = Pool::new(1).await?;
    let worker = pool.apply(pid, ()).await?;
    kill9(worker)?;
    // Dead (a zombie, its socket closed), waited for without yielding to the runtime.
    while !support::is_zombie_or_gone(worker) {
        std::thread::sleep(Duration::from_millis(1));
    }
    ensure!(
        pool.apply(sqr, (3,)).await? == 9,
        "the task sent to the dead worker"
    );
    let counted = support::eventually(Duration::from_secs(20), || {
        let s = pool.stats();
        s.recent_losses.iter().any(|l| l.pid == worker)
    });
    ensure!(
        counted.await && pool.stats().workers_lost == 1,
        "the death of worker {worker} was not counted: {:?}",
        pool.stats()
    );
    Ok(())
}
