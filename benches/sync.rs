//! Figures for the synchronisation primitives and shared values, each beside its baseline:
//!
//! - uncontended `lock` + unlock, beside a compare-and-swap + store on ordinary memory;
//! - `Value` increments under its lock from 2 processes at once, and from 16 (every release
//!   then has many waiters to wake), in ops/s, beside one process doing the same number
//!   alone;
//! - `Event` ping-pong between two processes (one round trip: set → wake → set back → wake),
//!   beside a raw eventfd ping-pong between two processes with blocking reads, the floor the
//!   kernel sets on this machine.
//!
//! Run with `cargo bench --bench sync`; `python3 benches/sync_cpython.py` runs CPython's
//! counterparts and prints both sides. Each figure is the median of its runs: one run for the
//! lock and the increments, 11 chunks of round trips for the ping-pong (`TKMP_BENCH_REPEAT`
//! sets another count). Figure lines as described in `benches/support/mod.rs`.

mod support;

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::eventfd::EventfdPingPong;
use support::{Figure, Report};
use tokio_multiprocessing as mp;

const LOCK_ITERS: u32 = 5_000_000;
const INCREMENTS: u64 = 2_000_000;
const PINGS: u32 = 2_000;
/// Round-trip chunks for the ping-pong figure, unless `TKMP_BENCH_REPEAT` says otherwise.
const CHUNKS: usize = 11;

async fn incrementer(v: mp::Value<u64>, start: mp::Event, done: mp::Semaphore, n: u64) {
    if start.wait().await.is_err() {
        return;
    }
    for _ in 0..n {
        match v.lock().await {
            Ok(mut g) => {
                g.update(|x| x + 1);
            }
            Err(e) => {
                eprintln!("incrementer: {e}");
                return;
            }
        }
    }
    let _ = done.release();
}

async fn uncontended(report: &mut Report) -> mp::Result<()> {
    let l = mp::Lock::new()?;
    let word = AtomicU32::new(0);
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..support::runs(1) {
        let t = Instant::now();
        for _ in 0..LOCK_ITERS {
            drop(black_box(l.lock().await?));
        }
        ours.push(t.elapsed().as_nanos() as f64 / f64::from(LOCK_ITERS));

        let t = Instant::now();
        for _ in 0..LOCK_ITERS {
            let w = black_box(&word);
            let _ = w.compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed);
            w.swap(0, Ordering::SeqCst);
        }
        base.push(t.elapsed().as_nanos() as f64 / f64::from(LOCK_ITERS));
    }
    report.add(
        Figure::new("uncontended_lock_unlock_ns", "ns", ours).baseline(Figure::new(
            "cas_swap_on_private_memory_ns",
            "ns",
            base,
        )),
    );
    Ok(())
}

/// `processes` processes increment one `Value` under its lock, `INCREMENTS * 2` in all.
async fn value_increments(report: &mut Report, processes: u64) -> mp::Result<()> {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..support::runs(1) {
        // Baseline: the same total, one process, no contention.
        let v = mp::Value::new(0u64)?;
        let t = Instant::now();
        for _ in 0..2 * INCREMENTS {
            v.lock().await?.update(|x| x + 1);
        }
        base.push((2 * INCREMENTS) as f64 / t.elapsed().as_secs_f64());

        let v = mp::Value::new(0u64)?;
        let start = mp::Event::new()?;
        let done = mp::Semaphore::new(0)?;
        let mut kids = Vec::new();
        for _ in 0..processes {
            kids.push(
                mp::Process::new(
                    incrementer,
                    (
                        v.clone(),
                        start.clone(),
                        done.clone(),
                        2 * INCREMENTS / processes,
                    ),
                )
                .start()
                .await?,
            );
        }
        let t = Instant::now();
        start.set();
        for _ in 0..processes {
            done.acquire().await?.forget();
        }
        let elapsed = t.elapsed();
        for mut k in kids {
            k.join().await?;
        }
        let total = v.get().await?;
        assert_eq!(total, 2 * INCREMENTS, "lost increments");
        ours.push(total as f64 / elapsed.as_secs_f64());
    }
    report.add(
        Figure::new(
            format!("value_increments_{processes}_processes_ops_per_s"),
            "ops/s",
            ours,
        )
        .baseline(Figure::new(
            "value_increments_one_process_alone_ops_per_s",
            "ops/s",
            base,
        )),
    );
    Ok(())
}

/// The round trips run in chunks, alternating with chunks of the raw baseline, so that both
/// meet the same machine (load from other processes, idle states of the cores); the figures
/// are the medians of the chunks.
async fn event_ping_pong(report: &mut Report) -> mp::Result<()> {
    let chunks = support::runs(CHUNKS);
    let pings = chunks as u32 * PINGS + 1;
    let ping = mp::Event::new()?;
    let pong = mp::Event::new()?;
    let mut p = mp::Process::new(
        support::ponger::event_ponger,
        (ping.clone(), pong.clone(), pings),
    )
    .start()
    .await?;
    let raw = EventfdPingPong::start(pings)?;
    // Warm up with a first round trip each (the child's start is not part of the figure).
    ping.set();
    pong.wait().await?;
    pong.clear();
    raw.round_trip()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..chunks {
        let t = Instant::now();
        for _ in 0..PINGS {
            ping.set();
            pong.wait().await?;
            pong.clear();
        }
        ours.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(PINGS));
        let t = Instant::now();
        for _ in 0..PINGS {
            raw.round_trip()?;
        }
        theirs.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(PINGS));
    }
    p.join().await?;
    raw.finish()?;
    report.add(
        Figure::new("event_ping_pong_round_trip_us", "us", ours).baseline(Figure::new(
            "event_ping_pong_raw_eventfd_us",
            "us",
            theirs,
        )),
    );
    report.note("event_ping_pong_raw_eventfd_us: two eventfds, blocking reads, a forked child");
    Ok(())
}

fn main() -> mp::Result<()> {
    mp::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new("sync");
    rt.block_on(async {
        uncontended(&mut report).await?;
        value_increments(&mut report, 2).await?;
        value_increments(&mut report, 16).await?;
        event_ping_pong(&mut report).await?;
        tokio::time::sleep(Duration::ZERO).await;
        Ok::<_, mp::Error>(())
    })?;
    report.finish();
    Ok(())
}
