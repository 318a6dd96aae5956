//! `SharedMemoryManager` across real processes: segments made through it outlive their
//! handles and the processes that made them, and are gone from `/dev/shm` once the manager
//! stops, however it stops. Cases from CPython's `Lib/test/_test_multiprocessing.py`
//! (`_TestSharedMemory`) name the Python test they come from.

#[macro_use]
mod support;

use std::time::Duration;

use support::{TestResult, eventually, is_zombie_or_gone, join_ok, run_example, test};
use tokio_multiprocessing::{
    self as mp, Error, Pool, Process, SegmentsProxy, ShareableItem, ShareableList, SharedMemory,
    SharedMemoryManager, SimpleQueue, StartMethod,
};

const LONG: Duration = Duration::from_secs(20);

fn main() {
    mp::init();
    if support::process::helper_mode().as_deref() == Some(KILL_MID_CALL) {
        support::process::run_as_helper(kill_makers_mid_call());
    }
    support::run(vec![
        test(
            "segments_outlive_their_handles_until_shutdown",
            segments_outlive_their_handles_until_shutdown,
        ),
        test(
            "a_segment_made_in_a_child_outlives_it",
            a_segment_made_in_a_child_outlives_it,
        ),
        test(
            "a_killed_makers_segment_goes_at_shutdown",
            a_killed_makers_segment_goes_at_shutdown,
        ),
        test(
            "pool_tasks_make_segments_the_manager_keeps",
            pool_tasks_make_segments_the_manager_keeps,
        ),
        test(
            "dropping_the_manager_removes_its_segments",
            dropping_the_manager_removes_its_segments,
        ),
        test(
            "the_server_removes_its_segments_when_its_parent_dies",
            the_server_removes_its_segments_when_its_parent_dies,
        ),
        test(
            "a_killed_servers_segments_go_at_shutdown_or_drop",
            a_killed_servers_segments_go_at_shutdown_or_drop,
        ),
        test(
            "a_terminals_signals_leave_the_server_to_its_owner",
            a_terminals_signals_leave_the_server_to_its_owner,
        ),
        test(
            "a_segment_someone_removed_is_not_listed",
            a_segment_someone_removed_is_not_listed,
        ),
        test(
            "a_refused_segment_leaves_nothing",
            a_refused_segment_leaves_nothing,
        ),
        test(
            "example_shared_memory_manager",
            example_shared_memory_manager,
        ),
        test(
            "a_forked_server_removes_its_segments_whatever_its_parent_handles",
            a_forked_server_removes_its_segments_whatever_its_parent_handles,
        ),
        test(
            "a_maker_killed_mid_call_leaks_no_segment",
            a_maker_killed_mid_call_leaks_no_segment,
        ),
    ])
}

/// The helper mode of [`a_maker_killed_mid_call_leaks_no_segment`].
const KILL_MID_CALL: &str = "smm-kill-mid-call";

/// Asks for segments until it is killed.
async fn make_segments_until_killed(smm: SegmentsProxy) {
    loop {
        let _ = smm.shared_memory(64).await;
    }
}

/// The helper, alone with its children in a `/dev/shm` of its own: kills makers of segments
/// at moments spread over their calls, shuts the manager down, and prints how many segments
/// the manager kept and every `psm_` name left.
async fn kill_makers_mid_call() {
    let outcome = async {
        let smm = SharedMemoryManager::start().await?;
        for round in 0..30u64 {
            let mut p = Process::new(make_segments_until_killed, (smm.proxy(),))
                .start()
                .await?;
            tokio::time::sleep(Duration::from_millis(5 + (round * 7) % 40)).await;
            p.kill()?;
            p.join().await?;
        }
        let kept = smm.segments().await?.len();
        smm.shutdown().await?;
        let left: Vec<String> = std::fs::read_dir("/dev/shm")?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("psm_"))
            .collect();
        Ok::<_, Box<dyn std::error::Error>>(format!("kept {kept} left {left:?}"))
    }
    .await;
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => println!("error: {e}"),
    }
}

/// A process killed by SIGKILL at any moment of its call for a segment leaves no segment
/// behind once the manager stops: the server makes each one and keeps it from the start.
/// Run in a mount namespace with a `/dev/shm` of its own, so that no other test's segments
/// count; that needs root (and `unshare`), else the test says so and skips.
async fn a_maker_killed_mid_call_leaks_no_segment() -> TestResult {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        println!("skipped: a /dev/shm of the test's own needs root to mount");
        return Ok(());
    }
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /dev/shm && exec \"$0\"")
        .arg(std::env::current_exe()?)
        .env(support::process::MODE_VAR, KILL_MID_CALL)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stdout.trim_end().ends_with("left []"),
        "the helper ({}) printed {stdout:?}; {stderr}",
        out.status
    );
    ensure!(
        !stdout.contains("kept 0 "),
        "no segment was made: {stdout:?}"
    );
    Ok(())
}

