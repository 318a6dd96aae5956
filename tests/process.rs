//! `Process` across real processes, with each start method: exit codes, signals, joins,
//! arguments, async targets, the handshake, the bootstrap's failure modes, and children's
//! deaths with their parent. Cases ported from CPython's `_test_multiprocessing.py`
//! (`_TestProcess`) name the Python test they come from.

#[macro_use]
mod support;

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use support::{TestResult, run_example, test};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

const METHODS: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::ForkServer];

fn main() {
    let mode = std::env::var("TKMP_TEST_MODE").ok();
    if mode.as_deref() == Some("runtime-before-init") {
        // As `#[tokio::main]` does: the runtime (signal driver included) exists before init().
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            mp::init();
            for m in [StartMethod::Spawn, StartMethod::ForkServer] {
                let mut p = Process::new(async_exit, (4,))
                    .start_method(m)
                    .start()
                    .await
                    .unwrap();
                print!("{}={} ", m.name(), p.join().await.unwrap());
            }
        });
        std::process::exit(0);
    }
    if !matches!(
        mode.as_deref(),
        Some("no-init" | "no-init-return" | "no-init-block")
    ) {
        mp::init();
    }
    if let Some(mode) = mode {
        helper(&mode);
    }
    support::run(vec![
        test("exit_code_zero_after_return", exit_code_zero_after_return),
        test("exit_code_passed_to_exit", exit_code_passed_to_exit),
        test(
            "results_give_exit_codes_as_main",
            results_give_exit_codes_as_main,
        ),
        test(
            "arguments_of_many_types_arrive",
            arguments_of_many_types_arrive,
        ),
        test(
            "async_target_runs_on_the_childs_runtime",
            async_target_runs_on_the_childs_runtime,
        ),
        test(
            "terminate_gives_minus_sigterm",
            terminate_gives_minus_sigterm,
        ),
        test("kill_gives_minus_sigkill", kill_gives_minus_sigkill),
        test(
            "join_timeout_leaves_a_running_child",
            join_timeout_leaves_a_running_child,
        ),
        test(
            "sentinel_becomes_readable_at_exit",
            sentinel_becomes_readable_at_exit,
        ),
        test("names_pids_and_daemon_flags", names_pids_and_daemon_flags),
        test("many_concurrent_starts", many_concurrent_starts),
        test("fork_is_refused_with_threads", fork_is_refused_with_threads),
        test(
            "fork_from_a_single_threaded_process",
            fork_from_a_single_threaded_process,
        ),
        test(
            "forged_fingerprint_is_refused",
            forged_fingerprint_is_refused,
        ),
        test("dropped_process_is_reaped", dropped_process_is_reaped),
        test(
            "oversized_arguments_are_refused",
            oversized_arguments_are_refused,
        ),
        test("no_descriptor_leaks", no_descriptor_leaks),
        test(
            "panic_prints_message_and_exits_1",
            panic_prints_message_and_exits_1,
        ),
        test(
            "children_die_with_a_killed_parent",
            children_die_with_a_killed_parent,
        ),
        test(
            "exit_joins_children_and_terminates_daemons",
            exit_joins_children_and_terminates_daemons,
        ),
        test(
            "forgotten_init_is_named_in_the_error",
            forgotten_init_is_named_in_the_error,
        ),
        test(
            "child_returning_before_init_fails_the_start",
            child_returning_before_init_fails_the_start,
        ),
        test(
            "descriptors_travel_as_arguments",
            descriptors_travel_as_arguments,
        ),
        test(
            "argv_is_passed_only_when_asked",
            argv_is_passed_only_when_asked,
        ),
        test(
            "children_read_nothing_from_stdin",
            children_read_nothing_from_stdin,
        ),
        test(
            "async_targets_under_a_runtime_built_before_init",
            async_targets_under_a_runtime_built_before_init,
        ),
        test(
            "child_stuck_before_init_hits_the_deadline",
            child_stuck_before_init_hits_the_deadline,
        ),
        test(
            "killed_fork_server_spares_its_children_and_is_replaced",
            killed_fork_server_spares_its_children_and_is_replaced,
        ),
        test("fork_server_ignores_sigint", fork_server_ignores_sigint),
        test(
            "orphans_of_a_killed_fork_server_die_with_the_program",
            orphans_of_a_killed_fork_server_die_with_the_program,
        ),
        test(
            "child_reports_the_method_that_started_it",
            child_reports_the_method_that_started_it,
        ),
        test(
            "default_method_is_inherited_by_children_and_grandchildren",
            default_method_is_inherited_by_children_and_grandchildren,
        ),
        test(
            "get_all_start_methods_lists_each_once_default_first",
            get_all_start_methods_lists_each_once_default_first,
        ),
        test(
            "unknown_start_method_is_invalid_argument",
            unknown_start_method_is_invalid_argument,
        ),
        test("example_process_hello", example_process_hello),
        test("example_process_per_cpu", example_process_per_cpu),
        test("example_process_hello_bob", example_process_hello_bob),
        test("example_process_methods", example_process_methods),
    ])
}

