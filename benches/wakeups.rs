//! Wake-up figures: one round trip between two processes through each of the crate's ways
//! of waiting, on a multi-thread runtime, from a spawned task, each beside a raw eventfd
//! ping-pong between two processes with blocking reads (the kernel's floor on this machine)
//! measured in the same run. The target is at most twice the floor.
//!
//! - `pipe_round_trip_us`: a `Pipe` message there and back (an echoing child);
//! - `queue_round_trip_us`: an item through one `Queue` and back through another;
//!   `queue_1kib_round_trip_us` the same with 1 KiB items, which travel through the queue's
//!   socket, not its ring;
//! - `event_round_trip_us`: `Event` set → wake → set back → wake;
//! - `lock_handoff_round_trip_us`: two `Lock`s handed over and back (each side releases the
//!   lock the other waits for: two contended hand-offs);
//! - `manager_call_us`: a `Manager` dict `get`, a request and its reply;
//! - `apply_round_trip_us`: `Pool::apply` of a trivial function on a one-worker pool;
//!   `apply_round_trip_block_on_us` the same from the thread of `Runtime::block_on`, outside
//!   the runtime's worker threads (as the body of `#[tokio::main]` runs).
//!
//! Each figure runs in chunks that alternate with chunks of its baseline, so that both meet
//! the same machine (load, idle states of the cores); a figure is the median of its chunks.
//! Run with `cargo bench --bench wakeups [-- WORD ...]` (only the figures whose names hold
//! one of the words). Figure lines as described in `benches/support/mod.rs`.

mod support;

use std::future::Future;
use std::time::Instant;

use support::eventfd::EventfdPingPong;
use support::{BoxError, Figure, Report};
use tokio_multiprocessing as mp;

/// Round trips per chunk.
const ROUND_TRIPS: u32 = 2_000;
/// Chunks per figure, unless `TKMP_BENCH_REPEAT` says otherwise.
const CHUNKS: usize = 7;

// ---- child targets: each answers `n` round trips ----

async fn pipe_echo(conn: mp::Connection<u64>, n: u32) {
    for _ in 0..n {
        let Ok(v) = conn.recv().await else { return };
        if conn.send(&v).await.is_err() {
            return;
        }
    }
}

async fn queue_echo<T>(there: mp::Queue<T>, back: mp::Queue<T>, n: u32)
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    for _ in 0..n {
        let Ok(v) = there.get().await else { return };
        if back.put(v).await.is_err() {
            return;
        }
    }
}

/// Waits for `ping` (released by the parent), then releases `pong` for the parent.
async fn lock_echo(ping: mp::Lock, pong: mp::Lock, n: u32) {
    for _ in 0..n {
        match ping.lock().await {
            Ok(g) => g.forget(),
            Err(_) => return,
        }
        if pong.release().is_err() {
            return;
        }
    }
}

fn noop(x: u64) -> u64 {
    x
}

// ---- the runner ----

/// One warm-up `round_trip`, then `chunks` chunks of [`ROUND_TRIPS`] of it, each followed by
/// as many raw eventfd round trips; microseconds per round trip, ours and the baseline's.
async fn beside_floor<F, Fut>(name: &str, mut round_trip: F) -> Result<Figure, BoxError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = mp::Result<()>>,
{
    round_trip().await?;
    let chunks = support::runs(CHUNKS);
    let raw = EventfdPingPong::start(chunks as u32 * ROUND_TRIPS + 1)?;
    raw.round_trip()?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..chunks {
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            round_trip().await?;
        }
        ours.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS));
        let t = Instant::now();
        for _ in 0..ROUND_TRIPS {
            raw.round_trip()?;
        }
        floor.push(t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUND_TRIPS));
    }
    raw.finish()?;
    Ok(Figure::new(name, "us", ours).baseline(Figure::new("eventfd_round_trip_us", "us", floor)))
}

/// Round trips a figure's child answers: its chunks and a warm-up.
fn child_rounds() -> u32 {
    support::runs(CHUNKS) as u32 * ROUND_TRIPS + 1
}

async fn pipe() -> Result<Figure, BoxError> {
    let (a, b) = mp::Pipe::<u64>::new()?;
    let mut p = mp::Process::new(pipe_echo, (b, child_rounds()))
        .start()
        .await?;
    let mut i = 0u64;
    let once = || {
        i += 1;
        let (a, i) = (&a, i);
        async move {
            a.send(&i).await?;
            let v = a.recv().await?;
            assert_eq!(v, i, "the echo answered another message");
            Ok(())
        }
    };
    let figure = beside_floor("pipe_round_trip_us", once).await?;
    p.join().await?;
    Ok(figure)
}

