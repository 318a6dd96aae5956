//! All the synchronisation primitives together: as Pool arguments, bad arguments, and no descriptor left behind.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, fds_return_to, join_ok, open_fds};
use tokio_multiprocessing::{
    Barrier, Condition, Error, Event, Lock, Pool, Process, RLock, Semaphore, SharedMemory, Value,
};

const LONG: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> String {
    format!("tmp-sync-{tag}-{}", std::process::id())
}

/// Bad arguments are `Error::InvalidArgument`, Python's `ValueError`
/// (`_TestBarrier` and `_TestSharedMemory` refuse the same values).
async fn bad_arguments_are_invalid() -> TestResult {
    ensure!(
        matches!(Barrier::new(0), Err(Error::InvalidArgument(_))),
        "Barrier::new(0)"
    );
    ensure!(
        matches!(Barrier::new(u32::MAX), Err(Error::InvalidArgument(_))),
        "Barrier::new(u32::MAX)"
    );
    ensure!(
        matches!(
            SharedMemory::create_anonymous(0),
            Err(Error::InvalidArgument(_))
        ),
        "SharedMemory::create_anonymous(0)"
    );
    ensure!(
        matches!(
            SharedMemory::create(&unique("zero"), 0),
            Err(Error::InvalidArgument(_))
        ),
        "SharedMemory::create(name, 0)"
    );
    ensure!(
        matches!(
            SharedMemory::create("/a/b", 64),
            Err(Error::InvalidArgument(_))
        ),
        "SharedMemory::create with a `/` inside the name"
    );
    Ok(())
}

async fn take_everything(l: Lock, r: RLock, s: Semaphore, c: Condition, e: Event, b: Barrier) {
    drop(l.lock().await.expect("lock"));
    drop(r.lock().await.expect("rlock"));
    s.acquire().await.expect("semaphore").forget();
    drop(c.lock().await.expect("condition"));
    e.set();
    b.wait().await.expect("barrier");
}

/// Every primitive crosses to a child and back to idle; afterwards this process has exactly
/// the descriptors it had before.
async fn no_descriptor_left_behind() -> TestResult {
    let fds = open_fds();
    {
        let l = Lock::new()?;
        let r = RLock::new()?;
        let s = Semaphore::new(1)?;
        let c = Condition::new()?;
        let e = Event::new()?;
        let b = Barrier::new(1)?;
        let mut p = Process::new(
            take_everything,
            (
                l.clone(),
                r.clone(),
                s.clone(),
                c.clone(),
                e.clone(),
                b.clone(),
            ),
        )
        .start()
        .await?;
        join_ok(&mut p).await?;
        ensure!(e.is_set() && s.get_value() == 0, "child did not run");
        drop(l.lock_timeout(LONG).await?);
    }
    fds_return_to(fds, LONG).await?;
    Ok(())
}

/// A pool initializer: counts the workers that started, in shared memory.
async fn count_worker(started: Value<u32>) -> tokio_multiprocessing::Result<()> {
    started.lock().await?.update(|n| n + 1);
    Ok(())
}

/// A pool task: adds under the value's lock, then sets the event once the total is reached.
async fn add_and_signal(total: Value<u64>, done: Event, amount: u64, goal: u64) -> u64 {
    let now = {
        let Ok(mut g) = total.lock().await else {
            return u64::MAX;
        };
        g.update(|t| t + amount)
    };
    if now == goal {
        done.set();
    }
    now
}

async fn primitives_as_pool_arguments() -> TestResult {
    let started = Value::new(0u32)?;
    let total = Value::new(0u64)?;
    let done = Event::new()?;
    let pool = Pool::builder()
        .processes(2)
        .initializer(count_worker, (started.clone(),))
        .build()
        .await?;
    let goal: u64 = (1..=40).sum();
    let mut calls = Vec::new();
    for i in 1..=40u64 {
        calls.push(pool.apply_async(add_and_signal, (total.clone(), done.clone(), i, goal)));
    }
    for c in calls {
        ensure!(
            c.await? != u64::MAX,
            "a task could not take the value's lock"
        );
    }
    ensure!(
        done.wait_timeout(LONG).await?,
        "the event set in a worker was not seen here"
    );
    ensure!(total.get().await? == goal, "total {}", total.get().await?);
    ensure!(
        started.get().await? == 2,
        "initializer ran in {} workers",
        started.get().await?
    );
    pool.terminate().await?;
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        primitives_as_pool_arguments,
        bad_arguments_are_invalid,
        no_descriptor_left_behind
    ];
    libtest_mimic::run(&args, trials).exit()
}
