//! A pool meets values larger than a frame may be. This binary lowers the maximum frame size
//! to 1 MiB for itself and its workers, so that such values are cheap to make.

mod support;

use std::time::Duration;

use serde_bytes::ByteBuf;
use support::{TestResult, test};
use tokio_multiprocessing::{self as mp, Error, Pool};

const MAX: usize = 1 << 20;

fn main() {
    mp::init();
    mp::set_max_frame_size(MAX);
    support::run(vec![
        test(
            "an_oversized_argument_fails_its_call_alone",
            an_oversized_argument_fails_its_call_alone,
        ),
        test(
            "an_argument_whose_frame_is_oversized_fails_its_call_alone",
            an_argument_whose_frame_is_oversized_fails_its_call_alone,
        ),
        test(
            "an_oversized_result_fails_its_task_and_the_worker_lives",
            an_oversized_result_fails_its_task_and_the_worker_lives,
        ),
    ]);
}

/// The length of `b`, and this worker's pid.
fn len_and_pid(b: ByteBuf) -> (usize, u32) {
    (b.len(), std::process::id())
}

/// `n` bytes.
fn bytes(n: usize) -> ByteBuf {
    ByteBuf::from(vec![7u8; n])
}

fn pid() -> u32 {
    std::process::id()
}

/// Submits small calls around `big`, on a Pool(1): `big` fails with `FrameTooLarge`, every
/// other call succeeds, and the one worker is still the same process.
async fn oversized_among_others(big: usize) -> TestResult {
    let pool = Pool::new(1).await?;
    let worker = pool.apply(pid, ()).await?;
    let before: Vec<_> = (0..20)
        .map(|i| pool.apply_async(len_and_pid, (ByteBuf::from(vec![0; i]),)))
        .collect();
    let huge = pool.apply_async(len_and_pid, (ByteBuf::from(vec![1; big]),));
    let after: Vec<_> = (0..20)
        .map(|i| pool.apply_async(len_and_pid, (ByteBuf::from(vec![0; i]),)))
        .collect();
    match tokio::time::timeout(Duration::from_secs(20), huge).await {
        Ok(Err(Error::FrameTooLarge { size, max })) => {
            ensure!(max == MAX && size as usize > MAX, "size {size}, max {max}");
        }
        other => return Err(format!("the oversized call gave {other:?}").into()),
    }
    for (i, h) in before.into_iter().chain(after).enumerate() {
        let (len, pid) = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .map_err(|_| format!("call {i} never resolved"))??;
        ensure!(len == i % 20, "call {i} saw {len} bytes");
        ensure!(
            pid == worker,
            "call {i} ran in {pid}, not in the pool's worker {worker}"
        );
    }
    ensure!(
        pool.apply(pid, ()).await? == worker,
        "the worker was replaced"
    );
    Ok(())
}

// Issue 10: an argument over the maximum frame size wedged the pool; it must fail at
// submission and affect nothing else.
async fn an_oversized_argument_fails_its_call_alone() -> TestResult {
    oversized_among_others(2 * MAX).await
}

// The arguments fit, but not with the task's head in front of them: the frame is checked
// before it reaches the worker's socket.
async fn an_argument_whose_frame_is_oversized_fails_its_call_alone() -> TestResult {
    // A one-tuple of `bin 32`: 1 + 5 bytes around the data.
    oversized_among_others(MAX - 6).await
}

// Issue 10: a result over the maximum frame size killed its worker; it must fail that task
// with the size and the limit, and the worker must live on.
async fn an_oversized_result_fails_its_task_and_the_worker_lives() -> TestResult {
    let pool = Pool::new(1).await?;
    let worker = pool.apply(pid, ()).await?;
    match pool.apply(bytes, (2 * MAX,)).await {
        Err(Error::FrameTooLarge { size, max }) => {
            ensure!(
                max == MAX && size as usize > 2 * MAX,
                "size {size}, max {max}"
            );
        }
        other => return Err(format!("the oversized result gave {other:?}").into()),
    }
    ensure!(
        pool.apply(bytes, (100,)).await?.len() == 100,
        "a small result"
    );
    ensure!(
        pool.apply(pid, ()).await? == worker,
        "the worker was replaced"
    );
    let e = pool.map(bytes, vec![MAX / 2; 4]).chunksize(4).await;
    ensure!(
        matches!(e, Err(Error::FrameTooLarge { .. })),
        "a chunk too large: {e:?}"
    );
    ensure!(
        pool.apply(pid, ()).await? == worker,
        "the worker was replaced by the map"
    );
    Ok(())
}
