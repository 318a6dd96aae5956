//! The pool's API, ported from CPython's `_TestPool` in `Lib/test/_test_multiprocessing.py`
//! (the Python case each test comes from is named): apply, map, imap, results, close,
//! terminate, cancel, and values that cannot cross.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use support::pool::*;
use support::{TestResult, eventually, exists, temp_path, test};
use tokio_multiprocessing::{self as mp, Error, ExitCause, Pool};

// test_apply
async fn apply() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(pool.apply(sqr, (5,)).await? == 25, "sqr(5)");
    ensure!(pool.apply(mul, (3, 4)).await? == 12, "mul(3, 4)");
    ensure!(
        pool.apply(pid, ()).await? != std::process::id(),
        "ran in a worker"
    );
    Ok(())
}

// test_map, test_map_chunksize
async fn map() -> TestResult {
    let pool = Pool::new(2).await?;
    let want: Vec<i64> = (0..100).map(|x| x * x).collect();
    ensure!(pool.map(sqr, 0..100).await? == want, "map");
    ensure!(
        pool.map(sqr, 0..100).chunksize(1).await? == want,
        "chunksize 1"
    );
    ensure!(
        pool.map(sqr, 0..100).chunksize(7).await? == want,
        "chunksize 7"
    );
    ensure!(
        pool.map(sqr, 0..100).chunksize(1000).await? == want,
        "one chunk"
    );
    let mut r = pool.map_async(sqr, 0..10);
    ensure!(
        r.get_timeout(Duration::from_secs(20)).await? == want[..10],
        "map_async"
    );
    Ok(())
}

// test_empty_iterable
async fn empty_iterable() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(
        pool.map(sqr, Vec::<i64>::new()).await?.is_empty(),
        "map of nothing"
    );
    ensure!(
        pool.starmap(mul, Vec::<(i64, i64)>::new())
            .await?
            .is_empty(),
        "starmap"
    );
    let n = pool.imap(sqr, Vec::<i64>::new()).count().await;
    ensure!(n == 0, "imap of nothing yielded {n}");
    Ok(())
}

// test_starmap, test_starmap_async
async fn starmap() -> TestResult {
    let pool = Pool::new(2).await?;
    let args: Vec<(i64, i64)> = (0..10).map(|i| (i, i + 1)).collect();
    let want: Vec<i64> = args.iter().map(|(a, b)| a * b).collect();
    ensure!(pool.starmap(mul, args.clone()).await? == want, "starmap");
    ensure!(
        pool.starmap_async(mul, args).await? == want,
        "starmap_async"
    );
    Ok(())
}

// On a current-thread runtime, a loop that takes the results an `imap` stream already holds
// (a chunk's many results arrive at once) lets the runtime's other tasks run, as a loop of
// receives on a tokio channel does: the stream spends the task's budget.
async fn a_loop_over_results_an_imap_holds_lets_other_tasks_run() -> TestResult {
    const CHUNK: i64 = 10_000;
    let pool = Pool::new(1).await?;
    let mut s = pool.imap(sqr, 0..CHUNK).chunksize(CHUNK as usize);
    ensure!(matches!(s.next().await, Some(Ok(0))), "the first result");
    // Locked only within each poll, so that the lock spends nothing.
    let s = &std::sync::Mutex::new(s);
    let ran = support::lets_others_run(CHUNK as u32 - 1, |n| async move {
        let x = i64::from(n) + 1;
        let next = std::future::poll_fn(|cx| support::locked(s).poll_next_unpin(cx));
        match next.await {
            Some(Ok(got)) => ensure!(got == x * x, "result {x} was {got}"),
            other => return Err(format!("result {x}: {other:?}").into()),
        }
        Ok(())
    })
    .await?;
    ensure!(
        ran,
        "the other task waited for the stream's results to run out"
    );
    Ok(())
}

// A loop that waits on finished handles (`wait`, `wait_timeout`, `ready`), as one that polls
// for another task's flag would, lets the runtime's other tasks run.
async fn a_loop_of_waits_on_finished_results_lets_other_tasks_run() -> TestResult {
    let pool = Pool::new(1).await?;
    let (mut one, mut many) = (pool.apply_async(sqr, (3,)), pool.map_async(sqr, 0..4));
    one.wait().await;
    many.wait().await;
    // Locked only within each poll, so that the lock spends nothing.
    let (one, many) = (&std::sync::Mutex::new(one), &std::sync::Mutex::new(many));
    support::none_starve(
        &["wait", "wait_timeout", "map wait"],
        10_000,
        |what, _| async move {
            let finished = std::future::poll_fn(|cx| {
                let (mut one, mut many) = (support::locked(one), support::locked(many));
                match what {
                    "wait" => Box::pin(one.wait()).as_mut().poll(cx).map(|()| true),
                    "wait_timeout" => Box::pin(one.wait_timeout(Duration::from_secs(1)))
                        .as_mut()
                        .poll(cx),
                    _ => Box::pin(many.wait()).as_mut().poll(cx).map(|()| true),
                }
            });
            ensure!(finished.await, "{what}: a finished task timed out");
            Ok(())
        },
    )
    .await
}

// test_imap, test_imap_unordered
async fn imap() -> TestResult {
    let pool = Pool::new(2).await?;
    let got: Vec<i64> = pool
        .imap(sqr, 0..100)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap order"
    );
    let got: Vec<i64> = pool
        .imap(sqr, 0..100)
        .chunksize(7)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap chunks"
    );
    let mut got: Vec<i64> = pool
        .imap_unordered(sqr, 0..100)
        .chunksize(3)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    got.sort();
    ensure!(
        got == (0..100).map(|x| x * x).collect::<Vec<_>>(),
        "imap_unordered set"
    );
    Ok(())
}

/// Takes the first 1,000 results of `results`, an imap of `sqr` over 0, 1, 2, ... on a pool
/// of 2 workers, in chunks of 4, and checks that `read` (its inputs read) stayed at most its
/// window ahead of them: 4 chunks per worker, of 4 inputs each.
async fn first_1000_read_a_window_ahead(results: mp::IMap<i64>, read: &AtomicUsize) -> TestResult {
    let got: Vec<i64> = results
        .chunksize(4)
        .take(1000)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(
        got == (0..1000).map(|x| x * x).collect::<Vec<_>>(),
        "first 1000"
    );
    let n = read.load(Ordering::Relaxed);
    ensure!(n <= 1000 + 4 * 2 * 4, "read {n} inputs for 1000 results");
    Ok(())
}

// The issue's own: an endless iterator, 1,000 results, a bounded window of inputs read.
async fn imap_endless_input_is_read_lazily() -> TestResult {
    let pool = Pool::new(2).await?;
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = pulled.clone();
    let input = (0i64..).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    first_1000_read_a_window_ahead(pool.imap(sqr, input), &pulled).await?;
    let mut s = pool.imap_unordered(sqr, 0i64..).take(1000);
    let mut k = 0;
    while let Some(r) = s.next().await {
        r?;
        k += 1;
    }
    ensure!(k == 1000, "imap_unordered took {k}");
    Ok(())
}

