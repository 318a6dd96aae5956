//! What an idle program costs: the CPU time a pool (the parent and its workers) and a
//! `Queue::get` waiting for an item use over `IDLE_SECONDS` (default 10) while nothing
//! happens, beside the same wait in a plain `tokio::time::sleep`. Both should be about 0:
//! nothing spins or polls once the work is done. Run with `cargo bench --bench idle`.

mod support;

use std::time::Duration;

use support::{Figure, Report};
use tokio_multiprocessing as mp;

fn noop(x: u64) -> u64 {
    x
}

fn pid() -> u32 {
    std::process::id()
}

/// The CPU time (user and system) process `pid` has used, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which ends with the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) * 1000.0 / 100.0
}

async fn run() -> mp::Result<()> {
    let secs = std::env::var("IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10u64);
    let idle = Duration::from_secs(secs);
    let me = std::process::id();
    let mut report = Report::new("idle");

    let before = cpu_ms(me);
    tokio::time::sleep(idle).await;
    let baseline = Figure::new("process_sleeping_cpu", "ms", vec![cpu_ms(me) - before]);

    // A pool that has just worked, then has nothing to do.
    let pool = mp::Pool::new(2).await?;
    pool.map(noop, 0..100_000u64).await?;
    let mut workers = std::collections::HashSet::new();
    for _ in 0..50 {
        workers.insert(pool.apply(pid, ()).await?);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all: Vec<u32> = std::iter::once(me).chain(workers.iter().copied()).collect();
    let before: f64 = all.iter().map(|&p| cpu_ms(p)).sum();
    tokio::time::sleep(idle).await;
    let used: f64 = all.iter().map(|&p| cpu_ms(p)).sum::<f64>() - before;
    report.add(Figure::new("idle_pool_cpu", "ms", vec![used]).baseline(baseline.clone()));
    pool.close();
    pool.join().await?;

    // A `get` that waits the whole time for an item that never comes.
    let q = mp::Queue::<u64>::new()?;
    q.put(1)
        .await
        .map_err(|e| mp::Error::Protocol(e.to_string()))?;
    q.get().await?;
    let before = cpu_ms(me);
    let r = tokio::time::timeout(idle, q.get()).await;
    assert!(r.is_err(), "nothing was put");
    report
        .add(Figure::new("idle_queue_get_cpu", "ms", vec![cpu_ms(me) - before]).baseline(baseline));
    report.note(format_args!("each figure is one wait of {secs} s"));
    report.finish();
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("idle bench failed: {e}");
        std::process::exit(1);
    }
}
