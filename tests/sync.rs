//! Locks, semaphores, `Condition`, `Event`, `Barrier`, `Value`/`Array` and `SharedMemory`
//! between real processes. Each test names the case of CPython's
//! `Lib/test/_test_multiprocessing.py` it comes from, where there is one.
//!
//! Tests run one at a time (unless `--test-threads` says otherwise), because several of them
//! count this process's descriptors and `/dev/shm` segments before and after.

mod support;

use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use support::{TestResult, eventually, fds_return_to, join_ok, open_fds, run_example, test};
use tokio_multiprocessing::{
    Array, Barrier, BoundedSemaphore, Condition, Error, Event, Lock, Pool, Process, RLock,
    RawArray, RawValue, Semaphore, SharedMemory, StartMethod, Value,
};

const LONG: Duration = Duration::from_secs(20);

/// A user's plain-old-data type (`_TestValue` uses ctypes structures the same way).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Point {
    x: f64,
    y: i32,
    on: bool,
}

// SAFETY: numbers and a bool written only through the typed API: no pointers, and every
// value stored is a valid Point.
unsafe impl tokio_multiprocessing::Pod for Point {}

// ---- child targets -------------------------------------------------------------------------

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

async fn cond_waiter(c: Condition, sleeping: Semaphore, woken: Semaphore) {
    let g = c.lock().await.expect("lock");
    sleeping.release().expect("release");
    let g = g.wait().await.expect("wait");
    woken.release().expect("release");
    drop(g);
}

async fn cond_late_waiter(c: Condition, out: RawValue<u32>) {
    let g = c.lock().await.expect("lock");
    let (g, notified) = g
        .wait_timeout(Duration::from_millis(100))
        .await
        .expect("wait");
    out.set(if notified { 2 } else { 1 });
    drop(g);
}

async fn cond_stepper(c: Condition, state: RawValue<i32>) {
    for i in 1..=4 {
        let g = c.lock().await.expect("lock");
        state.set(i);
        g.notify_all();
        drop(g);
        tokio::task::yield_now().await;
    }
}

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

#[allow(clippy::approx_constant)] // the seed's own literal
async fn set_values(
    f: Value<f64>,
    i: Value<i32>,
    c: RawValue<u8>,
    a: Array<i32>,
    pts: Array<Point>,
) {
    pts.set(
        1,
        Point {
            x: -1.5,
            y: 9,
            on: true,
        },
    )
    .await
    .expect("set");
    f.set(3.1415927).await.expect("set");
    i.set(-7).await.expect("set");
    c.set(b'x');
    let g = a.lock().await.expect("lock");
    for k in 0..g.len() {
        g.update(k, |x| x * x).expect("index");
    }
}

async fn shm_attach_write(name: String) {
    let shm = SharedMemory::attach(&name).expect("attach");
    shm.write(0, b"from child").expect("write");
}

async fn shm_write_then_hang(shm: SharedMemory, ready: Event) {
    shm.write(0, b"anon").expect("write");
    ready.set();
    std::future::pending::<()>().await;
}

// ---- helpers -------------------------------------------------------------------------------

/// How many `/dev/shm` segments this test process has made and not removed (other processes
/// on the machine make and remove their own at any time, so only ours are counted).
fn our_segments() -> usize {
    let suffix = format!("-{}", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("tmp-sync-") && n.ends_with(&suffix)
                })
                .count()
        })
        .unwrap_or(0)
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn unique(tag: &str) -> String {
    format!("tmp-sync-{tag}-{}", std::process::id())
}

// ---- Lock ----------------------------------------------------------------------------------

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
    let mut p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start()
        .await?;
    ready.wait_timeout(LONG).await?;
    let pid = p.pid();
    p.kill()?;
    ensure!(p.join().await? == -9, "not killed by SIGKILL");
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
    let ready = Event::new()?;
    let mut p = Process::new(hold_forever, (l.clone(), ready.clone()))
        .start()
        .await?;
    ready.wait_timeout(LONG).await?;
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

// ---- RLock ---------------------------------------------------------------------------------

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

// ---- Semaphore -----------------------------------------------------------------------------

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

/// `_TestSemaphore.test_timeout`: a timed acquire of an empty semaphore gives up.
async fn semaphore_timeout() -> TestResult {
    let s = Semaphore::new(0)?;
    let r = s.acquire_timeout(Duration::from_millis(30)).await;
    ensure!(matches!(r, Err(Error::Timeout)), "got {r:?}");
    ensure!(s.get_value() == 0, "value {}", s.get_value());
    Ok(())
}

