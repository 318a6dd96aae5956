//! `Process::call`: a process whose target's return value comes back (procspawn's `spawn`,
//! aiomultiprocess's `Worker`, pebble's `concurrent.process`), with each start method:
//! results of plain and `async fn` targets, panics, deaths, a kill after a join timed out,
//! results that carry descriptors, joins dropped midway, and no descriptor or child left.

#[macro_use]
mod support;

use std::time::Duration;

use support::TestResult;
use support::pool::{
    PanicsEncoded, Undecodable, Unencodable, make_undecodable, make_unencodable, take_unencodable,
};
use support::process::METHODS;
use tokio_multiprocessing::{self as mp, Error, ExitCause, JoinHandle, Process, StartMethod};

fn main() {
    mp::init(); // a re-executed child never gets past this line
    let mut trials = trials![
        a_call_returns_its_targets_value,
        an_async_target_returns_its_futures_value,
        a_handle_is_awaited_and_waited_on,
        an_async_target_that_leaves_a_blocking_task_ends_its_process,
        a_result_that_cannot_cross_fails_its_call_naming_its_type,
        an_argument_that_cannot_cross_fails_the_start_naming_its_type,
        a_panic_comes_back_with_its_message_and_location,
        a_child_that_exits_without_answering_is_lost_with_its_code,
        a_call_killed_after_its_join_timed_out_is_lost_with_sigkill,
        a_call_killed_while_it_answers_is_lost_with_sigkill,
        a_call_with_a_large_result_ends_before_it_is_joined,
        a_result_carries_its_descriptors,
        a_join_dropped_midway_keeps_the_result_for_the_next,
        calls_leave_no_descriptor_and_no_child,
    ];
    trials.push(support::test_current_thread(
        "a_call_is_joined_on_a_current_thread_runtime",
        a_call_returns_its_targets_value,
    ));
    // One test at a time: one counts this process's descriptors and children.
    support::run_one_at_a_time(trials)
}

// ---------------------------------------------------------------- targets

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Stats {
    name: String,
    sum: u64,
    pid: u32,
}

fn stats(name: String, xs: Vec<u64>) -> Stats {
    Stats {
        name,
        sum: xs.iter().sum(),
        pid: std::process::id(),
    }
}

async fn doubled_later(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(10)).await;
    x * 2
}

fn panics(message: String) -> u64 {
    panic!("{message}");
}

fn exits(code: i32) -> u64 {
    std::process::exit(code)
}

/// Says it started, then sleeps far longer than any test.
fn sleeps(started: mp::Event) -> u64 {
    started.set();
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// Says it is about to answer, then returns more than a socket holds.
fn answers_at_length(about_to: mp::Event) -> serde_bytes::ByteBuf {
    about_to.set();
    serde_bytes::ByteBuf::from(vec![7u8; 16 << 20])
}

/// Sends `hello` into a pipe and returns the pipe's receiving end.
async fn pipe_with_hello() -> Result<mp::Connection<String>, String> {
    let (rx, tx) = mp::Pipe::<String>::simplex().map_err(|e| e.to_string())?;
    tx.send(&"hello".to_string())
        .await
        .map_err(|e| e.to_string())?;
    Ok(rx)
}

fn identity(x: u64) -> u64 {
    x
}

fn make_panics_encoded() -> PanicsEncoded {
    PanicsEncoded
}

/// Leaves a blocking task on its runtime that sleeps far longer than any test, and returns.
async fn leaves_a_blocking_task(x: u64) -> u64 {
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_secs(600)));
    x
}

async fn leaves_a_blocking_task_and_ends() {
    leaves_a_blocking_task(0).await;
}

// ---------------------------------------------------------------- tests

/// Waits up to 20 s for `p` to end, and kills it if it did not.
async fn ended_or_killed(p: &mut Process) -> mp::Result<Option<i32>> {
    let code = p.join_timeout(Duration::from_secs(20)).await?;
    if code.is_none() {
        p.kill()?;
    }
    Ok(code)
}

