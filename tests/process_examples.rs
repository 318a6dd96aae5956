//! The `process_*` examples run as programs, their output checked.

#[macro_use]
mod support;

use support::{TestResult, run_example};
use tokio_multiprocessing as mp;

fn main() {
    mp::init(); // a re-executed child never gets past this line
    support::run(trials![
        example_process_hello,
        example_process_per_cpu,
        example_process_hello_bob,
        example_process_methods,
    ])
}

// ---------------------------------------------------------------- tests

async fn example_process_hello() -> TestResult {
    let out = run_example("process_hello").await?;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("no {k:?} line in {out:?}"))
    };
    let main_pid = field("main process:")?;
    ensure!(
        field("parent process:")? == main_pid,
        "parent pid differs from the parent's: {out}"
    );
    ensure!(
        field("process id:")? != main_pid,
        "child pid is the parent's: {out}"
    );
    ensure!(field("hello")? == "bob", "greeting: {out}");
    ensure!(
        field("module name:")? == "process_hello",
        "module name: {out}"
    );
    Ok(())
}

async fn example_process_per_cpu() -> TestResult {
    let out = run_example("process_per_cpu").await?;
    let cpus = std::thread::available_parallelism()?.get();
    let finished = out
        .lines()
        .filter(|l| l.starts_with("process") && l.contains("exit code 0"))
        .count();
    ensure!(
        finished == cpus,
        "expected {cpus} processes to finish, output: {out}"
    );
    ensure!(
        out.contains("sum of squares below 1000: 332833500"),
        "output: {out}"
    );
    Ok(())
}

async fn example_process_hello_bob() -> TestResult {
    let out = run_example("process_hello_bob").await?;
    ensure!(out == "hello bob\n", "output: {out:?}");
    Ok(())
}

async fn example_process_methods() -> TestResult {
    let out = run_example("process_methods").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == 4
            && lines[0].starts_with("<Process(Process-")
            && lines[0].ends_with(", initial)>")
            && lines[1].ends_with(", started)> true")
            && lines[2].ends_with(", stopped[SIGTERM])> false")
            && lines[3] == "true",
        "output: {out}"
    );
    Ok(())
}
