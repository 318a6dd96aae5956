//! The same pool on several hosts: hosts are network namespaces this test makes (see
//! `support/netns.rs`), each running a host agent started by the `Command` launcher
//! (`ip netns exec <ns> <this test binary> --tokio-multiprocessing-agent ...`). Skipped, with
//! a message, where namespaces cannot be made (not root).

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::netns::Net;
use support::pool::{
    erring_init, keep_memory, pid, pid_to_file_then_sleep, read_pid, sqr, touch, wait_for_file,
};
use support::process::{BoxError, helper_mode, run_as_helper, start_helper_reading};
use support::{TestResult, eventually, temp_path};
use tokio_multiprocessing::{self as mp, Cluster, ExitCause, Pool};

/// The environment variable that names the namespaces for the head helper.
const NET_VAR: &str = "TKMP_TEST_NET";

fn main() {
    mp::init();
    let _ = tracing::subscriber::set_global_default(Capture);
    match helper_mode().as_deref() {
        Some("cluster-head") => run_as_helper(head_helper()),
        Some("cluster-from-env") => run_as_helper(from_env_helper()),
        _ => {}
    }
    support::run_mostly_waiting(trials![
        map_of_100_000_items_runs_on_both_hosts,
        a_remote_worker_whose_memory_reaches_the_limit_is_replaced,
        a_task_holding_a_descriptor_fails_at_submission,
        remote_worker_killed_mid_task,
        frozen_host_is_declared_lost_and_the_other_serves_on,
        host_whose_cable_is_pulled_is_lost_and_its_agent_exits,
        a_killed_agent_fails_its_tasks_saying_its_connection_closed,
        a_scale_relaunches_a_host_whose_agent_died,
        an_agent_killed_under_load_runs_no_task_twice,
        a_worker_link_gone_dead_fails_its_task_while_its_agent_answers,
        killing_the_head_leaves_no_process_on_the_hosts,
        wrong_key_garbage_and_silence_are_refused_without_harm,
        another_build_is_refused_naming_host_and_fingerprints,
        example_cluster_map_runs_on_two_local_hosts,
        retries_run_again_a_task_whose_worker_died_only_when_asked,
        a_task_cancelled_on_a_host_is_not_run_elsewhere_when_its_worker_dies,
        a_task_cancelled_while_it_runs_is_not_run_again_when_its_worker_dies,
        from_env_and_worker_command_let_an_agent_be_started_by_hand,
        building_a_cluster_leaves_its_runtime_running_while_launching,
        a_pool_and_shutdown_wait_for_no_launch,
        ending_a_cluster_leaves_its_runtime_running,
        garbage_after_the_challenge_is_refused,
        worker_output_comes_back_as_tracing_events_naming_host_and_pid,
        a_task_cancelled_behind_a_running_one_on_a_remote_worker_never_runs,
        a_worker_printing_much_grows_its_agent_little,
        terminate_waits_for_no_start_once_the_only_host_is_lost,
        a_launch_that_ended_at_once_is_named_when_no_host_has_room,
        a_launch_that_hangs_is_named_when_no_host_has_room,
        a_launch_command_that_exits_is_reaped_while_the_cluster_lives,
        silent_sockets_lock_no_agent_out,
        an_agent_asked_for_too_many_workers_refuses_to_start,
        a_remote_initializer_error_reaches_the_caller,
        a_dropped_build_ends_its_remote_worker_and_frees_its_room,
        a_remote_initializer_outlasts_the_start_timeout,
        a_dropped_scale_launches_no_host_it_had_not_begun,
        a_dropped_build_ends_the_agents_it_started_while_a_launch_hangs,
        shutdown_stops_a_scale_under_way,
        a_scale_launches_its_hosts_together_and_keeps_those_that_started,
        a_remote_task_that_times_out_names_its_host,
        a_cluster_with_deadlines_of_days_starts_workers,
        shutdown_ends_an_agent_launched_under_a_wrapper,
        shutdown_ends_an_agent_its_launch_command_left_in_the_background,
        shutdown_cancels_its_jobs_together,
        a_cluster_worker_runs_with_the_pools_variables_and_directory,
        a_directory_missing_on_the_host_fails_the_build_naming_host_and_path,
        starts_go_to_the_host_that_has_the_directory_while_it_has_room,
        an_environment_too_large_for_a_frame_fails_the_start_not_the_host,
    ]);
}

/// The network namespace this process runs in (each host has its own).
fn netns() -> String {
    netns_of("self")
}

fn netns_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn square_where(x: u64) -> (u64, String) {
    (x * x, netns())
}

/// A cluster of `hosts` namespaces with `workers` workers each, every agent connected.
async fn cluster_on(
    net: &Net,
    hosts: usize,
    workers: usize,
    tune: impl FnOnce(mp::ClusterBuilder) -> mp::ClusterBuilder,
) -> Result<Cluster, BoxError> {
    let launcher = mp::launch::Command::new(&net.template())
        .hosts(hosts)
        .workers_per_host(workers);
    let cluster = tune(
        Cluster::builder()
            .listener(net.listen()?)
            .launcher(launcher),
    )
    .build()
    .await?;
    cluster
        .wait_for_hosts(hosts, Duration::from_secs(30))
        .await?;
    Ok(cluster)
}

/// Waits until the pool's `n` workers are ready, so that each takes a task.
async fn all_ready(pool: &Pool, n: usize) -> bool {
    eventually(Duration::from_secs(20), || pool.stats().workers_alive == n).await
}

async fn map_of_100_000_items_runs_on_both_hosts() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 2, 2, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(pool.processes() == 4, "{} processes", pool.processes());
    let out = pool.map(square_where, 0..100_000u64).await?;
    ensure!(out.len() == 100_000, "{} results", out.len());
    for (i, (sq, _)) in out.iter().enumerate() {
        ensure!(*sq == (i as u64) * (i as u64), "item {i} is {sq}");
    }
    let spaces: HashSet<&str> = out.iter().map(|(_, ns)| ns.as_str()).collect();
    ensure!(spaces.len() == 2, "the items ran in {spaces:?}");
    ensure!(
        !spaces.contains(netns().as_str()),
        "an item ran in the head's namespace"
    );
    let workers = cluster.workers();
    let hosts: HashSet<&str> = workers.iter().map(|w| w.host.as_str()).collect();
    ensure!(
        workers.len() == 4 && hosts.len() == 2,
        "workers {workers:?}"
    );
    pool.close();
    pool.join().await?;
    drop(cluster);
    ensure!(
        eventually(Duration::from_secs(10), || net.pids(0).is_empty()
            && net.pids(1).is_empty())
        .await,
        "processes left in the hosts: {:?} {:?}",
        net.pids(0),
        net.pids(1)
    );
    Ok(())
}

fn holds_event(e: mp::Event) -> bool {
    e.is_set()
}

async fn a_task_holding_a_descriptor_fails_at_submission() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let err = pool
        .apply(holds_event, (mp::Event::new()?,))
        .await
        .err()
        .ok_or("a task holding an Event ran on another host")?;
    ensure!(
        matches!(err.caller_error(), Some(mp::Error::InvalidArgument(m)) if m.contains("descriptors")),
        "{err}"
    );
    // The pool is unharmed.
    ensure!(
        pool.apply(sqr, (9,)).await? == 81,
        "the pool stopped serving"
    );
    Ok(())
}

async fn remote_worker_killed_mid_task() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let path = temp_path("killed");
    let long = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 30_000));
    let victim = read_pid(&path).await?;
    // Held behind the running task, or queued: none of them has started.
    let behind: Vec<_> = (0..5).map(|i| pool.apply_async(sqr, (i,))).collect();
    ensure!(
        net.pids(0).contains(&victim),
        "worker {victim} is not on the host"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL)?;
    let err = long.await.err().ok_or("the killed task succeeded")?;
    ensure!(err.is_worker_lost(), "{err}");
    ensure!(err.worker_pid() == Some(victim), "{err}");
    ensure!(err.exit_cause() == Some(ExitCause::Signal(9)), "{err}");
    ensure!(
        err.worker_host().is_some_and(|h| h.contains("10.77.1.2")),
        "the error does not name the host: {err}"
    );
    for (i, h) in behind.into_iter().enumerate() {
        ensure!(h.await? == (i * i) as i64, "task {i} behind the killed one");
    }
    let replacement = pool.apply(pid, ()).await?;
    ensure!(replacement != victim, "the dead worker answered");
    ensure!(
        net.pids(0).contains(&replacement),
        "the replacement is not on the host"
    );
    Ok(())
}

/// Runs one long task on each of two hosts' single workers, then `lose` host 0; checks
/// that its task fails as lost by `cause` with its host named, the other host's task
/// succeeds and the pool serves on with the other host.
async fn lose_a_host(
    net: &Net,
    tune: impl FnOnce(mp::ClusterBuilder) -> mp::ClusterBuilder,
    lose: impl FnOnce(&Net) -> Result<(), BoxError>,
    cause: ExitCause,
) -> Result<(), BoxError> {
    let cluster = cluster_on(net, 2, 1, tune).await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(2))
        .build()
        .await?;
    ensure!(all_ready(&pool, 2).await, "workers {:?}", pool.stats());
    let (p0, p1) = (temp_path("lost"), temp_path("lost"));
    let a = pool.apply_async(pid_to_file_then_sleep, (p0.to_string(), 4_000));
    let b = pool.apply_async(pid_to_file_then_sleep, (p1.to_string(), 4_000));
    let (pa, pb) = (read_pid(&p0).await?, read_pid(&p1).await?);
    let on_host0 = net.pids(0);
    let (lost, kept, kept_pid) = if on_host0.contains(&pa) {
        (a, b, pb)
    } else if on_host0.contains(&pb) {
        (b, a, pa)
    } else {
        return Err(format!("neither {pa} nor {pb} runs on host 0 ({on_host0:?})").into());
    };
    let kept_ns = netns_of(&kept_pid.to_string());
    lose(net)?;
    let err = lost.await.err().ok_or("the lost host's task succeeded")?;
    ensure!(err.is_worker_lost(), "{err}");
    ensure!(err.exit_cause() == Some(cause), "{err}");
    ensure!(err.to_string().contains(&cause.to_string()), "{err}");
    ensure!(
        err.worker_host().is_some_and(|h| h.contains("10.77.1.2")),
        "the error does not name the host: {err}"
    );
    ensure!(kept.await? == kept_pid, "the other host's task");
    let out = pool.map(square_where, 0..100u64).await?;
    ensure!(
        out.iter()
            .enumerate()
            .all(|(i, (sq, ns))| *sq == (i * i) as u64 && *ns == kept_ns),
        "the pool did not serve on from the other host"
    );
    ensure!(cluster.hosts() == 1, "{} hosts", cluster.hosts());
    Ok(())
}

