//! Cost curves: how the pool's cost grows as the work grows, each row beside its baseline.
//! Run with `cargo bench --bench scaling`; `TKMP_BENCH_REPEAT` sets the runs of each row
//! (default 3), `SCALING_MAX_INFLIGHT` the largest number of tasks in flight (default
//! 1,000,000) and `SCALING_IMAP_N` the longest `imap_unordered` stream (default 10,000,000).
//!
//! - `apply_<size>`: one `apply` round trip of a `ByteBuf` argument and result of that size,
//!   beside the same bytes written through a socket pair and read back (the kernel's copy).
//! - `cpu_tasks_<n>_workers`: 400 tasks of a few milliseconds of arithmetic each on a pool of `n`
//!   workers, in tasks per second, beside the same tasks run one after the other in this
//!   process. On a machine of `c` cores the figure should reach about `c` times its
//!   baseline and stay there as `n` grows past `c`.
//! - `copy_64mib_into_fresh_memory`: the floor under `apply_64mib`, whose result lands in
//!   memory of its own: 64 MiB copied into a fresh allocation (a page fault per 4 KiB),
//!   beside the same copy into memory already in place.
//! - `inflight_<n>`: `n` trivial `apply_async` in flight at once, the time per task, and the
//!   parent's RSS growth per task (after the handles are awaited), beside a tokio `spawn` of
//!   the same trivial work.
//! - `imap_unordered_<n>`: the parent's peak RSS while `n` inputs stream through
//!   `imap_unordered`, beside its RSS before: flat means the stream holds a bounded window.

mod support;

use std::time::Instant;

use futures::StreamExt;
use serde_bytes::ByteBuf;
use support::{Figure, Report, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

fn echo(b: ByteBuf) -> ByteBuf {
    b
}

fn noop(x: u64) -> u64 {
    x
}

/// A few milliseconds of arithmetic that the optimiser cannot skip.
fn burn(seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..1_500_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{}mib", bytes >> 20)
    } else {
        format!("{}kib", bytes >> 10)
    }
}

/// Microseconds to write `len` bytes through a socket pair and read them back on the other
/// end, twice (there and back, as a round trip carries them).
async fn socket_round_trip(len: usize) -> std::io::Result<f64> {
    let (mut a, mut b) = tokio::net::UnixStream::pair()?;
    let data = vec![7u8; len];
    let t = Instant::now();
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; len];
        b.read_exact(&mut buf).await?;
        b.write_all(&buf).await?;
        Ok::<_, std::io::Error>(())
    });
    let (mut r, mut w) = a.split();
    let mut back = vec![0u8; len];
    let (sent, got) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
    sent?;
    got?;
    echo.await.map_err(std::io::Error::other)??;
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

