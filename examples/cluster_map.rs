//! A map across the hosts of a cluster.
//!
//! By default the "hosts" are two host agents started on this machine by the `Command`
//! launcher (template `{agent}`: this very executable), so it runs anywhere with no cluster
//! at all. The same program runs on real hosts by changing only the launcher:
//!
//! ```text
//! // ssh: agents started over the user's own ssh (BatchMode, keys, config); the key
//! // goes on ssh's stdin, the binary is copied where a host lacks it
//! .launcher(mp::launch::Ssh::hosts(["n1", "n2"]).workers_per_host(8))
//! // Slurm: inside an allocation, one `srun` step per node; outside, `sbatch` jobs
//! .launcher(mp::launch::Slurm::nodes(2).workers_per_host(8))
//! ```
//!
//! with `.listen("0.0.0.0:0").advertise("<this host's name>")`. Or, with
//! `TOKIO_MULTIPROCESSING_CLUSTER=0.0.0.0:7000` and `TOKIO_MULTIPROCESSING_AUTHKEY=<hex>` in
//! the environment, it listens there and waits for agents started by any engine with the
//! line it prints (`Cluster::from_env`).
//!
//! Prints the hosts, the number of results, their sum and the hosts that ran them.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_multiprocessing as mp;

/// The square of `x`, and the process that computed it.
fn square(x: u64) -> (u64, u32) {
    (x * x, std::process::id())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: an agent or a worker takes its role before `main`
    let cluster = match mp::Cluster::from_env().await? {
        Some(cluster) => {
            println!(
                "waiting for agents; start each with: {}",
                cluster.worker_command(2)?
            );
            cluster
        }
        None => {
            mp::Cluster::builder()
                .launcher(
                    mp::launch::Command::new("{agent}")
                        .hosts(2)
                        .workers_per_host(2),
                )
                .build()
                .await?
        }
    };
    cluster.wait_for_hosts(2, Duration::from_secs(60)).await?;
    println!("hosts: {}", cluster.hosts());
    let pool = mp::Pool::builder().cluster(&cluster).build().await?;
    let results = pool.map(square, 0..100_000u64).chunksize(1000).await?;
    let sum: u64 = results.iter().map(|(sq, _)| sq).sum();
    let pids: BTreeSet<u32> = results.iter().map(|(_, pid)| *pid).collect();
    let hosts: BTreeSet<String> = cluster.workers().into_iter().map(|w| w.host).collect();
    println!("results: {}", results.len());
    println!("sum of squares: {sum}");
    println!("workers used: {} on {} hosts", pids.len(), hosts.len());
    pool.close();
    pool.join().await?;
    Ok(())
}