async fn frozen_host_is_declared_lost_and_the_other_serves_on() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    lose_a_host(
        &net,
        |b| b.heartbeat_deadline(Duration::from_millis(500)),
        |net| {
            net.signal_host(0, Signal::SIGSTOP);
            Ok(())
        },
        ExitCause::HostLost,
    )
    .await?;
    // Thawed, the host finds its agent's connection closed: it ends, with its workers; the
    // answer its worker sends late goes nowhere.
    net.signal_host(0, Signal::SIGCONT);
    ensure!(
        eventually(Duration::from_secs(20), || net.pids(0).is_empty()).await,
        "processes left on the thawed host: {:?}",
        net.pids(0)
    );
    Ok(())
}

async fn host_whose_cable_is_pulled_is_lost_and_its_agent_exits() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    lose_a_host(
        &net,
        |b| {
            b.heartbeat_deadline(Duration::from_millis(500))
                .head_deadline(Duration::from_millis(1500))
        },
        |net| Ok(net.cut(0)?),
        ExitCause::HostLost,
    )
    .await?;
    // Cut off, the agent hears nothing from the head past its deadline: it kills its
    // workers and exits.
    ensure!(
        eventually(Duration::from_secs(20), || net.pids(0).is_empty()).await,
        "processes left on the cut-off host: {:?}",
        net.pids(0)
    );
    Ok(())
}

/// The agent of a host is killed (SIGKILL) while its worker runs a task: its connection
/// closes at once, so the task fails saying so, not that its host stopped answering (as it
/// did before), long before the heartbeat deadline would have declared the host silent.
async fn a_killed_agent_fails_its_tasks_saying_its_connection_closed() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    lose_a_host(
        &net,
        |b| b.heartbeat_deadline(Duration::from_secs(3600)),
        |net| {
            let agent = agent_in(net, 0)?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), Signal::SIGKILL)?;
            Ok(())
        },
        ExitCause::HostDisconnected,
    )
    .await?;
    ensure!(
        eventually(Duration::from_secs(20), || net.pids(0).is_empty()).await,
        "processes left on the host whose agent was killed: {:?}",
        net.pids(0)
    );
    Ok(())
}

/// `scale(n)` brings back a host whose agent was killed: it counts as missing, its old
/// launch is ended and it is launched anew, and the pool's worker there comes back. Before,
/// the scale returned `Ok` and launched nothing, as the dead agent's launch was still on
/// the list, and only a new cluster had both hosts again.
async fn a_scale_relaunches_a_host_whose_agent_died() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 2, 1, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(all_ready(&pool, 2).await, "workers {:?}", pool.stats());
    let agent = agent_in(&net, 0)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), Signal::SIGKILL)?;
    ensure!(
        eventually(Duration::from_secs(20), || cluster.hosts() == 1).await,
        "{} hosts after the kill",
        cluster.hosts()
    );
    // A scale to what is there already launches nothing.
    cluster.scale(1).await?;
    cluster.scale(2).await?;
    cluster.wait_for_hosts(2, Duration::from_secs(30)).await?;
    let again = agent_in(&net, 0)?;
    ensure!(again != agent, "host 0's agent is the killed one");
    ensure!(all_ready(&pool, 2).await, "workers {:?}", pool.stats());
    let out = pool.map(square_where, 0..2_000u64).await?;
    let spaces: HashSet<&str> = out.iter().map(|(_, ns)| ns.as_str()).collect();
    ensure!(spaces.len() == 2, "the items ran in {spaces:?}");
    // Once back, the host is not launched again.
    cluster.scale(2).await?;
    ensure!(
        agent_in(&net, 0)? == again,
        "a second scale launched host 0 again"
    );
    cluster.shutdown().await?;
    Ok(())
}

/// Notes the run of item `x` in the file `log` (one line per run), then returns `x`.
fn note_run(log: String, x: u64) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("the run log");
    // One write, so that runs on other workers do not come between its digits and its end.
    f.write_all(format!("{x}\n").as_bytes())
        .expect("the run log");
    std::thread::sleep(Duration::from_millis(2));
    x
}

/// A host's agent is killed (SIGKILL) while 3,000 tasks are queued on two hosts: every call
/// resolves, no task runs twice, each failed one says its host's connection closed, and the
/// pool serves on from the other host.
async fn an_agent_killed_under_load_runs_no_task_twice() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 2, 2, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(all_ready(&pool, 4).await, "workers {:?}", pool.stats());
    let agent = agent_in(&net, 0)?;
    let log = temp_path("runs");
    std::fs::write(&*log, "")?;
    const N: u64 = 3_000;
    let calls: Vec<_> = (0..N)
        .map(|x| pool.apply_async(note_run, (log.to_string(), x)))
        .collect();
    let ran = || std::fs::read_to_string(&*log).map_or(0, |l| l.lines().count());
    ensure!(
        eventually(Duration::from_secs(30), || ran() >= 300).await,
        "{} tasks ran",
        ran()
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), Signal::SIGKILL)?;
    let (mut ok, mut failed) = (HashSet::new(), 0usize);
    for (x, call) in calls.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .map_err(|_| format!("call {x} never resolved"))?
        {
            Ok(got) => {
                ensure!(got == x as u64, "call {x} returned {got}");
                ok.insert(got);
            }
            Err(e) => {
                ensure!(e.is_worker_lost(), "{e}");
                ensure!(e.exit_cause() == Some(ExitCause::HostDisconnected), "{e}");
                failed += 1;
            }
        }
    }
    // The host's two workers held tasks when its agent died (those that never started
    // among them cannot be told apart, with no agent to report: they fail too).
    ensure!(failed > 0, "no call failed with the killed host");
    let runs = std::fs::read_to_string(&*log)?;
    let mut seen = HashSet::new();
    for line in runs.lines() {
        ensure!(seen.insert(line.to_string()), "item {line} ran twice");
    }
    for x in &ok {
        ensure!(
            seen.contains(&x.to_string()),
            "item {x} returned but never ran"
        );
    }
    ensure!(
        pool.apply(sqr, (7,)).await? == 49,
        "the pool stopped serving"
    );
    ensure!(
        eventually(Duration::from_secs(20), || net.pids(0).is_empty()).await,
        "processes left on the host whose agent was killed: {:?}",
        net.pids(0)
    );
    Ok(())
}

/// The pid of the host agent in host `i`.
fn agent_in(net: &Net, i: usize) -> Result<u32, BoxError> {
    let agents: Vec<u32> = net
        .pids(i)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(mp::cluster::AGENT_FLAG))
        })
        .collect();
    match agents[..] {
        [agent] => Ok(agent),
        _ => Err(format!("agents in host {i}: {agents:?}").into()),
    }
}

/// The packets of a worker's link are dropped, both ways, while its agent's connection
/// carries on: the task it runs fails as lost, saying why, well before the task would end,
/// and the host stays; the kernel alone would wait for the worker's answer for ever.
async fn a_worker_link_gone_dead_fails_its_task_while_its_agent_answers() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    if !support::installed("iptables") {
        println!("skipped: no iptables to drop a link's packets with");
        return Ok(());
    }
    let cluster = cluster_on(&net, 1, 1, |b| b.heartbeat_deadline(Duration::from_secs(2))).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let path = temp_path("silent");
    let call = pool.apply_async(pid_to_file_then_sleep, (path.to_string(), 120_000));
    let worker = read_pid(&path).await?;
    let port = net
        .port_of(0, worker, cluster.local_addr().port())
        .ok_or("the worker's link is not to be found")?;
    net.drop_port(0, port)?;
    let err = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .map_err(|_| "the task still waits on its worker's dead link")?
        .err()
        .ok_or("the cut-off worker's task succeeded")?;
    ensure!(err.is_worker_lost(), "{err}");
    ensure!(err.worker_pid() == Some(worker), "{err}");
    ensure!(err.to_string().contains("went silent"), "{err}");
    ensure!(cluster.hosts() == 1, "the host was lost with the link");
    Ok(())
}

