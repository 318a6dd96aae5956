//! A child's environment variables and working directory: `ProcessBuilder::env`, `envs`,
//! `env_remove`, `env_clear` and `current_dir` (procspawn's `Builder`, subprocess's `env=`
//! and `cwd=`, `std::process::Command`'s), with each start method; a working directory that
//! cannot be entered and names that cannot be set are refused before any child exists, and
//! leave no descriptor and no child; this process's own environment is left as it was.
//! `PoolBuilder::env`, `envs` and `current_dir` (loky's `env=`): every worker of a pool,
//! replacements included, with each start method (a cluster's workers: `tests/cluster.rs`).

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::TestResult;
use support::process::METHODS;
use tokio_multiprocessing::{self as mp, Error, JoinHandle, Process, ProcessBuilder, StartMethod};

fn main() {
    mp::init(); // a re-executed child never gets past this line
    let mut trials = trials![
        spawned_and_fork_server_children_see_what_the_builder_set,
        a_forked_child_sees_what_the_builder_set,
        a_spawned_child_is_executed_with_its_final_environment,
        a_bad_working_directory_fails_the_start_and_leaves_nothing,
        names_and_values_that_cannot_be_set_are_refused_by_name,
        a_pools_workers_and_their_replacements_see_what_the_builder_set,
        a_pool_refuses_a_bad_directory_and_a_bad_name_on_a_cluster_too,
        a_child_starts_in_the_current_directory_of_its_parent_whatever_the_method,
    ];
    trials.push(support::test_current_thread(
        "children_see_what_the_builder_set_from_a_current_thread_runtime",
        spawned_and_fork_server_children_see_what_the_builder_set,
    ));
    // One test at a time: one counts this process's descriptors and children.
    support::run_one_at_a_time(trials)
}

// ---------------------------------------------------------------- targets

/// What a child sees of its surroundings.
#[derive(Debug, Serialize, Deserialize)]
struct Seen {
    vars: BTreeMap<String, String>,
    cwd: PathBuf,
    pid: u32,
    /// The environment it was executed with (`/proc/self/environ`), as `NAME=value`.
    exec_env: Vec<String>,
}

fn seen() -> Seen {
    let lossy = |s: std::ffi::OsString| s.to_string_lossy().into_owned();
    let exec_env = std::fs::read("/proc/self/environ").unwrap_or_default();
    Seen {
        vars: std::env::vars_os()
            .map(|(k, v)| (lossy(k), lossy(v)))
            .collect(),
        cwd: std::env::current_dir().unwrap_or_default(),
        pid: std::process::id(),
        exec_env: exec_env
            .split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| String::from_utf8_lossy(kv).into_owned())
            .collect(),
    }
}

/// [`seen`], as a pool's task.
fn seen_in_worker(_: u32) -> Seen {
    seen()
}

/// Runs in a spawned child, which has a single thread: the checks of
/// [`what_the_builder_set`] and [`what_the_pool_set`] with the `fork` method.
fn fork_probe() -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(async {
            what_the_builder_set(StartMethod::Fork).await?;
            what_the_pool_set(StartMethod::Fork).await
        })
}

// ---------------------------------------------------------------- checks

