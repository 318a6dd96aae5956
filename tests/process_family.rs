//! A process's view of itself, its parent and its children: `current_process()`,
//! `parent_process()` and `active_children()`, in the main process, in children of every
//! start method, in a grandchild and in a pool's worker. Ported from CPython's
//! `_test_multiprocessing.py` (`_TestProcess.test_current`, `test_parent_process`,
//! `test_active_children`), whose test each case names.

#[macro_use]
mod support;

use std::time::Duration;

use support::TestResult;
use support::process::METHODS;
use tokio_multiprocessing::{self as mp, Process, StartMethod};

fn main() {
    mp::init(); // a re-executed child never gets past this line
    support::run(trials![
        the_main_process_is_named_so_and_has_no_parent,
        a_child_knows_its_name_daemon_flag_and_parent,
        a_forked_child_knows_its_name_and_parent,
        default_names_of_nested_processes_spell_their_lineage,
        a_grandchild_names_the_child_that_started_it,
        a_pool_worker_knows_it_is_one,
        active_children_lists_running_children_until_they_end,
        a_forked_child_lists_none_of_its_parents_children,
    ])
}

/// What a process reports of itself: its name, pid and daemon flag, and its parent's name
/// and pid with whether it is alive.
type Family = (String, u32, bool, Option<(String, u32, bool)>);

fn family() -> Family {
    let me = mp::current_process();
    let parent = mp::parent_process().map(|p| {
        let alive = p.is_alive().unwrap_or(false);
        (p.name().to_string(), p.pid(), alive)
    });
    (me.name().to_string(), me.pid(), me.daemon(), parent)
}

// ---------------------------------------------------------------- targets

/// Puts what this process knows of its family on `q`. An `async fn` target runs on a
/// runtime the crate builds for it (a forked child's own target could not build one: its
/// parent's runtime descriptors are closed in it).
async fn put_family(q: mp::Queue<Family>) -> Result<(), String> {
    q.put(family()).await.map_err(|e| e.to_string())
}

/// Puts its own family on `q`, then starts a child named `child_name` with `method` that
/// puts its family on `q` too; fails unless that child exits with 0.
async fn put_family_and_nest(
    q: mp::Queue<Family>,
    child_name: String,
    method: String,
) -> Result<(), String> {
    q.put(family()).await.map_err(|e| e.to_string())?;
    let method: StartMethod = method.parse().map_err(|e: mp::Error| e.to_string())?;
    start_and_join(
        Process::new(put_family, (q,))
            .name(child_name)
            .start_method(method),
    )
    .await
}

/// Starts the process `builder` describes; fails unless it exits with 0.
async fn start_and_join(builder: mp::ProcessBuilder) -> Result<(), String> {
    let mut p = builder.start().await.map_err(|e| e.to_string())?;
    match p.join().await.map_err(|e| e.to_string())? {
        0 => Ok(()),
        code => Err(format!("the child {} exited with {code}", p.name())),
    }
}

/// Puts its family on `q`, then starts a child with a default name that does the same.
async fn put_family_then_a_child(q: mp::Queue<Family>) -> Result<(), String> {
    q.put(family()).await.map_err(|e| e.to_string())?;
    // Not fork, which it would take from its parent by default: it runs a runtime.
    start_and_join(Process::new(put_family, (q,)).start_method(StartMethod::Spawn)).await
}

/// Puts its family on `q`, then starts children with default names, one after the other:
/// with fork one that puts its family and starts a child of its own, and with spawn and
/// forkserver a child that puts its family.
async fn put_family_then_children(q: mp::Queue<Family>) -> Result<(), String> {
    q.put(family()).await.map_err(|e| e.to_string())?;
    // Fork first, while this process has a single thread.
    let fork = StartMethod::Fork;
    start_and_join(Process::new(put_family_then_a_child, (q.clone(),)).start_method(fork)).await?;
    let spawn = Process::new(put_family, (q.clone(),)).start_method(StartMethod::Spawn);
    start_and_join(spawn).await?;
    start_and_join(Process::new(put_family, (q,)).start_method(StartMethod::ForkServer)).await
}

fn sleep_secs(s: u64) {
    std::thread::sleep(Duration::from_secs(s));
}

fn pool_worker_family() -> Family {
    family()
}

// ---------------------------------------------------------------- tests

async fn the_main_process_is_named_so_and_has_no_parent() -> TestResult {
    // _TestProcess.test_current: the main process is "MainProcess", not a daemon;
    // test_parent_process: it has no parent process.
    let me = mp::current_process();
    ensure!(me.name() == "MainProcess", "name {}", me.name());
    ensure!(me.pid() == std::process::id(), "pid {}", me.pid());
    ensure!(!me.daemon(), "the main process is a daemon");
    ensure!(
        mp::parent_process().is_none(),
        "the main process has a parent: {:?}",
        mp::parent_process()
    );
    ensure!(me.to_string() == "<Process(MainProcess, started)>", "{me}");
    Ok(())
}