/// Runs in a child, on the single-threaded runtime the crate builds for it: handles SIGTERM
/// with tokio (as a service shutting down gracefully does), then starts a manager with the
/// fork method, which inherits tokio's signal state, and shuts it down.
async fn fork_a_manager_after_tokio_took_sigterm() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let _term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let smm = SharedMemoryManager::start_with(StartMethod::Fork)
        .await
        .map_err(|e| e.to_string())?;
    let shm = smm.shared_memory(64).await.map_err(|e| e.to_string())?;
    let name = name_of(&shm)?;
    drop(shm);
    smm.shutdown().await.map_err(|e| e.to_string())?;
    match shm_exists(&name) {
        true => Err(format!("{name} is still in /dev/shm")),
        false => Ok(()),
    }
}

/// A server forked from a program whose runtime handles SIGTERM still catches the SIGTERM
/// of `shutdown`, and removes its segments.
async fn a_forked_server_removes_its_segments_whatever_its_parent_handles() -> TestResult {
    let mut p = Process::new(fork_a_manager_after_tokio_took_sigterm, ())
        .start()
        .await?;
    join_ok(&mut p).await
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn name_of(shm: &SharedMemory) -> Result<String, String> {
    shm.name()
        .map(str::to_string)
        .ok_or_else(|| "a manager's segment has no name".to_string())
}

/// Fails unless none of `names` is in `/dev/shm`.
fn all_gone(names: &[String]) -> TestResult {
    let left: Vec<&String> = names.iter().filter(|n| shm_exists(n)).collect();
    ensure!(left.is_empty(), "still in /dev/shm: {left:?}");
    Ok(())
}

/// `test_shared_memory_SharedMemoryManager_basics`: a segment and a list made through the
/// manager stay when their handles are dropped, are listed, and are gone after `shutdown`.
async fn segments_outlive_their_handles_until_shutdown() -> TestResult {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        outlive_handles_until_shutdown(method)
            .await
            .map_err(|e| format!("{method:?}: {e}"))?;
    }
    Ok(())
}

async fn outlive_handles_until_shutdown(method: StartMethod) -> TestResult {
    let smm = SharedMemoryManager::start_with(method).await?;
    let shm = smm.shared_memory(128).await?;
    ensure!(shm.size() == 128, "size {}", shm.size());
    shm.write(0, b"kept by the server")?;
    let shm_name = name_of(&shm)?;
    drop(shm);
    let sl = smm.shareable_list(0..10).await?;
    let sl_name = name_of(sl.shm())?;
    drop(sl);

    ensure!(
        shm_exists(&shm_name) && shm_exists(&sl_name),
        "a dropped handle removed its segment"
    );
    let again = SharedMemory::attach(&shm_name)?;
    let mut buf = [0u8; 18];
    again.read(0, &mut buf)?;
    ensure!(&buf == b"kept by the server", "read back {buf:?}");
    let list = ShareableList::attach(&sl_name)?;
    ensure!(
        list.to_vec()? == (0..10).map(ShareableItem::Int).collect::<Vec<_>>(),
        "list {list:?}"
    );
    ensure!(
        smm.segments().await? == [shm_name.clone(), sl_name.clone()],
        "segments {:?}",
        smm.segments().await?
    );

    let proxy = smm.proxy();
    let pid = smm.pid().ok_or("no server pid")?;
    smm.shutdown().await?;
    all_gone(&[shm_name, sl_name])?;
    ensure!(is_zombie_or_gone(pid), "the server {pid} still runs");
    // The mappings stay usable; the manager does not.
    again.write(0, b"still mapped")?;
    ensure!(list.get(3)? == ShareableItem::Int(3), "list after shutdown");
    match proxy.segments().await {
        Err(Error::ManagerLost { .. }) => {}
        other => return Err(format!("a proxy after shutdown gave {other:?}").into()),
    }
    Ok(())
}

/// `test_shared_memory_SharedMemoryManager_basics` goes on to unlink: a server that made
/// segments which their users removed once done lists only those still there, however many
/// it made (it kept every name it ever made, in a list and a ledger that only grew).
async fn a_segment_someone_removed_is_not_listed() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    let kept = smm.shared_memory(64).await?;
    for _ in 0..100 {
        smm.shared_memory(64).await?.unlink()?;
    }
    let mut sl = smm.shareable_list([1, 2]).await?;
    ensure!(
        smm.segments().await? == [name_of(&kept)?, name_of(sl.shm())?],
        "segments {:?}",
        smm.segments().await?
    );
    sl.unlink()?;
    ensure!(
        smm.segments().await? == [name_of(&kept)?],
        "segments {:?}",
        smm.segments().await?
    );
    let name = name_of(&kept)?;
    smm.shutdown().await?;
    all_gone(&[name])
}

