//! A tour of tokio-multiprocessing: a pool whose results are futures (beside the same work
//! done sequentially), a stream of results with progress, a worker that crashes without
//! taking the pool down, a task that overruns its timeout and is killed, a cancelled task,
//! and a queue and an event between real processes.
//!
//! `cargo run --release --example tour`

use std::time::{Duration, Instant};

use futures::StreamExt;

use tokio_multiprocessing as mp;

/// CPU-bound work, as a process pool is for.
fn count_primes(below: u64) -> usize {
    (2..below)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count()
}

/// A task that never ends by itself.
fn hang() -> u32 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
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
    mp::init(); // optional: children take their role before `main` and never run it

    let pool = mp::Pool::new(2).await?;
    println!("pool of 2 worker processes started");

    // map: results in input order, the work spread over the workers; the same work done
    // here, one after the other, beside it.
    let inputs = [50_000u64, 60_000, 70_000, 80_000];
    let t = Instant::now();
    let counts = pool.map(count_primes, inputs).await?;
    let parallel = t.elapsed();
    let t = Instant::now();
    let sequential: Vec<usize> = inputs.iter().map(|&n| count_primes(n)).collect();
    let sequential_time = t.elapsed();
    assert_eq!(counts, sequential);
    println!(
        "primes below 50k..80k: {counts:?} ({parallel:.0?} on the pool, {sequential_time:.0?} in one process)"
    );

    // imap_unordered: a stream of results as they complete, with progress.
    let mut stream = pool.imap_unordered(count_primes, (1..=200u64).map(|i| i * 100));
    let (mut done, mut total) = (0, 0);
    while let Some(r) = stream.next().await {
        total += r?;
        done += 1;
        if done % 50 == 0 {
            println!("imap_unordered: {done}/200 done");
        }
    }
    println!("imap_unordered: {total} primes counted in all");

    // apply_async: submitted at once, awaited as futures.
    let a = pool.apply_async(count_primes, (10_000u64,));
    let b = pool.apply_async(count_primes, (20_000u64,));
    println!("apply_async: {} and {}", a.await?, b.await?);

    // A worker killed mid-task fails that task only, with the cause; the pool replaces it.
    match pool.apply(crash, ()).await {
        Err(e) if e.is_worker_lost() => println!("crashed task: {e}"),
        other => println!("crashed task: unexpected {other:?}"),
    }
    // A task that overruns its timeout: its worker is killed and replaced.
    match pool
        .apply_timeout(hang, (), Duration::from_millis(200))
        .await
    {
        Err(e) if e.is_timeout() => println!("hung task: {e}"),
        other => println!("hung task: unexpected {other:?}"),
    }

    // A cancelled task: a running one's worker is killed; the handle says it was cancelled.
    let hung = pool.apply_async(hang, ());
    tokio::time::sleep(Duration::from_millis(100)).await;
    hung.cancel();
    match hung.await {
        Err(e) if e.is_cancelled() => println!("cancelled task: {e}"),
        other => println!("cancelled task: unexpected {other:?}"),
    }

    let after = pool.map(count_primes, vec![1_000u64; 100]).await?;
    println!(
        "after the crash, the timeout and the cancel: {} more tasks ran, all {}",
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
