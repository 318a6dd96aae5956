//! `Condition` between real processes: notify, fairness, timeouts, `wait_for` and `try_lock`.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, join_ok, start};
use tokio_multiprocessing::{
    Condition, ConditionGuard, Error, Lock, Process, RLock, RawValue, Semaphore,
};

const LONG: Duration = Duration::from_secs(20);

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

/// `_TestCondition.test_notify` and `test_notify_all`/`test_notify_n`: three waiters in
/// three processes; `notify(1)` lets exactly one through, `notify_all` the rest.
async fn condition_notify() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(3, cond_waiter, (&c, &sleeping, &woken)).await?;
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
    // The lock is held: try_lock and lock_timeout give up, as Python's acquire(False) and
    // acquire(timeout=...) do.
    ensure!(c.try_lock()?.is_none(), "try_lock took a held lock");
    let r = c.lock_timeout(Duration::from_millis(30)).await;
    ensure!(
        matches!(r, Err(Error::Timeout)),
        "lock_timeout on a held lock: {r:?}"
    );
    drop(g);
    let g = c.try_lock()?.ok_or("try_lock missed a free lock")?;
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

/// Starts `n` children running `waiter(c, sleeping, woken)` and waits until each has said,
/// on `sleeping`, that it is about to wait.
async fn start_waiting<F, M>(
    n: usize,
    waiter: F,
    (c, sleeping, woken): (&Condition, &Semaphore, &Semaphore),
) -> Result<Vec<Process>, Error>
where
    F: tokio_multiprocessing::Target<(Condition, Semaphore, Semaphore), M> + Copy,
    F::Output: std::process::Termination,
{
    let mut kids = Vec::new();
    for _ in 0..n {
        kids.push(start(waiter, (c.clone(), sleeping.clone(), woken.clone())).await?);
    }
    for _ in 0..n {
        sleeping.acquire_timeout(LONG).await?.forget();
    }
    Ok(kids)
}

/// Waits for a waiter to say it woke, then for the child `kid` to end; `lost` is the error
/// if none does (`kid` is then killed, not left waiting for ever, which would hold this
/// program at its exit).
async fn woken_then_joined(woken: &Semaphore, kid: &mut Process, lost: &str) -> TestResult {
    if woken
        .acquire_timeout(LONG)
        .await
        .map(|g| g.forget())
        .is_err()
    {
        let _ = kid.kill();
        return Err(lost.into());
    }
    join_ok(kid).await
}

/// Waits until `sem`'s value is `n` (at most 20 s), as CPython's `assertReachesEventually`.
async fn reaches(sem: &Semaphore, n: u32) -> bool {
    support::eventually(LONG, || sem.get_value() == n).await
}

/// `_TestCondition.test_notify_n`: `notify(2)` wakes two of four waiters, `notify(4)` the
/// other two (asking for more than wait is fine), `notify(3)` then wakes nobody.
async fn condition_notify_n() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(4, cond_waiter, (&c, &sleeping, &woken)).await?;
    // Taking the lock proves every waiter has released it inside `wait`.
    let g = c.lock_timeout(LONG).await?;
    ensure!(woken.get_value() == 0, "woken before any notify");
    g.notify(2);
    drop(g);
    ensure!(reaches(&woken, 2).await, "notify(2): {}", woken.get_value());
    let g = c.lock_timeout(LONG).await?;
    g.notify(4);
    drop(g);
    ensure!(reaches(&woken, 4).await, "notify(4): {}", woken.get_value());
    let g = c.lock_timeout(LONG).await?;
    g.notify(3);
    drop(g);
    ensure!(woken.get_value() == 4, "notify(3) with nobody waiting");
    for k in &mut kids {
        join_ok(k).await?;
    }
    Ok(())
}

async fn cond_timeout_waiter(c: Condition, sleeping: Semaphore, woken: Semaphore) {
    let g = c.lock().await.expect("lock");
    sleeping.release().expect("release");
    let (g, _) = g
        .wait_timeout(Duration::from_millis(100))
        .await
        .expect("wait");
    woken.release().expect("release");
    drop(g);
}

