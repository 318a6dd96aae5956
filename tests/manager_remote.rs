//! Managers reached by address and key (Python's `BaseManager(address, authkey)`): served
//! by a process of their own or by this one, over TCP loopback and Unix paths; the
//! authentication exchange; proxies carried to other processes; a server or a client that
//! dies; and a storm of bad input that costs the server nothing but those connections.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::{TestResult, join_code, join_ok};
use tokio_multiprocessing::{
    self as mp, Address, DictProxy, Error, EventProxy, JoinableQueueProxy, LockProxy, Manager,
    NamespaceProxy, Process, QueueProxy,
};

const KEY: &str = "abracadabra";

/// A `get` withdrawn while its item was on its way (the server had handed the item out, its
/// reply not read yet) puts the item back before the next call of its connection on that
/// queue is carried out: a lone consumer over TCP, whose queue the server keeps, gets the
/// items in the order they were put. (The next `get` reached the server before the item
/// came back, and took the item after it.)
async fn a_get_after_a_withdrawn_get_takes_the_item_given_back() -> TestResult {
    let m = tcp_manager().await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    // Made and used over TCP only: the server keeps its items (no ring).
    let q = c.queue::<u32>().await?;
    // A round trip first: what the connection queued before is written, and the get's
    // request goes out from this thread at its first poll.
    ensure!(q.qsize().await? == 0, "items in a new queue");
    {
        let mut get = std::pin::pin!(q.get());
        ensure!(
            futures::poll!(get.as_mut()).is_pending(),
            "a get on an empty queue returned"
        );
        // Put from another connection while this runtime stands still: the server hands
        // the first item to the waiting get, and its reply waits unread.
        let other = q.clone();
        support::runtimes::on_a_thread_of_its_own(async move {
            other.put(0).await?;
            other.put(1).await?;
            while other.qsize().await? != 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        })?;
    }
    let first = q.get_timeout(Duration::from_secs(10)).await?;
    let second = q.get_timeout(Duration::from_secs(10)).await?;
    ensure!(
        (first, second) == (0, 1),
        "the items came out as {first}, {second}"
    );
    m.shutdown().await?;
    Ok(())
}

/// A plain lock's `lock` withdrawn while its grant was on its way gives back only the hold
/// it was granted. Here that hold was ended by another client's `release` (legal for a plain
/// lock) and a third `lock` took the lock before the give-back reached the server: the
/// lock stays held by that third call, and a `try_lock` after the give-back fails. (The
/// give-back was a plain `release`, which freed the third call's hold: two holders at once.)
async fn a_withdrawn_lock_gives_back_only_the_hold_it_was_granted() -> TestResult {
    a_withdrawn_grant_of_a_plain_lock_gives_back_only_its_hold(false).await
}

/// As [`a_withdrawn_lock_gives_back_only_the_hold_it_was_granted`], for a condition's
/// `wait` over a plain lock withdrawn while the lock it took back was on its way.
async fn a_withdrawn_condition_wait_gives_back_only_the_hold_it_took() -> TestResult {
    a_withdrawn_grant_of_a_plain_lock_gives_back_only_its_hold(true).await
}

/// A plain lock held by this connection; a `lock` of it (or, `wait`, a condition's `wait`
/// over it) granted while this runtime stands still, then dropped; the hold it was granted
/// freed by another connection's `release`, which then takes the lock; once the give-back
/// has reached the server, the lock is still held.
async fn a_withdrawn_grant_of_a_plain_lock_gives_back_only_its_hold(wait: bool) -> TestResult {
    let m = tcp_manager().await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let lock = c.lock().await?;
    let condition = c.condition_with(&lock).await?;
    // Held by this connection, so that a `lock` waits at the server (a `wait` releases it).
    lock.lock().await?;
    // Another connection: a thread of its own, driven step by step while this runtime
    // stands still.
    let (order, orders) = std::sync::mpsc::channel::<u8>();
    let (answer, answers) = std::sync::mpsc::channel::<mp::Result<bool>>();
    let (other, other_condition) = (lock.clone(), condition.clone());
    let thread = std::thread::spawn(move || {
        let Ok(rt) = support::runtimes::runtime() else {
            return;
        };
        for step in orders {
            let r = rt.block_on(async {
                match step {
                    // The withdrawn call is granted the lock: this connection's hold freed
                    // (a `wait` freed it and is notified), and then the call's.
                    0 => {
                        if wait {
                            other.lock().await?;
                            other_condition.notify(1).await?;
                        }
                        other.release().await?;
                        while other.holder().await?.is_none() {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Ok(true)
                    }
                    // Frees the hold granted to the withdrawn call, and takes the lock.
                    1 => {
                        other.release().await?;
                        other.lock().await?;
                        Ok(true)
                    }
                    _ => other.try_lock().await,
                }
            });
            if answer.send(r).is_err() {
                return;
            }
        }
    });
    let step = |n| -> Result<bool, String> {
        order.send(n).map_err(|e| e.to_string())?;
        match answers.recv() {
            Ok(r) => r.map_err(|e| format!("step {n}: {e}")),
            Err(e) => Err(e.to_string()),
        }
    };
    {
        let mut call: std::pin::Pin<Box<dyn Future<Output = mp::Result<()>>>> = match wait {
            true => Box::pin(condition.wait()),
            false => Box::pin(lock.lock()),
        };
        ensure!(
            futures::poll!(call.as_mut()).is_pending(),
            "the call returned at once"
        );
        // Granted while this runtime stands still: its reply waits unread.
        step(0)?;
    }
    step(1)?;
    // A call of this connection: the give-back of the withdrawn call goes before it.
    lock.holder().await?;
    ensure!(!step(2)?, "the lock was taken while another client held it");
    drop(order);
    thread.join().map_err(|_| "the thread panicked")?;
    m.shutdown().await?;
    Ok(())
}

fn main() {
    mp::init();
    let mut trials = trials![
        a_pool_workers_tasks_reuse_one_connection_to_a_manager,
        a_lock_a_pool_task_left_held_is_released_with_its_proxies,
        a_pool_workers_tasks_that_take_a_lock_reuse_one_connection,
        remote_queue_between_client_processes,
        a_queue_proxy_stream_ends_at_shutdown_or_with_the_server,
        a_queue_proxy_sink_puts_in_order_and_hands_back_what_a_lost_server_did_not_take,
        remote_queue_carries_python_values,
        rapid_restart_on_the_same_address,
        served_in_this_process_over_a_unix_path,
        a_key_without_an_address_listens_on_a_private_socket,
        a_remote_proxy_serves_every_runtime_that_awaits_it,
        a_connection_begun_on_an_idle_runtime_holds_up_no_other,
        a_wrong_key_is_refused_before_any_request,
        a_remote_proxy_travels_to_a_child,
        a_dead_server_fails_waiting_calls,
        local_and_remote_clients_share_one_queue,
        an_addressed_client_shuts_down_a_ring_queue_immediately,
        a_queue_keeps_its_items_and_counts_when_local_clients_come,
        a_dead_server_fails_local_waits_on_a_queue,
        local_and_remote_consumers_take_every_item_once,
        a_silent_server_fails_waiting_calls,
        a_server_that_answers_garbage_fails_calls_saying_so,
        a_server_that_dies_with_requests_unread_fails_calls_as_lost,
        calls_to_a_server_that_stopped_answering_share_one_reconnection,
        a_stopped_server_gets_every_request_whole,
        a_queue_the_server_holds_is_full_only_at_its_maxsize,
        a_client_that_dies_releases_its_lock,
        a_partitioned_client_fails_its_waits_and_loses_its_lock,
        a_client_that_stops_reading_a_large_reply_releases_its_lock,
        a_client_that_stops_reading_behind_many_replies_releases_its_lock,
        a_request_slower_to_arrive_than_the_heartbeat_deadline_is_served,
        a_reply_slower_to_arrive_than_the_heartbeat_deadline_is_taken,
        objects_let_go_with_a_lost_connection_are_named_so,
        bad_input_storm_leaves_the_server_serving,
        silent_sockets_lock_no_client_out,
        example_manager_remote,
    ];
    trials.push(support::test_current_thread(
        "a_get_after_a_withdrawn_get_takes_the_item_given_back",
        a_get_after_a_withdrawn_get_takes_the_item_given_back,
    ));
    trials.push(support::test_current_thread(
        "a_withdrawn_lock_gives_back_only_the_hold_it_was_granted",
        a_withdrawn_lock_gives_back_only_the_hold_it_was_granted,
    ));
    trials.push(support::test_current_thread(
        "a_withdrawn_condition_wait_gives_back_only_the_hold_it_took",
        a_withdrawn_condition_wait_gives_back_only_the_hold_it_took,
    ));
    support::run_mostly_waiting(trials)
}

/// A manager served by a process of its own on a TCP loopback port, with the key.
async fn tcp_manager() -> mp::Result<Manager> {
    Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .start()
        .await
}

fn tcp(m: &Manager) -> Result<SocketAddr, String> {
    match m.address() {
        Some(Address::Tcp(a)) => Ok(*a),
        other => Err(format!("no TCP address: {other:?}")),
    }
}

/// The local ports of this process's TCP connections to `port` on an IPv4 address, asked
/// of each of its sockets. (`/proc/net/tcp`, read while other tests open and close
/// connections, may list a socket twice or not at all.)
fn ports_connected_to(port: u16) -> Vec<u16> {
    use nix::sys::socket::{SockaddrIn, getpeername, getsockname};
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.into_iter()
        .filter(|&fd| getpeername::<SockaddrIn>(fd).is_ok_and(|peer| peer.port() == port))
        .filter_map(|fd| getsockname::<SockaddrIn>(fd).ok().map(|me| me.port()))
        .collect()
}

/// Inserts `i` into `d`, then tells the local ports of this process's connections to the
/// manager's `port`.
async fn insert_and_tell_ports(d: DictProxy<u32, u32>, i: u32, port: u16) -> mp::Result<Vec<u16>> {
    d.insert(i, i).await?;
    Ok(ports_connected_to(port))
}

/// A pool worker's tasks, each given a proxy to one manager, use one connection to it
/// from task to task, as a CPython worker thread keeps its connection to a manager. (Each
/// task connected, and proved the key, anew.)
async fn a_pool_workers_tasks_reuse_one_connection_to_a_manager() -> TestResult {
    let m = tcp_manager().await?;
    let address = tcp(&m)?;
    let client = Manager::connect(address, KEY).await?;
    let d = client.dict::<u32, u32>().await?;
    let pool = mp::Pool::new(1).await?;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        let ports = pool
            .apply(insert_and_tell_ports, (d.clone(), i, address.port()))
            .await??;
        ensure!(
            ports.len() == 1,
            "task {i}: connections from ports {ports:?}"
        );
        seen.extend(ports);
    }
    ensure!(seen.len() == 1, "the tasks connected from ports {seen:?}");
    ensure!(d.len().await? == 10, "the tasks' inserts");
    pool.close();
    pool.join().await?;
    Ok(())
}