// ---- Event ---------------------------------------------------------------------------------

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

// ---- Condition -----------------------------------------------------------------------------

/// `_TestCondition.test_notify` and `test_notify_all`/`test_notify_n`: three waiters in
/// three processes; `notify(1)` lets exactly one through, `notify_all` the rest.
async fn condition_notify() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = Vec::new();
    for _ in 0..3 {
        kids.push(
            Process::new(cond_waiter, (c.clone(), sleeping.clone(), woken.clone()))
                .start()
                .await?,
        );
    }
    for _ in 0..3 {
        sleeping.acquire_timeout(LONG).await?.forget();
    }
    // Taking the lock proves every waiter has released it inside `wait`.
    let g = c.lock_timeout(LONG).await?;
    ensure!(woken.get_value() == 0, "woken before any notify");
    g.notify(1);
    drop(g);
    woken.acquire_timeout(LONG).await?.forget();
    let g = c.lock_timeout(LONG).await?;
    ensure!(woken.get_value() == 0, "notify(1) woke more than one");
    g.notify_all();
    drop(g);
    woken.acquire_timeout(LONG).await?.forget();
    woken.acquire_timeout(LONG).await?.forget();
    for k in &mut kids {
        join_ok(k).await?;
    }
    Ok(())
}

/// No Python counterpart (Python's own implementation waits in `notify` to prevent it): a
/// notification goes to a waiter that was waiting when it was sent, never to one that
/// arrives after it, even though the late one is the only waiter left when it runs.
async fn condition_late_waiter_cannot_steal() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut early = Process::new(cond_waiter, (c.clone(), sleeping.clone(), woken.clone()))
        .start()
        .await?;
    sleeping.acquire_timeout(LONG).await?.forget();
    let g = c.lock_timeout(LONG).await?;
    g.notify(1);
    // The late waiter can only start waiting once the lock is free, after the notify.
    let out = RawValue::new(0u32)?;
    let mut late = Process::new(cond_late_waiter, (c.clone(), out.clone()))
        .start()
        .await?;
    drop(g);
    woken.acquire_timeout(LONG).await?.forget();
    join_ok(&mut early).await?;
    join_ok(&mut late).await?;
    ensure!(
        out.get() == 1,
        "the late waiter was notified ({})",
        out.get()
    );
    Ok(())
}

/// `_TestCondition.test_timeout`: a wait with nobody to notify times out, with the lock held
/// again afterwards.
async fn condition_timeout() -> TestResult {
    let c = Condition::with_lock(Lock::new()?)?;
    let g = c.lock().await?;
    let (g, notified) = g.wait_timeout(Duration::from_millis(30)).await?;
    ensure!(!notified, "notified by nobody");
    // A notification now must not go to the waiter that left.
    g.notify(1);
    let (g, notified) = g.wait_timeout(Duration::from_millis(30)).await?;
    ensure!(!notified, "an old notify reached a new waiter");
    drop(g);
    Ok(())
}

/// `_TestCondition.test_waitfor` and `test_waitfor_timeout`.
async fn condition_wait_for() -> TestResult {
    let c = Condition::new()?;
    let state = RawValue::new(0i32)?;
    let g = c.lock().await?;
    let mut p = Process::new(cond_stepper, (c.clone(), state.clone()))
        .start()
        .await?;
    let (g, ok) = g.wait_for(|| state.get() == 4, Some(LONG)).await?;
    ensure!(
        ok && state.get() == 4,
        "wait_for returned {ok} at {}",
        state.get()
    );
    let (g, ok) = g
        .wait_for(|| state.get() == 5, Some(Duration::from_millis(30)))
        .await?;
    ensure!(!ok, "wait_for of a predicate that never holds");
    drop(g);
    join_ok(&mut p).await?;
    Ok(())
}

// ---- Barrier -------------------------------------------------------------------------------

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

// ---- Value / Array -------------------------------------------------------------------------

/// `_TestValue.test_value` and `_TestArray.test_array`: a child writes values of several
/// types and squares an array; the parent sees it all.
#[allow(clippy::approx_constant)]
async fn value_and_array_cross() -> TestResult {
    let fds = open_fds();
    value_and_array_cross_inner().await?;
    fds_return_to(fds, LONG).await?;
    Ok(())
}

