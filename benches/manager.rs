//! `Manager` figures: a dict call (set or get) to a local server process and over TCP
//! loopback with a key, queue proxy throughput between two processes (through the queue's
//! ring, and through the server over TCP), a pool task given a proxy (beside one given a
//! number) and one that inserts holding a lock it is given (beside the first), and the time
//! to start and shut down a manager. Baselines: the same calls to a server in this process (no
//! process hop), a raw ping-pong of 8 bytes with a child process over a Unix socket pair and
//! over TCP loopback (the transports' floors, beside the dict calls as `*_vs_raw`), and a
//! server in this process started and stopped, and for the server process's start, the floor
//! under any `spawn` start: this executable started again by a plain `std::process::Command`
//! until its `main` runs (`manager_start_vs_reexec`). The dict calls again from a multi-thread
//! runtime (`*_multi_thread_us`), beside the same from a current-thread one. CPython's `Manager`
//! beside them: `python3 benches/manager_cpython.py`.
//!
//! ```text
//! cargo bench --bench manager
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use support::{BoxError, Figure, Report, bounded};
use tokio_multiprocessing::{
    self as mp, DictProxy, LockProxy, Manager, Process, QueueProxy, StartMethod,
};

/// The most any one figure (all its runs) may take.
const FIGURE_TIMEOUT: Duration = Duration::from_secs(300);

const CALLS: u32 = 5_000;
const TASKS: u32 = 1_000;
const ITEMS: u32 = 50_000;
const STARTS: usize = 20;
const ROUNDS: usize = 3;
const IN_FLIGHT: usize = 64;
const KEY: &str = "bench key";

