//! `Manager` and its proxies across real processes: dicts, lists and values shared with
//! children, concurrent writers, Python's index rules, a stopped server, cancelled calls.
//! Cases from CPython's `_TestContainers` name the Python test they come from.

#[macro_use]
mod support;

use std::time::Duration;

use support::{TestResult, run_example, test};
use tokio_multiprocessing::{
    self as mp, DictProxy, Error, ListProxy, Manager, NamespaceProxy, Process, QueueProxy,
    StartMethod, ValueProxy,
};

fn main() {
    mp::init();
    support::run(vec![
        test("dict_operations", dict_operations),
        test(
            "a_proxy_serves_every_runtime_that_awaits_it",
            a_proxy_serves_every_runtime_that_awaits_it,
        ),
        test(
            "a_call_over_the_frame_limit_fails_alone",
            a_call_over_the_frame_limit_fails_alone,
        ),
        test(
            "list_operations_follow_python",
            list_operations_follow_python,
        ),
        test(
            "list_and_dict_methods_in_a_child",
            list_and_dict_methods_in_a_child,
        ),
        test(
            "dict_setdefault_update_popitem",
            dict_setdefault_update_popitem,
        ),
        test("list_search_and_remove", list_search_and_remove),
        test(
            "the_servers_initializer_runs_before_it_serves",
            the_servers_initializer_runs_before_it_serves,
        ),
        test(
            "a_plain_initializer_may_block_on_its_own_runtime",
            a_plain_initializer_may_block_on_its_own_runtime,
        ),
        test("value_get_and_set", value_get_and_set),
        test("proxies_work_in_children", proxies_work_in_children),
        test(
            "concurrent_writers_lose_nothing",
            concurrent_writers_lose_nothing,
        ),
        test(
            "proxies_travel_onwards_to_grandchildren",
            proxies_travel_onwards_to_grandchildren,
        ),
        test(
            "a_stopped_server_fails_calls_naming_it",
            a_stopped_server_fails_calls_naming_it,
        ),
        test(
            "a_terminals_signals_leave_the_server_to_its_owner",
            a_terminals_signals_leave_the_server_to_its_owner,
        ),
        test(
            "cancelled_calls_leave_the_proxy_usable",
            cancelled_calls_leave_the_proxy_usable,
        ),
        test("cancelled_gets_lose_no_item", cancelled_gets_lose_no_item),
        test(
            "values_holding_descriptors_are_refused",
            values_holding_descriptors_are_refused,
        ),
        test(
            "example_manager_dict_list_value",
            example_manager_dict_list_value,
        ),
        test("example_manager_return_dict", example_manager_return_dict),
    ])
}

/// A proxy serves whichever runtime awaits it, as a manager shared by several
/// `#[tokio::test]`s through a static is: used on runtime B while runtime A, where it was
/// first used, is not driven, then once A is dropped, with the values and the object kept
/// (see `support::runtimes`).
async fn a_proxy_serves_every_runtime_that_awaits_it() -> TestResult {
    tokio::task::spawn_blocking(|| support::runtimes::a_proxy_across_runtimes(Manager::start))
        .await??;
    Ok(())
}

async fn dict_operations() -> TestResult {
    // _TestContainers.test_dict
    let m = Manager::start().await?;
    let d = m.dict::<String, i64>().await?;
    ensure!(d.is_empty().await?, "new dict not empty");
    for (i, k) in ["c", "a", "b"].iter().enumerate() {
        ensure!(
            d.insert(k.to_string(), i as i64).await?.is_none(),
            "fresh key had a value"
        );
    }
    ensure!(
        d.insert("a".into(), 10).await? == Some(1),
        "insert returns the old value"
    );
    ensure!(d.get(&"a".into()).await? == Some(10), "get");
    ensure!(d.get(&"zz".into()).await?.is_none(), "get of a missing key");
    ensure!(
        d.contains_key(&"b".into()).await? && !d.contains_key(&"q".into()).await?,
        "contains"
    );
    ensure!(
        d.keys().await? == ["c", "a", "b"],
        "insertion order: {:?}",
        d.keys().await?
    );
    ensure!(d.remove(&"c".into()).await? == Some(0), "remove");
    ensure!(
        d.items().await? == [("a".to_string(), 10), ("b".to_string(), 2)],
        "items"
    );
    ensure!(
        d.values().await? == [10, 2] && d.len().await? == 2,
        "values/len"
    );
    d.clear().await?;
    ensure!(d.len().await? == 0, "clear");
    m.shutdown().await?;
    Ok(())
}

