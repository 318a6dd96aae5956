//! The shared types a `Manager` serves beyond dict, list and value: namespaces, queues,
//! locks, semaphores, events, conditions, barriers and arrays, with the method names and
//! errors of the crate's own primitives, across real processes. Cases from CPython's
//! `_test_multiprocessing.py` name the Python test they come from.

#[macro_use]
mod support;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::{TestResult, join_ok};
use tokio_multiprocessing::{
    self as mp, ArrayProxy, BarrierProxy, ConditionProxy, Error, EventProxy, JoinableQueueProxy,
    LockProxy, Managed, Manager, NamespaceProxy, Process, Proxy, QueueProxy, ValueProxy,
};

fn main() {
    mp::init();
    let mut trials = trials![
        namespace_attributes_and_repr,
        a_timeout_too_long_to_represent_is_none,
        queue_between_processes,
        queue_timeouts_give_empty_and_full,
        a_waiting_get_holds_up_nothing_else,
        joinable_queue_join_waits_for_task_done,
        lock_excludes_and_reports_release_of_a_free_lock,
        a_lock_whose_holder_dies_is_reported_then_free,
        a_dead_holders_news_told_to_a_dropped_lock_goes_to_the_next,
        a_condition_wait_that_retakes_a_dead_holders_lock_says_so,
        rlock_is_reentrant_and_owned_by_its_task,
        semaphores_count_and_bounded_ones_refuse_over_release,
        event_wakes_a_waiting_child,
        condition_wait_and_notify,
        condition_wait_for_waits_until_its_predicate_holds,
        condition_over_a_given_lock_shares_it,
        barrier_lets_parties_through_together,
        barrier_timeout_breaks_it,
        array_has_a_fixed_length,
        get_by_name_checks_the_proxy_type,
        user_types_run_in_the_server,
        calls_queued_behind_a_hung_call_hold_up_no_other_object,
        a_type_whose_default_panics_fails_that_call_only,
        a_value_whose_drop_panics_leaves_its_connection_serving,
        a_value_whose_drop_is_slow_holds_up_no_call,
        withdrawn_calls_give_back_what_they_took,
        a_withdrawn_condition_wait_leaves_the_lock_released,
        a_barrier_party_that_leaves_breaks_the_barrier,
        queues_work_when_descriptors_are_few,
        a_queue_outlives_consumers_killed_while_they_take,
    ];
    trials.push(support::test_current_thread(
        "a_lock_taken_again_after_a_withdrawn_condition_wait_is_held",
        a_lock_taken_again_after_a_withdrawn_condition_wait_is_held,
    ));
    trials.push(support::test_current_thread(
        "a_loop_of_queue_calls_that_need_no_wait_lets_other_tasks_run",
        a_loop_of_queue_calls_that_need_no_wait_lets_other_tasks_run,
    ));
    support::run(trials)
}

async fn namespace_attributes_and_repr() -> TestResult {
    // _TestNamespace.test_namespace
    let m = Manager::start().await?;
    let ns = m.namespace().await?;
    ns.set("a", 1).await?;
    ns.set("b", "x").await?;
    ns.set("c", vec![true, false]).await?;
    ensure!(ns.get::<i32>("a").await? == 1, "a");
    ensure!(ns.get::<String>("b").await? == "x", "b");
    let repr = ns.repr().await?;
    ensure!(
        repr == "Namespace(a=1, b='x', c=[True, False])",
        "repr: {repr}"
    );
    ns.remove("c").await?;
    match ns.get::<i32>("c").await {
        Err(Error::Manager(m)) => ensure!(m.contains("no attribute 'c'"), "{m}"),
        other => return Err(format!("a removed attribute gave {other:?}").into()),
    }
    ensure!(ns.names().await? == ["a", "b"], "names");
    Ok(())
}

async fn produce(q: QueueProxy<u32>, n: u32) -> mp::Result<()> {
    for i in 0..n {
        q.put(i).await?;
    }
    Ok(())
}

async fn queue_between_processes() -> TestResult {
    // _TestQueue.test_get via a manager
    let m = Manager::start().await?;
    let q = m.queue::<u32>().await?;
    let mut p = Process::new(produce, (q.clone(), 100)).start().await?;
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(q.get_timeout(Duration::from_secs(20)).await?);
    }
    join_ok(&mut p).await?;
    ensure!(got == (0..100).collect::<Vec<_>>(), "order: {got:?}");
    ensure!(q.empty().await?, "empty after draining");
    Ok(())
}

async fn queue_timeouts_give_empty_and_full() -> TestResult {
    // _TestQueue.test_put / test_get: Full and Empty
    let m = Manager::start().await?;
    let q = m.queue_with_maxsize::<String>(2).await?;
    ensure!(
        matches!(q.get_nowait().await, Err(Error::Empty)),
        "get_nowait"
    );
    ensure!(
        matches!(
            q.get_timeout(Duration::from_millis(50)).await,
            Err(Error::Empty)
        ),
        "get_timeout"
    );
    q.put("a".into()).await?;
    q.put_nowait("b".into()).await?;
    ensure!(q.full().await? && q.qsize().await? == 2, "full, qsize 2");
    match q.put_nowait("c".into()).await {
        Err(e) => {
            let (err, item) = e.into_parts();
            ensure!(matches!(err, Error::Full) && item == "c", "{err:?} {item}");
        }
        Ok(()) => return Err("put_nowait on a full queue succeeded".into()),
    }
    let r = q.put_timeout("d".into(), Duration::from_millis(50)).await;
    ensure!(
        r.as_ref().is_err_and(|e| matches!(e.error(), Error::Full)),
        "put_timeout: {r:?}"
    );
    ensure!(q.get().await? == "a", "first in, first out");
    Ok(())
}

async fn a_waiting_get_holds_up_nothing_else() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<u8>().await?;
    let d = m.dict::<u8, u8>().await?;
    let getter = {
        let q = q.clone();
        tokio::spawn(async move { q.get().await })
    };
    // Requests on the same connection, and on the same queue, are answered meanwhile.
    for i in 0..20 {
        d.insert(i, i).await?;
    }
    ensure!(
        d.len().await? == 20,
        "dict calls answered while a get waits"
    );
    ensure!(!getter.is_finished(), "get returned on an empty queue");
    q.put(7).await?;
    ensure!(getter.await?? == 7, "the waiting get took the item");
    // A dropped get is withdrawn: it takes no item.
    let dropped = tokio::time::timeout(Duration::from_millis(50), q.get()).await;
    ensure!(dropped.is_err(), "get on an empty queue returned");
    q.put(8).await?;
    ensure!(
        q.get().await? == 8,
        "the withdrawn get did not take the item"
    );
    Ok(())
}

