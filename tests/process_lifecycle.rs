//! A `Process` from start to end, with each start method: exit codes, results as exit codes,
//! signals, joins with and without a timeout, the sentinel, names and pids, dropped handles,
//! panics, children dying with a killed parent, and what happens to children at exit. Cases
//! ported from CPython's `_test_multiprocessing.py` (`_TestProcess`) name the Python test
//! they come from.

#[macro_use]
mod support;

use std::os::fd::AsRawFd;
use std::time::Duration;

use support::TestResult;
use support::process::{
    METHODS, async_exit, exit_unless_ok, exit_with, helper_mode, nothing, run_as_helper,
    run_helper, sleep_ms, start_helper_reading,
};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    mp::init(); // a re-executed child never gets past this line
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        exit_code_zero_after_return,
        exit_code_passed_to_exit,
        results_give_exit_codes_as_main,
        async_target_runs_on_the_childs_runtime,
        terminate_gives_minus_sigterm,
        kill_gives_minus_sigkill,
        interrupt_sends_sigint,
        join_timeout_leaves_a_running_child,
        a_process_is_joined_on_another_runtime,
        sentinel_becomes_readable_at_exit,
        names_pids_and_daemon_flags,
        ident_is_the_pid_the_child_sees,
        many_concurrent_starts,
        dropped_process_is_reaped,
        panic_prints_message_and_exits_1,
        children_die_with_a_killed_parent,
        exit_joins_children_and_terminates_daemons,
        close_refuses_a_running_child_and_releases_an_ended_one,
        a_parent_without_stdio_gives_its_children_dev_null,
        a_daemon_starts_daemons_unless_told_otherwise,
        children_dropped_as_their_runtime_stops_are_reaped,
        fork_children_dropped_as_their_runtime_stops_are_reaped_later,
        a_start_dropped_midway_leaves_no_child,
        a_panic_decoding_the_arguments_exits_1,
        a_forked_child_joins_its_own_children_at_exit,
        a_program_that_ignores_sigchld_gets_its_childrens_exit_codes,
    ])
}

// ---------------------------------------------------------------- targets

fn returns_err(reason: String) -> Result<(), String> {
    Err(reason)
}

async fn returns_exit_code(code: u8) -> std::process::ExitCode {
    std::process::ExitCode::from(code)
}

fn panics(message: String) {
    panic!("{message}");
}

fn write_marker_after(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    if let Ok(path) = std::env::var("TKMP_MARKER") {
        let _ = std::fs::write(path, "joined");
    }
}

/// Returns once an item arrives on `q` (CPython's `_TestProcess._test_close`).
async fn wait_for_item(q: mp::Queue<()>) -> Result<(), String> {
    q.get().await.map_err(|e| e.to_string())
}

/// How many of this process's descriptors are pidfds of `pid` (their fdinfo's `Pid:` line).
fn pidfds_of(pid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    let line = format!("Pid:\t{pid}");
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|info| info.lines().any(|l| l == line))
        })
        .count()
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
        let mut p = support::process::start_sleeper(m).await?;
        ensure!(p.is_alive(), "{m:?}: not alive");
        p.terminate()?;
        ensure!(p.join().await? == -15, "{m:?}: exit code after SIGTERM");
        p.terminate()?; // a finished process: no error, as in Python
    }
    Ok(())
}

/// Exits 7 once SIGINT arrives, having said on `ready` that it listens for it: a child that
/// winds down on Ctrl-C.
async fn exit_7_on_sigint(ready: mp::Connection<u8>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut interrupts) = signal(SignalKind::interrupt()) else {
        std::process::exit(3);
    };
    if ready.send(&1).await.is_err() {
        std::process::exit(4);
    }
    interrupts.recv().await;
    std::process::exit(7);
}

/// Whether this process ignores SIGINT (`SigIgn` in /proc/self/status), as a job a
/// non-interactive shell runs in the background does; its children inherit that.
fn sigint_ignored() -> Result<bool, support::process::BoxError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .ok_or("no SigIgn line")?;
    Ok(u64::from_str_radix(mask.trim(), 16)? & (1 << (libc::SIGINT - 1)) != 0)
}

