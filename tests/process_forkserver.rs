//! The fork server: its children outlive it when it is killed (as in CPython) and the next
//! start gets a new server; it ignores SIGINT while its children take the default back; and
//! its orphans still die with the program.

#[macro_use]
mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::TestResult;
use support::process::{exit_with, helper_mode, run_as_helper, run_helper, start_helper_reading};
use tokio_multiprocessing::{self as mp, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    mp::init(); // a re-executed child never gets past this line
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        killed_fork_server_spares_its_children_and_is_replaced,
        fork_server_ignores_sigint,
        orphans_of_a_killed_fork_server_die_with_the_program,
        a_stopped_fork_server_holds_up_no_spawn_start,
        a_start_on_a_stopped_fork_server_fails_within_its_start_timeout,
    ])
}

// ---------------------------------------------------------------- targets

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

// ---------------------------------------------------------------- tests

/// Runs the helper `mode` and fails, saying what `should` have happened, unless it
/// succeeds and prints `lines`.
async fn helper_prints(mode: &str, lines: &[&str], should: &str) -> TestResult {
    let (status, out, err) = run_helper(mode, &[]).await?;
    ensure!(status.success(), "helper failed: {out} {err}");
    ensure!(
        out.lines().eq(lines.iter().copied()),
        "{should}: {out} {err}"
    );
    Ok(())
}

async fn killed_fork_server_spares_its_children_and_is_replaced() -> TestResult {
    // CPython's _TestProcess.test_forkserver_sigkill (bpo-31308): a fork server's children
    // do not die with it, and the next start succeeds.
    helper_prints(
        "kill-fork-server",
        &["alive=true", "child=7", "next=5"],
        "a child of the killed fork server should run on and exit with 7, the next start \
         should succeed",
    )
    .await
}

async fn fork_server_ignores_sigint() -> TestResult {
    // CPython's _TestProcess.test_forkserver_sigint: its fork server ignores SIGINT (a
    // terminal's Ctrl-C reaches the process group)
    // and its children take the default disposition back.
    helper_prints(
        "sigint-fork-server",
        &["next=5", "server-survived=true", "alive=true", "child=-2"],
        "the fork server should outlive SIGINT, its child should not",
    )
    .await
}

async fn orphans_of_a_killed_fork_server_die_with_the_program() -> TestResult {
    let (mut helper, lines) = start_helper_reading("orphan-of-fork-server", 2).await?;
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

async fn a_stopped_fork_server_holds_up_no_spawn_start() -> TestResult {
    // A fork server that does not answer (stopped here; swapped out, traced) delays the
    // starts that need it, not those of the spawn method.
    helper_prints(
        "stopped-fork-server",
        &["spawned=0", "forked=5"],
        "a spawn start should complete while the fork server is stopped, and the fork \
         server's start once it runs again",
    )
    .await
}

async fn a_start_on_a_stopped_fork_server_fails_within_its_start_timeout() -> TestResult {
    // The start fails as one whose child does not answer, and leaves no child behind once
    // the server forks it after all; the server serves the next start.
    helper_prints(
        "stopped-fork-server-timeout",
        &["timed-out=true", "next=5", "left=[]"],
        "a forkserver start should fail with Error::Start within its start timeout while \
         the server is stopped, and leave no child",
    )
    .await
}

// ---------------------------------------------------------------- helper modes

/// This binary as a parent in a mode of its own; prints what the test reads.
async fn helper(mode: &str) {
    match mode {
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
            print_next_start().await;
            let same = support::live_children_of(std::process::id())
                .into_iter()
                .any(|pid| pid == server);
            println!("server-survived={same}");
            // Its children get the default disposition back: Ctrl-C ends them.
            println!("alive={}", echoes(&mut ours));
            signal(c.pid(), Signal::SIGINT);
            println!("child={}", c.join().await.unwrap());
        }
        "stopped-fork-server" => {
            let server = stopped_fork_server().await;
            let mut forked = tokio::spawn(
                Process::new(exit_with, (5,))
                    .start_method(StartMethod::ForkServer)
                    .start(),
            );
            // The fork server's start asks first (it cannot be answered until the server
            // runs again); the spawn start comes behind it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            tokio::select! {
                p = Process::new(exit_with, (0,)).start_method(StartMethod::Spawn).start() => {
                    println!("spawned={}", p.unwrap().join().await.unwrap());
                }
                r = &mut forked => println!("forked-first={r:?}"),
            }
            signal(server, Signal::SIGCONT);
            match forked.await.unwrap() {
                Ok(mut p) => println!("forked={}", p.join().await.unwrap()),
                Err(e) => println!("forked-error={e}"),
            }
        }
        "stopped-fork-server-timeout" => {
            let server = stopped_fork_server().await;
            let r = Process::new(exit_with, (0,))
                .start_method(StartMethod::ForkServer)
                .start_timeout(Duration::from_millis(500))
                .start()
                .await;
            let timed_out = matches!(&r, Err(mp::Error::Start { message, .. })
                if message.contains("within 500ms"));
            println!("timed-out={timed_out}");
            if !timed_out {
                eprintln!("start: {r:?}");
            }
            signal(server, Signal::SIGCONT);
            print_next_start().await;
            // The child forked for the abandoned start is killed and reaped.
            let others = || -> Vec<u32> {
                support::live_children_of(std::process::id())
                    .into_iter()
                    .filter(|&pid| pid != server)
                    .collect()
            };
            support::eventually(Duration::from_secs(20), || others().is_empty()).await;
            println!("left={:?}", others());
        }
        other => panic!("unknown helper mode {other}"),
    }
}

/// Starts a child through the fork server, and prints its exit code (5) as `next=`.
async fn print_next_start() {
    let mut p = Process::new(exit_with, (5,))
        .start_method(StartMethod::ForkServer)
        .start()
        .await
        .unwrap();
    println!("next={}", p.join().await.unwrap());
}

/// Starts the fork server (through a start that it serves), stops it, and returns its pid.
async fn stopped_fork_server() -> u32 {
    let mut c = Process::new(exit_with, (0,))
        .start_method(StartMethod::ForkServer)
        .start()
        .await
        .unwrap();
    c.join().await.unwrap();
    let server = only_other_child(c.pid());
    signal(server, Signal::SIGSTOP);
    server
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