/// The head helper: a cluster on the namespaces named in [`NET_VAR`], a pool with a long
/// task running, then "ready" on stdout; it waits to be killed.
async fn head_helper() {
    let Some(net) = std::env::var(NET_VAR).ok().and_then(|n| Net::attach(&n)) else {
        eprintln!("head helper: no namespaces in {NET_VAR}");
        return;
    };
    let cluster = match cluster_on(&net, 2, 2, |b| b).await {
        Ok(c) => c,
        Err(e) => return eprintln!("head helper: {e}"),
    };
    let pool = match Pool::builder().cluster(&cluster).build().await {
        Ok(p) => p,
        Err(e) => return eprintln!("head helper: {e}"),
    };
    if !all_ready(&pool, 4).await {
        return eprintln!("head helper: the workers did not start");
    }
    let _busy = pool.apply_async(pid_to_file_then_sleep, ("/dev/null".to_string(), 60_000));
    if let Err(e) = pool.apply(sqr, (2,)).await {
        return eprintln!("head helper: {e}");
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

async fn killing_the_head_leaves_no_process_on_the_hosts() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    // SAFETY: no thread of this test binary reads the environment while this one writes it
    // (the helper is started below, after).
    unsafe { std::env::set_var(NET_VAR, net.name()) };
    let (mut head, lines) = start_helper_reading("cluster-head", 1).await?;
    ensure!(lines == ["ready"], "the head helper said {lines:?}");
    ensure!(
        net.pids(0).len() >= 2 && net.pids(1).len() >= 2,
        "agents and workers: {:?} {:?}",
        net.pids(0),
        net.pids(1)
    );
    head.start_kill()?;
    head.wait().await?;
    ensure!(
        eventually(Duration::from_secs(20), || net.pids(0).is_empty()
            && net.pids(1).is_empty())
        .await,
        "processes left on the hosts after the head died: {:?} {:?}",
        net.pids(0),
        net.pids(1)
    );
    Ok(())
}

/// Runs this test binary as an agent in host `i` of `net`, with `key` (hex) in its
/// environment; returns its exit code and stderr.
fn run_agent(
    exe: &std::path::Path,
    net: &Net,
    i: usize,
    address: &str,
    key: &str,
) -> Result<(Option<i32>, String), BoxError> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.host_ns(i)])
        .arg(exe)
        .args([mp::cluster::AGENT_FLAG, address, "1", "9"])
        .env(mp::cluster::AUTHKEY_ENV, key)
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn wrong_key_garbage_and_silence_are_refused_without_harm() -> TestResult {
    let Some(net) = Net::new(2) else {
        return Ok(());
    };
    let cluster = Cluster::builder()
        .listener(net.listen()?)
        .authkey(b"the right key".to_vec())
        .build()
        .await?;
    let address = cluster.address().to_string();
    let port = cluster.local_addr().port();
    // A connection that says nothing stays open throughout.
    let _silent = net.connect_from(1, port)?;
    let exe = std::env::current_exe()?;
    let wrong = {
        let (exe, address) = (exe.clone(), address.clone());
        let net = Net::attach(&net.name()).ok_or("attach")?;
        tokio::task::spawn_blocking(move || {
            run_agent(&exe, &net, 0, &address, &hex(b"a wrong key"))
        })
        .await??
    };
    ensure!(
        wrong.0 == Some(2),
        "the agent with a wrong key exited with {:?}",
        wrong.0
    );
    ensure!(
        wrong.1.contains("authentication failed"),
        "its stderr: {}",
        wrong.1
    );
    // Garbage instead of the answer to the challenge: the head closes the connection.
    let closed = {
        let mut garbage = net.connect_from(1, port)?;
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            garbage
                .set_read_timeout(Some(Duration::from_secs(20)))
                .map_err(|e| e.to_string())?;
            let _ = garbage.write_all(&[0xff; 64]);
            let mut rest = Vec::new();
            match garbage.read_to_end(&mut rest) {
                // Closed: at once (unread garbage makes the close a reset), or after the
                // challenge.
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await?
    };
    ensure!(
        closed.is_ok(),
        "the head kept a garbage connection open: {closed:?}"
    );
    ensure!(cluster.hosts() == 0, "{} hosts joined", cluster.hosts());
    // A good agent joins all the same, and its workers serve.
    let mut good = std::process::Command::new("ip")
        .args(["netns", "exec", &net.host_ns(0)])
        .arg(&exe)
        .args([mp::cluster::AGENT_FLAG, &address, "1", "0"])
        .env(mp::cluster::AUTHKEY_ENV, hex(b"the right key"))
        .spawn()?;
    let served = async {
        cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
        let pool = Pool::builder().cluster(&cluster).build().await?;
        Ok::<i64, BoxError>(pool.apply(sqr, (12,)).await?)
    }
    .await;
    let _ = good.kill();
    let _ = good.wait();
    ensure!(served? == 144, "the good agent's worker");
    Ok(())
}

async fn another_build_is_refused_naming_host_and_fingerprints() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    // An example of this crate: the same library, another executable.
    let other = match support::example("cluster_map") {
        Ok(p) => p,
        Err(e) => {
            println!("skipped: {e} (cargo test builds it)");
            return Ok(());
        }
    };
    let cluster = Cluster::builder().listener(net.listen()?).build().await?;
    let (address, key) = (cluster.address().to_string(), hex(cluster.authkey()));
    let net2 = Net::attach(&net.name()).ok_or("attach")?;
    let (code, stderr) =
        tokio::task::spawn_blocking(move || run_agent(&other, &net2, 0, &address, &key)).await??;
    ensure!(
        code == Some(2),
        "the other build's agent exited with {code:?}: {stderr}"
    );
    ensure!(
        stderr.contains("another build") && stderr.contains("10.77.1.2"),
        "its stderr does not name the host: {stderr}"
    );
    let prints: Vec<&str> = stderr
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() >= 16)
        .collect();
    ensure!(
        prints.len() == 2 && prints[0] != prints[1],
        "its stderr does not name both fingerprints: {stderr}"
    );
    ensure!(cluster.hosts() == 0, "the other build joined");
    // A pool waiting for room learns why there is none, not only the log.
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .start_timeout(Duration::from_millis(300))
        .build()
        .await;
    ensure!(
        pool.as_ref()
            .is_err_and(|e| e.to_string().contains("another build")),
        "the pool's error does not say why: {pool:?}"
    );
    Ok(())
}

/// The example's own "hosts" are agents on this machine: it needs no root and no namespace.
async fn example_cluster_map_runs_on_two_local_hosts() -> TestResult {
    let out = support::run_example("cluster_map").await?;
    let sum: u64 = (0..100_000u64).map(|x| x * x).sum();
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines[..lines.len().min(4)]
            == [
                "hosts: 2",
                "results: 100000",
                &format!("sum of squares: {sum}"),
                "workers used: 4 on 2 hosts",
            ],
        "printed {out}"
    );
    Ok(())
}

/// A remote worker whose initializer returns an error: the pool's build fails with that
/// error's text, whether the head hears the worker's answer first or its agent's report of
/// its exit (the exit first gave only "the worker died (exit code 1) during its setup").
async fn a_remote_initializer_error_reaches_the_caller() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    for round in 0..10 {
        let e = Pool::builder()
            .cluster(&cluster)
            .initializer(erring_init, ("no database".to_string(),))
            .build()
            .await;
        match e {
            Err(mp::Error::InitializerFailed { message, .. }) => ensure!(
                message == r#"returned an error: "no database""#,
                "round {round}: {message}"
            ),
            other => return Err(format!("round {round}: got {:?}", other.map(drop)).into()),
        }
    }
    Ok(())
}

/// An initializer that writes its worker's pid to `path`, then hangs.
fn pid_to_file_then_hang(path: String) {
    let _ = std::fs::write(&path, std::process::id().to_string());
    std::thread::sleep(Duration::from_secs(300));
}

/// A build dropped while its remote worker's initializer hangs kills that worker, as a
/// local build does, so that its host's room is free for the next pool (the code before
/// left the worker running, and the next pool found no room).
async fn a_dropped_build_ends_its_remote_worker_and_frees_its_room() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let path = temp_path("hang");
    let build = Pool::builder()
        .cluster(&cluster)
        .initializer(pid_to_file_then_hang, (path.to_string(),))
        .build();
    // Dropped once its worker runs the initializer.
    let worker = tokio::select! {
        pid = read_pid(&path) => pid?,
        built = build => return Err(format!("the build ended: {:?}", built.map(drop)).into()),
    };
    ensure!(
        eventually(Duration::from_secs(20), || !net.pids(0).contains(&worker)).await,
        "the worker {worker} of the dropped build lives on"
    );
    let pool = Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(20))
        .build()
        .await?;
    ensure!(pool.apply(sqr, (3,)).await? == 9, "the next pool's worker");
    Ok(())
}

fn sleepy_init(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A remote initializer, like a local one, has no time limit: one that runs past the
/// start timeout sets its worker up all the same (the code before failed the build with
/// "no answer to its setup").
async fn a_remote_initializer_outlasts_the_start_timeout() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(4))
        .initializer(sleepy_init, (6_000,))
        .build()
        .await?;
    ensure!(
        pool.apply(sqr, (4,)).await? == 16,
        "the slowly set up worker"
    );
    Ok(())
}

/// Exits with code 7 the first time (marking `path`); returns 42 once `path` exists.
fn exit_first_time(path: String) -> u32 {
    if std::fs::metadata(&path).is_err() {
        let _ = std::fs::write(&path, "ran");
        std::process::exit(7);
    }
    42
}

async fn retries_run_again_a_task_whose_worker_died_only_when_asked() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let (once, again) = (temp_path("retry"), temp_path("retry"));
    let strict = Pool::builder().cluster(&cluster).build().await?;
    let err = strict
        .apply(exit_first_time, (once.to_string(),))
        .await
        .err()
        .ok_or("the task survived its worker's death")?;
    ensure!(err.exit_cause() == Some(ExitCause::Code(7)), "{err}");
    drop(strict);
    let retrying = Pool::builder()
        .cluster(&cluster)
        .retries_on_worker_loss(1)
        .build()
        .await?;
    let out = retrying.apply(exit_first_time, (again.to_string(),)).await;
    ensure!(out? == 42, "the task was not run again");
    Ok(())
}

/// Exits with code 7 once `gate` exists (or after 30 s).
fn exit_at(gate: String) -> u32 {
    wait_for_file(gate);
    std::process::exit(7);
}

// A task sent ahead to a worker on another host, behind a running one, and cancelled: the
// worker is asked to drop it by a message it reads between tasks; it dies first, having
// never started the task (its agent reports what it started). The task resolves as
// cancelled and runs on no other worker.
async fn a_task_cancelled_on_a_host_is_not_run_elsewhere_when_its_worker_dies() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let (gate, marker) = (temp_path("gate"), temp_path("never"));
    let first = pool.apply_async(exit_at, (gate.to_string(),));
    let behind = pool.apply_async(touch, (marker.to_string(),));
    ensure!(
        eventually(Duration::from_secs(20), || pool.stats().tasks_running == 2).await,
        "the task behind was not sent ahead"
    );
    behind.cancel_if_queued();
    std::fs::write(&gate, "1")?;
    let lost = first.await;
    let cancelled = behind.await;
    // What a task sent after the cancel finds: the replacement ran whatever it was given.
    let after = pool.apply(sqr, (3,)).await;
    let ran = marker.exists();
    ensure!(
        lost.as_ref().is_err_and(|e| e.is_worker_lost()),
        "the first task gave {lost:?}"
    );
    ensure!(
        cancelled.as_ref().is_err_and(|e| e.is_cancelled()),
        "the cancelled task gave {cancelled:?}"
    );
    ensure!(after? == 9, "the replacement does not serve");
    ensure!(!ran, "the cancelled task ran");
    Ok(())
}