/// A bounded channel whose sender is fed `items` by a task of its own, and its receiver.
fn fed(items: impl Iterator<Item = i64> + Send + 'static) -> futures::channel::mpsc::Receiver<i64> {
    use futures::SinkExt;
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    tokio::spawn(async move {
        for x in items {
            if tx.send(x).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    rx
}

// Python's imap over an iterator a thread feeds: an asynchronous input, fed while the
// results are read, gives each result once, in input order or as they complete.
async fn imap_stream_yields_a_result_for_each_item_of_its_input() -> TestResult {
    let pool = Pool::new(2).await?;
    let want: Vec<i64> = (0..500).map(|x| x * x).collect();
    let got: Vec<i64> = pool
        .imap_stream(sqr, fed(0..500))
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(got == want, "imap_stream order: {got:?}");
    let got: Vec<i64> = pool
        .imap_stream(sqr, fed(0..500))
        .chunksize(7)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    ensure!(got == want, "imap_stream chunks of 7: {got:?}");
    let mut got: Vec<i64> = pool
        .imap_unordered_stream(sqr, fed(0..500))
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    got.sort();
    ensure!(got == want, "imap_unordered_stream set: {got:?}");
    let none = pool
        .imap_stream(sqr, futures::stream::empty::<i64>())
        .count()
        .await;
    ensure!(none == 0, "an empty input gave {none} results");
    // A failing item is named by its place in the input.
    let items = futures::stream::iter(0u8..=255);
    let got: Vec<_> = pool
        .imap_stream(byte_or_boom, items)
        .chunksize(50)
        .collect()
        .await;
    ensure!(got.len() == 256, "{} results", got.len());
    let failed: Vec<_> = got.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(
        failed.len() == 1 && failed[0].input_index() == Some(77),
        "failures: {failed:?}"
    );
    Ok(())
}

// An item that comes alone goes to a worker at once, whatever the chunk size: a caller
// that sends the next item only after the result of the last one is answered each time.
async fn imap_stream_sends_an_item_that_comes_alone_at_once() -> TestResult {
    use futures::SinkExt;
    let pool = Pool::new(2).await?;
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    let mut results = pool.imap_stream(sqr, rx).chunksize(100);
    for x in 0..20 {
        tx.send(x).await?;
        let r = tokio::time::timeout(Duration::from_secs(20), results.next()).await;
        ensure!(
            matches!(r, Ok(Some(Ok(y))) if y == x * x),
            "item {x} alone gave {r:?}"
        );
    }
    drop(tx);
    ensure!(
        results.next().await.is_none(),
        "the results went on past the input's end"
    );
    Ok(())
}

// The input is polled only while the window has room: a fast, endless input is read a
// bounded window ahead of the results taken, and one with nothing to give is not polled
// in a loop while it waits.
async fn imap_stream_polls_its_input_only_as_it_needs() -> TestResult {
    let pool = Pool::new(2).await?;
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let endless = futures::stream::iter(0i64..).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    first_1000_read_a_window_ahead(pool.imap_stream(sqr, endless), &polled).await?;

    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let silent = futures::stream::poll_fn(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
        std::task::Poll::<Option<i64>>::Pending
    });
    let mut results = pool.imap_stream(sqr, silent);
    let r = tokio::time::timeout(Duration::from_millis(300), results.next()).await;
    ensure!(r.is_err(), "a silent input gave {r:?}");
    let n = polls.load(Ordering::Relaxed);
    ensure!(
        n <= 2,
        "a silent input was polled {n} times while the results waited"
    );
    Ok(())
}

// A stream waiting for its input, with nothing in flight, hears of its pool's end: it
// yields the pool's refusal once, then ends, though its input never gives an item.
async fn an_imap_stream_waiting_for_input_ends_with_its_pool() -> TestResult {
    for terminate in [true, false] {
        let pool = Pool::new(1).await?;
        let (tx, rx) = futures::channel::mpsc::channel::<i64>(1);
        let mut results = pool.imap_stream(sqr, rx);
        let early = tokio::time::timeout(Duration::from_millis(100), results.next()).await;
        ensure!(early.is_err(), "a stream with no input gave {early:?}");
        if terminate {
            pool.terminate().await?;
        } else {
            drop(pool);
        }
        let r = tokio::time::timeout(Duration::from_secs(20), results.next()).await?;
        ensure!(
            matches!(&r, Some(Err(e)) if e.is_pool_closed()),
            "terminate {terminate}: {r:?}"
        );
        let end = tokio::time::timeout(Duration::from_secs(20), results.next()).await?;
        ensure!(end.is_none(), "terminate {terminate}, then: {end:?}");
        drop(tx);
    }
    Ok(())
}

/// Puts `0..n` on `q`, then shuts it down.
async fn put_then_shut_down(q: mp::Queue<i64>, n: i64) -> mp::Result<()> {
    for x in 0..n {
        q.put(x).await?;
    }
    q.shutdown();
    Ok(())
}

// A queue that another process fills, as a stream, feeds a pool: each item is mapped once,
// in order, and the results end when the queue is shut down.
async fn a_queue_filled_by_another_process_feeds_imap_stream() -> TestResult {
    let pool = Pool::new(2).await?;
    let q = mp::Queue::<i64>::new()?;
    let mut producer = support::start(put_then_shut_down, (q.clone(), 300)).await?;
    let items = q.into_stream().map(|r| r.unwrap_or(-1));
    let got: Vec<i64> = pool
        .imap_stream(sqr, items)
        .map(|r| r.unwrap_or(-1))
        .collect()
        .await;
    support::join_ok(&mut producer).await?;
    ensure!(
        got == (0..300).map(|x| x * x).collect::<Vec<_>>(),
        "got {got:?}"
    );
    Ok(())
}

// Python's `it = pool.imap(f, xs); pool.close(); list(it); pool.join()` with an input still
// arriving: the items that come after the close run, and `join` waits for the input's end.
async fn an_input_stream_made_before_close_runs_every_item() -> TestResult {
    use futures::SinkExt;
    let pool = Pool::new(2).await?;
    let (mut tx, rx) = futures::channel::mpsc::channel(1);
    let mut results = pool.imap_stream(sqr, rx);
    pool.close();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(r) = results.next().await {
            got.push(r.unwrap_or(-1));
        }
        got
    });
    {
        let join = pool.join();
        tokio::pin!(join);
        for x in 0..10 {
            tx.send(x).await?;
        }
        let early = tokio::time::timeout(Duration::from_millis(300), &mut join).await;
        ensure!(early.is_err(), "join returned while the input was open");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(20), join).await??;
    }
    let got = reader.await?;
    ensure!(
        got == (0..10).map(|x| x * x).collect::<Vec<_>>(),
        "after close: {got:?}"
    );
    Ok(())
}

// test_async
async fn apply_async() -> TestResult {
    let pool = Pool::new(2).await?;
    let mut r = pool.apply_async(sqr, (7,));
    ensure!(r.get_timeout(Duration::from_secs(20)).await? == 49, "get");
    let mut r = pool.apply_async(sqr, (8,));
    let v = (&mut r).await?;
    ensure!(v == 64, "await");
    ensure!(r.ready(), "ready after the result came");
    let hs: Vec<_> = (0..200).map(|i| pool.apply_async(sqr, (i,))).collect();
    let v = futures::future::try_join_all(hs).await?;
    ensure!(
        v == (0..200).map(|x| x * x).collect::<Vec<_>>(),
        "200 at once"
    );
    Ok(())
}

// test_async_timeout: a timed-out get leaves the task running; it can be awaited later.
async fn get_timeout_leaves_task_running() -> TestResult {
    let pool = Pool::new(1).await?;
    let gate = temp_path("gate");
    let mut r = pool.apply_async(wait_for_file, (gate.to_string(),));
    let e = r.get_timeout(Duration::from_millis(10)).await;
    ensure!(
        matches!(e, Err(Error::Timeout)),
        "expected Timeout, got {e:?}"
    );
    ensure!(!r.ready(), "not ready yet");
    ensure!(
        r.successful().is_none(),
        "successful() is None while running"
    );
    std::fs::write(&gate, "open")?;
    let worker = r.await?;
    ensure!(worker != std::process::id(), "ran in a worker");
    Ok(())
}

// test_async_timeout's wait: `wait(timeout)` on a task that has not finished says so and
// leaves it running; once it has finished, `wait` takes nothing: `ready()` and
// `successful()` tell how it went and the result is still there to await, for one task
// and for a map, a failed one included.
/// Whether a handle's answer says it handed its result out already: a misuse
/// (`InvalidArgument`), not a failure of the task.
fn handed_out_already<T>(r: &Result<T, mp::TaskError>) -> bool {
    matches!(
        r.as_ref().map_err(|e| e.caller_error()),
        Err(Some(mp::Error::InvalidArgument(_)))
    )
}

