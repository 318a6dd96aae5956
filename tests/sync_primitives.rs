//! All the synchronisation primitives together: as Pool arguments, bad arguments, and no
//! descriptor left behind.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::future::Future;
use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, fds_return_to, join_ok, open_fds, send_as};
use tokio_multiprocessing::{
    Barrier, BoundedSemaphore, Condition, Error, Event, Fd, Lock, LockGuard, Pool, Process, RLock,
    Semaphore, SharedMemory, Value,
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

/// Runs `f` on a thread of its own, driven by a runtime of its own, after a pause: a wait
/// begun on the caller's runtime meanwhile sleeps until `f` ends it.
fn later<F>(f: impl FnOnce() -> F + Send + 'static) -> std::thread::JoinHandle<Result<(), String>>
where
    F: Future<Output = tokio_multiprocessing::Result<()>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(50));
        rt.block_on(async { tokio::time::timeout(LONG, f()).await })
            .map_err(|_| "no end in time".to_string())?
            .map_err(|e| e.to_string())
    })
}

/// The primitives one test uses on one runtime after another.
#[derive(Clone)]
struct All {
    l: Lock,
    r: RLock,
    s: Semaphore,
    c: Condition,
    e: Event,
    b: Barrier,
}

/// `f`, driven by `rt` alone; one that does not end is an error, not a hang.
fn on<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    f: impl Future<Output = tokio_multiprocessing::Result<T>>,
) -> Result<T, String> {
    rt.block_on(async { tokio::time::timeout(LONG, f).await })
        .map_err(|_| format!("{what}: no end in {LONG:?}"))?
        .map_err(|e| format!("{what}: {e}"))
}