/// What a child started with `method` by `builder` sees.
async fn seen_by(
    method: StartMethod,
    builder: ProcessBuilder<JoinHandle<Seen>>,
) -> mp::Result<Seen> {
    let mut h = builder.start_method(method).start().await?;
    match tokio::time::timeout(Duration::from_secs(30), h.join()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::InvalidArgument(
            "the child did not answer in 30 s".into(),
        )),
    }
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Starts children with `method` and checks that each sees the variables set, removed and
/// cleared, and the working directory, that its builder said; this process's environment
/// and directory stay as they were.
async fn what_the_builder_set(method: StartMethod) -> Result<(), String> {
    let e = |e: Error| format!("{method:?}: {e}");
    let parent: BTreeMap<String, String> = std::env::vars().collect();
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    // A variable this process has, to remove; the others must reach the child unchanged
    // (but glibc's tunables, to which a spawned child adds its own).
    let removed = parent
        .keys()
        .find(|k| *k != "GLIBC_TUNABLES")
        .cloned()
        .ok_or("this process has no environment variable")?;

    let edited = Process::call(seen, ())
        .env(OsStr::from_bytes(b"TKMP_\xff"), OsStr::from_bytes(b"\xfe"))
        .env("TKMP_A", "1")
        .env("TKMP_B", "2")
        .env("TKMP_A", "one")
        .env_remove("TKMP_B")
        .env_remove(&removed);
    let s = seen_by(method, edited).await.map_err(e)?;
    check!(
        s.vars.get("TKMP_A").map(String::as_str) == Some("one"),
        "{method:?}: TKMP_A is {:?}",
        s.vars.get("TKMP_A")
    );
    check!(
        !s.vars.contains_key("TKMP_B"),
        "{method:?}: TKMP_B was set then removed"
    );
    // Names and values need not be UTF-8 (seen here lossily).
    check!(
        s.vars.get("TKMP_\u{fffd}").map(String::as_str) == Some("\u{fffd}"),
        "{method:?}: a name that is not UTF-8 is {:?}",
        s.vars.get("TKMP_\u{fffd}")
    );
    check!(
        !s.vars.contains_key(&removed),
        "{method:?}: {removed} was removed"
    );
    for (k, v) in parent
        .iter()
        .filter(|(k, _)| **k != removed && *k != "GLIBC_TUNABLES")
    {
        check!(
            s.vars.get(k) == Some(v),
            "{method:?}: {k} is {:?}, not {v:?}",
            s.vars.get(k)
        );
    }
    check!(
        s.cwd == here,
        "{method:?}: by default it runs in {:?}, not {here:?}",
        s.cwd
    );

    // After env_clear, only what is set after it: not the crate's own variables either.
    let cleared = Process::call(seen, ())
        .env("TKMP_GONE", "x")
        .env_clear()
        .envs([("TKMP_A", "1"), ("TKMP_B", "2")])
        .env_remove("TKMP_B")
        .env("TKMP_EMPTY", "");
    let s = seen_by(method, cleared).await.map_err(e)?;
    let only = BTreeMap::from([
        ("TKMP_A".to_string(), "1".to_string()),
        ("TKMP_EMPTY".to_string(), String::new()),
    ]);
    check!(
        s.vars == only,
        "{method:?}: after env_clear it has {:?}",
        s.vars
    );

    let dir = support::temp_path("cwd");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let s = seen_by(method, Process::call(seen, ()).current_dir(&dir))
        .await
        .map_err(e)?;
    check!(
        s.cwd == *dir,
        "{method:?}: it runs in {:?}, not {:?}",
        s.cwd,
        &*dir
    );
    // Relative: from this process's directory.
    let up = here.parent().unwrap_or(Path::new("/"));
    let s = seen_by(method, Process::call(seen, ()).current_dir(".."))
        .await
        .map_err(e)?;
    check!(
        s.cwd == up,
        "{method:?}: `..` took it to {:?}, not {up:?}",
        s.cwd
    );

    for (bad, kind) in [
        (dir.join("missing"), ErrorKind::NotFound),
        (PathBuf::new(), ErrorKind::NotFound),
        (PathBuf::from("/proc/self/status"), ErrorKind::NotADirectory),
        (
            PathBuf::from("/proc/self/status/x"),
            ErrorKind::NotADirectory,
        ),
    ] {
        match seen_by(method, Process::call(seen, ()).current_dir(&bad)).await {
            Err(Error::Io(io)) => {
                check!(
                    io.kind() == kind,
                    "{method:?}: {bad:?} gave {:?}: {io}",
                    io.kind()
                );
                let text = io.to_string();
                check!(
                    text.contains(&bad.display().to_string()),
                    "{method:?}: the error does not name {bad:?}: {text}"
                );
            }
            other => return Err(format!("{method:?}: {bad:?} gave {other:?}")),
        }
    }

    let now: BTreeMap<String, String> = std::env::vars().collect();
    check!(
        now == parent,
        "{method:?}: this process's environment changed"
    );
    check!(
        std::env::current_dir().ok().as_deref() == Some(&*here),
        "{method:?}: this process's directory changed"
    );
    Ok(())
}