// ---------------------------------------------------------------- targets

fn nothing() {}

fn exit_with(code: i32) {
    std::process::exit(code)
}

fn returns_err(reason: String) -> Result<(), String> {
    Err(reason)
}

async fn returns_exit_code(code: u8) -> std::process::ExitCode {
    std::process::ExitCode::from(code)
}

fn sleep_for(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    id: u64,
    tags: Vec<String>,
    ratio: f64,
    nested: Option<Box<Record>>,
}

fn checksum(n: u8, s: String, bytes: Vec<u8>, blob: bytes::Bytes, r: Record) {
    let ok = n == 7
        && s == "héllo"
        && bytes == (0..=255).collect::<Vec<u8>>()
        && blob.len() == 1 << 20
        && blob.iter().all(|&b| b == 0xab)
        && r.tags == ["a", "b"]
        && r.nested
            .as_ref()
            .is_some_and(|n| n.id == 2 && n.ratio == 0.25);
    std::process::exit(if ok { 42 } else { 3 })
}

async fn async_exit(code: i32) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v = tokio::spawn(async move { code + 1 }).await.unwrap_or(0);
    std::process::exit(v)
}

fn panics(message: String) {
    panic!("{message}");
}

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

/// Runs in a child: with a 1 KiB frame limit, a 4 KiB argument must be refused.
fn frame_limit_probe() {
    mp::set_max_frame_size(1024);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(Process::new(checksum_len, (vec![1u8; 4096],)).start());
    std::process::exit(match r {
        Err(Error::FrameTooLarge { size, max: 1024 }) if size > 4096 => 0,
        Err(e) => {
            eprintln!("frame limit probe: {e}");
            2
        }
        Ok(_) => 3,
    })
}

fn checksum_len(v: Vec<u8>) {
    std::process::exit((v.len() % 256) as i32)
}

/// Runs in a child, so that other tests' descriptors do not blur the count.
fn fd_probe() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let count = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let code = rt.block_on(async move {
        let cycle = || async {
            for m in METHODS {
                let mut p = Process::new(nothing, ()).start_method(m).start().await?;
                p.join().await?;
                let mut q = Process::new(exit_with, (1,))
                    .start_method(m)
                    .start()
                    .await?;
                q.join().await?;
            }
            Ok::<_, Error>(())
        };
        if cycle().await.is_err() {
            return 2;
        }
        let before = count();
        for _ in 0..10 {
            if cycle().await.is_err() {
                return 2;
            }
        }
        let after = count();
        if before == after {
            0
        } else {
            eprintln!("fd probe: {before} descriptors before, {after} after");
            1
        }
    });
    std::process::exit(code)
}

/// Writes a greeting into a socket it was handed, and keeps the other descriptors it got.
fn write_into(sock: mp::Fd, file: mp::Fd, greeting: String) {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::from(sock.into_owned());
    let mut f = std::fs::File::from(file.into_owned());
    let ok = s.write_all(greeting.as_bytes()).is_ok() && f.write_all(b"file ok").is_ok();
    std::process::exit(if ok { 0 } else { 1 })
}

