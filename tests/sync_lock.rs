//! `Lock` and `RLock` between real processes: exclusion, timeouts, re-entrancy and a
//! holder's death.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::process::BoxError;
use support::{TestResult, eventually, join_ok, run_example};
use tokio_multiprocessing::{
    Error, Event, Lock, LockGuard, Process, RLock, RLockGuard, RawArray, RawValue, StartMethod,
    Value,
};

const LONG: Duration = Duration::from_secs(20);

/// Increments `v` `n` times under its lock, checking that no one else is inside.
async fn add_under_lock(v: Value<i64>, inside: RawValue<u32>, bad: RawValue<u32>, n: u32) {
    for _ in 0..n {
        let mut g = v.lock().await.expect("lock");
        if inside.get() != 0 {
            bad.set(bad.get() + 1);
        }
        inside.set(1);
        tokio::task::yield_now().await;
        g.update(|x| x + 1);
        inside.set(0);
    }
}

/// Takes the lock, reports it, and never lets go.
async fn hold_forever(l: Lock, ready: Event) {
    l.lock().await.expect("lock").forget();
    ready.set();
    std::future::pending::<()>().await;
}

/// Takes the re-entrant lock twice, reports it, and never lets go.
async fn hold_rlock_forever(l: RLock, ready: Event) {
    l.lock().await.expect("lock").forget();
    l.lock().await.expect("again").forget();
    ready.set();
    std::future::pending::<()>().await;
}

async fn rlock_try(l: RLock, got: RawValue<u32>) {
    got.set(u32::from(l.try_lock().expect("try").is_some()));
}

/// `_TestLock.test_lock`: acquire, non-blocking acquire of a held lock, release, and release
/// of an unlocked lock is an error.
async fn lock_basics() -> TestResult {
    let l = Lock::new()?;
    let g = l.try_lock()?.ok_or("free lock not taken")?;
    ensure!(l.is_locked(), "not locked");
    ensure!(l.try_lock()?.is_none(), "held lock taken twice");
    ensure!(l.is_locked(), "a failed try_lock released the lock");
    drop(g);
    ensure!(!l.is_locked(), "still locked");
    ensure!(
        matches!(l.release(), Err(Error::NotHeld)),
        "release of an unlocked lock accepted"
    );
    l.lock().await?.forget();
    l.release()?;
    ensure!(!l.is_locked(), "release() left it locked");
    Ok(())
}

/// `_TestLock.test_lock_context` across processes: 3 children and this process increment a
/// `Value` under its lock; nobody is ever inside together and no increment is lost.
async fn lock_excludes_across_processes() -> TestResult {
    let v = Value::new(0i64)?;
    let inside = RawValue::new(0u32)?;
    let bad = RawValue::new(0u32)?;
    let mut kids = Vec::new();
    for _ in 0..3 {
        kids.push(
            Process::new(
                add_under_lock,
                (v.clone(), inside.clone(), bad.clone(), 300),
            )
            .start()
            .await?,
        );
    }
    add_under_lock(v.clone(), inside.clone(), bad.clone(), 300).await;
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(bad.get() == 0, "{} overlaps inside the lock", bad.get());
    let n = v.get().await?;
    ensure!(n == 1200, "counter is {n}, want 1200");
    Ok(())
}

/// `_TestLock.test_lock` with a timeout (`acquire(timeout=...)`), across processes.
async fn lock_acquire_timeout() -> TestResult {
    let l = Lock::new()?;
    let ready = Event::new()?;
    let mut p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start()
        .await?;
    ready.wait_timeout(LONG).await?;
    ensure!(l.holder() == Some(p.pid()), "holder is {:?}", l.holder());
    let r = l.lock_timeout(Duration::from_millis(50)).await;
    ensure!(matches!(r, Err(Error::Timeout)), "want Timeout, got {r:?}");
    p.kill()?;
    p.join().await?;
    Ok(())
}

