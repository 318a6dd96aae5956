//! `Queue::shutdown` and `Queue::shutdown_immediate` (Python 3.13's `Queue.shutdown`) between
//! real processes: consumers end without sentinels, waiters in other processes wake, and
//! nothing put before a plain shutdown is lost.
//!
//! Adapted from CPython's `Lib/test/test_queue.py` (`test_shutdown_*`), whose queue is a
//! thread's; each test names the case it comes from.

#[macro_use]
mod support;

use std::process::ExitCode;
use std::time::Duration;

use support::{TestResult, join_code, join_ok, start, test, test_current_thread};
use tokio_multiprocessing::{self as mp, Error};

/// An item: its number, and a payload that makes every fifth one travel through the
/// queue's socket (and every fiftieth through a spill file).
type Item = (u32, Vec<u8>);

fn item(i: u32) -> Item {
    let len = match i {
        i if i % 50 == 0 => 200_000,
        i if i % 5 == 0 => 2_000,
        _ => 0,
    };
    (i, vec![i as u8; len])
}

/// Exit code of a child whose loop ended on anything but [`Error::ShutDown`].
const NOT_SHUT_DOWN: u8 = 4;

/// Takes items until the queue says it was shut down; reports the numbers it took.
async fn consume_until_shut_down(q: mp::Queue<Item>, out: mp::Queue<Vec<u32>>) -> ExitCode {
    let mut took = Vec::new();
    let end = loop {
        match q.get().await {
            Ok((i, payload)) if payload == item(i).1 => took.push(i),
            Ok((i, _)) => {
                eprintln!("item {i} arrived damaged");
                break 5;
            }
            Err(Error::ShutDown) => break 0,
            Err(e) => {
                eprintln!("get failed: {e}");
                break NOT_SHUT_DOWN;
            }
        }
    };
    match out.put(took).await {
        Ok(()) => ExitCode::from(end),
        Err(_) => ExitCode::from(3),
    }
}

/// Puts `item` into a queue that is full; exits 0 once the put fails with
/// [`Error::ShutDown`] and hands the item back.
async fn put_into_full(q: mp::Queue<Item>, i: u32, started: mp::Queue<u32>) -> ExitCode {
    if started.put(i).await.is_err() {
        return ExitCode::from(3);
    }
    let code = match q.put(item(i)).await {
        Err(e) => match e.into_parts() {
            (Error::ShutDown, back) if back == item(i) => 0,
            (e, _) => {
                eprintln!("put failed otherwise, or its item came back changed: {e}");
                NOT_SHUT_DOWN
            }
        },
        Ok(()) => {
            eprintln!("put succeeded into a shut down queue");
            6
        }
    };
    ExitCode::from(code)
}

/// Puts items numbered from `first` until a put fails with [`Error::ShutDown`]; reports the
/// numbers whose put returned `Ok`.
async fn produce_until_shut_down(
    q: mp::Queue<Item>,
    first: u32,
    out: mp::Queue<Vec<u32>>,
) -> ExitCode {
    let mut put = Vec::new();
    let end = loop {
        let i = first + put.len() as u32;
        match q.put(item(i)).await {
            Ok(()) => put.push(i),
            Err(e) if matches!(e.error(), Error::ShutDown) => break 0,
            Err(e) => {
                eprintln!("put failed: {e}");
                break NOT_SHUT_DOWN;
            }
        }
        // Consumers keep up: the queue is empty when the shutdown comes, with a put under way.
        tokio::task::yield_now().await;
    };
    match out.put(put).await {
        Ok(()) => ExitCode::from(end),
        Err(_) => ExitCode::from(3),
    }
}

/// Shuts `q` down from this process.
async fn shut_down(q: mp::Queue<Item>) {
    q.shutdown();
}

/// Shuts `q` down immediately from this process: the items left are this call's to drop.
async fn shut_down_immediately(q: mp::Queue<Item>) -> mp::Result<usize> {
    q.shutdown_immediate().await
}