/// Takes `lock` and returns holding it.
async fn take_and_keep(lock: LockProxy) -> mp::Result<()> {
    lock.lock().await
}

/// A pool task that returns holding a lock it took through a proxy: once the task's
/// proxies are gone, the lock is released as its holder's death and the next taker told,
/// as when a process dies holding it, though the worker lives on. (A worker that kept its
/// connection open for its next tasks kept the lock held with it.)
async fn a_lock_a_pool_task_left_held_is_released_with_its_proxies() -> TestResult {
    let m = Manager::start().await?;
    let lock = m.lock().await?;
    let pool = mp::Pool::new(1).await?;
    pool.apply(take_and_keep, (lock.clone(),)).await??;
    match tokio::time::timeout(Duration::from_secs(20), lock.lock()).await {
        Ok(Err(Error::LockOwnerDied { .. })) => {}
        Err(_) => return Err("the lock is still held 20 s after the task".into()),
        Ok(other) => return Err(format!("the next lock: {other:?}").into()),
    }
    lock.lock().await?;
    lock.release().await?;
    pool.close();
    pool.join().await?;
    Ok(())
}

/// Inserts `i` into `d` holding `lock`, keeps the lock held when `keep` says so, then
/// tells the local ports of this process's connections to the manager's `port`.
async fn insert_locked_and_tell_ports(
    lock: LockProxy,
    d: DictProxy<u32, u32>,
    i: u32,
    keep: bool,
    port: u16,
) -> mp::Result<Vec<u16>> {
    lock.lock().await?;
    d.insert(i, i).await?;
    if !keep {
        lock.release().await?;
    }
    Ok(ports_connected_to(port))
}

/// A pool worker's tasks that take a lock through a proxy, and release it, reuse one
/// connection to the manager too, and a lock a task leaves held is still released once
/// its proxies are gone, the next taker told, on a connection that stays. (A connection
/// through which a lock was taken closed with its last proxy, and each such task
/// connected anew.)
async fn a_pool_workers_tasks_that_take_a_lock_reuse_one_connection() -> TestResult {
    let m = tcp_manager().await?;
    let address = tcp(&m)?;
    let client = Manager::connect(address, KEY).await?;
    let d = client.dict::<u32, u32>().await?;
    let lock = client.lock().await?;
    let pool = mp::Pool::new(1).await?;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        let keep = i == 5;
        let ports = pool
            .apply(
                insert_locked_and_tell_ports,
                (lock.clone(), d.clone(), i, keep, address.port()),
            )
            .await??;
        ensure!(
            ports.len() == 1,
            "task {i}: connections from ports {ports:?}"
        );
        seen.extend(ports);
        if keep {
            match tokio::time::timeout(Duration::from_secs(20), lock.lock()).await {
                Ok(Err(Error::LockOwnerDied { .. })) => {}
                Err(_) => return Err("the lock is still held 20 s after the task".into()),
                Ok(other) => return Err(format!("the next lock: {other:?}").into()),
            }
        }
    }
    ensure!(seen.len() == 1, "the tasks connected from ports {seen:?}");
    ensure!(d.len().await? == 10, "the tasks' inserts");
    lock.lock().await?;
    lock.release().await?;
    pool.close();
    pool.join().await?;
    Ok(())
}

async fn put_round(address: String, n: u32) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<u32> = m.get("jobs").await?;
    for i in 0..n {
        q.put(i).await?;
    }
    Ok(())
}

async fn get_round(address: String, n: u32) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<u32> = m.get("jobs").await?;
    let done: DictProxy<String, u32> = m.get("done").await?;
    let mut sum = 0;
    for _ in 0..n {
        sum += q.get_timeout(Duration::from_secs(20)).await?;
    }
    done.insert("sum".into(), sum).await?;
    Ok(())
}

async fn remote_queue_between_client_processes() -> TestResult {
    // The remote-manager example of CPython's documentation: one client puts, another gets.
    let m = tcp_manager().await?;
    let q = m.queue::<u32>().await?;
    let done = m.dict::<String, u32>().await?;
    m.register("jobs", &q).await?;
    m.register("done", &done).await?;
    let address = tcp(&m)?.to_string();
    let mut getter = Process::new(get_round, (address.clone(), 50))
        .start()
        .await?;
    let mut putter = Process::new(put_round, (address, 50)).start().await?;
    join_ok(&mut putter).await?;
    join_ok(&mut getter).await?;
    ensure!(
        done.get(&"sum".into()).await? == Some((0..50).sum()),
        "sum {:?}",
        done.get(&"sum".into()).await?
    );
    m.shutdown().await?;
    Ok(())
}

async fn set_from_afar(path: String) -> mp::Result<()> {
    let m = Manager::connect(path.as_str(), KEY).await?;
    let ns: NamespaceProxy = m.get("ns").await?;
    ns.set("pid", std::process::id()).await
}

/// A child connects to `m` by `path` with the key and sets an attribute of a namespace `m`
/// registered, which `m` then sees.
async fn a_child_reaches_it_by(m: &Manager, path: &std::path::Path) -> TestResult {
    let ns = m.namespace().await?;
    m.register("ns", &ns).await?;
    let mut p = Process::new(set_from_afar, (path.display().to_string(),))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        ns.get::<u32>("pid").await? == p.pid(),
        "the child's attribute"
    );
    Ok(())
}

/// The tuple `_TestRemoteManager._putter` puts: a str, None, a bool, a float, Latin-1 and
/// Cyrillic text, and bytes.
type PythonValues = (
    String,
    Option<u8>,
    bool,
    f64,
    String,
    String,
    serde_bytes::ByteBuf,
);

fn python_values() -> PythonValues {
    (
        "hello world".into(),
        None,
        true,
        2.25,
        "hall\u{e5} v\u{e4}rld".into(),
        "\u{43f}\u{440}\u{438}\u{432}\u{456}\u{442} \u{441}\u{432}\u{456}\u{442}".into(),
        serde_bytes::ByteBuf::from(b"hall\xe5 v\xe4rld".to_vec()),
    )
}

