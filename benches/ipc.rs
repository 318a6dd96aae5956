//! Queue and Pipe figures between two processes, each beside its baseline: a raw tokio
//! socket pair doing the same work inside one process; 1 KiB queue items (a packet each);
//! and 16 KiB queue items as `Vec<u8>` (which serde hands over byte by byte) beside the same
//! as `serde_bytes::ByteBuf`.
//!
//! `cargo bench --bench ipc [-- WORD ...]` prints the figures whose names contain one of the
//! words (all without words); `benches/ipc_cpython.py` runs CPython's `multiprocessing`
//! counterparts and prints both sides with the ratio. A throughput figure is the median of
//! 1 run (a fresh child each run), a round-trip figure of 3 rounds on one child
//! (`TKMP_BENCH_REPEAT` sets another count). Figure lines as described in
//! `benches/support/mod.rs`.

mod support;

use std::time::{Duration, Instant};

use support::{BoxError, Figure, Report, bounded};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

const SMALL_ITEMS: u64 = 300_000;
const BIG: usize = 1 << 20;
const BIG_ITEMS: u64 = 400;
/// Items of 16 KiB: a packet each, encoded in the producer and decoded in the consumer.
const MID: usize = 16 * 1024;
const MID_ITEMS: u64 = 10_000;
/// Items of 1 KiB: a packet each, the bytes a small part of the cost.
const KIB: usize = 1024;
const KIB_ITEMS: u64 = 100_000;
const ROUND_TRIPS: u64 = 10_000;
/// Round-trip figures are the median of this many rounds, unless `TKMP_BENCH_REPEAT` says
/// otherwise: the machine is shared.
const ROUNDS: usize = 3;
/// Throughput figures are the median of this many runs, unless `TKMP_BENCH_REPEAT` says
/// otherwise.
const THROUGHPUT_RUNS: usize = 5;
/// The most any one figure (all its runs) may take.
const FIGURE_TIMEOUT: Duration = Duration::from_secs(120);

/// Figures to run: all, or those whose name or baseline's name contains one of the
/// command-line words.
fn wanted(name: &str, baseline: &str) -> bool {
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    words.is_empty()
        || words
            .iter()
            .any(|w| name.contains(w.as_str()) || baseline.contains(w.as_str()))
}

// ---- child targets ----

async fn queue_producer(q: mp::Queue<u64>, go: mp::Connection<u8>, n: u64) {
    if go.recv().await.is_err() {
        std::process::exit(3);
    }
    for i in 0..n {
        if q.put(i).await.is_err() {
            std::process::exit(3);
        }
    }
}

/// Waits for the word on `go`, then puts `item` into `q` `n` times; exits 3 on an error.
async fn put_after_go<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(
    q: mp::Queue<T>,
    go: mp::Connection<u8>,
    item: T,
    n: u64,
) {
    if go.recv().await.is_err() {
        std::process::exit(3);
    }
    for _ in 0..n {
        if q.put(item.clone()).await.is_err() {
            std::process::exit(3);
        }
    }
}

/// Puts `n` items of [`MID`] bytes, `Vec<u8>`s: serde hands each over byte by byte.
async fn queue_mid_vec_producer(q: mp::Queue<Vec<u8>>, go: mp::Connection<u8>, n: u64) {
    put_after_go(q, go, vec![7u8; MID], n).await
}

/// Puts `n` items of `size` bytes, `ByteBuf`s: each is one copy.
async fn queue_bytebuf_producer(
    q: mp::Queue<serde_bytes::ByteBuf>,
    go: mp::Connection<u8>,
    size: u64,
    n: u64,
) {
    put_after_go(
        q,
        go,
        serde_bytes::ByteBuf::from(vec![7u8; size as usize]),
        n,
    )
    .await
}

async fn echo_values(conn: mp::Connection<u64>) {
    while let Ok(v) = conn.recv().await {
        if conn.send(&v).await.is_err() {
            return;
        }
    }
}