/// Appends a line to `log`, then exits with code 7 once `gate` exists.
fn log_then_exit_at(log: String, gate: String) -> u32 {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
    {
        let _ = f.write_all(b"ran\n");
    }
    exit_at(gate)
}

// A task cancelled (if queued) while it runs on a host's worker runs on, so its worker is
// asked to drop it and cannot; that worker then dies. The pool allows retries, but its caller
// asked that the task not run again once queued: it fails as its worker's loss, having run
// once.
async fn a_task_cancelled_while_it_runs_is_not_run_again_when_its_worker_dies() -> TestResult {
    let Some(net) = Net::new(1) else {
        return Ok(());
    };
    let cluster = cluster_on(&net, 1, 1, |b| b).await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .retries_on_worker_loss(1)
        .build()
        .await?;
    let (log, gate) = (temp_path("log"), temp_path("gate"));
    let task = pool.apply_async(log_then_exit_at, (log.to_string(), gate.to_string()));
    let started = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|s| !s.is_empty())
    })
    .await;
    task.cancel_if_queued();
    std::fs::write(&gate, "1")?;
    let out = task.await;
    let runs = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let after = pool.apply(sqr, (3,)).await;
    ensure!(started, "the task did not start");
    ensure!(
        out.as_ref().is_err_and(|e| e.is_worker_lost()),
        "the task gave {out:?}"
    );
    ensure!(runs == 1, "the task ran {runs} times");
    ensure!(after? == 9, "the replacement does not serve");
    Ok(())
}

/// A head whose address and key come from the environment, which starts an agent by hand
/// with the line `worker_command` gives, run by a shell (the key in the agent's
/// environment), then prints a task's result.
async fn from_env_helper() {
    let outcome = async {
        let cluster = Cluster::from_env()
            .await?
            .ok_or("no cluster in the environment")?;
        let line = cluster.worker_command(1)?;
        let key = std::env::var(mp::cluster::AUTHKEY_ENV)?;
        // As a user pastes it into a shell.
        let mut agent = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec {line}"))
            .env(mp::cluster::AUTHKEY_ENV, key)
            .env_remove(support::process::MODE_VAR)
            .spawn()?;
        let served = async {
            cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
            let pool = Pool::builder().cluster(&cluster).build().await?;
            Ok::<i64, BoxError>(pool.apply(sqr, (11,)).await?)
        }
        .await;
        let _ = agent.kill();
        let _ = agent.wait();
        Ok::<String, BoxError>(format!(
            "{} {} {}",
            cluster.local_addr(),
            cluster.address(),
            served?
        ))
    }
    .await;
    match outcome {
        Ok(line) => println!("{line}"),
        Err(e) => println!("error: {e}"),
    }
}

async fn from_env_and_worker_command_let_an_agent_be_started_by_hand() -> TestResult {
    let (status, out, err) = support::process::run_helper(
        "cluster-from-env",
        &[
            (mp::cluster::ADDRESS_ENV, "127.0.0.1:0".to_string()),
            (mp::cluster::AUTHKEY_ENV, hex(b"a key from the environment")),
            // The name agents dial (a Service's, in Kubernetes), here this machine's.
            (mp::cluster::ADVERTISE_ENV, "localhost".to_string()),
        ],
    )
    .await?;
    ensure!(status.success(), "the helper failed: {err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    ensure!(
        words.len() == 3
            && words[0].starts_with("127.0.0.1:")
            && words[1].starts_with("localhost:")
            && words[2] == "121",
        "the helper printed {out:?} ({err})"
    );
    Ok(())
}

/// Runs `make()`'s future on a current-thread runtime of its own thread, beside a task that
/// ticks every 20 ms; its output and how many times the other task ticked meanwhile.
fn with_ticker<F, T>(make: impl FnOnce() -> F + Send + 'static) -> Result<(T, u32), BoxError>
where
    F: std::future::Future<Output = T>,
    T: Send + 'static,
{
    use std::sync::atomic::{AtomicU32, Ordering};
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let ticks = std::sync::Arc::new(AtomicU32::new(0));
            let ticker = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let out = make().await;
            ticker.abort();
            Ok::<_, BoxError>((out, ticks.load(Ordering::Relaxed)))
        })
    })
    .join()
    .map_err(|_| "the runtime's thread panicked")?
}

/// A launcher of the user's own that starts no host when the cluster is built and is slow
/// to fail when asked for one.
#[derive(Debug)]
struct SlowToFail;

impl mp::launch::Launcher for SlowToFail {
    fn hosts(&self) -> usize {
        0
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, _: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        std::thread::sleep(Duration::from_millis(500));
        Err(mp::Error::InvalidArgument("no such engine".into()))
    }
}

/// A launcher whose commands take a while (an `ssh` that is slow to answer, here one that
/// waits and fails): the cluster's runtime, a current-thread one, runs its other tasks
/// meanwhile, and the build fails with the launcher's error; and so does `scale`.
async fn building_a_cluster_leaves_its_runtime_running_while_launching() -> TestResult {
    let (built, ticks) = with_ticker(|| async {
        let slow_ssh = ["sh", "-c", "sleep 0.5; exit 1", "ssh"];
        Cluster::builder()
            .launcher(mp::launch::Ssh::hosts(["n1"]).program(slow_ssh))
            .build()
            .await
            .is_err()
    })?;
    ensure!(built, "a launcher that fails built a cluster");
    ensure!(
        ticks > 0,
        "no other task ran while the launcher's commands ran"
    );

    let cluster = Cluster::builder().launcher(SlowToFail).build().await?;
    let (scaled, ticks) = with_ticker(move || async move { cluster.scale(1).await })?;
    ensure!(
        matches!(&scaled, Err(mp::Error::InvalidArgument(m)) if m == "no such engine"),
        "scale gave {scaled:?}, not the launcher's error"
    );
    ensure!(ticks > 0, "no other task ran while scale's launch ran");
    Ok(())
}