async fn interrupt_sends_sigint() -> TestResult {
    // _TestProcess.test_interrupt (Python 3.14), where the child's KeyboardInterrupt
    // exits 1: here SIGINT's default action ends it (-2), or its handler decides.
    let ignored = sigint_ignored()?;
    for m in METHODS {
        let (ready, ready_child) = mp::Pipe::<u8>::new()?;
        let mut p = Process::new(exit_7_on_sigint, (ready_child,))
            .start_method(m)
            .start()
            .await?;
        ensure!(ready.recv().await? == 1, "{m:?}: the child's word");
        p.interrupt()?;
        ensure!(p.join().await? == 7, "{m:?}: a child that handles SIGINT");
        p.interrupt()?; // a finished process: no error, as terminate()
        let mut p = support::process::start_sleeper(m).await?;
        p.interrupt()?;
        if ignored {
            // Inherited as ignored, SIGINT leaves the child running.
            ensure!(
                p.join_timeout(Duration::from_millis(300)).await?.is_none(),
                "{m:?}: a child that inherited SIGINT ignored ended"
            );
            p.kill()?;
            p.join().await?;
        } else {
            ensure!(p.join().await? == -2, "{m:?}: exit code after SIGINT");
        }
    }
    Ok(())
}

async fn kill_gives_minus_sigkill() -> TestResult {
    // _TestProcess.test_kill
    for m in METHODS {
        let mut p = support::process::start_sleeper(m).await?;
        p.kill()?;
        ensure!(p.join().await? == -9, "{m:?}: exit code after SIGKILL");
    }
    Ok(())
}

/// Starts a child that sleeps `ms` then exits with `code`, on `rt`.
fn start_on(
    rt: &tokio::runtime::Runtime,
    method: StartMethod,
    ms: u64,
    code: i32,
) -> Result<Process, String> {
    rt.block_on(
        Process::new(sleep_then_exit, (ms, code))
            .start_method(method)
            .start(),
    )
    .map_err(|e| format!("{method:?} start: {e}"))
}

fn sleep_then_exit(ms: u64, code: i32) {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::exit(code)
}

/// Joins `p` on `rt`, bounded by 30 s; its exit code.
fn join_on(rt: &tokio::runtime::Runtime, p: &mut Process) -> Result<i32, String> {
    rt.block_on(p.join_timeout(Duration::from_secs(30)))
        .map_err(|e| format!("join: {e}"))?
        .ok_or_else(|| format!("child {} not joined within 30 s", p.pid()))
}

/// Processes started on one runtime and joined on another: while the first is alive and
/// idle, and once it is gone.
fn join_on_other_runtimes() -> Result<(), String> {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    };
    for method in support::process::METHODS {
        let first = runtime()?;
        let mut a = start_on(&first, method, 100, 5)?;
        let mut b = start_on(&first, method, 100, 6)?;
        let second = runtime()?;
        let code = join_on(&second, &mut a)?;
        if code != 5 {
            return Err(format!(
                "{method:?}: joined beside the first runtime: {code}"
            ));
        }
        drop(first);
        let code = join_on(&second, &mut b)?;
        if code != 6 {
            return Err(format!(
                "{method:?}: joined after the first runtime: {code}"
            ));
        }
    }
    Ok(())
}

/// A `Process` is joined on any runtime, not only the one that started it (a program that
/// makes a runtime for a few calls, as a synchronous caller of this crate does).
async fn a_process_is_joined_on_another_runtime() -> TestResult {
    tokio::task::spawn_blocking(join_on_other_runtimes).await??;
    Ok(())
}