/// No Python counterpart (Python leaves the lock locked for ever): the holder is killed by
/// SIGKILL; the next acquirer gets `LockOwnerDied`, and the lock is free after that.
async fn lock_owner_killed() -> TestResult {
    let l = Lock::new()?;
    let ready = Event::new()?;
    let pid = kill_a_holder(&l).await?;
    let r = l.lock_timeout(LONG).await;
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "want LockOwnerDied({pid}), got {r:?}"
    );
    let g = l.lock_timeout(LONG).await?;
    drop(g);

    // A non-blocking acquire notices a dead holder too.
    let mut p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start()
        .await?;
    ready.clear();
    ensure!(
        eventually(LONG, || l.holder() == Some(p.pid())).await,
        "second child never took the lock"
    );
    ensure!(l.try_lock()?.is_none(), "took a lock a live child holds");
    ensure!(
        l.holder() == Some(p.pid()),
        "a failed try_lock released the child's lock"
    );
    let pid = p.pid();
    p.kill()?;
    p.join().await?;
    let r = l.try_lock();
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "try_lock: want LockOwnerDied({pid}), got {r:?}"
    );
    ensure!(l.try_lock()?.is_some(), "lock not free after recovery");
    Ok(())
}

/// As above, but the acquirer is already asleep on the lock when the holder is killed: the
/// holder's pidfd wakes it.
async fn lock_waiter_sees_owner_die() -> TestResult {
    let l = Lock::new()?;
    let mut p = start_holder(&l).await?;
    let pid = p.pid();
    let (r, k) = tokio::join!(l.lock_timeout(LONG), async {
        tokio::task::yield_now().await;
        p.kill()
    });
    k?;
    p.join().await?;
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "want LockOwnerDied({pid}), got {r:?}"
    );
    ensure!(!l.is_locked(), "lock not recovered");
    Ok(())
}

/// No Python counterpart: the holder is killed and reaped, and a later process takes its pid,
/// as happens soon where `pid_max` is 32768. The lock still counts its holder as dead: a
/// lock that kept the bare pid took the stranger for its holder, and its next acquirer
/// waited for the stranger's end.
async fn lock_owner_whose_pid_another_process_took() -> TestResult {
    let l = Lock::new()?;
    let pid = kill_a_holder(&l).await?;
    let stranger = match support::process_with_pid(pid) {
        Ok(c) => c,
        Err(why) => {
            println!("skipped: {why}");
            return Ok(());
        }
    };
    let tried = l.try_lock().map(|g| g.map(LockGuard::forget));
    let waited = l.lock_timeout(Duration::from_secs(5)).await.map(drop);
    drop(stranger);
    ensure!(
        matches!(tried, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "try_lock: want LockOwnerDied({pid}), got {tried:?}"
    );
    ensure!(
        waited.is_ok(),
        "the lock freed by try_lock was not taken: {waited:?}"
    );

    // A waiter that comes after the pid was taken, with no try_lock before it.
    let pid = kill_a_holder(&l).await?;
    let stranger = support::process_with_pid(pid)?;
    let waited = l.lock_timeout(Duration::from_secs(5)).await.map(drop);
    drop(stranger);
    ensure!(
        matches!(waited, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "lock: want LockOwnerDied({pid}), got {waited:?}"
    );
    Ok(())
}

/// Starts a child that takes `l` and holds it, then kills it with SIGKILL and reaps it; its
/// pid.
async fn kill_a_holder(l: &Lock) -> Result<u32, BoxError> {
    let mut p = start_holder(l).await?;
    let pid = p.pid();
    p.kill()?;
    ensure!(p.join().await? == -9, "not killed by SIGKILL");
    Ok(pid)
}

/// A child that has taken `l` and holds it for ever.
async fn start_holder(l: &Lock) -> Result<Process, BoxError> {
    let ready = Event::new()?;
    let p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start()
        .await?;
    ready.wait_timeout(LONG).await?;
    Ok(p)
}

/// `lock_owner_killed` with children forked by the fork server: each child must record its
/// own pid as the holder (a pid cached before the fork would name the server), or the death
/// would go unnoticed.
async fn lock_owner_killed_forkserver() -> TestResult {
    let l = RLock::new()?;
    let ready = Event::new()?;
    let mut p = Process::new(hold_rlock_forever, (l.clone(), ready.clone()))
        .start_method(StartMethod::ForkServer)
        .start()
        .await?;
    ready.wait_timeout(LONG).await?;
    let pid = p.pid();
    ensure!(
        l.holder().map(|h| h.0) == Some(pid),
        "holder {:?}, child {pid}",
        l.holder()
    );
    p.kill()?;
    p.join().await?;
    let r = l.lock_timeout(LONG).await;
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "want LockOwnerDied({pid}), got {r:?}"
    );
    let g = l.lock_timeout(LONG).await?;
    ensure!(l.holder().map(|h| h.1) == Some(1), "count {:?}", l.holder());
    drop(g);
    Ok(())
}

/// `lock_owner_killed` with a holder started by the `fork` method, from a spawned child (a
/// forking parent must be single-threaded) that took the lock before the fork, so that its
/// own identity was cached: the forked holder must record its own, or its death would go
/// unnoticed (and the parent would take itself for the holder).
async fn lock_owner_killed_fork() -> TestResult {
    let mut p = Process::new(fork_a_holder_and_kill_it, (Lock::new()?,))
        .start()
        .await?;
    join_ok(&mut p).await
}

/// Runs in a child: takes and releases `l`, forks a holder of it, kills the holder, and
/// checks that the next acquirer is told.
async fn fork_a_holder_and_kill_it(l: Lock) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    drop(l.lock_timeout(LONG).await.map_err(e)?);
    let ready = Event::new().map_err(e)?;
    let mut p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start_method(StartMethod::Fork)
        .start()
        .await
        .map_err(e)?;
    ready.wait_timeout(LONG).await.map_err(e)?;
    let pid = p.pid();
    let holder = l.holder();
    let free = l.try_lock().map_err(e)?.is_some();
    p.kill().map_err(e)?;
    p.join().await.map_err(e)?;
    ensure!(holder == Some(pid), "holder {holder:?}, forked child {pid}");
    ensure!(!free, "took a lock that a live forked child holds");
    let r = l.lock_timeout(LONG).await;
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { pid: d }) if d == pid),
        "want LockOwnerDied({pid}), got {r:?}"
    );
    drop(l.lock_timeout(LONG).await.map_err(e)?);
    Ok(())
}