#[allow(clippy::approx_constant)]
async fn value_and_array_cross_inner() -> TestResult {
    let f = Value::new(0.0f64)?;
    let i = Value::new(0i32)?;
    let c = RawValue::new(b'a')?;
    let a = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    let zero = Point {
        x: 0.0,
        y: 0,
        on: false,
    };
    let pts = Array::from_elem(zero, 2)?;
    let mut p = Process::new(
        set_values,
        (f.clone(), i.clone(), c.clone(), a.clone(), pts.clone()),
    )
    .start()
    .await?;
    join_ok(&mut p).await?;
    ensure!(f.get().await? == 3.1415927, "f64");
    ensure!(i.get().await? == -7, "i32");
    ensure!(c.get() == b'x', "u8");
    let want: Vec<i32> = (0..10).map(|x| x * x).collect();
    ensure!(a.to_vec().await? == want, "array {:?}", a.to_vec().await?);
    let got = pts.to_vec().await?;
    ensure!(
        got == vec![
            zero,
            Point {
                x: -1.5,
                y: 9,
                on: true
            }
        ],
        "points {got:?}"
    );
    Ok(())
}

/// `_TestValue.test_getobj_getlock` and `_TestArray.test_getobj_getlock`, plus index errors
/// (`IndexError` in Python).
async fn value_lock_and_indices() -> TestResult {
    let l = Lock::new()?;
    let v = Value::with_lock(5u64, l.clone())?;
    {
        let g = v.lock().await?;
        ensure!(l.is_locked(), "Value's lock is not the given lock");
        ensure!(g.get() == 5, "value");
    }
    ensure!(v.get_obj().get() == 5, "get_obj");
    ensure!(!v.get_lock().is_locked(), "lock left held");
    let a = RawArray::from_slice(&[1.0f32, 2.0])?;
    ensure!(a.len() == 2 && a.get(2).is_none(), "get past the end");
    ensure!(
        matches!(
            a.set(2, 0.0),
            Err(Error::IndexOutOfRange { index: 2, len: 2 })
        ),
        "set past the end"
    );
    ensure!(
        matches!(a.copy_from_slice(&[1.0]), Err(Error::InvalidArgument(_))),
        "short copy accepted"
    );
    let locked = Array::from_elem(true, 3)?;
    ensure!(
        locked.set(3, false).await.is_err(),
        "locked set past the end"
    );
    ensure!(locked.to_vec().await? == vec![true; 3], "bools");
    Ok(())
}

// ---- SharedMemory --------------------------------------------------------------------------

/// `_TestSharedMemory.test_shared_memory_basics`: create, attach by name (here and in a
/// child), size and name, unlink; creating a taken name fails; nothing left in `/dev/shm`.
async fn shared_memory_named() -> TestResult {
    let segments = our_segments();
    let name = unique("basics");
    ensure!(!shm_exists(&name), "stale segment {name}");
    let mut shm = SharedMemory::create(&name, 4096)?;
    ensure!(shm_exists(&name), "segment not in /dev/shm");
    ensure!(
        shm.size() == 4096 && shm.name() == Some(name.as_str()),
        "size/name"
    );
    let dup = SharedMemory::create(&name, 10);
    ensure!(
        matches!(&dup, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists),
        "duplicate create: {dup:?}"
    );
    let other = SharedMemory::attach(&name)?;
    other.write(100, b"abc")?;
    let mut buf = [0u8; 3];
    shm.read(100, &mut buf)?;
    ensure!(&buf == b"abc", "attach sees other memory");
    ensure!(
        shm.write(4095, b"xy").is_err(),
        "write past the end accepted"
    );
    // Unaligned starts and lengths, across the word-sized copies.
    let pattern: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    shm.write(1003, &pattern)?;
    let mut back = vec![0u8; 1000];
    other.read(1003, &mut back)?;
    ensure!(back == pattern, "unaligned round trip differs");
    let whole = other.to_vec();
    ensure!(
        whole.len() == 4096 && whole[1003..2003] == pattern[..] && whole[100..103] == *b"abc",
        "to_vec differs"
    );

    let mut p = Process::new(shm_attach_write, (name.clone(),))
        .start()
        .await?;
    join_ok(&mut p).await?;
    let mut buf = [0u8; 10];
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"from child", "child's write: {buf:?}");

    drop(other); // an attacher never unlinks
    ensure!(shm_exists(&name), "an attacher removed the segment");
    shm.unlink()?;
    ensure!(!shm_exists(&name), "unlink left the segment");
    let gone = SharedMemory::attach(&name);
    ensure!(
        matches!(&gone, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound),
        "attach after unlink: {gone:?}"
    );
    shm.read(0, &mut buf)?; // the mapping outlives the name
    drop(shm);
    ensure!(!shm_exists(&name), "segment leaked");
    ensure!(
        our_segments() == segments,
        "segments: {segments} before, {} after",
        our_segments()
    );
    Ok(())
}