async fn put_python_values(address: String) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<PythonValues> = m.get("queue").await?;
    q.put(python_values()).await.map_err(|e| e.into_parts().0)
}

/// CPython's `_TestRemoteManager.test_remote`: a child connects by address and puts a tuple
/// of mixed values; a second manager handle, connected by address too, gets it whole.
async fn remote_queue_carries_python_values() -> TestResult {
    let m = tcp_manager().await?;
    m.register("queue", &m.queue::<PythonValues>().await?)
        .await?;
    let address = tcp(&m)?.to_string();
    let mut p = Process::new(put_python_values, (address.clone(),))
        .daemon(true)
        .start()
        .await?;
    let m2 = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<PythonValues> = m2.get("queue").await?;
    let got = q.get_timeout(Duration::from_secs(20)).await?;
    ensure!(got == python_values(), "{got:?}");
    join_ok(&mut p).await?;
    drop((q, m2));
    m.shutdown().await?;
    Ok(())
}

async fn put_hello(address: String) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<String> = m.get("queue").await?;
    q.put("hello world".into())
        .await
        .map_err(|e| e.into_parts().0)
}

/// CPython's `_TestManagerRestart.test_rapid_restart`: a manager on an address, used by a
/// child and shut down, and a new one started on the same address at once (CPython retries
/// once after a second on EADDRINUSE; none is needed here). A client still connected when
/// the first stopped reaches the second through its next call.
async fn rapid_restart_on_the_same_address() -> TestResult {
    let m = tcp_manager().await?;
    let addr = tcp(&m)?;
    let q = m.queue::<String>().await?;
    m.register("queue", &q).await?;
    let mut p = Process::new(put_hello, (addr.to_string(),)).start().await?;
    join_ok(&mut p).await?;
    ensure!(
        q.get_timeout(Duration::from_secs(20)).await? == "hello world",
        "the child's item"
    );
    drop(q);
    // Still connected when the server stops: the server's side closes first.
    let c = Manager::connect(addr, KEY).await?;
    let old: QueueProxy<String> = c.get("queue").await?;
    m.shutdown().await?;
    let m = Manager::builder()
        .address(addr)
        .authkey(KEY)
        .start()
        .await?;
    m.register("queue", &m.queue::<String>().await?).await?;
    let mut p = Process::new(put_hello, (addr.to_string(),)).start().await?;
    join_ok(&mut p).await?;
    // The client's calls fail with `ManagerLost` until it has seen the loss; then it connects
    // to the new server.
    let mut fetched = c.get::<QueueProxy<String>>("queue").await;
    for _ in 0..100 {
        if !matches!(fetched, Err(Error::ManagerLost { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fetched = c.get("queue").await;
    }
    let q = fetched?;
    ensure!(
        q.get_timeout(Duration::from_secs(20)).await? == "hello world",
        "the new server's item"
    );
    // The old server's queue is no object of the new one.
    let r = old.qsize().await;
    ensure!(
        matches!(r, Err(Error::Manager(_))),
        "the old queue gave {r:?}"
    );
    drop((q, old, c));
    m.shutdown().await?;
    Ok(())
}

async fn served_in_this_process_over_a_unix_path() -> TestResult {
    let path = std::env::temp_dir().join(format!("{}.sock", support::unique_name("tkmp-manager")));
    let _ = std::fs::remove_file(&path);
    let m = Manager::builder()
        .address(path.as_path())
        .authkey(KEY)
        .serve()
        .await?;
    ensure!(m.pid().is_none(), "served here, not by a process");
    a_child_reaches_it_by(&m, &path).await?;
    m.shutdown().await?;
    ensure!(!path.exists(), "the socket file outlived the manager");
    Ok(())
}

/// A proxy of a manager reached by address serves whichever runtime awaits it: used on
/// runtime B while runtime A, where the handle connected, is not driven, then once A is
/// dropped, with the values and the object kept (see `support::runtimes`).
async fn a_remote_proxy_serves_every_runtime_that_awaits_it() -> TestResult {
    let m = tcp_manager().await?;
    let addr = tcp(&m)?;
    tokio::task::spawn_blocking(move || {
        support::runtimes::a_proxy_across_runtimes(|| Manager::connect(addr, KEY))
    })
    .await??;
    m.shutdown().await?;
    Ok(())
}

/// A connection to a manager by address begun by a call on a runtime that then sits idle
/// (its attempt waits on that runtime) holds up no call on another runtime, which makes a
/// connection of its own; the idle one's call is answered once it is driven again (see
/// `support::runtimes`).
async fn a_connection_begun_on_an_idle_runtime_holds_up_no_other() -> TestResult {
    let m = tcp_manager().await?;
    let addr = tcp(&m)?;
    tokio::task::spawn_blocking(move || {
        support::runtimes::a_connection_begun_on_an_idle_runtime(|| Manager::connect(addr, KEY))
    })
    .await??;
    m.shutdown().await?;
    Ok(())
}

/// A manager given a key and no address listens on a free address of the default family,
/// as Python's `BaseManager(authkey=key)` does: a Unix socket in a directory only this user
/// may enter. A child reaches it by the address the manager tells, with the key; a wrong
/// key is refused; the socket and its directory go with the manager, whether its server is
/// a process of its own or this one.
async fn a_key_without_an_address_listens_on_a_private_socket() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    for own_process in [true, false] {
        let b = Manager::builder().authkey(KEY);
        let m = if own_process {
            b.start().await?
        } else {
            b.serve().await?
        };
        let Some(mp::Address::Unix(path)) = m.address().cloned() else {
            return Err(format!("no Unix address: {:?}", m.address()).into());
        };
        let dir = path.parent().ok_or("a socket path without a directory")?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        ensure!(mode == 0o700, "the socket's directory has mode {mode:o}");
        a_child_reaches_it_by(&m, &path).await?;
        let wrong = Manager::connect(path.as_path(), "wrong").await;
        ensure!(
            matches!(wrong, Err(Error::Authentication { .. })),
            "a wrong key gave {:?}",
            wrong.map(drop)
        );
        let dir = dir.to_path_buf();
        m.shutdown().await?;
        ensure!(
            !path.exists() && !dir.exists(),
            "the socket or its directory outlived the manager"
        );
    }
    Ok(())
}

async fn a_wrong_key_is_refused_before_any_request() -> TestResult {
    let m = Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .serve()
        .await?;
    let addr = tcp(&m)?;
    let r = Manager::connect(addr, "wrong").await;
    ensure!(
        matches!(&r, Err(e @ Error::Authentication { .. }) if e.to_string().contains("authkey")),
        "a wrong key gave {:?}, which should name the authkey",
        r.map(drop)
    );
    // Nobody listens: the error names the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let r = Manager::connect(closed, KEY).await;
    ensure!(
        r.as_ref()
            .is_err_and(|e| e.to_string().contains(&closed.to_string())),
        "connecting to a closed port gave {:?}, which should name {closed}",
        r.map(drop)
    );
    // A client that skips the exchange and sends a request is cut off, unanswered.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let _ = s.write_all(&[0, 0, 0, 3, 0, 0x92, 1, 0xc0]).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .map_err(|_| "the server kept a client that skipped the exchange")?
        .ok();
    ensure!(
        got.windows(11).any(|w| w == b"#CHALLENGE#") && !got.windows(9).any(|w| w == b"#WELCOME#"),
        "the server answered more than its challenge"
    );
    let r = Manager::builder().address("127.0.0.1:0").serve().await;
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "an address without a key: {r:?}"
    );
    Ok(())
}

async fn use_carried(q: QueueProxy<String>) -> mp::Result<()> {
    q.put(format!("from {}", std::process::id())).await?;
    Ok(())
}

async fn a_remote_proxy_travels_to_a_child() -> TestResult {
    let m = Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .serve()
        .await?;
    m.register("q", &m.queue::<String>().await?).await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let q: QueueProxy<String> = c.get("q").await?;
    let mut p = Process::new(use_carried, (q.clone(),)).start().await?;
    join_ok(&mut p).await?;
    ensure!(
        q.get_timeout(Duration::from_secs(10)).await? == format!("from {}", p.pid()),
        "the child's item"
    );
    Ok(())
}

async fn a_dead_server_fails_waiting_calls() -> TestResult {
    let m = tcp_manager().await?;
    m.register("q", &m.queue::<u8>().await?).await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let q: QueueProxy<u8> = c.get("q").await?;
    a_get_fails_when_the_server_dies(&m, &q, Some(tcp(&m)?)).await
}

/// Kills `m`'s server while a `get` on `q` (reached by `address`, if it has one) waits, and
/// expects that get to end with `ManagerLost`, naming the server by its address and pid, and
/// what ended the connection. (It ended with a bare `Closed`, "the connection is closed",
/// which named neither the manager nor its server.)
async fn a_get_fails_when_the_server_dies(
    m: &Manager,
    q: &QueueProxy<u8>,
    address: Option<SocketAddr>,
) -> TestResult {
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.get().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let server = m.pid().ok_or("no server process")?;
    support::pool::kill9(server)?;
    let r = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .map_err(|_| "a get on a dead server still waits")??;
    let e = match r {
        Err(e) => e,
        Ok(item) => return Err(format!("a get on a dead server gave {item}").into()),
    };
    let Error::ManagerLost {
        address: at, pid, ..
    } = &e
    else {
        return Err(format!("the get gave {e:?}").into());
    };
    let address = address.map(|a| a.to_string());
    ensure!(*at == address && *pid == Some(server), "{e:?}");
    let at = address.map(|a| format!(" at {a}")).unwrap_or_default();
    let named = format!("the manager server{at} (pid {server}) is gone: ");
    ensure!(e.to_string().starts_with(&named), "{e}");
    Ok(())
}

/// A client connected by address to a peer that is no manager: a keyed `Listener`, which
/// passes the key exchange and leaves the rest to the test (its end of the connection).
async fn connected_to_a_fake_server()
-> Result<(Manager, mp::Connection<Vec<u8>>), support::process::BoxError> {
    let listener = mp::Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, Some(KEY.as_bytes()))?;
    let addr = match listener.address() {
        Address::Tcp(a) => *a,
        other => return Err(format!("not TCP: {other:?}").into()),
    };
    let (connected, accepted) = tokio::join!(Manager::connect(addr, KEY), async {
        listener.accept::<Vec<u8>>().await
    });
    Ok((connected?, accepted?))
}