async fn consume(q: JoinableQueueProxy<u32>, n: u32) -> mp::Result<()> {
    for _ in 0..n {
        q.get().await?;
        q.task_done().await?;
    }
    Ok(())
}

async fn joinable_queue_join_waits_for_task_done() -> TestResult {
    // _TestQueue.test_task_done
    let m = Manager::start().await?;
    let q = m.joinable_queue::<u32>(0).await?;
    for i in 0..10 {
        q.put(i).await?;
    }
    ensure!(q.unfinished().await? == 10, "unfinished");
    let mut p = Process::new(consume, (q.clone(), 10)).start().await?;
    tokio::time::timeout(Duration::from_secs(20), q.join()).await??;
    ensure!(q.unfinished().await? == 0, "all done after join");
    join_ok(&mut p).await?;
    ensure!(
        matches!(q.task_done().await, Err(Error::TaskDoneTooManyTimes)),
        "one task_done too many"
    );
    Ok(())
}

async fn lock_excludes_and_reports_release_of_a_free_lock() -> TestResult {
    // _TestLock.test_lock
    let m = Manager::start().await?;
    let l = m.lock().await?;
    ensure!(l.try_lock().await?, "a free lock is taken");
    ensure!(!l.try_lock().await?, "a held lock is not taken again");
    ensure!(
        matches!(
            l.lock_timeout(Duration::from_millis(50)).await,
            Err(Error::Timeout)
        ),
        "lock_timeout on a held lock"
    );
    ensure!(l.holder().await? == Some(std::process::id()), "holder");
    l.release().await?;
    ensure!(
        matches!(l.release().await, Err(Error::NotHeld)),
        "release of a free lock"
    );
    Ok(())
}

async fn hold_until_killed(l: LockProxy, held: EventProxy) -> mp::Result<()> {
    l.lock().await?;
    held.set().await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// Starts a child that takes `l`, sets `held` and waits to be killed; returns once it holds
/// the lock.
async fn start_holder(l: &LockProxy, held: &EventProxy) -> Result<Process, String> {
    let p = Process::new(hold_until_killed, (l.clone(), held.clone()))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    match held.wait_timeout(Duration::from_secs(20)).await {
        Ok(true) => Ok(p),
        r => Err(format!("the child never took the lock: {r:?}")),
    }
}

async fn a_lock_whose_holder_dies_is_reported_then_free() -> TestResult {
    let m = Manager::start().await?;
    let l = m.lock().await?;
    let held = m.event().await?;
    let mut p = start_holder(&l, &held).await?;
    let waiter = {
        let l = l.clone();
        tokio::spawn(async move { l.lock_timeout(Duration::from_secs(20)).await })
    };
    p.kill()?;
    p.join().await?;
    match waiter.await? {
        Err(Error::LockOwnerDied { pid }) => ensure!(pid == p.pid(), "pid {pid}"),
        other => return Err(format!("the waiter got {other:?}").into()),
    }
    l.lock_timeout(Duration::from_secs(5)).await?;
    l.release().await?;
    Ok(())
}

async fn a_dead_holders_news_told_to_a_dropped_lock_goes_to_the_next() -> TestResult {
    // A `lock()` waiting while its holder dies, dropped as the server tells it of the death:
    // the news, sent to a call that is gone, goes back to the lock, and the next `lock()`
    // hears it. (It was lost: the next `lock()` took the lock as if nothing had happened.)
    // Each round drops the call at another moment of the death: before the child is reaped,
    // after, and once the server has seen it.
    let m = Manager::start().await?;
    let l = m.lock().await?;
    let held = m.event().await?;
    for round in 0..9 {
        held.clear().await?;
        let mut p = start_holder(&l, &held).await?;
        let mut waiting = Box::pin(l.lock());
        ensure!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "round {round}: lock() did not wait for the holder"
        );
        p.kill()?;
        if round % 3 > 0 {
            p.join().await?;
        }
        if round % 3 == 2 {
            while l.holder().await?.is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(waiting);
        match l.lock_timeout(Duration::from_secs(20)).await {
            Err(Error::LockOwnerDied { pid }) => {
                ensure!(pid == p.pid(), "round {round}: pid {pid}, not {}", p.pid());
            }
            other => return Err(format!("round {round}: the next lock got {other:?}").into()),
        }
        p.join().await?;
        l.lock_timeout(Duration::from_secs(5)).await?;
        l.release().await?;
    }
    Ok(())
}

async fn notify_and_hold_until_killed(c: ConditionProxy, held: EventProxy) -> mp::Result<()> {
    c.lock().await?;
    c.notify(1).await?;
    held.set().await?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn a_condition_wait_that_retakes_a_dead_holders_lock_says_so() -> TestResult {
    // A waiter notified by a process that dies holding the condition's lock: its wait,
    // taking the lock back, gets `LockOwnerDied` (the lock is then free and not held by
    // it), as the crate's `Condition` and every other acquirer of a dead holder's lock do.
    // (The wait took the lock and answered as if nothing had happened.)
    let m = Manager::start().await?;
    let c = m.condition().await?;
    let held = m.event().await?;
    let (locked, is_locked) = tokio::sync::oneshot::channel();
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            c.lock().await?;
            let _ = locked.send(());
            let r = c.wait_timeout(Duration::from_secs(30)).await;
            if r.is_ok() {
                c.release().await?;
            }
            r
        })
    };
    is_locked.await?;
    let mut p = Process::new(notify_and_hold_until_killed, (c.clone(), held.clone()))
        .start()
        .await?;
    ensure!(
        held.wait_timeout(Duration::from_secs(20)).await?,
        "the child never notified"
    );
    p.kill()?;
    p.join().await?;
    match waiter.await? {
        Err(Error::LockOwnerDied { pid }) => ensure!(pid == p.pid(), "pid {pid}"),
        other => return Err(format!("the wait gave {other:?}").into()),
    }
    ensure!(c.try_lock().await?, "the lock is not free");
    c.release().await?;
    Ok(())
}