async fn list_operations_follow_python() -> TestResult {
    // _TestContainers.test_list
    let m = Manager::start().await?;
    let l = m.list(0..5).await?;
    ensure!(
        l.get(-1).await? == Some(4) && l.get(5).await?.is_none(),
        "negative and out-of-range get"
    );
    l.append(5).await?;
    l.extend([6, 7]).await?;
    l.set(-2, 60).await?;
    match l.set(99, 0).await {
        Err(Error::Manager(msg)) => ensure!(msg.contains("out of range"), "message: {msg}"),
        other => return Err(format!("set out of range gave {other:?}").into()),
    }
    l.insert(-100, -1).await?; // clamped to the front, as in Python
    l.insert(100, 100).await?; // clamped to the end
    ensure!(l.pop(-1).await? == Some(100), "pop(-1)");
    ensure!(l.pop(0).await? == Some(-1), "pop(0)");
    l.reverse().await?;
    ensure!(
        l.to_vec().await? == [7, 60, 5, 4, 3, 2, 1, 0],
        "after reverse: {:?}",
        l.to_vec().await?
    );
    ensure!(l.len().await? == 8, "len");
    l.clear().await?;
    ensure!(l.is_empty().await?, "clear");
    Ok(())
}

/// `TestSyncManagerTypes._test_list`: the child's checks of a list holding `[5]`.
async fn check_list(l: ListProxy<i64>) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let got = (
        l.get(0).await.map_err(e)?,
        l.count(&5).await.map_err(e)?,
        l.index(&5).await.map_err(e)?,
    );
    if got != (Some(5), 1, Some(0)) {
        return Err(format!("[0], count(5), index(5): {got:?}"));
    }
    l.reverse().await.map_err(e)?;
    if l.len().await.map_err(e)? != 1 || l.pop(0).await.map_err(e)? != Some(5) {
        return Err("len() or pop(0)".into());
    }
    Ok(())
}

/// `TestSyncManagerTypes._test_dict`: the child's checks of a dict holding `{'foo': 5}`.
async fn check_dict(d: DictProxy<String, i64>) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let key = "foo".to_string();
    if d.len().await.map_err(e)? != 1 || d.get(&key).await.map_err(e)? != Some(5) {
        return Err("len() or get('foo')".into());
    }
    if d.items().await.map_err(e)? != [(key.clone(), 5)]
        || d.keys().await.map_err(e)? != [key.clone()]
        || d.values().await.map_err(e)? != [5]
    {
        return Err("items(), keys() or values()".into());
    }
    match d.popitem().await.map_err(e)? {
        Some((k, 5)) if k == key => Ok(()),
        other => Err(format!("popitem(): {other:?}")),
    }
}

/// `TestSyncManagerTypes.test_list` and `test_dict`: a child counts, finds and pops a
/// list's item and pops a dict's item; the parent then sees both empty.
async fn list_and_dict_methods_in_a_child() -> TestResult {
    let m = Manager::start().await?;
    let l = m.list::<i64>([]).await?;
    l.append(5).await?;
    let mut p = Process::new(check_list, (l.clone(),)).start().await?;
    support::join_ok(&mut p).await?;
    ensure!(l.len().await? == 0, "the list after the child");
    let d = m.dict::<String, i64>().await?;
    d.insert("foo".into(), 5).await?;
    let mut p = Process::new(check_dict, (d.clone(),)).start().await?;
    support::join_ok(&mut p).await?;
    ensure!(d.len().await? == 0, "the dict after the child");
    m.shutdown().await?;
    Ok(())
}