async fn wait_leaves_the_result_in_the_handle() -> TestResult {
    let pool = Pool::new(2).await?;
    let gate = temp_path("wait-gate");
    let mut r = pool.apply_async(wait_for_file, (gate.to_string(),));
    let mut m = pool.map_async(wait_for_file, vec![gate.to_string(); 3]);
    ensure!(
        !r.wait_timeout(Duration::from_millis(10)).await,
        "a task waiting for its gate finished"
    );
    ensure!(
        !m.wait_timeout(Duration::from_millis(10)).await,
        "a map waiting for its gate finished"
    );
    ensure!(!r.ready() && !m.ready(), "ready before the gate opened");
    std::fs::write(&gate, "open")?;
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        r.wait().await;
        m.wait().await;
    })
    .await;
    ensure!(waited.is_ok(), "wait did not return after the gate opened");
    ensure!(r.ready() && r.successful() == Some(true), "the task: {r:?}");
    ensure!(m.ready() && m.successful() == Some(true), "the map: {m:?}");
    ensure!((&mut r).await? != std::process::id(), "the task's result");
    // Handed out once: awaited again, the handle says so, as a misuse, not a broken pipe.
    let again = (&mut r).await;
    ensure!(handed_out_already(&again), "a second await: {again:?}");
    ensure!(
        r.successful() == Some(true),
        "successful() after a second await: {r:?}"
    );
    ensure!((&mut m).await?.len() == 3, "the map's results");
    // The map's handle too: awaited again, an error, not an empty list.
    let again = (&mut m).await;
    ensure!(
        handed_out_already(&again),
        "a map's second await: {again:?}"
    );
    ensure!(
        m.successful() == Some(true),
        "a map's successful() after a second await: {m:?}"
    );

    let mut f = pool.map_async(boom, 0..6);
    ensure!(
        f.wait_timeout(Duration::from_secs(30)).await,
        "a failing map did not finish"
    );
    ensure!(
        f.successful() == Some(false),
        "successful() of a failed map"
    );
    let e = f.await;
    ensure!(
        e.as_ref().is_err_and(|e| e.input_index() == Some(3)),
        "the failed map: {e:?}"
    );
    Ok(())
}

/// In a child whose stderr is the file at `path`: a pool with `print_panics(print)` runs a
/// task that panics; the panic comes back as the task's error either way.
async fn panic_in_a_pool_with_stderr_at(path: String, print: bool) -> Result<(), String> {
    let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    nix::unistd::dup2_stderr(&file).map_err(|e| e.to_string())?;
    let pool = Pool::builder()
        .processes(1)
        .print_panics(print)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    match pool.apply(boom, (3,)).await {
        Err(e) if e.panic_message() == Some("boom at 3") => {}
        other => return Err(format!("boom(3): {other:?}")),
    }
    pool.terminate().await.map_err(|e| e.to_string())
}

/// `PoolBuilder::print_panics`: a task's panic is printed on the worker's stderr only when
/// asked (by default it travels in the error alone, so a progress bar stays whole).
async fn print_panics_prints_a_task_panic_on_the_worker_stderr_only_when_asked() -> TestResult {
    for print in [false, true] {
        let path = temp_path("stderr");
        let mut p =
            support::start(panic_in_a_pool_with_stderr_at, (path.to_string(), print)).await?;
        support::join_ok(&mut p).await?;
        let stderr = std::fs::read_to_string(&*path)?;
        ensure!(
            stderr.contains("boom at 3") == print,
            "print_panics({print}): the worker's stderr was {stderr:?}"
        );
    }
    Ok(())
}

// test_traceback / test_wrapped_exception: a panic fails that task only, with its message.
async fn panic_fails_that_task_only() -> TestResult {
    let pool = Pool::new(2).await?;
    let before = worker_pids(&pool).await?;
    let e = pool.apply(boom, (3,)).await;
    ensure!(e.as_ref().is_err_and(|e| e.is_panic()), "is_panic: {e:?}");
    let e = e.err().ok_or("boom(3) succeeded")?;
    ensure!(e.panic_message() == Some("boom at 3"), "{e:?}");
    ensure!(
        e.panic_location()
            .is_some_and(|at| at.contains("tests/support/pool.rs:")),
        "the panic's location: {:?}",
        e.panic_location()
    );
    ensure!(e.to_string().contains("boom at 3"), "{e}");
    ensure!(pool.apply(boom, (4,)).await? == 4, "next task");
    let mut m = pool.map(boom, 0..10).chunksize(2).submit();
    let e = (&mut m).await;
    ensure!(
        e.as_ref()
            .is_err_and(|e| e.panic_message() == Some("boom at 3") && e.input_index() == Some(3)),
        "map: {e:?}"
    );
    // The failure stays with the map, as Python's `get()` raises again.
    ensure!(
        m.successful() == Some(false),
        "successful() after a failed map"
    );
    let again = m.get_timeout(Duration::from_secs(20)).await;
    ensure!(
        matches!(&again, Err(mp::Error::Task(e)) if e.input_index() == Some(3)),
        "the map awaited again: {again:?}"
    );
    let items: Vec<_> = pool.imap(boom, 0..6).collect().await;
    ensure!(
        items.iter().filter(|r| r.is_err()).count() == 1,
        "one failed item"
    );
    ensure!(
        items[3].is_err() && items[5].as_ref().ok() == Some(&5),
        "{items:?}"
    );
    let mut r = pool.apply_async(boom, (3,));
    ensure!(
        tokio::time::timeout(Duration::from_secs(20), &mut r)
            .await
            .is_ok(),
        "finished"
    );
    ensure!(
        r.successful() == Some(false),
        "successful() is false after a panic"
    );
    ensure!(
        worker_pids(&pool).await? == before,
        "a panic replaces no worker"
    );
    Ok(())
}

// Arguments and results larger than a socket's buffer, several in flight per worker.
async fn large_arguments_and_results() -> TestResult {
    let pool = Pool::new(2).await?;
    let blobs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 600 << 10]).collect();
    let hs: Vec<_> = blobs
        .iter()
        .map(|b| pool.apply_async(reverse, (b.clone(),)))
        .collect();
    let out = futures::future::try_join_all(hs).await?;
    ensure!(out == blobs, "apply_async echoes");
    let out = pool.map(reverse, blobs.clone()).chunksize(1).await?;
    ensure!(out == blobs, "map echoes");
    Ok(())
}

/// A large argument that fails to encode only after its first megabytes.
#[derive(Serialize, Deserialize)]
struct LargeThenUnencodable {
    blob: Vec<u8>,
    tail: Unencodable,
}

fn take_large_then_unencodable(v: LargeThenUnencodable) -> usize {
    v.blob.len()
}

/// Arguments and results over a MiB are encoded and decoded on blocking threads: they
/// arrive whole; a `close()` right after submitting one waits for it; a cancel that reaches
/// the pool before its arguments are encoded still cancels it; an encoding that fails past
/// its first MiB fails its call alone.
async fn large_values_cross_off_the_runtime_thread() -> TestResult {
    let pool = Pool::new(1).await?;
    let blob = |i: u8| -> Vec<u8> { (0..3u32 << 20).map(|j| (j % 251) as u8 ^ i).collect() };
    let reversed = |mut v: Vec<u8>| {
        v.reverse();
        v
    };
    let hs: Vec<_> = (0..4)
        .map(|i| pool.apply_async(reverse, (blob(i),)))
        .collect();
    let out = futures::future::try_join_all(hs).await?;
    ensure!(
        out.into_iter().eq((0..4).map(|i| reversed(blob(i)))),
        "3 MiB values came back changed"
    );

    let gate = temp_path("large-gate");
    let blocker = pool.apply_async(block_until_file, (gate.to_string(),));
    let mut queued = pool.apply_async(reverse, (blob(9),));
    queued.cancel_if_queued();
    let r = tokio::time::timeout(Duration::from_secs(20), &mut queued).await;
    std::fs::write(&gate, b"")?;
    match r {
        Ok(Err(e)) if e.is_cancelled() => {}
        other => return Err(format!("a cancelled large task gave {other:?}").into()),
    }
    ensure!(blocker.await?, "the blocking task saw its gate");

    let bad = LargeThenUnencodable {
        blob: vec![1; 2 << 20],
        tail: Unencodable,
    };
    match pool.apply(take_large_then_unencodable, (bad,)).await {
        Err(e) if e.to_string().contains("refuses") => {}
        other => return Err(format!("expected the encoding's error, got {other:?}").into()),
    }

    let last = pool.apply_async(reverse, (blob(7),));
    pool.close();
    pool.join().await?;
    ensure!(
        last.await? == reversed(blob(7)),
        "the task submitted before close ran"
    );
    Ok(())
}