async fn a_silent_server_fails_waiting_calls() -> TestResult {
    // A peer that passes the exchange and then never answers (a server hung, or cut off by
    // the network with its socket still open): calls fail after three missed heartbeats.
    let (c, _silent) = connected_to_a_fake_server().await?;
    let r = tokio::time::timeout(Duration::from_secs(40), c.object_count())
        .await
        .map_err(|_| "a call to a silent server still waits")?;
    ensure!(matches!(r, Err(Error::ManagerLost { .. })), "{r:?}");
    Ok(())
}

/// A peer that passes the key exchange and then answers with a frame that is no reply: the
/// waiting call fails with a protocol error that says the manager sent a reply that does
/// not decode (it failed with a bare `Closed`, which said nothing of the peer's fault).
async fn a_server_that_answers_garbage_fails_calls_saying_so() -> TestResult {
    let (c, peer) = connected_to_a_fake_server().await?;
    let garbage = async {
        // The client's first request arrives; the answer is a frame of garbage.
        peer.recv_bytes().await?;
        peer.send_bytes(b"\xc1 not a reply").await?;
        Ok::<_, mp::Error>(peer)
    };
    let (r, peer) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), c.object_count()),
        garbage
    );
    let _peer = peer?;
    let r = r.map_err(|_| "a call answered with garbage still waits")?;
    ensure!(
        matches!(&r, Err(Error::Protocol(m)) if m.contains("does not decode")),
        "the call gave {r:?}"
    );
    Ok(())
}

/// A peer that passes the key exchange, then dies with the client's request unread: the
/// kernel resets the connection, and the waiting call fails with `ManagerLost`, as for any server
/// that died (it failed with a protocol error that took the reset for garbage).
async fn a_server_that_dies_with_requests_unread_fails_calls_as_lost() -> TestResult {
    let (c, peer) = connected_to_a_fake_server().await?;
    let dies = async {
        // The request is in; the peer closes without reading it, so the kernel resets.
        let arrived = peer.poll(Duration::from_secs(20)).await?;
        drop(peer);
        Ok::<_, mp::Error>(arrived)
    };
    let (r, arrived) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), c.object_count()),
        dies
    );
    ensure!(arrived?, "no request reached the peer");
    let r = r.map_err(|_| "a call to a server that died still waits")?;
    ensure!(
        matches!(r, Err(Error::ManagerLost { .. })),
        "the call gave {r:?}"
    );
    Ok(())
}

/// A server that stopped answering while it still takes connections (hung, or its host
/// cut off behind a proxy): its client's calls, each needing the connection made again,
/// wait for one key exchange that never comes, and all fail with `ManagerLost` when it gives
/// up. (Each call made its own attempt in turn, so the third of three waited three
/// exchange timeouts, 60 s, and each failed with an `Authentication` error, though the key
/// was right.)
async fn calls_to_a_server_that_stopped_answering_share_one_reconnection() -> TestResult {
    let listener = mp::Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, Some(KEY.as_bytes()))?;
    let addr = listener.address().clone();
    let (c, peer) = tokio::join!(Manager::connect(addr, KEY), async {
        listener.accept::<Vec<u8>>().await
    });
    let (c, peer) = (c?, peer?);
    // The connection ends under a call (polled first, so its request is out), which then
    // fails as the client sees the loss; the listener stays, accepting no more: the kernel
    // makes the next connections, and their exchange never begins.
    let (first, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(40), c.object_count()),
        async { drop(peer) }
    );
    let first = first.map_err(|_| "a call on a lost connection still waits")?;
    ensure!(
        matches!(first, Err(Error::ManagerLost { .. })),
        "the first call gave {first:?}"
    );
    let calls = futures::future::join_all((0..3).map(|_| c.object_count()));
    // One exchange's timeout (20 s) and a margin; not three.
    let r = tokio::time::timeout(Duration::from_secs(45), calls)
        .await
        .map_err(|_| "calls waiting for a reconnection still wait")?;
    for r in r {
        ensure!(
            matches!(r, Err(Error::ManagerLost { .. })),
            "a call gave {r:?}"
        );
    }
    drop(listener);
    Ok(())
}

async fn a_queue_the_server_holds_is_full_only_at_its_maxsize() -> TestResult {
    // Clients connected by address only: the server holds the items, with no ring's limit.
    let m = tcp_manager().await?;
    m.register("unbounded", &m.queue::<u32>().await?).await?;
    m.register("bounded", &m.queue_with_maxsize::<u32>(3).await?)
        .await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let q: QueueProxy<u32> = c.get("unbounded").await?;
    let n = mp::Queue::<u32>::UNBOUNDED_CAPACITY as u32 + 1;
    for i in 0..n {
        q.put_nowait(i).await?;
    }
    ensure!(
        !q.full().await?,
        "full() with {n} items, though a put would not wait"
    );
    q.put_nowait(n).await?;
    let b: QueueProxy<u32> = c.get("bounded").await?;
    for i in 0..3 {
        ensure!(!b.full().await?, "full() with {i} of 3 items");
        b.put_nowait(i).await?;
    }
    ensure!(b.full().await?, "not full() with 3 of 3 items");
    let r = b.put_nowait(3).await;
    ensure!(
        matches!(r.as_ref().map_err(|e| e.error()), Err(Error::Full)),
        "{r:?}"
    );
    m.shutdown().await?;
    Ok(())
}

async fn a_stopped_server_gets_every_request_whole() -> TestResult {
    // A server that stops reading (stopped, or slow) while a client goes on calling and
    // giving up: the client's socket fills, and frames are written in part. Once the server
    // reads again, it finds every request whole and in order, and the connection serves on.
    let m = tcp_manager().await?;
    let pid = m.pid().ok_or("no server process")?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let d: DictProxy<u32, String> = c.dict().await?;
    let value = |i: u32| format!("{i:>3000}");
    let stop = |signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .map_err(|e| format!("{signal}: {e}"))
    };
    stop(nix::sys::signal::Signal::SIGSTOP)?;
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    };
    let waited = std::time::Instant::now();
    while !stopped() {
        ensure!(
            waited.elapsed() < Duration::from_secs(10),
            "the server never stopped"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    const CALLS: u32 = 3_000;
    let mut answered = 0;
    for i in 0..CALLS {
        // Given up at once: the request stays sent, and the server carries it out.
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), d.insert(i, value(i))).await {
            r?;
            answered += 1;
        }
    }
    stop(nix::sys::signal::Signal::SIGCONT)?;
    ensure!(
        answered == 0,
        "{answered} calls were answered by a stopped server"
    );
    let len = tokio::time::timeout(Duration::from_secs(30), d.len())
        .await
        .map_err(|_| "the connection no longer serves")??;
    ensure!(
        len == CALLS as usize,
        "{len} of {CALLS} requests were carried out"
    );
    for i in (0..CALLS).step_by(97) {
        let v = d.get(&i).await?;
        ensure!(v.as_deref() == Some(value(i).as_str()), "key {i}: {v:?}");
    }
    m.shutdown().await?;
    Ok(())
}

