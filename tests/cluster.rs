//! The same pool on several hosts: hosts are network namespaces this test makes (see
//! `support/netns.rs`), each running a host agent started by the `Command` launcher
//! (`ip netns exec <ns> <this test binary> --tokio-multiprocessing-agent ...`). Skipped, with
//! a message, where namespaces cannot be made (not root).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::netns::Net;
use support::{TestResult, eventually};
use tokio_multiprocessing::{self as mp, Cluster, Pool};

fn main() {
    mp::init();
    support::run(trials![map_of_100_000_items_runs_on_both_hosts,]);
}

/// The network namespace this process runs in (each host has its own).
fn netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
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
) -> Result<Cluster, Box<dyn std::error::Error + Send + Sync>> {
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