async fn a_child_knows_its_name_daemon_flag_and_parent() -> TestResult {
    // _TestProcess.test_current and test_parent_process, in a child of each method: the
    // child's name and daemon flag are those it was started with, its parent the main
    // process.
    for m in METHODS {
        for daemon in [false, true] {
            let q = mp::Queue::<Family>::new()?;
            let name = format!("reporter-{}-{daemon}", m.name());
            let mut p = Process::new(put_family, (q.clone(),))
                .name(name.clone())
                .daemon(daemon)
                .start_method(m)
                .start()
                .await?;
            let got = q.get_timeout(Duration::from_secs(30)).await?;
            support::join_ok(&mut p).await?;
            let want: Family = (
                name,
                p.pid(),
                daemon,
                Some(("MainProcess".into(), std::process::id(), true)),
            );
            ensure!(
                got == want,
                "{m:?}: the child reported {got:?}, not {want:?}"
            );
        }
    }
    Ok(())
}

/// Default names spell Python's `_identity`: the N-th process a child `Process-K` starts is
/// `Process-K:N`, whatever its start method, and a forked child numbers its own children
/// from 1 (`Process-K:1:1`), as Python's children do. Before, every child numbered its
/// children as the main process does, so a child's child was `Process-1`, and a forked one
/// went on from its parent's count.
async fn default_names_of_nested_processes_spell_their_lineage() -> TestResult {
    let q = mp::Queue::<Family>::new()?;
    let mut p = Process::new(put_family_then_children, (q.clone(),))
        .start()
        .await?;
    let k = p.name().to_string();
    let mut names = Vec::new();
    for _ in 0..5 {
        let (name, _, _, parent) = q.get_timeout(Duration::from_secs(30)).await?;
        names.push((name, parent.map(|(n, _, _)| n)));
    }
    support::join_ok(&mut p).await?;
    let want = [
        (k.clone(), Some("MainProcess".to_string())),
        (format!("{k}:1"), Some(k.clone())),
        (format!("{k}:1:1"), Some(format!("{k}:1"))),
        (format!("{k}:2"), Some(k.clone())),
        (format!("{k}:3"), Some(k.clone())),
    ];
    ensure!(
        names == want,
        "names and parents' names {names:?}, not {want:?}"
    );
    Ok(())
}

async fn a_forked_child_knows_its_name_and_parent() -> TestResult {
    // The same for the fork method, whose child inherits its parent's memory (and so the
    // parent's own view of itself, which it must replace): fork needs a single-threaded
    // parent, so a spawned child forks the reporter.
    let q = mp::Queue::<Family>::new()?;
    let mut p = Process::new(
        put_family_and_nest,
        (q.clone(), "forked".to_string(), "fork".to_string()),
    )
    .name("forker")
    .start()
    .await?;
    let forker = q.get_timeout(Duration::from_secs(30)).await?;
    let forked = q.get_timeout(Duration::from_secs(30)).await?;
    support::join_ok(&mut p).await?;
    ensure!(
        forker.0 == "forker",
        "the forking child reported {forker:?}"
    );
    ensure!(
        forked.0 == "forked" && !forked.2 && forked.1 != p.pid(),
        "the forked child reported {forked:?}"
    );
    ensure!(
        forked.3 == Some(("forker".into(), p.pid(), true)),
        "the forked child named its parent {:?}, not forker ({})",
        forked.3,
        p.pid()
    );
    Ok(())
}

/// Puts the names of this process's running children on `q`, after opening descriptors
/// that take the lowest free numbers (those its parent's children's handles had, if any).
async fn put_children(q: mp::Queue<Vec<String>>) -> Result<(), String> {
    let pipes: Vec<_> = (0..40).filter_map(|_| nix::unistd::pipe().ok()).collect();
    let names = mp::active_children()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    drop(pipes);
    q.put(names).await.map_err(|e| e.to_string())
}

/// Forks a sleeping child, then a second one that reports its own children on `q`.
async fn fork_two(q: mp::Queue<Vec<String>>) -> Result<(), String> {
    let fork = |p: mp::ProcessBuilder| p.start_method(StartMethod::Fork).start();
    let mut sleeper = fork(Process::new(sleep_secs, (60,)).name("sleeper"))
        .await
        .map_err(|e| e.to_string())?;
    let reported = async {
        let mut reporter = fork(Process::new(put_children, (q,)).name("reporter"))
            .await
            .map_err(|e| e.to_string())?;
        match reporter.join().await.map_err(|e| e.to_string())? {
            0 => Ok(()),
            code => Err(format!("the reporter exited with {code}")),
        }
    }
    .await;
    let _ = sleeper.kill();
    let _ = sleeper.join().await;
    reported
}

