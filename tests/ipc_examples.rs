//! The queue and pipe examples (seeds 000 to 003) print what their Python originals print.
//!
//! Each test runs the example binary that `cargo test` built, from `target/<profile>/examples`.

#[macro_use]
mod support;

use std::collections::BTreeSet;

use support::{TestResult, run, run_example, test};

async fn queue_hello() -> TestResult {
    let out = run_example("queue_hello").await?;
    ensure!(out == "hello world!\nhello world\n", "output: {out:?}");
    Ok(())
}

async fn pipe_hello() -> TestResult {
    let out = run_example("pipe_hello").await?;
    ensure!(out == "hello world\n", "output: {out:?}");
    Ok(())
}

async fn queue_square_negative() -> TestResult {
    let out = run_example("queue_square_negative").await?;
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
    let out = run_example("queue_producers").await?;
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
    let out = run_example("pipe_eof").await?;
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
    let out = run_example("queue_multiply").await?;
    ensure!(out == "20\n16\nok\n", "output: {out:?}");
    Ok(())
}

async fn pipe_list() -> TestResult {
    let out = run_example("pipe_list").await?;
    ensure!(out == "[42, None, 'hello']\n", "output: {out:?}");
    Ok(())
}

async fn queue_list() -> TestResult {
    let out = run_example("queue_list").await?;
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