async fn rlock_is_reentrant_and_owned_by_its_task() -> TestResult {
    // _TestLock.test_rlock
    let m = Manager::start().await?;
    let r = m.rlock().await?;
    r.lock().await?;
    r.lock().await?;
    ensure!(r.try_lock().await?, "the owner takes it again");
    let other = {
        let r = r.clone();
        tokio::spawn(async move { (r.try_lock().await, r.release().await) })
    };
    let (taken, released) = other.await?;
    ensure!(!taken?, "another task took a held RLock");
    ensure!(matches!(released, Err(Error::NotOwner)), "{released:?}");
    for _ in 0..3 {
        r.release().await?;
    }
    ensure!(r.holder().await?.is_none(), "free after three releases");
    ensure!(
        matches!(r.release().await, Err(Error::NotOwner)),
        "release of a free RLock"
    );
    Ok(())
}

async fn semaphores_count_and_bounded_ones_refuse_over_release() -> TestResult {
    // _TestSemaphore.test_semaphore, test_bounded_semaphore
    let m = Manager::start().await?;
    let s = m.semaphore(2).await?;
    s.acquire().await?;
    ensure!(s.try_acquire().await?, "second unit");
    ensure!(!s.try_acquire().await?, "no third unit");
    ensure!(
        matches!(
            s.acquire_timeout(Duration::from_millis(50)).await,
            Err(Error::Timeout)
        ),
        "acquire_timeout"
    );
    s.release_n(3).await?;
    ensure!(
        s.get_value().await? == 3,
        "an unbounded semaphore goes above its start"
    );
    // Past `u32::MAX`: an error, as the crate's own `Semaphore` gives, and nothing changes.
    let over = s.release_n(u32::MAX).await;
    ensure!(
        matches!(over, Err(Error::SemaphoreOverRelease { .. })) && s.get_value().await? == 3,
        "a release past u32::MAX: {over:?}"
    );
    // Python's `release(0)` is a `ValueError`, as the crate's own `Semaphore` says.
    let none = s.release_n(0).await;
    ensure!(
        matches!(none, Err(Error::InvalidArgument(_))) && s.get_value().await? == 3,
        "a release of 0: {none:?}"
    );
    let b = m.bounded_semaphore(1).await?;
    b.acquire().await?;
    b.release().await?;
    ensure!(
        matches!(
            b.release().await,
            Err(Error::SemaphoreOverRelease { bound: 1 })
        ),
        "over-release"
    );
    Ok(())
}

async fn wait_then_record(e: EventProxy, d: mp::DictProxy<String, u32>) -> mp::Result<()> {
    e.wait().await?;
    d.insert("woke".into(), std::process::id()).await?;
    Ok(())
}