/// A launcher of the user's own whose launch (an ssh probe to a dead host, say) lasts until
/// the test lets it end, or 30 s; `launching` holds while it runs.
#[derive(Debug)]
struct Gated {
    launching: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl mp::launch::Launcher for Gated {
    fn hosts(&self) -> usize {
        0
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, _: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        use std::sync::atomic::Ordering;
        self.launching.store(true, Ordering::SeqCst);
        let released = self
            .release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(Duration::from_secs(30));
        self.launching.store(false, Ordering::SeqCst);
        match released {
            Ok(()) => Ok(mp::launch::Launched::detached()),
            Err(_) => Err(mp::Error::InvalidArgument("never released".into())),
        }
    }
}

/// While `scale` launches a host, slowly, a pool built on the cluster (which asks the
/// cluster how many workers it runs) fails for want of room, and `shutdown` returns, both
/// on a current-thread runtime and before the launch ends; the code before held the
/// runtime's only thread until the launch was over.
async fn a_pool_and_shutdown_wait_for_no_launch() -> TestResult {
    use std::sync::atomic::{AtomicBool, Ordering};
    let launching = std::sync::Arc::new(AtomicBool::new(false));
    let (release, rx) = std::sync::mpsc::channel();
    let gated = Gated {
        launching: launching.clone(),
        release: std::sync::Mutex::new(rx),
    };
    let watch = launching.clone();
    let (outcome, _): (TestResult, u32) = with_ticker(move || async move {
        let cluster = Cluster::builder().launcher(gated).build().await?;
        let scaling = tokio::spawn({
            let cluster = cluster.clone();
            async move { cluster.scale(1).await }
        });
        ensure!(
            eventually(Duration::from_secs(20), || watch.load(Ordering::SeqCst)).await,
            "the launch never began"
        );
        let pool = Pool::builder()
            .cluster(&cluster)
            .start_timeout(Duration::from_millis(100))
            .build()
            .await;
        ensure!(pool.is_err(), "a pool started with no host");
        ensure!(
            watch.load(Ordering::SeqCst),
            "the pool's build waited for the launch to end"
        );
        cluster.clone().shutdown().await?;
        ensure!(
            watch.load(Ordering::SeqCst),
            "shutdown waited for the launch to end"
        );
        let _ = release.send(());
        scaling.await??;
        ensure!(cluster.hosts() == 0, "a host joined");
        Ok(())
    })?;
    outcome?;
    ensure!(!launching.load(Ordering::SeqCst), "the launch never ended");
    Ok(())
}

/// A launcher of the user's own that counts its launches, each lasting until the test lets
/// it end (or 30 s), and starting nothing.
#[derive(Debug)]
struct Counted {
    launches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Counted {
    fn new() -> (Counted, std::sync::mpsc::Sender<()>) {
        let (release, rx) = std::sync::mpsc::channel();
        let counted = Counted {
            launches: std::sync::Arc::default(),
            release: std::sync::Mutex::new(rx),
        };
        (counted, release)
    }
}

impl mp::launch::Launcher for Counted {
    fn hosts(&self) -> usize {
        0
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, _: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        self.launches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _ = self
            .release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(Duration::from_secs(30));
        Ok(mp::launch::Launched::detached())
    }
}

/// How many launches a scale runs at once.
const LAUNCHES_AT_ONCE: usize = 16;

/// A scale of 20 hosts dropped while its first 16 launches run (a scale runs 16 at once)
/// launches no other host, as its docs say; the code before went on to launch them all.
async fn a_dropped_scale_launches_no_host_it_had_not_begun() -> TestResult {
    use std::sync::atomic::Ordering;
    let (counted, release) = Counted::new();
    let launches = counted.launches.clone();
    let cluster = Cluster::builder().launcher(counted).build().await?;
    {
        let scale = cluster.scale(LAUNCHES_AT_ONCE + 4);
        tokio::pin!(scale);
        let began = tokio::select! {
            r = &mut scale => return Err(format!("the scale ended first: {r:?}").into()),
            began = eventually(Duration::from_secs(20), || launches.load(Ordering::SeqCst) == LAUNCHES_AT_ONCE) => began,
        };
        ensure!(began, "the launches never began");
    }
    for _ in 0..LAUNCHES_AT_ONCE + 4 {
        let _ = release.send(());
    }
    // Scales take turns: this one runs once the dropped one has stopped launching.
    cluster.scale(0).await?;
    let n = launches.load(Ordering::SeqCst);
    ensure!(
        n == LAUNCHES_AT_ONCE,
        "a dropped scale made {n} launches, where {LAUNCHES_AT_ONCE} had begun"
    );
    Ok(())
}

/// A launcher of the user's own for two hosts: host 0's agent starts on this machine at once
/// (its pid is told), host 1's launch hangs until the test lets it fail (or 30 s), as an ssh
/// probe of a frozen host does.
#[derive(Debug)]
struct SecondHangs {
    started: std::sync::mpsc::Sender<u32>,
    release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl mp::launch::Launcher for SecondHangs {
    fn hosts(&self) -> usize {
        2
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, spec: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        if spec.id == 0 {
            let agent = mp::launch::Command::new("{agent}").launch(spec)?;
            let _ = self.started.send(agent.pid().unwrap_or(0));
            return Ok(agent);
        }
        let _ = self
            .release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(Duration::from_secs(30));
        Err(mp::Error::InvalidArgument("host 1 answered nothing".into()))
    }
}

/// A build dropped while one host's launch hangs ends at once the agent another launch
/// started: nobody can hold that cluster any more. The code before left the agent running,
/// joined to a head nobody held, until the hanging launch returned (an ssh probe's 30 s, or
/// a copy's minutes).
async fn a_dropped_build_ends_the_agents_it_started_while_a_launch_hangs() -> TestResult {
    let (started, agent) = std::sync::mpsc::channel();
    let (release, hang) = std::sync::mpsc::channel();
    let launcher = SecondHangs {
        started,
        release: std::sync::Mutex::new(hang),
    };
    {
        let mut build = Box::pin(Cluster::builder().launcher(launcher).build());
        let told = tokio::task::spawn_blocking(move || agent.recv_timeout(Duration::from_secs(20)));
        let agent = tokio::select! {
            r = &mut build => return Err(format!("the build ended: {:?}", r.map(drop)).into()),
            pid = told => pid??,
        };
        drop(build);
        let gone = eventually(Duration::from_secs(10), || {
            support::is_zombie_or_gone(agent)
        })
        .await;
        let _ = release.send(());
        ensure!(
            gone,
            "the agent {agent} of a dropped build runs on while another launch hangs"
        );
    }
    Ok(())
}

/// `shutdown` while a scale of 20 hosts runs its first 16 launches: the scale launches no
/// more and says why; the code before went on to launch the others.
async fn shutdown_stops_a_scale_under_way() -> TestResult {
    use std::sync::atomic::Ordering;
    let (counted, release) = Counted::new();
    let launches = counted.launches.clone();
    let cluster = Cluster::builder().launcher(counted).build().await?;
    let scaling = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.scale(LAUNCHES_AT_ONCE + 4).await }
    });
    ensure!(
        eventually(Duration::from_secs(20), || launches.load(Ordering::SeqCst)
            == LAUNCHES_AT_ONCE)
        .await,
        "the launch never began"
    );
    cluster.clone().shutdown().await?;
    for _ in 0..LAUNCHES_AT_ONCE + 4 {
        let _ = release.send(());
    }
    let scaled = scaling.await?;
    let n = launches.load(Ordering::SeqCst);
    ensure!(
        n == LAUNCHES_AT_ONCE,
        "a scale went on after shutdown: {n} launches"
    );
    ensure!(
        matches!(&scaled, Err(mp::Error::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted),
        "the scale stopped by shutdown gave {scaled:?}"
    );
    Ok(())
}

/// What a [`Gathering`] launcher has seen and is told.
#[derive(Debug, Default)]
struct Gathered {
    /// The hosts launched, in the order their launches began.
    ids: Vec<usize>,
    /// How many launches have begun since `together` was last set.
    begun: usize,
    /// How many launches each waits for before it goes on.
    together: usize,
    /// Hosts whose next launch fails.
    refused: HashSet<usize>,
}

/// A launcher of the user's own whose launches wait for one another: each goes on once
/// `together` of them have begun, or fails after 20 s alone; it then fails for a refused
/// host (once), and starts the others' agents on this machine.
#[derive(Debug, Clone)]
struct Gathering(std::sync::Arc<(std::sync::Mutex<Gathered>, std::sync::Condvar)>);

impl Gathering {
    fn new(together: usize, refused: impl IntoIterator<Item = usize>) -> Gathering {
        let gathered = Gathered {
            together,
            refused: refused.into_iter().collect(),
            ..Gathered::default()
        };
        Gathering(std::sync::Arc::new((
            std::sync::Mutex::new(gathered),
            std::sync::Condvar::new(),
        )))
    }

    fn gathered(&self) -> std::sync::MutexGuard<'_, Gathered> {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl mp::launch::Launcher for Gathering {
    fn hosts(&self) -> usize {
        0
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, spec: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        let mut g = self.gathered();
        g.ids.push(spec.id);
        g.begun += 1;
        self.0.1.notify_all();
        let (mut g, waited) = self
            .0
            .1
            .wait_timeout_while(g, Duration::from_secs(20), |g| g.begun < g.together)
            .unwrap_or_else(|p| p.into_inner());
        if waited.timed_out() {
            return Err(mp::Error::InvalidArgument(format!(
                "host {} launched alone: {} of {} launches began",
                spec.id, g.begun, g.together
            )));
        }
        if g.refused.remove(&spec.id) {
            return Err(mp::Error::InvalidArgument(format!(
                "host {} refused",
                spec.id
            )));
        }
        drop(g);
        mp::launch::Command::new("{agent}").launch(spec)
    }
}

/// A scale launches its hosts at once (each launch here waits until all have begun), tries
/// every host when some fail, names each that failed, keeps those that started, and a
/// later scale launches only the missing ones. The code before launched one host after
/// another: its first launch, alone, failed the scale.
async fn a_scale_launches_its_hosts_together_and_keeps_those_that_started() -> TestResult {
    use mp::launch::Launcher;
    let gathering = Gathering::new(3, [0, 2]);
    ensure!(gathering.hosts() == 0, "the build would launch hosts");
    let cluster = Cluster::builder()
        .launcher(gathering.clone())
        .build()
        .await?;
    let e = match cluster.scale(3).await {
        Ok(()) => return Err("the scale with two refused hosts succeeded".into()),
        Err(e) => e.to_string(),
    };
    ensure!(
        e.contains("host 0 refused") && e.contains("host 2 refused") && !e.contains("alone"),
        "the scale's error does not name both refused hosts: {e}"
    );
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    {
        let mut g = gathering.gathered();
        g.together = 2;
        g.begun = 0;
    }
    cluster.scale(3).await?;
    cluster.wait_for_hosts(3, Duration::from_secs(30)).await?;
    let ids = gathering.gathered().ids.clone();
    let (first, again) = ids.split_at(3.min(ids.len()));
    let sorted = |ids: &[usize]| {
        let mut v = ids.to_vec();
        v.sort_unstable();
        v
    };
    ensure!(
        sorted(first) == [0, 1, 2] && sorted(again) == [0, 2],
        "the launches were of hosts {ids:?}"
    );
    let pool = Pool::builder().cluster(&cluster).build().await?;
    ensure!(
        all_ready(&pool, 3).await,
        "the pool's 3 workers were not all ready"
    );
    Ok(())
}

/// A launcher whose agent ignores SIGTERM (a wrapper slow to end its remote side), so that
/// ending it takes the whole grace period and then SIGKILL; it tells the agent's pid.
#[derive(Debug)]
struct Stubborn(std::sync::mpsc::Sender<u32>);

impl mp::launch::Launcher for Stubborn {
    fn hosts(&self) -> usize {
        1
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, _: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        // Told once SIGTERM is ignored, so that the test's SIGTERM never comes before.
        let mut ready = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut ready)?;
        }
        let _ = self.0.send(child.id());
        Ok(mp::launch::Launched::process(child))
    }
}

/// Ending a cluster's agents takes up to their grace period; neither dropping the cluster
/// nor `shutdown().await` holds up the other tasks of its runtime (a current-thread one
/// here) meanwhile. The drop returns while the agent still runs, and the agent is killed
/// and reaped all the same: by the time `shutdown` returns, or, after a drop, by the time
/// the runtime stops.
async fn ending_a_cluster_leaves_its_runtime_running() -> TestResult {
    let (tx, rx) = std::sync::mpsc::channel();
    let cluster = Cluster::builder()
        .launcher(Stubborn(tx.clone()))
        .build()
        .await?;
    let agent = rx.recv_timeout(Duration::from_secs(20))?;
    let (after_drop, _) = with_ticker(move || async move {
        drop(cluster);
        !support::is_zombie_or_gone(agent)
    })?;
    ensure!(
        after_drop,
        "dropping the cluster waited for its agent {agent} to end"
    );
    ensure!(
        support::is_zombie_or_gone(agent),
        "the agent {agent} outlived the runtime that dropped its cluster"
    );

    let cluster = Cluster::builder().launcher(Stubborn(tx)).build().await?;
    let agent = rx.recv_timeout(Duration::from_secs(20))?;
    let (shut, ticks) = with_ticker(move || async move { cluster.shutdown().await })?;
    shut?;
    ensure!(
        ticks > 0,
        "no other task ran while shutdown waited for the agent"
    );
    ensure!(
        support::is_zombie_or_gone(agent),
        "the agent {agent} outlived shutdown"
    );
    Ok(())
}

