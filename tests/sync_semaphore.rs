//! `Semaphore` and `BoundedSemaphore` between real processes: counts, guards, bounds and timeouts.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, join_ok};
use tokio_multiprocessing::{BoundedSemaphore, Error, Event, Process, RawValue, Semaphore, Value};

const LONG: Duration = Duration::from_secs(20);

async fn release_after(s: Semaphore, go: Event) {
    go.wait().await.expect("wait");
    s.release().expect("release");
}

/// Enters a `Semaphore(2)`-guarded section `n` times, counting who is inside.
async fn bounded_section(s: Semaphore, inside: Value<i64>, bad: RawValue<u32>, n: u32) {
    for _ in 0..n {
        s.acquire().await.expect("acquire").forget();
        let now = inside.lock().await.expect("lock").update(|x| x + 1);
        if now > 2 {
            bad.set(bad.get() + 1);
        }
        tokio::task::yield_now().await;
        inside.lock().await.expect("lock").update(|x| x - 1);
        s.release().expect("release");
    }
}

async fn over_release(s: BoundedSemaphore, out: RawValue<u32>) {
    out.set(match s.release() {
        Err(Error::SemaphoreOverRelease { bound: 2 }) => 1,
        _ => 2,
    });
}

/// `_TestSemaphore.test_semaphore`: values go down with acquires and up with releases;
/// a release from another process wakes an acquirer.
async fn semaphore_counts() -> TestResult {
    let s = Semaphore::new(2)?;
    s.acquire().await?.forget();
    ensure!(s.get_value() == 1, "value {}", s.get_value());
    s.try_acquire().ok_or("second unit")?.forget();
    ensure!(s.try_acquire().is_none(), "third unit of two");
    s.release()?;
    s.release()?;
    ensure!(s.get_value() == 2, "value {}", s.get_value());
    {
        let _a = s.acquire().await?;
        let _b = s.try_acquire().ok_or("second unit, guarded")?;
        ensure!(
            s.get_value() == 0,
            "value {} under two guards",
            s.get_value()
        );
    }
    ensure!(s.get_value() == 2, "guards gave back {}", s.get_value());
    // `threading.Semaphore.release(0)`: `ValueError`, where the code before released nothing
    // and said it had.
    ensure!(
        matches!(s.release_n(0), Err(Error::InvalidArgument(_))),
        "a release of 0 units"
    );
    ensure!(
        s.get_value() == 2,
        "value {} after a release of 0",
        s.get_value()
    );

    let zero = Semaphore::new(0)?;
    let go = Event::new()?;
    let mut p = Process::new(release_after, (zero.clone(), go.clone()))
        .start()
        .await?;
    ensure!(zero.try_acquire().is_none(), "unit out of nothing");
    go.set();
    zero.acquire_timeout(LONG).await?.forget();
    join_ok(&mut p).await?;
    Ok(())
}

/// `_TestSemaphore.test_semaphore` under contention: four processes pass a `Semaphore(2)`
/// 200 times each; never more than two are inside, and every unit comes back.
async fn semaphore_bounds_concurrency() -> TestResult {
    let s = Semaphore::new(2)?;
    let inside = Value::new(0i64)?;
    let bad = RawValue::new(0u32)?;
    let mut kids = Vec::new();
    for _ in 0..3 {
        kids.push(
            Process::new(
                bounded_section,
                (s.clone(), inside.clone(), bad.clone(), 200),
            )
            .start()
            .await?,
        );
    }
    bounded_section(s.clone(), inside.clone(), bad.clone(), 200).await;
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(bad.get() == 0, "{} times more than two inside", bad.get());
    ensure!(
        s.get_value() == 2,
        "value {} after all releases",
        s.get_value()
    );
    Ok(())
}

/// `_TestSemaphore.test_bounded_semaphore`, plus what it leaves out: releasing a bounded
/// semaphore past its bound is an error (Python's `ValueError`), here and in another process.
async fn bounded_semaphore_over_release() -> TestResult {
    let s = BoundedSemaphore::new(2)?;
    ensure!(
        matches!(s.release(), Err(Error::SemaphoreOverRelease { bound: 2 })),
        "over-release accepted"
    );
    ensure!(s.get_value() == 2, "value moved to {}", s.get_value());
    s.acquire().await?.forget();
    s.release()?;
    let out = RawValue::new(0u32)?;
    let mut p = Process::new(over_release, (s.clone(), out.clone()))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(out.get() == 1, "child's over-release: {}", out.get());
    Ok(())
}