/// `_TestCondition.test_notify_all`: waiters that time out all come back; then `notify_all`
/// wakes every waiter at once.
async fn condition_notify_all() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(3, cond_timeout_waiter, (&c, &sleeping, &woken)).await?;
    for _ in 0..3 {
        woken.acquire_timeout(LONG).await?.forget();
    }
    ensure!(woken.get_value() == 0, "more woke than waited");
    kids.extend(start_waiting(4, cond_waiter, (&c, &sleeping, &woken)).await?);
    let g = c.lock_timeout(LONG).await?;
    ensure!(woken.get_value() == 0, "woken before notify_all");
    g.notify_all();
    drop(g);
    for _ in 0..4 {
        woken.acquire_timeout(LONG).await?.forget();
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    Ok(())
}

async fn notify_once(c: Condition) {
    let g = c.lock().await.expect("lock");
    g.notify(1);
}

/// `_TestCondition.test_wait_result`: `wait(0)` and `wait(0.1)` with nobody to notify give
/// false; a notification from a child gives true.
async fn condition_wait_result() -> TestResult {
    let c = Condition::new()?;
    let g = c.lock().await?;
    let (g, notified) = g.wait_timeout(Duration::ZERO).await?;
    ensure!(!notified, "wait(0)");
    let (g, notified) = g.wait_timeout(Duration::from_millis(100)).await?;
    ensure!(!notified, "wait(0.1)");
    let mut p = start(notify_once, (c.clone(),)).await?;
    let (g, notified) = g.wait_timeout(Duration::from_secs(60)).await?;
    ensure!(notified, "wait(60) after a notify");
    drop(g);
    join_ok(&mut p).await
}

/// No Python counterpart: a waiter killed while it waits takes no notification, so that
/// `notify(1)` wakes the live waiter behind it (Python's semaphore-based condition does too).
async fn a_notification_skips_a_killed_waiter() -> TestResult {
    notification_skips_killed_waiter(false).await
}

/// As above, when a later process has taken the killed waiter's pid: it is not taken for
/// the waiter.
async fn a_notification_skips_a_killed_waiter_whose_pid_was_taken() -> TestResult {
    notification_skips_killed_waiter(true).await
}

async fn notification_skips_killed_waiter(pid_taken: bool) -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    // One at a time, so that the one killed holds the older ticket.
    let mut first = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    let mut second = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    // Taking the lock proves both have released it inside `wait`.
    drop(c.lock_timeout(LONG).await?);
    first[0].kill()?;
    first[0].join().await?;
    let mut stranger = None;
    if pid_taken {
        match support::process_with_pid(first[0].pid()) {
            Ok(child) => stranger = Some(child),
            Err(why) => {
                let _ = second[0].kill();
                println!("skipped: {why}");
                return Ok(());
            }
        }
    }
    let g = c.lock_timeout(LONG).await?;
    g.notify(1);
    drop(g);
    drop(stranger);
    let lost = "notify(1) woke no one: it went to the killed waiter";
    woken_then_joined(&woken, &mut second[0], lost).await
}

/// How the older of two waiters misses the notification that `notify(1)` spent on it.
#[derive(Clone, Copy)]
enum Missed {
    /// Stopped (SIGSTOP) before the notify, so that it never wakes, then killed.
    KilledAsleep,
    /// Killed while it waits to take the lock back, which the notifier still holds.
    KilledRetaking,
}

/// No Python counterpart (Python's `notify` waits for each waiter it wakes, and would hang
/// on a killed one): `notify(1)` was spent on the older of two waiters, which was killed
/// before its wait returned, while it slept or while it took the lock back; the live
/// waiter behind it slept on, although a notification had been sent while it waited. It
/// now goes on to the live waiter.
async fn a_notification_spent_on_a_waiter_killed_asleep_goes_on() -> TestResult {
    notification_missed_by_a_waiter(Missed::KilledAsleep).await
}

/// As above, the older waiter killed while it takes the lock back.
async fn a_notification_spent_on_a_waiter_killed_retaking_the_lock_goes_on() -> TestResult {
    notification_missed_by_a_waiter(Missed::KilledRetaking).await
}

async fn notification_missed_by_a_waiter(how: Missed) -> TestResult {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    // One at a time, so that the one killed holds the older ticket.
    let mut first = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    let mut second = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    let first = &mut first[0];
    // Taking the lock proves both have released it inside `wait`.
    let g = c.lock_timeout(LONG).await?;
    let pid = Pid::from_raw(i32::try_from(first.pid())?);
    let code;
    match how {
        Missed::KilledAsleep => {
            kill(pid, Signal::SIGSTOP)?;
            g.notify(1);
            drop(g);
            first.kill()?;
            code = first.join().await?;
        }
        Missed::KilledRetaking => {
            g.notify(1);
            // It wakes and waits for the lock, or is killed before it wakes: both lose it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            first.kill()?;
            code = first.join().await?;
            drop(g);
        }
    }
    // Killed in its wait: it never got as far as saying it woke.
    ensure!(code == -9, "the older waiter ended with {code}");
    let lost = "the live waiter never got the notification the killed one lost";
    woken_then_joined(&woken, &mut second[0], lost).await
}

