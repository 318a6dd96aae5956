//! A tour of tokio-multiprocessing: a pool whose results are futures, a worker that crashes
//! without taking the pool down, and a queue and an event between real processes.
//!
//! `cargo run --release --example tour`

use std::time::Instant;

use tokio_multiprocessing as mp;

/// CPU-bound work, as a process pool is for.
fn count_primes(below: u64) -> usize {
    (2..below)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count()
}

/// A task whose process dies mid-task (an abort: no unwinding, no goodbye).
fn crash() -> u32 {
    std::process::abort()
}

/// A producer in a process of its own: squares into a queue, then sets an event.
async fn produce(q: mp::Queue<u64>, done: mp::Event, n: u64) -> mp::Result<()> {
    for i in 1..=n {
        q.put(i * i).await?;
    }
    done.set();
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // children run `main` up to here, then their task, and exit

    let pool = mp::Pool::new(2).await?;
    println!("pool of 2 worker processes started");

    // map: results in input order, the work spread over the workers.
    let t = Instant::now();
    let counts = pool
        .map(count_primes, [50_000u64, 60_000, 70_000, 80_000])
        .await?;
    println!("primes below 50k..80k: {counts:?} ({:.0?})", t.elapsed());

    // apply_async: submitted at once, awaited as futures.
    let a = pool.apply_async(count_primes, (10_000u64,));
    let b = pool.apply_async(count_primes, (20_000u64,));
    println!("apply_async: {} and {}", a.await?, b.await?);

    // A worker killed mid-task fails that task only, with the cause; the pool replaces it.
    match pool.apply(crash, ()).await {
        Err(e) if e.is_worker_lost() => println!("crashed task: {e}"),
        other => println!("crashed task: unexpected {other:?}"),
    }
    let after = pool.map(count_primes, vec![1_000u64; 100]).await?;
    println!(
        "after the crash: {} more tasks ran, all {}",
        after.len(),
        after[0]
    );

    // A queue and an event between this process and a producer process.
    let q = mp::Queue::<u64>::new()?;
    let done = mp::Event::new()?;
    let mut producer = mp::Process::new(produce, (q.clone(), done.clone(), 5))
        .start()
        .await?;
    let mut squares = Vec::new();
    for _ in 0..5 {
        squares.push(q.get().await?);
    }
    done.wait().await?;
    println!(
        "from the producer process: {squares:?}, exit code {}",
        producer.join().await?
    );

    pool.terminate().await?;
    println!("pool terminated, no process left behind");
    Ok(())
}