/// Checks that every worker of a pool with `method`, the first ones and their
/// replacements (after `maxtasksperchild`, and after a worker's death), sees the
/// variables and the directory its builder set.
async fn what_the_pool_set(method: StartMethod) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| format!("{method:?} pool: {e}");
    let dir = support::temp_path("pool-cwd");
    std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
    let pool = mp::Pool::builder()
        .processes(2)
        .start_method(method)
        .maxtasksperchild(1)
        .env("TKMP_POOL", "yes")
        .envs([("TKMP_A", "1"), ("TKMP_B", "2")])
        .current_dir(&dir)
        .build()
        .await
        .map_err(|x| e(&x))?;
    let check = |s: &Seen| -> Result<(), String> {
        for (k, v) in [("TKMP_POOL", "yes"), ("TKMP_A", "1"), ("TKMP_B", "2")] {
            check!(
                s.vars.get(k).map(String::as_str) == Some(v),
                "{method:?} pool: worker {} has {k}={:?}",
                s.pid,
                s.vars.get(k)
            );
        }
        check!(
            s.cwd == *dir,
            "{method:?} pool: worker {} runs in {:?}",
            s.pid,
            s.cwd
        );
        Ok(())
    };
    // One task per worker: each of the six ran in a worker of its own.
    let seen = pool.map(seen_in_worker, 0..6).await.map_err(|x| e(&x))?;
    seen.iter().try_for_each(check)?;
    let pids: std::collections::HashSet<u32> = seen.iter().map(|s| s.pid).collect();
    check!(
        pids.len() == 6,
        "{method:?} pool: replacements reused workers: {pids:?}"
    );
    // A worker that dies is replaced by one that sees them too.
    let died = pool.apply(support::pool::exit_with, (3,)).await;
    check!(
        died.is_err(),
        "{method:?} pool: a worker that exits answered {died:?}"
    );
    check(&pool.apply(seen_in_worker, (0,)).await.map_err(|x| e(&x))?)?;
    pool.terminate().await.map_err(|x| e(&x))?;
    Ok(())
}

// ---------------------------------------------------------------- tests

async fn spawned_and_fork_server_children_see_what_the_builder_set() -> TestResult {
    for method in METHODS {
        what_the_builder_set(method).await?;
    }
    Ok(())
}

async fn a_pools_workers_and_their_replacements_see_what_the_builder_set() -> TestResult {
    for method in METHODS {
        what_the_pool_set(method).await?;
    }
    Ok(())
}

async fn a_pool_refuses_a_bad_directory_and_a_bad_name_on_a_cluster_too() -> TestResult {
    let children = support::all_children();
    let built = mp::Pool::builder()
        .processes(1)
        .current_dir("/no/such/directory")
        .build()
        .await;
    ensure!(
        matches!(&built, Err(Error::Io(e))
            if e.kind() == ErrorKind::NotFound && e.to_string().contains("/no/such/directory")),
        "{:?}",
        built.map(drop)
    );
    let bad_name = mp::Pool::builder()
        .processes(1)
        .envs([("OK", "1"), ("A=B", "2")])
        .env("FINE", "1");
    refused(bad_name, "\"A=B\"").await?;
    ensure!(support::all_children() == children, "a worker was started");
    // A pool on a cluster refuses it too, before it asks any host for a worker (this
    // cluster has none, so a start would wait for one).
    let cluster = mp::Cluster::builder().build().await?;
    let remote = mp::Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .env("TKMP_A", "1")
        .env("A\0B", "1");
    refused(remote, "\"A\\0B\"").await
}

/// Fails unless `builder` fails to build with an `InvalidArgument` that says `why`.
async fn refused(builder: mp::PoolBuilder, why: &str) -> TestResult {
    let built = builder.build().await;
    ensure!(
        matches!(&built, Err(Error::InvalidArgument(m)) if m.contains(why)),
        "{:?}",
        built.map(drop)
    );
    Ok(())
}

/// This process's working directory, given back when dropped.
struct BackTo(PathBuf);

impl Drop for BackTo {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.0);
    }
}

async fn a_child_starts_in_the_current_directory_of_its_parent_whatever_the_method() -> TestResult {
    // The fork server starts (if it has not) in this directory; then this process moves.
    for method in METHODS {
        seen_by(method, Process::call(seen, ())).await?;
    }
    let dir = support::temp_path("moved");
    std::fs::create_dir(&dir)?;
    let _back = BackTo(std::env::current_dir()?);
    std::env::set_current_dir(&dir)?;
    for method in METHODS {
        let s = seen_by(method, Process::call(seen, ())).await?;
        ensure!(
            s.cwd == *dir,
            "{method:?}: it started in {:?}, not {:?}",
            s.cwd,
            &*dir
        );
    }
    Ok(())
}

