//! Start methods: `fork` refused in a multi-threaded process and working from a
//! single-threaded one, `get_start_method()` in a child naming the method that started it,
//! the default inherited by children and grandchildren, `try_set_start_method` refusing a
//! default already set or used, `get_all_start_methods()`, and parsing method names. Cases
//! ported from CPython's `_test_multiprocessing.py` (`TestStartMethod`, `_TestProcess`)
//! name the Python test they come from.

#[macro_use]
mod support;

use std::time::Duration;

use support::TestResult;
use support::process::{
    METHODS, async_exit, exit_with, helper_mode, nothing, run_as_helper, run_helper,
};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    mp::init(); // a re-executed child never gets past this line
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        fork_is_refused_with_threads,
        fork_from_a_single_threaded_process,
        a_forked_child_ends_on_terminate_whatever_its_parent_handles,
        child_reports_the_method_that_started_it,
        default_method_is_inherited_by_children_and_grandchildren,
        get_all_start_methods_lists_each_once_default_first,
        unknown_start_method_is_invalid_argument,
        try_set_start_method_refuses_once_set_or_used,
        try_set_start_method_is_refused_in_a_child,
    ])
}

// ---------------------------------------------------------------- targets

/// Runs in a child, which has a single thread: starts a grandchild with the fork method.
fn fork_probe(code: i32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async move {
        let mut p = Process::new(exit_with, (code,))
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        let mut q = Process::new(async_exit, (code,))
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        Ok::<_, Error>((p.join().await?, q.join().await?))
    });
    match result {
        Ok((a, b)) if a == code && b == code + 1 => std::process::exit(0),
        Ok(other) => {
            eprintln!("fork probe: exit codes {other:?}");
            std::process::exit(2)
        }
        Err(e) => {
            eprintln!("fork probe: {e}");
            std::process::exit(3)
        }
    }
}

fn sleep_long() {
    std::thread::sleep(Duration::from_secs(60));
}

async fn sleep_long_async() {
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Runs in a child, on the single-threaded runtime the crate builds for it: handles
/// SIGTERM and SIGINT itself (as a service shutting down gracefully does), forks
/// grandchildren that sleep, and terminates them. Fails unless each ended by SIGTERM, as a
/// spawned one would.
async fn fork_terminate_probe() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let _term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let _int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    for plain in [true, false] {
        let p = match plain {
            true => Process::new(sleep_long, ()),
            false => Process::new(sleep_long_async, ()),
        };
        let mut p = p
            .start_method(StartMethod::Fork)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        // Started: past the point where it could still be running the parent's code.
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.terminate().map_err(|e| e.to_string())?;
        match tokio::time::timeout(Duration::from_secs(20), p.join()).await {
            Ok(Ok(-15)) => {}
            Ok(r) => {
                return Err(format!(
                    "plain target {plain}: ended with {r:?}, not SIGTERM"
                ));
            }
            Err(_) => {
                let _ = p.kill();
                return Err(format!("plain target {plain}: terminate() did not end it"));
            }
        }
    }
    Ok(())
}

/// The exit code [`report_start_method`] gives for `m`.
fn method_code(m: StartMethod) -> i32 {
    match m {
        StartMethod::Spawn => 11,
        StartMethod::ForkServer => 12,
        StartMethod::Fork => 13,
        _ => 14,
    }
}

/// Exits with [`method_code`] of this process's start method (CPython's `_check_context`).
fn report_start_method() {
    std::process::exit(method_code(mp::get_start_method()))
}

/// Runs in a spawned child, which has a single thread: forks a grandchild that reports its
/// start method, and exits with the grandchild's code.
fn fork_method_probe() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let mut p = Process::new(report_start_method, ())
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        p.join().await
    });
    std::process::exit(code.unwrap_or_else(|e| {
        eprintln!("fork method probe: {e}");
        3
    }))
}

/// Puts `(who, start method)` on `q`.
fn put_start_method(q: mp::Queue<(String, String)>, who: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let method = mp::get_start_method().name().to_string();
    if rt.block_on(q.put((who, method))).is_err() {
        std::process::exit(2);
    }
}