/// Starts a call of `f(args)` with `method`.
async fn call<F, A, M>(method: StartMethod, f: F, args: A) -> mp::Result<JoinHandle<F::Output>>
where
    F: mp::Target<A, M>,
    F::Output: serde::Serialize + serde::de::DeserializeOwned,
    A: serde::Serialize + serde::de::DeserializeOwned,
{
    Process::call(f, args).start_method(method).start().await
}

async fn a_call_returns_its_targets_value() -> TestResult {
    for method in METHODS {
        let mut h = call(method, stats, ("sums".to_string(), vec![1, 2, 3])).await?;
        let pid = h.pid();
        let got = h.join().await?;
        ensure!(
            got == Stats {
                name: "sums".into(),
                sum: 6,
                pid
            },
            "{method:?}: {got:?}"
        );
        ensure!(h.process().exitcode()? == Some(0), "{method:?}: {h:?}");
    }
    Ok(())
}

// A handle is awaited as a tokio `JoinHandle` is, and `mp::wait` takes handles as Python's
// `wait` takes sentinels: it reports the one whose child ended, not the one still running.
async fn a_handle_is_awaited_and_waited_on() -> TestResult {
    for method in METHODS {
        let sum = call(method, identity, (41,)).await?.await?;
        ensure!(sum == 41, "{method:?}: awaited {sum}");
        let started = mp::Event::new()?;
        let running = call(method, sleeps, (started.clone(),)).await?;
        let mut done = call(method, identity, (7,)).await?;
        started.wait().await?;
        let ready = mp::wait(&[&running, &done], Some(Duration::from_secs(20))).await?;
        ensure!(ready == vec![1], "{method:?}: ready {ready:?}");
        ensure!(
            done.join().await? == 7,
            "{method:?}: the ended one's result"
        );
        running.kill()?;
        let lost = running.await.err().ok_or("a killed call gave a result")?;
        ensure!(lost.is_worker_lost(), "{method:?}: {lost}");
        // A process started for its value, not a pool's worker.
        ensure!(
            lost.to_string()
                .ends_with("died (signal 9 (SIGKILL)) before its target returned")
                && !lost.to_string().contains("worker"),
            "{method:?}: {lost}"
        );
    }
    Ok(())
}

async fn an_async_target_returns_its_futures_value() -> TestResult {
    for method in METHODS {
        let mut h = call(method, doubled_later, (21,)).await?;
        ensure!(h.join().await? == 42, "{method:?}");
    }
    Ok(())
}

/// The child ends when its target returns, as threads the target started are not waited
/// for: an `async fn` target's blocking task still running is not either. The child's
/// runtime waited for it, so a call's join (which had its answer) and a process's never
/// returned.
async fn an_async_target_that_leaves_a_blocking_task_ends_its_process() -> TestResult {
    for method in METHODS {
        let mut h = call(method, leaves_a_blocking_task, (5,)).await?;
        let code = ended_or_killed(h.process()).await?;
        ensure!(
            code == Some(0),
            "{method:?}: the call's child ended with {code:?}"
        );
        ensure!(h.join().await? == 5, "{method:?}");
        let mut p = Process::new(leaves_a_blocking_task_and_ends, ())
            .start_method(method)
            .start()
            .await?;
        let code = ended_or_killed(&mut p).await?;
        ensure!(
            code == Some(0),
            "{method:?}: the process ended with {code:?}"
        );
    }
    Ok(())
}

// Arguments that cannot cross fail the start naming the caller's type, as a pool task's
// do; they named a wrapper of the crate's, the arguments beside the answer socket's `Fd`.
async fn an_argument_that_cannot_cross_fails_the_start_naming_its_type() -> TestResult {
    let e = Process::call(take_unencodable, (Unencodable,))
        .start()
        .await
        .expect_err("unencodable arguments");
    ensure!(
        matches!(
            &e,
            Error::Encode { type_name, .. }
                if *type_name == std::any::type_name::<(Unencodable,)>()
        ),
        "{e:?}"
    );
    Ok(())
}