/// Exits 0 if stdin is at end of file at once, as `/dev/null` is.
fn read_stdin() {
    use std::io::Read;
    let mut buf = [0u8; 16];
    let n = std::io::stdin().read(&mut buf).unwrap_or(99);
    std::process::exit(n as i32)
}

/// Echoes each byte it reads from `sock` until it reads `q`, then exits with `code`; exits 98
/// at end of file and 99 if nothing comes for 30 s.
fn echo_until_q(sock: mp::Fd, code: i32) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::from(sock.into_owned());
    if s.set_read_timeout(Some(Duration::from_secs(30))).is_err() {
        std::process::exit(97);
    }
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => std::process::exit(98),
            Ok(_) if b[0] == b'q' => std::process::exit(code),
            Ok(_) => {
                if s.write_all(&b).is_err() {
                    std::process::exit(96);
                }
            }
            Err(_) => std::process::exit(99),
        }
    }
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

/// Exits with the number of command-line arguments it received.
fn count_args() {
    std::process::exit(std::env::args_os().count() as i32)
}

// ---------------------------------------------------------------- tests

async fn exit_code_zero_after_return() -> TestResult {
    // _TestProcess.test_process
    for m in METHODS {
        let mut p = Process::new(nothing, ()).start_method(m).start().await?;
        ensure!(p.join().await? == 0, "{m:?}: exit code");
        ensure!(p.exitcode()? == Some(0), "{m:?}: exitcode()");
        ensure!(!p.is_alive(), "{m:?}: still alive after join");
    }
    Ok(())
}

async fn exit_code_passed_to_exit() -> TestResult {
    // _TestProcess.test_sys_exit
    for m in METHODS {
        for code in [1, 7, 255] {
            let mut p = Process::new(exit_with, (code,))
                .start_method(m)
                .start()
                .await?;
            ensure!(p.join().await? == code, "{m:?}: exit({code})");
        }
    }
    Ok(())
}

async fn results_give_exit_codes_as_main() -> TestResult {
    for m in METHODS {
        let mut p = Process::new(returns_err, ("expected failure".to_string(),))
            .start_method(m)
            .start()
            .await?;
        ensure!(p.join().await? == 1, "{m:?}: an Err result");
        let mut p = Process::new(returns_exit_code, (42,))
            .start_method(m)
            .start()
            .await?;
        ensure!(p.join().await? == 42, "{m:?}: an ExitCode result");
    }
    Ok(())
}

async fn arguments_of_many_types_arrive() -> TestResult {
    // _TestProcess.test_args_argument
    for m in METHODS {
        let r = Record {
            id: 1,
            tags: vec!["a".into(), "b".into()],
            ratio: 0.5,
            nested: Some(Box::new(Record {
                id: 2,
                tags: vec![],
                ratio: 0.25,
                nested: None,
            })),
        };
        let args = (
            7u8,
            "héllo".to_string(),
            (0..=255).collect::<Vec<u8>>(),
            bytes::Bytes::from(vec![0xab; 1 << 20]),
            r,
        );
        let mut p = Process::new(checksum, args).start_method(m).start().await?;
        ensure!(
            p.join().await? == 42,
            "{m:?}: the child saw different arguments"
        );
    }
    Ok(())
}

async fn async_target_runs_on_the_childs_runtime() -> TestResult {
    for m in METHODS {
        let mut p = Process::new(async_exit, (9,))
            .start_method(m)
            .start()
            .await?;
        ensure!(p.join().await? == 10, "{m:?}: async target");
    }
    Ok(())
}

async fn terminate_gives_minus_sigterm() -> TestResult {
    // _TestProcess.test_terminate
    for m in METHODS {
        let mut p = Process::new(sleep_for, (60_000,))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        ensure!(p.is_alive(), "{m:?}: not alive");
        p.terminate()?;
        ensure!(p.join().await? == -15, "{m:?}: exit code after SIGTERM");
        p.terminate()?; // a finished process: no error, as in Python
    }
    Ok(())
}