/// Python's `dict.setdefault`, `dict.update`, `dict.popitem` and `manager.dict(pairs)`
/// through a proxy: the value already there wins over the default, an update replaces in
/// place and appends the new keys, and `popitem` takes the latest pair (LIFO), `None` once
/// empty (Python's `KeyError`).
async fn dict_setdefault_update_popitem() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<String, i64>().await?;
    ensure!(
        d.setdefault("a".into(), 1).await? == 1,
        "setdefault of a new key"
    );
    ensure!(
        d.setdefault("a".into(), 2).await? == 1,
        "setdefault of a present key"
    );
    d.update([
        ("b".to_string(), 2),
        ("a".to_string(), 10),
        ("c".to_string(), 3),
    ])
    .await?;
    ensure!(
        d.items().await?
            == [
                ("a".to_string(), 10),
                ("b".to_string(), 2),
                ("c".to_string(), 3)
            ],
        "after update: {:?}",
        d.items().await?
    );
    ensure!(
        d.popitem().await? == Some(("c".into(), 3)),
        "popitem takes the latest"
    );
    ensure!(
        d.popitem().await? == Some(("b".into(), 2)),
        "then the one before"
    );
    ensure!(
        !d.contains_key(&"b".into()).await?,
        "a popped key is still found"
    );
    d.insert("b".into(), 20).await?;
    ensure!(
        d.keys().await? == ["a", "b"],
        "a key inserted again after popitem"
    );
    ensure!(
        d.popitem().await? == Some(("b".into(), 20)),
        "popitem after insert"
    );
    ensure!(
        d.popitem().await? == Some(("a".into(), 10)),
        "the last pair"
    );
    ensure!(d.popitem().await?.is_none(), "popitem of an empty dict");
    // `manager.dict(pairs)`: in order, the later value of a repeated key kept in place.
    let e = m
        .dict_from([
            ("x".to_string(), 1i64),
            ("y".to_string(), 2),
            ("x".to_string(), 3),
        ])
        .await?;
    ensure!(
        e.items().await? == [("x".to_string(), 3), ("y".to_string(), 2)],
        "dict_from: {:?}",
        e.items().await?
    );
    m.shutdown().await?;
    Ok(())
}

/// Python's `list.index`, `list.count`, `x in list` and `list.remove` through a proxy:
/// items are found by equal encodings, `remove` takes the first of equal items only, and
/// a value that is not there is `None` / `false` (Python's `ValueError`).
async fn list_search_and_remove() -> TestResult {
    let m = Manager::start().await?;
    let l = m.list([3, 1, 4, 1, 5]).await?;
    ensure!(l.index(&1).await? == Some(1), "index of the first 1");
    ensure!(l.index(&9).await?.is_none(), "index of a missing value");
    ensure!(l.count(&1).await? == 2 && l.count(&9).await? == 0, "count");
    ensure!(l.contains(&5).await? && !l.contains(&9).await?, "contains");
    ensure!(l.remove(&1).await?, "remove(1)");
    ensure!(l.to_vec().await? == [3, 4, 1, 5], "only the first 1 goes");
    ensure!(!l.remove(&9).await?, "remove of a missing value");
    ensure!(
        l.to_vec().await? == [3, 4, 1, 5],
        "a failed remove changes nothing"
    );
    m.shutdown().await?;
    Ok(())
}

/// `TestInitializers`' `initializer`: adds one to `ns.test`.
async fn count_in(ns: NamespaceProxy) -> Result<(), String> {
    let n: i64 = ns.get("test").await.map_err(|e| e.to_string())?;
    ns.set("test", n + 1).await.map_err(|e| e.to_string())
}

fn refuse(why: String) -> Result<(), String> {
    Err(why)
}

/// A plain initializer that blocks on a tokio runtime of its own, as a `Process` target may.
fn init_on_own_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the initializer");
    rt.block_on(tokio::task::yield_now());
}

/// A plain initializer runs as plain code, as a `Process` target does: it may block on a
/// runtime of its own instead of panicking with "Cannot start a runtime from within a
/// runtime" (the server's).
async fn a_plain_initializer_may_block_on_its_own_runtime() -> TestResult {
    let m = Manager::builder()
        .initializer(init_on_own_runtime, ())
        .start()
        .await?;
    let d = m.dict::<u8, u8>().await?;
    d.insert(1, 2).await?;
    ensure!(d.get(&1).await? == Some(2), "the server serves after it");
    m.shutdown().await?;
    Ok(())
}