// `Duration::MAX` (any time too long to represent) as a proxy's timeout means none: the
// server waits until the call can be answered.
async fn a_timeout_too_long_to_represent_is_none() -> TestResult {
    let m = mp::Manager::start().await?;
    let e = m.event().await?;
    let waiter = {
        let e = e.clone();
        tokio::spawn(async move { e.wait_timeout(Duration::MAX).await })
    };
    let l = m.lock().await?;
    l.lock().await?;
    let locker = {
        let l = l.clone();
        tokio::spawn(async move { l.lock_timeout(Duration::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    e.set().await?;
    l.release().await?;
    let woke = tokio::time::timeout(Duration::from_secs(20), waiter).await??;
    ensure!(
        matches!(woke, Ok(true)),
        "wait_timeout(MAX) after set: {woke:?}"
    );
    let locked = tokio::time::timeout(Duration::from_secs(20), locker).await??;
    ensure!(
        locked.is_ok(),
        "lock_timeout(MAX) after release: {locked:?}"
    );
    ensure!(m.dict::<u32, u32>().await.is_ok(), "the server serves on");
    Ok(())
}

async fn event_wakes_a_waiting_child() -> TestResult {
    // _TestEvent.test_event
    let m = Manager::start().await?;
    let e = m.event().await?;
    let d = m.dict::<String, u32>().await?;
    ensure!(!e.is_set().await?, "a new event is clear");
    ensure!(
        !e.wait_timeout(Duration::from_millis(50)).await?,
        "wait_timeout on a clear event"
    );
    let mut p = Process::new(wait_then_record, (e.clone(), d.clone()))
        .start()
        .await?;
    e.set().await?;
    join_ok(&mut p).await?;
    ensure!(
        d.get(&"woke".into()).await? == Some(p.pid()),
        "the child woke"
    );
    ensure!(e.wait_timeout(Duration::from_millis(1)).await?, "set");
    e.clear().await?;
    ensure!(!e.is_set().await?, "clear");
    Ok(())
}

async fn notify_when_ready(c: ConditionProxy, ns: NamespaceProxy) -> mp::Result<()> {
    c.lock().await?;
    ns.set("ready", true).await?;
    c.notify_all().await?;
    c.release().await
}

/// Takes the lock through its own proxy (free once the parent's condition wait released
/// it), says so, and notifies the waiter through the condition.
async fn notify_through_the_lock(
    l: LockProxy,
    c: ConditionProxy,
    ns: NamespaceProxy,
) -> mp::Result<()> {
    l.lock().await?;
    ns.set("done", true).await?;
    c.notify(1).await?;
    l.release().await
}

async fn condition_over_a_given_lock_shares_it() -> TestResult {
    // Python's `manager.Condition(lock)`: the condition and the lock's proxy share one lock
    // in the server, across processes.
    let m = Manager::start().await?;
    let l = m.lock().await?;
    let c = m.condition_with(&l).await?;
    let ns = m.namespace().await?;
    ns.set("done", false).await?;
    l.lock().await?;
    ensure!(
        !c.try_lock().await?,
        "the condition's lock was free while the lock was held"
    );
    // Held through the lock, it is held for the condition (over a lock of its own, the
    // condition would answer NotHeld).
    c.notify(1).await?;
    let mut p = Process::new(notify_through_the_lock, (l.clone(), c.clone(), ns.clone()))
        .start()
        .await?;
    // The wait releases the lock the child waits for, and takes it back.
    let notified = c.wait_timeout(Duration::from_secs(20)).await?;
    ensure!(
        notified && ns.get::<bool>("done").await?,
        "not notified by the child that took the lock"
    );
    ensure!(!l.try_lock().await?, "the wait did not take the lock back");
    ensure!(l.holder().await? == Some(std::process::id()), "holder");
    join_ok(&mut p).await?;
    c.release().await?;
    ensure!(
        l.try_lock().await?,
        "released through the condition, still held"
    );
    l.release().await?;
    // The condition keeps the lock it shares.
    drop(l);
    c.lock().await?;
    c.release().await?;

    // Over a re-entrant lock: levels taken through either proxy, all released by a wait
    // and taken back.
    let r = m.rlock().await?;
    let rc = m.condition_with(&r).await?;
    r.lock().await?;
    rc.lock().await?;
    ensure!(
        !rc.wait_timeout(Duration::from_millis(10)).await?,
        "nobody notifies: the wait times out"
    );
    let other_task = {
        let r = r.clone();
        tokio::spawn(async move { r.try_lock().await })
    };
    ensure!(
        !other_task.await??,
        "another task took the held re-entrant lock"
    );
    r.release().await?;
    rc.release().await?;
    ensure!(
        matches!(r.release().await, Err(Error::NotOwner)),
        "two levels were taken, and released twice"
    );

    // Python's proxy of another manager: not an object of this one.
    let other = Manager::start().await?;
    let foreign = other.lock().await?;
    ensure!(
        matches!(m.condition_with(&foreign).await, Err(Error::Manager(_))),
        "a condition over another manager's lock"
    );
    Ok(())
}

/// `c.wait_for(lambda: state.value == want, timeout)`.
async fn state_reaches(
    c: &ConditionProxy,
    state: &ValueProxy<i32>,
    want: i32,
    timeout: Option<Duration>,
) -> mp::Result<bool> {
    c.wait_for(|| async move { Ok(state.get().await? == want) }, timeout)
        .await
}

/// `_TestCondition._test_waitfor_f`: sets the state to 0 and notifies, then waits, without
/// a timeout, for the parent to count it up to 4.
async fn wait_for_four(c: ConditionProxy, state: ValueProxy<i32>) -> mp::Result<()> {
    c.lock().await?;
    state.set(0).await?;
    c.notify(1).await?;
    let reached = state_reaches(&c, &state, 4, None).await?;
    let value = state.get().await?;
    c.release().await?;
    match reached && value == 4 {
        true => Ok(()),
        false => Err(Error::Manager(format!(
            "wait_for gave {reached} at {value}"
        ))),
    }
}

/// `_TestCondition._test_waitfor_timeout_f`: waits at most 100 ms for a state of 4 that
/// never comes; records whether the wait gave up saying so.
async fn wait_for_four_in_time(
    c: ConditionProxy,
    state: ValueProxy<i32>,
    gave_up: ValueProxy<bool>,
    started: EventProxy,
) -> mp::Result<()> {
    started.set().await?;
    c.lock().await?;
    let reached = state_reaches(&c, &state, 4, Some(Duration::from_millis(100))).await?;
    // The lock is held again: a notify from here is allowed.
    c.notify(1).await?;
    c.release().await?;
    gave_up.set(!reached).await
}

/// Adds 1 to `state` `n` times, each under `c`'s lock and followed by a notify, a moment
/// apart (Python's test counts so).
async fn count_up(c: &ConditionProxy, state: &ValueProxy<i32>, n: u32) -> mp::Result<()> {
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(10)).await;
        c.lock().await?;
        state.set(state.get().await? + 1).await?;
        c.notify(1).await?;
        c.release().await?;
    }
    Ok(())
}

async fn condition_wait_for_waits_until_its_predicate_holds() -> TestResult {
    // _TestCondition.test_waitfor, with a manager's Condition (Python's `wait_for` of its
    // ConditionProxy), which this proxy lacked.
    let m = Manager::start().await?;
    let c = m.condition().await?;
    let state = &m.value(-1i32).await?;
    let mut p = Process::new(wait_for_four, (c.clone(), state.clone()))
        .start()
        .await?;
    c.lock().await?;
    let at_zero = state_reaches(&c, state, 0, Some(Duration::from_secs(20))).await?;
    ensure!(at_zero && state.get().await? == 0, "the child never set 0");
    c.release().await?;
    count_up(&c, state, 4).await?;
    join_ok(&mut p).await?;
    // Python's RuntimeError: cannot wait on un-acquired lock.
    let unheld = c
        .wait_for(|| async { Ok(false) }, Some(Duration::from_secs(20)))
        .await;
    ensure!(
        matches!(unheld, Err(Error::NotHeld)),
        "wait_for without the lock: {unheld:?}"
    );

    // _TestCondition.test_waitfor_timeout: the state reaches 3, never 4.
    let state = &m.value(0i32).await?;
    let gave_up = m.value(false).await?;
    let started = m.event().await?;
    let mut p = Process::new(
        wait_for_four_in_time,
        (c.clone(), state.clone(), gave_up.clone(), started.clone()),
    )
    .start()
    .await?;
    ensure!(
        started.wait_timeout(Duration::from_secs(20)).await?,
        "the child never started"
    );
    count_up(&c, state, 3).await?;
    join_ok(&mut p).await?;
    ensure!(gave_up.get().await?, "the wait for 4 did not give up");
    Ok(())
}

async fn condition_wait_and_notify() -> TestResult {
    // _TestCondition.test_notify
    let m = Manager::start().await?;
    let c = m.condition().await?;
    let ns = m.namespace().await?;
    ns.set("ready", false).await?;
    ensure!(
        matches!(
            c.wait_timeout(Duration::from_millis(10)).await,
            Err(Error::NotHeld)
        ),
        "wait without the lock"
    );
    // Python's RuntimeError: cannot notify on un-acquired lock.
    ensure!(
        matches!(c.notify(1).await, Err(Error::NotHeld)),
        "notify without the lock"
    );
    ensure!(
        matches!(c.notify_all().await, Err(Error::NotHeld)),
        "notify_all without the lock"
    );
    c.lock().await?;
    ensure!(
        c.notify(1).await.is_ok(),
        "notify with the lock, nobody waiting"
    );
    let other_task = {
        let c = c.clone();
        tokio::spawn(async move { c.notify_all().await })
    };
    ensure!(
        matches!(other_task.await?, Err(Error::NotHeld)),
        "notify_all from a task that does not hold the lock"
    );
    let mut p = Process::new(notify_when_ready, (c.clone(), ns.clone()))
        .start()
        .await?;
    let mut rounds = 0;
    while !ns.get::<bool>("ready").await? {
        rounds += 1;
        ensure!(rounds < 100, "never notified");
        c.wait_timeout(Duration::from_secs(5)).await?;
    }
    // The lock is held again after a wait: the child, done, cannot have it.
    join_ok(&mut p).await?;
    c.release().await?;
    ensure!(
        matches!(
            c.wait_timeout(Duration::from_millis(1)).await,
            Err(Error::NotHeld)
        ),
        "a wait without the lock fails"
    );
    c.lock().await?;
    ensure!(
        !c.wait_timeout(Duration::from_millis(20)).await?,
        "nobody notifies: the wait times out"
    );
    c.release().await?;
    Ok(())
}

async fn arrive(b: BarrierProxy, d: mp::DictProxy<u32, u32>) -> mp::Result<()> {
    let index = b.wait().await?;
    d.insert(index, std::process::id()).await?;
    Ok(())
}

async fn barrier_lets_parties_through_together() -> TestResult {
    // _TestBarrier.test_barrier
    let m = Manager::start().await?;
    let b = m.barrier(3).await?;
    let d = m.dict::<u32, u32>().await?;
    ensure!(b.parties().await? == 3, "parties");
    let mut kids = Vec::new();
    for _ in 0..2 {
        kids.push(Process::new(arrive, (b.clone(), d.clone())).start().await?);
    }
    let mine = b.wait().await?;
    for p in &mut kids {
        join_ok(p).await?;
    }
    let mut indices = d.keys().await?;
    indices.push(mine);
    indices.sort();
    ensure!(indices == [0, 1, 2], "arrival indices {indices:?}");
    ensure!(b.n_waiting().await? == 0 && !b.broken().await?, "reusable");
    Ok(())
}

async fn barrier_timeout_breaks_it() -> TestResult {
    // _TestBarrier.test_timeout, test_abort, test_reset
    let m = Manager::start().await?;
    let b = m.barrier(2).await?;
    ensure!(
        matches!(
            b.wait_timeout(Duration::from_millis(30)).await,
            Err(Error::BrokenBarrier)
        ),
        "a lone wait times out"
    );
    ensure!(b.broken().await?, "broken after a timeout");
    ensure!(
        matches!(b.wait().await, Err(Error::BrokenBarrier)),
        "stays broken"
    );
    b.reset().await?;
    ensure!(!b.broken().await?, "reset");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.wait().await })
    };
    while b.n_waiting().await? == 0 {
        tokio::task::yield_now().await;
    }
    b.abort().await?;
    ensure!(
        matches!(waiter.await?, Err(Error::BrokenBarrier)),
        "abort breaks a waiter"
    );
    Ok(())
}