/// A peer that holds the key (it passes the challenge, here through `mp::Client`, which
/// speaks the same exchange) but then sends garbage instead of a hello: the head closes the
/// connection and takes in no host.
async fn garbage_after_the_challenge_is_refused() -> TestResult {
    let cluster = Cluster::builder().authkey(b"k".to_vec()).build().await?;
    let conn = mp::Client::connect::<Vec<u8>>(cluster.local_addr(), Some(b"k")).await?;
    conn.send_bytes(&[0xc1, 0xff, 0x00, 0x13]).await?;
    let answer = tokio::time::timeout(Duration::from_secs(20), conn.recv_bytes()).await?;
    ensure!(answer.is_err(), "the head answered garbage with {answer:?}");
    ensure!(cluster.hosts() == 0, "garbage joined as a host");
    Ok(())
}

/// The worker output events the head logged: (host, pid, stream, line).
static CAPTURED: std::sync::Mutex<Vec<(String, u64, String, String)>> =
    std::sync::Mutex::new(Vec::new());

/// A subscriber that keeps the head's events about worker output.
struct Capture;

#[derive(Default)]
struct Fields {
    host: String,
    pid: u64,
    stream: String,
    message: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "host" => self.host = format!("{value:?}"),
            "stream" => self.stream = format!("{value:?}").trim_matches('"').to_string(),
            "message" => self.message = format!("{value:?}"),
            _ => {}
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "pid" {
            self.pid = value;
        }
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "tokio_multiprocessing::worker"
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((f.host, f.pid, f.stream, f.message));
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

fn say(x: u32) -> u32 {
    println!("hello {x} from a worker");
    eprintln!("a warning about {x}");
    std::process::id()
}

/// A cluster of one "host", an agent on this machine (no namespace, no root needed), for one
/// worker.
async fn one_host_here() -> Result<Cluster, BoxError> {
    Ok(Cluster::builder()
        .launcher(
            mp::launch::Command::new("{agent}")
                .hosts(1)
                .workers_per_host(1),
        )
        .build()
        .await?)
}

/// A remote worker's answers say when its memory reaches the pool's `max_memory_per_child`,
/// as a local one's do: it is retired after its task, and its host's agent starts another.
async fn a_remote_worker_whose_memory_reaches_the_limit_is_replaced() -> TestResult {
    let cluster = one_host_here().await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .max_memory_per_child(256 << 20)
        .build()
        .await?;
    let first = pool.apply(keep_memory, (300,)).await?;
    let next = pool.apply(pid, ()).await?;
    ensure!(
        next != first,
        "the remote worker {first} took another task at 300 MiB of a limit of 256"
    );
    ensure!(
        pool.stats().workers_lost == 0,
        "a retired worker counted as lost: {:?}",
        pool.stats()
    );
    pool.terminate().await?;
    Ok(())
}

/// The "host" is an agent on this machine (no namespace, no root needed).
async fn worker_output_comes_back_as_tracing_events_naming_host_and_pid() -> TestResult {
    let cluster = one_host_here().await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let pid = u64::from(pool.apply(say, (5,)).await?);
    let seen = |stream: &str, line: &str| {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(h, p, s, m)| h.contains("127.0.0.1#0") && *p == pid && s == stream && m == line)
    };
    ensure!(
        eventually(Duration::from_secs(20), || seen(
            "stdout",
            "hello 5 from a worker"
        ) && seen(
            "stderr",
            "a warning about 5"
        ))
        .await,
        "events seen: {:?}",
        CAPTURED.lock().unwrap_or_else(|p| p.into_inner())
    );
    Ok(())
}

/// A task sent ahead to a remote worker behind a running one, then cancelled, never runs,
/// and the running one finishes: the pool, which does not see what a remote worker
/// started, asks the worker to drop the task rather than kill it. The "host" is an agent
/// on this machine (no namespace, no root needed).
async fn a_task_cancelled_behind_a_running_one_on_a_remote_worker_never_runs() -> TestResult {
    let cluster = one_host_here().await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .build()
        .await?;
    support::pool::cancel_behind_a_running_task(&pool).await
}

/// Prints `n` numbered lines; returns its pid and its parent's (its host's agent).
fn print_lines(n: u32) -> (u32, u32) {
    for i in 0..n {
        println!("line {i} of a worker that prints far more than anyone reads at once");
    }
    (std::process::id(), std::os::unix::process::parent_id())
}

/// A pool whose only host is lost terminates at once, though the start of the worker that
/// replaces its lost one waits for a host's room until a long start timeout: that start is
/// dropped, where `terminate` waited for it to give up. The "host" is an agent on this
/// machine (no namespace, no root needed).
async fn terminate_waits_for_no_start_once_the_only_host_is_lost() -> TestResult {
    let cluster = one_host_here().await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(600))
        .build()
        .await?;
    let (_, agent) = pool.apply(print_lines, (0,)).await?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent as i32), Signal::SIGKILL)?;
    ensure!(
        eventually(Duration::from_secs(30), || cluster.hosts() == 0).await,
        "the killed agent's host is still counted"
    );
    // Its worker's replacement now waits for room.
    ensure!(
        eventually(Duration::from_secs(30), || pool.stats().workers_starting
            > 0)
        .await,
        "no replacement is starting: {:?}",
        pool.stats()
    );
    match tokio::time::timeout(Duration::from_secs(60), pool.terminate()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err("terminate waited for a start that waits for room".into()),
    }
}

/// A cluster that launches `hosts` hosts with `command`, none of which gets an agent
/// connected, and the error of a pool's start on it, which finds no room within 2 s.
async fn start_error_with_no_room(
    command: &str,
    hosts: usize,
) -> Result<(Cluster, String), Box<dyn std::error::Error + Send + Sync>> {
    let cluster = Cluster::builder()
        .launcher(
            mp::launch::Command::new(command)
                .hosts(hosts)
                .workers_per_host(1),
        )
        .build()
        .await?;
    let built = Pool::builder()
        .cluster(&cluster)
        .start_timeout(Duration::from_secs(2))
        .build()
        .await;
    let e = built.err().ok_or("a pool was built on no host")?;
    Ok((cluster, e.to_string()))
}

/// A launched command that exits at once (an engine that refused the job, say): a pool's
/// start that finds no host's room says so, with its exit status, where it said only that
/// no host had room.
async fn a_launch_that_ended_at_once_is_named_when_no_host_has_room() -> TestResult {
    let (_cluster, e) = start_error_with_no_room("false", 1).await?;
    ensure!(
        e.contains("no host of the cluster had room")
            && e.contains("launched processes that ended: host 0: pid")
            && e.contains("exit status: 1"),
        "{e}"
    );
    Ok(())
}

/// Launched commands that hang and never start their agent (an engine that waits, a
/// wrong template): a pool's start that finds no host's room names each host whose
/// command still runs with no agent joined, with its pid, where it said only that no
/// host had room; dropping the cluster ends the commands, leaving no child.
async fn a_launch_that_hangs_is_named_when_no_host_has_room() -> TestResult {
    let (cluster, e) = start_error_with_no_room("sleep 600", 2).await?;
    ensure!(
        e.contains("no host of the cluster had room")
            && e.contains("launched processes that still run, their agent not connected")
            && e.contains("host 0: pid")
            && e.contains("host 1: pid"),
        "{e}"
    );
    // The pids named are this process's children running `sleep`.
    let sleepers: Vec<u32> = e
        .split("pid ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let running = children_named("sleep");
    drop(cluster);
    ensure!(
        sleepers.len() == 2 && sleepers.iter().all(|p| running.contains(p)),
        "the pids named ({sleepers:?}) are not the hanging commands ({running:?}): {e}"
    );
    ensure!(
        eventually(Duration::from_secs(20), || {
            let left = support::all_children();
            sleepers.iter().all(|p| !left.contains(p))
        })
        .await,
        "the hanging commands outlived the cluster: {:?}",
        support::all_children()
    );
    Ok(())
}

// A launch command that exits while the cluster lives (one that starts its agent in the
// background, or asks an engine to, as `kubectl run` does) is reaped when it ends, rather
// than left a zombie until the cluster is dropped.
async fn a_launch_command_that_exits_is_reaped_while_the_cluster_lives() -> TestResult {
    let cluster = Cluster::builder()
        .launcher(
            mp::launch::Command::new("true")
                .hosts(3)
                .workers_per_host(1),
        )
        .build()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = children_named("true");
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = children_named("true");
    }
    let zombies: Vec<u32> = left
        .iter()
        .copied()
        .filter(|&c| support::is_zombie_or_gone(c))
        .collect();
    drop(cluster);
    ensure!(
        left.is_empty(),
        "launch processes {left:?} still there 10 s after they exited (zombies: {zombies:?})"
    );
    Ok(())
}

/// The children of this process, zombies included, whose command name is `name`.
fn children_named(name: &str) -> Vec<u32> {
    support::all_children()
        .into_iter()
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == name)
        })
        .collect()
}

/// The peak resident memory of process `pid` in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or("no VmHWM line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("no VmHWM value")?
        .parse()?)
}

/// A worker that prints 400,000 lines (28 MB): every line reaches the head, in order, and
/// its host's agent holds a bounded backlog of them (its workers wait in their writes
/// meanwhile), where it queued every line the head had not taken yet. The "host" is an
/// agent on this machine (no namespace, no root needed).
async fn a_worker_printing_much_grows_its_agent_little() -> TestResult {
    const LINES: u32 = 400_000;
    let cluster = one_host_here().await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let (pid, agent) = pool.apply(print_lines, (LINES,)).await?;
    let pid = u64::from(pid);
    let mine = || {
        CAPTURED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, p, s, _)| *p == pid && s == "stdout")
            .map(|(_, _, _, m)| m.clone())
            .collect::<Vec<_>>()
    };
    let all = eventually(Duration::from_secs(120), || mine().len() >= LINES as usize).await;
    let lines = mine();
    ensure!(all, "{} of {LINES} lines arrived", lines.len());
    for (i, line) in lines.iter().enumerate() {
        ensure!(
            line.starts_with(&format!("line {i} ")),
            "line {i} is {line:?}"
        );
    }
    let peak = peak_kib(agent)?;
    // 7.5 MiB measured, against 53 MiB for an agent that queued every line.
    ensure!(peak < 24 * 1024, "the agent's peak memory: {peak} KiB");
    Ok(())
}