/// Awaits `join` on a joinable queue; exits 0 once it returns.
async fn join_queue(q: mp::JoinableQueue<Item>, started: mp::Queue<u32>) -> ExitCode {
    if started.put(0).await.is_err() {
        return ExitCode::from(3);
    }
    match q.join().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("join failed: {e}");
            ExitCode::from(7)
        }
    }
}

/// Sends an item over a slot's size into `q` without publishing its marker, and exits
/// holding the packet lock: a producer killed between sending its packet and its marker.
async fn send_then_die(q: mp::JoinableQueue<Item>) -> ExitCode {
    match q.__send_without_marker(item(5)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("the packet was not sent: {e}");
            ExitCode::from(3)
        }
    }
}

const KEY: &str = "abracadabra";

/// Connects to the manager at `address` and takes items from its queue `name` until the
/// queue says it was shut down; their sum.
async fn far_consumer(address: String, name: String) -> mp::Result<u64> {
    let m = mp::Manager::connect(address.as_str(), KEY).await?;
    let q: mp::QueueProxy<u64> = m.get(&name).await?;
    let mut sum = 0;
    loop {
        match q.get().await {
            Ok(v) => sum += v,
            Err(Error::ShutDown) => return Ok(sum),
            Err(e) => return Err(e),
        }
    }
}

/// Starts two [`far_consumer`]s of queue `name`, and gives them time to reach their waits
/// (the tests hold whether they do or not).
async fn far_consumers(
    address: &str,
    name: &str,
) -> Result<Vec<mp::JoinHandle<mp::Result<u64>>>, Box<dyn std::error::Error + Send + Sync>> {
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let args = (address.to_string(), name.to_string());
        consumers.push(mp::Process::call(far_consumer, args).start().await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(consumers)
}

/// The sums the consumers took, each ended on `ShutDown`.
async fn sums(
    consumers: Vec<mp::JoinHandle<mp::Result<u64>>>,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let mut total = 0;
    for c in consumers {
        total += tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .map_err(|_| "a consumer did not end")???;
    }
    Ok(total)
}

// ---- tests ----

/// `test_shutdown_empty`, `test_shutdown_nonempty` and `test_shutdown_all_methods_in_many_
/// threads`: consumers in three processes, asleep on an empty queue and then busy with
/// items small, packeted and spilled, take every item put before the shutdown exactly once,
/// and then each ends on `ShutDown` rather than waiting for ever.
async fn consumers_take_every_item_then_end_on_shutdown() -> TestResult {
    const N: u32 = 600;
    let q = mp::Queue::<Item>::new()?;
    let out = mp::Queue::<Vec<u32>>::new()?;
    let mut consumers = Vec::new();
    for _ in 0..3 {
        consumers.push(start(consume_until_shut_down, (q.clone(), out.clone())).await?);
    }
    // Asleep first: nothing to take yet.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..N {
        q.put(item(i)).await?;
    }
    q.shutdown();
    ensure!(q.is_shut_down(), "the queue does not say it was shut down");
    let refused = q.put(item(N)).await;
    ensure!(
        matches!(&refused, Err(e) if matches!(e.error(), Error::ShutDown)),
        "a put after the shutdown: {refused:?}"
    );
    if let Err(e) = refused {
        ensure!(
            e.into_inner() == item(N),
            "the refused item did not come back"
        );
    }
    let mut all = Vec::new();
    for c in &mut consumers {
        join_ok(c).await?;
        all.extend(out.get_timeout(Duration::from_secs(10)).await?);
    }
    all.sort_unstable();
    ensure!(
        all == (0..N).collect::<Vec<_>>(),
        "{} items taken of {N}, not each exactly once",
        all.len()
    );
    let got = q.get().await;
    ensure!(
        matches!(got, Err(Error::ShutDown)),
        "a get of the empty shut down queue: {got:?}"
    );
    Ok(())
}

