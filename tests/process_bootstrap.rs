//! A child's bootstrap and the handshake: a forged binary fingerprint is refused; a child
//! takes its role before `main`, so a program that never calls `init()` runs its children
//! all the same and a child runs none of `main`. Also: `init()` under a runtime built before
//! it, as `#[tokio::main]` builds one.

#[macro_use]
mod support;

use support::TestResult;
use support::process::{METHODS, async_exit, helper_mode, nothing, run_as_helper, run_helper};
use tokio_multiprocessing::{self as mp, Error, Process, StartMethod};

fn main() {
    let mode = helper_mode();
    if mode.as_deref() == Some("runtime-before-init") {
        runtime_before_init();
    }
    if mode.as_deref() == Some("no-init") {
        // What a `main` does first, here and in any process that runs `main`.
        println!("main ran in {}", std::process::id());
    } else {
        mp::init();
    }
    if let Some(mode) = mode {
        run_as_helper(helper(&mode));
    }
    support::run(trials![
        forged_fingerprint_is_refused,
        children_run_without_init_and_never_run_main,
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

/// `TestNoForkBomb.test_noforkbomb`: a program that starts a child from `main`, without
/// `init()` (Python's `__main__` guard), starts it once; the child never runs `main` again.
async fn children_run_without_init_and_never_run_main() -> TestResult {
    let (status, out, err) = run_helper("no-init", &[]).await?;
    ensure!(status.success(), "helper failed: {out} {err}");
    let mains = out.lines().filter(|l| l.starts_with("main ran")).count();
    ensure!(mains == 1, "`main` ran {mains} times, not once: {out}");
    for m in [StartMethod::Spawn, StartMethod::ForkServer] {
        ensure!(
            out.contains(&format!("{}=5", m.name())),
            "{m:?}: the child did not run its target: {out} {err}"
        );
    }
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
        "no-init" => {
            for m in [StartMethod::Spawn, StartMethod::ForkServer] {
                match Process::new(async_exit, (4,)).start_method(m).start().await {
                    Ok(mut p) => match p.join().await {
                        Ok(code) => println!("{}={code}", m.name()),
                        Err(e) => println!("{}: join failed: {e}", m.name()),
                    },
                    Err(e) => println!("{}: start failed: {e}", m.name()),
                }
            }
        }
        other => panic!("unknown helper mode {other}"),
    }
}