/// A result that cannot cross fails the call naming the caller's type, as a pool task's
/// does; they named a wrapper of the crate's, `Result<_, TaskFailure>`. A `Serialize` that
/// panics is a panic of the call; it ended the child unanswered (a lost worker).
async fn a_result_that_cannot_cross_fails_its_call_naming_its_type() -> TestResult {
    let mut h = Process::call(make_unencodable, ()).start().await?;
    let text = h.join().await.expect_err("unencodable").to_string();
    let name = std::any::type_name::<Unencodable>();
    ensure!(text.contains(&format!("`{name}`")), "{text}");
    ensure!(!text.contains("TaskFailure"), "{text}");
    ensure!(
        !text.contains("worker"),
        "a call has no pool worker: {text}"
    );

    let mut h = Process::call(make_undecodable, ()).start().await?;
    let e = h.join().await.expect_err("undecodable");
    ensure!(
        matches!(
            e.caller_error(),
            Some(Error::Decode { type_name, .. })
                if *type_name == std::any::type_name::<Undecodable>()
        ),
        "{e:?}"
    );

    let mut h = Process::call(make_panics_encoded, ()).start().await?;
    let e = h.join().await.expect_err("a panicking Serialize");
    ensure!(e.is_panic(), "{e:?}");
    ensure!(
        e.panic_message() == Some("PanicsEncoded will not be encoded"),
        "{e:?}"
    );
    Ok(())
}

async fn a_panic_comes_back_with_its_message_and_location() -> TestResult {
    let mut h = Process::call(panics, ("no luck".to_string(),))
        .start()
        .await?;
    let e = h.join().await.expect_err("the target panicked");
    ensure!(e.is_panic(), "{e:?}");
    ensure!(e.panic_message() == Some("no luck"), "{e:?}");
    let at = e.panic_location().unwrap_or_default();
    ensure!(at.contains("process_call.rs"), "location {at:?}");
    ensure!(h.process().exitcode()? == Some(1), "{h:?}");
    Ok(())
}

async fn a_child_that_exits_without_answering_is_lost_with_its_code() -> TestResult {
    for method in METHODS {
        let mut h = call(method, exits, (3,)).await?;
        let pid = h.pid();
        let e = h.join().await.expect_err("the child answered nothing");
        ensure!(e.is_worker_lost(), "{method:?}: {e:?}");
        ensure!(e.worker_pid() == Some(pid), "{method:?}: {e:?}");
        ensure!(
            e.exit_cause() == Some(ExitCause::Code(3)),
            "{method:?}: {e:?}"
        );
    }
    Ok(())
}

/// pebble's `concurrent.process(timeout=...)`: the join gives up, the call is killed.
async fn a_call_killed_after_its_join_timed_out_is_lost_with_sigkill() -> TestResult {
    let started = mp::Event::new()?;
    let mut h = Process::call(sleeps, (started.clone(),)).start().await?;
    started.wait_timeout(Duration::from_secs(20)).await?;
    ensure!(
        h.join_timeout(Duration::from_millis(100)).await?.is_none(),
        "a sleeping call answered"
    );
    ensure!(h.process().is_alive(), "the child ended on a join timeout");
    h.kill()?;
    let e = h.join().await.expect_err("the child was killed");
    ensure!(e.is_worker_lost(), "{e:?}");
    ensure!(e.exit_cause() == Some(ExitCause::Signal(9)), "{e:?}");
    ensure!(
        support::is_zombie_or_gone(h.pid()),
        "child {} lives",
        h.pid()
    );
    Ok(())
}

/// A child killed midway through its answer is lost, as one killed before it answered: the
/// part of the answer read is no protocol error of the caller's. The call is started on a
/// current-thread runtime that is not run afterwards, so that nothing reads the answer
/// meanwhile (the task that would is that runtime's), then joined on another once that
/// runtime is gone (the join reads the socket itself).
async fn a_call_killed_while_it_answers_is_lost_with_sigkill() -> TestResult {
    let killed = std::thread::spawn(|| -> Result<mp::TaskError, String> {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        };
        let (starter, joiner) = (runtime()?, runtime()?);
        let about_to = mp::Event::new().map_err(|e| e.to_string())?;
        let mut h = starter
            .block_on(Process::call(answers_at_length, (about_to.clone(),)).start())
            .map_err(|e| e.to_string())?;
        joiner
            .block_on(support::once_asleep(&about_to))
            .map_err(|e| e.to_string())?;
        h.kill().map_err(|e| e.to_string())?;
        drop(starter);
        joiner
            .block_on(h.join())
            .err()
            .ok_or_else(|| "the child was killed, yet its call gave a result".to_string())
    })
    .join()
    .map_err(|_| "the test's thread panicked")??;
    ensure!(killed.is_worker_lost(), "{killed:?}");
    ensure!(
        killed.exit_cause() == Some(ExitCause::Signal(9)),
        "{killed:?}"
    );
    Ok(())
}