/// More silent connections than [`mp::MAX_HANDSHAKES`] on the head's port (a child holds 400
/// that never answer the challenge): an agent started after all of them joins and its worker
/// serves long before they would time out, the head closes the oldest silent ones rather than
/// hold a descriptor for each, and it holds none once they are gone. The "host" is an agent
/// on this machine (no namespace, no root needed).
async fn silent_sockets_lock_no_agent_out() -> TestResult {
    let cluster = Cluster::builder().authkey(b"k".to_vec()).build().await?;
    let addr = cluster.local_addr();
    let silent = support::SilentSockets::open(addr).await?;
    let line = cluster.worker_command(1)?;
    let mut words = line.split(' ');
    let program = words.next().ok_or("an empty worker command")?;
    let mut agent = std::process::Command::new(program)
        .args(words)
        .env(mp::cluster::AUTHKEY_ENV, hex(cluster.authkey()))
        .spawn()?;
    // Half the timeout of the challenge, which waiting behind the silent sockets would take.
    let joined = cluster.wait_for_hosts(1, Duration::from_secs(10)).await;
    let bound = mp::MAX_HANDSHAKES + 16;
    let mut holding = 0;
    let held = eventually(Duration::from_secs(10), || {
        holding = support::connections_on_port(addr.port());
        holding <= bound
    })
    .await;
    let served = async {
        joined?;
        let pool = Pool::builder().cluster(&cluster).build().await?;
        Ok::<i64, BoxError>(pool.apply(sqr, (12,)).await?)
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let closed = silent.close().await;
    ensure!(served? == 144, "the agent's worker");
    ensure!(
        held,
        "the head held {holding} connections, more than {bound}"
    );
    closed?;
    ensure!(
        eventually(Duration::from_secs(20), || support::connections_on_port(
            addr.port()
        ) == 0)
        .await,
        "the head still holds {} connections",
        support::connections_on_port(addr.port())
    );
    Ok(())
}

/// An agent asked for more workers than a host may run refuses to start, naming the limit,
/// and no host joins; one asked for the limit itself is taken in.
async fn an_agent_asked_for_too_many_workers_refuses_to_start() -> TestResult {
    let cluster = Cluster::builder().authkey(b"k".to_vec()).build().await?;
    let start = |workers: usize| -> Result<std::process::Child, BoxError> {
        let line = cluster.worker_command(workers)?;
        let mut words = line.split(' ');
        let program = words.next().ok_or("an empty worker command")?;
        Ok(std::process::Command::new(program)
            .args(words)
            .env(mp::cluster::AUTHKEY_ENV, hex(cluster.authkey()))
            .stderr(std::process::Stdio::piped())
            .spawn()?)
    };
    let too_many = start(mp::cluster::MAX_WORKERS_PER_HOST + 1)?;
    let out = tokio::task::spawn_blocking(move || too_many.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "the agent exited with {:?}: {stderr}",
        out.status
    );
    ensure!(
        stderr.contains(&mp::cluster::MAX_WORKERS_PER_HOST.to_string()),
        "its stderr does not name the limit: {stderr}"
    );
    ensure!(cluster.hosts() == 0, "the agent joined");
    let mut most = start(mp::cluster::MAX_WORKERS_PER_HOST)?;
    let joined = cluster.wait_for_hosts(1, Duration::from_secs(20)).await;
    let _ = most.kill();
    let _ = most.wait();
    joined?;
    Ok(())
}

/// A task that runs past the pool's task timeout on a remote worker fails naming the
/// worker's host beside its pid, as a task whose remote worker died does: the pid alone
/// is a number on a machine the caller cannot tell. The "host" is an agent on this machine
/// (no namespace, no root needed).
async fn a_remote_task_that_times_out_names_its_host() -> TestResult {
    let cluster = one_host_here().await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .task_timeout(Duration::from_millis(500))
        .build()
        .await?;
    let worker = pool.apply(pid, ()).await?;
    let err = pool
        .apply(pid_to_file_then_sleep, ("/dev/null".to_string(), 30_000))
        .await
        .err()
        .ok_or("the task outlived its timeout")?;
    ensure!(err.is_timeout(), "{err}");
    ensure!(err.worker_pid() == Some(worker), "{err}");
    ensure!(
        err.worker_host().is_some_and(|h| h.contains("127.0.0.1#0")),
        "the error does not name the host: {err:?}"
    );
    ensure!(err.to_string().contains("127.0.0.1#0"), "{err}");
    ensure!(pool.apply(sqr, (5,)).await? == 25, "the pool serves on");
    Ok(())
}

/// An agent launched under a wrapper that does not pass signals on (`sh -c '<agent> | cat'`,
/// as a template that keeps a log would be) is ended by `Cluster::shutdown`, as its docs
/// say: the wrapper alone was sent SIGTERM, and the agent under it, still connected,
/// served the cluster's pools on. The "host" is an agent on this machine (no namespace, no
/// root needed).
async fn shutdown_ends_an_agent_launched_under_a_wrapper() -> TestResult {
    let head = shutdown_after_a_task(mp::launch::Command::argv([
        "sh",
        "-c",
        "{exe} --tokio-multiprocessing-agent {address} {n} {id} 2>&1 | cat",
    ]))
    .await?;
    ensure!(
        eventually(Duration::from_secs(20), || head.hosts() == 0).await,
        "the agent under the wrapper still serves the cluster"
    );
    Ok(())
}

/// Builds a cluster on `launcher` (one worker per host), runs a task on the first host
/// that joins, shuts the cluster down, and checks that the agent and the worker that ran the
/// task end; returns a handle of the cluster.
async fn shutdown_after_a_task(launcher: mp::launch::Command) -> Result<Cluster, BoxError> {
    let cluster = Cluster::builder()
        .launcher(launcher.workers_per_host(1))
        .build()
        .await?;
    cluster.wait_for_hosts(1, Duration::from_secs(20)).await?;
    let pool = Pool::builder().cluster(&cluster).build().await?;
    let (worker, agent) = pool.apply(print_lines, (0,)).await?;
    let head = cluster.clone();
    cluster.shutdown().await?;
    ensure!(
        eventually(Duration::from_secs(20), || support::is_zombie_or_gone(
            agent
        ) && support::is_zombie_or_gone(
            worker
        ))
        .await,
        "the agent {agent} or its worker {worker} outlived shutdown"
    );
    Ok(head)
}

/// A cluster whose heartbeat and head deadlines are days long (or `Duration::MAX`) starts
/// workers and serves: each worker link's silence deadline was handed to the kernel as is,
/// which refuses a keep-alive interval over 32,767 s and a user timeout over `i32::MAX` ms,
/// so every worker's start failed ("Invalid argument (os error 22)", or "its host was lost
/// before the worker's link came"). The "host" is an agent on this machine (no namespace,
/// no root needed).
async fn a_cluster_with_deadlines_of_days_starts_workers() -> TestResult {
    let days = Duration::from_secs(3 * 86_400);
    for (heartbeat, head) in [
        (days, Cluster::DEFAULT_HEAD_DEADLINE),
        (Cluster::DEFAULT_HEARTBEAT_DEADLINE, days),
        (Duration::MAX, Duration::MAX),
    ] {
        let cluster = Cluster::builder()
            .heartbeat_deadline(heartbeat)
            .head_deadline(head)
            .launcher(
                mp::launch::Command::new("{agent}")
                    .hosts(1)
                    .workers_per_host(1),
            )
            .build()
            .await?;
        let served = async {
            let pool = Pool::builder()
                .cluster(&cluster)
                .start_timeout(Duration::from_secs(20))
                .build()
                .await?;
            Ok::<i64, BoxError>(pool.apply(sqr, (9,)).await?)
        }
        .await;
        match served {
            Ok(81) => {}
            other => {
                return Err(
                    format!("heartbeat {heartbeat:?}, head deadline {head:?}: {other:?}").into(),
                );
            }
        }
    }
    Ok(())
}

/// Agents whose launch command started them in the background and exited (`setsid -f`
/// here; `hq submit`, `docker run -d` and `kubectl run` do the same): `shutdown` ends the one
/// joined (it is told to exit), and one that joins only afterwards is refused and exits.
/// The code before had nothing left to signal: both agents stayed joined, serving the
/// cluster's pools, for as long as the head lived.
async fn shutdown_ends_an_agent_its_launch_command_left_in_the_background() -> TestResult {
    // Host 1's agent waits 3 s before it starts: it joins after the shutdown.
    let head = shutdown_after_a_task(
        mp::launch::Command::argv([
            "setsid",
            "-f",
            "sh",
            "-c",
            r#"sleep $(({id} * 3)); exec "$0" "$@""#,
            "{agent}",
        ])
        .hosts(2),
    )
    .await?;
    // Host 1's agent, still asleep at the shutdown, is refused when it joins.
    let address = head.address().to_string();
    ensure!(
        eventually(Duration::from_secs(20), || agents_dialling(&address)
            .is_empty())
        .await,
        "agents {:?} run on after shutdown",
        agents_dialling(&address)
    );
    ensure!(
        head.hosts() == 0,
        "{} host(s) joined after shutdown",
        head.hosts()
    );
    Ok(())
}

/// The processes whose command line names `address` (the agents that dial it, and their
/// launch commands).
fn agents_dialling(address: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(address))
        })
        .collect()
}

/// A launcher of the user's own for three batch jobs of an engine (as `hq submit` or
/// `condor_submit` make) that run nothing here; each job's cancel waits until all three
/// cancels have begun, and fails after 5 s alone, as a cancel waits for an engine that does
/// not answer (`scancel` while Slurm's controller is down).
#[derive(Debug)]
struct CancelsTogether {
    /// A directory where each cancel marks that it has begun.
    gate: String,
}