async fn make_segment(smm: SegmentsProxy) -> mp::Result<()> {
    let shm = smm.shared_memory(64).await?;
    shm.write(0, format!("child {}", std::process::id()).as_bytes())?;
    Ok(())
}

/// A child makes a segment through a proxy it was passed, drops it and exits: the parent
/// finds it by the manager's list and attaches.
async fn a_segment_made_in_a_child_outlives_it() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    let mut p = Process::new(make_segment, (smm.proxy(),)).start().await?;
    let child = p.pid();
    join_ok(&mut p).await?;
    let names = smm.segments().await?;
    ensure!(names.len() == 1, "segments {names:?}");
    let shm = SharedMemory::attach(&names[0])?;
    let want = format!("child {child}");
    let mut buf = vec![0u8; want.len()];
    shm.read(0, &mut buf)?;
    ensure!(
        buf == want.as_bytes(),
        "read {:?}",
        String::from_utf8_lossy(&buf)
    );
    smm.shutdown().await?;
    all_gone(&names)
}

async fn make_segment_and_hang(smm: SegmentsProxy, made: SimpleQueue<String>) {
    let sl = smm
        .shareable_list(["made", "then", "killed"])
        .await
        .expect("list");
    let name = sl.shm().name().expect("named").to_string();
    made.put(name).await.expect("put");
    std::future::pending::<()>().await;
}

/// A child that made a list through the manager is killed by SIGKILL: the list stays, and
/// goes at shutdown.
async fn a_killed_makers_segment_goes_at_shutdown() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    let made = SimpleQueue::<String>::new()?;
    let mut p = Process::new(make_segment_and_hang, (smm.proxy(), made.clone()))
        .start()
        .await?;
    let name = tokio::time::timeout(LONG, made.get()).await??;
    p.kill()?;
    p.join_timeout(LONG)
        .await?
        .ok_or("the killed child did not end")?;
    let list = ShareableList::attach(&name)?;
    ensure!(list.get(-1)? == "killed".into(), "list {list:?}");
    ensure!(smm.segments().await? == [name.clone()], "segments");
    smm.shutdown().await?;
    all_gone(&[name])
}

async fn task_list(smm: SegmentsProxy, i: i64) -> Result<String, String> {
    let sl = smm
        .shareable_list([i, i * i])
        .await
        .map_err(|e| e.to_string())?;
    Ok(sl.shm().name().unwrap_or_default().to_string())
}

/// Pool tasks make lists through a proxy passed to them and return the names: each list
/// outlives its task, the manager lists them all, and they go at shutdown.
async fn pool_tasks_make_segments_the_manager_keeps() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    let pool = Pool::new(2).await?;
    let mut names = Vec::new();
    for i in 0..4i64 {
        let name = pool.apply(task_list, (smm.proxy(), i)).await??;
        let list = ShareableList::attach(&name)?;
        ensure!(
            list.to_vec()? == [ShareableItem::Int(i), ShareableItem::Int(i * i)],
            "list {i}: {list:?}"
        );
        names.push(name);
    }
    let mut listed = smm.segments().await?;
    listed.sort();
    let mut want = names.clone();
    want.sort();
    want.dedup();
    ensure!(want.len() == 4, "names repeat: {names:?}");
    ensure!(listed == want, "listed {listed:?}, made {want:?}");
    pool.close();
    pool.join().await?;
    smm.shutdown().await?;
    all_gone(&names)
}

/// Dropping the manager without `shutdown` removes its segments too (the server is sent
/// SIGTERM and removes them before it exits).
async fn dropping_the_manager_removes_its_segments() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    let pid = smm.pid().ok_or("no server pid")?;
    let a = name_of(&smm.shared_memory(4096).await?)?;
    let b = name_of(smm.shareable_list(["x"]).await?.shm())?;
    ensure!(
        shm_exists(&a) && shm_exists(&b),
        "segments missing before the drop"
    );
    drop(smm);
    let names = [a, b];
    ensure!(
        eventually(LONG, || names.iter().all(|n| !shm_exists(n))).await,
        "segments left after the drop"
    );
    ensure!(
        eventually(LONG, || is_zombie_or_gone(pid)).await,
        "the server {pid} still runs"
    );
    all_gone(&names)
}

/// A server killed by SIGKILL cannot remove its segments; the process that started it does,
/// at `shutdown` or when it drops the manager (Python's resource tracker removes a killed
/// process's segments in the same way), whichever start method made the server.
async fn a_killed_servers_segments_go_at_shutdown_or_drop() -> TestResult {
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        for shutdown in [true, false] {
            killed_server_leaves_nothing(method, shutdown)
                .await
                .map_err(|e| format!("{method:?}, shutdown {shutdown}: {e}"))?;
        }
    }
    Ok(())
}