async fn array_has_a_fixed_length() -> TestResult {
    // _TestContainers via manager.Array
    let m = Manager::start().await?;
    let a: ArrayProxy<i32> = m.array(0..4).await?;
    a.set(3, 30).await?;
    ensure!(a.get(3).await? == 30 && a.len().await? == 4, "get/len");
    ensure!(
        matches!(
            a.get(4).await,
            Err(Error::IndexOutOfRange { index: 4, len: 4 })
        ),
        "get past the end"
    );
    ensure!(
        matches!(
            a.set(9, 1).await,
            Err(Error::IndexOutOfRange { index: 9, len: 4 })
        ),
        "set past the end"
    );
    ensure!(a.to_vec().await? == [0, 1, 2, 30], "to_vec");
    Ok(())
}

async fn get_by_name_checks_the_proxy_type() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<String>().await?;
    m.register("jobs", &q).await?;
    let same: QueueProxy<String> = m.get("jobs").await?;
    same.put("x".into()).await.map_err(|e| e.into_parts().0)?;
    ensure!(q.get().await? == "x", "the named queue is the queue");
    match m.get::<QueueProxy<u64>>("jobs").await {
        Err(Error::Manager(msg)) => ensure!(
            msg.contains("QueueProxy<alloc::string::String>") && msg.contains("QueueProxy<u64>"),
            "message: {msg}"
        ),
        other => return Err(format!("a wrong type gave {other:?}").into()),
    }
    match m.get::<LockProxy>("nothing").await {
        Err(Error::Manager(msg)) => ensure!(msg.contains("no object named"), "{msg}"),
        other => return Err(format!("an unknown name gave {other:?}").into()),
    }
    let other = m.queue::<String>().await?;
    ensure!(
        matches!(m.register("jobs", &other).await, Err(Error::Manager(_))),
        "a taken name"
    );
    Ok(())
}

/// A user type, as CPython's docs register `Maths`.
#[derive(Default)]
struct Counter {
    count: u64,
}

#[derive(Serialize, Deserialize)]
enum CounterOp {
    Add(u64),
    Get,
    Panic,
    /// Returns once a file exists at this path.
    WaitFor(String),
}

impl Managed for Counter {
    type Request = CounterOp;
    type Reply = u64;
    fn call(&mut self, op: CounterOp) -> u64 {
        match op {
            CounterOp::Add(n) => {
                // Read, pause, write: calls that overlapped would lose additions.
                let before = self.count;
                std::thread::yield_now();
                self.count = before + n;
                self.count
            }
            CounterOp::Get => self.count,
            CounterOp::Panic => panic!("asked to panic"),
            CounterOp::WaitFor(path) => {
                while !std::path::Path::new(&path).exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.count
            }
        }
    }
}

async fn add_many(c: Proxy<Counter>, n: u64) -> mp::Result<()> {
    for _ in 0..n {
        c.call(CounterOp::Add(1)).await?;
    }
    Ok(())
}