/// An item of `q` at once, or `Error::Empty`.
fn take_now(q: mp::Queue<u32>) -> mp::Result<u32> {
    q.get_nowait()
}

/// The size of the file at `path`, or the error of the system.
fn size_of(path: String) -> mp::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

// A task may return the crate's own `Result`: an error met in the worker reaches the caller
// as itself, as Python pickles a worker's exception (a `queue.Empty` in the worker is one
// in the caller), and `??` gives it.
async fn a_task_returns_the_crates_errors_as_themselves() -> TestResult {
    let pool = Pool::new(1).await?;
    let q = mp::Queue::<u32>::new()?;
    match pool.apply(take_now, (q.clone(),)).await? {
        Err(Error::Empty) => {}
        other => return Err(format!("an empty queue in the worker gave {other:?}").into()),
    }
    match pool
        .apply(size_of, ("/nonexistent/file".to_string(),))
        .await?
    {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            ensure!(e.raw_os_error() == Some(2), "errno: {e:?}");
        }
        other => return Err(format!("a missing file in the worker gave {other:?}").into()),
    }
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let len = pool.apply(size_of, (exe.clone(),)).await??;
    ensure!(len == std::fs::metadata(&exe)?.len(), "the Ok side: {len}");
    Ok(())
}

// _TestPoolWorkerErrors.test_unpickleable_result: a result the worker cannot encode fails
// that task (20 times over) and loses no worker.
async fn unencodable_result() -> TestResult {
    let pool = Pool::new(2).await?;
    let before = worker_pids(&pool).await?;
    for _ in 0..20 {
        match pool.apply(make_unencodable, ()).await {
            Err(e) => {
                let text = e.to_string();
                ensure!(
                    text.contains("the process that ran the task could not encode its result"),
                    "{text}"
                );
                ensure!(text.contains("Unencodable"), "{text}");
                ensure!(text.contains("refuses"), "{text}");
            }
            other => return Err(format!("expected Encode, got {other:?}").into()),
        }
    }
    ensure!(worker_pids(&pool).await? == before, "no worker was lost");
    Ok(())
}

/// Panics when it is decoded: an argument whose `Deserialize` panics in the worker.
#[derive(Debug, Serialize)]
struct PanicsDecoded(u8);

impl<'de> Deserialize<'de> for PanicsDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d)?;
        panic!("PanicsDecoded will not be decoded");
    }
}

fn make_panics_encoded(_x: u8) -> PanicsEncoded {
    PanicsEncoded
}

async fn make_panics_encoded_async(_x: u8) -> PanicsEncoded {
    tokio::task::yield_now().await;
    PanicsEncoded
}

fn take_panics_decoded(_p: PanicsDecoded) -> u8 {
    1
}

async fn take_panics_decoded_async(_p: PanicsDecoded) -> u8 {
    1
}

// A result whose `Serialize` panics in the worker, or an argument whose `Deserialize` panics
// there, fails that task alone with the panic's message, as a panic of the task does, for a
// synchronous task, an `async fn` task and a map's chunk; the worker lives on. (The code
// before caught only the call: a synchronous task's panic killed the worker, failing the
// task as its worker lost, and an `async fn` task's was never answered.)
async fn a_panic_crossing_a_value_fails_its_task_alone() -> TestResult {
    let pool = Pool::builder().processes(1).concurrency(2).build().await?;
    let worker = pool.apply(pid, ()).await?;
    let encoded = "PanicsEncoded will not be encoded";
    let decoded = "PanicsDecoded will not be decoded";
    let r = pool.apply(make_panics_encoded, (1,));
    panicked_with("a synchronous result", r, encoded).await?;
    let r = pool.apply(make_panics_encoded_async, (1,));
    panicked_with("an async result", r, encoded).await?;
    let r = pool.map(make_panics_encoded, 0..4u8).chunksize(4).submit();
    panicked_with("a chunk's results", r, encoded).await?;
    let r = pool.apply(take_panics_decoded, (PanicsDecoded(1),));
    panicked_with("a synchronous argument", r, decoded).await?;
    let r = pool.apply(take_panics_decoded_async, (PanicsDecoded(1),));
    panicked_with("an async argument", r, decoded).await?;
    let after = tokio::time::timeout(Duration::from_secs(20), pool.map(sqr, 0..10)).await?;
    ensure!(
        after? == (0..10).map(sqr).collect::<Vec<_>>(),
        "a map after"
    );
    ensure!(
        pool.apply(pid, ()).await? == worker,
        "the worker was replaced"
    );
    ensure!(pool.stats().workers_lost == 0, "{:?}", pool.stats());
    Ok(())
}

/// Succeeds if `call` fails (within 20 s) as a panic whose message holds `says`.
async fn panicked_with<T: std::fmt::Debug>(
    case: &str,
    call: impl std::future::Future<Output = Result<T, mp::TaskError>>,
    says: &str,
) -> TestResult {
    let r = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .map_err(|_| format!("{case}: never answered"))?;
    match r {
        Err(e) if e.is_panic() && e.panic_message().is_some_and(|m| m.contains(says)) => Ok(()),
        other => Err(format!("{case}: {other:?}").into()),
    }
}

/// A large argument whose `Serialize` panics only after its first megabytes.
#[derive(Serialize, Deserialize)]
struct LargeThenPanics {
    blob: Vec<u8>,
    tail: PanicsEncoded,
}

fn take_large_then_panics(v: LargeThenPanics) -> usize {
    v.blob.len()
}

/// Whether `r` failed as an argument of `LargeThenPanics` whose encoding panicked.
fn failed_encoding_large_then_panics(r: &Result<usize, mp::TaskError>) -> bool {
    match r.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::Encode { type_name, message }) => {
            type_name.contains("LargeThenPanics")
                && message.contains("PanicsEncoded will not be encoded")
        }
        _ => false,
    }
}

// An argument over a MiB (encoded on a blocking thread) whose `Serialize` panics past its
// first MiB fails its call with `Error::Encode` carrying the panic's message, and the pool
// serves on; a `close()` right after submitting one ends. (The code before lost the task
// on the blocking thread: the call failed as if the pool had closed, and a `join()` after
// `close()` waited for it for ever.)
async fn a_large_argument_whose_serialize_panics_fails_its_call_alone() -> TestResult {
    let pool = Pool::new(1).await?;
    let bad = || LargeThenPanics {
        blob: vec![1; 2 << 20],
        tail: PanicsEncoded,
    };
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        pool.apply(take_large_then_panics, (bad(),)),
    )
    .await?;
    ensure!(failed_encoding_large_then_panics(&r), "{r:?}");
    ensure!(pool.apply(sqr, (3,)).await? == 9, "the pool serves on");
    let h = pool.apply_async(take_large_then_panics, (bad(),));
    pool.close();
    let joined = tokio::time::timeout(Duration::from_secs(20), pool.join()).await;
    ensure!(joined.is_ok(), "join after close never ended");
    joined??;
    let r = tokio::time::timeout(Duration::from_secs(20), h).await?;
    ensure!(failed_encoding_large_then_panics(&r), "{r:?}");
    Ok(())
}

/// A large result whose `Deserialize` panics only after its first megabytes.
#[derive(Serialize, Deserialize)]
struct LargeThenPanicsDecoded {
    blob: Vec<u8>,
    tail: PanicsDecoded,
}

fn make_large_then_panics_decoded() -> LargeThenPanicsDecoded {
    LargeThenPanicsDecoded {
        blob: vec![1; 2 << 20],
        tail: PanicsDecoded(1),
    }
}

