//! Process start + join for each start method, beside three baselines measured in the same
//! run: a plain `std::process::Command` re-exec of this binary that exits at once, a raw
//! `fork` + `waitpid`, and (from `benches/process_start.py`) CPython's
//! `multiprocessing.Process`.
//!
//! `cargo bench --bench process_start [-- ITERATIONS]`. Prints one `figure:` line per
//! measurement (name, mean µs, median µs) for the comparison script to read.

use std::time::{Duration, Instant};

use tokio_multiprocessing::{self as mp, Process, StartMethod};

fn nothing() {}

fn stats(name: &str, mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    let median = samples[samples.len() / 2].as_secs_f64() * 1e6;
    println!("figure: {name:<28} {mean:>9.1} {median:>9.1}");
    mean
}

fn measure(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..n / 10 + 1 {
        f(); // warm-up: page cache, the fork server, the launcher thread
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    if std::env::var_os("TKMP_BENCH_EXIT_AT_ONCE").is_some() {
        return; // the plain re-exec baseline's child
    }
    mp::init();
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    println!(
        "figure: {:<28} {:>9} {:>9}   ({n} iterations)",
        "name", "mean µs", "median µs"
    );

    // Single-threaded first: fork is refused once the launcher thread exists.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw_fork = stats(
        "raw fork+waitpid",
        measure(n, || mp::__private::fork_and_reap().expect("fork")),
    );
    let fork = stats(
        "mp fork",
        measure(n, || {
            rt.block_on(async {
                let mut p = Process::new(nothing, ())
                    .start_method(StartMethod::Fork)
                    .start()
                    .await
                    .expect("start");
                p.join().await.expect("join");
            })
        }),
    );
    let exe = std::env::current_exe().expect("current_exe");
    let reexec = stats(
        "Command re-exec+wait",
        measure(n, || {
            let status = std::process::Command::new(&exe)
                .env("TKMP_BENCH_EXIT_AT_ONCE", "1")
                .status()
                .expect("re-exec");
            assert!(status.success());
        }),
    );
    let mut by_method = Vec::new();
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let mean = stats(
            &format!("mp {}", method.name()),
            measure(n, || {
                rt.block_on(async {
                    let mut p = Process::new(nothing, ())
                        .start_method(method)
                        .start()
                        .await
                        .expect("start");
                    p.join().await.expect("join");
                })
            }),
        );
        by_method.push(mean);
    }
    println!();
    println!(
        "ratio: spawn / plain re-exec       {:.2}  (target <= 1.5)",
        by_method[0] / reexec
    );
    println!(
        "ratio: forkserver mean             {:.0} µs (target < 1000 µs)",
        by_method[1]
    );
    println!(
        "ratio: fork / raw fork+waitpid     {:.2}  (target <= 1.5)",
        fork / raw_fork
    );
}