async fn user_types_run_in_the_server() -> TestResult {
    // _TestMyManager: a registered type served from a process, and from this one.
    for in_process in [false, true] {
        let b = Manager::builder().register::<Counter>();
        let m = match in_process {
            true => b.serve().await?,
            false => b.start().await?,
        };
        let c = m.managed::<Counter>().await?;
        let mut kids = Vec::new();
        for _ in 0..3 {
            kids.push(Process::new(add_many, (c.clone(), 100)).start().await?);
        }
        add_many(c.clone(), 100).await?;
        for p in &mut kids {
            join_ok(p).await?;
        }
        ensure!(
            c.call(CounterOp::Get).await? == 400,
            "calls were not serialised"
        );
        match c.call(CounterOp::Panic).await {
            Err(Error::Manager(msg)) => ensure!(msg.contains("asked to panic"), "{msg}"),
            other => return Err(format!("a panicking call gave {other:?}").into()),
        }
        ensure!(
            c.call(CounterOp::Add(1)).await? == 401,
            "the server serves on after a panic"
        );
        m.register("counter", &c).await?;
        let again: Proxy<Counter> = m.get("counter").await?;
        ensure!(again.call(CounterOp::Get).await? == 401, "by name");
        m.shutdown().await?;
    }
    let plain = Manager::start().await?;
    ensure!(
        matches!(plain.managed::<Counter>().await, Err(Error::Manager(_))),
        "an unregistered type was made"
    );
    Ok(())
}

/// A registered type that panics as it is made (`Panics<true>`: say, on a missing setting)
/// or as it goes (`Panics<false>`).
struct Panics<const AS_MADE: bool>;

impl<const AS_MADE: bool> Default for Panics<AS_MADE> {
    fn default() -> Self {
        assert!(!AS_MADE, "no settings");
        Panics
    }
}

impl<const AS_MADE: bool> Drop for Panics<AS_MADE> {
    fn drop(&mut self) {
        assert!(AS_MADE, "broke as it went");
    }
}

impl<const AS_MADE: bool> Managed for Panics<AS_MADE> {
    type Request = ();
    type Reply = ();
    fn call(&mut self, (): ()) {}
}

/// `managed()` of a type whose `Default` panics fails with that panic, and the connection
/// lives on with what it holds, where the panic ended the connection's loop: the call failed
/// with `ManagerLost` (the server alive), and the server never let go of what the
/// connection held, so a lock it held stayed held for good and its objects outlived their
/// proxies.
async fn a_type_whose_default_panics_fails_that_call_only() -> TestResult {
    let m = Manager::builder()
        .register::<Panics<true>>()
        .start()
        .await?;
    let (lock, d) = (m.rlock().await?, m.dict::<u8, u8>().await?);
    lock.lock().await?;
    match m.managed::<Panics<true>>().await {
        Err(Error::Manager(msg)) => ensure!(msg.contains("no settings"), "{msg}"),
        other => return Err(format!("a panicking Default gave {:?}", other.map(drop)).into()),
    }
    d.insert(1, 2).await?;
    // The lock is still this task's, on the connection it was taken on.
    lock.release().await?;
    drop((lock, d));
    ensure!(
        m.object_count().await? == 0,
        "objects outlived their proxies"
    );
    Ok(())
}

/// A user value whose `Drop` panics, let go with its last proxy, leaves the connection
/// serving with what it holds, where the panic ended the connection's loop without letting
/// go of it: a lock the connection held stayed held for good (an RLock's owner, whose
/// calls went on a new connection, could no longer release it) and its objects outlived
/// their proxies.
async fn a_value_whose_drop_panics_leaves_its_connection_serving() -> TestResult {
    let m = Manager::builder()
        .register::<Panics<false>>()
        .start()
        .await?;
    let lock = m.rlock().await?;
    lock.lock().await?;
    let b = m.managed::<Panics<false>>().await?;
    b.call(()).await?;
    drop(b);
    // The lock is still this task's, on the connection it was taken on.
    lock.release().await?;
    drop(lock);
    ensure!(
        m.object_count().await? == 0,
        "objects outlived their proxies"
    );
    Ok(())
}

/// A registered type whose `Drop` waits (say, flushing to a slow disk): until it is given a
/// gate, a file whose appearance lets it go, and then it writes a file beside the gate.
#[derive(Default)]
struct SlowDrop {
    gate: Option<String>,
}

impl Drop for SlowDrop {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            while !std::path::Path::new(gate).exists() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::fs::write(format!("{gate}.dropped"), b"");
        }
    }
}

impl Managed for SlowDrop {
    type Request = String;
    type Reply = ();
    fn call(&mut self, gate: String) {
        self.gate = Some(gate);
    }
}

/// A user value whose `Drop` is slow holds up no other call, on its connection or any
/// other, and still runs: it ran under the lock every request takes, so that every client
/// of the server waited for it.
async fn a_value_whose_drop_is_slow_holds_up_no_call() -> TestResult {
    let m = Manager::builder()
        .register::<SlowDrop>()
        .address("127.0.0.1:0")
        .authkey(b"slow drop")
        .start()
        .await?;
    let address = m.address().ok_or("no address")?.clone();
    let d = m.dict::<String, u32>().await?;
    let gate = support::temp_path("gate");
    let dropped = std::path::PathBuf::from(format!("{gate}.dropped"));
    let slow = m.managed::<SlowDrop>().await?;
    slow.call(gate.to_string()).await?;
    drop(slow);
    let other = Manager::connect(address, b"slow drop").await?;
    let calls = async {
        d.insert("a".into(), 1).await?;
        ensure!(d.get(&"a".into()).await? == Some(1), "the dict's value");
        ensure!(other.object_count().await? == 1, "the dict alone lives");
        TestResult::Ok(())
    };
    let answered = tokio::time::timeout(Duration::from_secs(20), calls).await;
    std::fs::write(&gate, b"")?;
    answered.map_err(|_| "calls waited for a value's drop")??;
    ensure!(
        support::eventually(Duration::from_secs(20), || dropped.exists()).await,
        "the value's drop never ran"
    );
    let _ = std::fs::remove_file(&dropped);
    m.shutdown().await?;
    Ok(())
}