/// No Python counterpart (a thread's wait cannot be dropped): a wait in this process is
/// notified, then dropped before it takes the lock back; the notification goes on to the
/// waiter behind it, in a child, where it was lost.
async fn a_notification_spent_on_a_dropped_wait_goes_on() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let waiting = tokio::spawn({
        let (c, sleeping) = (c.clone(), sleeping.clone());
        async move {
            let g = c.lock().await?;
            sleeping.release()?;
            drop(g.wait().await?);
            Ok::<_, Error>(())
        }
    });
    sleeping.acquire_timeout(LONG).await?.forget();
    let mut kids = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    let g = c.lock_timeout(LONG).await?;
    g.notify(1);
    // The task is notified; it is dropped while it waits for the lock this holds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    waiting.abort();
    ensure!(
        waiting.await.is_err_and(|e| e.is_cancelled()),
        "the wait ended though the lock is held"
    );
    drop(g);
    let lost = "the waiter in the child never got the dropped wait's notification";
    woken_then_joined(&woken, &mut kids[0], lost).await
}

/// No Python counterpart (Python's notifier killed holding the lock leaves it deadlocked):
/// a notifier killed after it notified a waiter and before it woke it (here, a test hook
/// that stops there) left the waiter asleep until some later `notify`. The next wait on the
/// condition now wakes it.
async fn a_notify_killed_before_its_wake_up_leaves_it_to_the_next_wait() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    // Let it go to sleep in `wait` (where a notification needs its wake-up).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g = c.lock_timeout(LONG).await?;
    g.__notify_unwoken(1);
    drop(g);
    let (g, _) = c
        .lock_timeout(LONG)
        .await?
        .wait_timeout(Duration::from_millis(50))
        .await?;
    drop(g);
    let lost = "the notified waiter slept on";
    woken_then_joined(&woken, &mut kids[0], lost).await
}

/// Says it waits, then waits and says it woke, for ever.
async fn cond_waiter_loop(c: Condition, sleeping: Semaphore, woken: Semaphore) {
    let mut g = lock_past_the_dead(&c).await.expect("lock");
    sleeping.release().expect("release");
    loop {
        g = match g.wait().await {
            Ok(g) => {
                woken.release().expect("release");
                g
            }
            // A waiter killed holding the lock it took back: the lock is free again.
            Err(Error::LockOwnerDied { .. }) => lock_past_the_dead(&c).await.expect("lock"),
            Err(e) => panic!("wait: {e}"),
        };
    }
}

/// Takes the condition's lock, past the deaths of holders (each of which is told once).
async fn lock_past_the_dead(c: &Condition) -> Result<ConditionGuard<'_>, Error> {
    loop {
        match c.lock_timeout(LONG).await {
            Err(Error::LockOwnerDied { .. }) => {}
            r => return r,
        }
    }
}

/// No Python counterpart: four processes wait on a condition in a loop; each of 60 rounds
/// sends `notify(1)`, and every other round kills a waiter (in turn, so at times the one
/// notified) while the notifier holds the lock or just after it let go, and starts another
/// in its place. Each round's notification wakes a live waiter.
async fn notifications_reach_live_waiters_through_a_kill_storm() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(4, cond_waiter_loop, (&c, &sleeping, &woken)).await?;
    let r = kill_storm(&c, &sleeping, &woken, &mut kids).await;
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.join().await;
    }
    r
}

async fn kill_storm(
    c: &Condition,
    sleeping: &Semaphore,
    woken: &Semaphore,
    kids: &mut [Process],
) -> TestResult {
    for round in 0..60usize {
        let g = lock_past_the_dead(c).await?;
        g.notify(1);
        if round % 2 == 0 {
            let k = &mut kids[(round / 2) % 4];
            if round % 4 == 0 {
                drop(g);
                k.kill()?;
            } else {
                k.kill()?;
                drop(g);
            }
            k.join().await?;
            *k = start_waiting(1, cond_waiter_loop, (c, sleeping, woken))
                .await?
                .remove(0);
        } else {
            drop(g);
        }
        woken
            .acquire_timeout(LONG)
            .await
            .map_err(|e| format!("round {round}: nobody woke ({e})"))?
            .forget();
    }
    Ok(())
}

