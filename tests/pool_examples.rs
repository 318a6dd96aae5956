//! Runs the pool examples (built by `cargo test` beside this test) and checks what they
//! print, and drives `axum_offload` with 200 concurrent requests.

#[macro_use]
mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use support::{TestResult, example, run_example, test};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

async fn pool_mean() -> TestResult {
    let out = run_example("pool_mean").await?;
    ensure!(out == "[4.5, 24.5, 54.5, 84.5]\n", "printed {out:?}");
    Ok(())
}

async fn pool_cube() -> TestResult {
    let out = run_example("pool_cube").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.iter().filter(|l| **l == "Hi").count() == 10,
        "ten Hi: {out}"
    );
    ensure!(
        lines.last() == Some(&"[0, 1, 8, 27, 64, 125, 216, 343, 512, 729]"),
        "cubes: {out}"
    );
    Ok(())
}

async fn pool_getpid() -> TestResult {
    let out = run_example("pool_getpid").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 6, "{out}");
    let list = lines[5].trim_start_matches('[').trim_end_matches(']');
    let pids: Vec<u32> = list
        .split(", ")
        .map(|p| p.parse::<u32>())
        .collect::<Result<_, _>>()?;
    ensure!(pids.len() == 5, "{out}");
    for (n, pid) in pids.iter().enumerate() {
        let line = format!("i am number {n} in process {pid}");
        ensure!(
            lines[..5].contains(&line.as_str()),
            "missing {line:?} in {out}"
        );
    }
    ensure!(
        pids.iter().collect::<HashSet<_>>().len() <= 3,
        "at most 3 workers: {out}"
    );
    Ok(())
}

async fn pool_methods() -> TestResult {
    let out = run_example("pool_methods").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.iter().filter(|l| **l == "pool init").count() == 5,
        "init x5: {out}"
    );
    ensure!(
        lines.contains(&"Starmap: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]"),
        "starmap: {out}"
    );
    let unordered: HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("Unordered: "))
        .collect();
    let want: HashSet<String> = (0..10).map(|i| format!("({i}, {i})")).collect();
    ensure!(
        unordered.len() == 10 && want.iter().all(|w| unordered.contains(w.as_str())),
        "unordered: {out}"
    );
    ensure!(
        lines
            .iter()
            .filter(|l| l.starts_with("worker in process"))
            .count()
            == 5,
        "apply_async x5: {out}"
    );
    Ok(())
}

fn fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

async fn get(addr: &str, path: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    ensure!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
    let body = resp.split("\r\n\r\n").nth(1).ok_or("no body")?;
    Ok(body.to_string())
}

async fn axum_offload() -> TestResult {
    let mut server = tokio::process::Command::new(example("axum_offload")?)
        .arg("127.0.0.1:0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = server.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await??;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .to_string();
    let server_pid = get(&addr, "/pid").await?.trim().parse::<u32>()?;
    let mut reqs = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let addr = addr.clone();
        reqs.spawn(async move {
            let n = 15 + i % 15;
            let body = get(&addr, &format!("/fib/{n}")).await?;
            ensure!(
                body == format!("fib({n}) = {}\n", fib(n)),
                "request {i}: {body:?}"
            );
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    let mut ok = 0;
    while let Some(r) = reqs.join_next().await {
        r??;
        ok += 1;
    }
    ensure!(ok == 200, "{ok} answers");
    let workers = support::live_children_of(server_pid);
    ensure!(!workers.is_empty(), "found no workers of {server_pid}");
    server.kill().await?;
    let gone = support::eventually(Duration::from_secs(10), || {
        workers.iter().all(|w| !support::exists(*w))
    })
    .await;
    ensure!(gone, "the server's workers died with it");
    Ok(())
}

/// The number of primes below `n`, as the tour counts them, to check its stream's total.
fn primes_below(n: u64) -> usize {
    (2..n)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count()
}

async fn tour() -> TestResult {
    let out = run_example("tour").await?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(lines.len() == 14, "fourteen lines: {out}");
    ensure!(
        lines[1].starts_with("primes below 50k..80k: [5133, 6057, 6935, 7837]")
            && lines[1].contains("on the pool")
            && lines[1].contains("in one process"),
        "map beside its sequential baseline: {out}"
    );
    for (i, k) in [50, 100, 150, 200].iter().enumerate() {
        ensure!(
            lines[2 + i] == format!("imap_unordered: {k}/200 done"),
            "progress: {out}"
        );
    }
    let all: usize = (1..=200u64).map(|i| primes_below(i * 100)).sum();
    ensure!(
        lines[6] == format!("imap_unordered: {all} primes counted in all"),
        "stream total: {out}"
    );
    ensure!(
        lines[7] == "apply_async: 1229 and 2262",
        "apply_async: {out}"
    );
    ensure!(
        lines[8].starts_with("crashed task: worker process ") && lines[8].contains("SIGABRT"),
        "crash: {out}"
    );
    ensure!(
        lines[9].starts_with("hung task: task timed out after 200ms"),
        "timeout: {out}"
    );
    ensure!(
        lines[10] == "cancelled task: task cancelled",
        "cancel: {out}"
    );
    ensure!(
        lines[11] == "after the crash, the timeout and the cancel: 100 more tasks ran, all 168",
        "recovery: {out}"
    );
    ensure!(
        lines[12] == "from the producer process: [1, 4, 9, 16, 25], exit code 0",
        "queue: {out}"
    );
    Ok(())
}

/// 2,000 lines through `pool_stdin_lines`, written while it prints: one line of output per
/// line of input, in order, with its count of words, then the total.
async fn pool_stdin_lines() -> TestResult {
    let mut filter = tokio::process::Command::new(example("pool_stdin_lines")?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = filter.stdin.take().ok_or("no stdin")?;
    let mut stdout = filter.stdout.take().ok_or("no stdout")?;
    let words = |i: usize| i % 7;
    let writer = tokio::spawn(async move {
        for i in 0..2000 {
            let line = vec!["w"; words(i)].join(" ") + "\n";
            stdin.write_all(line.as_bytes()).await?;
        }
        std::io::Result::Ok(())
    });
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(60), stdout.read_to_string(&mut out)).await??;
    writer.await??;
    ensure!(filter.wait().await?.success(), "the filter failed");
    let mut want: Vec<String> = (0..2000)
        .map(|i| format!("line {}: {} words", i + 1, words(i)))
        .collect();
    want.push(format!("{} words", (0..2000).map(words).sum::<usize>()));
    let got: Vec<&str> = out.lines().collect();
    ensure!(got == want, "printed {out}");
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    support::run(vec![
        test("tour", tour),
        test("pool_mean", pool_mean),
        test("pool_cube", pool_cube),
        test("pool_getpid", pool_getpid),
        test("pool_methods", pool_methods),
        test("axum_offload", axum_offload),
        test("pool_stdin_lines", pool_stdin_lines),
    ]);
}