/// Python's `BoundedSemaphore(0)` is valid: it can be neither acquired nor released. A bound
/// of `u32::MAX` is the counter's own.
async fn bounded_semaphore_of_the_extreme_bounds() -> TestResult {
    let s = BoundedSemaphore::new(0)?;
    ensure!(s.try_acquire().is_none(), "acquired a BoundedSemaphore(0)");
    ensure!(
        matches!(s.release(), Err(Error::SemaphoreOverRelease { bound: 0 })),
        "released a BoundedSemaphore(0)"
    );
    ensure!(s.get_value() == 0, "value {}", s.get_value());
    let s = BoundedSemaphore::new(u32::MAX)?;
    ensure!(
        matches!(
            s.release(),
            Err(Error::SemaphoreOverRelease { bound: u32::MAX })
        ),
        "released past u32::MAX"
    );
    s.acquire().await?.forget();
    s.release()?;
    ensure!(s.get_value() == u32::MAX, "value {}", s.get_value());
    Ok(())
}

/// `_TestSemaphore.test_timeout`: a timed acquire of an empty semaphore gives up.
async fn semaphore_timeout() -> TestResult {
    let s = Semaphore::new(0)?;
    let r = s.acquire_timeout(Duration::from_millis(30)).await;
    ensure!(matches!(r, Err(Error::Timeout)), "got {r:?}");
    ensure!(s.get_value() == 0, "value {}", s.get_value());
    Ok(())
}

/// Reports that it is about to acquire, then waits for a unit (and keeps it).
async fn acquire_one(s: Semaphore, started: Event) {
    started.set();
    s.acquire().await.expect("acquire").forget();
}

/// No Python counterpart (a POSIX semaphore has no waiters to count): a waiter killed while it
/// slept stays counted as asleep, so every later release wakes it, and so did a burst of
/// releases that came while a waiter slept. Wake-ups kept as tokens in the eventfd then
/// piled up, one per release, and the next process to sleep on the semaphore read them one
/// by one, spinning at full CPU for as long as they had taken to pile up. An idle waiter now
/// uses no CPU whatever came before it.
async fn a_waiter_after_a_killed_one_stays_idle() -> TestResult {
    let s = Semaphore::new(0)?;
    let started = Event::new()?;
    let mut p = Process::new(acquire_one, (s.clone(), started.clone()))
        .start()
        .await?;
    support::kill_once_asleep(&mut p, &started).await?;
    // Many releases, taken again at once; one call to stay quick.
    const N: u32 = 3_000_000;
    s.release_n(N)?;
    for _ in 0..N {
        s.try_acquire()
            .ok_or("a unit released is missing")?
            .forget();
    }
    ensure!(s.get_value() == 0, "value {}", s.get_value());

    let started = Event::new()?;
    let mut p = Process::new(acquire_one, (s.clone(), started.clone()))
        .start()
        .await?;
    started.wait_timeout(LONG).await?;
    let before = support::cpu_ticks(p.pid())?;
    let wall = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = support::cpu_ticks(p.pid())? - before;
    let elapsed = wall.elapsed();
    p.kill()?;
    p.join().await?;
    // Clock ticks are 10 ms: a waiter asleep uses none; one in a loop uses about all.
    let wall_ticks = elapsed.as_millis() as u64 / 10;
    ensure!(
        used * 4 < wall_ticks,
        "an idle waiter used {used} ticks of CPU in {wall_ticks} ticks"
    );
    Ok(())
}

/// No Python counterpart: a releaser killed after it added its unit and before it woke the
/// sleepers (here, a test hook that stops there) leaves the next release to wake them: a
/// process asleep in `acquire` gets a unit once another release comes, as it would have
/// from the first.
async fn a_release_killed_before_its_wake_up_leaves_it_to_the_next() -> TestResult {
    let s = Semaphore::new(0)?;
    let started = Event::new()?;
    let mut p = Process::new(acquire_one, (s.clone(), started.clone()))
        .start()
        .await?;
    support::once_asleep(&started).await?;
    s.__release_unwoken()?;
    s.release()?;
    let joined = tokio::time::timeout(LONG, p.join()).await;
    if joined.is_err() {
        let _ = p.kill();
        let _ = p.join().await;
        return Err("the sleeper never took a unit".into());
    }
    ensure!(joined?? == 0, "the sleeper failed");
    ensure!(s.get_value() == 1, "value {}", s.get_value());
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        semaphore_counts,
        semaphore_bounds_concurrency,
        bounded_semaphore_over_release,
        bounded_semaphore_of_the_extreme_bounds,
        semaphore_timeout,
        a_waiter_after_a_killed_one_stays_idle,
        a_release_killed_before_its_wake_up_leaves_it_to_the_next
    ];
    libtest_mimic::run(&args, trials).exit()
}
