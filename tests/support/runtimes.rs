//! Handles used from one runtime, then from another: while the first sits idle, and once
//! it is gone.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio_multiprocessing::{self as mp, Manager};

/// How long one call may take before the test calls it hung.
const HUNG: Duration = Duration::from_secs(20);

/// A current-thread runtime, driven only inside its `block_on`.
pub fn runtime() -> Result<Runtime, String> {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))
}

/// `f`, driven by `rt` alone; a call that does not end is an error, not a hang.
fn on<T>(rt: &Runtime, what: &str, f: impl Future<Output = mp::Result<T>>) -> Result<T, String> {
    match rt.block_on(async { tokio::time::timeout(HUNG, f).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {HUNG:?}")),
    }
}

/// `f`, driven by a current-thread runtime of its own on a thread of its own, while the
/// caller's thread is blocked (so its runtime, if a current-thread one, stands still): a
/// manager's proxies called in `f` go through a connection of their own.
pub fn on_a_thread_of_its_own<T: Send + 'static>(
    f: impl Future<Output = mp::Result<T>> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || on(&runtime()?, "a call on a thread of its own", f))
        .join()
        .map_err(|_| "the thread panicked".to_string())?
}

/// Plain code (each runtime here is a current-thread one, driven only inside its
/// `block_on`): a manager handle made by `manager` on runtime A, and a dict and a queue of it
/// used on A; then used on B while A is not driven, on B once A is dropped, and on C while B
/// is not driven. The dict keeps every value written on each runtime and the queue hands out
/// every item once, in order (they are the same objects), the server holds as many objects
/// throughout, and the handle shuts down from C.
pub fn a_proxy_across_runtimes<F, Fut>(manager: F) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = mp::Result<Manager>>,
{
    let a = runtime()?;
    let m = on(&a, "the manager on A", manager())?;
    let d = on(&a, "a dict on A", m.dict::<u32, u32>())?;
    on(&a, "an insert on A", d.insert(1, 10))?;
    let q = on(&a, "a queue on A", m.queue::<u32>())?;
    on(&a, "a put on A", async { Ok(q.put(1).await?) })?;
    let objects = on(&a, "the object count on A", m.object_count())?;

    let b = runtime()?;
    on(&b, "an insert on B while A is idle", d.insert(2, 20))?;
    let one = on(&b, "a get on B while A is idle", d.get(&1))?;
    if one != Some(10) {
        return Err(format!("B reads {one:?} for the key A wrote"));
    }
    let first = on(&b, "a get on B while A is idle", q.get())?;
    on(&b, "a put on B while A is idle", async {
        Ok(q.put(2).await?)
    })?;

    drop(a);
    let mut items = on(&b, "the items on B once A is gone", d.items())?;
    items.sort_unstable();
    if items != [(1, 10), (2, 20)] {
        return Err(format!("B reads {items:?} once A is gone"));
    }
    on(&b, "an insert on B once A is gone", d.insert(3, 30))?;
    let second = on(&b, "a get on B once A is gone", q.get())?;
    on(&b, "a put on B once A is gone", async {
        Ok(q.put(3).await?)
    })?;
    let count = on(&b, "the object count on B", m.object_count())?;
    if count != objects {
        return Err(format!(
            "the server holds {count} objects on B, {objects} on A"
        ));
    }

    let c = runtime()?;
    let len = on(&c, "a len on C while B is idle", d.len())?;
    if len != 3 {
        return Err(format!("C counts {len} keys, not 3"));
    }
    drop(b);
    let three = on(&c, "a get on C once B is gone", d.get(&3))?;
    if three != Some(30) {
        return Err(format!("C reads {three:?} for the key B wrote"));
    }
    let third = on(&c, "a get on C once B is gone", q.get())?;
    if [first, second, third] != [1, 2, 3] {
        return Err(format!("the queue gave {:?}", [first, second, third]));
    }
    drop((d, q));
    on(&c, "the shutdown on C", m.shutdown())
}