async fn a_forked_child_lists_none_of_its_parents_children() -> TestResult {
    // A forked child inherits its parent's memory, the parent's list of children with it:
    // its own `active_children()` must not list them (nor signal them at exit).
    let q = mp::Queue::<Vec<String>>::new()?;
    let mut p = Process::new(fork_two, (q.clone(),)).start().await?;
    let listed = q.get_timeout(Duration::from_secs(30)).await;
    support::join_ok(&mut p).await?;
    let listed = listed?;
    ensure!(
        listed.is_empty(),
        "a forked child listed {listed:?} as its children"
    );
    Ok(())
}

async fn a_grandchild_names_the_child_that_started_it() -> TestResult {
    // _TestProcess.test_parent_process: a grandchild's parent is the child, by name and pid.
    for m in METHODS {
        let q = mp::Queue::<Family>::new()?;
        let mut p = Process::new(
            put_family_and_nest,
            (q.clone(), "grandchild".to_string(), m.name().to_string()),
        )
        .name("middle")
        .start_method(m)
        .start()
        .await?;
        let middle = q.get_timeout(Duration::from_secs(30)).await?;
        let grandchild = q.get_timeout(Duration::from_secs(30)).await?;
        support::join_ok(&mut p).await?;
        ensure!(
            middle.3 == Some(("MainProcess".into(), std::process::id(), true)),
            "{m:?}: the child named its parent {:?}",
            middle.3
        );
        ensure!(
            grandchild.0 == "grandchild" && grandchild.3 == Some(("middle".into(), p.pid(), true)),
            "{m:?}: the grandchild reported {grandchild:?}; its parent is middle ({})",
            p.pid()
        );
    }
    Ok(())
}

async fn a_pool_worker_knows_it_is_one() -> TestResult {
    let pool = mp::Pool::new(1).await?;
    let (name, pid, daemon, parent) = pool.apply(pool_worker_family, ()).await?;
    ensure!(
        name.starts_with("PoolWorker-"),
        "a pool worker named {name}"
    );
    ensure!(
        pid != std::process::id(),
        "the worker reported this process's pid"
    );
    ensure!(daemon, "a pool worker is a daemon, as in Python");
    ensure!(
        parent == Some(("MainProcess".into(), std::process::id(), true)),
        "a pool worker named its parent {parent:?}"
    );
    Ok(())
}

async fn active_children_lists_running_children_until_they_end() -> TestResult {
    // _TestProcess.test_active_children: a child is listed from its start until it ends;
    // here also in the order of starts, and signalled through its listing.
    let mut a = Process::new(sleep_secs, (60,))
        .name("sleeper-a")
        .start()
        .await?;
    let mut b = Process::new(sleep_secs, (60,))
        .name("sleeper-b")
        .daemon(true)
        .start()
        .await?;
    let checked = check_active_children(&mut a, &mut b).await;
    // A failed check leaves no sleeper behind (signalling one that ended is no error).
    let _ = (a.kill(), b.kill());
    checked
}

async fn check_active_children(a: &mut Process, b: &mut Process) -> TestResult {
    let mine = |pids: &[u32]| -> Vec<(u32, String)> {
        mp::active_children()
            .into_iter()
            .filter(|c| pids.contains(&c.pid()))
            .map(|c| (c.pid(), c.name().to_string()))
            .collect()
    };
    let pids = [a.pid(), b.pid()];
    let listed = mine(&pids);
    ensure!(
        listed == vec![(a.pid(), "sleeper-a".into()), (b.pid(), "sleeper-b".into())],
        "active_children listed {listed:?}"
    );
    let b_listed = mp::active_children()
        .into_iter()
        .find(|c| c.pid() == b.pid());
    ensure!(
        b_listed.as_ref().is_some_and(|c| c.daemon()),
        "b listed as {b_listed:?}"
    );

    // Terminated through its listing: its own handle sees SIGTERM.
    let Some(a_listed) = mp::active_children()
        .into_iter()
        .find(|c| c.pid() == a.pid())
    else {
        return Err("sleeper-a is not listed".into());
    };
    a_listed.terminate()?;
    let code = support::join_code(a).await?;
    ensure!(
        code == -15,
        "sleeper-a ended with {code}, not -15 (SIGTERM)"
    );
    let listed = mine(&pids);
    ensure!(
        listed == vec![(b.pid(), "sleeper-b".into())],
        "after sleeper-a ended, active_children listed {listed:?}"
    );

    // A child that ended but was not reaped yet is not listed either.
    b.kill()?;
    ensure!(
        support::eventually(Duration::from_secs(10), || support::is_zombie_or_gone(
            b.pid()
        ))
        .await,
        "sleeper-b outlived SIGKILL"
    );
    let listed = mine(&pids);
    ensure!(
        listed.is_empty(),
        "after both ended, active_children listed {listed:?}"
    );
    // Signalling a child that ended is no error (its pidfd pins it).
    ensure!(a_listed.kill().is_ok(), "killing an ended child failed");
    let code = support::join_code(b).await?;
    ensure!(code == -9, "sleeper-b ended with {code}, not -9 (SIGKILL)");
    Ok(())
}
