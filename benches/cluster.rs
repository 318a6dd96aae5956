//! Cluster figures, each beside its baseline, on "hosts" that are network namespaces of
//! this machine (see `tests/support/netns.rs`; root is needed, the bench says so and stops
//! otherwise). Run with `cargo bench --bench cluster`.
//!
//! - `cluster_round_trip`: one `apply` after another on a one-worker cluster pool, beside a
//!   raw TCP ping-pong of 16 bytes between the same two namespaces (the target: at most
//!   1.5 times it);
//! - `cluster_10k_apply_async`: 10,000 `apply_async` at once on two hosts of one worker,
//!   beside a local pool of two workers in the same run (the target: at least half of it);
//! - `cluster_map_1m`: a map of 1,000,000 trivial items on the same two hosts, beside the
//!   same local pool (at least half of it);
//! - `cluster_map_behind_relay`: a map of short tasks (150 µs of CPU each, one a chunk) on one
//!   host of one worker whose every connection passes through a relay that holds each chunk
//!   0.5 ms in each direction (a link of 1 ms round trip), beside the same map on the same
//!   host with no relay (the target: the worker stays busy, so at least 90% of it). The
//!   relay's delay is `CLUSTER_BENCH_RELAY_US` microseconds; `CLUSTER_BENCH_ONLY=relay` runs
//!   this figure alone (and `CLUSTER_BENCH_ONLY=round_trip` the two round-trip figures);
//! - `cluster_built_to_first_result`: from `Cluster::builder()` (one host of one worker)
//!   through `Pool::builder().cluster(..).build()` to the first result, beside a local
//!   one-worker pool's built-to-first-result (the target: at most 100 ms).
//!
//! Figure lines as described in `benches/support/mod.rs`; each figure is the median of 5
//! runs unless `TKMP_BENCH_REPEAT` says otherwise.

mod support;