/// `test_shutdown_all_methods_in_many_threads`, with puts racing the shutdown: producers in
/// two processes put without pause, consumers in two more keep the queue near empty, and
/// the shutdown comes at varied moments. Every put either failed with `ShutDown` or its item
/// was taken, exactly once, by a consumer that then ended: none lands after the consumers
/// ended, and the queue is left empty. In every other round a third producer is killed
/// just before the shutdown, wherever its put is: the consumers still end, and take the
/// other producers' items exactly once.
async fn puts_racing_a_shutdown_fail_or_are_taken() -> TestResult {
    const KILLED_FIRST: u32 = 3_000_000;
    for round in 0..12u32 {
        let q = mp::Queue::<Item>::new()?;
        let put = mp::Queue::<Vec<u32>>::new()?;
        let took = mp::Queue::<Vec<u32>>::new()?;
        let mut children = Vec::new();
        for c in 0..2 {
            children.push(start(consume_until_shut_down, (q.clone(), took.clone())).await?);
            let first = 1_000_000 * (c + 1);
            children.push(start(produce_until_shut_down, (q.clone(), first, put.clone())).await?);
        }
        let mut killed = match round % 2 {
            0 => None,
            _ => Some(
                start(
                    produce_until_shut_down,
                    (q.clone(), KILLED_FIRST, put.clone()),
                )
                .await?,
            ),
        };
        tokio::time::sleep(Duration::from_millis(20 + 9 * u64::from(round))).await;
        if let Some(p) = &mut killed {
            p.kill()?;
            p.join().await?;
        }
        q.shutdown();
        let (mut puts, mut takes) = (Vec::new(), Vec::new());
        for c in &mut children {
            join_ok(c).await?;
        }
        for _ in 0..2 {
            puts.extend(put.get_timeout(Duration::from_secs(10)).await?);
            takes.extend(took.get_timeout(Duration::from_secs(10)).await?);
        }
        puts.sort_unstable();
        takes.sort_unstable();
        let before = takes.len();
        takes.dedup();
        ensure!(
            takes.len() == before,
            "round {round}: an item was taken twice"
        );
        // The killed producer's items: any number of them, each once.
        takes.retain(|&i| i < KILLED_FIRST);
        let left = q.get_nowait().map(|(i, _)| i);
        ensure!(
            puts == takes,
            "round {round}: {} puts returned Ok, {} items taken; left in the queue: {left:?}",
            puts.len(),
            takes.len()
        );
        ensure!(
            matches!(left, Err(Error::ShutDown)),
            "round {round}: left in the queue: {left:?}"
        );
    }
    Ok(())
}