/// No Python counterpart: waits that time out or are dropped with nobody to notify leave
/// the condition as they found it, however many: 9,000 of them (past the condition's 8192
/// slots of waiters) behind a waiter in a child, which `notify(1)` then wakes.
async fn waits_that_leave_do_not_fill_the_condition() -> TestResult {
    let c = Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let mut kids = start_waiting(1, cond_waiter, (&c, &sleeping, &woken)).await?;
    let r = leave_9000_times_then_notify(&c, &woken).await;
    if r.is_err() {
        // Not left waiting for ever, which would hold this program at its exit.
        let _ = kids[0].kill();
        return r;
    }
    join_ok(&mut kids[0]).await
}

async fn leave_9000_times_then_notify(c: &Condition, woken: &Semaphore) -> TestResult {
    let mut g = c.lock_timeout(LONG).await?;
    for i in 0..9_000u32 {
        if i % 4 == 0 {
            // A wait dropped while it waits gives the lock up with its ticket.
            let dropped = tokio::time::timeout(Duration::ZERO, g.wait()).await;
            ensure!(dropped.is_err(), "wait {i} ended with nobody to notify");
            g = c.lock_timeout(LONG).await?;
            continue;
        }
        let (back, notified) = g
            .wait_timeout(Duration::ZERO)
            .await
            .map_err(|e| format!("wait {i}: {e}"))?;
        ensure!(!notified, "wait {i} notified by nobody");
        g = back;
    }
    ensure!(woken.get_value() == 0, "the child was woken by nobody");
    g.notify(1);
    drop(g);
    woken
        .acquire_timeout(LONG)
        .await
        .map(|g| g.forget())
        .map_err(|e| format!("notify(1) woke no one: {e}").into())
}

/// No Python counterpart (a thread's wait cannot be dropped): a wait over an `RLock` its
/// task took twice releases both levels; dropped, it leaves the lock released for good, and
/// the guard of the outer level holds nothing. Its drop leaves alone the hold that another
/// task of this process took since (it released that hold).
async fn a_dropped_wait_leaves_an_outer_rlock_guard_holding_nothing() -> TestResult {
    let rl = RLock::new()?;
    let c = Condition::with_rlock(rl.clone())?;
    let outer = rl.lock().await?;
    let g = c.lock().await?;
    let dropped = tokio::time::timeout(Duration::from_millis(20), g.wait()).await;
    ensure!(dropped.is_err(), "a wait that nothing notified returned");
    let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let other = {
        let rl = rl.clone();
        tokio::spawn(async move {
            let held = rl.lock_timeout(LONG).await?;
            let _ = taken_tx.send(());
            let _ = done_rx.await;
            drop(held);
            Ok::<_, Error>(())
        })
    };
    taken_rx.await?;
    drop(outer);
    ensure!(
        rl.holder().is_some(),
        "the outer guard's drop released the hold another task took"
    );
    let _ = done_tx.send(());
    other.await??;
    ensure!(
        rl.holder().is_none(),
        "the other task's hold was not released"
    );
    // The lock serves on: a guard of a hold taken now releases it.
    drop(c.lock_timeout(LONG).await?);
    ensure!(
        rl.holder().is_none(),
        "a new hold was not released by its guard"
    );
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        condition_notify,
        condition_late_waiter_cannot_steal,
        condition_timeout,
        condition_wait_for,
        condition_notify_n,
        condition_notify_all,
        condition_wait_result,
        a_notification_skips_a_killed_waiter,
        a_notification_skips_a_killed_waiter_whose_pid_was_taken,
        waits_that_leave_do_not_fill_the_condition,
        a_notification_spent_on_a_waiter_killed_asleep_goes_on,
        a_notification_spent_on_a_waiter_killed_retaking_the_lock_goes_on,
        a_notification_spent_on_a_dropped_wait_goes_on,
        notifications_reach_live_waiters_through_a_kill_storm,
        a_notify_killed_before_its_wake_up_leaves_it_to_the_next_wait,
        a_dropped_wait_leaves_an_outer_rlock_guard_holding_nothing
    ];
    libtest_mimic::run(&args, trials).exit()
}