async fn join_timeout_leaves_a_running_child() -> TestResult {
    for m in METHODS {
        let mut p = support::process::start_sleeper(m).await?;
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
        let mut p = support::process::start_sleeper(m).await?;
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

async fn put_own_ident(q: mp::Queue<(u32, u32)>) {
    let me = mp::current_process();
    let _ = q.put((me.ident(), std::process::id())).await;
}

async fn ident_is_the_pid_the_child_sees() -> TestResult {
    // _TestProcess.test_process: `p.ident == p.pid`, and a child's
    // `current_process().ident` is its own pid.
    let q = mp::Queue::<(u32, u32)>::new()?;
    let mut p = Process::new(put_own_ident, (q.clone(),)).start().await?;
    let (ident, pid) = q.get_timeout(Duration::from_secs(20)).await?;
    ensure!(
        p.ident() == p.pid() && p.ident() == pid,
        "ident {} pid {} the child's pid {pid}",
        p.ident(),
        p.pid()
    );
    ensure!(ident == pid, "current_process().ident {ident}, pid {pid}");
    ensure!(
        mp::current_process().ident() == std::process::id(),
        "the main process's ident"
    );
    support::join_ok(&mut p).await?;
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

async fn dropped_process_is_reaped() -> TestResult {
    // A fork-server child is this process's child too, reaped here.
    // Long enough that it is surely running when its handle drops, however slow this side.
    let mut pids = Vec::new();
    for m in METHODS {
        let p = Process::new(sleep_ms, (2_000,))
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
    let (mut helper, lines) = start_helper_reading("orphans", 1).await?;
    let line = &lines[0];
    let pids: Vec<u32> = line
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

async fn exit_joins_children_and_terminates_daemons() -> TestResult {
    let marker = support::temp_path("exit");
    let (status, out, err) =
        run_helper("exit-handler", &[("TKMP_MARKER", marker.to_string())]).await?;
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
    ensure!(
        support::is_zombie_or_gone(daemon),
        "the daemon child outlived its parent's exit"
    );
    Ok(())
}

/// In a program that ignores SIGCHLD (`signal(SIGCHLD, SIG_IGN)`, inherited here from
/// bash's `trap '' CHLD`, which dash does not pass on), the kernel reaps each child itself
/// as it ends; `join` still returns the child's exit code, which the kernel keeps for its
/// pidfd. Python's `join` returns with `exitcode` left `None` there, and `is_alive()` true
/// for ever. Before, `join` failed with "No child processes (os error 10)", and
/// `exitcode()` too.
async fn a_program_that_ignores_sigchld_gets_its_childrens_exit_codes() -> TestResult {
    let out = tokio::process::Command::new("bash")
        .args(["-c", "trap '' CHLD; exec \"$0\""])
        .arg(std::env::current_exe()?)
        .env(support::process::MODE_VAR, "sigchld-ignored")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    ensure!(out.status.success(), "helper failed: {stderr}");
    if !kernel_keeps_exit_status() {
        // An older kernel keeps nothing: the error says the status is lost.
        for m in METHODS {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("{m:?}: join=Err(")));
            ensure!(
                line.is_some_and(|l| l.contains("exit status is lost")),
                "{m:?}: {stdout:?}"
            );
        }
        return Ok(());
    }
    for m in METHODS {
        let want = format!("{m:?}: join=Ok(7) exitcode=Ok(Some(7)) alive=false killed=Ok(-9)");
        ensure!(
            stdout.lines().any(|l| l == want),
            "wanted {want:?} in {stdout:?}"
        );
    }
    ensure!(
        stdout.lines().any(|l| l == "Fork: probe=Ok(0)"),
        "the fork probe failed: {stdout:?}, {stderr:?}"
    );
    Ok(())
}

/// Whether this kernel keeps a reaped child's exit status for its pidfd (Linux 6.15 and
/// later).
fn kernel_keeps_exit_status() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (6, 15)
}

// ---------------------------------------------------------------- helper modes

/// This binary as a parent in a mode of its own; prints what the test reads.
async fn helper(mode: &str) {
    match mode {
        "panic" => {
            let mut p = Process::new(panics, ("boom 42".to_string(),))
                .start()
                .await
                .unwrap();
            println!("exitcode={}", p.join().await.unwrap());
        }
        "orphans" => {
            let a = Process::new(sleep_ms, (600_000,)).start().await.unwrap();
            let b = Process::new(sleep_ms, (600_000,))
                .start_method(StartMethod::ForkServer)
                .start()
                .await
                .unwrap();
            let c = Process::new(sleep_ms, (600_000,))
                .daemon(true)
                .start()
                .await
                .unwrap();
            println!("pids={},{},{}", a.pid(), b.pid(), c.pid());
            std::future::pending::<()>().await;
        }
        "exit-handler" => {
            let d = Process::new(sleep_ms, (600_000,))
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
        "dropped-starts" => {
            // The fork server, started first, is the one child that may stay.
            let mut warm = Process::new(nothing, ())
                .start_method(StartMethod::ForkServer)
                .start()
                .await
                .unwrap();
            warm.join().await.unwrap();
            let server = support::all_children();
            let mut won = Vec::new();
            for m in METHODS {
                // Dropped while it waits for the launcher thread to start the child.
                for _ in 0..4 {
                    poll_once(Process::new(sleep_ms, (60_000,)).start_method(m).start()).await;
                }
                // Dropped at some point of its start, from before the child exists to the
                // end of its bootstrap; a start that completes keeps its child.
                for us in (0..4_000).step_by(250) {
                    let start = Process::new(sleep_ms, (60_000,)).start_method(m).start();
                    if let Ok(started) =
                        tokio::time::timeout(Duration::from_micros(us), start).await
                    {
                        won.push(started.unwrap());
                    }
                }
            }
            for p in &mut won {
                p.kill().unwrap();
                p.join().await.unwrap();
            }
            let left = || {
                let mut c = support::all_children();
                c.retain(|p| !server.contains(p));
                c
            };
            support::eventually(Duration::from_secs(10), || left().is_empty()).await;
            println!("left={:?}", left());
        }
        "sigchld-ignored" => {
            for m in METHODS {
                let mut p = Process::new(exit_with, (7,))
                    .start_method(m)
                    .start()
                    .await
                    .unwrap();
                let joined = p.join().await;
                let mut q = Process::new(sleep_ms, (600_000,))
                    .start_method(m)
                    .start()
                    .await
                    .unwrap();
                q.kill().unwrap();
                println!(
                    "{m:?}: join={joined:?} exitcode={:?} alive={} killed={:?}",
                    p.exitcode(),
                    p.is_alive(),
                    q.join().await
                );
            }
            // Fork needs a single-threaded parent: a spawned child forks.
            let mut probe = Process::new(fork_exit_codes_probe, ())
                .start()
                .await
                .unwrap();
            println!("Fork: probe={:?}", probe.join().await);
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// A start is not cancel safe, but one dropped midway (a `select!` or a timeout it lost)
/// leaves no child behind, neither running its target with nobody holding it nor a zombie.
/// Python's `start()` is synchronous and cannot be dropped. Before, a start dropped while it
/// waited for the launcher thread left its child unreaped for good (a zombie), and one
/// dropped during the bootstrap could leave it running the target.
async fn a_start_dropped_midway_leaves_no_child() -> TestResult {
    let (status, out, err) = run_helper("dropped-starts", &[]).await?;
    ensure!(status.success(), "helper failed: {err}");
    ensure!(
        out.trim() == "left=[]",
        "children left by dropped starts: {out}"
    );
    Ok(())
}

/// A panic in decoding a target's arguments (a `Deserialize` of the user's) is a panic of
/// the target: exit code 1, as Python's child exits 1 when unpickling its arguments raises.
/// Before, it reached the child's bootstrap, which cannot unwind, and aborted it (-6); in a
/// `fork` child it unwound into the copy of its parent's stack, out of the parent's
/// `start()`.
async fn a_panic_decoding_the_arguments_exits_1() -> TestResult {
    for m in METHODS {
        let mut p = Process::new(takes_panicking, (PanicsWhenDecoded,))
            .start_method(m)
            .start()
            .await?;
        let code = support::join_code(&mut p).await?;
        ensure!(code == 1, "{m:?}: exit code {code}, not 1");
    }
    // Fork needs a single-threaded parent: a spawned child forks.
    let mut p = Process::new(fork_decode_probe, ()).start().await?;
    let code = support::join_code(&mut p).await?;
    ensure!(
        code == 0,
        "Fork: the probe exited with {code} (see its stderr)"
    );
    Ok(())
}

/// A child ends as the main program does: it waits for its own non-daemon children (and
/// terminates its daemons), as Python's child does in `_bootstrap` (`util._exit_function`).
/// Before, a `fork` child ended with `_exit` at once, skipping that, so its children were
/// killed by their parent-death signal with their work undone.
async fn a_forked_child_joins_its_own_children_at_exit() -> TestResult {
    let path = support::temp_path("fork-joins");
    // Fork needs a single-threaded parent: a spawned child forks.
    let mut p = Process::new(fork_a_parent, (path.to_string(),))
        .start()
        .await?;
    let code = support::join_code(&mut p).await?;
    ensure!(
        code == 0,
        "the forked child's own child was not waited for at its exit (exit code {code}, 1: its file is missing)"
    );
    Ok(())
}

/// _TestProcess.test_close: closing a running child is an error (Python's `ValueError`),
/// which hands the process back still usable; once the child has ended, `close` succeeds
/// and no descriptor of the child is left (Python checks that the object is collected; a
/// use after `close` is a compile error here).
async fn close_refuses_a_running_child_and_releases_an_ended_one() -> TestResult {
    for m in METHODS {
        let q = mp::Queue::<()>::new()?;
        let p = Process::new(wait_for_item, (q.clone(),))
            .start_method(m)
            .daemon(true)
            .start()
            .await?;
        let pid = p.pid();
        ensure!(
            pidfds_of(pid) >= 1,
            "{m:?}: no pidfd of the child to release"
        );
        let err = match p.close() {
            Ok(()) => return Err(format!("{m:?}: closed a running child").into()),
            Err(e) => e,
        };
        ensure!(
            matches!(err.error(), Error::ProcessRunning { pid: running } if *running == pid),
            "{m:?}: {err}"
        );
        let mut p = err.into_inner();
        ensure!(p.is_alive(), "{m:?}: the child handed back is not running");
        q.put(()).await?;
        ensure!(
            support::join_code(&mut p).await? == 0,
            "{m:?}: the child failed"
        );
        ensure!(!p.is_alive() && p.exitcode()? == Some(0), "{m:?}: exitcode");
        p.close()?;
        ensure!(
            pidfds_of(pid) == 0,
            "{m:?}: a pidfd of the closed child is still open"
        );
    }
    Ok(())
}

/// What a child's standard descriptors lead to (`/proc/self/fd`), after it printed a line on
/// stdout and one on stderr.
async fn report_stdio(q: mp::Queue<Vec<String>>) {
    println!("a line on stdout");
    eprintln!("a line on stderr");
    let names = (0..=2)
        .map(
            |fd| match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                Ok(to) => to.display().to_string(),
                Err(e) => format!("descriptor {fd}: {e}"),
            },
        )
        .collect();
    let _ = q.put(names).await;
}

/// Closes its stdin, stdout and stderr, then starts a child by `method` that reports its own
/// (or says why it could not).
async fn close_stdio_then_start(method: String, q: mp::Queue<Vec<String>>) {
    for fd in 0..=2 {
        // Closed by number: nothing of this process uses them after.
        let _ = nix::unistd::close(fd);
    }
    let outcome = async {
        let mut p = Process::new(report_stdio, (q.clone(),))
            .start_method(method.parse()?)
            .start()
            .await?;
        p.join().await
    };
    match outcome.await {
        Ok(0) => {}
        other => {
            let _ = q.put(vec![format!("the child ended with {other:?}")]).await;
        }
    }
}

async fn a_parent_without_stdio_gives_its_children_dev_null() -> TestResult {
    // Rust's start-up opens /dev/null on a closed standard descriptor before `main`; a child
    // starts before that start-up would run, and must do the same, or the first descriptors
    // it opens (a runtime's, a queue's) take those numbers and what it prints goes into them.
    for method in METHODS {
        let q = mp::Queue::<Vec<String>>::new()?;
        let mut p = Process::new(
            close_stdio_then_start,
            (method.name().to_string(), q.clone()),
        )
        .start()
        .await?;
        let names = q.get_timeout(Duration::from_secs(20)).await?;
        ensure!(
            names == ["/dev/null", "/dev/null", "/dev/null"],
            "{method:?}: a child of a parent without stdio has {names:?}"
        );
        support::join_ok(&mut p).await?;
    }
    Ok(())
}

/// Starts a child with the default daemon flag and one with `daemon(false)`, and reports
/// this process's flag and those two children's, or why it could not.
async fn report_children_daemon_flags(q: mp::Queue<Result<[bool; 3], String>>) {
    let outcome = async {
        let mut default = Process::new(nothing, ()).start().await?;
        let mut not = Process::new(nothing, ()).daemon(false).start().await?;
        default.join().await?;
        not.join().await?;
        let me = mp::current_process().daemon();
        mp::Result::Ok([me, default.daemon(), not.daemon()])
    };
    let _ = q
        .put(outcome.await.map_err(|e: mp::Error| e.to_string()))
        .await;
}

async fn a_daemon_starts_daemons_unless_told_otherwise() -> TestResult {
    // _TestProcess.test_daemon_argument: the flag's initial value is inherited from the
    // creating process. Python then refuses a daemon's `start()`; here a daemon's children
    // start (they die with it, so none is orphaned).
    for daemon in [true, false] {
        let q = mp::Queue::<Result<[bool; 3], String>>::new()?;
        let mut p = Process::new(report_children_daemon_flags, (q.clone(),))
            .daemon(daemon)
            .start()
            .await?;
        let flags = q.get_timeout(Duration::from_secs(20)).await??;
        ensure!(
            flags == [daemon, daemon, false],
            "a child with daemon={daemon}: its own flag, its default child's and its \
             daemon(false) child's are {flags:?}"
        );
        support::join_ok(&mut p).await?;
    }
    Ok(())
}

/// An argument that encodes, and whose decoding in the child panics.
struct PanicsWhenDecoded;

impl serde::Serialize for PanicsWhenDecoded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("decoding panics")
    }
}

fn takes_panicking(_: PanicsWhenDecoded) {}

/// Forks a child whose argument panics as it is decoded, and exits 0 if the child exited 1,
/// else 2. A panic that comes out of `start` is in the forked child, running on as a copy
/// of this probe: it exits 7.
fn fork_decode_probe() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let joined = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let mut p = Process::new(takes_panicking, (PanicsWhenDecoded,))
                .start_method(StartMethod::Fork)
                .start()
                .await?;
            p.join().await
        })
    }));
    match joined {
        Ok(Ok(1)) => std::process::exit(0),
        Ok(other) => {
            eprintln!("fork decode probe: {other:?}");
            std::process::exit(2)
        }
        Err(_) => std::process::exit(7),
    }
}

