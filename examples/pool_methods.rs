//! Seed 002's tour of the pool's methods: an initializer, `apply_async`, `map_async`,
//! `starmap_async` and `imap_unordered`.
//!
//! ```python
//! def poolWorker():
//!     print(f"worker in process {os.getpid()}")
//!     time.sleep(1)
//! def poolWorkerOne(name):
//!     print(f"worker one {name} in process {os.getpid()}")
//!     time.sleep(random.random())
//!     return name
//! def poolWorkerTwo(first, second):
//!     res = first + second
//!     print(f"worker two {res} in process {os.getpid()}")
//!     time.sleep(1./(first+1))
//!     return res
//! def poolInit():
//!     print("pool init")
//! if __name__ == '__main__':
//!     workers = multiprocessing.Pool(5, poolInit) # poolInit runs once per worker
//!     with workers:
//!         for i in range(5):
//!             workers.apply_async(poolWorker)
//!         arg = [(i, i) for i in range(10)]
//!         workers.map_async(poolWorkerOne, arg)
//!         results = workers.starmap_async(poolWorkerTwo, arg) # each tuple is split into arguments
//!         print("Starmap:", results.get())
//!         results = workers.imap_unordered(poolWorkerOne, arg)
//!         for r in results: # r comes in completion order (imap keeps the input order)
//!             print("Unordered:", r)
//!     # the pool must have been closed
//!     workers.join()
//! ```
//!
//! Sleeps are a tenth of the seed's. Prints `pool init` five times, the workers' lines,
//! `Starmap: [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]`, then ten `Unordered:` lines.

use std::time::Duration;

use futures::StreamExt;
use tokio_multiprocessing as mp;

fn pool_worker() {
    println!("worker in process {}", std::process::id());
    std::thread::sleep(Duration::from_millis(100));
}

fn pool_worker_one(name: (u32, u32)) -> (u32, u32) {
    println!("worker one {name:?} in process {}", std::process::id());
    // Stands in for random.random(): some spread in completion order.
    std::thread::sleep(Duration::from_millis(u64::from((name.0 * 37) % 10) * 10));
    name
}

fn pool_worker_two(first: u32, second: u32) -> u32 {
    let res = first + second;
    println!("worker two {res} in process {}", std::process::id());
    std::thread::sleep(Duration::from_millis(100 / u64::from(first + 1)));
    res
}

fn pool_init() {
    println!("pool init");
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a worker takes its role before `main`
    let workers = mp::Pool::builder()
        .processes(5)
        .initializer(pool_init, ())
        .build()
        .await?;
    let mut background = Vec::new();
    for _ in 0..5 {
        background.push(workers.apply_async(pool_worker, ()));
    }
    let arg: Vec<(u32, u32)> = (0..10).map(|i| (i, i)).collect();
    let ones = workers.map_async(pool_worker_one, arg.clone());
    let results = workers.starmap_async(pool_worker_two, arg.clone());
    println!("Starmap: {:?}", results.await?);
    let mut results = workers.imap_unordered(pool_worker_one, arg);
    while let Some(r) = results.next().await {
        println!("Unordered: {:?}", r?);
    }
    // Python's `with workers:` terminates the pool here; we let the first tasks finish.
    futures::future::try_join_all(background).await?;
    ones.await?;
    workers.close();
    workers.join().await?;
    Ok(())
}