/// Plain code: a manager handle made by `manager` on a runtime then dropped (its link has
/// no connection left); on runtime A, a call polled once, which begins to connect and
/// waits for the server, then A not driven; on B, a call of the same link is answered;
/// then A, driven again, answers its call, and the handle shuts down from B.
pub fn a_connection_begun_on_an_idle_runtime<F, Fut>(manager: F) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = mp::Result<Manager>>,
{
    let first = runtime()?;
    let m = on(&first, "the manager", manager())?;
    let d = on(&first, "a dict", m.dict::<u32, u32>())?;
    on(&first, "an insert", d.insert(1, 10))?;
    drop(first);

    let a = runtime()?;
    let mut begun = Box::pin(d.len());
    let polled = a.block_on(std::future::poll_fn(|cx| {
        std::task::Poll::Ready(begun.as_mut().poll(cx))
    }));
    if polled.is_ready() {
        return Err("the call on A was answered before A was idle".into());
    }

    let b = runtime()?;
    let one = on(&b, "a get on B while A's call connects", d.get(&1))?;
    if one != Some(10) {
        return Err(format!("B reads {one:?}"));
    }
    let len = on(&a, "the call begun on A", begun)?;
    if len != 1 {
        return Err(format!("A counts {len} keys, not 1"));
    }
    drop(d);
    on(&b, "the shutdown on B", m.shutdown())
}

/// Runs `each` on one current-thread runtime, then on a second while the first is alive and
/// idle, then on a third once both are gone (in a blocking thread of the test's runtime): for
/// handles that must serve whichever runtime awaits them.
pub async fn on_runtimes_in_turn(
    each: impl Fn(&Runtime) -> Result<(), String> + Send + 'static,
) -> super::TestResult {
    let turns = move || {
        let first = runtime()?;
        each(&first).map_err(|e| format!("first runtime: {e}"))?;
        let second = runtime()?;
        each(&second).map_err(|e| format!("second runtime, beside the first: {e}"))?;
        drop(first);
        drop(second);
        let third = runtime()?;
        each(&third).map_err(|e| format!("third runtime, after the others: {e}"))
    };
    tokio::task::spawn_blocking(turns).await??;
    Ok(())
}

/// Plain code: a wait begun on runtime A (`wait`, polled once: it must pend), then `on_b`
/// driven by runtime B while A's wait pends, then a second `wait` on A beside the first,
/// which `wake` (run on A once both wait) must end: for handles awaited by two runtimes at
/// once (a service's and a worker thread's), each of whose turns must leave the other's
/// waits, begun or to come, working. The two waits' results, in order.
pub fn a_wait_on_a_beside_a_turn_on_b<T, W, WF, B, BF, K, KF>(
    wait: W,
    on_b: B,
    wake: K,
) -> Result<[T; 2], String>
where
    W: Fn() -> WF,
    WF: Future<Output = mp::Result<T>>,
    B: FnOnce() -> BF,
    BF: Future<Output = Result<(), String>>,
    K: FnOnce() -> KF,
    KF: Future<Output = mp::Result<()>>,
{
    let a = runtime()?;
    let b = runtime()?;
    let mut first = Box::pin(wait());
    let polled = a.block_on(std::future::poll_fn(|cx| {
        std::task::Poll::Ready(first.as_mut().poll(cx).is_ready())
    }));
    if polled {
        return Err("the first wait on A ended before B's turn".into());
    }
    b.block_on(async { tokio::time::timeout(HUNG, on_b()).await })
        .map_err(|_| format!("B's turn: no answer in {HUNG:?}"))?
        .map_err(|e| format!("B's turn: {e}"))?;
    on(&a, "two waits on A after B's turn", async {
        let woken = async {
            tokio::task::yield_now().await;
            wake().await
        };
        let (x, y, ()) = tokio::try_join!(first, wait(), woken)?;
        Ok([x, y])
    })
}