async fn kill_gives_minus_sigkill() -> TestResult {
    // _TestProcess.test_kill
    for m in METHODS {
        let mut p = Process::new(sleep_for, (60_000,))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        p.kill()?;
        ensure!(p.join().await? == -9, "{m:?}: exit code after SIGKILL");
    }
    Ok(())
}

async fn join_timeout_leaves_a_running_child() -> TestResult {
    for m in METHODS {
        let mut p = Process::new(sleep_for, (60_000,))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        ensure!(
            p.join_timeout(Duration::from_millis(50)).await?.is_none(),
            "{m:?}: join_timeout returned an exit code for a running child"
        );
        ensure!(
            p.is_alive() && p.exitcode()?.is_none(),
            "{m:?}: child not running"
        );
        p.kill()?;
        ensure!(
            p.join_timeout(Duration::from_secs(10)).await? == Some(-9),
            "{m:?}: join_timeout after kill"
        );
    }
    Ok(())
}

async fn sentinel_becomes_readable_at_exit() -> TestResult {
    // _TestProcess.test_sentinel
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    for m in METHODS {
        let mut p = Process::new(sleep_for, (60_000,))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        let readable = |p: &Process, ms: u16| -> Result<bool, nix::Error> {
            let mut fds = [PollFd::new(p.sentinel(), PollFlags::POLLIN)];
            Ok(poll(&mut fds, PollTimeout::from(ms))? == 1)
        };
        ensure!(!readable(&p, 0)?, "{m:?}: sentinel readable while running");
        p.kill()?;
        ensure!(
            readable(&p, 10_000)?,
            "{m:?}: sentinel not readable after exit"
        );
        ensure!(
            p.as_raw_fd() == p.sentinel().as_raw_fd(),
            "AsRawFd is the sentinel"
        );
        p.join().await?;
    }
    Ok(())
}

async fn names_pids_and_daemon_flags() -> TestResult {
    let mut a = Process::new(nothing, ()).start().await?;
    let mut b = Process::new(nothing, ())
        .name("worker-b")
        .daemon(true)
        .start()
        .await?;
    ensure!(
        a.name().starts_with("Process-"),
        "default name {}",
        a.name()
    );
    ensure!(
        b.name() == "worker-b" && b.daemon() && !a.daemon(),
        "name/daemon"
    );
    ensure!(a.pid() != b.pid() && a.pid() != std::process::id(), "pids");
    a.join().await?;
    b.join().await?;
    Ok(())
}

async fn many_concurrent_starts() -> TestResult {
    let mut starts = Vec::new();
    for i in 0..32 {
        let m = METHODS[i % 2];
        starts.push(tokio::spawn(async move {
            let mut p = Process::new(exit_with, ((i % 100) as i32,))
                .start_method(m)
                .start()
                .await?;
            Ok::<_, Error>((i, p.join().await?))
        }));
    }
    for s in starts {
        let (i, code) = s.await??;
        ensure!(code == (i % 100) as i32, "process {i} exited with {code}");
    }
    Ok(())
}