async fn run() -> mp::Result<()> {
    let runs = support::runs(3);
    let mut report = Report::new("scaling");

    // Parent memory first, before large buffers have grown the heap.
    // Tasks in flight at once: time and parent memory per task.
    let max_inflight = env_u64("SCALING_MAX_INFLIGHT", 1_000_000);
    let pool = mp::Pool::new(2).await?;
    for n in [1u64, 100, 10_000, 1_000_000] {
        if n > max_inflight {
            continue;
        }
        let reps = if n >= 1_000_000 { 1 } else { runs };
        let (mut per_task, mut mem, mut spawned) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let before = rss_kib();
            let t = Instant::now();
            let hs: Vec<_> = (0..n).map(|i| pool.apply_async(noop, (i,))).collect();
            let grown = rss_kib().saturating_sub(before);
            let out = futures::future::try_join_all(hs).await?;
            per_task.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
            mem.push(grown as f64 * 1024.0 / n as f64);
            assert_eq!(out.len(), n as usize);
            let t = Instant::now();
            let hs: Vec<_> = (0..n)
                .map(|i| tokio::spawn(async move { noop(i) }))
                .collect();
            for h in hs {
                h.await.map_err(|e| mp::Error::Protocol(e.to_string()))?;
            }
            spawned.push(t.elapsed().as_secs_f64() * 1e9 / n as f64);
        }
        report.add(
            Figure::new(format!("inflight_{n}_per_task"), "ns", per_task).baseline(Figure::new(
                "tokio_spawn_per_task",
                "ns",
                spawned,
            )),
        );
        report.add(Figure::new(
            format!("inflight_{n}_parent_rss_per_task"),
            "bytes",
            mem,
        ));
    }

    // Memory while a long stream flows: flat, whatever its length.
    let longest = env_u64("SCALING_IMAP_N", 10_000_000);
    for n in [100_000u64, 1_000_000, 10_000_000] {
        if n > longest {
            continue;
        }
        let before = rss_kib();
        let mut peak = before;
        let mut s = pool.imap_unordered(noop, 0..n);
        let mut count = 0u64;
        while let Some(r) = s.next().await {
            r?;
            count += 1;
            if count.is_multiple_of(50_000) {
                peak = peak.max(rss_kib());
            }
        }
        assert_eq!(count, n);
        report.add(
            Figure::new(
                format!("imap_unordered_{n}_peak_rss"),
                "MiB",
                vec![peak as f64 / 1024.0],
            )
            .baseline(Figure::new(
                "rss_before_streaming",
                "MiB",
                vec![before as f64 / 1024.0],
            )),
        );
    }
    pool.close();
    pool.join().await?;

    // Round trip by argument size, beside the socket's own copy of the same bytes.
    let pool = mp::Pool::new(1).await?;
    for shift in [10, 14, 18, 20, 22, 24, 26] {
        let len = 1usize << shift;
        let arg = ByteBuf::from(vec![3u8; len]);
        pool.apply(echo, (arg.clone(),)).await?;
        let mut ours = Vec::new();
        let mut raw = Vec::new();
        for _ in 0..runs {
            let reps = (64usize << 20).div_ceil(len).clamp(1, 200);
            let t = Instant::now();
            for _ in 0..reps {
                let back = pool.apply(echo, (arg.clone(),)).await?;
                assert_eq!(back.len(), len);
            }
            ours.push(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
            raw.push(socket_round_trip(len).await?);
        }
        report.add(
            Figure::new(format!("apply_{}", size_name(len)), "us", ours).baseline(Figure::new(
                format!("socketpair_there_and_back_{}", size_name(len)),
                "us",
                raw,
            )),
        );
    }
    pool.close();
    pool.join().await?;

    // The floor under the largest round trip: its result must land in memory of its own,
    // and fresh memory costs a page fault per 4 KiB as it is first written.
    let len = 64usize << 20;
    let src = vec![3u8; len];
    let (mut fresh, mut reused) = (Vec::new(), Vec::new());
    let mut kept: Vec<u8> = src.clone();
    for _ in 0..runs {
        let t = Instant::now();
        let copy = src.clone();
        fresh.push(t.elapsed().as_secs_f64() * 1e6);
        drop(std::hint::black_box(copy));
        let t = Instant::now();
        kept.copy_from_slice(&src);
        reused.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(&kept);
    }
    report.add(
        Figure::new("copy_64mib_into_fresh_memory", "us", fresh).baseline(Figure::new(
            "copy_64mib_into_memory_in_place",
            "us",
            reused,
        )),
    );

    // CPU-bound throughput by worker count, beside one process doing the same tasks.
    let tasks = 400u64;
    let mut sequential = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let sum = (0..tasks).map(burn).fold(0u64, u64::wrapping_add);
        std::hint::black_box(sum);
        sequential.push(tasks as f64 / t.elapsed().as_secs_f64());
    }
    for workers in [1usize, 2, 4, 8, 16] {
        let pool = mp::Pool::new(workers).await?;
        pool.map(burn, 0..workers as u64).chunksize(1).await?;
        let mut rates = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let out = pool.map(burn, 0..tasks).chunksize(1).await?;
            assert_eq!(out.len(), tasks as usize);
            rates.push(tasks as f64 / t.elapsed().as_secs_f64());
        }
        report.add(
            Figure::new(format!("cpu_tasks_{workers}_workers"), "tasks/s", rates).baseline(
                Figure::new("same_tasks_one_process", "tasks/s", sequential.clone()),
            ),
        );
        pool.close();
        pool.join().await?;
    }

    report.finish();
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = rt.block_on(async {
        tokio::spawn(run())
            .await
            .unwrap_or_else(|e| Err(mp::Error::Protocol(format!("the bench task failed: {e}"))))
    });
    if let Err(e) = outcome {
        eprintln!("scaling bench failed: {e}");
        std::process::exit(1);
    }
}