// A result over a MiB (decoded on a blocking thread) whose `Deserialize` panics: the panic
// reaches the caller that awaits it, as one of a small result's (decoded in place) does.
// (The code before turned it into a protocol error, as if the worker had sent garbage.)
async fn a_large_result_whose_deserialize_panics_panics_its_caller() -> TestResult {
    let pool = Pool::new(1).await?;
    let p = pool.clone();
    let call = tokio::spawn(async move {
        p.apply(make_large_then_panics_decoded, ())
            .await
            .map(|v| v.blob.len())
    });
    match tokio::time::timeout(Duration::from_secs(20), call).await? {
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            ensure!(
                message.contains("PanicsDecoded will not be decoded"),
                "the caller's panic says {message:?}"
            );
        }
        other => return Err(format!("the call gave {other:?}").into()),
    }
    ensure!(pool.apply(sqr, (3,)).await? == 9, "the pool serves on");
    Ok(())
}

// _TestPool.test_map_unplicklable: an argument that cannot be encoded fails that call at
// submission; a result the parent cannot decode fails that task, naming the type.
async fn unencodable_argument_and_undecodable_result() -> TestResult {
    let pool = Pool::new(1).await?;
    let before = pool.apply(pid, ()).await?;
    let mut h = pool.apply_async(take_unencodable, (Unencodable,));
    ensure!(h.ready(), "failed at submission, nothing sent");
    let e = h.await;
    match e.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::Encode { type_name, message }) => {
            ensure!(type_name.contains("Unencodable"), "{type_name}");
            ensure!(message.contains("refuses"), "{message}");
        }
        _ => return Err(format!("expected Encode, got {e:?}").into()),
    }
    // Through map, too: the error names the item type, not the sequence that carried it.
    let e = pool.map(take_unencodable, vec![Unencodable]).await;
    let said = format!("{e:?}");
    ensure!(
        e.is_err() && said.contains("Unencodable") && !said.contains("Items"),
        "a map of an unencodable item: {said}"
    );
    let e = pool.apply(make_undecodable, ()).await;
    match e.as_ref().err().and_then(|e| e.caller_error()) {
        Some(Error::Decode { type_name, .. }) => {
            ensure!(type_name.contains("Undecodable"), "{type_name}")
        }
        _ => return Err(format!("expected Decode, got {e:?}").into()),
    }
    ensure!(pool.apply(pid, ()).await? == before, "the worker survived");
    Ok(())
}

// test_terminate, test_close / join: calls after close or terminate fail clearly.
async fn closed_pool() -> TestResult {
    let pool = Pool::new(2).await?;
    ensure!(
        matches!(pool.join().await, Err(Error::PoolRunning)),
        "join while running"
    );
    let pids = worker_pids(&pool).await?;
    let pending = pool.map_async(sleep_ms, vec![100; 4]);
    pool.close();
    ensure!(
        pool.apply(sqr, (1,))
            .await
            .is_err_and(|e| e.is_pool_closed()),
        "apply after close"
    );
    ensure!(
        pending.await?.len() == 4,
        "queued work finishes after close"
    );
    tokio::time::timeout(Duration::from_secs(20), pool.join()).await??;
    ensure!(gone(&pids).await, "workers exited after close + join");

    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let long = pool.apply_async(sleep_ms, (60_000,));
    pool.terminate().await?;
    ensure!(
        long.await.is_err_and(|e| e.is_pool_closed()),
        "terminated task"
    );
    ensure!(
        pool.apply(sqr, (1,))
            .await
            .is_err_and(|e| e.is_pool_closed()),
        "apply after terminate"
    );
    ensure!(gone(&pids).await, "terminate reaps the workers");
    Ok(())
}

// test_imap_unordered / Python's `it = pool.imap(f, xs); pool.close(); list(it); pool.join()`:
// a stream made before the close is a call made before it; every input runs.
async fn a_stream_made_before_close_runs_every_input() -> TestResult {
    let want: Vec<i64> = (0..100).map(|x| x * x).collect();
    let pool = Pool::new(2).await?;
    let stream = pool.imap(sqr, 0..100).chunksize(1);
    pool.close();
    let got: Vec<i64> = futures::TryStreamExt::try_collect(stream).await?;
    ensure!(
        got == want,
        "imap read after close gave {} results",
        got.len()
    );
    tokio::time::timeout(Duration::from_secs(20), pool.join()).await??;

    // Closed after the first result, unordered.
    let pool = Pool::new(2).await?;
    let mut stream = pool.imap_unordered(sqr, 0..100).chunksize(1);
    let mut got = vec![stream.next().await.ok_or("no first result")??];
    pool.close();
    while let Some(r) = stream.next().await {
        got.push(r?);
    }
    got.sort_unstable();
    ensure!(
        got == want,
        "imap_unordered closed midway gave {} results",
        got.len()
    );
    tokio::time::timeout(Duration::from_secs(20), pool.join()).await??;
    Ok(())
}

/// Runs in a child (on a multi-thread runtime or a current-thread one), whose descriptors
/// and children are only its pools': 50 rounds of a Pool(5) that runs a map and has started
/// all its workers, then ends by `terminate` (or, every other round, by `close` and `join`).
/// Each time, once that returns, no worker is left, not even a zombie, and every descriptor
/// of the pool is closed. Exits 0 if so.
fn pools_one_after_another_probe(multi_thread: bool) {
    let rt = probe_runtime(multi_thread);
    support::process::exit_unless_ok_on(rt, "pools one after another", || async {
        for _ in 0..2 {
            Pool::new(5).await?.terminate().await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds = support::open_fds();
        for round in 0..50 {
            let pool = Pool::new(5).await?;
            pool.map(sqr, 0..10).await?;
            // Every worker has started: those it killed, not those it never had.
            let started = eventually(Duration::from_secs(20), || {
                let now = pool.stats();
                now.workers_alive == 5 && now.workers_starting == 0
            });
            ensure!(
                started.await,
                "round {round}: the workers did not all start"
            );
            if round % 2 == 0 {
                pool.terminate().await?;
            } else {
                pool.close();
                pool.join().await?;
            }
            let (now, children) = (support::open_fds(), support::all_children());
            ensure!(
                now == fds && children.is_empty(),
                "round {round}: {fds} descriptors before, {now} after; children {children:?}"
            );
        }
        Ok(())
    });
}

// TestPoolNotLeakOnFailure, test_terminate: a program that makes pools one after another, as
// close to its descriptor limit as the pool needs, finds every descriptor of a pool closed
// (and its workers reaped) once `terminate` or `join` returns. Up to 7 stayed open a while.
async fn terminate_and_join_return_once_the_workers_descriptors_are_closed() -> TestResult {
    passes_on_both_runtimes(pools_one_after_another_probe).await
}

/// A multi-thread runtime or a current-thread one, for a probe to run on.
fn probe_runtime(multi_thread: bool) -> tokio::runtime::Builder {
    match multi_thread {
        true => tokio::runtime::Builder::new_multi_thread(),
        false => tokio::runtime::Builder::new_current_thread(),
    }
}

/// Runs `probe` in a child on a multi-thread runtime, then in another on a current-thread
/// one, and fails unless both exit 0.
async fn passes_on_both_runtimes<F, M>(probe: F) -> TestResult
where
    F: mp::Target<(bool,), M, Output = ()> + Copy,
{
    for multi_thread in [true, false] {
        let mut p = mp::Process::new(probe, (multi_thread,)).start().await?;
        support::process::probe_passed(&mut p).await?;
    }
    Ok(())
}

/// Runs in a child, as [`pools_one_after_another_probe`]: 30 rounds of a pool terminated
/// while workers are starting, at once after it is made (four of Pool(5) start then) or
/// every other round while a map runs on a Pool(3) that replaces each worker after a task.
/// Each time, once `terminate` returns, no worker is left, not even a zombie, and every
/// descriptor of the pool is closed. Exits 0 if so.
fn pools_terminated_while_starting_probe(multi_thread: bool) {
    let rt = probe_runtime(multi_thread);
    support::process::exit_unless_ok_on(rt, "pools terminated while starting", || async {
        Pool::new(5).await?.terminate().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fds = support::open_fds();
        for round in 0..30 {
            let pool = match round % 2 {
                0 => Pool::new(5).await?,
                _ => {
                    Pool::builder()
                        .processes(3)
                        .maxtasksperchild(1)
                        .build()
                        .await?
                }
            };
            let map = pool.map(sqr, 0..1000).chunksize(1).submit();
            if round % 2 == 1 {
                let replaced = eventually(Duration::from_secs(20), || {
                    pool.stats().workers_starting > 0
                });
                ensure!(replaced.await, "round {round}: no worker was replaced");
            }
            pool.terminate().await?;
            let (now, children) = (support::open_fds(), support::all_children());
            ensure!(
                now == fds && children.is_empty(),
                "round {round}: {fds} descriptors before, {now} after; children {children:?}"
            );
            drop(map);
        }
        Ok(())
    });
}

// test_terminate: Python's terminate joins every worker of the pool, those its handler was
// starting included. A worker still starting (Pool(5) terminated at once, or a replacement
// under maxtasksperchild) lived on, with its descriptors, after terminate returned.
async fn terminate_returns_once_the_workers_still_starting_are_reaped() -> TestResult {
    passes_on_both_runtimes(pools_terminated_while_starting_probe).await
}

// test_terminate, test_imap on a closed pool: a stream made after close reads no input and
// yields the refusal once, an empty input's included (Python raises at the call); the tasks
// a pool refuses midway end the stream, after an error for each input read.
async fn a_refused_stream_ends_with_pool_closed_errors() -> TestResult {
    let pool = Pool::new(2).await?;
    pool.close();
    let read = Arc::new(AtomicUsize::new(0));
    let counted = read.clone();
    let inputs = (0..50i64).inspect(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    });
    let after_close: Vec<_> = pool.imap(sqr, inputs).collect().await;
    let empty: Vec<_> = pool.imap_unordered(sqr, Vec::<i64>::new()).collect().await;
    for (what, got) in [("0..50", &after_close), ("an empty input", &empty)] {
        ensure!(
            got.len() == 1 && got[0].as_ref().is_err_and(|e| e.is_pool_closed()),
            "a stream of {what} made after close gave {got:?}"
        );
    }
    let read = read.load(Ordering::Relaxed);
    ensure!(read == 0, "a stream made after close read {read} inputs");
    tokio::time::timeout(Duration::from_secs(20), pool.join()).await??;

    let pool = Pool::new(2).await?;
    let mut stream = pool.imap(sleep_ms, vec![200u64; 1000]).chunksize(1);
    ensure!(stream.next().await.is_some_and(|r| r.is_ok()), "first item");
    pool.terminate().await?;
    let rest: Vec<_> = stream.collect().await;
    ensure!(
        // A task that finished before the workers were killed answers with its result.
        rest.len() < 999
            && rest.iter().all(|r| match r {
                Ok(_) => true,
                Err(e) => e.is_pool_closed(),
            }),
        "after terminate the stream gave {} items: {:?}",
        rest.len(),
        rest.iter().collect::<Vec<_>>()
    );
    Ok(())
}