/// Microseconds per dict call: `CALLS` sets and `CALLS` gets, one after the other.
async fn dict_calls(d: &DictProxy<u32, u32>) -> mp::Result<Vec<f64>> {
    for i in 0..100 {
        d.insert(i, i).await?;
    }
    let mut out = Vec::new();
    for _ in 0..support::runs(ROUNDS) {
        let t = Instant::now();
        for i in 0..CALLS {
            d.insert(i, i).await?;
            if d.get(&i).await? != Some(i) {
                return Err(mp::Error::Manager(format!("key {i} read back wrong")));
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(2 * CALLS));
    }
    Ok(out)
}

/// Inserts `i` into the dict it is given: a pool task that uses a proxy.
async fn insert_into(d: DictProxy<u32, u32>, i: u32) -> mp::Result<()> {
    d.insert(i, i).await.map(drop)
}

/// Takes the lock it is given, inserts `i` into the dict, and releases the lock: a pool
/// task that takes a lock through a proxy.
async fn insert_locked(lock: LockProxy, d: DictProxy<u32, u32>, i: u32) -> mp::Result<()> {
    lock.lock().await?;
    d.insert(i, i).await?;
    lock.release().await
}

/// What a pool task of [`pool_tasks`] is given.
#[derive(Clone, Copy, PartialEq)]
enum Given {
    /// A number, which it returns.
    Number,
    /// A dict proxy, which it inserts into.
    Dict,
    /// A lock proxy and a dict proxy: it inserts holding the lock.
    Lock,
}

/// Returns `i`: a pool task given no proxy.
async fn echo(i: u32) -> u32 {
    i
}

/// Microseconds per pool task, one worker, one task at a time: each given a dict proxy to
/// insert into (`with_proxy`), or a number to return.
async fn pool_tasks(given: Given) -> mp::Result<Vec<f64>> {
    let m = Manager::start().await?;
    let d = m.dict::<u32, u32>().await?;
    let lock = m.lock().await?;
    let pool = mp::Pool::new(1).await?;
    let task = |i: u32| {
        let (pool, d, lock) = (&pool, d.clone(), lock.clone());
        async move {
            match given {
                Given::Number => pool
                    .apply(echo, (i,))
                    .await
                    .map(drop)
                    .map_err(mp::Error::from),
                Given::Dict => pool.apply(insert_into, (d, i)).await?,
                Given::Lock => pool.apply(insert_locked, (lock, d, i)).await?,
            }
        }
    };
    for i in 0..20 {
        task(i).await?;
    }
    let mut out = Vec::new();
    for _ in 0..support::runs(ROUNDS) {
        let t = Instant::now();
        for i in 0..TASKS {
            task(i).await?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(TASKS));
    }
    pool.close();
    pool.join().await?;
    m.shutdown().await?;
    Ok(out)
}

async fn dict_local() -> mp::Result<Vec<f64>> {
    let m = Manager::start().await?;
    let r = dict_calls(&m.dict().await?).await;
    m.shutdown().await?;
    r
}

async fn dict_in_process() -> mp::Result<Vec<f64>> {
    let m = Manager::builder().serve().await?;
    let r = dict_calls(&m.dict().await?).await;
    m.shutdown().await?;
    r
}

/// Baseline: microseconds per raw 8-byte round trip with a child process, over TCP loopback
/// if `tcp`, else over a Unix socket pair: the floor under a dict call by the same
/// transport, measured as many times as the dict figures.
async fn raw_ping_pong(tcp: bool) -> mp::Result<Vec<f64>> {
    let trips = 2 * u64::from(CALLS);
    support::raw_ping_pong::round_trips(tcp, 200, trips, support::runs(ROUNDS)).await
}

/// A manager served by a process of its own on a TCP loopback port with a key, and a
/// client of it connected by address.
async fn tcp_manager_and_client() -> mp::Result<(Manager, Manager)> {
    let m = Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .start()
        .await?;
    let address = m.address().cloned().ok_or(mp::Error::Closed)?;
    let c = Manager::connect(address, KEY).await?;
    Ok((m, c))
}

async fn dict_tcp() -> mp::Result<Vec<f64>> {
    let (m, c) = tcp_manager_and_client().await?;
    m.register("d", &m.dict::<u32, u32>().await?).await?;
    let r = dict_calls(&c.get("d").await?).await;
    m.shutdown().await?;
    r
}

/// Puts `n` items, one call after the other, or `IN_FLIGHT` calls at a time.
async fn producer(q: QueueProxy<u64>, n: u32, pipelined: bool) -> mp::Result<()> {
    if !pipelined {
        for i in 0..n {
            q.put(u64::from(i)).await?;
        }
        return Ok(());
    }
    let mut calls = FuturesOrdered::new();
    for i in 0..n {
        if calls.len() >= IN_FLIGHT
            && let Some(r) = calls.next().await
        {
            r?;
        }
        let q = q.clone();
        calls.push_back(async move { q.put(u64::from(i)).await.map_err(mp::Error::from) });
    }
    while let Some(r) = calls.next().await {
        r?;
    }
    Ok(())
}

/// Items per second from a producer process to this one through a queue of a manager
/// started here: both processes reach the queue's ring.
async fn queue_local(pipelined: bool) -> mp::Result<Vec<f64>> {
    let m = Manager::start().await?;
    let r = queue_between_processes(&m.queue::<u64>().await?, pipelined).await;
    m.shutdown().await?;
    r
}

/// The same with both processes connected by address (TCP loopback, with a key): every
/// call goes to the server.
async fn queue_tcp() -> mp::Result<Vec<f64>> {
    let (m, c) = tcp_manager_and_client().await?;
    m.register("q", &m.queue::<u64>().await?).await?;
    let r = queue_between_processes(&c.get("q").await?, false).await;
    m.shutdown().await?;
    r
}

/// Items per second from a producer process to this one through the queue proxy `q`.
async fn queue_between_processes(q: &QueueProxy<u64>, pipelined: bool) -> mp::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..support::runs(1) {
        let t = Instant::now();
        let mut p = Process::new(producer, (q.clone(), ITEMS, pipelined))
            .start()
            .await?;
        let mut calls = FuturesOrdered::new();
        let mut sum = 0u64;
        for _ in 0..ITEMS {
            if pipelined {
                if calls.len() >= IN_FLIGHT
                    && let Some(r) = calls.next().await
                {
                    sum += r?;
                }
                let q = q.clone();
                calls.push_back(async move { q.get().await });
            } else {
                sum += q.get().await?;
            }
        }
        while let Some(r) = calls.next().await {
            sum += r?;
        }
        let secs = t.elapsed().as_secs_f64();
        p.join().await?;
        if sum != u64::from(ITEMS) * u64::from(ITEMS - 1) / 2 {
            return Err(mp::Error::Manager(format!("items lost: sum {sum}")));
        }
        out.push(f64::from(ITEMS) / secs);
    }
    Ok(out)
}

/// How a manager is started for [`start_and_shutdown`].
#[derive(Clone, Copy)]
enum How {
    /// Served by tasks of this process.
    InProcess,
    /// A server process started by the default start method.
    Process,
    /// A server process forked by the fork server (started once before the runs).
    ForkServer,
}

