//! A child's bootstrap and the handshake: a forged binary fingerprint is refused, and a
//! child that never calls `init()` (forgotten, returned before it, stuck before it) fails the
//! start with an error naming `init()` within the deadline, never a hang. Also: `init()`
//! under a runtime built before it, as `#[tokio::main]` builds one.

#[macro_use]
mod support;

use std::time::Duration;

use support::TestResult;
use support::process::{METHODS, async_exit, helper_mode, nothing, run_as_helper, run_helper};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    if mode.as_deref() == Some("runtime-before-init") {
        runtime_before_init();
    }
    if !matches!(
        mode.as_deref(),
        Some("no-init" | "no-init-return" | "no-init-block")
    ) {
        mp::init(); // a re-executed child never gets past this line
    }
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        forged_fingerprint_is_refused,
        forgotten_init_is_named_in_the_error,
        child_returning_before_init_fails_the_start,
        child_stuck_before_init_hits_the_deadline,
        async_targets_under_a_runtime_built_before_init,
    ])
}

/// Helper mode `runtime-before-init`: as `#[tokio::main]` does, the runtime (signal driver
/// included) exists before `init()`; prints each method's child's exit code.
fn runtime_before_init() -> ! {
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

// ---------------------------------------------------------------- tests

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

async fn child_stuck_before_init_hits_the_deadline() -> TestResult {
    let (_, out, err) = run_helper("no-init-block", &[]).await?;
    ensure!(
        out.contains("error=") && out.contains("within") && out.contains("init()"),
        "stdout: {out} stderr: {err}"
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

// ---------------------------------------------------------------- helper modes

/// This binary as a parent in a mode of its own; prints what the test reads.
async fn helper(mode: &str) {
    match mode {
        "no-init" | "no-init-return" => {
            if mode == "no-init-return" && std::env::var_os("TOKIO_MULTIPROCESSING_BOOT").is_some()
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
        other => panic!("unknown helper mode {other}"),
    }
}