// A join after close waits for the streams made before it, and a stream dropped unread
// holds nothing up.
async fn join_waits_for_a_stream_made_before_close() -> TestResult {
    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let mut stream = pool.imap(sqr, 0..10).chunksize(1);
    ensure!(
        stream.next().await.is_some_and(|r| r.is_ok_and(|v| v == 0)),
        "first item"
    );
    pool.close();
    {
        let join = pool.join();
        tokio::pin!(join);
        let early = tokio::time::timeout(Duration::from_millis(300), &mut join).await;
        ensure!(
            early.is_err(),
            "join returned while the stream had inputs to submit"
        );
        ensure!(
            pids.iter().all(|p| exists(*p)),
            "workers exited while the stream had inputs to submit"
        );
        drop(stream);
        tokio::time::timeout(Duration::from_secs(20), join).await??;
    }
    ensure!(
        gone(&pids).await,
        "workers exited after the stream was dropped"
    );
    Ok(())
}

// test_context and test_resource_warning: dropping the pool (Python's `with Pool()`, or a
// pool never closed) kills its workers, no zombie.
async fn drop_terminates_workers() -> TestResult {
    let fds = support::open_fds();
    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let _in_flight = pool.apply_async(sleep_ms, (60_000,));
    drop(pool);
    ensure!(gone(&pids).await, "no worker left, not even a zombie");
    drop(_in_flight);
    ensure!(
        eventually(Duration::from_secs(10), || support::open_fds() <= fds).await,
        "descriptors leaked: {} before, {} after",
        fds,
        support::open_fds()
    );
    Ok(())
}