/// Milliseconds to start a manager (until its first object exists) and to shut it down.
async fn start_and_shutdown(how: How) -> mp::Result<(Vec<f64>, Vec<f64>)> {
    if let How::ForkServer = how {
        Manager::start_with(StartMethod::ForkServer)
            .await?
            .shutdown()
            .await?;
    }
    let (mut starts, mut stops) = (Vec::new(), Vec::new());
    for _ in 0..support::runs(STARTS) {
        let t = Instant::now();
        let m = match how {
            How::InProcess => Manager::builder().serve().await?,
            How::Process => Manager::start().await?,
            How::ForkServer => Manager::start_with(StartMethod::ForkServer).await?,
        };
        m.event().await?;
        starts.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        m.shutdown().await?;
        stops.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((starts, stops))
}

fn main() -> Result<(), BoxError> {
    support::reexec::exit_if_child();
    mp::init();
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new("manager");
    let (local, tcp) = rt.block_on(async {
        let here = Figure::new(
            "dict_call_in_process_us",
            "us",
            bounded("dict_call_in_process_us", FIGURE_TIMEOUT, dict_in_process()).await?,
        );
        let local_runs = bounded("dict_call_local_us", FIGURE_TIMEOUT, dict_local()).await?;
        let local = Figure::new("dict_call_local_us", "us", local_runs.clone());
        report.add(local.clone().baseline(here));
        let unix_floor = Figure::new(
            "raw_unix_ping_pong_us",
            "us",
            bounded(
                "raw_unix_ping_pong_us",
                FIGURE_TIMEOUT,
                raw_ping_pong(false),
            )
            .await?,
        );
        report.add(Figure::new("dict_call_local_vs_raw", "us", local_runs).baseline(unix_floor));
        let tcp = bounded("dict_call_tcp_us", FIGURE_TIMEOUT, dict_tcp()).await?;
        let tcp_figure = Figure::new("dict_call_tcp_us", "us", tcp.clone());
        report.add(tcp_figure.clone().baseline(local.clone()));
        let tcp_floor = Figure::new(
            "raw_tcp_ping_pong_us",
            "us",
            bounded("raw_tcp_ping_pong_us", FIGURE_TIMEOUT, raw_ping_pong(true)).await?,
        );
        report.add(Figure::new("dict_call_tcp_vs_raw", "us", tcp).baseline(tcp_floor));
        let one = bounded(
            "queue_proxy_items_per_s",
            FIGURE_TIMEOUT,
            queue_local(false),
        )
        .await?;
        let many = bounded(
            "queue_proxy_pipelined_items_per_s",
            FIGURE_TIMEOUT,
            queue_local(true),
        )
        .await?;
        let tcp = bounded("queue_proxy_tcp_items_per_s", FIGURE_TIMEOUT, queue_tcp()).await?;
        let one = Figure::new("queue_proxy_items_per_s", "items/s", one);
        report.add(one.clone());
        report.add(
            Figure::new("queue_proxy_pipelined_items_per_s", "items/s", many).baseline(one.clone()),
        );
        report.add(Figure::new("queue_proxy_tcp_items_per_s", "items/s", tcp).baseline(one));
        let given_a_number = Figure::new(
            "pool_task_given_a_number_us",
            "us",
            bounded(
                "pool_task_given_a_number_us",
                FIGURE_TIMEOUT,
                pool_tasks(Given::Number),
            )
            .await?,
        );
        let given_a_proxy = Figure::new(
            "pool_task_given_a_proxy_us",
            "us",
            bounded(
                "pool_task_given_a_proxy_us",
                FIGURE_TIMEOUT,
                pool_tasks(Given::Dict),
            )
            .await?,
        );
        report.add(given_a_proxy.clone().baseline(given_a_number));
        let taking_a_lock = Figure::new(
            "pool_task_taking_a_lock_us",
            "us",
            bounded(
                "pool_task_taking_a_lock_us",
                FIGURE_TIMEOUT,
                pool_tasks(Given::Lock),
            )
            .await?,
        );
        report.add(taking_a_lock.baseline(given_a_proxy));
        let (here_start, here_stop) = bounded(
            "manager_start_ms",
            FIGURE_TIMEOUT,
            start_and_shutdown(How::InProcess),
        )
        .await?;
        let reexec = Figure::new(
            "reexec_to_main_ms",
            "ms",
            support::reexec::to_main_ms(support::runs(STARTS))?,
        );
        let (start, stop) = bounded(
            "manager_start_ms",
            FIGURE_TIMEOUT,
            start_and_shutdown(How::Process),
        )
        .await?;
        let (fs_start, fs_stop) = bounded(
            "manager_start_forkserver_ms",
            FIGURE_TIMEOUT,
            start_and_shutdown(How::ForkServer),
        )
        .await?;
        let serve_start = Figure::new("manager_serve_start_ms", "ms", here_start);
        report.add(
            Figure::new("manager_start_forkserver_ms", "ms", fs_start)
                .baseline(serve_start.clone()),
        );
        report.add(Figure::new("manager_shutdown_forkserver_ms", "ms", fs_stop));
        report.add(Figure::new("manager_start_ms", "ms", start.clone()).baseline(serve_start));
        report.add(Figure::new("manager_start_vs_reexec", "ms", start).baseline(reexec));
        report.add(
            Figure::new("manager_shutdown_ms", "ms", stop).baseline(Figure::new(
                "manager_serve_shutdown_ms",
                "ms",
                here_stop,
            )),
        );
        Ok::<_, BoxError>((local, tcp_figure))
    })?;
    drop(rt);
    // The same calls from a multi-thread runtime's `block_on` (a `#[tokio::main]` program),
    // where a reply that the caller does not take itself crosses threads.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let runs = bounded(
            "dict_call_local_multi_thread_us",
            FIGURE_TIMEOUT,
            dict_local(),
        )
        .await?;
        report.add(Figure::new("dict_call_local_multi_thread_us", "us", runs).baseline(local));
        let runs = bounded("dict_call_tcp_multi_thread_us", FIGURE_TIMEOUT, dict_tcp()).await?;
        report.add(Figure::new("dict_call_tcp_multi_thread_us", "us", runs).baseline(tcp));
        Ok::<_, BoxError>(())
    })?;
    report.finish();
    Ok(())
}