/// `item` through one queue to an echoing child and back through another.
async fn queue<T>(name: &str, item: T) -> Result<Figure, BoxError>
where
    T: Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (there, back) = (mp::Queue::<T>::new()?, mp::Queue::<T>::new()?);
    let mut p = mp::Process::new(
        queue_echo::<T>,
        (there.clone(), back.clone(), child_rounds()),
    )
    .start()
    .await?;
    let once = || async {
        there.put(item.clone()).await.map_err(mp::Error::from)?;
        back.get().await?;
        Ok(())
    };
    let figure = beside_floor(name, once).await?;
    p.join().await?;
    Ok(figure)
}

async fn event() -> Result<Figure, BoxError> {
    let (ping, pong) = (mp::Event::new()?, mp::Event::new()?);
    let mut p = mp::Process::new(
        support::ponger::event_ponger,
        (ping.clone(), pong.clone(), child_rounds()),
    )
    .start()
    .await?;
    let once = || async {
        ping.set();
        pong.wait().await?;
        pong.clear();
        Ok(())
    };
    let figure = beside_floor("event_round_trip_us", once).await?;
    p.join().await?;
    Ok(figure)
}

async fn lock() -> Result<Figure, BoxError> {
    let (ping, pong) = (mp::Lock::new()?, mp::Lock::new()?);
    // Both start held here: the child waits for `ping`, we wait for `pong`.
    ping.lock().await?.forget();
    pong.lock().await?.forget();
    let mut p = mp::Process::new(lock_echo, (ping.clone(), pong.clone(), child_rounds()))
        .start()
        .await?;
    let once = || async {
        ping.release()?;
        pong.lock().await?.forget();
        Ok(())
    };
    let figure = beside_floor("lock_handoff_round_trip_us", once).await?;
    p.join().await?;
    Ok(figure)
}

async fn manager() -> Result<Figure, BoxError> {
    let m = mp::Manager::start().await?;
    let d = m.dict::<u32, u32>().await?;
    d.insert(1, 2).await?;
    let once = || async {
        assert_eq!(d.get(&1).await?, Some(2));
        Ok(())
    };
    let figure = beside_floor("manager_call_us", once).await?;
    m.shutdown().await?;
    Ok(figure)
}

async fn apply(name: &str) -> Result<Figure, BoxError> {
    let pool = mp::Pool::new(1).await?;
    let once = || async {
        assert_eq!(pool.apply(noop, (3,)).await?, 3);
        Ok(())
    };
    let figure = beside_floor(name, once).await?;
    pool.close();
    pool.join().await?;
    Ok(figure)
}

fn main() -> Result<(), BoxError> {
    mp::init();
    let words: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted =
        move |name: &str| words.is_empty() || words.iter().any(|w| name.contains(w.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new("wakeups");
    report.note("eventfd_round_trip_us: two eventfds, blocking reads, a forked child");
    let apply_block_on = wanted("apply_round_trip_block_on_us");
    // The figures run as a spawned task, as a server's request handlers do (and as
    // `benches/pool.rs` runs); a future that `block_on` runs sits outside the runtime's worker
    // threads, so every wake-up of it from a worker is one more between threads: the apply
    // figure is measured that way too.
    let figures = async move {
        if wanted("pipe_round_trip_us") {
            report.add(pipe().await?);
        }
        if wanted("queue_round_trip_us") {
            report.add(queue("queue_round_trip_us", 7u64).await?);
        }
        if wanted("queue_1kib_round_trip_us") {
            let item = serde_bytes::ByteBuf::from(vec![7u8; 1024]);
            report.add(queue("queue_1kib_round_trip_us", item).await?);
        }
        if wanted("event_round_trip_us") {
            report.add(event().await?);
        }
        if wanted("lock_handoff_round_trip_us") {
            report.add(lock().await?);
        }
        if wanted("manager_call_us") {
            report.add(manager().await?);
        }
        if wanted("apply_round_trip_us") {
            report.add(apply("apply_round_trip_us").await?);
        }
        Ok::<_, BoxError>(report)
    };
    let mut report = rt.block_on(async { tokio::spawn(figures).await })??;
    if apply_block_on {
        report.add(rt.block_on(apply("apply_round_trip_block_on_us"))?);
    }
    report.finish();
    Ok(())
}