/// On a runtime of its own (current-thread or multi-thread, on a thread of its own): a
/// Pool(1) whose worker runs a task of 60 s, then the pool's last handle dropped (or kept,
/// and handed back, if `keep`) and the runtime dropped at once. The worker's pid, and the
/// pool if kept.
fn pool_busy_when_its_runtime_ends(multi: bool, keep: bool) -> Result<(u32, Option<Pool>), String> {
    let path = temp_path("runtime-ends");
    std::thread::spawn(move || {
        let rt = match multi {
            true => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
            false => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .map_err(|e| e.to_string())?;
        let out = rt.block_on(async {
            let pool = Pool::new(1).await.map_err(|e| e.to_string())?;
            let _busy = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
            let pid = read_pid(&path).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((pid, keep.then_some(pool)))
        });
        drop(rt);
        out
    })
    .join()
    .map_err(|_| "the runtime's thread panicked".to_string())?
}

// A pool whose runtime ends while its worker runs a long task kills that worker, whether
// its last handle was dropped just before (the terminate it sent is never read) or is kept
// (its calls then fail as closed): the worker does not live on until its task ends. (The
// code before left it running its 60 s task.)
async fn a_pool_whose_runtime_ends_kills_its_busy_workers() -> TestResult {
    for multi in [false, true] {
        for keep in [false, true] {
            let case = format!("multi-thread {multi}, handle kept {keep}");
            let (worker, pool) = pool_busy_when_its_runtime_ends(multi, keep)?;
            let gone = eventually(Duration::from_secs(10), || {
                support::is_zombie_or_gone(worker)
            })
            .await;
            if !gone {
                let _ = kill9(worker);
            }
            ensure!(gone, "{case}: worker {worker} still runs its task");
            if let Some(pool) = pool {
                let r = pool.apply(sqr, (2,)).await;
                ensure!(
                    r.as_ref().is_err_and(|e| e.is_pool_closed()),
                    "{case}: {r:?}"
                );
            }
        }
    }
    Ok(())
}

// The stats of a pool whose runtime ended while its worker ran a task say what is so: no
// worker alive, no task running, and that task failed (as it did, closed). They showed the
// worker alive and its task running for good before. A task submitted then fails as closed,
// its message naming the runtime's end (it said only "the pool is closed" before, though no
// one had closed it).
async fn a_pool_whose_runtime_ended_shows_no_worker_in_its_stats() -> TestResult {
    for multi in [false, true] {
        let (worker, pool) = pool_busy_when_its_runtime_ends(multi, true)?;
        let pool = pool.ok_or("the pool was not handed back")?;
        let gone = eventually(Duration::from_secs(10), || {
            support::is_zombie_or_gone(worker)
        })
        .await;
        ensure!(
            gone,
            "multi-thread {multi}: worker {worker} still runs its task"
        );
        let s = pool.stats();
        ensure!(
            (
                s.workers_alive,
                s.workers_starting,
                s.tasks_queued,
                s.tasks_running
            ) == (0, 0, 0, 0)
                && s.tasks_failed == 1,
            "multi-thread {multi}: {s:?}"
        );
        match pool.apply(sqr, (3,)).await {
            Err(e) if e.is_pool_closed() && e.to_string().contains("runtime it was built on") => {}
            other => return Err(format!("multi-thread {multi}: a task after: {other:?}").into()),
        }
    }
    Ok(())
}

// A clone shares the pool: dropping the original leaves the clone serving (a task moved into
// another tokio task included); dropping the last handle terminates the workers.
async fn clones_share_the_pool_and_the_last_drop_terminates() -> TestResult {
    let pool = Pool::new(2).await?;
    let pids = worker_pids(&pool).await?;
    let clone = pool.clone();
    drop(pool);
    let served = tokio::spawn(async move {
        let r = clone.apply(sqr, (9,)).await;
        (r, clone)
    })
    .await?;
    ensure!(
        matches!(served.0, Ok(81)),
        "the clone served: {:?}",
        served.0
    );
    ensure!(
        pids.iter().all(|p| exists(*p)),
        "the workers live while a handle does"
    );
    drop(served.1);
    ensure!(gone(&pids).await, "the last drop terminated the workers");
    Ok(())
}

// Pool::stats: tasks done and failed, a worker lost with its cause, and the pool back at
// full strength.
async fn stats_count_tasks_and_lost_workers() -> TestResult {
    let pool = Pool::new(2).await?;
    let before = pool.stats();
    ensure!(
        before.tasks_done == 0 && before.tasks_failed == 0 && before.workers_lost == 0,
        "{before:?}"
    );
    // `new` returns once a worker is ready: the snapshot counts it, and the other as alive or
    // starting.
    ensure!(
        before.workers_alive >= 1 && before.workers_alive + before.workers_starting == 2,
        "right after new: {before:?}"
    );
    for i in 0..20 {
        pool.apply(sqr, (i,)).await?;
    }
    ensure!(pool.apply(boom, (3,)).await.is_err(), "boom(3) fails");
    let path = temp_path("stats");
    let h = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
    let victim = read_pid(&path).await?;
    ensure!(pool.stats().tasks_running >= 1, "{:?}", pool.stats());
    kill9(victim)?;
    ensure!(
        h.await.is_err_and(|e| e.is_worker_lost()),
        "the killed task"
    );
    let full = eventually(Duration::from_secs(20), || {
        let s = pool.stats();
        s.workers_alive == 2 && s.workers_lost == 1
    })
    .await;
    let s = pool.stats();
    ensure!(full, "{s:?}");
    ensure!(s.tasks_done == 20 && s.tasks_failed == 2, "{s:?}");
    ensure!(
        matches!(
            &s.recent_losses[..],
            [l] if l.pid == victim && l.cause == ExitCause::Signal(9)
        ),
        "{s:?}"
    );
    ensure!(s.tasks_queued == 0 && s.tasks_running == 0, "{s:?}");
    // A map's chunk that answered counts as done, though one of its inputs panicked: the
    // failure is in the map's result.
    let map = pool.map(boom, 0..6).chunksize(6).await;
    ensure!(
        map.is_err_and(|e| e.is_panic() && e.input_index() == Some(3)),
        "the map fails at input 3"
    );
    let counted = eventually(Duration::from_secs(20), || {
        let s = pool.stats();
        s.tasks_running == 0 && s.tasks_done == 21
    })
    .await;
    let s = pool.stats();
    ensure!(counted && s.tasks_failed == 2, "{s:?}");
    Ok(())
}

// Pool::stats after a caller awaited one task after another, then nothing else happened:
// the pool may take the answers in after their callers had them (see `PoolBuilder::spin`),
// but every one of them counts soon.
async fn stats_catch_up_once_the_pool_falls_quiet() -> TestResult {
    let pool = Pool::new(1).await?;
    for i in 0..50i64 {
        ensure!(pool.apply(sqr, (i,)).await? == i * i, "sqr({i})");
    }
    let counted = eventually(Duration::from_secs(20), || {
        let s = pool.stats();
        s.tasks_done == 50 && s.tasks_running == 0
    })
    .await;
    ensure!(counted, "{:?}", pool.stats());
    Ok(())
}

// cancel(): a queued task is removed and never runs; a running one's worker is replaced.
async fn cancel_queued_and_running() -> TestResult {
    let pool = Pool::new(1).await?;
    let path = temp_path("running");
    let running = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000));
    let victim = read_pid(&path).await?;
    let marker = temp_path("never");
    // Twenty: some wait in the pool's queue, some were sent ahead to the worker.
    let queued: Vec<_> = (0..20)
        .map(|_| pool.apply_async(touch, (marker.to_string(),)))
        .collect();
    for q in &queued {
        q.cancel();
    }
    for q in queued {
        let e = q.await;
        ensure!(e.as_ref().is_err_and(|e| e.is_cancelled()), "queued: {e:?}");
    }
    running.cancel();
    let e = running.await;
    ensure!(
        e.as_ref().is_err_and(|e| e.is_cancelled()),
        "running: {e:?}"
    );
    ensure!(gone(&[victim].into()).await, "its worker was killed");
    let after = pool.apply(pid, ()).await?;
    ensure!(after != victim, "replaced");
    ensure!(!marker.exists(), "a cancelled task ran");
    Ok(())
}

// cancel_if_queued(): a queued task is removed and never runs; a running one is left to
// finish, with its result, and no worker is killed.
async fn cancel_if_queued_never_kills_a_worker() -> TestResult {
    let pool = Pool::new(1).await?;
    let started = temp_path("cq-started");
    let gate = temp_path("cq-gate");
    let running = pool.apply_async(
        pid_to_file_then_wait_for,
        (started.to_string(), gate.to_string()),
    );
    let worker = read_pid(&started).await?;
    let marker = temp_path("cq-never");
    let queued: Vec<_> = (0..20)
        .map(|_| pool.apply_async(touch, (marker.to_string(),)))
        .collect();
    running.cancel_if_queued();
    for q in &queued {
        q.cancel_if_queued();
    }
    for q in queued {
        let e = q.await;
        ensure!(e.as_ref().is_err_and(|e| e.is_cancelled()), "queued: {e:?}");
    }
    std::fs::write(&gate, "go")?;
    let r = running.await;
    ensure!(
        matches!(r, Ok(p) if p == worker),
        "the running task finished: {r:?}"
    );
    ensure!(pool.apply(pid, ()).await? == worker, "no worker was killed");
    ensure!(!marker.exists(), "a cancelled task ran");
    Ok(())
}

// A task sent ahead to a worker while another runs there, then cancelled, never runs: the
// worker takes the cancel in before it starts its next task, though its reactor, idle
// while the task before ran, has not seen the cancel arrive. No worker is killed for it.
async fn a_task_cancelled_behind_a_running_one_never_runs() -> TestResult {
    support::pool::cancel_behind_a_running_task(&Pool::new(1).await?).await
}

// Every task sent ahead to a worker that runs a long task is cancelled at once, each settled
// with the worker on the memory they share: none waits for the running task to end, none
// runs, and no worker is killed.
async fn tasks_sent_ahead_to_a_busy_worker_are_cancelled_at_once() -> TestResult {
    let pool = Pool::new(1).await?;
    support::pool::send_ahead_from_now_on(&pool, "ahead").await?;
    let started = temp_path("ahead-started");
    let gate = temp_path("ahead-gate");
    let running = pool.apply_async(
        pid_to_file_then_wait_for,
        (started.to_string(), gate.to_string()),
    );
    let worker = read_pid(&started).await?;
    let marker = temp_path("ahead-never");
    let queued: Vec<_> = (0..20)
        .map(|_| pool.apply_async(touch, (marker.to_string(),)))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, q) in queued.iter().enumerate() {
        match i % 2 {
            0 => q.cancel(),
            _ => q.cancel_if_queued(),
        }
    }
    let mut waited = 0;
    for q in queued {
        match tokio::time::timeout(Duration::from_secs(20), q).await {
            Ok(e) => ensure!(e.as_ref().is_err_and(|e| e.is_cancelled()), "queued: {e:?}"),
            Err(_) => waited += 1,
        }
    }
    std::fs::write(&gate, "go")?;
    let r = running.await;
    ensure!(waited == 0, "{waited} cancels waited for the running task");
    ensure!(matches!(r, Ok(p) if p == worker), "the running task: {r:?}");
    ensure!(pool.apply(pid, ()).await? == worker, "no worker was killed");
    ensure!(!marker.exists(), "a cancelled task ran");
    Ok(())
}

// abort_on_drop(): dropping the guard cancels its task, like tokio-util's
// AbortOnDropHandle; detach() gives back a handle that does not.
async fn abort_on_drop_cancels_when_dropped() -> TestResult {
    let pool = Pool::new(1).await?;
    let path = temp_path("aod");
    let running = pool
        .apply_async(pid_to_file_then_sleep, (path.to_string(), 60_000))
        .abort_on_drop();
    let victim = read_pid(&path).await?;
    let marker = temp_path("aod-never");
    let queued = pool
        .apply_async(touch, (marker.to_string(),))
        .abort_on_drop();
    let kept = pool.apply_async(sqr, (12,)).abort_on_drop().detach();
    drop(queued);
    drop(running);
    ensure!(
        gone(&[victim].into()).await,
        "the running task's worker was killed"
    );
    ensure!(
        matches!(kept.await, Ok(144)),
        "the detached handle's task ran"
    );
    ensure!(!marker.exists(), "a dropped queued task ran");
    Ok(())
}