/// In a process that ignores SIGCHLD, forks a child that exits with 7 and one that is
/// killed, and joins them: exits 0 if their codes are 7 and -9, else says why and exits 2.
fn fork_exit_codes_probe() {
    exit_unless_ok("fork probe", || async {
        let mut p = Process::new(exit_with, (7,))
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        let joined = p.join().await?;
        let mut q = Process::new(sleep_ms, (600_000,))
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        q.kill()?;
        let killed = q.join().await?;
        ensure!((joined, killed) == (7, -9), "codes {joined} and {killed}");
        Ok(())
    })
}

/// Writes "joined" to `path` after `ms` milliseconds.
fn write_to_after(path: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    let _ = std::fs::write(path, "joined");
}

/// Starts a child that writes to `path` after a while, and returns without joining it.
async fn leave_a_child(path: String) {
    let started = Process::new(write_to_after, (path, 300))
        .start_method(StartMethod::Spawn)
        .start()
        .await;
    if let Err(e) = started {
        eprintln!("cannot start a child: {e}");
        std::process::exit(2);
    }
}

/// Forks a child that runs [`leave_a_child`]; exits 0 once it has joined it, and 1 if the
/// file its child writes is not there by then.
fn fork_a_parent(path: String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = rt.block_on(async {
        let mut p = Process::new(leave_a_child, (path.clone(),))
            .start_method(StartMethod::Fork)
            .start()
            .await?;
        p.join().await
    });
    match code {
        Ok(0) if std::path::Path::new(&path).exists() => std::process::exit(0),
        Ok(0) => std::process::exit(1),
        other => {
            eprintln!("fork a parent: {other:?}");
            std::process::exit(2)
        }
    }
}