/// `TestInitializers.test_manager_initializer`: a manager's server runs its initializer
/// (here, on another manager's namespace) before `start` returns; an initializer that fails
/// makes `start` fail with the initializer's error (Python's exception from it), and leaves
/// no server; `serve`, which starts no server process, refuses one.
async fn the_servers_initializer_runs_before_it_serves() -> TestResult {
    let m = Manager::start().await?;
    let ns = m.namespace().await?;
    ns.set("test", 0i64).await?;
    let other = Manager::builder()
        .initializer(count_in, (ns.clone(),))
        .start()
        .await?;
    ensure!(
        ns.get::<i64>("test").await? == 1,
        "the initializer had not run when start returned"
    );
    let d = other.dict::<u8, u8>().await?;
    d.insert(1, 2).await?;
    ensure!(d.get(&1).await? == Some(2), "the server serves after it");
    other.shutdown().await?;

    match Manager::builder()
        .initializer(refuse, ("no thanks".to_string(),))
        .start()
        .await
    {
        Err(Error::InitializerFailed { pid, message }) => ensure!(
            support::is_zombie_or_gone(pid) && message == r#"returned an error: "no thanks""#,
            "server {pid}: {message}"
        ),
        other => return Err(format!("a failing initializer gave {other:?}").into()),
    }
    match Manager::builder()
        .initializer(count_in, (ns.clone(),))
        .serve()
        .await
    {
        Err(Error::InvalidArgument(_)) => {}
        other => return Err(format!("serve with an initializer gave {other:?}").into()),
    }
    ensure!(
        ns.get::<i64>("test").await? == 1,
        "an initializer ran again"
    );
    m.shutdown().await?;
    Ok(())
}

async fn value_get_and_set() -> TestResult {
    // _TestValue via a manager
    let m = Manager::start().await?;
    let v = m.value((1u8, "x".to_string())).await?;
    ensure!(v.get().await? == (1, "x".to_string()), "initial value");
    v.set((2, "y".into())).await?;
    ensure!(v.get().await? == (2, "y".to_string()), "after set");
    Ok(())
}

async fn fill(d: DictProxy<String, u32>, l: ListProxy<u32>, v: ValueProxy<f64>) -> mp::Result<()> {
    d.insert("from".into(), std::process::id()).await?;
    l.reverse().await?;
    l.append(99).await?;
    v.set(3.5).await?;
    Ok(())
}

async fn proxies_work_in_children() -> TestResult {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let m = Manager::start_with(method).await?;
        let d = m.dict::<String, u32>().await?;
        let l = m.list([1u32, 2, 3]).await?;
        let v = m.value(0.0f64).await?;
        let mut p = Process::new(fill, (d.clone(), l.clone(), v.clone()))
            .start_method(method)
            .start()
            .await?;
        ensure!(p.join().await? == 0, "{method:?}: the child failed");
        ensure!(
            d.get(&"from".into()).await? == Some(p.pid()),
            "{method:?}: dict"
        );
        ensure!(l.to_vec().await? == [3, 2, 1, 99], "{method:?}: list");
        ensure!(v.get().await? == 3.5, "{method:?}: value");
    }
    Ok(())
}

async fn write_many(d: DictProxy<u32, u32>, worker: u32, n: u32) -> mp::Result<()> {
    for i in 0..n {
        d.insert(worker * 1000 + i, worker).await?;
    }
    Ok(())
}

async fn concurrent_writers_lose_nothing() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<u32, u32>().await?;
    let mut workers = Vec::new();
    for w in 0..6 {
        workers.push(
            Process::new(write_many, (d.clone(), w, 200))
                .start()
                .await?,
        );
    }
    for p in &mut workers {
        ensure!(p.join().await? == 0, "a writer failed");
    }
    ensure!(d.len().await? == 1200, "len {}", d.len().await?);
    for w in 0..6u32 {
        ensure!(
            d.get(&(w * 1000 + 199)).await? == Some(w),
            "worker {w}'s last key"
        );
    }
    Ok(())
}

async fn relay(d: DictProxy<String, u32>) -> mp::Result<()> {
    d.insert("depth 1".into(), 1).await?;
    let mut p = Process::new(record_depth, (d.clone(), 2)).start().await?;
    p.join().await?;
    Ok(())
}

async fn record_depth(d: DictProxy<String, u32>, depth: u32) -> mp::Result<()> {
    d.insert(format!("depth {depth}"), depth).await?;
    Ok(())
}