/// `_TestLock.test_rlock`: the owner acquires three times and releases three times; one
/// release more is an error. Another task and another process cannot take it meanwhile.
async fn rlock_reentrant() -> TestResult {
    let l = RLock::new()?;
    let a = l.lock().await?;
    let b = l.lock().await?;
    let c = l.try_lock()?.ok_or("owner's try_lock failed")?;
    ensure!(l.holder().map(|h| h.1) == Some(3), "count {:?}", l.holder());

    let other = l.clone();
    let taken = tokio::spawn(async move { other.try_lock().map(|g| g.is_some()) }).await??;
    ensure!(!taken, "another task took an owned RLock");
    let other = l.clone();
    let r = tokio::spawn(async move { other.release() }).await?;
    ensure!(
        matches!(r, Err(Error::NotOwner)),
        "non-owner release: {r:?}"
    );

    let got = RawValue::new(7u32)?;
    let mut p = Process::new(rlock_try, (l.clone(), got.clone()))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(got.get() == 0, "another process took an owned RLock");

    drop(c);
    drop(b);
    drop(a);
    ensure!(l.holder().is_none(), "still held: {:?}", l.holder());
    ensure!(
        matches!(l.release(), Err(Error::NotOwner)),
        "release of a free RLock accepted"
    );
    let mut p = Process::new(rlock_try, (l.clone(), got.clone()))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        got.get() == 1,
        "another process could not take a free RLock"
    );
    Ok(())
}

async fn example_lock_print() -> TestResult {
    let out = run_example("lock_print").await?;
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    let mut want: Vec<String> = (0..10).map(|i| format!("hello world {i}")).collect();
    want.sort_unstable();
    ensure!(lines == want, "output:\n{out}");
    Ok(())
}

async fn example_race_lock() -> TestResult {
    let out = run_example("race_lock").await?;
    ensure!(
        out == "Value at beginning: 0\nArray at beginning: [0.0, 100.0, 200.0]\n\
                Value at end: 200\nArray at end: [200.0, 300.0, 400.0]\nend main\n",
        "output:\n{out}"
    );
    Ok(())
}

/// Waits for the lock (again after a dead holder's), writes its pid at `holders[i]`, and
/// never lets go.
async fn wait_then_hold(l: Lock, holders: RawArray<u32>, i: usize) {
    loop {
        match l.lock().await {
            Ok(g) => {
                g.forget();
                break;
            }
            Err(Error::LockOwnerDied { .. }) => continue,
            Err(_) => return,
        }
    }
    let _ = holders.set(i, std::process::id());
    std::future::pending::<()>().await;
}