/// A TCP relay on loopback to `to`: each connection it accepts is carried to `to` until
/// `cut` is notified, which closes every connection it carries (as a network that drops
/// them would); it goes on accepting new ones.
async fn relay(
    to: SocketAddr,
    cut: std::sync::Arc<tokio::sync::Notify>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let cut = cut.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    Ok(addr)
}

async fn objects_let_go_with_a_lost_connection_are_named_so() -> TestResult {
    // A client whose connection is lost while the server runs on: the server lets go of
    // what that connection held, so an object only it held is gone when the client's next
    // call connects again, and the error says why.
    let m = tcp_manager().await?;
    let cut = std::sync::Arc::new(tokio::sync::Notify::new());
    let via = relay(tcp(&m)?, cut.clone()).await?;
    let c = Manager::connect(via, KEY).await?;
    let d: DictProxy<String, u32> = c.dict().await?;
    d.insert("a".into(), 1).await?;
    let kept: DictProxy<String, u32> = m.dict().await?;
    c.register("kept", &kept).await?;
    let kept_there: DictProxy<String, u32> = c.get("kept").await?;
    kept_there.insert("b".into(), 2).await?;

    let before = m.object_count().await?;
    cut.notify_waiters();
    // The server lets go of the dict once it sees the connection closed.
    let mut left = before;
    for _ in 0..250 {
        left = m.object_count().await?;
        if left < before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        left == before - 1,
        "{before} objects before the cut, {left} after"
    );
    // Calls fail with `ManagerLost` until the client has seen the loss; the next one connects
    // again.
    let mut r = d.get(&"a".to_string()).await;
    for _ in 0..100 {
        if !matches!(r, Err(Error::ManagerLost { .. })) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        r = d.get(&"a".to_string()).await;
    }
    match r {
        Err(Error::Manager(msg)) => ensure!(
            msg.contains("no such object") && msg.contains("connection to the manager was lost"),
            "{msg}"
        ),
        other => return Err(format!("a call on a let-go object gave {other:?}").into()),
    }
    // An object the server still holds (another connection holds it) serves on through the
    // new connection.
    ensure!(
        kept_there.get(&"b".to_string()).await? == Some(2),
        "a kept object lost its item"
    );
    m.shutdown().await?;
    Ok(())
}

async fn hold_remote_lock(address: String) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let l: LockProxy = m.get("lock").await?;
    let held: EventProxy = m.get("held").await?;
    l.lock().await?;
    held.set().await?;
    std::future::pending::<()>().await;
    Ok(())
}

async fn a_client_that_dies_releases_its_lock() -> TestResult {
    let m = tcp_manager().await?;
    let l = m.lock().await?;
    let held = m.event().await?;
    m.register("lock", &l).await?;
    m.register("held", &held).await?;
    let mut p = Process::new(hold_remote_lock, (tcp(&m)?.to_string(),))
        .start()
        .await?;
    ensure!(
        held.wait_timeout(Duration::from_secs(20)).await?,
        "the client never took the lock"
    );
    p.kill()?;
    p.join().await?;
    match l.lock_timeout(Duration::from_secs(20)).await {
        Err(Error::LockOwnerDied { pid }) => ensure!(pid == p.pid(), "pid {pid}"),
        other => return Err(format!("the next acquirer got {other:?}").into()),
    }
    ensure!(l.try_lock().await?, "free after the report");
    Ok(())
}

/// A client on a thread of its own that takes the lock named `lock`, asks for the value
/// named `big`, then `behind` times who holds the lock, and stops before the replies are
/// in: its thread blocks (and its runtime with it) until `resume` says, or two minutes
/// pass, so it neither reads nor sends a heartbeat, as a client hung or cut off by the
/// network. `ready` says when it has stopped.
fn stalled_client(
    addr: SocketAddr,
    behind: usize,
    resume: std::sync::mpsc::Receiver<()>,
    ready: tokio::sync::oneshot::Sender<mp::Result<()>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let mut ready = Some(ready);
        let stalled = rt.block_on(async {
            let c = Manager::connect(addr, KEY).await?;
            let l: LockProxy = c.get("lock").await?;
            let big: mp::ValueProxy<bytes::Bytes> = c.get("big").await?;
            l.lock().await?;
            let mut get = Box::pin(big.get());
            // Polled once: the request is written, and nothing waits for the reply.
            let _ = futures::poll!(get.as_mut());
            let mut asks: Vec<_> = (0..behind).map(|_| Box::pin(l.holder())).collect();
            for ask in &mut asks {
                let _ = futures::poll!(ask.as_mut());
            }
            // Calls in a crowd are written by the connection's writer task: its turn comes.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(Ok(()));
            }
            let _ = resume.recv_timeout(Duration::from_secs(120));
            Ok::<_, mp::Error>(())
        });
        if let (Err(e), Some(ready)) = (stalled, ready) {
            let _ = ready.send(Err(e));
        }
    })
}

async fn a_client_that_stops_reading_a_large_reply_releases_its_lock() -> TestResult {
    a_stopped_client_releases_its_lock(0).await
}

/// The same, the client having asked 3,000 more small questions behind the large reply:
/// their replies wait for the large one, and the server's loop for the connection, with
/// more replies than it hands its writer, waited for the writer, reading nothing and so
/// never seeing the silence. The writer now fails a send the client takes nothing of for
/// as long as a silent client is given.
async fn a_client_that_stops_reading_behind_many_replies_releases_its_lock() -> TestResult {
    a_stopped_client_releases_its_lock(3000).await
}

/// A client that stops after asking `behind` small questions behind a large reply
/// ([`stalled_client`]) has its lock released, the next acquirer told.
async fn a_stopped_client_releases_its_lock(behind: usize) -> TestResult {
    // A client that stops (hung, or cut off by the network) while the server writes it a
    // reply larger than the sockets hold: the server stops hearing its heartbeats and lets
    // its connection go, releasing its lock. (The server's loop for the connection waited
    // in that write, reading nothing, so it never saw the silence: the lock stayed held
    // while the client was stopped, for ever for a client that never reads again.)
    let m = tcp_manager().await?;
    let l = m.lock().await?;
    m.register("lock", &l).await?;
    let big = m.value(bytes::Bytes::from(vec![7u8; 16 << 20])).await?;
    m.register("big", &big).await?;
    let (resume, stalled) = std::sync::mpsc::channel();
    let (ready, stopped) = tokio::sync::oneshot::channel();
    let client = stalled_client(tcp(&m)?, behind, stalled, ready);
    stopped.await.map_err(|_| "the client's thread ended")??;
    ensure!(l.holder().await?.is_some(), "the client holds no lock");
    let r = tokio::time::timeout(Duration::from_secs(35), l.lock()).await;
    let _ = resume.send(());
    let joined = tokio::task::spawn_blocking(move || client.join()).await?;
    ensure!(joined.is_ok(), "the client's thread panicked");
    match r {
        Ok(Err(Error::LockOwnerDied { pid })) => {
            ensure!(pid == std::process::id(), "pid {pid}")
        }
        Ok(other) => return Err(format!("the next acquirer got {other:?}").into()),
        Err(_) => return Err("the lock of a stopped client is still held after 35 s".into()),
    }
    ensure!(l.try_lock().await?, "free after the report");
    m.shutdown().await?;
    Ok(())
}

/// Copies `from` to `to` at `rate` bytes a second (`None`: at once).
async fn pass<R, W>(mut from: R, mut to: W, rate: Option<usize>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; rate.map_or(64 << 10, |r| r / 10)];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
        if rate.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A TCP relay to `to` that passes what its clients send at `up` bytes a second and what
/// comes back at `down` (a slow network; `None`: at once); returns where it listens.
async fn slow_relay(
    to: SocketAddr,
    up: Option<usize>,
    down: Option<usize>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pass(server_read, client_write, down));
            tokio::spawn(pass(client_read, server_write, up));
        }
    });
    Ok(addr)
}