/// Calls queued behind a call to one object that does not return hold up no call to another
/// object, as the `Managed` docs promise: each waits for its turn without a thread of the
/// server's, where each took one of its blocking pool (512 threads) to wait in, so that 600
/// of them left none for any other object's call.
async fn calls_queued_behind_a_hung_call_hold_up_no_other_object() -> TestResult {
    let m = Manager::builder().register::<Counter>().start().await?;
    let (stuck, other) = (m.managed::<Counter>().await?, m.managed::<Counter>().await?);
    let gate = support::temp_path("gate");
    let sent = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut queued = tokio::task::JoinSet::new();
    for _ in 0..600 {
        let (stuck, gate, sent) = (stuck.clone(), gate.to_string(), sent.clone());
        queued.spawn(async move {
            let call = stuck.call(CounterOp::WaitFor(gate));
            tokio::pin!(call);
            // Polled once, the request is on its way: the calls below go after it.
            let first = futures::poll!(call.as_mut());
            sent.add_permits(1);
            match first {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => call.await,
            }
        });
    }
    let _all_sent = sent.acquire_many(600).await?;
    // Answered in order: the server has read the 600 calls by then.
    m.object_count().await?;
    let answer = tokio::time::timeout(Duration::from_secs(20), other.call(CounterOp::Add(1))).await;
    std::fs::write(&gate, b"")?;
    ensure!(
        matches!(answer, Ok(Ok(1))),
        "another object's call behind 600 queued calls gave {answer:?}"
    );
    while let Some(r) = queued.join_next().await {
        r??;
    }
    ensure!(other.call(CounterOp::Get).await? == 1, "the other object");
    m.shutdown().await?;
    Ok(())
}

/// Calls dropped at any moment (a `select!` or a timeout racing them) lose nothing: a `get`
/// withdrawn after the server handed out its item puts the item back, and a `lock`
/// withdrawn after it was granted releases the lock.
async fn withdrawn_calls_give_back_what_they_took() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<u32>().await?;
    const N: u32 = 3000;
    let producer = {
        let q = q.clone();
        tokio::spawn(async move {
            for i in 0..N {
                q.put(i).await.map_err(|e| e.into_parts().0)?;
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, mp::Error>(())
        })
    };
    let mut got = Vec::new();
    let mut withdrawn = 0u32;
    while !producer.is_finished() || got.len() < N as usize {
        match tokio::time::timeout(Duration::from_micros(40), q.get()).await {
            Ok(item) => got.push(item?),
            Err(_) => withdrawn += 1,
        }
        if producer.is_finished() && withdrawn > 0 && got.len() < N as usize {
            // The rest without racing: what is left must all be there.
            while let Ok(item) = q.get_timeout(Duration::from_secs(2)).await {
                got.push(item);
            }
            break;
        }
    }
    producer.await??;
    got.sort_unstable();
    let want: Vec<u32> = (0..N).collect();
    ensure!(
        got == want,
        "{} items of {N} came out ({withdrawn} gets withdrawn); first missing: {:?}",
        got.len(),
        want.iter().find(|i| got.binary_search(i).is_err())
    );

    let lock = m.lock().await?;
    let other = {
        let lock = lock.clone();
        tokio::spawn(async move {
            for _ in 0..300 {
                lock.lock().await?;
                tokio::task::yield_now().await;
                lock.release().await?;
            }
            Ok::<_, mp::Error>(())
        })
    };
    let mut taken = 0;
    while !other.is_finished() {
        if let Ok(r) = tokio::time::timeout(Duration::from_micros(30), lock.lock()).await {
            r?;
            taken += 1;
            lock.release().await?;
        }
    }
    other.await??;
    ensure!(
        lock.lock_timeout(Duration::from_secs(5)).await.is_ok(),
        "a withdrawn lock was left held ({taken} taken)"
    );
    Ok(())
}

/// A condition `wait` dropped at any moment (waiting, notified and taking the lock back, or
/// answered with its reply still on the way) leaves the lock released, as the crate's own
/// `Condition` does: another task can then take it.
async fn a_withdrawn_condition_wait_leaves_the_lock_released() -> TestResult {
    let m = Manager::start().await?;
    let c = m.condition().await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notifier = {
        let (c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                c.lock().await?;
                c.notify_all().await?;
                c.release().await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, mp::Error>(())
        })
    };
    let (mut answered, mut withdrawn) = (0u32, 0u32);
    for i in 0..300u64 {
        c.lock().await?;
        let patience = Duration::from_micros(i % 30 * 5);
        match tokio::time::timeout(patience, c.wait()).await {
            Ok(r) => {
                r?;
                answered += 1;
                c.release().await?;
            }
            Err(_) => withdrawn += 1,
        }
        // Another task (another owner of the re-entrant lock) can take it.
        let other = {
            let c = c.clone();
            tokio::spawn(async move {
                c.lock_timeout(Duration::from_secs(10)).await?;
                c.release().await
            })
        };
        ensure!(
            other.await?.is_ok(),
            "round {i}: the lock stayed held ({answered} waits answered, {withdrawn} withdrawn)"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    notifier.await??;
    Ok(())
}

/// A condition `wait` dropped once the server had taken the lock back for it, its reply on
/// the way, gives back the level it took back, not the levels its task takes after the
/// drop: a task that takes the lock again right after the drop holds it. (The wait's give
/// back released every level, so the lock taken again was free to another process.)
async fn a_lock_taken_again_after_a_withdrawn_condition_wait_is_held() -> TestResult {
    let m = Manager::start().await?;
    let lock = m.rlock().await?;
    let c = m.condition_with(&lock).await?;
    let me = std::process::id();
    c.lock().await?;
    {
        let mut wait = std::pin::pin!(c.wait());
        ensure!(
            futures::poll!(wait.as_mut()).is_pending(),
            "a wait that nothing notified returned"
        );
        // Notified from another connection while this runtime stands still: the server
        // takes the lock back for the wait, and its reply waits unread in the socket.
        let (c, lock) = (c.clone(), lock.clone());
        support::runtimes::on_a_thread_of_its_own(async move {
            c.lock().await?;
            c.notify(1).await?;
            c.release().await?;
            while lock.holder().await? != Some(me) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        })?;
    }
    // The wait is dropped: the lock is released; this task takes it again.
    c.lock().await?;
    let c2 = c.clone();
    let free = support::runtimes::on_a_thread_of_its_own(async move {
        let taken = c2.try_lock().await?;
        if taken {
            c2.release().await?;
        }
        Ok(taken)
    })?;
    ensure!(
        !free,
        "the lock this task took again was free to another connection"
    );
    c.release().await?;
    m.shutdown().await?;
    Ok(())
}

async fn arrive_and_stay(b: BarrierProxy) -> mp::Result<()> {
    b.wait().await?;
    std::future::pending::<()>().await;
    Ok(())
}

/// A party that arrived at a barrier and then left (its `wait` dropped, or its process
/// killed) breaks the barrier, as the crate's own `Barrier` does: the parties still waiting
/// are told, instead of waiting for one that will never come back.
async fn a_barrier_party_that_leaves_breaks_the_barrier() -> TestResult {
    let m = Manager::start().await?;
    let b = m.barrier(3).await?;
    let dropped = {
        let b = b.clone();
        tokio::spawn(async move { b.wait().await })
    };
    while b.n_waiting().await? == 0 {
        tokio::task::yield_now().await;
    }
    dropped.abort();
    let _ = dropped.await;
    // Three parties: the round cannot complete with the one that left.
    match tokio::time::timeout(Duration::from_secs(20), b.wait()).await {
        Ok(Err(Error::BrokenBarrier)) => {}
        Ok(other) => return Err(format!("after a withdrawn wait: {other:?}").into()),
        Err(_) => return Err("a withdrawn wait left the barrier waiting for it".into()),
    }

    b.reset().await?;
    let mut p = Process::new(arrive_and_stay, (b.clone(),)).start().await?;
    while b.n_waiting().await? == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    p.kill()?;
    p.join().await?;
    match tokio::time::timeout(Duration::from_secs(20), b.wait()).await {
        Ok(Err(Error::BrokenBarrier)) => {}
        Ok(other) => return Err(format!("after a killed party: {other:?}").into()),
        Err(_) => return Err("a killed party left the barrier waiting for it".into()),
    }
    Ok(())
}

/// Many queues, used from this machine, in a process (and a server) allowed few
/// descriptors: the rings that fit are used, the other queues are kept by the server, and
/// every item comes out where it went in.
async fn use_many_queues_with_few_descriptors() -> mp::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let io = |e: nix::Error| mp::Error::from(std::io::Error::from(e));
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io)?;
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    // The server started below inherits the limit.
    setrlimit(Resource::RLIMIT_NOFILE, open + 200, hard).map_err(io)?;
    let m = Manager::start().await?;
    let mut queues = Vec::new();
    for i in 0..60u32 {
        let q = m.queue::<u32>().await?;
        q.put(i).await?;
        queues.push(q);
    }
    for (i, q) in (0..).zip(&queues) {
        let got = q.get_timeout(Duration::from_secs(10)).await?;
        if got != i {
            return Err(mp::Error::Manager(format!("queue {i} gave {got}")));
        }
    }
    m.shutdown().await
}

