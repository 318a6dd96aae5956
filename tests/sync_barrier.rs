//! `Barrier` between real processes: rounds, abort and reset, timeouts.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, eventually, join_ok};
use tokio_multiprocessing::{Barrier, Error, Event, Process, RawArray, RawValue};

const LONG: Duration = Duration::from_secs(20);

async fn barrier_party(b: Barrier, slots: RawArray<u32>, rounds: u32) {
    for r in 0..rounds {
        let i = b.wait_timeout(LONG).await.expect("barrier");
        slots.set((r * 3 + i) as usize, 1).expect("slot");
    }
}

async fn barrier_expect_broken(b: Barrier, out: RawValue<u32>) {
    out.set(match b.wait_timeout(LONG).await {
        Err(Error::BrokenBarrier) => 1,
        _ => 2,
    });
}

/// `_TestBarrier.test_barrier` and `test_wait_return`: three parties in three processes,
/// two rounds; each round hands out the indices 0, 1 and 2 once.
async fn barrier_rounds() -> TestResult {
    let b = Barrier::new(3)?;
    let slots = RawArray::from_elem(0u32, 6)?;
    let mut kids = Vec::new();
    for _ in 0..2 {
        kids.push(
            Process::new(barrier_party, (b.clone(), slots.clone(), 2))
                .start()
                .await?,
        );
    }
    barrier_party(b.clone(), slots.clone(), 2).await;
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(slots.to_vec() == vec![1; 6], "indices {:?}", slots.to_vec());
    ensure!(b.n_waiting() == 0 && !b.broken(), "barrier left dirty");
    Ok(())
}

/// `_TestBarrier.test_abort` and `test_reset`: an abort breaks the barrier for the party
/// waiting in another process and for later waits; `reset` mends it.
async fn barrier_abort_and_reset() -> TestResult {
    let b = Barrier::new(2)?;
    let out = RawValue::new(0u32)?;
    let mut p = Process::new(barrier_expect_broken, (b.clone(), out.clone()))
        .start()
        .await?;
    ensure!(
        eventually(LONG, || b.n_waiting() == 1).await,
        "the child never arrived"
    );
    b.abort();
    join_ok(&mut p).await?;
    ensure!(out.get() == 1, "child's wait: {}", out.get());
    ensure!(b.broken(), "not broken after abort");
    let r = b.wait_timeout(LONG).await;
    ensure!(
        matches!(r, Err(Error::BrokenBarrier)),
        "wait on broken: {r:?}"
    );
    b.reset();
    ensure!(!b.broken(), "broken after reset");
    let one = Barrier::new(1)?;
    ensure!(one.wait().await? == 0, "single party");

    // Reset while a party waits: it gets BrokenBarrier, the barrier stays usable.
    let mut p = Process::new(barrier_expect_broken, (b.clone(), out.clone()))
        .start()
        .await?;
    out.set(0);
    ensure!(
        eventually(LONG, || b.n_waiting() == 1).await,
        "the child never arrived"
    );
    b.reset();
    join_ok(&mut p).await?;
    ensure!(out.get() == 1, "child's wait across a reset: {}", out.get());
    ensure!(!b.broken() && b.n_waiting() == 0, "barrier not fresh");
    Ok(())
}

/// `_TestBarrier.test_timeout`: a wait that times out breaks the barrier.
async fn barrier_timeout_breaks() -> TestResult {
    let b = Barrier::new(2)?;
    let r = b.wait_timeout(Duration::from_millis(30)).await;
    ensure!(matches!(r, Err(Error::BrokenBarrier)), "got {r:?}");
    ensure!(b.broken(), "not broken");
    Ok(())
}

/// Says it waits, waits at `b` for a generation, and again for the next.
async fn barrier_twice(b: Barrier, started: Event) -> Result<(), String> {
    started.set();
    b.wait()
        .await
        .map_err(|e| format!("first generation: {e}"))?;
    b.wait()
        .await
        .map_err(|e| format!("second generation: {e}"))?;
    Ok(())
}

/// No Python counterpart: the last party of a generation killed after it started the next
/// generation and before it woke the waiters (here, a test hook that stops there) left them
/// asleep for good, their generation over. The next wait now wakes them: the child passes
/// its first generation and meets this process at the second.
async fn a_last_arrival_killed_before_its_wake_up_leaves_it_to_the_next_wait() -> TestResult {
    let b = Barrier::new(2)?;
    let started = Event::new()?;
    let mut p = Process::new(barrier_twice, (b.clone(), started.clone()))
        .start()
        .await?;
    support::once_asleep(&started).await?;
    b.__arrive_last_unwoken();
    // A wait this soon after the arrival takes its maker for one still at its write.
    tokio::time::sleep(Duration::from_millis(20)).await;
    if let Err(e) = b.wait_timeout(LONG).await {
        let _ = p.kill();
        let _ = p.join().await;
        return Err(format!("the child never came to the second generation: {e}").into());
    }
    join_ok(&mut p).await
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        barrier_rounds,
        barrier_abort_and_reset,
        barrier_timeout_breaks,
        a_last_arrival_killed_before_its_wake_up_leaves_it_to_the_next_wait
    ];
    libtest_mimic::run(&args, trials).exit()
}