// A child whose result is larger than the socket holds ends before anything joins it: its
// answer is taken in as it comes, so a join through `process()` and `mp::wait` see it end,
// and the join then hands the result out whole. The child blocked in its write before, and
// both waited for ever.
async fn a_call_with_a_large_result_ends_before_it_is_joined() -> TestResult {
    for method in METHODS {
        let mut h = call(method, answers_at_length, (mp::Event::new()?,)).await?;
        let code = h.process().join_timeout(Duration::from_secs(20)).await?;
        if code.is_none() {
            h.kill()?;
        }
        ensure!(
            code == Some(0),
            "{method:?}: the child never ended: {code:?}"
        );
        let ready = mp::wait(&[&h], Some(Duration::from_secs(20))).await?;
        ensure!(ready == vec![0], "{method:?}: wait gave {ready:?}");
        let got = h.join().await?;
        ensure!(
            got.len() == 16 << 20 && got.iter().all(|&b| b == 7),
            "{method:?}: the result came back altered ({} bytes)",
            got.len()
        );
    }
    Ok(())
}

async fn a_result_carries_its_descriptors() -> TestResult {
    for method in METHODS {
        let mut h = call(method, pipe_with_hello, ()).await?;
        let rx = h.join().await??;
        let got = rx.recv_timeout(Duration::from_secs(10)).await?;
        ensure!(got == "hello", "{method:?}: {got}");
        // The child is gone, and so is the sender: end of stream.
        let end = rx.recv_timeout(Duration::from_secs(10)).await;
        ensure!(matches!(end, Err(Error::Closed)), "{method:?}: {end:?}");
    }
    Ok(())
}

async fn a_join_dropped_midway_keeps_the_result_for_the_next() -> TestResult {
    let mut h = Process::call(identity, (7,)).start().await?;
    // Joins dropped at once, again and again, until one completes.
    let got = loop {
        if let Ok(r) = tokio::time::timeout(Duration::ZERO, h.join()).await {
            break r?;
        }
        tokio::task::yield_now().await;
    };
    ensure!(got == 7, "{got}");
    // Waiting for the exit through the process leaves the result to the handle.
    let mut h = Process::call(identity, (8,)).start().await?;
    support::join_ok(h.process()).await?;
    ensure!(
        h.join().await? == 8,
        "the result was lost by the process's join"
    );
    let again = h.join().await.expect_err("the result was handed out");
    ensure!(
        matches!(again.caller_error(), Some(Error::InvalidArgument(_))),
        "{again:?}"
    );
    Ok(())
}

async fn calls_leave_no_descriptor_and_no_child() -> TestResult {
    // First calls start what stays for the process's life: a fork server, and the reaper
    // of dropped handles' children (with an eventfd of its own).
    for method in METHODS {
        let mut h = call(method, identity, (0,)).await?;
        h.join().await?;
        let running = Process::call(sleeps, (mp::Event::new()?,)).start().await?;
        running.kill()?;
        drop(running);
    }
    no_children_left().await?;
    let before = support::open_fds();
    for method in METHODS {
        let mut ok = call(method, identity, (1,)).await?;
        ensure!(ok.join().await? == 1, "{method:?}");
        let mut failed = call(method, panics, ("x".to_string(),)).await?;
        ensure!(failed.join().await.is_err(), "{method:?}");
        // Dropped unjoined: reaped when it ends.
        drop(call(method, identity, (2,)).await?);
    }
    no_children_left().await?;
    support::fds_return_to(before, Duration::from_secs(10)).await
}

/// Succeeds once every child this process started has ended and been reaped.
async fn no_children_left() -> TestResult {
    ensure!(
        support::eventually(Duration::from_secs(10), || mp::active_children().is_empty()).await,
        "children left: {:?}",
        mp::active_children()
    );
    Ok(())
}