async fn queues_work_when_descriptors_are_few() -> TestResult {
    let mut p = Process::new(use_many_queues_with_few_descriptors, ())
        .start()
        .await?;
    join_ok(&mut p).await?;
    Ok(())
}

async fn take_for_ever(q: QueueProxy<u32>) -> mp::Result<()> {
    loop {
        q.get().await?;
    }
}

/// Consumers SIGKILLed while they take from a manager's queue (through its ring) leave a
/// queue that works: what is put afterwards all comes out here.
async fn a_queue_outlives_consumers_killed_while_they_take() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<u32>().await?;
    let mut kids = Vec::new();
    for _ in 0..2 {
        kids.push(Process::new(take_for_ever, (q.clone(),)).start().await?);
    }
    for i in 0..20_000 {
        q.put(i).await.map_err(mp::Error::from)?;
        if i == 5_000 {
            for p in &kids {
                p.kill()?;
            }
        }
    }
    for p in &mut kids {
        p.join().await?;
    }
    for i in 100_000..100_100 {
        q.put(i).await.map_err(mp::Error::from)?;
    }
    let mut after = Vec::new();
    while after.len() < 100 {
        let v = q.get_timeout(Duration::from_secs(10)).await?;
        if v >= 100_000 {
            after.push(v);
        }
    }
    ensure!(
        after == (100_000..100_100).collect::<Vec<_>>(),
        "after the kills: {after:?}"
    );
    Ok(())
}

// A task that loops on queue calls that need no wait (`get_nowait` on an empty queue, a
// `put_nowait` with room, `qsize`, `full`, `task_done`, a `join` with nothing unfinished, a
// dict's `len`...) lets the other tasks of its runtime run, as a loop on the crate's own
// queue does: on a current-thread runtime, a task spawned before the loop runs within a few
// rounds. (A local manager's queue is reached through its ring, in this process: those
// calls on it returned without touching the reactor or spending the task's budget, so a
// loop polling `get_nowait` for an item that a task of the same runtime was to put spun
// for ever.)
async fn a_loop_of_queue_calls_that_need_no_wait_lets_other_tasks_run() -> TestResult {
    const ROUNDS: u32 = 10_000;
    let m = Manager::start().await?;
    let q = &m.joinable_queue::<u32>(0).await?;
    let d = &m.dict::<u8, u8>().await?;
    q.put(1).await.map_err(|e| e.into_parts().0)?;
    ensure!(q.get().await? == 1, "the ring works");
    q.task_done().await?;
    let mut starved = Vec::new();
    for what in [
        "get_nowait",
        "put_nowait",
        "qsize",
        "full",
        "maxsize",
        "task_done",
        "unfinished",
        "join",
        "dict len",
    ] {
        if what == "task_done" {
            // Room for a task_done in every round.
            for _ in 0..ROUNDS {
                q.put_nowait(0).await.map_err(|e| e.into_parts().0)?;
            }
        }
        let ran = support::lets_others_run(ROUNDS, |_| async move {
            match what {
                "get_nowait" => match q.get_nowait().await {
                    Ok(_) | Err(Error::Empty) => {}
                    Err(e) => return Err(e.into()),
                },
                "put_nowait" => q.put_nowait(0).await.map_err(|e| e.into_parts().0)?,
                "qsize" => drop(q.qsize().await?),
                "full" => drop(q.full().await?),
                "maxsize" => drop(q.maxsize().await?),
                "task_done" => q.task_done().await?,
                "unfinished" => drop(q.unfinished().await?),
                "join" => q.join().await?,
                _ => drop(d.len().await?),
            }
            Ok(())
        })
        .await?;
        if !ran {
            starved.push(what);
        }
        // Empty and all done again for the next kind.
        while q.get_nowait().await.is_ok() {}
        while q.unfinished().await? > 0 {
            q.task_done().await?;
        }
    }
    ensure!(
        starved.is_empty(),
        "a task spawned before {ROUNDS} rounds of these never ran: {starved:?}"
    );
    Ok(())
}
