//! Process start + join for each start method, beside two baselines measured in the same
//! run: a raw `fork` + `waitpid` (the floor under `fork` and `forkserver`) and a plain
//! `std::process::Command` re-exec of this binary that exits at once (the floor under
//! `spawn`). `benches/process_start.py` adds CPython's `multiprocessing.Process`.
//!
//! `cargo bench --bench process_start`. A run is one start + join; each figure is the median
//! of 300 runs (`TKMP_BENCH_REPEAT` sets another count), after a tenth as many warm-up runs.
//! Figure lines as described in `benches/support/mod.rs`.

mod support;

use std::time::Instant;

use support::{Figure, Report};
use tokio_multiprocessing::{self as mp, Process, StartMethod};

fn nothing() {}

/// `n` runs of `f` after `n / 10 + 1` warm-up runs, each run's time in µs.
fn measure(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..n / 10 + 1 {
        f(); // warm-up: page cache, the fork server, the launcher thread
    }
    support::repeat(n, || {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e6
    })
}

fn main() {
    if std::env::var_os("TKMP_BENCH_EXIT_AT_ONCE").is_some() {
        return; // the plain re-exec baseline's child
    }
    mp::init();
    let n = support::runs(300);
    let mut report = Report::new("process_start");

    // Single-threaded first: fork is refused once the launcher thread exists.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let start_join = |method: StartMethod| {
        rt.block_on(async {
            let mut p = Process::new(nothing, ())
                .start_method(method)
                .start()
                .await
                .expect("start");
            p.join().await.expect("join");
        })
    };
    let raw_fork = Figure::new(
        "raw_fork_waitpid",
        "us",
        measure(n, || mp::__private::fork_and_reap().expect("fork")),
    );
    let fork = Figure::new(
        "mp_fork",
        "us",
        measure(n, || start_join(StartMethod::Fork)),
    );
    let exe = std::env::current_exe().expect("current_exe");
    let reexec = Figure::new(
        "command_reexec_wait",
        "us",
        measure(n, || {
            let status = std::process::Command::new(&exe)
                .env("TKMP_BENCH_EXIT_AT_ONCE", "1")
                .status()
                .expect("re-exec");
            assert!(status.success());
        }),
    );
    let spawn = Figure::new(
        "mp_spawn",
        "us",
        measure(n, || start_join(StartMethod::Spawn)),
    );
    let forkserver = Figure::new(
        "mp_forkserver",
        "us",
        measure(n, || start_join(StartMethod::ForkServer)),
    );

    let targets = [
        format!(
            "target: spawn / plain re-exec {:.2} (<= 1.5)",
            spawn.value() / reexec.value()
        ),
        format!(
            "target: forkserver {:.0} us (< 1000 us)",
            forkserver.value()
        ),
        format!(
            "target: fork / raw fork+waitpid {:.2} (<= 1.5)",
            fork.value() / raw_fork.value()
        ),
    ];
    report.add(fork.baseline(raw_fork.clone()));
    report.add(spawn.baseline(reexec));
    report.add(forkserver.baseline(raw_fork));
    for t in targets {
        report.note(t);
    }
    report.finish();
}
