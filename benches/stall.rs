//! How long a large value's round trip through a pool stalls the caller's runtime. A
//! current-thread runtime runs a 1 ms ticker beside `pool.apply(echo, (64 MiB ByteBuf,))`;
//! the figure is the ticker's longest late wake-up during the round trip, beside the same
//! ticker's longest late wake-up over as long a time with nothing else running (the machine's
//! own noise). Run with `cargo bench --bench stall`; `TKMP_BENCH_REPEAT` sets the runs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use support::{Figure, Report};
use tokio_multiprocessing as mp;

const SIZE: usize = 64 << 20;

fn echo(b: ByteBuf) -> ByteBuf {
    b
}

/// A 1 ms ticker on this runtime until `stop`: the longest it woke late, in microseconds.
fn ticker(stop: Arc<AtomicBool>) -> (tokio::task::JoinHandle<()>, Arc<AtomicU64>) {
    let worst = Arc::new(AtomicU64::new(0));
    let w = worst.clone();
    let h = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let late = t.elapsed().saturating_sub(Duration::from_millis(1));
            w.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
        }
    });
    (h, worst)
}

async fn run() -> mp::Result<()> {
    let runs = support::runs(5);
    let mut report = Report::new("stall");
    let pool = mp::Pool::new(1).await?;
    let payload = ByteBuf::from(vec![7u8; SIZE]);
    // A first round trip outside the figure: the worker's first large allocation.
    pool.apply(echo, (payload.clone(),)).await?;
    let (mut stalls, mut idle, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let arg = payload.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (h, worst) = ticker(stop.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        worst.store(0, Ordering::Relaxed);
        let t = Instant::now();
        let back = pool.apply(echo, (arg,)).await?;
        let took = t.elapsed();
        stalls.push(worst.load(Ordering::Relaxed) as f64 / 1e3);
        assert_eq!(back.len(), SIZE);
        tokio::task::spawn_blocking(move || drop(back))
            .await
            .map_err(|e| mp::Error::Protocol(e.to_string()))?;
        rates.push(2.0 * SIZE as f64 / took.as_secs_f64() / 1e9);
        worst.store(0, Ordering::Relaxed);
        tokio::time::sleep(took).await;
        idle.push(worst.load(Ordering::Relaxed) as f64 / 1e3);
        stop.store(true, Ordering::Relaxed);
        let _ = h.await;
    }
    report.add(
        Figure::new("ticker_worst_late_64mib_round_trip", "ms", stalls).baseline(Figure::new(
            "ticker_worst_late_idle",
            "ms",
            idle,
        )),
    );
    report.add(Figure::new("round_trip_64mib_both_ways", "GB/s", rates));
    pool.close();
    pool.join().await?;
    report.finish();
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("stall bench failed: {e}");
        std::process::exit(1);
    }
}
