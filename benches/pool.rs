//! Pool figures, each beside its baseline. Run with `cargo bench --bench pool`;
//! `python3 benches/pool_cpython.py` runs CPython's `multiprocessing.Pool` on the same work
//! and prints both sides with the ratio.
//!
//! Figure lines as described in `benches/support/mod.rs`; a figure is the median of 5 runs
//! (`TKMP_BENCH_REPEAT` sets another count), the worker-death figure of 10, the RSS figure is
//! one run. `POOL_BENCH_IMAP_N` sets how many inputs the RSS figure streams (default
//! 10,000,000).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use support::{Figure, Report, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

fn noop(x: u64) -> u64 {
    x
}

fn nothing() {}

/// Sleeps until `at` (nanoseconds since the epoch), then exits at once with code 3 (a
/// worker dying mid-task; `abort()` would add the kernel's core-dump handling to the figure).
fn exit_at(at: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    std::thread::sleep(Duration::from_nanos(at.saturating_sub(now)));
    std::process::exit(3);
}

async fn socketpair_ping_pong(rounds: u32) -> std::io::Result<Duration> {
    let (mut a, mut b) = tokio::net::UnixStream::pair()?;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        for _ in 0..rounds {
            b.read_exact(&mut buf).await?;
            b.write_all(&buf).await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let mut buf = [0u8; 16];
    let t = Instant::now();
    for _ in 0..rounds {
        a.write_all(&buf).await?;
        a.read_exact(&mut buf).await?;
    }
    let d = t.elapsed();
    echo.await.map_err(std::io::Error::other)??;
    Ok(d)
}

/// The floor of any cross-process round trip on this machine: 16 bytes to `cat` and back
/// through pipes, both sides waking from epoll.
async fn pipe_ping_pong_with_cat(rounds: u32) -> std::io::Result<Duration> {
    let mut cat = tokio::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(mut to), Some(mut from)) = (cat.stdin.take(), cat.stdout.take()) else {
        return Err(std::io::Error::other("no pipes to cat"));
    };
    let mut buf = [7u8; 16];
    for _ in 0..100 {
        to.write_all(&buf).await?;
        from.read_exact(&mut buf).await?;
    }
    let t = Instant::now();
    for _ in 0..rounds {
        to.write_all(&buf).await?;
        from.read_exact(&mut buf).await?;
    }
    let d = t.elapsed();
    drop(to);
    cat.wait().await?;
    Ok(d)
}

/// A task feeding 0..n into a bounded channel (a service's queue of work), and the channel.
fn fed_channel(n: u64) -> (futures::channel::mpsc::Receiver<u64>, Feeder) {
    let (mut tx, rx) = futures::channel::mpsc::channel(1024);
    let feeder = tokio::spawn(async move {
        use futures::SinkExt;
        tx.send_all(&mut futures::stream::iter(0..n).map(Ok)).await
    });
    (rx, feeder)
}

type Feeder = tokio::task::JoinHandle<Result<(), futures::channel::mpsc::SendError>>;

/// Waits for the task of [`fed_channel`] to have fed every item.
async fn fed(feeder: Feeder) -> mp::Result<()> {
    feeder
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    Ok(())
}