/// `test_shutdown_put_join` (the `put` side): producers in other processes waiting for room
/// in a full queue, for a slot and for a large item's slot, wake on a shutdown made by a
/// third process, and fail with `ShutDown`, the item handed back; the items in the queue
/// are still taken, then gets fail.
async fn producers_waiting_for_room_wake_on_shutdown() -> TestResult {
    let q = mp::Queue::<Item>::with_maxsize(2)?;
    let started = mp::Queue::<u32>::new()?;
    q.put(item(1)).await?;
    q.put(item(2)).await?;
    let mut producers = Vec::new();
    // 3 fits a slot; 50 travels through the queue's socket, spilled to a file.
    for i in [3, 50] {
        producers.push(start(put_into_full, (q.clone(), i, started.clone())).await?);
        started.get_timeout(Duration::from_secs(10)).await?;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut closer = start(shut_down, (q.clone(),)).await?;
    join_ok(&mut closer).await?;
    for p in &mut producers {
        join_ok(p).await?;
    }
    ensure!(q.get().await? == item(1), "the first item was not kept");
    ensure!(q.get().await? == item(2), "the second item was not kept");
    let got = q.get_nowait();
    ensure!(matches!(got, Err(Error::ShutDown)), "get_nowait: {got:?}");
    Ok(())
}

/// `test_shutdown_immediate_*`: gets fail at once, items or not, in every process; the
/// items left are dropped (their spill files and descriptors closed), and a joinable
/// queue's `join` in another process returns once the item a consumer holds is done.
async fn an_immediate_shutdown_drops_what_is_left_and_join_returns() -> TestResult {
    let q = mp::JoinableQueue::<Item>::new()?;
    let started = mp::Queue::<u32>::new()?;
    let fds_before = support::open_fds();
    for i in 0..100 {
        q.put(item(i)).await?;
    }
    let held = q.get().await?;
    ensure!(held == item(0), "the first item was {}", held.0);
    let mut joiner = start(join_queue, (q.clone(), started.clone())).await?;
    started.get_timeout(Duration::from_secs(10)).await?;
    let dropped = q.shutdown_immediate().await?;
    ensure!(dropped == 99, "{dropped} items dropped of the 99 left");
    ensure!(q.qsize() == 0, "{} items left", q.qsize());
    let got = q.get_nowait();
    ensure!(matches!(got, Err(Error::ShutDown)), "get_nowait: {got:?}");
    // The joiner still waits for the item taken before the shutdown.
    ensure!(
        joiner
            .join_timeout(Duration::from_millis(200))
            .await?
            .is_none(),
        "join returned while an item was not done"
    );
    q.task_done()?;
    ensure!(join_code(&mut joiner).await? == 0, "the joiner failed");
    ensure!(q.unfinished() == 0, "{} unfinished", q.unfinished());
    drop(joiner);
    support::fds_return_to(fds_before, Duration::from_secs(5)).await?;
    Ok(())
}

/// A producer killed after it sent a packet and before its marker was in the ring leaves
/// the marker to the next holder of the packet lock, which, with the ring full, publishes
/// it from a task once there is room: an item counted as unfinished. An immediate shutdown
/// that makes that room, dropping the items left, drops that item too once its marker is
/// out, so that `join` returns and the queue is left empty.
async fn an_immediate_shutdown_drops_an_item_whose_marker_comes_late() -> TestResult {
    let q = mp::JoinableQueue::<Item>::with_maxsize(1)?;
    q.put(item(1)).await?;
    let mut producer = start(send_then_die, (q.clone(),)).await?;
    ensure!(join_code(&mut producer).await? == 0, "the producer failed");
    // Takes the packet lock over from the dead producer: its marker waits for room.
    let put = q.put_nowait(item(10));
    ensure!(
        matches!(&put, Err(e) if matches!(e.error(), Error::Full)),
        "put_nowait: {put:?}"
    );
    ensure!(q.unfinished() == 2, "{} unfinished", q.unfinished());
    q.shutdown_immediate().await?;
    tokio::time::timeout(Duration::from_secs(10), q.join())
        .await
        .map_err(|_| format!("join still waits: {} unfinished", q.unfinished()))??;
    ensure!(q.qsize() == 0, "{} items left", q.qsize());
    let got = q.get_nowait();
    ensure!(matches!(got, Err(Error::ShutDown)), "get_nowait: {got:?}");
    Ok(())
}

/// A producer killed after it sent a packet and before its marker was in the ring, then a
/// plain shutdown: a `get_nowait` takes the dead producer's item (publishing its marker, as
/// a waiting get would) and only then says `ShutDown`, never `Empty`.
async fn a_get_nowait_while_draining_takes_a_dead_senders_item() -> TestResult {
    let q = mp::JoinableQueue::<Item>::new()?;
    let mut producer = start(send_then_die, (q.clone(),)).await?;
    ensure!(join_code(&mut producer).await? == 0, "the producer failed");
    q.shutdown();
    let got = q.get_nowait();
    ensure!(
        matches!(&got, Ok(v) if *v == item(5)),
        "get_nowait: {got:?}"
    );
    q.task_done()?;
    let got = q.get_nowait();
    ensure!(
        matches!(got, Err(Error::ShutDown)),
        "then get_nowait: {got:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), q.join())
        .await
        .map_err(|_| format!("join still waits: {} unfinished", q.unfinished()))??;
    Ok(())
}

/// A queue with items still in it, shut down immediately from another process: gets here
/// fail at once, the timed ones with `ShutDown` rather than `Empty`.
async fn an_immediate_shutdown_ends_gets_while_items_are_left() -> TestResult {
    let q = mp::Queue::<Item>::new()?;
    q.put(item(1)).await?;
    let mut closer = mp::Process::call(shut_down_immediately, (q.clone(),))
        .start()
        .await?;
    let dropped = closer.join().await??;
    ensure!(dropped == 1, "{dropped} dropped");
    for got in [
        q.get_nowait(),
        q.get_timeout(Duration::from_secs(5)).await,
        q.get().await,
    ] {
        ensure!(matches!(got, Err(Error::ShutDown)), "a get: {got:?}");
    }
    let put = q.put_nowait(item(2));
    ensure!(
        matches!(&put, Err(e) if matches!(e.error(), Error::ShutDown)),
        "put_nowait: {put:?}"
    );
    let put = q.put_timeout(item(3), Duration::from_secs(5)).await;
    ensure!(
        matches!(&put, Err(e) if matches!(e.error(), Error::ShutDown)),
        "put_timeout: {put:?}"
    );
    Ok(())
}

/// `mp::wait` on a queue reports it ready once another process shut it down: a get would
/// not wait.
async fn wait_reports_a_queue_shut_down_elsewhere() -> TestResult {
    let q = mp::Queue::<Item>::new()?;
    let mut closer = start(shut_down, (q.clone(),)).await?;
    let ready = mp::wait(&[&q as &dyn mp::Waitable], Some(Duration::from_secs(20))).await?;
    ensure!(ready.len() == 1, "wait did not report the queue");
    join_ok(&mut closer).await?;
    Ok(())
}

/// A manager's queue shut down ends its consumers in other processes, connected by address,
/// whether the server holds the queue's items (only clients by address used it) or the
/// queue is a ring that a client on this machine uses: each takes the items left, then
/// ends; puts then fail; an immediate shutdown drops what is left and lets `join` return.
async fn a_manager_queue_shut_down_ends_consumers_near_and_far() -> TestResult {
    let m = mp::Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .start()
        .await?;
    let address = match m.address() {
        Some(mp::Address::Tcp(a)) => a.to_string(),
        other => return Err(format!("no TCP address: {other:?}").into()),
    };
    let far = mp::Manager::connect(address.as_str(), KEY).await?;

    // Held by the server: every call, the parent's too, is made by address.
    m.register("held", &m.queue::<u64>().await?).await?;
    let held: mp::QueueProxy<u64> = far.get("held").await?;
    let consumers = far_consumers(&address, "held").await?;
    for i in 1..=100 {
        held.put(i).await?;
    }
    held.shutdown().await?;
    ensure!(
        sums(consumers).await? == 5050,
        "the server's queue lost items"
    );
    let put = held.put(7).await;
    ensure!(
        matches!(&put, Err(e) if matches!(e.error(), Error::ShutDown)),
        "a put after the shutdown: {put:?}"
    );

    // A ring: the parent puts and shuts down through shared memory.
    let ring = m.queue::<u64>().await?;
    m.register("ring", &ring).await?;
    ring.put(0).await?;
    let consumers = far_consumers(&address, "ring").await?;
    for i in 1..=100 {
        ring.put(i).await?;
    }
    ring.shutdown().await?;
    ensure!(sums(consumers).await? == 5050, "the ring lost items");
    let got = ring.get_nowait().await;
    ensure!(matches!(got, Err(Error::ShutDown)), "get_nowait: {got:?}");

    // Immediately, by address, on a joinable queue the server holds.
    let joinable = m.joinable_queue::<u64>(0).await?;
    m.register("joinable", &joinable).await?;
    let joinable: mp::JoinableQueueProxy<u64> = far.get("joinable").await?;
    for i in 0..10 {
        joinable.put(i).await?;
    }
    ensure!(joinable.get().await? == 0, "the first item");
    let dropped = joinable.shutdown_immediate().await?;
    ensure!(dropped == 9, "{dropped} dropped of 9");
    let got = joinable.get().await;
    ensure!(matches!(got, Err(Error::ShutDown)), "a get: {got:?}");
    joinable.task_done().await?;
    tokio::time::timeout(Duration::from_secs(10), joinable.join()).await??;
    m.shutdown().await?;
    Ok(())
}

/// Puts items `0..n`, then shuts the queue down.
async fn put_then_shut_down(q: mp::Queue<Item>, n: u32) -> ExitCode {
    for i in 0..n {
        if q.put(item(i)).await.is_err() {
            return ExitCode::from(1);
        }
    }
    q.shutdown();
    ExitCode::SUCCESS
}

/// A queue's stream takes every item another process put before its shutdown, in order
/// (those through the socket and spill files too), then ends: no sentinel, no error.
async fn a_queue_stream_takes_every_item_then_ends_at_shutdown() -> TestResult {
    use futures::StreamExt;
    const N: u32 = 300;
    let q = mp::Queue::<Item>::new()?;
    let mut producer = start(put_then_shut_down, (q.clone(), N)).await?;
    let items = q.clone().into_stream().collect::<Vec<_>>();
    let got = tokio::time::timeout(Duration::from_secs(60), items).await?;
    join_ok(&mut producer).await?;
    let mut numbers = Vec::new();
    for r in got {
        let (i, payload) = r?;
        ensure!(payload == item(i).1, "item {i} arrived damaged");
        numbers.push(i);
    }
    ensure!(
        numbers == (0..N).collect::<Vec<_>>(),
        "the stream gave {numbers:?}"
    );
    ensure!(
        matches!(q.get().await, Err(Error::ShutDown)),
        "a get after the stream's end"
    );
    Ok(())
}

fn main() {
    mp::init();
    support::run_one_at_a_time(vec![
        test(
            "a_queue_stream_takes_every_item_then_ends_at_shutdown",
            a_queue_stream_takes_every_item_then_ends_at_shutdown,
        ),
        test(
            "consumers_take_every_item_then_end_on_shutdown",
            consumers_take_every_item_then_end_on_shutdown,
        ),
        test_current_thread(
            "consumers_take_every_item_then_end_on_shutdown_current_thread",
            consumers_take_every_item_then_end_on_shutdown,
        ),
        test(
            "puts_racing_a_shutdown_fail_or_are_taken",
            puts_racing_a_shutdown_fail_or_are_taken,
        ),
        test(
            "producers_waiting_for_room_wake_on_shutdown",
            producers_waiting_for_room_wake_on_shutdown,
        ),
        test(
            "an_immediate_shutdown_drops_what_is_left_and_join_returns",
            an_immediate_shutdown_drops_what_is_left_and_join_returns,
        ),
        test(
            "an_immediate_shutdown_drops_an_item_whose_marker_comes_late",
            an_immediate_shutdown_drops_an_item_whose_marker_comes_late,
        ),
        test(
            "a_get_nowait_while_draining_takes_a_dead_senders_item",
            a_get_nowait_while_draining_takes_a_dead_senders_item,
        ),
        test(
            "an_immediate_shutdown_ends_gets_while_items_are_left",
            an_immediate_shutdown_ends_gets_while_items_are_left,
        ),
        test(
            "wait_reports_a_queue_shut_down_elsewhere",
            wait_reports_a_queue_shut_down_elsewhere,
        ),
        test(
            "a_manager_queue_shut_down_ends_consumers_near_and_far",
            a_manager_queue_shut_down_ends_consumers_near_and_far,
        ),
    ])
}