async fn killed_server_leaves_nothing(method: StartMethod, shutdown: bool) -> TestResult {
    let smm = SharedMemoryManager::start_with(method).await?;
    let pid = smm.pid().ok_or("no server pid")?;
    let a = name_of(&smm.shared_memory(4096).await?)?;
    let b = name_of(smm.shareable_list(["x", "y"]).await?.shm())?;
    let mut p = Process::new(make_segment, (smm.proxy(),)).start().await?;
    join_ok(&mut p).await?;
    let mut names = smm.segments().await?;
    ensure!(names.len() == 3, "segments kept: {names:?}");
    ensure!(
        names.contains(&a) && names.contains(&b),
        "{a} or {b} not among {names:?}"
    );
    let server = i32::try_from(pid).map_err(|e| e.to_string())?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| e.to_string())?;
    ensure!(
        eventually(LONG, || is_zombie_or_gone(pid)).await,
        "the server {pid} still runs after SIGKILL"
    );
    ensure!(
        names.iter().all(|n| shm_exists(n)),
        "a killed server removed its segments"
    );
    if shutdown {
        smm.shutdown().await?;
    } else {
        drop(smm);
    }
    names.sort();
    all_gone(&names)
}

async fn own_manager_and_hang(forkserver: bool, made: SimpleQueue<(String, u32)>) {
    let method = match forkserver {
        true => StartMethod::ForkServer,
        false => StartMethod::Spawn,
    };
    let smm = SharedMemoryManager::start_with(method)
        .await
        .expect("start");
    let shm = smm.shared_memory(64).await.expect("segment");
    let name = shm.name().expect("named").to_string();
    let pid = smm.pid().expect("server pid");
    made.put((name, pid)).await.expect("put");
    std::future::pending::<()>().await;
}

/// A process holding a manager is killed by SIGKILL, so its manager is never dropped: the
/// server, told by the kernel that its parent died, removes the segments and exits; with
/// either start method that works from a multi-threaded process.
async fn the_server_removes_its_segments_when_its_parent_dies() -> TestResult {
    for forkserver in [false, true] {
        server_outlives_no_owner(forkserver)
            .await
            .map_err(|e| format!("forkserver {forkserver}: {e}"))?;
    }
    Ok(())
}

async fn server_outlives_no_owner(forkserver: bool) -> TestResult {
    let made = SimpleQueue::<(String, u32)>::new()?;
    let mut p = Process::new(own_manager_and_hang, (forkserver, made.clone()))
        .start()
        .await?;
    let (name, server) = tokio::time::timeout(LONG, made.get()).await??;
    ensure!(
        shm_exists(&name),
        "the segment is missing while its manager runs"
    );
    p.kill()?;
    p.join_timeout(LONG)
        .await?
        .ok_or("the killed child did not end")?;
    ensure!(
        eventually(LONG, || !shm_exists(&name)).await,
        "the segment {name} outlived the manager's owner"
    );
    ensure!(
        eventually(LONG, || is_zombie_or_gone(server)).await,
        "the server {server} outlived its parent"
    );
    Ok(())
}

/// A terminal's Ctrl-C or hang-up reaches every process of the foreground group, the
/// server included (bpo-36368, whose fix made Python's manager server ignore SIGINT): the
/// server stays, keeping its segments for its owner to use and remove.
async fn a_terminals_signals_leave_the_server_to_its_owner() -> TestResult {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let smm = SharedMemoryManager::start().await?;
    let pid = smm.pid().ok_or("no server pid")?;
    let name = name_of(&smm.shared_memory(64).await?)?;
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        kill(Pid::from_raw(pid as i32), sig)?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(
        !is_zombie_or_gone(pid),
        "the server {pid} died of a terminal's signal"
    );
    ensure!(shm_exists(&name), "{name} went with a terminal's signal");
    ensure!(smm.segments().await? == [name.clone()], "segments");
    smm.shutdown().await?;
    all_gone(&[name])
}

/// A segment the manager cannot make (size 0) is refused, and the manager keeps nothing.
async fn a_refused_segment_leaves_nothing() -> TestResult {
    let smm = SharedMemoryManager::start().await?;
    match smm.shared_memory(0).await {
        Err(Error::InvalidArgument(_)) => {}
        other => return Err(format!("a 0-byte segment gave {other:?}").into()),
    }
    ensure!(smm.segments().await?.is_empty(), "segments kept");
    smm.shutdown().await?;
    Ok(())
}

/// The documentation's example: two processes square halves of a manager's list.
async fn example_shared_memory_manager() -> TestResult {
    let out = run_example("shared_memory_manager").await?;
    let want = (0..2000i64).map(|x| x * x).sum::<i64>();
    ensure!(
        out == format!("total_result = {want}\nsegments kept by the manager: 1\n"),
        "output: {out:?}"
    );
    Ok(())
}