#[path = "../tests/support/netns.rs"]
#[allow(dead_code)]
mod netns;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::Net;
use support::{BoxError, Figure, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

fn noop(x: u64) -> u64 {
    x
}

/// A task of `us` microseconds of CPU.
fn busy(us: u64) -> u64 {
    let t = Instant::now();
    let d = Duration::from_micros(us);
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
    us
}

/// A relay in the head's namespace, listening on host 0's side of its link (`10.77.1.1`) on
/// the port of the head's listener, that forwards each connection to the head and holds every
/// chunk it reads for `delay` (at least: the sleep is the kernel's) before writing it on, in
/// each direction, without holding up the chunks behind it. Its threads are plain threads
/// with blocking sockets, because tokio's timer counts in milliseconds.
struct Relay {
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// The address agents dial to go through the relay (with the head's port).
    const HOST: &'static str = "10.77.1.1";

    fn start(net: &Net, port: u16, delay: Duration) -> Result<Relay, BoxError> {
        let path = format!("/run/netns/{}", net.head_ns());
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stopped = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            let listener = (|| -> Result<TcpListener, String> {
                let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("setns: {e}"))?;
                let l = TcpListener::bind((Relay::HOST, port)).map_err(|e| format!("bind: {e}"))?;
                l.set_nonblocking(true).map_err(|e| e.to_string())?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        // This thread is in the head's namespace: the head is reachable.
                        let Ok(up) = TcpStream::connect((netns::HEAD_IP, port)) else {
                            continue;
                        };
                        let _ = relay_both_ways(down, up, delay);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))??;
        Ok(Relay {
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Relays `a` and `b` to each other, each chunk `delay` late; the threads end when both
/// sides have closed.
fn relay_both_ways(a: TcpStream, b: TcpStream, delay: Duration) -> std::io::Result<()> {
    a.set_nonblocking(false)?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    delayed_pipe(a, b, delay);
    delayed_pipe(b2, a2, delay);
    Ok(())
}

/// Copies what `from` sends to `to`, each chunk `delay` after it was read: a reader thread
/// stamps the chunks, a writer thread sends each when its time comes.
fn delayed_pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Thousands of tasks per second for a map of `n` tasks of `us` microseconds, one a chunk.
async fn map_short(pool: &mp::Pool, n: u64, us: u64) -> Result<f64, BoxError> {
    let t = Instant::now();
    let out = pool.map(busy, (0..n).map(|_| us)).chunksize(1).await?;
    let secs = t.elapsed().as_secs_f64();
    if out.len() as u64 != n {
        return Err("lost results".into());
    }
    Ok(n as f64 / secs / 1e3)
}

/// A one-host, one-worker cluster pool whose connections go through a [`Relay`] of `delay`.
async fn relayed_pool(
    net: &Net,
    delay: Duration,
) -> Result<(Relay, mp::Cluster, mp::Pool), BoxError> {
    let listener = net.listen()?;
    let relay = Relay::start(net, listener.local_addr()?.port(), delay)?;
    let builder = mp::Cluster::builder()
        .listener(listener)
        .advertise(Relay::HOST);
    let (cluster, pool) = pool_on(net, builder, 1, 1).await?;
    Ok((relay, cluster, pool))
}

/// The relay figure: a map of short tasks behind the relay, beside the same with none.
async fn relay_figure(net: &Net, report: &mut Report, n: usize) -> Result<(), BoxError> {
    let us = std::env::var("CLUSTER_BENCH_RELAY_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let (tasks, task_us) = (4000, 150);
    let (mut relayed, mut direct) = (Vec::new(), Vec::new());
    {
        let (_relay, _cluster, pool) = relayed_pool(net, Duration::from_micros(us)).await?;
        map_short(&pool, 500, task_us).await?;
        for _ in 0..n {
            relayed.push(map_short(&pool, tasks, task_us).await?);
        }
    }
    {
        let (_cluster, pool) = cluster_pool(net, 1, 1).await?;
        map_short(&pool, 500, task_us).await?;
        for _ in 0..n {
            direct.push(map_short(&pool, tasks, task_us).await?);
        }
    }
    report.add(
        Figure::new("cluster_map_behind_relay", "ktasks/s", relayed).baseline(Figure::new(
            "cluster_map_no_relay",
            "ktasks/s",
            direct,
        )),
    );
    Ok(())
}

/// A cluster of `hosts` namespaces of `workers` workers each, all connected, and a pool on
/// it with every worker ready.
async fn cluster_pool(
    net: &Net,
    hosts: usize,
    workers: usize,
) -> Result<(mp::Cluster, mp::Pool), BoxError> {
    pool_on(
        net,
        mp::Cluster::builder().listener(net.listen()?),
        hosts,
        workers,
    )
    .await
}

/// [`cluster_pool`] from a cluster builder that already has its listener (and maybe the
/// address the agents dial).
async fn pool_on(
    net: &Net,
    builder: mp::ClusterBuilder,
    hosts: usize,
    workers: usize,
) -> Result<(mp::Cluster, mp::Pool), BoxError> {
    let cluster = builder
        .launcher(
            mp::launch::Command::new(&net.template())
                .hosts(hosts)
                .workers_per_host(workers),
        )
        .build()
        .await?;
    cluster
        .wait_for_hosts(hosts, Duration::from_secs(30))
        .await?;
    let mut b = mp::Pool::builder().cluster(&cluster);
    if let Ok(us) = std::env::var("CLUSTER_BENCH_SPIN_US") {
        b = b.spin(Duration::from_micros(us.parse().unwrap_or(0)));
    }
    let pool = b.build().await?;
    ready(&pool, hosts * workers).await?;
    Ok((cluster, pool))
}

/// Waits until the pool has `n` workers ready (a task each time has the pool publish its
/// figures).
async fn ready(pool: &mp::Pool, n: usize) -> Result<(), BoxError> {
    for _ in 0..3000 {
        pool.apply(noop, (0,)).await?;
        if pool.stats().workers_alive == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the pool's workers did not all start".into())
}

/// Microseconds per round trip of 16 bytes between the head's namespace and host 0's: an
/// echo thread in the host, the client on the runtime, as the pool's reader is.
async fn tcp_ping_pong(net: &Net, rounds: u32) -> Result<f64, BoxError> {
    let path = format!("/run/netns/{}", net.host_ns(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let echo = std::thread::spawn(move || -> Result<(), String> {
        let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        let l = std::net::TcpListener::bind(("10.77.1.2", 0)).map_err(|e| e.to_string())?;
        let _ = tx.send(l.local_addr().map_err(|e| e.to_string())?.port());
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 16];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
        Ok(())
    });
    let port = rx.recv_timeout(Duration::from_secs(10))?;
    let head = format!("/run/netns/{}", net.head_ns());
    let std_stream = std::thread::spawn(move || -> Result<std::net::TcpStream, String> {
        let ns = std::fs::File::open(&head).map_err(|e| e.to_string())?;
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| e.to_string())?;
        std::net::TcpStream::connect(("10.77.1.2", port)).map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "connect thread panicked")??;
    std_stream.set_nonblocking(true)?;
    std_stream.set_nodelay(true)?;
    let mut s = tokio::net::TcpStream::from_std(std_stream)?;
    let mut buf = [7u8; 16];
    for _ in 0..200 {
        s.write_all(&buf).await?;
        s.read_exact(&mut buf).await?;
    }
    let t = Instant::now();
    for _ in 0..rounds {
        s.write_all(&buf).await?;
        s.read_exact(&mut buf).await?;
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    drop(s);
    let _ = echo.join();
    Ok(us)
}

/// Microseconds per `apply` of a trivial task, one after the other.
async fn apply_round_trip(pool: &mp::Pool, rounds: u64) -> Result<f64, BoxError> {
    for i in 0..200 {
        pool.apply(noop, (i,)).await?;
    }
    let t = Instant::now();
    for i in 0..rounds {
        pool.apply(noop, (i,)).await?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / rounds as f64)
}

/// Thousands of tasks per second for 10,000 `apply_async` at once.
async fn concurrent_apply(pool: &mp::Pool) -> Result<f64, BoxError> {
    let t = Instant::now();
    let handles: Vec<_> = (0..10_000u64)
        .map(|i| pool.apply_async(noop, (i,)))
        .collect();
    let out = futures::future::try_join_all(handles).await?;
    let secs = t.elapsed().as_secs_f64();
    if out.len() != 10_000 {
        return Err("lost results".into());
    }
    Ok(10.0 / secs)
}

/// Millions of items per second for a map of 1,000,000 trivial items.
async fn map_1m(pool: &mp::Pool) -> Result<f64, BoxError> {
    let t = Instant::now();
    let out = pool.map(noop, 0..1_000_000u64).await?;
    let secs = t.elapsed().as_secs_f64();
    if out.len() != 1_000_000 || out[999_999] != 999_999 {
        return Err("wrong map result".into());
    }
    Ok(1.0 / secs)
}

/// Milliseconds from a cluster's builder to the first result of a pool on it.
async fn cluster_first_result(net: &Net) -> Result<f64, BoxError> {
    let t = Instant::now();
    let cluster = mp::Cluster::builder()
        .listener(net.listen()?)
        .launcher(
            mp::launch::Command::new(&net.template())
                .hosts(1)
                .workers_per_host(1),
        )
        .build()
        .await?;
    let pool = mp::Pool::builder().cluster(&cluster).build().await?;
    pool.apply(noop, (1,)).await?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    drop(pool);
    drop(cluster);
    // The agent is gone before the next run.
    for _ in 0..500 {
        if net.pids(0).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(ms)
}

async fn local_first_result() -> Result<f64, BoxError> {
    let t = Instant::now();
    let pool = mp::Pool::new(1).await?;
    pool.apply(noop, (1,)).await?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

async fn run() -> Result<(), BoxError> {
    let mut report = Report::new("cluster");
    let Some(net) = Net::new(2) else {
        report.note("the cluster bench makes network namespaces: run it as root");
        return Ok(());
    };
    let n = support::runs(5);
    if std::env::var("CLUSTER_BENCH_ONLY").as_deref() == Ok("relay") {
        relay_figure(&net, &mut report, n).await?;
        report.finish();
        return Ok(());
    }
    {
        let (_cluster, pool) = cluster_pool(&net, 1, 1).await?;
        // The local pool as it is by default (it spins while a core is spare), or as the
        // cluster pool is (no spin) with CLUSTER_BENCH_LOCAL_NO_SPIN=1.
        let mut local = mp::Pool::builder().processes(1);
        if std::env::var_os("CLUSTER_BENCH_LOCAL_NO_SPIN").is_some() {
            local = local.spin(Duration::ZERO);
        }
        let local = local.build().await?;
        let (mut pool_runs, mut tcp_runs, mut local_runs) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n {
            pool_runs.push(apply_round_trip(&pool, 2000).await?);
            tcp_runs.push(tcp_ping_pong(&net, 2000).await?);
            local_runs.push(apply_round_trip(&local, 2000).await?);
        }
        report.add(
            Figure::new("cluster_round_trip", "us", pool_runs.clone()).baseline(Figure::new(
                "tcp_ping_pong_same_namespaces",
                "us",
                tcp_runs,
            )),
        );
        report.add(
            Figure::new("cluster_round_trip_vs_local", "us", pool_runs).baseline(Figure::new(
                "local_pool_round_trip",
                "us",
                local_runs,
            )),
        );
    }
    if std::env::var("CLUSTER_BENCH_ONLY").as_deref() == Ok("round_trip") {
        report.finish();
        return Ok(());
    }
    {
        let (_cluster, pool) = cluster_pool(&net, 2, 1).await?;
        let local = mp::Pool::new(2).await?;
        ready(&local, 2).await?;
        let (mut c, mut l) = (Vec::new(), Vec::new());
        for _ in 0..n {
            c.push(concurrent_apply(&pool).await?);
            l.push(concurrent_apply(&local).await?);
        }
        report.add(
            Figure::new("cluster_10k_apply_async", "ktasks/s", c).baseline(Figure::new(
                "local_pool_10k_apply_async",
                "ktasks/s",
                l,
            )),
        );
        let (mut c, mut l) = (Vec::new(), Vec::new());
        for _ in 0..n {
            c.push(map_1m(&pool).await?);
            l.push(map_1m(&local).await?);
        }
        report.add(
            Figure::new("cluster_map_1m", "Mitems/s", c).baseline(Figure::new(
                "local_pool_map_1m",
                "Mitems/s",
                l,
            )),
        );
    }
    relay_figure(&net, &mut report, n).await?;
    let (mut c, mut l) = (Vec::new(), Vec::new());
    for _ in 0..n {
        c.push(cluster_first_result(&net).await?);
        l.push(local_first_result().await?);
    }
    report.add(
        Figure::new("cluster_built_to_first_result", "ms", c).baseline(Figure::new(
            "local_pool_built_to_first_result",
            "ms",
            l,
        )),
    );
    report.finish();
    Ok(())
}

fn main() {
    mp::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster bench: no runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = rt.block_on(async {
        tokio::spawn(run())
            .await
            .unwrap_or_else(|e| Err(format!("the bench task failed: {e}").into()))
    });
    if let Err(e) = outcome {
        eprintln!("cluster bench failed: {e}");
        std::process::exit(1);
    }
}