async fn echo_bytes(conn: mp::Connection<u64>) {
    while let Ok(v) = conn.recv_bytes().await {
        if conn.send_bytes(&v).await.is_err() {
            return;
        }
    }
}

async fn pipe_big_sender(conn: mp::Connection<serde_bytes::ByteBuf>, n: u64) {
    let item = serde_bytes::ByteBuf::from(vec![7u8; BIG]);
    if conn.recv().await.is_err() {
        std::process::exit(3);
    }
    for _ in 0..n {
        if conn.send(&item).await.is_err() {
            std::process::exit(3);
        }
    }
}

// ---- figures ----

async fn queue_small() -> mp::Result<f64> {
    let q = mp::Queue::<u64>::new()?;
    let (go, go_child) = mp::Pipe::<u8>::new()?;
    let mut p = mp::Process::new(queue_producer, (q.clone(), go_child, SMALL_ITEMS))
        .start()
        .await?;
    let t = Instant::now();
    go.send(&1).await?;
    for i in 0..SMALL_ITEMS {
        let v = q.get().await?;
        assert_eq!(v, i);
    }
    let secs = t.elapsed().as_secs_f64();
    p.join().await?;
    Ok(SMALL_ITEMS as f64 / secs)
}

/// [`MID_ITEMS`] items of [`MID`] bytes through a queue from a child, as `Vec<u8>`s, in
/// MB/s.
async fn queue_mid_vec() -> mp::Result<f64> {
    let (go, go_child) = mp::Pipe::<u8>::new()?;
    let q = mp::Queue::<Vec<u8>>::new()?;
    let p = mp::Process::new(queue_mid_vec_producer, (q.clone(), go_child, MID_ITEMS))
        .start()
        .await?;
    take_after_go(q, go, p, MID_ITEMS, MID, |v| v.len()).await
}

/// `n` items of `size` bytes through a queue from a child, as `ByteBuf`s, in MB/s.
async fn queue_bytebuf(size: usize, n: u64) -> mp::Result<f64> {
    let (go, go_child) = mp::Pipe::<u8>::new()?;
    let q = mp::Queue::<serde_bytes::ByteBuf>::new()?;
    let p = mp::Process::new(
        queue_bytebuf_producer,
        (q.clone(), go_child, size as u64, n),
    )
    .start()
    .await?;
    take_after_go(q, go, p, n, size, |v| v.len()).await
}

/// Says go on `go` to the producer `p`, takes its `n` items of `size` bytes (as `len` tells)
/// from `q` and joins it: MB/s from the word to the last item.
async fn take_after_go<T: serde::Serialize + serde::de::DeserializeOwned>(
    q: mp::Queue<T>,
    go: mp::Connection<u8>,
    mut p: mp::Process,
    n: u64,
    size: usize,
    len: impl Fn(&T) -> usize,
) -> mp::Result<f64> {
    let t = Instant::now();
    go.send(&1).await?;
    for _ in 0..n {
        assert_eq!(len(&q.get().await?), size);
    }
    let secs = t.elapsed().as_secs_f64();
    p.join().await?;
    Ok((n as f64 * size as f64) / secs / 1e6)
}

async fn pipe_ping_pong(bytes: bool) -> mp::Result<Vec<f64>> {
    let (a, b) = mp::Pipe::<u64>::new()?;
    let mut p = if bytes {
        mp::Process::new(echo_bytes, (b,)).start().await?
    } else {
        mp::Process::new(echo_values, (b,)).start().await?
    };
    // Warm up.
    for i in 0..1000u64 {
        a.send(&i).await?;
        a.recv().await?;
    }
    let mut us = Vec::new();
    for _ in 0..support::runs(ROUNDS) {
        let t = Instant::now();
        for i in 0..ROUND_TRIPS {
            if bytes {
                a.send_bytes(&i.to_le_bytes()).await?;
                a.recv_bytes().await?;
            } else {
                a.send(&i).await?;
                a.recv().await?;
            }
        }
        us.push(t.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64);
    }
    drop(a);
    p.join().await?;
    Ok(us)
}

