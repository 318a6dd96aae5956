//! The queue and pipe examples (seeds 000 to 003) print what their Python originals print.
//!
//! Each test runs the example binary that `cargo test` built, from `target/<profile>/examples`.

#[macro_use]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use support::{TestResult, run, test};

/// The example's binary, beside this test's own `deps` directory.
fn example(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("no target directory")?;
    let path = dir.join("examples").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("{} is not built", path.display()))
    }
}

/// Runs an example (at most 30 s) and returns its standard output; it must exit with 0.
async fn output_of(name: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut cmd = tokio::process::Command::new(example(name)?);
    cmd.kill_on_drop(true).stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| format!("{name} did not finish within 30 s"))??;
    ensure!(
        out.status.success(),
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

async fn queue_hello() -> TestResult {
    let out = output_of("queue_hello").await?;
    ensure!(out == "hello world!\nhello world\n", "output: {out:?}");
    Ok(())
}

async fn pipe_hello() -> TestResult {
    let out = output_of("pipe_hello").await?;
    ensure!(out == "hello world\n", "output: {out:?}");
    Ok(())
}

async fn queue_square_negative() -> TestResult {
    let out = output_of("queue_square_negative").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.last() == Some(&"end main"), "output: {out:?}");
    let got: BTreeSet<i64> = lines[..lines.len() - 1]
        .iter()
        .map(|l| l.parse::<i64>())
        .collect::<Result<_, _>>()?;
    let want: BTreeSet<i64> = (1..6).flat_map(|i| [i * i, -i]).collect();
    ensure!(
        got == want && lines.len() == 11,
        "numbers: {got:?}, output: {out:?}"
    );
    Ok(())
}

async fn queue_producers() -> TestResult {
    let out = output_of("queue_producers").await?;
    let lines: Vec<&str> = out.lines().collect();
    for i in 0..10 {
        let done = format!("send{i}: put complete");
        ensure!(lines.contains(&done.as_str()), "no {done:?} in {out:?}");
    }
    let close_at = lines
        .iter()
        .position(|l| *l == "To close")
        .ok_or("no \"To close\"")?;
    for i in 0..10 {
        let done = format!("send{i}: put complete");
        ensure!(
            lines.iter().position(|l| *l == done) < Some(close_at),
            "{done:?} after \"To close\""
        );
    }
    let mut items = BTreeSet::new();
    for l in &lines {
        if let Some((who, item)) = l.split_once(" recv: ") {
            ensure!(who == "recv0" || who == "recv1", "consumer {who}");
            ensure!(items.insert(item.to_string()), "{item} received twice");
        }
    }
    let all: BTreeSet<String> = (0..10)
        .flat_map(|i| (1..=10).map(move |j| format!("send{i}-{j}")))
        .collect();
    ensure!(items.is_subset(&all), "unexpected items: {items:?}");
    Ok(())
}

async fn pipe_eof() -> TestResult {
    let out = output_of("pipe_eof").await?;
    let lines: Vec<&str> = out.lines().collect();
    let recv: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("Recv: "))
        .map(|l| l.to_string())
        .collect();
    let want: Vec<String> = (0..10).map(|x| format!("Recv: {x}")).collect();
    ensure!(recv == want, "output: {out:?}");
    let end = lines.iter().position(|l| *l == "RECV end");
    let last_recv = lines.iter().position(|l| *l == "Recv: 9");
    ensure!(end.is_some() && end > last_recv, "RECV end: {out:?}");
    ensure!(lines.contains(&"send complete"), "output: {out:?}");
    ensure!(lines.len() == 12, "output: {out:?}");
    Ok(())
}

async fn queue_multiply() -> TestResult {
    let out = output_of("queue_multiply").await?;
    ensure!(out == "20\n16\nok\n", "output: {out:?}");
    Ok(())
}

async fn pipe_list() -> TestResult {
    let out = output_of("pipe_list").await?;
    ensure!(out == "[42, None, 'hello']\n", "output: {out:?}");
    Ok(())
}

async fn queue_list() -> TestResult {
    let out = output_of("queue_list").await?;
    ensure!(out == "[42, None, 'hello']\n", "output: {out:?}");
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    run(vec![
        test("queue_hello", queue_hello),
        test("pipe_hello", pipe_hello),
        test("queue_square_negative", queue_square_negative),
        test("queue_producers", queue_producers),
        test("pipe_eof", pipe_eof),
        test("queue_multiply", queue_multiply),
        test("pipe_list", pipe_list),
        test("queue_list", queue_list),
    ])
}