/// On `rt` alone: a wait on each primitive that sleeps until a thread with a runtime of its
/// own ends it (a release, a set, a notify, the other party).
fn waits_on_a_runtime(rt: &tokio::runtime::Runtime, all: &All) -> Result<(), String> {
    let joined = |h: std::thread::JoinHandle<Result<(), String>>, what: &str| {
        h.join()
            .map_err(|_| format!("{what}: the thread panicked"))?
            .map_err(|e| format!("{what}: {e}"))
    };

    all.l
        .try_lock()
        .map_err(|e| e.to_string())?
        .ok_or("the lock is held")?
        .forget();
    let l = all.l.clone();
    let h = later(move || async move { l.release() });
    on(rt, "lock", async { all.l.lock().await.map(drop) })?;
    joined(h, "release")?;

    let r = all.r.clone();
    let (held, hold) = std::sync::mpsc::channel();
    let h = later(move || async move {
        let g = r.lock().await?;
        let _ = held.send(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(g);
        Ok(())
    });
    hold.recv_timeout(LONG)
        .map_err(|_| "the rlock was never taken")?;
    on(rt, "rlock", async { all.r.lock().await.map(drop) })?;
    joined(h, "rlock holder")?;

    let s = all.s.clone();
    let h = later(move || async move { s.release() });
    on(rt, "semaphore", async {
        all.s.acquire().await.map(|g| g.forget())
    })?;
    joined(h, "semaphore release")?;

    let e = all.e.clone();
    let h = later(move || async move {
        e.set();
        Ok(())
    });
    on(rt, "event", all.e.wait())?;
    joined(h, "set")?;
    all.e.clear();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, stop) = (all.c.clone(), done.clone());
    let h = later(move || async move {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            c.lock().await?.notify_all();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    });
    let waited = on(rt, "condition", async {
        all.c.lock().await?.wait().await.map(drop)
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    joined(h, "notifier")?;
    waited?;

    let b = all.b.clone();
    let h = later(move || async move { b.wait().await.map(drop) });
    on(rt, "barrier", async { all.b.wait().await.map(drop) })?;
    joined(h, "the other party")
}

/// Each primitive serves whichever runtime awaits it: waits that sleep on a current-thread
/// runtime, then on a second while the first is alive and idle, then on a third once both
/// are gone.
async fn primitives_serve_one_runtime_after_another() -> TestResult {
    let all = All {
        l: Lock::new()?,
        r: RLock::new()?,
        s: Semaphore::new(0)?,
        c: Condition::new()?,
        e: Event::new()?,
        b: Barrier::new(2)?,
    };
    support::runtimes::on_runtimes_in_turn(move |rt| waits_on_a_runtime(rt, &all)).await
}

/// A primitive's two descriptors as they cross: its segment's and its eventfd.
type Pair = ((Fd, Fd),);

/// No Python counterpart: a lock, an event or a semaphore received with another descriptor
/// where its eventfd belongs (a socket, here) is refused, where it was adopted and its
/// wake-ups written into (and its waits read out of) whatever that was; the pair of the
/// primitive's own descriptors is received.
async fn a_primitive_whose_wake_up_is_not_an_eventfd_is_refused() -> TestResult {
    let socket = || -> std::io::Result<Fd> {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair()?;
        Ok(Fd::from(std::os::fd::OwnedFd::from(ours)))
    };
    let ((region, _),) = send_as::<_, Pair>(Lock::new()?).await??;
    let r = send_as::<_, Lock>(((region, socket()?),)).await?;
    ensure!(r.is_err(), "a lock received with a socket for its eventfd");
    let ((region, _),) = send_as::<_, Pair>(Event::new()?).await??;
    let r = send_as::<_, Event>(((region, socket()?),)).await?;
    ensure!(
        r.is_err(),
        "an event received with a socket for its eventfd"
    );
    let ((region, _),) = send_as::<_, Pair>(Semaphore::new(1)?).await??;
    let r = send_as::<_, Semaphore>(((region, socket()?),)).await?;
    ensure!(
        r.is_err(),
        "a semaphore received with a socket for its eventfd"
    );
    let e = Event::new()?;
    let pair = send_as::<_, Pair>(e.clone()).await??;
    let back = send_as::<_, Event>(pair).await??;
    back.set();
    ensure!(e.wait_timeout(LONG).await?, "the event received is another");
    Ok(())
}

/// A primitive received with the segment of another kind is refused, naming both: a lock's
/// segment taken for a semaphore's would read its owner word as a count. The code before
/// took each as the other.
async fn a_primitive_received_as_another_kind_is_refused() -> TestResult {
    let r = send_as::<_, Semaphore>(Lock::new()?).await?;
    match r {
        Err(e) => ensure!(
            e.to_string()
                .contains("semaphore was received with the segment of something else")
                && e.to_string().contains("lock"),
            "the error does not name both kinds: {e}"
        ),
        Ok(_) => return Err("a lock was received as a semaphore".into()),
    }
    ensure!(
        send_as::<_, Lock>(Semaphore::new(1)?).await?.is_err(),
        "a semaphore was received as a lock"
    );
    ensure!(
        send_as::<_, Condition>(Event::new()?).await?.is_err(),
        "an event was received as a condition"
    );
    ensure!(
        send_as::<_, Event>(Barrier::new(2)?).await?.is_err(),
        "a barrier was received as an event"
    );
    // The same kind still crosses.
    let s = Semaphore::new(0)?;
    let back = send_as::<_, Semaphore>(s.clone()).await??;
    back.release()?;
    // The permit released through the one received is the one taken here.
    let _permit = s.acquire_timeout(LONG).await?;
    Ok(())
}

/// A `BoundedSemaphore` received as a `Semaphore` is refused, and the other way round: the
/// code before took each for the other, so a `BoundedSemaphore` received as a `Semaphore`
/// refused a release at its bound (which `Semaphore::release` never does), and a `Semaphore`
/// received as a `BoundedSemaphore` took any number of releases, bounded by nothing. Each
/// still crosses as itself, the bound of `u32::MAX` included.
async fn a_bounded_semaphore_and_a_semaphore_are_not_taken_for_each_other() -> TestResult {
    let r = send_as::<_, Semaphore>(BoundedSemaphore::new(1)?).await?;
    ensure!(
        r.is_err(),
        "a bounded semaphore was received as a semaphore"
    );
    let r = send_as::<_, BoundedSemaphore>(Semaphore::new(1)?).await?;
    ensure!(
        r.is_err(),
        "a semaphore was received as a bounded semaphore"
    );
    for bound in [1, u32::MAX] {
        let back = send_as::<_, BoundedSemaphore>(BoundedSemaphore::new(bound)?).await??;
        ensure!(
            matches!(back.release(), Err(Error::SemaphoreOverRelease { bound: b }) if b == bound),
            "the bound of {bound} was lost on the way"
        );
    }
    let s = Semaphore::new(0)?;
    send_as::<_, Semaphore>(s.clone()).await??.release()?;
    ensure!(s.get_value() == 1, "the semaphore received is another");
    Ok(())
}

/// An `RLock` received as a `Lock` is refused, and the other way round: the code before took
/// each for the other, so an `RLock` held by a task of this process, received elsewhere as a
/// `Lock`, was freed there by `Lock::release` under its holder, whose `RLock` refuses any
/// release but its owner's (`Error::NotOwner`). Each still crosses as itself.
async fn an_rlock_and_a_lock_are_not_taken_for_each_other() -> TestResult {
    let r = RLock::new()?;
    let _held = r.lock().await?;
    let as_lock = send_as::<_, Lock>(r.clone()).await?;
    if let Ok(l) = &as_lock {
        let _ = l.release();
    }
    ensure!(as_lock.is_err(), "an RLock was received as a Lock");
    let r = send_as::<_, RLock>(Lock::new()?).await?;
    ensure!(r.is_err(), "a Lock was received as an RLock");
    let l = Lock::new()?;
    let back = send_as::<_, Lock>(l.clone()).await??;
    let _g = back.try_lock()?.ok_or("the lock received was taken")?;
    ensure!(l.is_locked(), "the lock received is another");
    let r = RLock::new()?;
    send_as::<_, RLock>(r.clone()).await??;
    Ok(())
}

/// Takes the lock, reports it, and holds it until `go` is set.
async fn hold_until(l: Lock, holding: Event, go: Event) {
    let g = l.lock().await.expect("lock");
    holding.set();
    go.wait().await.expect("wait");
    drop(g);
}

/// No Python counterpart (a thread waiting on a lock holds no descriptor): many tasks of one
/// process wait at once on each primitive (a lock held by another process, an event, a
/// semaphore, a condition, a barrier), as the handlers of a server that share one `Value`
/// would. Each waiting task used to hold descriptors of its own, a duplicate of the
/// primitive's eventfd and, for a lock, a pidfd of its holder: past the limit of open
/// descriptors (often 1024), waits failed with "Too many open files". They now share one
/// registration per primitive, and one watch of the lock's holder; all wake and finish.
async fn many_waiting_tasks_share_their_descriptors() -> TestResult {
    let l = Lock::new()?;
    let (holding, go) = (Event::new()?, Event::new()?);
    let mut holder = Process::new(hold_until, (l.clone(), holding.clone(), go.clone()))
        .start()
        .await?;
    let r = tasks_waiting_on_everything(l, holding, go.clone()).await;
    // However the test went, the child lets go and ends.
    go.set();
    if tokio::time::timeout(LONG, holder.join()).await.is_err() {
        holder.kill()?;
        holder.join().await?;
    }
    r
}

async fn tasks_waiting_on_everything(l: Lock, holding: Event, go: Event) -> TestResult {
    const TASKS: u32 = 300;
    let e = Event::new()?;
    let s = Semaphore::new(0)?;
    let c = Condition::new()?;
    let b = Barrier::new(TASKS + 1)?;
    holding.wait_timeout(LONG).await?;
    let fds = open_fds();
    let started = Semaphore::new(0)?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (l, e, s, c, b) = (l.clone(), e.clone(), s.clone(), c.clone(), b.clone());
        let started = started.clone();
        tasks.spawn(async move {
            let g = c.lock().await?;
            started.release()?;
            drop(g.wait().await?);
            drop(l.lock().await?);
            e.wait().await?;
            s.acquire().await?.forget();
            b.wait().await?;
            Ok::<_, Error>(())
        });
    }
    for _ in 0..TASKS {
        started.acquire_timeout(LONG).await?.forget();
    }
    let grew = |what: &str| {
        let now = open_fds();
        ensure!(
            now < fds + 20,
            "{TASKS} tasks waiting on {what} hold {} descriptors",
            now.saturating_sub(fds)
        );
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    // Taking the lock proves that every task has released it inside `wait`.
    let g = c.lock_timeout(LONG).await?;
    grew("a condition")?;
    g.notify_all();
    drop(g);
    // The tasks wake, then wait for the lock that the child holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    grew("a lock held by another process")?;
    go.set();
    tokio::time::sleep(Duration::from_millis(200)).await;
    grew("an event")?;
    e.set();
    tokio::time::sleep(Duration::from_millis(200)).await;
    grew("a semaphore")?;
    s.release_n(TASKS)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    grew("a barrier")?;
    b.wait_timeout(LONG).await?;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// Reports that it is about to wait, then waits on `what` for ever.
async fn wait_idle(what: Waited, started: Event) {
    started.set();
    let _ = match what {
        Waited::Lock(l) => l.lock().await.map(LockGuard::forget),
        Waited::RLock(l) => l.lock().await.map(drop),
        Waited::Semaphore(s) => s.acquire().await.map(drop),
        Waited::Condition(c) => match c.lock().await {
            Ok(g) => g.wait().await.map(drop),
            Err(e) => Err(e),
        },
        Waited::Event(e) => e.wait().await,
        Waited::Barrier(b) => b.wait().await.map(drop),
    };
    std::future::pending::<()>().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Waited {
    Lock(Lock),
    RLock(RLock),
    Semaphore(Semaphore),
    Condition(Condition),
    Event(Event),
    Barrier(Barrier),
}

/// No Python counterpart: a process that waits on a primitive sleeps on the reactor and uses
/// no CPU, however long it waits (a lock held by another process, each kind of wait).
async fn idle_waiters_use_no_cpu() -> TestResult {
    let held = Lock::new()?;
    let held_r = RLock::new()?;
    let _g = held.lock().await?;
    let _r = held_r.lock().await?;
    let waits = [
        ("a lock", Waited::Lock(held.clone())),
        ("a re-entrant lock", Waited::RLock(held_r.clone())),
        ("a semaphore", Waited::Semaphore(Semaphore::new(0)?)),
        ("a condition", Waited::Condition(Condition::new()?)),
        ("an event", Waited::Event(Event::new()?)),
        ("a barrier", Waited::Barrier(Barrier::new(2)?)),
    ];
    let mut kids = Vec::new();
    for (name, what) in waits {
        let started = Event::new()?;
        let p = Process::new(wait_idle, (what, started.clone()))
            .start()
            .await;
        kids.push((name, started, p?));
    }
    let r = measure_idle(&kids).await;
    for (_, _, p) in &mut kids {
        p.kill()?;
        p.join().await?;
    }
    r
}

async fn measure_idle(kids: &[(&str, Event, Process)]) -> TestResult {
    let mut before = Vec::new();
    for (_, started, p) in kids {
        started.wait_timeout(LONG).await?;
        before.push(support::cpu_ticks(p.pid())?);
    }
    let wall = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Clock ticks are 10 ms: a waiter asleep uses none; one in a loop uses about all.
    let wall_ticks = wall.elapsed().as_millis() as u64 / 10;
    for ((name, _, p), before) in kids.iter().zip(before) {
        let used = support::cpu_ticks(p.pid())? - before;
        ensure!(
            used * 4 < wall_ticks,
            "a process waiting on {name} used {used} ticks of CPU in {wall_ticks} ticks"
        );
    }
    Ok(())
}

/// No Python counterpart (a POSIX semaphore keeps no count of its sleepers): a process
/// killed while it slept on a lock or a semaphore stayed counted as a sleeper for ever, so
/// every later release, even with nobody waiting, wrote the eventfd (and woke every process
/// that had waited on it). Now the next release pays that once; the thousand after it write
/// nothing.
async fn a_waiter_killed_asleep_costs_later_releases_nothing() -> TestResult {
    let lock = Lock::new()?;
    let sem = Semaphore::new(0)?;
    let held = lock.lock().await?;
    for what in [Waited::Lock(lock.clone()), Waited::Semaphore(sem.clone())] {
        let started = Event::new()?;
        let mut p = Process::new(wait_idle, (what, started.clone()))
            .start()
            .await?;
        support::kill_once_asleep(&mut p, &started).await?;
    }
    drop(held);
    sem.release()?;
    sem.try_acquire()
        .ok_or("the unit released is missing")?
        .forget();
    for kind in ["lock", "semaphore"] {
        let before = support::writes_made()?;
        for _ in 0..1000 {
            if kind == "lock" {
                drop(lock.lock().await?);
            } else {
                sem.release()?;
                sem.try_acquire()
                    .ok_or("a unit released is missing")?
                    .forget();
            }
        }
        let writes = support::writes_made()? - before;
        ensure!(
            writes < 100,
            "1000 releases of a {kind} nobody waits on made {writes} writes"
        );
    }
    Ok(())
}

// A task that loops on waits that find their way free (an uncontended lock, a semaphore
// with a permit, a set event, a barrier of one, a condition's predicate already true) lets
// the other tasks of its runtime run, as it would on tokio's own `Mutex`: on a
// current-thread runtime, a task spawned before the loop runs within a few rounds.
async fn a_loop_of_waits_that_find_their_way_free_lets_other_tasks_run() -> TestResult {
    const ROUNDS: u32 = 10_000;
    let lock = &Lock::new()?;
    let rlock = &RLock::new()?;
    let sem = &Semaphore::new(1)?;
    let event = &Event::new()?;
    event.set();
    let barrier = &Barrier::new(1)?;
    let cond = &Condition::new()?;
    let kinds = [
        "lock",
        "rlock",
        "semaphore",
        "event",
        "barrier",
        "condition",
    ];
    support::none_starve(&kinds, ROUNDS, |what, _| async move {
        match what {
            "lock" => drop(lock.lock().await?),
            "rlock" => drop(rlock.lock().await?),
            "semaphore" => drop(sem.acquire().await?),
            "event" => event.wait().await?,
            "barrier" => drop(barrier.wait().await?),
            _ => {
                let (g, passed) = cond.lock().await?.wait_for(|| true, None).await?;
                ensure!(passed, "wait_for with a true predicate");
                drop(g);
            }
        }
        Ok(())
    })
    .await
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let mut trials = trials![
        primitives_as_pool_arguments,
        bad_arguments_are_invalid,
        no_descriptor_left_behind,
        primitives_serve_one_runtime_after_another,
        a_primitive_whose_wake_up_is_not_an_eventfd_is_refused,
        a_primitive_received_as_another_kind_is_refused,
        a_bounded_semaphore_and_a_semaphore_are_not_taken_for_each_other,
        an_rlock_and_a_lock_are_not_taken_for_each_other,
        many_waiting_tasks_share_their_descriptors,
        idle_waiters_use_no_cpu,
        a_waiter_killed_asleep_costs_later_releases_nothing,
    ];
    trials.push(support::test_current_thread(
        "a_loop_of_waits_that_find_their_way_free_lets_other_tasks_run",
        a_loop_of_waits_that_find_their_way_free_lets_other_tasks_run,
    ));
    libtest_mimic::run(&args, trials).exit()
}