/// Polls `f` once, then drops it.
async fn poll_once<F: std::future::Future>(f: F) {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        let _ = f.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// A runtime that starts a pool and a `Process`, and stops right after its body drops them
/// (as a `#[tokio::test]` does).
fn pool_and_process_dropped_with_their_runtime() -> mp::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = mp::Pool::new(2).await?;
        pool.apply(nothing, ()).await?;
        let _p = Process::new(sleep_ms, (100,)).start().await?;
        Ok(())
    })
}

/// Five rounds of [`pool_and_process_dropped_with_their_runtime`] after a first, then
/// reports whether this process is left with no child, zombies included, and no more
/// descriptors than after the first round (or what it is left with).
fn rounds_of_dropped_runtimes(q: mp::Queue<String>) -> mp::Result<()> {
    let settled = |fds: Option<usize>| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (children, now) = (support::all_children(), support::open_fds());
            if children.is_empty() && fds.is_none_or(|f| now <= f) {
                return Ok(now);
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "children left (zombies included): {children:?}; descriptors {now}, \
                     {fds:?} after the first round"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    pool_and_process_dropped_with_their_runtime()?;
    let report = match settled(None) {
        Ok(fds) => (0..5)
            .try_for_each(|_| pool_and_process_dropped_with_their_runtime())
            .map_err(|e| e.to_string())
            .and_then(|()| settled(Some(fds)))
            .map(|_| "none left".to_string()),
        Err(e) => Err(format!("after the first round: {e}")),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(q.put(report.unwrap_or_else(|e| e)))?)
}

async fn children_dropped_as_their_runtime_stops_are_reaped() -> TestResult {
    // A pool or a `Process` dropped by a body whose runtime stops right after: the children
    // end (a pool's workers when their sockets close, the process when its target returns)
    // and are reaped, with no task of that runtime left to do it.
    let q = mp::Queue::<String>::new()?;
    let mut p = Process::new(rounds_of_dropped_runtimes, (q.clone(),))
        .start()
        .await?;
    let report = q.get_timeout(Duration::from_secs(60)).await?;
    ensure!(report == "none left", "{report}");
    support::join_ok(&mut p).await?;
    Ok(())
}

/// Runs in a spawned child, which has a single thread, so that it may fork: three rounds of
/// a runtime that forks a child and stops right after its body drops it; once the three
/// have ended, `active_children()` reaps them (Python's `_cleanup()`). Exits 0 if no child
/// is left, zombies included, else says what is left and exits 2.
fn fork_children_dropped_with_their_runtimes() {
    let round = || -> mp::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let _p = Process::new(sleep_ms, (20,))
                .start_method(StartMethod::Fork)
                .start()
                .await?;
            Ok(())
        })
    };
    if let Err(e) = (0..3).try_for_each(|_| round()) {
        eprintln!("a round failed: {e}");
        std::process::exit(3);
    }
    // Until the three have ended (zombies, as nothing reaped them).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !support::all_children()
        .iter()
        .all(|&c| support::is_zombie_or_gone(c))
    {
        if std::time::Instant::now() >= deadline {
            eprintln!("the children did not end: {:?}", support::all_children());
            std::process::exit(4);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let active = mp::active_children();
    let left = support::all_children();
    if !active.is_empty() || !left.is_empty() {
        eprintln!("active {active:?}; left (zombies included): {left:?}");
        std::process::exit(2);
    }
}

async fn fork_children_dropped_as_their_runtime_stops_are_reaped_later() -> TestResult {
    // Where there is no reaper thread (a process that forks must keep a single thread),
    // children whose runtime stopped before it reaped them are reaped by the next start or
    // `active_children()`, as Python's `_cleanup()` does.
    let mut p = Process::new(fork_children_dropped_with_their_runtimes, ())
        .start()
        .await?;
    let code = p.join().await?;
    ensure!(code == 0, "the child failed (its stderr says how): {code}");
    Ok(())
}