async fn a_forked_child_sees_what_the_builder_set() -> TestResult {
    // Fork needs a single-threaded parent: a spawned child forks.
    let mut h = Process::call(fork_probe, ()).start().await?;
    Ok(h.join().await??)
}

async fn a_spawned_child_is_executed_with_its_final_environment() -> TestResult {
    // What the dynamic loader and the C library see: the environment of the exec itself.
    let s = seen_by(
        StartMethod::Spawn,
        Process::call(seen, ())
            .env("TKMP_A", "1")
            .env_remove("PATH"),
    )
    .await?;
    ensure!(
        s.exec_env.iter().any(|kv| kv == "TKMP_A=1"),
        "{:?}",
        s.exec_env
    );
    ensure!(
        !s.exec_env.iter().any(|kv| kv.starts_with("PATH=")),
        "{:?}",
        s.exec_env
    );
    let s = seen_by(
        StartMethod::Spawn,
        Process::call(seen, ()).env_clear().env("TKMP_A", "1"),
    )
    .await?;
    // The crate's own variables served the start and are gone from what the target sees.
    ensure!(
        s.exec_env.iter().all(|kv| kv == "TKMP_A=1"
            || kv.starts_with("GLIBC_TUNABLES=")
            || kv.starts_with("TOKIO_MULTIPROCESSING_BOOT=")),
        "{:?}",
        s.exec_env
    );
    ensure!(s.vars.len() == 1, "{:?}", s.vars);
    Ok(())
}

async fn a_bad_working_directory_fails_the_start_and_leaves_nothing() -> TestResult {
    // First starts start what stays for the process's life (the fork server, the launcher).
    for method in METHODS {
        seen_by(method, Process::call(seen, ())).await?;
    }
    let before = support::open_fds();
    let children = support::all_children();
    for method in METHODS {
        for bad in ["/no/such/directory", "/proc/self/status"] {
            let (_reader, writer) = std::os::unix::net::UnixStream::pair()?;
            let started = Process::call(seen, ())
                .start_method(method)
                .current_dir(bad)
                .stdout(writer)
                .start()
                .await;
            ensure!(
                matches!(&started, Err(Error::Io(e)) if e.to_string().contains(bad)),
                "{method:?}: {bad}: {:?}",
                started.map(drop)
            );
        }
    }
    ensure!(
        support::all_children() == children,
        "children were started: {:?} before, {:?} after",
        children,
        support::all_children()
    );
    support::fds_return_to(before, Duration::from_secs(10)).await
}

async fn names_and_values_that_cannot_be_set_are_refused_by_name() -> TestResult {
    let children = support::all_children();
    let cases: Vec<(&str, ProcessBuilder)> = vec![
        (
            "\"\"",
            Process::new(support::process::nothing, ()).env("", "x"),
        ),
        (
            "\"A=B\"",
            Process::new(support::process::nothing, ()).env("A=B", "x"),
        ),
        (
            "\"A\\0\"",
            Process::new(support::process::nothing, ()).env("A\0", "x"),
        ),
        (
            "\"NUL\"",
            Process::new(support::process::nothing, ()).env("NUL", "x\0y"),
        ),
        (
            "\"A=B\"",
            Process::new(support::process::nothing, ()).env_remove("A=B"),
        ),
        (
            "\"B=\"",
            Process::new(support::process::nothing, ()).envs([("OK", "1"), ("B=", "2")]),
        ),
        (
            "TOKIO_MULTIPROCESSING_BOOT",
            Process::new(support::process::nothing, ()).env("TOKIO_MULTIPROCESSING_BOOT", "3,1"),
        ),
    ];
    for (name, builder) in cases {
        // A later call does not undo the refusal.
        let started = builder.env("FINE", "1").start().await;
        ensure!(
            matches!(&started, Err(Error::InvalidArgument(m)) if m.contains(name)),
            "{name}: {:?}",
            started.map(drop)
        );
    }
    ensure!(support::all_children() == children, "a child was started");
    Ok(())
}
