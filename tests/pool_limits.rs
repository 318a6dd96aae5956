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
        test(
            "an_answer_the_pool_cannot_read_fails_its_tasks_saying_why",
            an_answer_the_pool_cannot_read_fails_its_tasks_saying_why,
        ),
        test(
            "an_answer_too_large_for_the_pools_memory_fails_its_task_alone",
            an_answer_too_large_for_the_pools_memory_fails_its_task_alone,
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
    let e = tokio::time::timeout(Duration::from_secs(20), huge).await;
    match e.as_ref().ok().and_then(|r| r.as_ref().err()) {
        Some(e) if matches!(e.caller_error(), Some(Error::FrameTooLarge { .. })) => {
            let (size, max) = e.frame_too_large().ok_or("no size")?;
            ensure!(max == MAX && size as usize > MAX, "size {size}, max {max}");
        }
        _ => return Err(format!("the oversized call gave {e:?}").into()),
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
    let e = pool.apply(bytes, (2 * MAX,)).await;
    match e.as_ref().err().and_then(|e| e.frame_too_large()) {
        Some((size, max)) => {
            ensure!(
                max == MAX && size as usize > 2 * MAX,
                "size {size}, max {max}"
            );
            let text = e.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            ensure!(
                text.contains(&size.to_string()) && text.contains(&MAX.to_string()),
                "the error names neither size nor limit: {text}"
            );
        }
        None => return Err(format!("the oversized result gave {e:?}").into()),
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
        e.as_ref().is_err_and(|e| e.frame_too_large().is_some()),
        "a chunk too large: {e:?}"
    );
    ensure!(
        pool.apply(pid, ()).await? == worker,
        "the worker was replaced by the map"
    );
    Ok(())
}

/// Runs in a spawned child (the frame limit is the whole process's): a pool's worker answers
/// with a result the pool can no longer read, its limit lowered after the worker started.
/// The task fails as the worker's loss, saying why the pool killed it, and a new worker
/// serves. Exits 0 if so.
fn unreadable_answer_probe() {
    support::process::exit_unless_ok("unreadable answer probe", || async {
        let pool = Pool::new(1).await?;
        let worker = pool.apply(pid, ()).await?;
        mp::set_max_frame_size(64 * 1024);
        let answer = pool.apply(bytes, (200_000,)).await;
        let why = ["exceeds the maximum frame size"];
        killed_for_its_answer(&pool, worker, answer, &why).await
    });
}

/// Fails unless `answer` failed as the loss of `worker`, which the pool killed because what
/// it sent could not be read, for a reason that says each of `why`, and another worker now
/// serves.
async fn killed_for_its_answer(
    pool: &Pool,
    worker: u32,
    answer: Result<ByteBuf, mp::TaskError>,
    why: &[&str],
) -> Result<(), support::process::BoxError> {
    let e = match answer {
        Err(e) => e,
        Ok(b) => return Err(format!("a result of {} bytes was read", b.len()).into()),
    };
    let text = e.to_string();
    let named = text.contains("the pool killed it")
        && text.contains("could not be read")
        && why.iter().all(|w| text.contains(w));
    ensure!(e.is_worker_lost() && named, "the task failed with: {text}");
    ensure!(
        pool.apply(pid, ()).await? != worker,
        "the worker that sent it still serves"
    );
    Ok(())
}

/// Fails unless a child running `probe` (an [`support::process::exit_unless_ok`]) exits 0.
async fn probe_passes<F: mp::Target<(), M, Output = ()>, M>(probe: F) -> TestResult {
    let mut p = mp::Process::new(probe, ()).start().await?;
    support::process::probe_passed(&mut p).await
}

/// The pool reads no further from a worker whose answer it cannot read (a frame over the
/// limit, lowered after the worker started): it kills the worker at once, and the tasks
/// that worker held fail saying why, where they failed only after the pool had waited 5 s
/// for the worker to exit, as killed by SIGKILL, the cause unsaid.
async fn an_answer_the_pool_cannot_read_fails_its_tasks_saying_why() -> TestResult {
    probe_passes(unreadable_answer_probe).await
}

/// Runs in a spawned child, at the default maximum frame size: a pool's worker answers with
/// 512 MiB, more than the child's address space, limited after its worker started, leaves
/// room for. The task fails as the worker's loss, saying that the answer could not be
/// allocated and naming the limit, and a new worker serves. Exits 0 if so.
fn answer_beyond_memory_probe() {
    support::process::exit_unless_ok("answer beyond memory probe", || async {
        use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
        mp::set_max_frame_size(mp::DEFAULT_MAX_FRAME_SIZE);
        let pool = Pool::new(1).await?;
        let worker = pool.apply(pid, ()).await?;
        // A large answer first, so that what it leaves behind (a thread that drops large
        // frames, a kept buffer) exists before the limit.
        ensure!(
            pool.apply(bytes, (4 * MAX,)).await?.len() == 4 * MAX,
            "4 MiB"
        );
        setrlimit(
            Resource::RLIMIT_AS,
            support::address_space()? + (128 << 20),
            RLIM_INFINITY,
        )?;
        let answer = pool.apply(bytes, (512 << 20,)).await;
        let why = ["cannot allocate", "RLIMIT_AS"];
        killed_for_its_answer(&pool, worker, answer, &why).await?;
        ensure!(
            pool.apply(bytes, (100,)).await?.len() == 100,
            "a small result"
        );
        Ok(())
    });
}

/// An answer larger than the memory the pool's process may have (a limit on its address
/// space) aborted that process ("memory allocation of N bytes failed"); it fails its task
/// alone, naming the limit, and the pool serves on with a new worker.
async fn an_answer_too_large_for_the_pools_memory_fails_its_task_alone() -> TestResult {
    probe_passes(answer_beyond_memory_probe).await
}