/// Puts its start method on `q`, then starts a grandchild with its default method that does
/// the same (CPython's `_put_two_and_nest_once`).
fn put_start_method_and_nest(q: mp::Queue<(String, String)>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let method = mp::get_start_method().name().to_string();
    let code = rt.block_on(async move {
        q.put(("child".into(), method))
            .await
            .map_err(|e| e.to_string())?;
        let mut p = Process::new(put_start_method, (q, "grandchild".to_string()))
            .start()
            .await
            .map_err(|e| e.to_string())?;
        p.join().await.map_err(|e| e.to_string())
    });
    std::process::exit(code.unwrap_or_else(|e| {
        eprintln!("nested start: {e}");
        3
    }))
}

// ---------------------------------------------------------------- tests

async fn fork_is_refused_with_threads() -> TestResult {
    let r = Process::new(nothing, ())
        .start_method(StartMethod::Fork)
        .start()
        .await;
    match r {
        Err(e @ Error::Start { pid: 0, .. }) => {
            // No child existed: the message names none (no "pid 0").
            let shown = e.to_string();
            ensure!(
                shown.starts_with("child process Process-")
                    && !shown.contains("pid")
                    && shown.contains("single-threaded"),
                "message: {shown}"
            );
            Ok(())
        }
        Err(e) => Err(format!("unexpected error {e}").into()),
        Ok(_) => Err("fork was allowed in a multi-threaded process".into()),
    }
}

async fn fork_from_a_single_threaded_process() -> TestResult {
    let mut p = Process::new(fork_probe, (21,)).start().await?;
    let code = p.join().await?;
    ensure!(
        code == 0,
        "the fork probe failed with exit code {code} (see its stderr)"
    );
    Ok(())
}

async fn child_reports_the_method_that_started_it() -> TestResult {
    // TestStartMethod.test_context (check_context): in the child, get_start_method() is the
    // method that started it.
    for m in METHODS {
        let mut p = Process::new(report_start_method, ())
            .start_method(m)
            .start()
            .await?;
        let code = support::join_code(&mut p).await?;
        ensure!(
            code == method_code(m),
            "{m:?}: the child reported exit code {code}, expected {}",
            method_code(m)
        );
    }
    // Fork needs a single-threaded parent: a spawned child forks the reporter.
    let mut p = Process::new(fork_method_probe, ()).start().await?;
    let code = support::join_code(&mut p).await?;
    ensure!(
        code == method_code(StartMethod::Fork),
        "Fork: the child reported exit code {code}, expected {}",
        method_code(StartMethod::Fork)
    );
    Ok(())
}

async fn default_method_is_inherited_by_children_and_grandchildren() -> TestResult {
    // TestStartMethod.test_set_get (check_context after set_start_method) and
    // _TestProcess.test_nested_startmethod: a child started with the default set in the
    // parent reports it, and starts its own child (passing it the queue) with it too. Not
    // with fork: this helper has runtime threads, so fork is refused in it.
    for m in METHODS {
        let (status, out, err) =
            run_helper("nested-startmethod", &[("TKMP_METHOD", m.name().into())]).await?;
        ensure!(status.success(), "{m:?}: helper failed: {out} {err}");
        let want = format!("child={0} grandchild={0} exit=0", m.name());
        ensure!(
            out.trim() == want,
            "{m:?}: got {out:?}, expected {want:?}; stderr: {err}"
        );
    }
    Ok(())
}

async fn get_all_start_methods_lists_each_once_default_first() -> TestResult {
    // TestStartMethod.test_get_all
    let methods = mp::get_all_start_methods();
    ensure!(
        methods
            == [
                StartMethod::Spawn,
                StartMethod::Fork,
                StartMethod::ForkServer
            ],
        "get_all_start_methods() = {methods:?}"
    );
    ensure!(
        methods[0] == StartMethod::default(),
        "the default is not first: {methods:?}"
    );
    Ok(())
}

async fn unknown_start_method_is_invalid_argument() -> TestResult {
    // TestStartMethod.test_set_get: set_start_method('nonexistent') raises ValueError
    for m in mp::get_all_start_methods() {
        ensure!(
            m.name().parse::<StartMethod>()? == m,
            "{} does not parse back",
            m.name()
        );
    }
    let bad = "nonexistent".parse::<StartMethod>();
    ensure!(matches!(bad, Err(mp::Error::InvalidArgument(_))), "{bad:?}");
    Ok(())
}