async fn a_request_slower_to_arrive_than_the_heartbeat_deadline_is_served() -> TestResult {
    // A request that takes longer than three heartbeats to arrive (a large value over a
    // slow network), while its bytes keep coming: the server waits for it. (The server took
    // the client for silent when no whole frame had come for 15 s, and closed the
    // connection under the request, which failed with `ManagerLost`.)
    let m = tcp_manager().await?;
    let via = slow_relay(tcp(&m)?, Some(200 << 10), None).await?;
    let c = Manager::connect(via, KEY).await?;
    let value = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let r = tokio::time::timeout(Duration::from_secs(45), c.value(value.clone()))
        .await
        .map_err(|_| "a slow request still waits")?;
    let v = r?;
    ensure!(v.get().await? == value, "the value that arrived differs");
    drop((v, c));
    m.shutdown().await?;
    Ok(())
}

async fn a_reply_slower_to_arrive_than_the_heartbeat_deadline_is_taken() -> TestResult {
    // The other way: a reply that takes longer than three heartbeats to arrive, its bytes
    // coming all along, is no silence of the server's.
    let m = tcp_manager().await?;
    let value = bytes::Bytes::from(vec![7u8; 4 << 20]);
    let v = m.value(value.clone()).await?;
    m.register("v", &v).await?;
    let via = slow_relay(tcp(&m)?, None, Some(200 << 10)).await?;
    let c = Manager::connect(via, KEY).await?;
    let there: mp::ValueProxy<bytes::Bytes> = c.get("v").await?;
    let r = tokio::time::timeout(Duration::from_secs(45), there.get())
        .await
        .map_err(|_| "a slow reply still waits")?;
    ensure!(r? == value, "the value that arrived differs");
    drop((there, c));
    m.shutdown().await?;
    Ok(())
}

/// The local ports of the TCP connections to `port` in network namespace `ns`.
fn client_ports(ns: &str, port: u16) -> Result<Vec<u16>, String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Htn", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .map_err(|e| format!("ss: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .filter(|&p| p != port)
        .collect())
}

/// Runs `body` on a runtime of its own, on a thread in network namespace `ns`: the sockets it
/// makes are that namespace's.
async fn in_namespace<F, Fut>(ns: String, body: F) -> TestResult
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = TestResult>,
{
    let run = move || -> TestResult {
        let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
        nix::sched::setns(
            std::os::fd::AsFd::as_fd(&file),
            nix::sched::CloneFlags::CLONE_NEWNET,
        )?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(body())
    };
    tokio::task::spawn_blocking(run).await?
}

async fn a_partitioned_client_fails_its_waits_and_loses_its_lock() -> TestResult {
    // A client cut off by the network (iptables drops its connection's packets both ways,
    // in a namespace of the test's own), holding a lock and waiting on a queue: its wait
    // fails with `ManagerLost`, the server lets its lock go (the next acquirer is told), and
    // its next call, on a connection the network carries, serves.
    if !support::installed("iptables") {
        println!("skipped: no iptables to drop a connection's packets with");
        return Ok(());
    }
    let Some(net) = support::netns::Net::new(1) else {
        return Ok(());
    };
    let (ns, name) = (net.host_ns(0), net.name());
    let body_ns = ns.clone();
    in_namespace(ns, move || async move {
        let m = Manager::builder()
            .address("127.0.0.1:0")
            .authkey(KEY)
            .serve()
            .await?;
        let addr = tcp(&m)?;
        m.register("lock", &m.lock().await?).await?;
        m.register("queue", &m.queue::<u8>().await?).await?;
        let cut = Manager::connect(addr, KEY).await?;
        let lock: LockProxy = cut.get("lock").await?;
        let queue: QueueProxy<u8> = cut.get("queue").await?;
        lock.lock().await?;
        let waiting = tokio::spawn(async move { queue.get().await });
        let ports = client_ports(&body_ns, addr.port())?;
        ensure!(ports.len() == 1, "the client's connections: {ports:?}");
        support::netns::Net::attach(&name)
            .ok_or("no namespaces")?
            .drop_port(0, ports[0])?;
        let other = Manager::connect(addr, KEY).await?;
        let next: LockProxy = other.get("lock").await?;
        let (got, waited) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(40), next.lock()),
            tokio::time::timeout(Duration::from_secs(40), waiting)
        );
        match got {
            Ok(Err(Error::LockOwnerDied { pid })) => {
                ensure!(pid == std::process::id(), "pid {pid}")
            }
            Ok(other) => return Err(format!("the next acquirer got {other:?}").into()),
            Err(_) => return Err("the cut-off client's lock is still held after 40 s".into()),
        }
        match waited {
            Ok(r) => ensure!(
                matches!(r?, Err(Error::ManagerLost { .. })),
                "the cut-off get gave another end"
            ),
            Err(_) => return Err("the cut-off client's get still waits after 40 s".into()),
        }
        // The cut-off client's next calls connect again, from another port, and serve; the
        // lock, free after the report, is there by its name.
        ensure!(
            lock.holder().await?.is_none(),
            "the lock is held after the report"
        );
        ensure!(
            lock.try_lock().await?,
            "the cut-off client cannot take the lock"
        );
        lock.release().await?;
        drop((lock, next, other, cut));
        m.shutdown().await?;
        Ok(())
    })
    .await?;
    drop(net);
    Ok(())
}

fn server_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One bad connection; `i` picks the kind of bad.
async fn bad_client(addr: SocketAddr, i: usize) -> Result<(), String> {
    let garbage: Vec<u8> = (0..48).map(|b| (b * 37 + i * 11) as u8).collect();
    let raw = |bytes: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink))
            .await
            .map_err(|_| format!("the server kept a bad connection of kind {}", i % 5))?
            .ok();
        Ok::<(), String>(())
    };
    match i % 5 {
        0 => raw(garbage).await,
        // A header announcing a 4 GiB frame.
        1 => raw(vec![0xff, 0xff, 0xff, 0xff, 0]).await,
        // A truncated frame: 100 bytes announced, 10 sent.
        2 => raw([&[0, 0, 0, 100, 0][..], &garbage[..10]].concat()).await,
        3 => match mp::Client::connect::<Vec<u8>>(addr, Some(b"not the key")).await {
            Err(Error::Authentication { .. }) => Ok(()),
            other => Err(format!("a wrong key gave {:?}", other.map(drop))),
        },
        // Past the exchange, a request that is garbage: that connection ends.
        _ => {
            let c = mp::Client::connect::<Vec<u8>>(addr, Some(KEY.as_bytes()))
                .await
                .map_err(|e| e.to_string())?;
            let _ = c.send_bytes(&garbage).await;
            let ended = tokio::time::timeout(Duration::from_secs(20), async {
                while c.recv_bytes().await.is_ok() {}
            })
            .await;
            ended.map_err(|_| "the server kept a connection that sent garbage".to_string())
        }
    }
}

async fn bad_input_storm_leaves_the_server_serving() -> TestResult {
    let m = Manager::builder()
        .address("127.0.0.1:0")
        .authkey(KEY)
        .handshake_timeout(Duration::from_millis(500))
        .start()
        .await?;
    let pid = m.pid().ok_or("no server process")?;
    let addr = tcp(&m)?;
    m.register("d", &m.dict::<u32, u32>().await?).await?;
    let good = Manager::connect(addr, KEY).await?;
    let d: DictProxy<u32, u32> = good.get("d").await?;
    d.insert(0, 0).await?;
    let before = server_fds(pid);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (d, stop) = (d.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                d.insert(n, n * 2).await?;
                if d.get(&n).await? != Some(n * 2) {
                    return Err(Error::Manager(format!("key {n} read back wrong")));
                }
            }
            Ok::<u32, Error>(n)
        })
    };
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(addr).await?);
    }
    let failures: Vec<String> = futures::stream::iter(0..10_000)
        .map(|i| bad_client(addr, i))
        .buffer_unordered(32)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    ensure!(
        failures.is_empty(),
        "{} bad clients: {:?}",
        failures.len(),
        failures.first()
    );
    for mut s in silent {
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut sink)).await;
        ensure!(r.is_ok(), "a silent client was never dropped");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = worker.await??;
    ensure!(calls > 0, "the good client made no call during the storm");
    ensure!(
        d.get(&calls).await? == Some(calls * 2),
        "the good client's last key"
    );
    ensure!(
        support::eventually(Duration::from_secs(20), || server_fds(pid) == before).await,
        "server descriptors: {before} before, {} after",
        server_fds(pid)
    );
    m.shutdown().await?;
    Ok(())
}