async fn fork_is_refused_with_threads() -> TestResult {
    let r = Process::new(nothing, ())
        .start_method(StartMethod::Fork)
        .start()
        .await;
    match r {
        Err(Error::Start { message, .. }) => {
            ensure!(message.contains("single-threaded"), "message: {message}");
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

async fn forged_fingerprint_is_refused() -> TestResult {
    for m in METHODS {
        let r = Process::new(nothing, ())
            .start_method(m)
            .__forge_fingerprint(vec![0xde, 0xad])
            .start()
            .await;
        match r {
            Err(Error::BinaryMismatch { ours, theirs }) => {
                ensure!(
                    ours == "dead" && theirs != "dead",
                    "{m:?}: {ours} vs {theirs}"
                )
            }
            Err(e) => return Err(format!("{m:?}: unexpected error {e}").into()),
            Ok(_) => return Err(format!("{m:?}: a forged fingerprint was accepted").into()),
        }
    }
    Ok(())
}

async fn dropped_process_is_reaped() -> TestResult {
    // A fork-server child is this process's child too, reaped here.
    // Long enough that it is surely running when its handle drops, however slow this side.
    let mut pids = Vec::new();
    for m in METHODS {
        let p = Process::new(sleep_for, (2_000,))
            .start_method(m)
            .start()
            .await?;
        pids.push(p.pid());
        drop(p);
    }
    ensure!(
        pids.iter().all(|&p| support::exists(p)),
        "a child vanished at once"
    );
    let gone = support::eventually(Duration::from_secs(20), || {
        pids.iter().all(|&p| !support::exists(p))
    })
    .await;
    ensure!(
        gone,
        "processes {pids:?} were not reaped after their handles were dropped"
    );
    Ok(())
}

async fn oversized_arguments_are_refused() -> TestResult {
    let mut p = Process::new(frame_limit_probe, ()).start().await?;
    let code = p.join().await?;
    ensure!(
        code == 0,
        "the frame limit probe failed with exit code {code} (see its stderr)"
    );
    Ok(())
}

async fn no_descriptor_leaks() -> TestResult {
    let mut p = Process::new(fd_probe, ()).start().await?;
    ensure!(p.join().await? == 0, "descriptors leaked (see stderr)");
    Ok(())
}

async fn descriptors_travel_as_arguments() -> TestResult {
    use std::io::Read;
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let path =
            std::env::temp_dir().join(format!("tkmp-fd-{}-{}", std::process::id(), m.name()));
        let file = std::fs::File::create(&path)?;
        let args = (
            mp::Fd::from(std::os::fd::OwnedFd::from(theirs)),
            mp::Fd::from(std::os::fd::OwnedFd::from(file)),
            format!("hello over {}", m.name()),
        );
        let mut p = Process::new(write_into, args)
            .start_method(m)
            .start()
            .await?;
        ensure!(
            p.join().await? == 0,
            "{m:?}: the child could not use its descriptors"
        );
        // Our copy of the child's end went with the arguments: EOF comes once the child exits.
        let mut got = String::new();
        ours.set_read_timeout(Some(Duration::from_secs(10)))?;
        ours.read_to_string(&mut got)?;
        ensure!(
            got == format!("hello over {}", m.name()),
            "{m:?}: read {got:?}"
        );
        let written = std::fs::read_to_string(&path)?;
        let _ = std::fs::remove_file(&path);
        ensure!(written == "file ok", "{m:?}: file holds {written:?}");
    }
    Ok(())
}

async fn children_read_nothing_from_stdin() -> TestResult {
    // The helper's stdin is a pipe we hold open and never write: a child reading the
    // helper's stdin would block until the helper is killed.
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("TKMP_TEST_MODE", "stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let held_open = child.stdin.take(); // wait_with_output would close it
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output()).await;
    drop(held_open);
    let out = out.map_err(|_| "a child blocked reading its parent's stdin")??;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.trim() == "spawn=0 forkserver=0",
        "exit codes of the readers: {text}"
    );
    Ok(())
}

async fn async_targets_under_a_runtime_built_before_init() -> TestResult {
    let (status, out, err) = run_helper("runtime-before-init", &[]).await?;
    ensure!(status.success(), "helper failed: {err}");
    ensure!(
        out.trim() == "spawn=5 forkserver=5",
        "exit codes: {out} stderr: {err}"
    );
    Ok(())
}

async fn child_stuck_before_init_hits_the_deadline() -> TestResult {
    let (_, out, err) = run_helper("no-init-block", &[]).await?;
    ensure!(
        out.contains("error=") && out.contains("within") && out.contains("init()"),
        "stdout: {out} stderr: {err}"
    );
    Ok(())
}

async fn argv_is_passed_only_when_asked() -> TestResult {
    let (status, out, err) = run_helper_args("argv", &["one", "two"]).await?;
    ensure!(status.success(), "helper failed: {err}");
    ensure!(
        out.trim() == "plain=1 inherited=3",
        "argument counts: {out}"
    );
    Ok(())
}

// ------------------------------------------- tests that re-execute this binary as a parent

type HelperOutput = (std::process::ExitStatus, String, String);
type Boxed = Box<dyn std::error::Error + Send + Sync>;

/// Runs this test binary in helper `mode` with environment `extra`; returns its exit status,
/// stdout and stderr.
async fn run_helper(mode: &str, extra: &[(&str, String)]) -> Result<HelperOutput, Boxed> {
    run_helper_with(mode, extra, &[]).await
}

async fn run_helper_args(mode: &str, args: &[&str]) -> Result<HelperOutput, Boxed> {
    run_helper_with(mode, &[], args).await
}

async fn run_helper_with(
    mode: &str,
    extra: &[(&str, String)],
    args: &[&str],
) -> Result<HelperOutput, Boxed> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("TKMP_TEST_MODE", mode)
        .args(args)
        .kill_on_drop(true);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn panic_prints_message_and_exits_1() -> TestResult {
    let (status, out, err) = run_helper("panic", &[]).await?;
    ensure!(status.success(), "helper failed: {err}");
    ensure!(out.contains("exitcode=1"), "stdout: {out}");
    ensure!(
        err.contains("boom 42"),
        "the panic message is not on stderr: {err}"
    );
    Ok(())
}

async fn children_die_with_a_killed_parent() -> TestResult {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("TKMP_TEST_MODE", "orphans")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut helper = cmd.spawn()?;
    let stdout = helper.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await??;
    }
    let pids: Vec<u32> = line
        .trim()
        .strip_prefix("pids=")
        .ok_or_else(|| format!("bad helper line {line:?}"))?
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect();
    ensure!(pids.len() == 3, "expected 3 pids, got {line:?}");
    ensure!(
        pids.iter().all(|&p| !support::is_zombie_or_gone(p)),
        "children not running"
    );
    helper.start_kill()?; // SIGKILL
    helper.wait().await?;
    // 20 s only bounds a hang: the death signal is immediate, but a loaded machine is slow.
    let gone = support::eventually(Duration::from_secs(20), || {
        pids.iter().all(|&p| support::is_zombie_or_gone(p))
    })
    .await;
    ensure!(gone, "children {pids:?} outlived their SIGKILLed parent");
    Ok(())
}