async fn pipe_big() -> mp::Result<f64> {
    let (a, b) = mp::Pipe::<serde_bytes::ByteBuf>::new()?;
    let mut p = mp::Process::new(pipe_big_sender, (b, BIG_ITEMS))
        .start()
        .await?;
    let t = Instant::now();
    a.send(&serde_bytes::ByteBuf::new()).await?;
    for _ in 0..BIG_ITEMS {
        let v = a.recv().await?;
        assert_eq!(v.len(), BIG);
    }
    let secs = t.elapsed().as_secs_f64();
    p.join().await?;
    Ok((BIG_ITEMS as f64 * BIG as f64) / secs / 1e6)
}

/// Baseline: the same ping-pong over a raw tokio socket pair, both ends in this process.
async fn raw_ping_pong() -> std::io::Result<Vec<f64>> {
    let (mut a, mut b) = tokio::net::UnixStream::pair()?;
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        while b.read_exact(&mut buf).await.is_ok() {
            if b.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut buf = [0u8; 8];
    let mut us = Vec::new();
    for _ in 0..support::runs(ROUNDS) {
        let t = Instant::now();
        for i in 0..ROUND_TRIPS {
            a.write_all(&i.to_le_bytes()).await?;
            a.read_exact(&mut buf).await?;
        }
        us.push(t.elapsed().as_secs_f64() * 1e6 / ROUND_TRIPS as f64);
    }
    drop(a);
    let _ = echo.await;
    Ok(us)
}

/// Baseline: the same ping-pong over a raw tokio socket pair between two processes.
async fn raw_ping_pong_processes() -> mp::Result<Vec<f64>> {
    support::raw_ping_pong::round_trips(false, 1000, ROUND_TRIPS, support::runs(ROUNDS)).await
}

/// Baseline: 1 MiB writes streamed over a raw tokio socket pair inside this process.
async fn raw_stream() -> std::io::Result<f64> {
    let (mut a, mut b) = tokio::net::UnixStream::pair()?;
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; BIG];
        for _ in 0..BIG_ITEMS {
            a.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; BIG];
    let t = Instant::now();
    for _ in 0..BIG_ITEMS {
        b.read_exact(&mut buf).await?;
    }
    let secs = t.elapsed().as_secs_f64();
    writer.await.map_err(std::io::Error::other)??;
    Ok((BIG_ITEMS as f64 * BIG as f64) / secs / 1e6)
}

/// Runs of a throughput figure: `f` once per run, a fresh child each time.
async fn throughput<F, Fut, E>(mut f: F) -> Result<Vec<f64>, BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64, E>>,
    E: Into<BoxError>,
{
    let mut runs = Vec::new();
    for _ in 0..support::runs(THROUGHPUT_RUNS) {
        runs.push(f().await.map_err(Into::into)?);
    }
    Ok(runs)
}