// Without a chunk size, imap chooses one (from how fast chunks come back): the results stay
// whole and in order; an explicit chunk size still wins (a chunk counts as one task).
async fn imap_chooses_its_chunk_size_unless_told() -> TestResult {
    let pool = Pool::new(2).await?;
    let got: Vec<i64> = pool
        .imap(sqr, 0..20_000)
        .map(|r| r.map_err(|e| e.to_string()))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    ensure!(
        got == (0..20_000).map(|x| x * x).collect::<Vec<_>>(),
        "auto-sized imap"
    );
    // A caller has its answer before the pool's task counts it: wait until nothing runs.
    let settled = || {
        let s = pool.stats();
        (s.tasks_running == 0 && s.tasks_queued == 0).then_some(s.tasks_done)
    };
    ensure!(
        eventually(Duration::from_secs(10), || settled().is_some()).await,
        "the first imap never settled: {:?}",
        pool.stats()
    );
    let before = settled().ok_or("the pool ran a task between two looks")?;
    let n = pool.imap(sqr, 0..1000).chunksize(100).count().await;
    ensure!(n == 1000, "{n} results");
    let chunks = eventually(Duration::from_secs(10), || settled() == Some(before + 10)).await;
    ensure!(chunks, "1000 inputs by 100: {:?}", pool.stats());
    Ok(())
}

// Sequences of plain numbers travel as one `bin`, others as arrays: both round-trip through
// real workers, with each item's failure in its place.
async fn map_over_number_types() -> TestResult {
    let pool = Pool::new(2).await?;
    let xs: Vec<f64> = (0..1000).map(|i| f64::from(i) * 0.5 - 100.0).collect();
    let got = pool.map(halve, xs.clone()).chunksize(64).await?;
    ensure!(
        got == xs.iter().map(|x| halve(*x)).collect::<Vec<_>>(),
        "f64 → f32"
    );
    let got = pool.map(widen, i8::MIN..=i8::MAX).await?;
    ensure!(
        got == (i8::MIN..=i8::MAX).map(widen).collect::<Vec<_>>(),
        "i8 → i64"
    );
    let got = pool.map(label, 0u16..300).chunksize(7).await?;
    ensure!(
        got == (0u16..300).map(label).collect::<Vec<_>>(),
        "u16 → String"
    );
    let got: Vec<_> = pool
        .imap(byte_or_boom, 0u8..=255)
        .chunksize(50)
        .collect()
        .await;
    ensure!(got.len() == 256, "{} results", got.len());
    for (x, r) in (0u8..=255).zip(&got) {
        match (x, r) {
            (77, Err(e)) => {
                ensure!(e.input_index() == Some(77), "{e:?}");
                ensure!(
                    e.panic_message().is_some_and(|m| m.contains("boom at 77")),
                    "{e:?}"
                );
            }
            (x, Ok(y)) => ensure!(*y == x ^ 0xff, "{x} gave {y}"),
            (x, r) => ensure!(false, "{x} gave {r:?}"),
        }
    }
    Ok(())
}

// A pool serves as soon as one worker is ready; the others take tasks once they are.
async fn pool_serves_before_all_workers_are_ready() -> TestResult {
    let (claim, gate) = (temp_path("claim"), temp_path("gate"));
    let built = tokio::time::timeout(
        Duration::from_secs(20),
        Pool::builder()
            .processes(2)
            .initializer(init_first_then_gate, (claim.to_string(), gate.to_string()))
            .build(),
    )
    .await;
    let Ok(built) = built else {
        std::fs::write(&gate, "open")?;
        return Err("build waited for every worker".into());
    };
    let pool = built?;
    let first = pool.apply(pid, ()).await?;
    std::fs::write(&gate, "open")?;
    let seen = worker_pids(&pool).await?;
    ensure!(
        seen.len() == 2 && seen.contains(&first),
        "the second worker joined: {seen:?}"
    );
    Ok(())
}

// test_make_pool: a pool of 0 processes is an error.
async fn zero_processes() -> TestResult {
    let e = Pool::builder().processes(0).build().await;
    ensure!(matches!(e, Err(Error::InvalidArgument(_))), "{e:?}");
    Ok(())
}

// Workers started by the fork server serve like any other.
async fn forkserver_workers() -> TestResult {
    let pool = Pool::builder()
        .processes(2)
        .start_method(mp::StartMethod::ForkServer)
        .build()
        .await?;
    ensure!(
        pool.map(sqr, 0..50).await? == (0..50).map(|x| x * x).collect::<Vec<_>>(),
        "map"
    );
    Ok(())
}

fn main() {
    mp::init();
    // Descriptor counts are process-wide: that test runs alone, before the others.
    let args = libtest_mimic::Arguments::from_args();
    let alone = libtest_mimic::Arguments {
        test_threads: Some(1),
        ..args.clone()
    };
    let first = libtest_mimic::run(
        &alone,
        vec![test("drop_terminates_workers", drop_terminates_workers)],
    );
    let mut trials = trials![
        clones_share_the_pool_and_the_last_drop_terminates,
        a_pool_whose_runtime_ends_kills_its_busy_workers,
        a_pool_whose_runtime_ended_shows_no_worker_in_its_stats,
        imap_chooses_its_chunk_size_unless_told,
        cancel_if_queued_never_kills_a_worker,
        a_task_cancelled_behind_a_running_one_never_runs,
        tasks_sent_ahead_to_a_busy_worker_are_cancelled_at_once,
        abort_on_drop_cancels_when_dropped,
        stats_count_tasks_and_lost_workers,
        stats_catch_up_once_the_pool_falls_quiet,
        apply,
        map,
        empty_iterable,
        starmap,
        imap,
        imap_endless_input_is_read_lazily,
        imap_stream_yields_a_result_for_each_item_of_its_input,
        imap_stream_sends_an_item_that_comes_alone_at_once,
        imap_stream_polls_its_input_only_as_it_needs,
        an_input_stream_made_before_close_runs_every_item,
        a_queue_filled_by_another_process_feeds_imap_stream,
        an_imap_stream_waiting_for_input_ends_with_its_pool,
        apply_async,
        get_timeout_leaves_task_running,
        wait_leaves_the_result_in_the_handle,
        panic_fails_that_task_only,
        print_panics_prints_a_task_panic_on_the_worker_stderr_only_when_asked,
        large_arguments_and_results,
        large_values_cross_off_the_runtime_thread,
        unencodable_result,
        a_task_returns_the_crates_errors_as_themselves,
        a_panic_crossing_a_value_fails_its_task_alone,
        a_large_argument_whose_serialize_panics_fails_its_call_alone,
        a_large_result_whose_deserialize_panics_panics_its_caller,
        unencodable_argument_and_undecodable_result,
        closed_pool,
        terminate_and_join_return_once_the_workers_descriptors_are_closed,
        terminate_returns_once_the_workers_still_starting_are_reaped,
        a_stream_made_before_close_runs_every_input,
        a_refused_stream_ends_with_pool_closed_errors,
        join_waits_for_a_stream_made_before_close,
        cancel_queued_and_running,
        map_over_number_types,
        pool_serves_before_all_workers_are_ready,
        zero_processes,
        forkserver_workers,
    ];
    trials.push(support::test_current_thread(
        "a_loop_of_waits_on_finished_results_lets_other_tasks_run",
        a_loop_of_waits_on_finished_results_lets_other_tasks_run,
    ));
    trials.push(support::test_current_thread(
        "a_loop_over_results_an_imap_holds_lets_other_tasks_run",
        a_loop_over_results_an_imap_holds_lets_other_tasks_run,
    ));
    let rest = libtest_mimic::run(&args, trials);
    let failed = first.has_failed() || rest.has_failed();
    std::process::exit(if failed { 101 } else { 0 });
}