async fn killed_fork_server_spares_its_children_and_is_replaced() -> TestResult {
    // CPython: a fork server's children do not die with it, and the next start succeeds.
    let (status, out, err) = run_helper("kill-fork-server", &[]).await?;
    ensure!(status.success(), "helper failed: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines == ["alive=true", "child=7", "next=5"],
        "a child of the killed fork server should run on and exit with 7, the next start \
         should succeed: {out} {err}"
    );
    Ok(())
}

async fn fork_server_ignores_sigint() -> TestResult {
    // CPython's fork server ignores SIGINT (a terminal's Ctrl-C reaches the process group)
    // and its children take the default disposition back.
    let (status, out, err) = run_helper("sigint-fork-server", &[]).await?;
    ensure!(status.success(), "helper failed: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines == ["next=5", "server-survived=true", "alive=true", "child=-2"],
        "the fork server should outlive SIGINT, its child should not: {out} {err}"
    );
    Ok(())
}

async fn orphans_of_a_killed_fork_server_die_with_the_program() -> TestResult {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("TKMP_TEST_MODE", "orphan-of-fork-server")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut helper = cmd.spawn()?;
    let stdout = helper.stdout.take().ok_or("no stdout")?;
    let mut lines = Vec::new();
    {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stdout);
        for _ in 0..2 {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await??;
            lines.push(line.trim().to_string());
        }
    }
    ensure!(
        lines[0] == "alive=true",
        "the child died with the fork server: {lines:?}"
    );
    let pid: u32 = lines[1]
        .strip_prefix("pid=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad helper line {lines:?}"))?;
    ensure!(!support::is_zombie_or_gone(pid), "child {pid} not running");
    helper.start_kill()?; // SIGKILL
    helper.wait().await?;
    // 20 s only bounds a hang: the death signal is immediate, but a loaded machine is slow.
    let gone =
        support::eventually(Duration::from_secs(20), || support::is_zombie_or_gone(pid)).await;
    ensure!(gone, "child {pid} outlived its SIGKILLed program");
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

