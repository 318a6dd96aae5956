//! Code that uses processes, tested with the default harness and nothing else: no `main` of
//! ours, no `init()`, tests run in parallel on libtest's threads. Each child takes its role
//! before `main` (the crate's constructor), so it never runs the harness.

use std::time::Duration;

use tokio_multiprocessing::{self as mp, Pool, Process, Queue, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn expect_three(x: u64) {
    assert_eq!(x, 3);
}

fn pid() -> u32 {
    std::process::id()
}

async fn send_squares(q: Queue<u64>, n: u64) -> mp::Result<()> {
    for i in 0..n {
        q.put(i * i).await?;
    }
    Ok(())
}

/// A pool's answers, and proof they came from other processes.
async fn map_on_a_pool_of_its_own() -> mp::Result<()> {
    let pool = Pool::new(2).await?;
    let squares = pool.map(square, 0..1000u64).await?;
    assert_eq!(squares, (0..1000u64).map(square).collect::<Vec<_>>());
    let worker = pool.apply(pid, ()).await?;
    assert_ne!(
        worker,
        std::process::id(),
        "the task ran in the test's own process"
    );
    pool.close();
    pool.join().await?;
    Ok(())
}

#[tokio::test]
async fn a_tokio_test_builds_a_pool() -> mp::Result<()> {
    map_on_a_pool_of_its_own().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_test_builds_its_own_pool_at_the_same_time() -> mp::Result<()> {
    map_on_a_pool_of_its_own().await
}

#[tokio::test]
async fn both_re_executing_start_methods_run_a_process() -> mp::Result<()> {
    // `fork` needs a single-threaded process, which a test harness never is.
    for method in [StartMethod::Spawn, StartMethod::ForkServer] {
        let q = Queue::new()?;
        let mut p = Process::new(send_squares, (q.clone(), 5u64))
            .start_method(method)
            .start()
            .await?;
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(q.get_timeout(Duration::from_secs(30)).await?);
        }
        assert_eq!(got, vec![0, 1, 4, 9, 16], "{method:?}");
        assert_eq!(p.join().await?, 0, "{method:?}");
    }
    Ok(())
}

#[test]
fn a_plain_test_starts_a_process_on_a_runtime_it_builds() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = rt.block_on(async {
        let mut p = Process::new(expect_three, (3,))
            .start_method(StartMethod::Spawn)
            .start()
            .await?;
        p.join().await
    });
    assert_eq!(code.expect("the process ran"), 0);
}