/// More silent connections than [`mp::MAX_HANDSHAKES`] on a manager's address (a child holds
/// 400 that never answer the challenge, under the default handshake timeout): a client with
/// the key that comes after all of them connects and calls long before they would time out,
/// the server closes the oldest silent ones rather than hold them all, and its descriptors
/// come back to where they were once they are gone.
async fn silent_sockets_lock_no_client_out() -> TestResult {
    let m = tcp_manager().await?;
    let pid = m.pid().ok_or("no server process")?;
    let addr = tcp(&m)?;
    // A first client and call, so that what the server sets up once is counted before.
    let first = Manager::connect(addr, KEY).await?;
    first.dict::<u32, u32>().await?.insert(0, 0).await?;
    let before = server_fds(pid);
    let silent = support::SilentSockets::open(addr).await?;
    // Half the handshake timeout, which waiting behind the silent sockets would take.
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let c = Manager::connect(addr, KEY).await?;
        let d = c.dict::<u32, u32>().await?;
        d.insert(1, 2).await?;
        let got = d.get(&1).await?;
        Ok::<_, Error>((c, got))
    })
    .await
    .map_err(|_| "the client waited behind the silent sockets")?;
    let (client, got) = served?;
    ensure!(got == Some(2), "the client's dict gave {got:?}");
    let bound = before + mp::MAX_HANDSHAKES + 16;
    ensure!(
        support::eventually(Duration::from_secs(10), || server_fds(pid) <= bound).await,
        "the server holds {} descriptors, more than {bound}",
        server_fds(pid)
    );
    silent.close().await?;
    drop(client);
    ensure!(
        support::eventually(Duration::from_secs(20), || server_fds(pid) == before).await,
        "server descriptors: {before} before, {} after",
        server_fds(pid)
    );
    drop(first);
    m.shutdown().await?;
    Ok(())
}