/// What `try_set_start_method(method)` gave, as the helper prints it.
fn tried(method: StartMethod) -> String {
    match mp::try_set_start_method(method) {
        Ok(()) => "ok".into(),
        Err(Error::StartMethodSet { method }) => format!("set:{method}"),
        Err(e) => format!("error:{e}"),
    }
}

async fn try_set_start_method_refuses_once_set_or_used() -> TestResult {
    // TestStartMethod.test_set_get: set_start_method(method) without force raises
    // RuntimeError once the context is set, and leaves it; force=True sets it. Each case in
    // a fresh process, whose default is neither set nor used yet.
    let cases = [
        ("try-set-twice", "ok set:forkserver forkserver spawn"),
        ("try-set-after-get", "set:spawn spawn"),
        ("try-set-after-set", "set:fork fork"),
    ];
    for (mode, want) in cases {
        let (status, out, err) = run_helper(mode, &[]).await?;
        ensure!(status.success(), "{mode}: helper failed: {out} {err}");
        ensure!(
            out.trim() == want,
            "{mode}: got {out:?}, expected {want:?}; stderr: {err}"
        );
    }
    Ok(())
}

/// Exit code 0 if the child's default counts as set already (its parent's method).
fn try_set_in_child() -> std::process::ExitCode {
    let refused = matches!(
        mp::try_set_start_method(StartMethod::Fork),
        Err(Error::StartMethodSet {
            method: "forkserver"
        })
    );
    match refused && mp::get_start_method() == StartMethod::ForkServer {
        true => std::process::ExitCode::SUCCESS,
        false => std::process::ExitCode::from(3),
    }
}

async fn try_set_start_method_is_refused_in_a_child() -> TestResult {
    // A child's context is set by its bootstrap (Python's spawn sets it with force=True).
    let mut p = Process::new(try_set_in_child, ())
        .start_method(StartMethod::ForkServer)
        .start()
        .await?;
    let code = support::join_code(&mut p).await?;
    ensure!(
        code == 0,
        "the child's try_set_start_method: exit code {code}"
    );
    Ok(())
}

async fn a_forked_child_ends_on_terminate_whatever_its_parent_handles() -> TestResult {
    // A forked child inherits its parent's signal handlers, and tokio's write to a pipe the
    // child no longer has: SIGTERM must still end it, as it ends a spawned child.
    let mut p = Process::new(fork_terminate_probe, ()).start().await?;
    let code = tokio::time::timeout(Duration::from_secs(90), p.join())
        .await
        .map_err(|_| "the probe never ended")??;
    ensure!(
        code == 0,
        "the probe failed with exit code {code} (see its stderr)"
    );
    Ok(())
}

// ---------------------------------------------------------------- helper modes

/// This binary as a parent in a mode of its own; prints what the test reads.
async fn helper(mode: &str) {
    match mode {
        "nested-startmethod" => {
            let method: StartMethod = std::env::var("TKMP_METHOD").unwrap().parse().unwrap();
            mp::set_start_method(method);
            let q = mp::Queue::<(String, String)>::new().unwrap();
            let mut p = Process::new(put_start_method_and_nest, (q.clone(),))
                .start()
                .await
                .unwrap();
            let code = p.join().await.unwrap();
            let mut got = Vec::new();
            for _ in 0..2 {
                match q.get_timeout(Duration::from_secs(20)).await {
                    Ok((who, m)) => got.push(format!("{who}={m}")),
                    Err(e) => got.push(format!("error={e}")),
                }
            }
            got.sort();
            println!("{} exit={code}", got.join(" "));
        }
        "try-set-twice" => {
            let first = tried(StartMethod::ForkServer);
            let second = tried(StartMethod::Spawn);
            let kept = mp::get_start_method().name();
            mp::set_start_method(StartMethod::Spawn);
            let forced = mp::get_start_method().name();
            println!("{first} {second} {kept} {forced}");
        }
        "try-set-after-get" => {
            let _ = mp::get_start_method();
            let refused = tried(StartMethod::ForkServer);
            println!("{refused} {}", mp::get_start_method().name());
        }
        "try-set-after-set" => {
            mp::set_start_method(StartMethod::Fork);
            let refused = tried(StartMethod::Spawn);
            println!("{refused} {}", mp::get_start_method().name());
        }
        other => panic!("unknown helper mode {other}"),
    }
}