async fn exit_joins_children_and_terminates_daemons() -> TestResult {
    let marker = std::env::temp_dir().join(format!("tkmp-exit-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let (status, out, err) = run_helper(
        "exit-handler",
        &[("TKMP_MARKER", marker.display().to_string())],
    )
    .await?;
    ensure!(status.success(), "helper failed: {err}");
    let daemon: u32 = out
        .trim()
        .strip_prefix("daemon=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad helper output {out:?}"))?;
    ensure!(
        marker.exists(),
        "the non-daemon child was not waited for at exit"
    );
    let _ = std::fs::remove_file(&marker);
    ensure!(
        support::is_zombie_or_gone(daemon),
        "the daemon child outlived its parent's exit"
    );
    Ok(())
}

async fn forgotten_init_is_named_in_the_error() -> TestResult {
    let (_, out, err) = run_helper("no-init", &[]).await?;
    ensure!(
        out.contains("error=") && out.contains("init()"),
        "stdout: {out} stderr: {err}"
    );
    Ok(())
}

async fn child_returning_before_init_fails_the_start() -> TestResult {
    let (_, out, err) = run_helper("no-init-return", &[]).await?;
    ensure!(
        out.contains("error=") && out.contains("init()"),
        "stdout: {out} stderr: {err}"
    );
    ensure!(
        out.contains("exit code 0"),
        "the error should say how the child ended: {out}"
    );
    Ok(())
}

fn write_marker_after(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    if let Ok(path) = std::env::var("TKMP_MARKER") {
        let _ = std::fs::write(path, "joined");
    }
}