async fn example_manager_remote() -> TestResult {
    use tokio::io::AsyncBufReadExt;
    // A free port, so the test runs beside anything on 50000.
    let mut server = tokio::process::Command::new(support::example("manager_remote_server")?)
        .arg("127.0.0.1:0")
        .env("TKMP_MANAGER_AUTHKEY", "a test key")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = server.stdout.take().ok_or("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| "the server printed nothing")??
        .ok_or("the server ended")?;
    let address = first
        .strip_prefix("serving on ")
        .ok_or_else(|| format!("first line: {first}"))?
        .to_string();
    let client = |args: &[&str]| {
        let mut cmd = match support::example("manager_remote_client") {
            Ok(path) => tokio::process::Command::new(path),
            Err(e) => return Err(e),
        };
        cmd.args(args)
            .arg(&address)
            .env("TKMP_MANAGER_AUTHKEY", "a test key")
            .kill_on_drop(true);
        Ok(cmd)
    };
    let put = tokio::time::timeout(Duration::from_secs(30), client(&["put", "hello"])?.output())
        .await
        .map_err(|_| "the putting client hung")??;
    ensure!(
        put.status.success(),
        "put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = tokio::time::timeout(Duration::from_secs(30), client(&["get"])?.output())
        .await
        .map_err(|_| "the getting client hung")??;
    ensure!(
        get.status.success(),
        "get: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    ensure!(
        get.stdout == b"hello\n",
        "get printed {:?}",
        String::from_utf8_lossy(&get.stdout)
    );
    // A client with the wrong key fails, and the server serves on.
    let wrong = tokio::time::timeout(
        Duration::from_secs(30),
        client(&["get"])?
            .env("TKMP_MANAGER_AUTHKEY", "wrong")
            .output(),
    )
    .await
    .map_err(|_| "the wrong-key client hung")??;
    ensure!(!wrong.status.success(), "a wrong key was let in");
    ensure!(server.try_wait()?.is_none(), "the server ended");
    server.kill().await?;
    Ok(())
}

/// A queue reached by clients on this machine (through its ring) and by a client over TCP
/// (through the server) is one queue: items cross both ways in order, a get waiting in the
/// server before the ring was made still gets its item, and sizes and timeouts agree.
async fn local_and_remote_clients_share_one_queue() -> TestResult {
    let m = tcp_manager().await?;
    let q = m.queue::<u32>().await?;
    m.register("q", &q).await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let rq: QueueProxy<u32> = c.get("q").await?;
    ensure!(
        matches!(rq.get_nowait().await, Err(Error::Empty)),
        "empty over TCP"
    );
    let waiting = {
        let rq = rq.clone();
        tokio::spawn(async move { rq.get_timeout(Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    q.put(10).await?;
    let got = waiting.await?;
    ensure!(matches!(got, Ok(10)), "the waiting remote get: {got:?}");
    for i in 11..13 {
        rq.put(i).await?;
    }
    for i in 11..13 {
        ensure!(q.get().await? == i, "remote to local, in order");
    }
    for i in 0..1000 {
        q.put(i).await?;
    }
    ensure!(
        rq.qsize().await? == 1000 && q.qsize().await? == 1000,
        "sizes: {} over TCP, {} here",
        rq.qsize().await?,
        q.qsize().await?
    );
    for i in 0..1000 {
        let got = rq.get().await?;
        ensure!(got == i, "local to remote: {got} where {i} was due");
    }
    ensure!(
        matches!(
            rq.get_timeout(Duration::from_millis(10)).await,
            Err(Error::Empty)
        ),
        "remote timeout"
    );
    ensure!(
        matches!(q.get_nowait().await, Err(Error::Empty)),
        "local, empty"
    );
    let bounded = m.queue_with_maxsize::<u32>(1).await?;
    m.register("bounded", &bounded).await?;
    bounded.put(1).await?;
    let rb: QueueProxy<u32> = c.get("bounded").await?;
    let full = rb.put_timeout(2, Duration::from_millis(10)).await;
    ensure!(
        matches!(full.as_ref().map_err(|e| e.error()), Err(Error::Full)),
        "remote put on a full ring: {full:?}"
    );
    ensure!(
        rb.maxsize().await? == 1 && bounded.maxsize().await? == 1,
        "maxsize"
    );
    m.shutdown().await?;
    let after = q.put(1).await;
    ensure!(
        matches!(
            after.as_ref().map_err(|e| e.error()),
            Err(Error::ManagerLost { .. })
        ),
        "a put after shutdown: {after:?}"
    );
    Ok(())
}

/// A client that reached the manager by address shuts down immediately a queue that a local
/// client made a ring of: the items left are dropped and counted, `join` returns, and the
/// local client's gets end. (It failed with "this request does not wait", the queue left
/// open.)
async fn an_addressed_client_shuts_down_a_ring_queue_immediately() -> TestResult {
    let m = tcp_manager().await?;
    let q = m.joinable_queue::<u32>(0).await?;
    m.register("jq", &q).await?;
    for i in 0..3 {
        q.put(i).await?;
    }
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let rq: JoinableQueueProxy<u32> = c.get("jq").await?;
    let dropped = rq.shutdown_immediate().await;
    ensure!(
        matches!(dropped, Ok(3)),
        "shutdown_immediate over TCP: {dropped:?}"
    );
    ensure!(
        matches!(q.get_nowait().await, Err(Error::ShutDown)),
        "a local get after it"
    );
    tokio::time::timeout(Duration::from_secs(20), rq.join()).await??;
    m.shutdown().await?;
    Ok(())
}

/// Items and counts a queue holds before a client on this machine first uses it move into
/// its ring: nothing is lost, the order holds, and a joinable queue still counts the items
/// handed out and not yet done.
async fn a_queue_keeps_its_items_and_counts_when_local_clients_come() -> TestResult {
    let m = tcp_manager().await?;
    let q = m.queue::<String>().await?;
    let jq = m.joinable_queue::<u32>(0).await?;
    m.register("q", &q).await?;
    m.register("jq", &jq).await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let rq: QueueProxy<String> = c.get("q").await?;
    let rjq: JoinableQueueProxy<u32> = c.get("jq").await?;
    let big = "x".repeat(4000);
    for s in ["a", "b", big.as_str(), "c"] {
        rq.put(s.to_string()).await?;
    }
    for i in 0..3 {
        rjq.put(i).await?;
    }
    ensure!(rjq.get().await? == 0, "first");
    // The queue moves into a ring once it holds no item too large for a slot: all comes,
    // in order, before and after.
    for want in ["a", "b", big.as_str(), "c"] {
        ensure!(q.get().await? == want, "order across the move");
    }
    for s in ["d", "e"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        rq.put(s.to_string()).await?;
    }
    for want in ["d", "e"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        ensure!(q.get().await? == want, "then through the ring");
    }
    ensure!(
        jq.unfinished().await? == 3,
        "unfinished {}",
        jq.unfinished().await?
    );
    ensure!(
        jq.get().await? == 1 && jq.get().await? == 2,
        "joinable order"
    );
    jq.task_done().await?;
    jq.task_done().await?;
    ensure!(jq.unfinished().await? == 1, "one left: the remote one");
    let joining = {
        let jq = jq.clone();
        tokio::spawn(async move { jq.join().await })
    };
    rjq.task_done().await?;
    tokio::time::timeout(Duration::from_secs(20), joining)
        .await
        .map_err(|_| "join still waits")???;
    rjq.join().await?;
    ensure!(
        matches!(jq.task_done().await, Err(Error::TaskDoneTooManyTimes)),
        "one task_done too many"
    );
    m.shutdown().await?;
    Ok(())
}

/// A client on this machine waiting on a queue's ring is told when the server dies, as a
/// call waiting in the server is: nothing hangs.
async fn a_dead_server_fails_local_waits_on_a_queue() -> TestResult {
    let m = Manager::start().await?;
    let q = m.queue::<u8>().await?;
    q.put(1).await?;
    ensure!(q.get().await? == 1, "the ring works");
    a_get_fails_when_the_server_dies(&m, &q, None).await?;
    let after = q.get_nowait().await;
    ensure!(
        matches!(after, Err(Error::ManagerLost { .. })),
        "after: {after:?}"
    );
    Ok(())
}

async fn put_then_shut_down_from_afar(address: String, n: u32) -> mp::Result<()> {
    let m = Manager::connect(address.as_str(), KEY).await?;
    let q: QueueProxy<u32> = m.get("jobs").await?;
    for i in 0..n {
        q.put(i).await?;
    }
    q.shutdown().await
}

/// A queue proxy's stream, over TCP, takes what a client process put before it shut the
/// queue down, in order, then ends; on a server that dies, its last item is the loss.
async fn a_queue_proxy_stream_ends_at_shutdown_or_with_the_server() -> TestResult {
    use futures::StreamExt;
    let m = tcp_manager().await?;
    let (jobs, more) = (m.queue::<u32>().await?, m.queue::<u32>().await?);
    m.register("jobs", &jobs).await?;
    m.register("more", &more).await?;
    let address = tcp(&m)?;
    let client = Manager::connect(address, KEY).await?;
    let remote: QueueProxy<u32> = client.get("jobs").await?;
    let mut putter = Process::new(put_then_shut_down_from_afar, (address.to_string(), 100))
        .start()
        .await?;
    let got = tokio::time::timeout(
        Duration::from_secs(30),
        remote.into_stream().collect::<Vec<_>>(),
    )
    .await?
    .into_iter()
    .collect::<mp::Result<Vec<u32>>>()?;
    join_ok(&mut putter).await?;
    ensure!(
        got == (0..100).collect::<Vec<_>>(),
        "the stream gave {got:?}"
    );

    let mut items = client.get::<QueueProxy<u32>>("more").await?.into_stream();
    more.put(7).await?;
    let first = tokio::time::timeout(Duration::from_secs(20), items.next()).await?;
    ensure!(matches!(first, Some(Ok(7))), "first: {first:?}");
    support::pool::kill9(m.pid().ok_or("no server process")?)?;
    let last = tokio::time::timeout(Duration::from_secs(20), items.next()).await?;
    ensure!(
        matches!(last, Some(Err(Error::ManagerLost { .. }))),
        "after the server's death: {last:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(20), items.next()).await?;
    ensure!(end.is_none(), "after the loss: {end:?}");
    Ok(())
}

/// Takes `n` items of the queue named `name` from afar, exiting 0 if they were `0..n` in
/// order, 4 if not.
async fn take_in_order_from_afar(address: String, name: String, n: u32) -> ExitCode {
    let taken = async {
        let m = Manager::connect(address.as_str(), KEY).await?;
        let q: QueueProxy<u32> = m.get(&name).await?;
        let mut got = Vec::new();
        for _ in 0..n {
            got.push(q.get().await?);
        }
        Ok::<_, mp::Error>(got)
    };
    match taken.await {
        Ok(got) if got == (0..n).collect::<Vec<_>>() => ExitCode::SUCCESS,
        r => {
            eprintln!("took {r:?}");
            ExitCode::from(4)
        }
    }
}

/// A queue proxy's sink, over TCP, puts a stream's items in order, waiting for room in a
/// bounded queue another process empties; once the server is gone, an item sent comes back
/// with `ManagerLost`.
async fn a_queue_proxy_sink_puts_in_order_and_hands_back_what_a_lost_server_did_not_take()
-> TestResult {
    use futures::{SinkExt, StreamExt};
    let m = tcp_manager().await?;
    m.register("jobs", &m.queue_with_maxsize::<u32>(4).await?)
        .await?;
    let address = tcp(&m)?;
    let client = Manager::connect(address, KEY).await?;
    let remote: QueueProxy<u32> = client.get("jobs").await?;
    let args = (address.to_string(), "jobs".to_string(), 300);
    let mut taker = Process::new(take_in_order_from_afar, args).start().await?;
    let items = futures::stream::iter(0..300).map(Ok);
    tokio::time::timeout(
        Duration::from_secs(60),
        items.forward(remote.clone().into_sink()),
    )
    .await??;
    ensure!(
        join_code(&mut taker).await? == 0,
        "the taker did not take 0..300 in order"
    );

    let mut sink = remote.into_sink();
    support::pool::kill9(m.pid().ok_or("no server process")?)?;
    let r = tokio::time::timeout(Duration::from_secs(30), sink.send(5)).await?;
    match r.map_err(|e| e.into_parts()) {
        Err((Error::ManagerLost { .. }, 5)) => Ok(()),
        other => Err(format!("a put to a dead server: {other:?}").into()),
    }
}

async fn put_range(q: QueueProxy<u32>, from: u32, n: u32) -> mp::Result<()> {
    for i in from..from + n {
        q.put(i).await?;
    }
    Ok(())
}

/// Takes items until `total` were taken by all takers together, each `get` given
/// `patience` (a `get` withdrawn when its time is up, after the server may have handed it
/// an item, which is then given back).
async fn take_until(
    q: QueueProxy<u32>,
    taken: std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    total: usize,
    (patience, pause): (Duration, Duration),
) -> mp::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while taken.lock().map_or(0, |t| t.len()) < total {
        if tokio::time::Instant::now() > deadline {
            return Err(mp::Error::Timeout);
        }
        if let Ok(r) = tokio::time::timeout(patience, q.get()).await {
            let item = r?;
            if let Ok(mut t) = taken.lock() {
                t.push(item);
            }
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

/// Two producer processes put on a queue's ring; this process takes from the ring and, over
/// TCP, through the server, with gets withdrawn at every point: every item comes out once.
async fn local_and_remote_consumers_take_every_item_once() -> TestResult {
    const N: u32 = 2000;
    let m = tcp_manager().await?;
    let q = m.queue::<u32>().await?;
    m.register("q", &q).await?;
    q.qsize().await?;
    let c = Manager::connect(tcp(&m)?, KEY).await?;
    let rq: QueueProxy<u32> = c.get("q").await?;
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let total = 2 * N as usize;
    // Over TCP, as fast as they can; here, slowly: most items go through the server.
    let us = Duration::from_micros;
    let takers = [
        (rq.clone(), (us(150), Duration::ZERO)),
        (rq.clone(), (us(700), Duration::ZERO)),
        (q.clone(), (us(90), us(2000))),
    ]
    .map(|(q, times)| tokio::spawn(take_until(q, taken.clone(), total, times)));
    let mut producers = Vec::new();
    for from in [0, N] {
        producers.push(
            Process::new(put_range, (q.clone(), from, N))
                .start()
                .await?,
        );
    }
    for p in &mut producers {
        join_ok(p).await?;
    }
    for t in takers {
        t.await??;
    }
    let mut got = taken.lock().map_err(|_| "poisoned")?.clone();
    got.sort_unstable();
    let want: Vec<u32> = (0..2 * N).collect();
    ensure!(
        got == want,
        "{} items taken of {}; first wrong: {:?}",
        got.len(),
        want.len(),
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    ensure!(q.qsize().await? == 0, "left over: {}", q.qsize().await?);
    m.shutdown().await?;
    Ok(())
}