/// No Python counterpart: a child holding a segment (named: received from its creator;
/// anonymous: a memfd) is killed; the named one is still removed by its creator's drop, and
/// neither leaves a segment or a descriptor behind.
async fn shared_memory_survives_killed_child() -> TestResult {
    let name = unique("kill");
    let segments = our_segments();
    let fds = open_fds();
    {
        let named = SharedMemory::create(&name, 64)?;
        let anon = SharedMemory::create_anonymous(64)?;
        ensure!(anon.name().is_none(), "anonymous has a name");
        for shm in [&named, &anon] {
            let ready = Event::new()?;
            let mut p = Process::new(shm_write_then_hang, (shm.try_clone()?, ready.clone()))
                .start()
                .await?;
            ready.wait_timeout(LONG).await?;
            p.kill()?;
            p.join().await?;
            let mut buf = [0u8; 4];
            shm.read(0, &mut buf)?;
            ensure!(&buf == b"anon", "child's write lost");
        }
        ensure!(shm_exists(&name), "the child's death removed the name");
        ensure!(our_segments() == segments + 1, "segments while alive");
    }
    ensure!(!shm_exists(&name), "segment leaked");
    ensure!(
        our_segments() == segments,
        "segments: {segments} before, {} after",
        our_segments()
    );
    fds_return_to(fds, LONG).await?;
    Ok(())
}

// ---- descriptors ---------------------------------------------------------------------------

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
        matches!(BoundedSemaphore::new(0), Err(Error::InvalidArgument(_))),
        "BoundedSemaphore::new(0)"
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

// ---- examples ------------------------------------------------------------------------------

async fn example_shared_value_array() -> TestResult {
    let out = run_example("shared_value_array").await?;
    ensure!(
        out == "3.1415927\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n",
        "output:\n{out}"
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

async fn example_race_lock() -> TestResult {
    let out = run_example("race_lock").await?;
    ensure!(
        out == "Value at beginning: 0\nArray at beginning: [0.0, 100.0, 200.0]\n\
                Value at end: 200\nArray at end: [200.0, 300.0, 400.0]\nend main\n",
        "output:\n{out}"
    );
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
    let trials: Vec<Trial> = vec![
        test("lock_basics", lock_basics),
        test("primitives_as_pool_arguments", primitives_as_pool_arguments),
        test(
            "lock_excludes_across_processes",
            lock_excludes_across_processes,
        ),
        test("lock_acquire_timeout", lock_acquire_timeout),
        test("lock_owner_killed", lock_owner_killed),
        test("lock_waiter_sees_owner_die", lock_waiter_sees_owner_die),
        test("lock_owner_killed_forkserver", lock_owner_killed_forkserver),
        test("rlock_reentrant", rlock_reentrant),
        test("semaphore_counts", semaphore_counts),
        test("semaphore_bounds_concurrency", semaphore_bounds_concurrency),
        test(
            "bounded_semaphore_over_release",
            bounded_semaphore_over_release,
        ),
        test("semaphore_timeout", semaphore_timeout),
        test("event_wakes_every_process", event_wakes_every_process),
        test("event_ping_pong_in_step", event_ping_pong_in_step),
        test("condition_notify", condition_notify),
        test(
            "condition_late_waiter_cannot_steal",
            condition_late_waiter_cannot_steal,
        ),
        test("condition_timeout", condition_timeout),
        test("condition_wait_for", condition_wait_for),
        test("barrier_rounds", barrier_rounds),
        test("barrier_abort_and_reset", barrier_abort_and_reset),
        test("barrier_timeout_breaks", barrier_timeout_breaks),
        test("value_and_array_cross", value_and_array_cross),
        test("value_lock_and_indices", value_lock_and_indices),
        test("shared_memory_named", shared_memory_named),
        test(
            "shared_memory_survives_killed_child",
            shared_memory_survives_killed_child,
        ),
        test("bad_arguments_are_invalid", bad_arguments_are_invalid),
        test("no_descriptor_left_behind", no_descriptor_left_behind),
        test("example_shared_value_array", example_shared_value_array),
        test("example_lock_print", example_lock_print),
        test("example_event", example_event),
        test("example_race_lock", example_race_lock),
    ];
    libtest_mimic::run(&args, trials).exit()
}