/// This binary as a parent in a mode of its own; prints what the test reads, then exits.
fn helper(mode: &str) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        match mode {
            "panic" => {
                let mut p = Process::new(panics, ("boom 42".to_string(),))
                    .start()
                    .await
                    .unwrap();
                println!("exitcode={}", p.join().await.unwrap());
            }
            "orphans" => {
                let a = Process::new(sleep_for, (600_000,)).start().await.unwrap();
                let b = Process::new(sleep_for, (600_000,))
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                    .unwrap();
                let c = Process::new(sleep_for, (600_000,))
                    .daemon(true)
                    .start()
                    .await
                    .unwrap();
                println!("pids={},{},{}", a.pid(), b.pid(), c.pid());
                std::future::pending::<()>().await;
            }
            "stdin" => {
                let mut a = Process::new(read_stdin, ()).start().await.unwrap();
                let mut b = Process::new(read_stdin, ())
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                    .unwrap();
                println!(
                    "spawn={} forkserver={}",
                    a.join().await.unwrap(),
                    b.join().await.unwrap()
                );
            }
            "no-init-block" => {
                if std::env::var_os("TOKIO_MULTIPROCESSING_BOOT").is_some() {
                    std::thread::sleep(Duration::from_secs(60)); // main busy before init()
                    std::process::exit(0);
                }
                let r = Process::new(nothing, ())
                    .start_timeout(Duration::from_millis(500))
                    .start()
                    .await;
                match r {
                    Ok(_) => println!("started?!"),
                    Err(e) => println!("error={e}"),
                }
            }
            "argv" => {
                let mut a = Process::new(count_args, ()).start().await.unwrap();
                let mut b = Process::new(count_args, ())
                    .inherit_argv(true)
                    .start()
                    .await
                    .unwrap();
                println!(
                    "plain={} inherited={}",
                    a.join().await.unwrap(),
                    b.join().await.unwrap()
                );
            }
            "exit-handler" => {
                let d = Process::new(sleep_for, (600_000,))
                    .daemon(true)
                    .start()
                    .await
                    .unwrap();
                let n = Process::new(write_marker_after, (300,))
                    .start()
                    .await
                    .unwrap();
                println!("daemon={}", d.pid());
                drop((d, n));
            }
            "kill-fork-server" | "orphan-of-fork-server" => {
                // A child of the fork server, and the server itself (our only other child).
                let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut c = Process::new(echo_until_q, (fd_of(theirs), 7))
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                    .unwrap();
                let server = only_other_child(c.pid());
                signal(server, Signal::SIGKILL);
                let dead = support::eventually(Duration::from_secs(20), || {
                    support::is_zombie_or_gone(server)
                })
                .await;
                assert!(dead, "the fork server {server} did not die");
                // The server's death is complete: a child dying with it has its SIGKILL
                // pending already, and cannot echo.
                println!("alive={}", echoes(&mut ours));
                if mode == "orphan-of-fork-server" {
                    println!("pid={}", c.pid());
                    std::future::pending::<()>().await;
                }
                use std::io::Write;
                ours.write_all(b"q").unwrap();
                println!("child={}", c.join().await.unwrap());
                match Process::new(exit_with, (5,))
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                {
                    Ok(mut p) => println!("next={}", p.join().await.unwrap()),
                    Err(e) => println!("next-error={e}"),
                }
            }
            "sigint-fork-server" => {
                let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut c = Process::new(echo_until_q, (fd_of(theirs), 7))
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                    .unwrap();
                let server = only_other_child(c.pid());
                signal(server, Signal::SIGINT);
                // The server answers this start only after the signal was dealt with: it
                // cannot return to its loop with a pending fatal signal.
                let mut p = Process::new(exit_with, (5,))
                    .start_method(StartMethod::ForkServer)
                    .start()
                    .await
                    .unwrap();
                println!("next={}", p.join().await.unwrap());
                let same = support::live_children_of(std::process::id())
                    .into_iter()
                    .any(|pid| pid == server);
                println!("server-survived={same}");
                // Its children get the default disposition back: Ctrl-C ends them.
                println!("alive={}", echoes(&mut ours));
                signal(c.pid(), Signal::SIGINT);
                println!("child={}", c.join().await.unwrap());
            }
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
            "no-init" | "no-init-return" => {
                if mode == "no-init-return"
                    && std::env::var_os("TOKIO_MULTIPROCESSING_BOOT").is_some()
                {
                    std::process::exit(0); // a child whose main returns before init()
                }
                match Process::new(nothing, ())
                    .start_timeout(Duration::from_secs(20))
                    .start()
                    .await
                {
                    Ok(mut p) => println!("started?! exit {:?}", p.join().await),
                    Err(e) => println!("error={e}"),
                }
            }
            other => panic!("unknown helper mode {other}"),
        }
    });
    drop(rt);
    std::process::exit(0)
}

fn fd_of(s: std::os::unix::net::UnixStream) -> mp::Fd {
    mp::Fd::from(std::os::fd::OwnedFd::from(s))
}

/// The one live child of this process other than `known`: the fork server.
fn only_other_child(known: u32) -> u32 {
    let others: Vec<u32> = support::live_children_of(std::process::id())
        .into_iter()
        .filter(|&p| p != known)
        .collect();
    assert_eq!(
        others.len(),
        1,
        "expected one other child, found {others:?}"
    );
    others[0]
}

fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

/// Whether the child behind `s` (running [`echo_until_q`]) echoes a byte back.
fn echoes(s: &mut std::os::unix::net::UnixStream) -> bool {
    use std::io::{Read, Write};
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(20))).is_ok()
        && s.write_all(b"x").is_ok()
        && matches!(s.read(&mut b), Ok(1) if b[0] == b'x')
}

// ---------------------------------------------------------------- examples

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