async fn proxies_travel_onwards_to_grandchildren() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<String, u32>().await?;
    let mut p = Process::new(relay, (d.clone(),)).start().await?;
    ensure!(p.join().await? == 0, "relay failed");
    ensure!(
        d.keys().await? == ["depth 1", "depth 2"],
        "keys {:?}",
        d.keys().await?
    );
    Ok(())
}

async fn a_stopped_server_fails_calls_naming_it() -> TestResult {
    let m = Manager::start().await?;
    let pid = m.pid().ok_or("no server process")?;
    let d = m.dict::<u8, u8>().await?;
    d.insert(1, 1).await?;
    m.shutdown().await?;
    ensure!(
        support::is_zombie_or_gone(pid),
        "server {pid} still running"
    );
    // The error names the server, by its pid (a local manager has no address).
    match d.get(&1).await {
        Err(e @ Error::ManagerLost { .. }) => ensure!(
            e.to_string()
                .starts_with(&format!("the manager server (pid {pid}) is gone: ")),
            "after shutdown: {e}"
        ),
        other => return Err(format!("after shutdown: {other:?}").into()),
    }
    // A proxy that had no connection yet fails the same way.
    let m = Manager::start().await?;
    let fresh: ListProxy<u8> = m.list([1u8]).await?;
    drop(m); // Python's `with` block ends: the server stops
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        // The server ends a moment after SIGTERM; until then calls may still succeed.
        while fresh.len().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    ensure!(gone, "the list outlived its manager");
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_SharedMemoryServer_ignores_sigint` for a plain
/// manager (bpo-36368 made every Python manager server ignore SIGINT): a terminal's Ctrl-C,
/// Ctrl-\ and Ctrl-Z reach the server with the rest of the foreground group, and it serves
/// on, its objects intact, until its owner shuts it down.
async fn a_terminals_signals_leave_the_server_to_its_owner() -> TestResult {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let m = Manager::start_with(method).await?;
        let pid = m.pid().ok_or("no server process")?;
        // An answer means the server is serving, past the point where it ignores them.
        let d = m.dict::<u8, u8>().await?;
        d.insert(1, 1).await?;
        for sig in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGTSTP] {
            kill(Pid::from_raw(pid as i32), sig)?;
        }
        // A signal that ended or stopped the server was acted on before kill() returned,
        // so these calls would fail or wait.
        let r = tokio::time::timeout(Duration::from_secs(20), async {
            d.insert(2, 2).await?;
            d.get(&1).await
        })
        .await;
        ensure!(
            matches!(r, Ok(Ok(Some(1)))),
            "{method:?}: the server after a terminal's signals: {r:?}"
        );
        m.shutdown().await?;
        ensure!(
            support::is_zombie_or_gone(pid),
            "{method:?}: server {pid} still running after shutdown"
        );
    }
    Ok(())
}

async fn cancelled_calls_leave_the_proxy_usable() -> TestResult {
    let m = Manager::start().await?;
    let d = m.dict::<u32, u32>().await?;
    for i in 0..50 {
        // Each call may be dropped anywhere: before, during or after its request.
        let _ =
            tokio::time::timeout(Duration::from_micros(i * 20), d.insert(i as u32, i as u32)).await;
    }
    d.insert(1000, 1).await?;
    ensure!(
        d.get(&1000).await? == Some(1),
        "the proxy answers correctly after cancellations"
    );
    ensure!(d.len().await? <= 51, "len {}", d.len().await?);
    Ok(())
}

// A lone call writes its request and takes its reply itself; a `get` dropped at any point
// (before its request left, while it waited, after its item was on the way) gives its item
// back. Every item put comes out once, in order, whatever the cancellations.
async fn cancelled_gets_lose_no_item() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<u32>().await?;
    let mut got = Vec::new();
    for i in 0..400u32 {
        q.put(i).await.map_err(mp::Error::from)?;
        let patience = Duration::from_micros(u64::from(i % 40) * 3);
        if let Ok(r) = tokio::time::timeout(patience, q.get()).await {
            got.push(r?);
        }
    }
    loop {
        match q.get_nowait().await {
            Ok(v) => got.push(v),
            Err(Error::Empty) => break,
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(
        got == (0..400).collect::<Vec<_>>(),
        "items lost, doubled or out of order: {} of 400, first wrong at {:?}",
        got.len(),
        got.iter().zip(0..).position(|(&v, i)| v != i)
    );
    Ok(())
}

async fn values_holding_descriptors_are_refused() -> TestResult {
    let m = Manager::start().await?;
    let (a, _b) = std::os::unix::net::UnixStream::pair()?;
    let r = m.value(mp::Fd::from(std::os::fd::OwnedFd::from(a))).await;
    ensure!(matches!(r, Err(Error::Encode { .. })), "{r:?}");
    Ok(())
}

/// In a process of its own (the frame limit is process-wide, and its manager inherits it):
/// with frames limited to 1 MiB, a request over it and a reply over it each fail their call
/// with `FrameTooLarge`, and the connection lives on with every object it holds; so does a
/// reply over the limit of a client whose limit is below its server's.
/// Puts an item of 2 MiB of sevens, a moment after it starts.
async fn put_after_a_while(q: QueueProxy<serde_bytes::ByteBuf>) -> Result<(), String> {
    mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.put(serde_bytes::ByteBuf::from(vec![7u8; 2 << 20]))
        .await
        .map_err(|e| format!("put: {e}"))
}

async fn oversized_calls_fail_alone() -> Result<(), String> {
    use serde_bytes::ByteBuf;
    let step = |what: &'static str| move |e: Error| format!("{what}: {e}");
    mp::set_max_frame_size(1 << 20);
    let m = Manager::start().await.map_err(step("start"))?;
    let d = m.dict::<String, ByteBuf>().await.map_err(step("dict"))?;
    let big = ByteBuf::from(vec![1u8; 2 << 20]);
    match d.insert("big".into(), big).await {
        Err(Error::FrameTooLarge { .. }) => {}
        r => return Err(format!("a request over the limit: {r:?}")),
    }
    d.insert("small".into(), ByteBuf::from(vec![2u8; 1000]))
        .await
        .map_err(step("a request after it"))?;
    let l = m.list(Vec::<ByteBuf>::new()).await.map_err(step("list"))?;
    for _ in 0..3 {
        l.append(ByteBuf::from(vec![3u8; 400_000]))
            .await
            .map_err(step("append"))?;
    }
    match l.to_vec().await {
        Err(Error::FrameTooLarge { .. }) => {}
        r => return Err(format!("a reply over the limit: {:?}", r.map(|v| v.len()))),
    }
    let (n, len) = (l.len().await, d.len().await);
    if !matches!((&n, &len), (Ok(3), Ok(1))) {
        return Err(format!("after both: list and dict lengths {n:?} {len:?}"));
    }
    // A client whose limit is below its server's, lowered after it connected: the server
    // measures the reply by the client's limit, and the call fails alone.
    mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
    let m = Manager::start().await.map_err(step("second start"))?;
    let l = m.list(Vec::<ByteBuf>::new()).await.map_err(step("list"))?;
    for _ in 0..3 {
        l.append(ByteBuf::from(vec![4u8; 400_000]))
            .await
            .map_err(step("append"))?;
    }
    mp::set_max_frame_size(1 << 20);
    match l.to_vec().await {
        Err(Error::FrameTooLarge { .. }) => {}
        r => {
            return Err(format!(
                "a reply over the client's limit: {:?}",
                r.map(|v| v.len())
            ));
        }
    }
    match l.len().await {
        Ok(3) => {}
        other => return Err(format!("after a reply over the client's limit: {other:?}")),
    }
    // A queue's item over the client's limit stays in the queue, at its head, for a get
    // that can take it: one there already, and one put while the get waited
    // (A maxsize that no ring takes keeps each queue in the server.)
    mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
    let server_queue = || m.queue_with_maxsize::<ByteBuf>(1 << 30);
    let q = server_queue().await.map_err(step("queue"))?;
    let item = |b: u8| ByteBuf::from(vec![b; 2 << 20]);
    q.put(item(5)).await.map_err(|e| format!("put: {e}"))?;
    q.put(item(6)).await.map_err(|e| format!("put: {e}"))?;
    let waiting = server_queue().await.map_err(step("queue"))?;
    mp::set_max_frame_size(1 << 20);
    // Put by another process, whose limit is the default (a child starts with its parent's).
    let putter = Process::new(put_after_a_while, (waiting.clone(),)).start();
    let (got, putter) = tokio::join!(waiting.get(), putter);
    let mut putter = putter.map_err(step("start the putter"))?;
    match putter.join().await {
        Ok(0) => {}
        other => return Err(format!("the putter: {other:?}")),
    }
    let taken = q.get().await;
    if !matches!(
        (&taken, &got),
        (
            Err(Error::FrameTooLarge { .. }),
            Err(Error::FrameTooLarge { .. })
        )
    ) {
        return Err(format!(
            "gets of items over the client's limit: {:?} {:?}",
            taken.map(|v| v.len()),
            got.map(|v| v.len())
        ));
    }
    mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
    let firsts = (q.get().await, waiting.get().await, q.qsize().await);
    match firsts {
        (Ok(a), Ok(b), Ok(1)) if a[0] == 5 && b[0] == 7 => Ok(()),
        (a, b, n) => Err(format!(
            "after gets over the client's limit: first items {:?} {:?}, {n:?} left",
            a.map(|v| v.first().copied()),
            b.map(|v| v.first().copied())
        )),
    }
}

/// A client whose limit is above its server's (the server started while the limit was
/// lower): a request over the server's limit fails alone with `FrameTooLarge`, on a
/// connection that has served before and on one whose first request it is, and the objects
/// the client holds live on. (The server refused the frame and closed the connection: the
/// client lost every object it held, and was told that the server was gone.)
async fn requests_over_the_servers_limit_fail_alone() -> Result<(), String> {
    use serde_bytes::ByteBuf;
    let step = |what: &'static str| move |e: Error| format!("{what}: {e}");
    mp::set_max_frame_size(1 << 20);
    let m = Manager::start().await.map_err(step("start"))?;
    mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
    let d = m.dict::<u8, ByteBuf>().await.map_err(step("dict"))?;
    let big = || ByteBuf::from(vec![1u8; 2 << 20]);
    let small = ByteBuf::from(vec![2u8; 1000]);
    d.insert(0, small.clone()).await.map_err(step("small"))?;
    let over = d.insert(1, big()).await;
    if !matches!(over, Err(Error::FrameTooLarge { max, .. }) if max == 1 << 20) {
        return Err(format!("a request over the server's limit: {over:?}"));
    }
    // The first request of another runtime's connection.
    let fresh = {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(rt.block_on(d.insert(2, big())))
        })
        .await
        .map_err(|e| e.to_string())??
    };
    if !matches!(fresh, Err(Error::FrameTooLarge { .. })) {
        return Err(format!(
            "a connection's first request over the limit: {fresh:?}"
        ));
    }
    match d.items().await {
        Ok(items) if items == [(0, small)] => Ok(()),
        other => Err(format!("after: {:?}", other.map(|i| i.len()))),
    }
}

async fn a_call_over_the_frame_limit_fails_alone() -> TestResult {
    let mut first = Process::new(oversized_calls_fail_alone, ()).start().await?;
    let mut second = Process::new(requests_over_the_servers_limit_fail_alone, ())
        .start()
        .await?;
    for p in [&mut first, &mut second] {
        let code = p.join().await?;
        ensure!(code == 0, "a child failed (its stderr says how): {code}");
    }
    Ok(())
}

async fn example_manager_dict_list_value() -> TestResult {
    let out = run_example("manager_dict_list_value").await?;
    let expected = "(\"name\", \"dfg\")\n(\"age\", 38)\n(\"sex\", \"Male\")\n(\"affiliation\", \"SDIBT\")\n\
                    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]\n3\n";
    ensure!(out == expected, "output:\n{out}");
    Ok(())
}

async fn example_manager_return_dict() -> TestResult {
    let out = run_example("manager_return_dict").await?;
    let mut lines: Vec<&str> = out.lines().collect();
    let values = lines.pop().ok_or("no output")?;
    lines.sort();
    ensure!(
        lines
            == [
                "0 represent!",
                "1 represent!",
                "2 represent!",
                "3 represent!",
                "4 represent!"
            ],
        "output:\n{out}"
    );
    let mut got: Vec<u32> = values
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    got.sort();
    ensure!(got == [0, 1, 2, 3, 4], "values: {values}");
    Ok(())
}