impl mp::launch::Launcher for CancelsTogether {
    fn hosts(&self) -> usize {
        3
    }
    fn workers_per_host(&self) -> usize {
        1
    }
    fn launch(&self, spec: &mp::launch::AgentSpec) -> mp::Result<mp::launch::Launched> {
        let mut cancel = std::process::Command::new("sh");
        cancel.args([
            "-c",
            r#"mkdir -p "$0" && touch "$0/$1" && i=0 &&
               while [ "$(ls "$0" | wc -l)" -lt 3 ]; do
                   i=$((i + 1)); [ $i -gt 100 ] && { echo "cancel $1 waited alone" >&2; exit 1; }
                   sleep 0.05
               done"#,
            &self.gate,
            &spec.id.to_string(),
        ]);
        Ok(mp::launch::Launched::job(cancel))
    }
}

/// `shutdown` cancels its jobs together, so that an engine slow to answer each cancel
/// delays the shutdown once, not once per job; the code before ran one cancel after the
/// other (a hundred jobs whose engine does not answer took a hundred of its timeouts), and
/// fails here, each cancel waiting alone.
async fn shutdown_cancels_its_jobs_together() -> TestResult {
    let gate = temp_path("cancels");
    let cluster = Cluster::builder()
        .launcher(CancelsTogether {
            gate: gate.to_string(),
        })
        .build()
        .await?;
    cluster.shutdown().await?;
    Ok(())
}

/// What a worker sees: the values of the variables `names` (as bytes, for values that are
/// not UTF-8), its working directory and its pid.
fn env_seen(names: Vec<String>) -> (Vec<Option<Vec<u8>>>, std::path::PathBuf, u32) {
    use std::os::unix::ffi::OsStringExt;
    let vars = names
        .iter()
        .map(|n| std::env::var_os(n).map(OsStringExt::into_vec))
        .collect();
    let cwd = std::env::current_dir().unwrap_or_default();
    (vars, cwd, std::process::id())
}

/// An initializer that fails unless the variable `name` is set.
fn require_var(name: String) -> Result<(), String> {
    match std::env::var_os(&name) {
        Some(_) => Ok(()),
        None => Err(format!("{name} is not set for the initializer")),
    }
}

/// A pool's variables (new ones, one over the agent's, one that is not UTF-8) and its
/// directory reach its workers on a cluster's host, replacements included, before their
/// initializer runs; the agent's own variables stay beside them, and a relative directory
/// is taken from the agent's. The "host" is an agent on this machine, started by `env` in a
/// directory of its own with variables of its own (no namespace, no root needed).
async fn a_cluster_worker_runs_with_the_pools_variables_and_directory() -> TestResult {
    use std::os::unix::ffi::OsStrExt;
    let home = temp_path("agent-home");
    std::fs::create_dir_all(home.join("work"))?;
    let home_arg = home.to_str().ok_or("a temporary path that is not UTF-8")?;
    let launcher = mp::launch::Command::argv([
        "env",
        "-C",
        home_arg,
        "TKMP_AGENT_ONLY=agent",
        "TKMP_BOTH=agent",
        "{agent}",
    ])
    .hosts(1)
    .workers_per_host(1);
    let cluster = Cluster::builder().launcher(launcher).build().await?;
    let bytes = std::ffi::OsStr::from_bytes(b"\xff=\xfe");
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .maxtasksperchild(1)
        .initializer(require_var, ("TKMP_POOL_ONLY".to_string(),))
        .env("TKMP_BOTH", "pool")
        .envs([("TKMP_POOL_ONLY", "pool")])
        .env("TKMP_BYTES", bytes)
        .current_dir("work")
        .build()
        .await?;
    let names: Vec<String> = [
        "TKMP_AGENT_ONLY",
        "TKMP_BOTH",
        "TKMP_POOL_ONLY",
        "TKMP_BYTES",
    ]
    .map(String::from)
    .to_vec();
    let want: Vec<Option<Vec<u8>>> = [&b"agent"[..], b"pool", b"pool", bytes.as_bytes()]
        .map(|v| Some(v.to_vec()))
        .to_vec();
    let mut pids = HashSet::new();
    // With one task per worker, the second runs in the first one's replacement.
    for _ in 0..2 {
        let (vars, cwd, pid) = pool.apply(env_seen, (names.clone(),)).await?;
        ensure!(vars == want, "worker {pid} sees {vars:?}");
        ensure!(cwd == home.join("work"), "worker {pid} runs in {cwd:?}");
        pids.insert(pid);
    }
    ensure!(pids.len() == 2, "no replacement ran: {pids:?}");
    ensure!(
        std::env::var_os("TKMP_BOTH").is_none(),
        "the head's environment changed"
    );
    pool.terminate().await?;
    Ok(())
}

/// A directory that a cluster's host lacks (absolute, relative to the agent's, or a file)
/// fails each start there with the error a local start gives, of the same kind, naming the
/// host and the directory; a pool that can start no worker fails its build rather than
/// trying for ever, and the agent serves the next pool. The "host" is an agent on this
/// machine (no namespace, no root needed).
async fn a_directory_missing_on_the_host_fails_the_build_naming_host_and_path() -> TestResult {
    use std::io::ErrorKind;
    let cluster = one_host_here().await?;
    cluster.wait_for_hosts(1, Duration::from_secs(30)).await?;
    let file = temp_path("not-a-dir");
    std::fs::write(&file, b"")?;
    let file = file.to_str().ok_or("a temporary path that is not UTF-8")?;
    // The agent runs in this process's directory, where it was started.
    let resolved = std::env::current_dir()?.join("no-such-tkmp-dir");
    let resolved = resolved.to_str().ok_or("a directory that is not UTF-8")?;
    for (dir, kind, named) in [
        (
            "/no/such/tkmp-dir",
            ErrorKind::NotFound,
            "/no/such/tkmp-dir",
        ),
        ("no-such-tkmp-dir", ErrorKind::NotFound, resolved),
        (file, ErrorKind::NotADirectory, file),
    ] {
        // Two workers for a host with room for one: the second start waits for the room
        // the first one's failure frees, then fails in its turn.
        let built = Pool::builder()
            .cluster(&cluster)
            .processes(2)
            .current_dir(dir)
            .build()
            .await;
        match built {
            Err(mp::Error::Io(e))
                if e.kind() == kind
                    && e.to_string().contains("127.0.0.1#0")
                    && e.to_string().contains(named) => {}
            other => return Err(format!("{dir}: {:?}", other.map(drop)).into()),
        }
    }
    ensure!(cluster.hosts() == 1, "the agent left");
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .current_dir("/")
        .build()
        .await?;
    ensure!(pool.apply(sqr, (7,)).await? == 49, "the next pool failed");
    Ok(())
}

/// Of two hosts, only the second has the pool's directory: once a start failed on the
/// first, the next starts go to the second while it has room, so a pool of one worker
/// renewed after every task runs each task there. The first host connects first (the
/// second's launch waits a second), so it wins every tie of room; before, each
/// replacement went to it, failed, and was tried there again, the host with the most
/// room, and no task after the first ran. The "hosts" are agents on this machine, each
/// started in a directory of its own (no namespace, no root needed).
async fn starts_go_to_the_host_that_has_the_directory_while_it_has_room() -> TestResult {
    let home = temp_path("two-homes");
    std::fs::create_dir_all(home.join("h0"))?;
    std::fs::create_dir_all(home.join("h1").join("work"))?;
    let home_arg = home.to_str().ok_or("a temporary path that is not UTF-8")?;
    let launcher = mp::launch::Command::argv([
        "sh",
        "-c",
        "sleep \"$1\" && cd \"$2\" && shift 2 && exec \"$@\"",
        "sh",
        "{id}",
        &format!("{home_arg}/h{{id}}"),
        "{agent}",
    ])
    .hosts(2)
    .workers_per_host(2);
    let cluster = Cluster::builder().launcher(launcher).build().await?;
    cluster.wait_for_hosts(2, Duration::from_secs(30)).await?;
    let pool = Pool::builder()
        .cluster(&cluster)
        .processes(1)
        .maxtasksperchild(1)
        .current_dir("work")
        .build()
        .await?;
    let mut pids = HashSet::new();
    for i in 0..6 {
        let (_, cwd, pid) =
            tokio::time::timeout(Duration::from_secs(60), pool.apply(env_seen, (Vec::new(),)))
                .await
                .map_err(|_| format!("task {i} did not run within 60 s"))??;
        ensure!(
            cwd == home.join("h1").join("work"),
            "task {i} ran in {cwd:?}"
        );
        pids.insert(pid);
    }
    ensure!(
        pids.len() == 6,
        "each task had a worker of its own: {pids:?}"
    );
    pool.terminate().await?;
    cluster.shutdown().await?;
    Ok(())
}

/// In a process of its own (the frame limit is the process's): with a lowered frame limit,
/// a pool whose environment makes a worker's start request too large for a frame fails its
/// build with `FrameTooLarge`; the host stays, and serves the next pool. The request went
/// out, failed to be sent, and ended the link to the host, which lost it and all its
/// workers, and so did each retry to the next host.
async fn start_with_a_large_environment() -> Result<String, String> {
    mp::set_max_frame_size(4096);
    let cluster = one_host_here().await.map_err(|e| e.to_string())?;
    cluster
        .wait_for_hosts(1, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let built = Pool::builder()
        .cluster(&cluster)
        .env("BIG", "x".repeat(5000))
        .build()
        .await;
    if !matches!(built, Err(mp::Error::FrameTooLarge { .. })) {
        return Err(format!("the build: {:?}", built.map(drop)));
    }
    if cluster.hosts() != 1 {
        return Err("the host was lost".into());
    }
    let pool = Pool::builder()
        .cluster(&cluster)
        .env("SMALL", "1")
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let got = pool.apply(sqr, (7,)).await.map_err(|e| e.to_string())?;
    Ok(format!("{got}"))
}

async fn an_environment_too_large_for_a_frame_fails_the_start_not_the_host() -> TestResult {
    let mut h = mp::Process::call(start_with_a_large_environment, ())
        .start()
        .await?;
    let out = tokio::time::timeout(Duration::from_secs(50), h.join())
        .await
        .map_err(|_| "the child did not end")??;
    ensure!(out == Ok("49".to_string()), "{out:?}");
    Ok(())
}
