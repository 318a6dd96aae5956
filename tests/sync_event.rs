//! `Event` between real processes: every waiter wakes, set and clear stay in step.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, join_ok, run_example};
use tokio_multiprocessing::{Event, Process, RawValue, Semaphore, Value};

const LONG: Duration = Duration::from_secs(20);

async fn wait_event(e: Event, started: Semaphore, passed: Value<i64>) {
    started.release().expect("release");
    e.wait().await.expect("wait");
    passed.lock().await.expect("lock").update(|x| x + 1);
}

async fn ponger(ping: Event, pong: Event, count: RawValue<u32>, n: u32) {
    for i in 1..=n {
        ping.wait().await.expect("wait");
        ping.clear();
        count.set(i);
        pong.set();
    }
}

/// `_TestEvent.test_event`: `wait` with a timeout on a clear event returns false; `set`
/// wakes every waiter in every process; `clear` makes waits wait again.
async fn event_wakes_every_process() -> TestResult {
    let e = Event::new()?;
    ensure!(!e.is_set(), "new event set");
    ensure!(
        !e.wait_timeout(Duration::from_millis(20)).await?,
        "wait on clear event succeeded"
    );
    let started = Semaphore::new(0)?;
    let passed = Value::new(0i64)?;
    let mut kids = Vec::new();
    for _ in 0..3 {
        kids.push(
            Process::new(wait_event, (e.clone(), started.clone(), passed.clone()))
                .start()
                .await?,
        );
    }
    for _ in 0..3 {
        started.acquire_timeout(LONG).await?.forget();
    }
    ensure!(passed.get().await? == 0, "a waiter passed a clear event");
    e.set();
    ensure!(e.is_set(), "set event not set");
    ensure!(e.wait_timeout(LONG).await?, "wait on a set event");
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(
        passed.get().await? == 3,
        "{} of 3 passed",
        passed.get().await?
    );
    e.clear();
    ensure!(
        !e.wait_timeout(Duration::from_millis(20)).await?,
        "wait on cleared event succeeded"
    );
    Ok(())
}

/// No Python counterpart: two events bounce between two processes 2000 times; every wait
/// returns only for the set it waited for, so both sides stay in step (a wait released by a
/// stale set would run ahead and leave the other side waiting for ever).
async fn event_ping_pong_in_step() -> TestResult {
    let ping = Event::new()?;
    let pong = Event::new()?;
    let count = RawValue::new(0u32)?;
    let n = 2000;
    let mut p = Process::new(ponger, (ping.clone(), pong.clone(), count.clone(), n))
        .start()
        .await?;
    for i in 1..=n {
        ping.set();
        ensure!(pong.wait_timeout(LONG).await?, "no pong {i}");
        pong.clear();
        ensure!(count.get() == i, "pong {i} came with count {}", count.get());
    }
    join_ok(&mut p).await?;
    Ok(())
}

async fn example_event() -> TestResult {
    let out = run_example("event").await?;
    let mut seen = std::collections::HashSet::new();
    for line in out.lines() {
        let n: u32 = line
            .strip_prefix("hello world ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected line {line:?}"))?;
        ensure!(n < 10 && seen.insert(n), "line {line:?} out of place");
    }
    ensure!(seen.len() < 10, "every process printed, none set the event");
    Ok(())
}

/// Says it waits, waits for `e`, then says it passed.
async fn wait_then_say(e: Event, started: Event, passed: Event) {
    started.set();
    e.wait().await.expect("wait");
    passed.set();
}

/// No Python counterpart (a setter killed holding the event's lock leaves Python's event
/// deadlocked): a setter killed after it raised the flag and before it woke the waiters
/// (here, a test hook that stops there) left a process asleep in `wait` for good, however
/// often the event was set again (a set of a set event did nothing). A later `set` wakes
/// it now, and so does a later wait that finds the event set.
async fn a_set_killed_before_its_wake_up_leaves_it_to_the_next() -> TestResult {
    for later in ["set", "wait"] {
        let e = Event::new()?;
        let started = Event::new()?;
        let passed = Event::new()?;
        let mut p = Process::new(wait_then_say, (e.clone(), started.clone(), passed.clone()))
            .start()
            .await?;
        support::once_asleep(&started).await?;
        e.__raise_unwoken();
        if later == "set" {
            e.set();
        } else {
            // A wait this soon after the set takes its setter for one still at its write.
            tokio::time::sleep(Duration::from_millis(20)).await;
            e.wait_timeout(LONG).await?;
        }
        if !passed.wait_timeout(LONG).await? {
            let _ = p.kill();
            let _ = p.join().await;
            return Err(format!("a later {later} left the waiter asleep on a set event").into());
        }
        join_ok(&mut p).await?;
    }
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        event_wakes_every_process,
        event_ping_pong_in_step,
        example_event,
        a_set_killed_before_its_wake_up_leaves_it_to_the_next
    ];
    libtest_mimic::run(&args, trials).exit()
}