async fn run() -> mp::Result<()> {
    if std::env::var("POOL_BENCH_ONLY").as_deref() == Ok("apply") {
        let pool = mp::Pool::new(2).await?;
        for i in 0..1000 {
            pool.apply(noop, (i,)).await?;
        }
        let t = Instant::now();
        for i in 0..20_000u64 {
            pool.apply(noop, (i,)).await?;
        }
        println!(
            "apply round trip {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / 20_000.0
        );
        return Ok(());
    }
    if std::env::var("POOL_BENCH_ONLY").as_deref() == Ok("async") {
        let pool = mp::Pool::new(2).await?;
        for _ in 0..10 {
            let t = Instant::now();
            let hs: Vec<_> = (0..10_000u64)
                .map(|i| pool.apply_async(noop, (i,)))
                .collect();
            let v = futures::future::try_join_all(hs).await?;
            assert_eq!(v.len(), 10_000);
            println!(
                "10k apply_async: {:.1} k/s",
                10.0 / t.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    if std::env::var("POOL_BENCH_ONLY").as_deref() == Ok("map") {
        let pool = mp::Pool::new(2).await?;
        for _ in 0..5 {
            let t = Instant::now();
            let v = pool.map(noop, 0..1_000_000u64).await?;
            assert_eq!(v.len(), 1_000_000);
            println!("map 1M: {:.2} M/s", 1.0 / t.elapsed().as_secs_f64());
        }
        return Ok(());
    }
    let reps = support::runs(5);
    let mut report = Report::new("pool");

    // Build → first result, spawn start method: a fresh pool each time.
    let mut first = Vec::new();
    let mut one = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let pool = mp::Pool::builder()
            .processes(2)
            .start_method(mp::StartMethod::Spawn)
            .build()
            .await?;
        pool.apply(noop, (1,)).await?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
        drop(pool);
        let t = Instant::now();
        let mut p = mp::Process::new(nothing, ()).start().await?;
        p.join().await?;
        one.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report.add(
        Figure::new("pool2_build_to_first_result", "ms", first).baseline(Figure::new(
            "one_process_start_join",
            "ms",
            one,
        )),
    );

    // map, 1,000,000 trivial tasks, default chunksize: each on a fresh pool (built, then one
    // apply), as a program's first big map would run.
    let n = 1_000_000u64;
    let mut rates = Vec::new();
    let mut local_rates = Vec::new();
    for _ in 0..reps {
        let pool = mp::Pool::new(2).await?;
        pool.apply(noop, (1,)).await?;
        let t = Instant::now();
        let v = pool.map(noop, 0..n).await?;
        let d = t.elapsed();
        assert_eq!(v.len() as u64, n);
        drop(v);
        drop(pool);
        rates.push(n as f64 / d.as_secs_f64() / 1e6);
        let t = Instant::now();
        let local: Vec<u64> = (0..n).map(std::hint::black_box(noop)).collect();
        let dl = t.elapsed();
        assert_eq!(local.len() as u64, n);
        local_rates.push(n as f64 / dl.as_secs_f64() / 1e6);
    }
    report.add(
        Figure::new("map_1M_default_chunksize", "Mtasks/s", rates).baseline(Figure::new(
            "same_map_in_process",
            "Mtasks/s",
            local_rates,
        )),
    );

    // The other figures share one pool.
    let pool = mp::Pool::new(2).await?;
    pool.apply(noop, (1,)).await?;

    // map, chunksize 1, 20,000 tasks; the same on a pool whose workers read their memory
    // after their tasks (a limit never reached).
    let n = 20_000u64;
    let mut rates = Vec::new();
    let mut limited_rates = Vec::new();
    let mut pp_rates = Vec::new();
    let mut pp_us = Vec::new();
    let limited = mp::Pool::builder()
        .processes(2)
        .max_memory_per_child(1 << 40)
        .build()
        .await?;
    limited.apply(noop, (1,)).await?;
    for _ in 0..reps {
        let t = Instant::now();
        let v = pool.map(noop, 0..n).chunksize(1).await?;
        let d = t.elapsed();
        assert_eq!(v.len() as u64, n);
        rates.push(n as f64 / d.as_secs_f64() / 1e3);
        let t = Instant::now();
        let v = limited.map(noop, 0..n).chunksize(1).await?;
        let d = t.elapsed();
        assert_eq!(v.len() as u64, n);
        limited_rates.push(n as f64 / d.as_secs_f64() / 1e3);
        let pp = socketpair_ping_pong(20_000).await?;
        pp_rates.push(20_000.0 / pp.as_secs_f64() / 1e3);
        pp_us.push(pp.as_secs_f64() * 1e6 / 20_000.0);
    }
    report.add(
        Figure::new("map_20k_chunksize_1", "ktasks/s", rates.clone()).baseline(Figure::new(
            "tokio_socketpair_round_trips",
            "k/s",
            pp_rates,
        )),
    );
    report.add(
        Figure::new(
            "map_20k_chunksize_1_max_memory_per_child",
            "ktasks/s",
            limited_rates,
        )
        .baseline(Figure::new("map_20k_chunksize_1", "ktasks/s", rates)),
    );
    drop(limited);

    // imap of 1M trivial items whose input is a channel a task feeds (a service's queue of
    // work), beside the same imap over an iterator.
    let n = 1_000_000u64;
    let mut stream_rates = Vec::new();
    let mut iter_rates = Vec::new();
    let mut channel_rates = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let (rx, feeder) = fed_channel(n);
        let count = rx.map(noop).count().await;
        channel_rates.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        assert_eq!(count as u64, n);
        fed(feeder).await?;
        let t = Instant::now();
        let count = pool.imap(noop, 0..n).count().await;
        iter_rates.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        assert_eq!(count as u64, n);
        let t = Instant::now();
        let (rx, feeder) = fed_channel(n);
        let count = pool.imap_stream(noop, rx).count().await;
        stream_rates.push(n as f64 / t.elapsed().as_secs_f64() / 1e6);
        assert_eq!(count as u64, n);
        fed(feeder).await?;
    }
    report.add(
        Figure::new(
            "imap_stream_1M_vs_the_channel",
            "Mtasks/s",
            stream_rates.clone(),
        )
        .baseline(Figure::new(
            "the_channel_drained_here",
            "Mtasks/s",
            channel_rates,
        )),
    );
    report.add(
        Figure::new("imap_stream_1M_from_a_channel", "Mtasks/s", stream_rates).baseline(
            Figure::new("imap_1M_from_an_iterator", "Mtasks/s", iter_rates),
        ),
    );

    // apply round trip, one at a time.
    for i in 0..1000 {
        pool.apply(noop, (i,)).await?;
    }
    let rounds = 5_000u32;
    let mut rtt = Vec::new();
    let mut cat_us = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        for i in 0..rounds {
            pool.apply(noop, (u64::from(i),)).await?;
        }
        rtt.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds));
        let cat = pipe_ping_pong_with_cat(2_000).await?;
        cat_us.push(cat.as_secs_f64() * 1e6 / 2_000.0);
    }
    let cat = Figure::new("pipe_ping_pong_with_a_cat_process", "us", cat_us);
    report.add(Figure::new("apply_round_trip", "us", rtt).baseline(cat.clone()));
    report.note(format_args!(
        "tokio socketpair ping-pong within this process: {:.2} us (median)",
        support::median(&pp_us)
    ));
    // The same from a current-thread runtime: no hops between runtime threads.
    let ct = std::thread::spawn(move || -> mp::Result<Vec<f64>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let pool = mp::Pool::new(1).await?;
            for i in 0..1000 {
                pool.apply(noop, (i,)).await?;
            }
            let pool = &pool;
            support::try_repeat(reps, || async move {
                let t = Instant::now();
                for i in 0..5_000u64 {
                    pool.apply(noop, (i,)).await?;
                }
                Ok::<_, mp::Error>(t.elapsed().as_secs_f64() * 1e6 / 5_000.0)
            })
            .await
        })
    })
    .join()
    .map_err(|_| mp::Error::Protocol("the current-thread bench panicked".into()))??;
    report.add(Figure::new("apply_round_trip_current_thread_runtime", "us", ct).baseline(cat));

    // 10,000 concurrent apply_async.
    let n = 10_000u64;
    let pool_ref = &pool;
    let rates = support::try_repeat(reps, || async move {
        let t = Instant::now();
        let hs: Vec<_> = (0..n).map(|i| pool_ref.apply_async(noop, (i,))).collect();
        let v = futures::future::try_join_all(hs).await?;
        let d = t.elapsed();
        assert_eq!(v.len() as u64, n);
        Ok::<_, mp::Error>(n as f64 / d.as_secs_f64() / 1e3)
    })
    .await?;
    report.add(Figure::new("apply_async_10k_concurrent", "ktasks/s", rates));

    // Worker death → error: the task exits at a set time; we see the error. Baseline: the
    // same exit in a plain `Process`, seen by `join()` (the floor: exit, teardown, wake-up).
    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
    let mut lat = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..support::runs(10) {
        let at = now_ns() + 20_000_000;
        let r = pool.apply(exit_at, (at,)).await;
        let seen = now_ns();
        assert!(r.as_ref().is_err_and(|e| e.is_worker_lost()), "{r:?}");
        lat.push((seen.saturating_sub(at)) as f64 / 1e3);
        pool.apply(noop, (0,)).await?; // wait for the replacement

        let at = now_ns() + 20_000_000;
        let mut p = mp::Process::new(exit_at, (at,)).start().await?;
        p.join().await?;
        floor.push((now_ns().saturating_sub(at)) as f64 / 1e3);
    }
    report.add(
        Figure::new("worker_death_to_error_median", "us", lat).baseline(Figure::new(
            "process_exit_to_join_median",
            "us",
            floor,
        )),
    );

    // Peak parent RSS while imap_unordered streams N inputs: one run (a second one would
    // start from the first one's peak).
    let n: u64 = std::env::var("POOL_BENCH_IMAP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let before = rss_kib();
    let mut peak = before;
    let mut s = pool.imap_unordered(noop, 0..n).chunksize(1000);
    let mut count = 0u64;
    let t = Instant::now();
    while let Some(r) = s.next().await {
        r?;
        count += 1;
        if count.is_multiple_of(100_000) {
            peak = peak.max(rss_kib());
        }
    }
    let d = t.elapsed();
    assert_eq!(count, n);
    report.add(
        Figure::new("imap_unordered_peak_rss", "MiB", vec![peak as f64 / 1024.0]).baseline(
            Figure::new("rss_before_streaming", "MiB", vec![before as f64 / 1024.0]),
        ),
    );
    report.note(format_args!(
        "imap_unordered streamed {n} inputs (chunksize 1000) at {:.2} M/s",
        n as f64 / d.as_secs_f64() / 1e6
    ));
    pool.close();
    pool.join().await?;
    report.finish();
    Ok(())
}

fn main() {
    mp::init();
    let rt = if std::env::var("POOL_BENCH_RT").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    // The bench runs as a spawned task, as a server's request handlers do (a future that
    // `block_on` runs directly sits outside the runtime's worker threads).
    let outcome = rt.block_on(async {
        tokio::spawn(run())
            .await
            .unwrap_or_else(|e| Err(mp::Error::Protocol(format!("the bench task failed: {e}"))))
    });
    if let Err(e) = outcome {
        eprintln!("pool bench failed: {e}");
        std::process::exit(1);
    }
}
