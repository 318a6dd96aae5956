//! What a child is handed: arguments of many types, frames over the size limit, descriptors
//! (passed as arguments, and none leaked), the parent's argv only when asked, and no stdin.
//! Cases ported from CPython's `_test_multiprocessing.py` (`_TestProcess`) name the Python
//! test they come from.

#[macro_use]
mod support;

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::TestResult;
use support::process::{
    METHODS, exit_with, helper_command, helper_mode, nothing, run_as_helper, run_helper_with,
};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    mp::init(); // a re-executed child never gets past this line
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        arguments_of_many_types_arrive,
        oversized_arguments_are_refused,
        no_descriptor_leaks,
        descriptors_travel_as_arguments,
        argv_is_passed_only_when_asked,
        children_read_nothing_from_stdin,
    ])
}

// ---------------------------------------------------------------- targets

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

/// Exits with the number of command-line arguments it received.
fn count_args() {
    std::process::exit(std::env::args_os().count() as i32)
}

// ---------------------------------------------------------------- tests

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
        let path = support::temp_path(&format!("fd-{}", m.name()));
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
        ensure!(written == "file ok", "{m:?}: file holds {written:?}");
    }
    Ok(())
}

async fn argv_is_passed_only_when_asked() -> TestResult {
    let (status, out, err) = run_helper_with("argv", &[], &["one", "two"]).await?;
    ensure!(status.success(), "helper failed: {err}");
    ensure!(
        out.trim() == "plain=1 inherited=3",
        "argument counts: {out}"
    );
    Ok(())
}

async fn children_read_nothing_from_stdin() -> TestResult {
    // The helper's stdin is a pipe we hold open and never write: a child reading the
    // helper's stdin would block until the helper is killed.
    let mut cmd = helper_command("stdin")?;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
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

// ---------------------------------------------------------------- helper modes

/// This binary as a parent in a mode of its own; prints what the test reads.
async fn helper(mode: &str) {
    match mode {
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
        other => panic!("unknown helper mode {other}"),
    }
}