async fn lock_passed_to_a_waiter_that_dies() -> TestResult {
    // Two processes asleep on a lock; it passes to one, which dies holding it: the other
    // must learn of that death, though the holder it saw as it fell asleep (this process)
    // lives on.
    let l = Lock::new()?;
    l.lock().await?.forget();
    let holders = RawArray::from_elem(0u32, 2)?;
    let mut waiters = Vec::new();
    for i in 0..2 {
        let args = (l.clone(), holders.clone(), i);
        waiters.push(
            Process::new(wait_then_hold, args)
                .daemon(true)
                .start()
                .await?,
        );
    }
    // Asleep by then (a wait spins for 50 µs at most); were one still awake, it would see
    // every holder anyway, and the test would pass for want of the case, never fail.
    tokio::time::sleep(Duration::from_millis(300)).await;
    l.release()?;
    let read = |i: usize| holders.get(i).unwrap_or(0);
    ensure!(
        eventually(LONG, || read(0) != 0 || read(1) != 0).await,
        "no waiter took the released lock"
    );
    let first = usize::from(read(0) == 0);
    waiters[first].kill()?;
    waiters[first].join().await?;
    let other = 1 - first;
    ensure!(
        eventually(LONG, || read(other) != 0).await,
        "the other waiter still waits, {LONG:?} after the holder it was passed to died; \
         the lock names {:?}",
        l.holder()
    );
    waiters[other].kill()?;
    waiters[other].join().await?;
    Ok(())
}

/// The number of the running task (`tokio::task::id()`).
fn task_number() -> u64 {
    tokio::task::id().to_string().parse().unwrap_or(0)
}

/// Takes the re-entrant lock in a task numbered `at` or more (spawning tasks until one is),
/// reports that task's number, and never lets go.
async fn hold_rlock_in_a_task_numbered(l: RLock, at: u64, held_by: RawValue<u64>, ready: Event) {
    loop {
        let l = l.clone();
        let taken = tokio::spawn(async move {
            let n = task_number();
            if n < at {
                return None;
            }
            l.lock().await.expect("lock").forget();
            Some(n)
        });
        if let Some(n) = taken.await.expect("task") {
            held_by.set(n);
            ready.set();
            std::future::pending::<()>().await;
        }
    }
}

/// No Python counterpart: a task of a dead holder and a task of the next holder's process
/// share a number (tasks are numbered within each process). The dead holder's task stays
/// recorded as the owner until the next holder records its own, right after it takes the
/// lock; a task of that process with the dead task's number, trying the lock in between,
/// took itself for the owner and entered beside the holder. Now it waits, as any task but
/// the owner does.
async fn rlock_task_of_a_dead_holder_is_nobody_here() -> TestResult {
    let l = RLock::new()?;
    let here = tokio::spawn(async { task_number() }).await?;
    let (held_by, ready) = (RawValue::new(0u64)?, Event::new()?);
    let mut p = Process::new(
        hold_rlock_in_a_task_numbered,
        (l.clone(), here + 1000, held_by.clone(), ready.clone()),
    )
    .start()
    .await?;
    ready.wait_timeout(LONG).await?;
    p.kill()?;
    p.join().await?;
    let r = l.try_lock().map(|g| g.map(RLockGuard::forget));
    ensure!(
        matches!(r, Err(Error::LockOwnerDied { .. })),
        "want LockOwnerDied, got {r:?}"
    );
    // A task of this process is between its compare-and-swap and the store of its task.
    let taking = l.clone();
    tokio::spawn(async move { taking.__take_word_only().await }).await??;
    let dead = held_by.get();
    loop {
        let l = l.clone();
        let (n, entered) = tokio::spawn(async move {
            let n = task_number();
            let entered = if n == dead {
                Some(l.try_lock().map(|g| g.map(RLockGuard::forget).is_some()))
            } else {
                None
            };
            (n, entered)
        })
        .await?;
        if let Some(entered) = entered {
            ensure!(
                !entered?,
                "task {n} of this process entered a lock that another task of it holds"
            );
            return Ok(());
        }
        ensure!(n < dead, "task numbers went past {dead}");
    }
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        lock_basics,
        lock_excludes_across_processes,
        lock_acquire_timeout,
        lock_owner_killed,
        lock_waiter_sees_owner_die,
        lock_owner_whose_pid_another_process_took,
        lock_owner_killed_forkserver,
        lock_passed_to_a_waiter_that_dies,
        rlock_reentrant,
        rlock_task_of_a_dead_holder_is_nobody_here,
        example_lock_print,
        example_race_lock,
        lock_owner_killed_fork
    ];
    libtest_mimic::run(&args, trials).exit()
}