fn main() -> Result<(), BoxError> {
    mp::init();
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new("ipc");
    rt.block_on(async {
        // Baselines, measured once when a figure needs them.
        let mut stream_base: Option<Figure> = None;
        let mut rtt_base: Option<Figure> = None;
        macro_rules! baseline {
            ($slot:ident, $name:literal, $unit:literal, $runs:expr) => {{
                if $slot.is_none() {
                    $slot = Some(Figure::new(
                        $name,
                        $unit,
                        bounded($name, FIGURE_TIMEOUT, $runs).await?,
                    ));
                }
                $slot.clone().expect("measured just above")
            }};
        }
        if wanted("queue_small_msgs_per_s", "") {
            let runs = bounded(
                "queue_small_msgs_per_s",
                FIGURE_TIMEOUT,
                throughput(queue_small),
            )
            .await?;
            report.add(Figure::new("queue_small_msgs_per_s", "msgs/s", runs));
        }
        if wanted("queue_1mib_mb_per_s", "raw_stream_mb_per_s") {
            let runs = bounded(
                "queue_1mib_mb_per_s",
                FIGURE_TIMEOUT,
                throughput(|| queue_bytebuf(BIG, BIG_ITEMS)),
            )
            .await?;
            let base = baseline!(
                stream_base,
                "raw_stream_mb_per_s",
                "MB/s",
                throughput(raw_stream)
            );
            report.add(Figure::new("queue_1mib_mb_per_s", "MB/s", runs).baseline(base));
        }
        if wanted("queue_16kib_vec_mb_per_s", "queue_16kib_bytebuf_mb_per_s") {
            let vec = bounded(
                "queue_16kib_vec_mb_per_s",
                FIGURE_TIMEOUT,
                throughput(queue_mid_vec),
            )
            .await?;
            let bytebuf = bounded(
                "queue_16kib_bytebuf_mb_per_s",
                FIGURE_TIMEOUT,
                throughput(|| queue_bytebuf(MID, MID_ITEMS)),
            )
            .await?;
            report.add(
                Figure::new("queue_16kib_vec_mb_per_s", "MB/s", vec).baseline(Figure::new(
                    "queue_16kib_bytebuf_mb_per_s",
                    "MB/s",
                    bytebuf,
                )),
            );
        }
        if wanted("queue_1kib_msgs_per_s", "") {
            // Items over a slot's size but under a spill file's: a packet each, taken under
            // the take lock.
            let runs = bounded(
                "queue_1kib_msgs_per_s",
                FIGURE_TIMEOUT,
                throughput(|| async {
                    queue_bytebuf(KIB, KIB_ITEMS)
                        .await
                        .map(|mb| mb * 1e6 / KIB as f64)
                }),
            )
            .await?;
            report.add(Figure::new("queue_1kib_msgs_per_s", "msgs/s", runs));
        }
        if wanted("pipe_rtt_us", "raw_rtt_processes_us") {
            let runs = bounded("pipe_rtt_us", FIGURE_TIMEOUT, pipe_ping_pong(false)).await?;
            let base = baseline!(
                rtt_base,
                "raw_rtt_processes_us",
                "us",
                raw_ping_pong_processes()
            );
            report.add(Figure::new("pipe_rtt_us", "us", runs).baseline(base));
        }
        if wanted("pipe_rtt_bytes_us", "raw_rtt_processes_us") {
            let runs = bounded("pipe_rtt_bytes_us", FIGURE_TIMEOUT, pipe_ping_pong(true)).await?;
            let base = baseline!(
                rtt_base,
                "raw_rtt_processes_us",
                "us",
                raw_ping_pong_processes()
            );
            report.add(Figure::new("pipe_rtt_bytes_us", "us", runs).baseline(base));
        }
        if wanted("raw_rtt_processes_us", "raw_rtt_us") {
            // The process hop of a raw socket pair: the same ping-pong within one process.
            let ours = baseline!(
                rtt_base,
                "raw_rtt_processes_us",
                "us",
                raw_ping_pong_processes()
            );
            let base = Figure::new(
                "raw_rtt_us",
                "us",
                bounded("raw_rtt_us", FIGURE_TIMEOUT, raw_ping_pong()).await?,
            );
            report.add(ours.baseline(base));
        }
        if wanted("pipe_1mib_mb_per_s", "raw_stream_mb_per_s") {
            let runs = bounded("pipe_1mib_mb_per_s", FIGURE_TIMEOUT, throughput(pipe_big)).await?;
            let base = baseline!(
                stream_base,
                "raw_stream_mb_per_s",
                "MB/s",
                throughput(raw_stream)
            );
            report.add(Figure::new("pipe_1mib_mb_per_s", "MB/s", runs).baseline(base));
        }
        Ok::<_, BoxError>(())
    })?;
    report.finish();
    Ok(())
}
