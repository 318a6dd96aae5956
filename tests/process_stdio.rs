//! `ProcessBuilder::stdout` and `stderr` (procspawn's `Builder::stdout`, subprocess's
//! `stdout=`): what a child prints, a panic's message and the output of the programs it runs
//! go to the descriptors given, with each start method, for a `Process` and for a
//! `Process::call`; this process's copies close, so a pipe's reader sees its end.

#[macro_use]
mod support;

use std::time::Duration;

use support::TestResult;
use support::pool::{overflow_stack, overflow_stack_async};
use support::process::METHODS;
use tokio::io::AsyncReadExt;
use tokio_multiprocessing::{self as mp, Process, StartMethod};

fn main() {
    mp::init(); // a re-executed child never gets past this line
    support::run(trials![
        output_goes_where_the_builder_says,
        a_panic_message_goes_to_the_stderr_given,
        a_called_process_prints_into_a_pipe_read_to_its_end,
        a_forked_child_prints_where_the_builder_says,
        a_stack_overflow_is_told_on_the_stderr_given,
    ])
}

// ---------------------------------------------------------------- targets

/// Prints `tag` on stdout and stderr, and runs `echo`, which inherits both.
fn prints(tag: String) -> Result<(), String> {
    println!("out {tag}");
    eprintln!("err {tag}");
    let echoed = std::process::Command::new("echo")
        .arg(format!("echo {tag}"))
        .status()
        .map_err(|e| e.to_string())?;
    echoed.success().then_some(()).ok_or(echoed.to_string())
}

fn panics(message: String) {
    panic!("{message}");
}

fn prints_and_returns(x: u64) -> u64 {
    println!("computing {x}");
    x + 1
}

/// Runs in a spawned child, which has a single thread: starts a `fork` child that prints
/// into files in the directory `dir`, and exits 0 once they hold what it printed.
fn fork_probe(dir: String) -> i32 {
    let (out, err) = (format!("{dir}/out"), format!("{dir}/err"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let mut p = Process::new(prints, ("forked".to_string(),))
            .start_method(StartMethod::Fork)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .start()
            .await?;
        let code = p.join().await?;
        let read = |path| std::fs::read_to_string(path);
        Ok::<_, Box<dyn std::error::Error>>((code, read(&out)?, read(&err)?))
    });
    match result {
        Ok((0, out, err)) if out == "out forked\necho forked\n" && err == "err forked\n" => 0,
        other => {
            eprintln!("fork probe: {other:?}");
            2
        }
    }
}

fn exit_with_probe(path: String) -> std::process::ExitCode {
    std::process::ExitCode::from(fork_probe(path) as u8)
}

// ---------------------------------------------------------------- tests

async fn output_goes_where_the_builder_says() -> TestResult {
    for method in METHODS {
        let (out, err) = (support::temp_path("out"), support::temp_path("err"));
        let mut p = Process::new(prints, (format!("{method:?}"),))
            .start_method(method)
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .start()
            .await?;
        support::join_ok(&mut p).await?;
        let (out, err) = (
            std::fs::read_to_string(&out)?,
            std::fs::read_to_string(&err)?,
        );
        ensure!(
            out == format!("out {method:?}\necho {method:?}\n"),
            "{method:?}: stdout {out:?}"
        );
        ensure!(
            err == format!("err {method:?}\n"),
            "{method:?}: stderr {err:?}"
        );
    }
    Ok(())
}

async fn a_panic_message_goes_to_the_stderr_given() -> TestResult {
    let err = support::temp_path("panic");
    let mut p = Process::new(panics, ("out of luck".to_string(),))
        .stderr(std::fs::File::create(&err)?)
        .start()
        .await?;
    ensure!(support::join_code(&mut p).await? == 1, "a panic exits 1");
    let err = std::fs::read_to_string(&err)?;
    ensure!(err.contains("out of luck"), "stderr {err:?}");
    Ok(())
}

/// A target that overflows its stack is told as a program's overflow is, on the stderr given,
/// and aborts the child, a plain target and an `async fn` one, with each start method;
/// before, the child died of a bare SIGSEGV with nothing printed.
async fn a_stack_overflow_is_told_on_the_stderr_given() -> TestResult {
    for method in METHODS {
        for target in ["plain", "async"] {
            let err = support::temp_path("overflow");
            let builder = match target {
                "plain" => Process::call(overflow_stack, (0,)),
                _ => Process::call(overflow_stack_async, (0,)),
            };
            let mut h = builder
                .start_method(method)
                .stderr(std::fs::File::create(&err)?)
                .start()
                .await?;
            let e = tokio::time::timeout(Duration::from_secs(60), h.join()).await?;
            let cause = e.as_ref().err().and_then(|e| e.exit_cause());
            ensure!(
                cause == Some(mp::ExitCause::Signal(6)),
                "{method:?} {target}: {e:?}"
            );
            let err = std::fs::read_to_string(&err)?;
            ensure!(
                err.contains("thread 'main' has overflowed its stack"),
                "{method:?} {target}: stderr {err:?}"
            );
        }
    }
    Ok(())
}

async fn a_called_process_prints_into_a_pipe_read_to_its_end() -> TestResult {
    for method in METHODS {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        let mut reader = tokio::net::UnixStream::from_std(reader)?;
        let mut h = Process::call(prints_and_returns, (41,))
            .start_method(method)
            .stdout(writer)
            .start()
            .await?;
        ensure!(h.join().await? == 42, "{method:?}");
        // End of stream: no copy of the writing end is left in this process.
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(20), reader.read_to_string(&mut out))
            .await
            .map_err(|_| format!("{method:?}: no end of stream"))??;
        ensure!(out == "computing 41\n", "{method:?}: {out:?}");
    }
    Ok(())
}

async fn a_forked_child_prints_where_the_builder_says() -> TestResult {
    // Fork needs a single-threaded parent: a spawned child forks the printer.
    let dir = support::temp_path("fork");
    std::fs::create_dir(&dir)?;
    let mut p = Process::new(exit_with_probe, (dir.to_string(),))
        .start_method(StartMethod::Spawn)
        .start()
        .await?;
    ensure!(
        support::join_code(&mut p).await? == 0,
        "the fork probe failed (see its stderr)"
    );
    Ok(())
}
