//! Cases of CPython's `Lib/test/_test_multiprocessing.py` that no other test file ported,
//! across areas: processes, pipes and polling, listeners, `wait`, locks, barriers, shared
//! values and shared memory, queues, the pool and managers. Each test names the Python case
//! it comes from; where the crate's API differs (a `Duration` for a float timeout, a guard
//! for a bare `acquire`), the test keeps the case's meaning, not its spelling.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use support::pool::{mul, sqr};
use support::process::sleep_ms;
use support::{TestResult, join_code, join_ok, start, temp_path};
use tokio_multiprocessing::{
    self as mp, Array, Barrier, Client, Connection, Error, Event, Fd, Listener, Lock, Pipe, Pool,
    Process, Queue, RLock, RawArray, RawValue, Semaphore, ShareableItem, ShareableList,
    SharedMemory, SimpleQueue, Value,
};

const LONG: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(support::unique_name(&format!("tkmp-cpy-{tag}")))
}

// ================================================================ _TestProcess

/// `_TestProcess._test_recursion`, one level: sends its id, then starts two children that
/// send theirs, one after the other.
async fn recursion(w: Connection<Vec<u32>>, id: Vec<u32>) {
    w.send(&id).await.expect("send");
    for i in 0..2 {
        let mut next = id.clone();
        next.push(i);
        let mut p = Process::new(recursion_leaf, (w.clone_for_test(), next))
            .start()
            .await
            .expect("start");
        assert_eq!(p.join().await.expect("join"), 0);
    }
}

/// `_TestProcess._test_recursion` at the bottom: sends its id.
async fn recursion_leaf(w: Connection<Vec<u32>>, id: Vec<u32>) {
    w.send(&id).await.expect("send");
}

/// A connection cannot be cloned; a child gets a copy of its descriptor by being passed it.
trait CloneForTest {
    fn clone_for_test(&self) -> Self;
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> CloneForTest for Connection<T> {
    fn clone_for_test(&self) -> Self {
        mp::__private::roundtrip(self).expect("a connection crosses")
    }
}

/// `_TestProcess.test_recursion`: processes that start processes, depth first, all writing
/// to one pipe; the messages come in the order the tree was walked.
async fn process_recursion() -> TestResult {
    let (r, w) = Pipe::<Vec<u32>>::simplex()?;
    w.send(&vec![]).await?;
    for i in 0..2 {
        let mut p = start(recursion, (w.clone_for_test(), vec![i])).await?;
        join_ok(&mut p).await?;
    }
    drop(w);
    let mut got = Vec::new();
    while r.poll(Duration::ZERO).await? {
        match r.recv().await {
            Ok(v) => got.push(v),
            Err(Error::Closed) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let want: Vec<Vec<u32>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 1],
        vec![1],
        vec![1, 0],
        vec![1, 1],
    ];
    ensure!(got == want, "got {got:?}");
    Ok(())
}

/// `_TestProcess._kill_process`: `join(0)` of a running child returns `None` at once and
/// leaves it running; terminate, then join gives `-SIGTERM`, and it is no longer alive or
/// among the active children.
async fn join_zero_then_terminate() -> TestResult {
    for m in support::process::METHODS {
        let mut p = support::process::start_sleeper(m).await?;
        ensure!(p.is_alive(), "{m:?}: alive");
        ensure!(p.exitcode()?.is_none(), "{m:?}: exitcode while running");
        ensure!(
            mp::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m:?}: not among the active children"
        );
        ensure!(
            p.join_timeout(Duration::ZERO).await?.is_none(),
            "{m:?}: join(0)"
        );
        ensure!(p.is_alive(), "{m:?}: alive after join(0)");
        p.terminate()?;
        ensure!(join_code(&mut p).await? == -15, "{m:?}: -SIGTERM");
        ensure!(!p.is_alive(), "{m:?}: alive after join");
        ensure!(
            !mp::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m:?}: still among the active children"
        );
        ensure!(p.join().await? == -15, "{m:?}: a second join");
    }
    Ok(())
}

/// `_TestProcess.test_interrupt_no_handler`: SIGINT (Python's `Process.interrupt()`) kills
/// a child that does not handle it, with `-SIGINT`.
async fn sigint_kills_a_child() -> TestResult {
    for m in support::process::METHODS {
        let mut p = support::process::start_sleeper(m).await?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )?;
        ensure!(join_code(&mut p).await? == -2, "{m:?}: -SIGINT");
    }
    Ok(())
}

/// `_TestProcess.test_many_processes`: many children that end at once exit with 0; many
/// terminated right after they started exit with `-SIGTERM`.
async fn many_processes() -> TestResult {
    for m in support::process::METHODS {
        let mut procs = Vec::new();
        for _ in 0..20 {
            procs.push(
                Process::new(sleep_ms, (10,))
                    .start_method(m)
                    .start()
                    .await?,
            );
        }
        for p in &mut procs {
            ensure!(join_code(p).await? == 0, "{m:?}: short sleeper");
        }
        let mut procs = Vec::new();
        for _ in 0..20 {
            procs.push(
                Process::new(sleep_ms, (100_000,))
                    .start_method(m)
                    .start()
                    .await?,
            );
        }
        for p in &procs {
            p.terminate()?;
        }
        for p in &mut procs {
            let code = join_code(p).await?;
            ensure!(code == -15, "{m:?}: terminated child ended with {code}");
        }
    }
    Ok(())
}

/// The number of descriptors the calling process has open.
fn fd_count() -> u32 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u32)
}

async fn report_fds(q: Queue<u32>, go: Event) {
    q.put(fd_count()).await.expect("put");
    go.wait_timeout(LONG).await.expect("wait");
}

/// Whether descriptor `fd` is closed here: `fcntl(F_GETFD)` fails with `EBADF`.
fn fd_closed(fd: i32) -> bool {
    // SAFETY: only asks the kernel about the number; nothing is closed or owned.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF)
}

fn exit_7_unless_closed(fd: i32) -> ExitCode {
    if fd_closed(fd) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(7)
    }
}

/// `TestCloseFds.test_closefd`: a descriptor of the parent's that is not close-on-exec (a
/// careless library's), and that is not passed as an argument, is not open in a child of
/// any start method, nor in a pool's worker.
async fn child_does_not_inherit_descriptors() -> TestResult {
    use std::os::fd::AsRawFd;
    let sock = std::net::TcpListener::bind("127.0.0.1:0")?;
    // dup() gives a descriptor without close-on-exec; past 50, so that the child's own
    // descriptors cannot take its number.
    let mut high = nix::unistd::dup(&sock)?;
    let mut low = Vec::new();
    while high.as_raw_fd() < 50 {
        let next = nix::unistd::dup(&high)?;
        low.push(std::mem::replace(&mut high, next));
    }
    drop(low);
    let fd = high.as_raw_fd();
    for m in support::process::METHODS {
        let mut p = Process::new(exit_7_unless_closed, (fd,))
            .start_method(m)
            .start()
            .await?;
        ensure!(
            join_code(&mut p).await? == 0,
            "{m:?}: descriptor {fd} was open in the child"
        );
    }
    let pool = Pool::new(1).await?;
    ensure!(
        pool.apply(fd_closed, (fd,)).await?,
        "descriptor {fd} was open in a pool worker"
    );
    Ok(())
}

/// `_TestProcess.test_child_fd_inflation`: a child's descriptors do not grow with the
/// number of children running beside it.
async fn child_fd_inflation() -> TestResult {
    for m in support::process::METHODS {
        let q = Queue::<u32>::new()?;
        let go = Event::new()?;
        let mut procs = Vec::new();
        for _ in 0..5 {
            procs.push(
                Process::new(report_fds, (q.clone(), go.clone()))
                    .start_method(m)
                    .start()
                    .await?,
            );
        }
        let mut counts = Vec::new();
        for _ in 0..5 {
            counts.push(q.get_timeout(LONG).await?);
        }
        go.set();
        for p in &mut procs {
            join_ok(p).await?;
        }
        counts.dedup();
        ensure!(counts.len() == 1, "{m:?}: descriptor counts {counts:?}");
    }
    Ok(())
}

fn close_stdio_and_set(e: Event, which: i32) {
    // SAFETY: the test owns nothing else on descriptor 1 or 2 in this child.
    drop(unsafe { OwnedFd::from_raw_fd(which) });
    e.set();
}

/// `_TestProcess.test_error_on_stdio_flush_2`: a child that closes its stdout or stderr
/// still ends with 0.
async fn closed_stdio_in_child() -> TestResult {
    for which in [1, 2] {
        let e = Event::new()?;
        let mut p = start(close_stdio_and_set, (e.clone(), which)).await?;
        ensure!(join_code(&mut p).await? == 0, "descriptor {which} closed");
        ensure!(e.is_set(), "the child ran");
    }
    Ok(())
}

async fn start_pool_and_map() {
    let pool = Pool::new(4).await.expect("pool");
    let got = pool.map(sqr, 1..8).await.expect("map");
    assert_eq!(got, vec![1, 4, 9, 16, 25, 36, 49]);
    pool.close();
    pool.join().await.expect("join");
}

async fn queue_in_child() {
    let q = Queue::<u32>::new().expect("queue");
    let mut p = Process::new(try_get_nowait, (q,))
        .daemon(true)
        .start()
        .await
        .expect("start");
    assert_eq!(p.join().await.expect("join"), 0);
}

fn try_get_nowait(q: Queue<u32>) {
    assert!(matches!(q.get_nowait(), Err(Error::Empty)));
}

/// `TestStdinBadfiledescriptor.test_pool_in_process` and `test_queue_in_process`: a child
/// makes a pool of its own, or a queue it passes to a grandchild.
async fn pool_and_queue_in_a_child() -> TestResult {
    let mut p = start(start_pool_and_map, ()).await?;
    ensure!(join_code(&mut p).await? == 0, "pool in a child");
    let mut p = start(queue_in_child, ()).await?;
    ensure!(join_code(&mut p).await? == 0, "queue in a child");
    Ok(())
}

// ================================================================ _TestConnection, _TestPoll

async fn echo_bytes(conn: Connection<()>) {
    loop {
        let m = conn.recv_bytes().await.expect("recv");
        if m.is_empty() {
            break;
        }
        conn.send_bytes(&m).await.expect("send");
    }
}

/// `_TestConnection.test_spawn_close`: the parent drops its copy of the child's end right
/// after the start; the child's copy works on.
async fn spawn_close() -> TestResult {
    let (conn, child_conn) = Pipe::<()>::new()?;
    let mut p = start(echo_bytes, (child_conn,)).await?;
    // child_conn was moved into the arguments and is closed here already.
    conn.send_bytes(b"hello").await?;
    ensure!(conn.recv_bytes().await? == b"hello", "echo after the close");
    conn.send_bytes(b"").await?;
    join_ok(&mut p).await
}

/// `_TestPoll.test_empty_string`: an empty message makes `poll` true, and stays there until
/// it is received.
async fn poll_empty_string() -> TestResult {
    let (a, b) = Pipe::<()>::new()?;
    ensure!(!a.poll(Duration::ZERO).await?, "nothing sent yet");
    b.send_bytes(b"").await?;
    ensure!(a.poll(Duration::ZERO).await?, "an empty message is ready");
    ensure!(a.poll(Duration::ZERO).await?, "still ready");
    ensure!(a.recv_bytes().await?.is_empty(), "the empty message");
    ensure!(!a.poll(Duration::ZERO).await?, "nothing after it");
    Ok(())
}

async fn send_strings(conn: Connection<()>, strings: Vec<Vec<u8>>) {
    for s in strings {
        tokio::time::sleep(Duration::from_millis(20)).await;
        conn.send_bytes(&s).await.expect("send");
    }
}

/// `_TestPoll.test_strings`: messages, empty ones among them, come one by one, as sent.
async fn poll_strings() -> TestResult {
    let strings: Vec<Vec<u8>> = [&b"hello"[..], b"", b"a", b"b", b"", b"bye", b"", b"lop"]
        .iter()
        .map(|s| s.to_vec())
        .collect();
    let (a, b) = Pipe::<()>::new()?;
    let mut p = start(send_strings, (b, strings.clone())).await?;
    for s in &strings {
        ensure!(a.poll(LONG).await?, "nothing came");
        let x = a.recv_bytes().await?;
        ensure!(&x == s, "got {x:?}, expected {s:?}");
    }
    join_ok(&mut p).await
}

async fn send_three(b: Connection<()>) {
    for m in [&b"a"[..], b"b", b"cd"] {
        b.send_bytes(m).await.expect("send");
    }
}

/// `_TestPoll.test_dont_merge`: messages sent back to back are received one by one, and
/// `poll` between them tells the next is there.
async fn poll_dont_merge() -> TestResult {
    let (a, b) = Pipe::<()>::new()?;
    ensure!(!a.poll(Duration::ZERO).await?, "poll(0.0)");
    ensure!(!a.poll(Duration::from_millis(100)).await?, "poll(0.1)");
    let mut p = start(send_three, (b,)).await?;
    ensure!(a.recv_bytes().await? == b"a", "a");
    ensure!(a.poll(LONG).await? && a.poll(LONG).await?, "b is ready");
    ensure!(a.recv_bytes().await? == b"b", "b");
    ensure!(a.poll(LONG).await? && a.poll(LONG).await?, "cd is ready");
    ensure!(a.poll(Duration::ZERO).await?, "poll(0.0)");
    ensure!(a.recv_bytes().await? == b"cd", "cd");
    join_ok(&mut p).await
}

/// `_TestConnection.test_missing_fd_transfer`: a message that should carry a descriptor but
/// comes without one is an error for the receiver, not a crash.
async fn missing_fd_transfer() -> TestResult {
    let (a, b) = Pipe::<Fd>::new()?;
    for bytes in [&[0x00u8][..], &[0x01], &[0xc0], &[]] {
        a.send_bytes(bytes).await?;
        let got = b.recv().await;
        ensure!(got.is_err(), "{bytes:?} without a descriptor gave {got:?}");
    }
    Ok(())
}

async fn wait_for_sigusr1_twice(conn: Connection<u32>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1()).expect("handler");
    conn.send(&0).await.expect("ready");
    let x = conn.recv().await.expect("recv");
    conn.send(&x).await.expect("send");
    let _ = usr1.recv().await;
    conn.send_bytes(&vec![b'x'; 4 << 20])
        .await
        .expect("send big");
}

/// `TestIgnoreEINTR.test_ignore`: a signal the child handles, arriving while it receives or
/// sends, interrupts neither.
async fn signal_during_recv_and_send() -> TestResult {
    let (conn, child) = Pipe::<u32>::new()?;
    let mut p = start(wait_for_sigusr1_twice, (child,)).await?;
    ensure!(conn.recv_timeout(LONG).await? == 0, "ready");
    let pid = nix::unistd::Pid::from_raw(p.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)?;
    conn.send(&1234).await?;
    ensure!(conn.recv_timeout(LONG).await? == 1234, "echo");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1)?;
    let big = conn.recv_bytes().await?;
    ensure!(
        big.len() == 4 << 20 && big.iter().all(|&b| b == b'x'),
        "big message"
    );
    join_ok(&mut p).await
}

// ================================================================ _TestListener(Client)

/// `_TestListener.test_multiple_bind` with a socket path: a second listener on the path of
/// a live one fails, and the first keeps its path.
async fn multiple_bind_unix() -> TestResult {
    let path = unique("bind");
    let _ = std::fs::remove_file(&path);
    let l = Listener::bind(&path, None)?;
    let second = Listener::bind(&path, None);
    ensure!(second.is_err(), "a second bind on a live path succeeded");
    ensure!(path.exists(), "the failed bind removed the first's path");
    let c = Client::connect::<u32>(&path, None).await?;
    let d: Connection<u32> = l.accept().await?;
    c.send(&1729).await?;
    ensure!(d.recv().await? == 1729, "the first listener still serves");
    drop(l);
    Ok(())
}

/// `_TestListener.test_context` and `_TestConnection.test_context`, for a socket path and an
/// abstract name: a listener used as Python's `with` block uses it serves a client; the
/// end of either connection is EOF (`Closed`) to the other; and once the listener is gone,
/// a client of its address is refused (Python's `accept` after `close` raises `OSError`),
/// its socket file removed. Each round runs in a child of its own: in this process, where
/// other tests start children, a child between its clone and its exec holds a copy of
/// every descriptor for a moment, the listener's too, so that its name may still be bound.
async fn listener_and_connection_after_their_block() -> TestResult {
    let path = unique("ctx");
    let abstract_name = format!("\0{}", support::unique_name("tkmp-cpy-ctx"));
    for address in [path.clone(), std::path::PathBuf::from(abstract_name)] {
        let round = mp::Process::call(listener_context_round, (address,))
            .start()
            .await?
            .join()
            .await?;
        ensure!(round.is_ok(), "{round:?}");
    }
    ensure!(!path.exists(), "the socket file is left");
    Ok(())
}

/// One round of [`listener_and_connection_after_their_block`] at `address`; what went
/// wrong in words.
async fn listener_context_round(address: std::path::PathBuf) -> Result<(), String> {
    let round = async {
        {
            let l = Listener::bind(&address, None)?;
            let c = Client::connect::<u32>(&address, None).await?;
            let d: Connection<u32> = l.accept().await?;
            c.send(&1729).await?;
            ensure!(d.recv().await? == 1729, "d.recv()");
            d.send(&1730).await?;
            ensure!(c.recv().await? == 1730, "c.recv()");
            drop(c);
            let r = d.recv().await;
            ensure!(
                matches!(r, Err(Error::Closed)),
                "recv after the client: {r:?}"
            );
            let c = Client::connect::<u32>(&address, None).await?;
            drop(l.accept::<u32>().await?);
            let r = c.recv().await;
            ensure!(
                matches!(r, Err(Error::Closed)),
                "recv after the server: {r:?}"
            );
        }
        let r = Client::connect::<u32>(&address, None).await;
        ensure!(r.is_err(), "a client of a closed listener connected");
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    round.await.map_err(|e| format!("{address:?}: {e}"))
}

/// `_TestListener.test_abstract_socket`: a listener at `"\0name"` is in Linux's abstract
/// namespace: a client in a child reaches it by the same string, no file is made, and a
/// manager serves there too.
async fn abstract_socket() -> TestResult {
    let name = format!("\0{}", support::unique_name("tkmp-cpy-abstract"));
    let l = Listener::bind(name.as_str(), Some(b"key"))?;
    ensure!(
        *l.address() == mp::Address::Unix(name.clone().into()),
        "bound at {:?}",
        l.address()
    );
    let mut p = start(
        connect_send_hello,
        (std::path::PathBuf::from(&name), Some(b"key".to_vec())),
    )
    .await?;
    let conn: Connection<String> = l.accept().await?;
    ensure!(conn.recv().await? == "hello", "message");
    join_ok(&mut p).await?;
    ensure!(
        !std::path::Path::new(&name[1..]).exists(),
        "a file was made for an abstract name"
    );
    drop(l);
    // Its name is free again once its listener is gone. Asked in a child of its own: in
    // this process, where other tests start children, a child between its clone and its
    // exec holds a copy of every descriptor for a moment, so the name may still be bound.
    let rebound = mp::Process::call(bind_drop_bind, (format!("{name}-child"),))
        .start()
        .await?
        .join()
        .await?;
    ensure!(rebound.is_ok(), "{rebound:?}");

    let manager_name = format!("{name}-manager");
    let manager = mp::Manager::builder()
        .address(manager_name.as_str())
        .authkey(b"key")
        .start()
        .await?;
    let client = mp::Manager::connect(manager_name.as_str(), b"key").await?;
    let d = client.dict::<String, u32>().await?;
    d.insert("k".into(), 7).await?;
    ensure!(d.get(&"k".into()).await? == Some(7), "the manager's dict");
    drop(d);
    drop(client);
    manager.shutdown().await?;
    Ok(())
}

/// Binds `name`, drops the listener and binds `name` again; the error in words if one fails.
async fn bind_drop_bind(name: String) -> Result<(), String> {
    drop(Listener::bind(name.as_str(), None).map_err(|e| format!("first bind: {e}"))?);
    drop(Listener::bind(name.as_str(), None).map_err(|e| format!("bind after drop: {e}"))?);
    Ok(())
}

/// `_TestListener.test_empty_authkey` (bpo-43952): an empty key is a key.
async fn empty_authkey() -> TestResult {
    let l = Listener::bind("127.0.0.1:0", Some(b""))?;
    let addr = l.address().clone();
    let client = tokio::spawn(async move {
        let c = Client::connect::<u32>(&addr, Some(b"")).await?;
        c.send(&1729).await?;
        Ok::<_, Error>(c)
    });
    let d: Connection<u32> = l.accept().await?;
    ensure!(d.recv().await? == 1729, "message");
    let _c = client.await??;
    Ok(())
}

async fn connect_send_hello(address: std::path::PathBuf, key: Option<Vec<u8>>) {
    let c = Client::connect::<String>(&address, key.as_deref())
        .await
        .expect("connect");
    c.send(&"hello".to_string()).await.expect("send");
}

/// `_TestListenerClient.test_issue14725`: a client that connected, sent and closed before
/// the listener's `accept` is accepted, and its message received.
async fn client_gone_before_accept() -> TestResult {
    let path = unique("gone");
    let _ = std::fs::remove_file(&path);
    let l = Listener::bind(&path, None)?;
    let mut p = start(connect_send_hello, (path.clone(), None)).await?;
    join_ok(&mut p).await?;
    let conn: Connection<String> = l.accept().await?;
    ensure!(conn.recv().await? == "hello", "message");
    Ok(())
}

/// `_TestListenerClient.test_issue16955`: the client side polls a message the accepted side
/// sent.
async fn client_polls_accepted_side() -> TestResult {
    for tcp in [false, true] {
        let path = unique("poll");
        let _ = std::fs::remove_file(&path);
        let l = if tcp {
            Listener::bind("127.0.0.1:0", None)?
        } else {
            Listener::bind(&path, None)?
        };
        let c = Client::connect::<()>(l.address(), None).await?;
        let a: Connection<()> = l.accept().await?;
        a.send_bytes(b"hello").await?;
        ensure!(c.poll(LONG).await?, "tcp={tcp}: nothing to poll");
        ensure!(c.recv_bytes().await? == b"hello", "tcp={tcp}: message");
    }
    Ok(())
}

// ================================================================ TestWait

fn sleep_then_exit(sem: Semaphore, ms: u64) {
    sem.release().expect("release");
    std::thread::sleep(Duration::from_millis(ms));
}

/// `TestWait.test_wait_timeout`: nothing ready gives an empty list after the timeout; then
/// the end that has a message.
async fn wait_timeout() -> TestResult {
    let (a, b) = Pipe::<u32>::new()?;
    let res = mp::wait(&[&a, &b], Some(Duration::from_millis(200))).await?;
    ensure!(res.is_empty(), "{res:?}");
    b.send(&0).await?;
    let res = mp::wait(&[&a, &b], Some(LONG)).await?;
    ensure!(res == vec![0], "{res:?}");
    Ok(())
}

/// `TestWait.test_wait_integer`: a process's sentinel among pipe ends; each becomes ready in
/// turn and stays so.
async fn wait_integer() -> TestResult {
    let sem = Semaphore::new(0)?;
    let (a, b) = Pipe::<u32>::new()?;
    let mut p = start(sleep_then_exit, (sem.clone(), 300)).await?;
    sem.acquire_timeout(LONG).await?.forget();
    let res = mp::wait(&[&a, &p, &b], Some(LONG)).await?;
    ensure!(res == vec![1], "the sentinel: {res:?}");
    a.send(&0).await?;
    let res = mp::wait(&[&a, &p, &b], Some(LONG)).await?;
    ensure!(res == vec![1, 2], "sentinel and b: {res:?}");
    b.send(&0).await?;
    let res = mp::wait(&[&a, &p, &b], Some(LONG)).await?;
    ensure!(res == vec![0, 1, 2], "all three: {res:?}");
    ensure!(p.join().await? == 0, "exit code");
    Ok(())
}

/// Writes its index on the socket it was given once `go` is set, then ends.
async fn write_index_on(sock: Fd, i: u8, go: Event) {
    use std::io::Write;
    go.wait_timeout(LONG).await.expect("go");
    let mut s = std::os::unix::net::UnixStream::from(sock.into_owned());
    s.write_all(&[i]).expect("write");
}

/// `TestWait.test_wait_socket`: sockets whose other ends children hold become ready, by
/// their descriptors, as the children write; a socket nobody writes to is never reported.
async fn wait_socket() -> TestResult {
    use std::io::Read;
    use std::os::fd::AsFd;
    let go = Event::new()?;
    let mut ours = Vec::new();
    let mut children = Vec::new();
    for i in 0..3u8 {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        ours.push(a);
        children.push(start(write_index_on, (Fd::from(OwnedFd::from(b)), i, go.clone())).await?);
    }
    let (silent, _other) = std::os::unix::net::UnixStream::pair()?;
    let fds: Vec<_> = ours.iter().map(|s| s.as_fd()).collect();
    let silent_fd = silent.as_fd();
    let waitables: Vec<&dyn mp::Waitable> = vec![&fds[0], &fds[1], &fds[2], &silent_fd];
    let res = mp::wait(&waitables, Some(Duration::from_millis(100))).await?;
    ensure!(res.is_empty(), "ready before anyone wrote: {res:?}");
    go.set();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let res = mp::wait(&waitables, Some(LONG)).await?;
        ensure!(!res.is_empty() && !res.contains(&3), "ready: {res:?}");
        for i in res {
            if !seen.contains(&i) {
                let mut byte = [0u8; 1];
                (&ours[i]).read_exact(&mut byte)?;
                ensure!(usize::from(byte[0]) == i, "socket {i} read {byte:?}");
                seen.push(i);
            }
        }
    }
    for mut p in children {
        join_ok(&mut p).await?;
    }
    // At end of stream every socket reads as ready, as a closed connection does in Python.
    let res = mp::wait(&waitables[..3], Some(LONG)).await?;
    ensure!(res == vec![0, 1, 2], "at end of stream: {res:?}");
    Ok(())
}

/// `TestWait.test_neg_timeout`'s Rust reading: a zero timeout returns at once, empty.
async fn wait_zero_timeout() -> TestResult {
    let (a, _b) = Pipe::<u32>::new()?;
    let res = mp::wait(&[&a], Some(Duration::ZERO)).await?;
    ensure!(res.is_empty(), "{res:?}");
    Ok(())
}

/// Python's `wait` reports a descriptor as soon as `poll` reports anything for it, an error
/// included: the write end of a pipe whose reader goes during the wait is ready then, as it
/// is for a wait begun after the reader went.
async fn wait_pipe_write_end_whose_reader_goes() -> TestResult {
    use std::os::fd::AsFd;
    let (r, w) = nix::unistd::pipe()?;
    let w = w.as_fd();
    let res = mp::wait(&[&w], Some(Duration::from_millis(100))).await?;
    ensure!(res.is_empty(), "ready while its reader lives: {res:?}");
    let reader_goes = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(r);
    });
    let res = mp::wait(&[&w], Some(LONG)).await?;
    ensure!(res == [0], "the reader went during the wait: {res:?}");
    reader_goes.await?;
    let res = mp::wait(&[&w], Some(LONG)).await?;
    ensure!(res == [0], "the reader went before the wait: {res:?}");
    Ok(())
}

// ================================================================ _TestLock

async fn lock_and_report(lock: Lock, event: Event, res: RawValue<u8>) {
    lock.lock().await.expect("lock").forget();
    res.set(u8::from(lock.is_locked()));
    event.set();
}

async fn rlock_and_report(lock: RLock, event: Event, res: RawValue<u8>) {
    lock.lock().await.expect("lock").forget();
    res.set(u8::from(lock.holder().is_some()));
    event.set();
}

/// `_TestLock.test_lock_locked_2processes` and `test_rlock_locked_2processes`: a lock taken
/// in a child reads as locked there and here.
async fn lock_locked_2processes() -> TestResult {
    let lock = Lock::new()?;
    let (event, res) = (Event::new()?, RawValue::new(0u8)?);
    let mut p = start(lock_and_report, (lock.clone(), event.clone(), res.clone())).await?;
    ensure!(event.wait_timeout(LONG).await?, "child did not report");
    ensure!(lock.is_locked() && res.get() == 1, "lock");
    ensure!(lock.holder() == Some(p.pid()), "holder {:?}", lock.holder());
    join_ok(&mut p).await?;

    let rlock = RLock::new()?;
    let (event, res) = (Event::new()?, RawValue::new(0u8)?);
    let mut p = start(
        rlock_and_report,
        (rlock.clone(), event.clone(), res.clone()),
    )
    .await?;
    ensure!(event.wait_timeout(LONG).await?, "child did not report");
    ensure!(
        rlock.holder().map(|(pid, _)| pid) == Some(p.pid()) && res.get() == 1,
        "rlock {:?}",
        rlock.holder()
    );
    join_ok(&mut p).await
}

/// `_TestLock._acquire_release` with `n` levels, for the RLock half of `test_repr_rlock`:
/// takes `n` levels of `rlock`, reads its holder, and releases them.
async fn hold_levels(rlock: RLock, n: u32) -> mp::Result<Option<(u32, u32)>> {
    let mut guards = Vec::new();
    for _ in 0..n {
        guards.push(rlock.lock().await?);
    }
    Ok(rlock.holder())
}

/// Takes `rlock` once and ends holding it (`_TestLock._acquire`).
async fn take_rlock_and_end(rlock: RLock) -> TestResult {
    rlock.lock().await?.forget();
    Ok(())
}

/// `_TestLock.test_repr_lock` and `test_repr_rlock`, through `holder()` (CPython reads the
/// owner from the lock's `repr`): a free lock has none; a lock taken here names this process,
/// an `RLock` with the levels taken (each of three tasks taking 1, 2 and 3 levels in turn
/// sees its own count); a lock a child took and kept as it ended still names the child
/// (CPython's `SomeOtherProcess`) until the next taker is told it died.
async fn lock_holders_as_repr_shows_them() -> TestResult {
    let me = std::process::id();
    let lock = Lock::new()?;
    ensure!(lock.holder().is_none(), "a new lock: {:?}", lock.holder());
    let g = lock.lock().await?;
    ensure!(lock.holder() == Some(me), "held here: {:?}", lock.holder());
    drop(g);
    ensure!(lock.holder().is_none(), "released: {:?}", lock.holder());

    let rlock = RLock::new()?;
    ensure!(
        rlock.holder().is_none(),
        "a new rlock: {:?}",
        rlock.holder()
    );
    let mut guards = Vec::new();
    for _ in 0..3 {
        guards.push(rlock.lock().await?);
    }
    ensure!(
        rlock.holder() == Some((me, 3)),
        "3 levels: {:?}",
        rlock.holder()
    );
    drop(guards);
    ensure!(rlock.holder().is_none(), "released: {:?}", rlock.holder());
    let tasks: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(hold_levels(rlock.clone(), n)))
        .collect();
    for (n, t) in (1..=3).zip(tasks) {
        let seen = t.await??;
        ensure!(seen == Some((me, n)), "a task with {n} levels saw {seen:?}");
    }
    ensure!(
        rlock.holder().is_none(),
        "after the tasks: {:?}",
        rlock.holder()
    );

    let mut p = start(take_rlock_and_end, (rlock.clone(),)).await?;
    join_ok(&mut p).await?;
    ensure!(
        rlock.holder() == Some((p.pid(), 1)),
        "kept by a child that ended: {:?}",
        rlock.holder()
    );
    let next = rlock.lock_timeout(LONG).await.map(drop);
    ensure!(
        matches!(next, Err(Error::LockOwnerDied { pid }) if pid == p.pid()),
        "the next taker: {next:?}"
    );
    Ok(())
}

/// `_TestLock.test_rlock_context` in a party: `n` times, takes `l` twice over, counts one
/// under the inner hold, and checks that the outer hold still keeps the lock once the
/// inner is given back; `[overlaps, holds miscounted]`.
async fn count_under_rlock(
    l: RLock,
    counter: RawValue<u64>,
    inside: RawValue<u32>,
    n: u32,
) -> [u32; 2] {
    let me = std::process::id();
    let mut seen = [0; 2];
    for _ in 0..n {
        let Ok(outer) = l.lock_timeout(LONG).await else {
            seen[1] += 1;
            continue;
        };
        {
            let Ok(_inner) = l.lock_timeout(LONG).await else {
                seen[1] += 1;
                continue;
            };
            seen[0] += inside.get();
            inside.set(1);
            if l.holder() != Some((me, 2)) {
                seen[1] += 1;
            }
            tokio::task::yield_now().await;
            counter.set(counter.get() + 1);
        }
        if l.holder() != Some((me, 1)) {
            seen[1] += 1;
        }
        inside.set(0);
        drop(outer);
    }
    seen
}

/// `_TestLock.test_rlock_context`, across processes: four children each take a re-entrant
/// lock twice over, 200 times, and count under it; nobody is ever inside with another,
/// each hold is counted as it is taken and given back, and no count is lost. The lock
/// is free at the end.
async fn rlock_context_across_processes() -> TestResult {
    let l = RLock::new()?;
    let (counter, inside) = (RawValue::new(0u64)?, RawValue::new(0u32)?);
    let mut kids = Vec::new();
    for _ in 0..4 {
        let args = (l.clone(), counter.clone(), inside.clone(), 200);
        kids.push(Process::call(count_under_rlock, args).start().await?);
    }
    for k in kids {
        let seen = k.await?;
        ensure!(seen == [0, 0], "overlaps, miscounted holds: {seen:?}");
    }
    ensure!(counter.get() == 800, "counted {}, want 800", counter.get());
    ensure!(l.holder().is_none(), "held at the end: {:?}", l.holder());
    Ok(())
}

// ================================================================ _TestCondition

async fn waitfor_timeout_f(
    cond: mp::Condition,
    state: RawValue<i32>,
    result: RawValue<u8>,
    sem: Semaphore,
) {
    let g = cond.lock().await.expect("lock");
    sem.release().expect("release");
    let (g, ok) = g
        .wait_for(|| state.get() == 4, Some(Duration::from_millis(100)))
        .await
        .expect("wait_for");
    result.set(if ok { 2 } else { 1 });
    drop(g);
}

/// `_TestCondition.test_waitfor_timeout`: a child's `wait_for` of a predicate that the
/// parent's three notifications never make true gives false once its timeout passes (each
/// notification wakes it to look again).
async fn waitfor_timeout() -> TestResult {
    let cond = mp::Condition::new()?;
    let state = RawValue::new(0i32)?;
    let result = RawValue::new(0u8)?;
    let sem = Semaphore::new(0)?;
    let mut p = start(
        waitfor_timeout_f,
        (cond.clone(), state.clone(), result.clone(), sem.clone()),
    )
    .await?;
    sem.acquire_timeout(LONG).await?.forget();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let g = cond.lock_timeout(LONG).await?;
        state.set(state.get() + 1);
        g.notify(1);
    }
    join_ok(&mut p).await?;
    ensure!(result.get() == 1, "wait_for gave {}", result.get());
    ensure!(state.get() == 3, "state {}", state.get());
    Ok(())
}

// ================================================================ _TestBarrier

const PARTIES: u32 = 5;

/// Adds one to `counts[i]` under `lock` (CPython's `_DummyList.append`).
async fn bump(lock: &Lock, counts: &RawArray<u32>, i: usize) {
    let _g = lock.lock().await.expect("lock");
    let v = counts.get(i).expect("slot");
    counts.set(i, v + 1).expect("set");
}

/// `_TestBarrier.multipass`: `passes` rounds, each in two halves, counting arrivals in
/// shared memory; a party that sees a count out of step exits with 3.
async fn multipass(b: Barrier, counts: RawArray<u32>, lock: Lock, passes: u32) -> ExitCode {
    let bump = |i: usize| bump(&lock, &counts, i);
    for i in 0..passes {
        bump(0).await;
        if counts.get(1) != Some(i * PARTIES) {
            return ExitCode::from(3);
        }
        b.wait_timeout(LONG).await.expect("wait");
        bump(1).await;
        if counts.get(0) != Some((i + 1) * PARTIES) {
            return ExitCode::from(4);
        }
        b.wait_timeout(LONG).await.expect("wait");
    }
    if b.n_waiting() != 0 || b.broken() {
        return ExitCode::from(5);
    }
    ExitCode::SUCCESS
}

/// `_TestBarrier.test_barrier_10`: five parties pass the barrier in lockstep, ten times.
async fn barrier_10() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counts = RawArray::from_elem(0u32, 2)?;
    let lock = Lock::new()?;
    let mut kids = Vec::new();
    for _ in 0..PARTIES - 1 {
        kids.push(start(multipass, (b.clone(), counts.clone(), lock.clone(), 10)).await?);
    }
    let mine = multipass(b.clone(), counts.clone(), lock.clone(), 10).await;
    ensure!(mine == ExitCode::SUCCESS, "this process's party: {mine:?}");
    for k in &mut kids {
        let code = join_code(k).await?;
        ensure!(code == 0, "a party ended with {code}");
    }
    Ok(())
}

async fn wait_return(b: Barrier, q: Queue<u32>) {
    let i = b.wait_timeout(LONG).await.expect("wait");
    q.put(i).await.expect("put");
}

/// `_TestBarrier.test_wait_return`: exactly one party of five gets index 0.
async fn barrier_wait_return() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let q = Queue::<u32>::new()?;
    let mut kids = Vec::new();
    for _ in 0..PARTIES - 1 {
        kids.push(start(wait_return, (b.clone(), q.clone())).await?);
    }
    wait_return(b, q.clone()).await;
    let mut got = Vec::new();
    for _ in 0..PARTIES {
        got.push(q.get_timeout(LONG).await?);
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(got.iter().filter(|&&i| i == 0).count() == 1, "{got:?}");
    got.sort();
    ensure!(got == (0..PARTIES).collect::<Vec<_>>(), "{got:?}");
    Ok(())
}

/// `_TestBarrier.test_single_thread`: a barrier of one party never waits.
async fn barrier_single_thread() -> TestResult {
    let b = Barrier::new(1)?;
    ensure!(b.wait_timeout(LONG).await? == 0, "first");
    ensure!(b.wait_timeout(LONG).await? == 0, "second");
    Ok(())
}

/// `_TestBarrier._test_reset_f`: the party that gets index `PARTIES / 2` resets the barrier
/// once the others wait in it again; they get `BrokenBarrier`; then all pass once more.
async fn reset_party(b: Barrier, counts: RawArray<u32>, lock: Lock) -> ExitCode {
    let bump = |i: usize| bump(&lock, &counts, i);
    let i = b.wait_timeout(LONG).await.expect("first wait");
    if i == PARTIES / 2 {
        if !support::eventually(LONG, || b.n_waiting() == PARTIES - 1).await {
            return ExitCode::from(3);
        }
        b.reset();
    } else {
        match b.wait_timeout(LONG).await {
            Ok(_) => bump(0).await,
            Err(Error::BrokenBarrier) => bump(1).await,
            Err(_) => return ExitCode::from(4),
        }
    }
    if b.wait_timeout(LONG).await.is_err() {
        return ExitCode::from(5);
    }
    bump(2).await;
    ExitCode::SUCCESS
}

/// Runs `party` with `args` in each of `PARTIES` children, and checks that every one ended
/// with success.
async fn every_party<A, F, M>(party: F, args: A) -> TestResult
where
    A: Clone + serde::Serialize + serde::de::DeserializeOwned,
    F: mp::Target<A, M> + Copy,
    F::Output: std::process::Termination,
{
    let mut kids = Vec::new();
    for _ in 0..PARTIES {
        kids.push(start(party, args.clone()).await?);
    }
    for k in &mut kids {
        let code = join_code(k).await?;
        ensure!(code == 0, "a party ended with {code}");
    }
    Ok(())
}

/// `_TestBarrier.test_reset`: a reset frees the waiting parties with `BrokenBarrier`, and the
/// barrier then serves the next round.
async fn barrier_reset() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counts = RawArray::from_elem(0u32, 3)?;
    let lock = Lock::new()?;
    every_party(reset_party, (b, counts.clone(), lock)).await?;
    let c = counts.to_vec();
    ensure!(
        c == vec![0, PARTIES - 1, PARTIES],
        "passed/broken/after: {c:?}"
    );
    Ok(())
}

async fn thousand(b: Barrier, passes: u32, conn: Connection<u32>, lock: Lock) {
    for i in 0..passes {
        b.wait_timeout(LONG).await.expect("wait");
        let _g = lock.lock().await.expect("lock");
        conn.send(&i).await.expect("send");
    }
}

/// `_TestBarrier.test_thousand`: five processes pass the barrier a thousand times, each
/// sending the round's number; no party runs a round ahead.
async fn barrier_thousand() -> TestResult {
    let passes = 1000;
    let b = Barrier::new(PARTIES)?;
    let lock = Lock::new()?;
    let (conn, child_conn) = Pipe::<u32>::simplex()?;
    let mut kids = Vec::new();
    for _ in 0..PARTIES {
        kids.push(
            start(
                thousand,
                (b.clone(), passes, child_conn.clone_for_test(), lock.clone()),
            )
            .await?,
        );
    }
    drop(child_conn);
    for i in 0..passes {
        for _ in 0..PARTIES {
            let got = conn.recv_timeout(LONG).await?;
            ensure!(got == i, "round {i}: got {got}");
        }
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    Ok(())
}

// ================================================================ _TestValue, _TestArray

#[allow(clippy::type_complexity)]
fn set_values(
    v: (
        RawValue<i32>,
        RawValue<f64>,
        RawValue<i16>,
        RawValue<i64>,
        RawValue<u8>,
    ),
) {
    v.0.set(24234);
    v.1.set(-4.25);
    v.2.set(234);
    v.3.set(1 << 34);
    v.4.set(b'y');
}

/// `_TestValue.test_rawvalue`: values of each type a child sets are seen here.
async fn rawvalue() -> TestResult {
    let v = (
        RawValue::new(4343i32)?,
        RawValue::new(3.625f64)?,
        RawValue::new(-232i16)?,
        RawValue::new(1i64 << 33)?,
        RawValue::new(b'x')?,
    );
    ensure!(
        v.0.get() == 4343
            && v.1.get() == 3.625
            && v.2.get() == -232
            && v.3.get() == 1 << 33
            && v.4.get() == b'x',
        "initial values"
    );
    let mut p = start(set_values, (v.clone(),)).await?;
    join_ok(&mut p).await?;
    ensure!(
        v.0.get() == 24234
            && v.1.get() == -4.25
            && v.2.get() == 234
            && v.3.get() == 1 << 34
            && v.4.get() == b'y',
        "values after the child"
    );
    Ok(())
}

fn prefix_sums(arr: RawArray<i32>) {
    for i in 1..arr.len() {
        let s = arr.get(i).expect("i") + arr.get(i - 1).expect("i - 1");
        arr.set(i, s).expect("set");
    }
}

/// `_TestArray.test_rawarray` and `test_array_from_size`: a raw array's slice assignment,
/// and a child's prefix sums, seen here; an array made from a size is zeroed.
async fn rawarray() -> TestResult {
    let mut seq = vec![680, 626, 934, 821, 150, 233, 548, 982, 714, 831];
    let arr = RawArray::from_slice(&seq)?;
    ensure!(arr.len() == seq.len() && arr.get(3) == Some(seq[3]), "read");
    seq[4..8].copy_from_slice(&[1, 2, 3, 4]);
    arr.copy_from_slice(&seq)?;
    ensure!(arr.to_vec() == seq, "copy_from_slice");
    for i in 1..seq.len() {
        seq[i] += seq[i - 1];
    }
    let mut p = start(prefix_sums, (arr.clone(),)).await?;
    join_ok(&mut p).await?;
    ensure!(arr.to_vec() == seq, "prefix sums: {:?}", arr.to_vec());
    for _ in 0..3 {
        let a = mp::Array::from_elem(0i32, 10)?;
        ensure!(a.to_vec().await? == vec![0; 10], "zeroed");
        a.lock()
            .await?
            .copy_from_slice(&(0..10).collect::<Vec<_>>())?;
        ensure!(a.to_vec().await? == (0..10).collect::<Vec<_>>(), "range");
    }
    let v = Value::new(5i32)?;
    ensure!(!v.get_lock().is_locked(), "a fresh value's lock");
    Ok(())
}

// ================================================================ queues

/// `TestSimpleQueue.test_close`: closing a queue twice is fine.
async fn simple_queue_close_twice() -> TestResult {
    let q = SimpleQueue::<u32>::new()?;
    q.close();
    q.close();
    let q = Queue::<u32>::new()?;
    q.close();
    q.close();
    ensure!(q.is_closed(), "closed");
    Ok(())
}

/// `_TestQueue.test_qsize`.
async fn queue_qsize() -> TestResult {
    let q = Queue::<u32>::new()?;
    ensure!(q.qsize() == 0, "0");
    q.put(1).await?;
    ensure!(q.qsize() == 1, "1");
    q.put(5).await?;
    ensure!(q.qsize() == 2, "2");
    q.get().await?;
    ensure!(q.qsize() == 1, "1 again");
    q.get().await?;
    ensure!(q.qsize() == 0, "0 again");
    Ok(())
}

// ================================================================ _TestPool

/// Panics with a message of a mebibyte, as CPython's `raise_large_valuerror`.
fn large_panic(ms: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(ms));
    panic!("{}", "x".repeat(1 << 20));
}

/// `_TestPool.test_map_no_failfast` (issue #23992): every task of a map fails with a large
/// error; the map fails, and `close` and `join` afterwards do not hang.
async fn map_no_failfast() -> TestResult {
    let pool = Pool::builder().processes(2).build().await?;
    let r = pool.map(large_panic, [0u64, 1]).await;
    match r {
        Err(e) => ensure!(
            e.is_panic() && e.panic_message().map(str::len) == Some(1 << 20),
            "{:?}",
            e.panic_message().map(str::len)
        ),
        Ok(v) => return Err(format!("map succeeded: {v:?}").into()),
    }
    pool.close();
    pool.join().await?;
    Ok(())
}

/// `_TestPool.test_map_chunksize` and the rest of `test_empty_iterable`: a map of nothing,
/// with a chunk size, completes; so do `imap_unordered` and `map_async` of nothing.
async fn empty_iterables() -> TestResult {
    let pool = Pool::new(1).await?;
    let mut r = pool.map(sqr, Vec::<i64>::new()).chunksize(1).submit();
    ensure!(
        r.get_timeout(LONG).await?.is_empty(),
        "map_async chunksize 1"
    );
    ensure!(
        pool.map_async(sqr, Vec::<i64>::new()).await?.is_empty(),
        "map_async"
    );
    let n = pool.imap_unordered(sqr, Vec::<i64>::new()).count().await;
    ensure!(n == 0, "imap_unordered of nothing yielded {n}");
    pool.close();
    pool.join().await?;
    Ok(())
}

/// `_TestPool.test_make_pool`: a pool of 3 has 3 workers.
async fn make_pool() -> TestResult {
    let pool = Pool::new(3).await?;
    ensure!(pool.processes() == 3, "processes {}", pool.processes());
    ensure!(
        support::eventually(LONG, || pool.stats().workers_alive == 3).await,
        "alive {}",
        pool.stats().workers_alive
    );
    pool.close();
    pool.join().await?;
    Ok(())
}

/// `_TestPool.test_terminate`: a map of ten thousand endless tasks, terminated, ends: the
/// map fails as closed and `join` returns.
async fn terminate_long_map() -> TestResult {
    let pool = Pool::new(3).await?;
    let r = pool
        .map(sleep_ms_task, vec![3_600_000u64; 10_000])
        .chunksize(1)
        .submit();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pool.terminate().await?;
    pool.join().await?;
    match r.await {
        Err(e) => ensure!(e.is_pool_closed(), "{e}"),
        Ok(_) => return Err("the map succeeded".into()),
    }
    Ok(())
}

fn sleep_ms_task(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// `_TestPool.test_starmap` with `chunksize=20` over 100 pairs.
async fn starmap_chunksize() -> TestResult {
    let pool = Pool::new(2).await?;
    let tuples: Vec<(i64, i64)> = (0..100).zip((0..100).rev()).collect();
    let want: Vec<i64> = tuples.iter().map(|(a, b)| a * b).collect();
    ensure!(
        pool.starmap(mul, tuples).chunksize(20).await? == want,
        "starmap"
    );
    Ok(())
}

/// An iterator that yields `0..when` and then panics, as CPython's
/// `exception_throwing_generator` raises.
struct PanicsAt {
    next: i64,
    when: i64,
}

impl Iterator for PanicsAt {
    type Item = i64;
    fn next(&mut self) -> Option<i64> {
        if self.next == self.when {
            panic!("Somebody said when");
        }
        self.next += 1;
        Some(self.next - 1)
    }
}

/// `_TestPool.test_map_handle_iterable_exception`: an input that fails (a panicking
/// iterator) fails the caller's `map`, and the pool serves on.
async fn map_handle_iterable_panic() -> TestResult {
    let pool = Pool::new(2).await?;
    for when in [0, 3] {
        let p = pool.clone();
        let r = tokio::spawn(async move { p.map(sqr, PanicsAt { next: 0, when }).await }).await;
        ensure!(
            r.as_ref().is_err_and(|e| e.is_panic()),
            "when={when}: {:?}",
            r.map(|r| r.map_err(|e| e.to_string()))
        );
    }
    ensure!(pool.map(sqr, 0..5).await? == vec![0, 1, 4, 9, 16], "after");
    Ok(())
}

/// `_TestPool.test_imap_handle_iterable_exception` and
/// `test_imap_unordered_handle_iterable_exception`: an input that fails (a panicking
/// iterator) at input `when`, read in chunks of `chunksize`: the stream yields the results of
/// the chunks before the failing one (the failing chunk's inputs are lost, as in Python),
/// then its next poll panics with the input's panic, rather than leaving it waiting; the
/// pool serves on, and `join` after `close` does not wait for the abandoned stream.
async fn imap_handle_iterable_panic() -> TestResult {
    let pool = Pool::new(2).await?;
    // (when, chunksize, results before the panic), as CPython's cases.
    for (when, chunksize, before) in [(0, 1, 0), (3, 1, 3), (7, 2, 6), (7, 4, 4)] {
        for ordered in [true, false] {
            let p = pool.clone();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let got = seen.clone();
            let r = tokio::spawn(async move {
                let input = PanicsAt { next: 0, when };
                let mut it = if ordered {
                    p.imap(sqr, input)
                } else {
                    p.imap_unordered(sqr, input)
                }
                .chunksize(chunksize);
                while let Some(r) = tokio::time::timeout(LONG, it.next())
                    .await
                    .expect("the stream hung")
                {
                    got.lock().unwrap().push(r.expect("a task failed"));
                }
            })
            .await;
            let case = format!("when={when} chunksize={chunksize} ordered={ordered}");
            ensure!(
                r.as_ref().is_err_and(|e| e.is_panic()),
                "{case}: the stream ended without the input's panic"
            );
            let mut seen = seen.lock().map_err(|e| e.to_string())?.clone();
            if !ordered {
                seen.sort_unstable();
            }
            let expected: Vec<i64> = (0..before).map(|i| i * i).collect();
            ensure!(
                seen == expected,
                "{case}: yielded {seen:?} before the panic"
            );
        }
    }
    ensure!(pool.map(sqr, 0..5).await? == vec![0, 1, 4, 9, 16], "after");
    pool.close();
    pool.join().await?;
    Ok(())
}

/// Python's `int` of a string: panics on one that is not a number, as `int('a')` raises.
fn int_of(s: String) -> i64 {
    match s.parse() {
        Ok(n) => n,
        Err(e) => panic!("invalid literal for int(): {s:?} ({e})"),
    }
}

/// `_TestPool.test_map_async_callbacks`: Python's `callback` and `error_callback` are a
/// future's continuation here (`FutureExt::then`): a map that succeeds hands its results to
/// it, one that fails its error, and each runs once.
async fn map_async_callbacks() -> TestResult {
    use futures::FutureExt;
    let pool = Pool::new(2).await?;
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = |calls: std::sync::Arc<std::sync::Mutex<Vec<_>>>| {
        move |r: Result<Vec<i64>, mp::TaskError>| async move {
            calls.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        }
    };
    pool.map_async(int_of, vec!["1".to_string()])
        .then(record(calls.clone()))
        .await;
    pool.map_async(int_of, vec!["a".to_string()])
        .then(record(calls.clone()))
        .await;
    let calls = std::mem::take(&mut *calls.lock().map_err(|e| e.to_string())?);
    ensure!(calls.len() == 2, "{} calls", calls.len());
    ensure!(
        matches!(&calls[0], Ok(v) if v == &[1]),
        "the callback got {:?}",
        calls[0]
    );
    match &calls[1] {
        Err(e) => ensure!(
            e.is_panic()
                && e.input_index() == Some(0)
                && e.panic_message()
                    .is_some_and(|m| m.contains("invalid literal")),
            "the error callback got {e:?}"
        ),
        Ok(v) => return Err(format!("the failing map gave {v:?}").into()),
    }
    pool.close();
    pool.join().await?;
    Ok(())
}

/// `_TestPool.test_imap` and `test_imap_unordered`: a thousand inputs, one at a time and in
/// chunks of 100 (`imap`) or 53 (`imap_unordered`); `imap` yields each in order, then ends,
/// and stays ended when polled again (Python's repeated `StopIteration`).
async fn imap_a_thousand() -> TestResult {
    let pool = Pool::new(4).await?;
    let squares: Vec<i64> = (0..1000).map(sqr).collect();
    for chunksize in [None, Some(100)] {
        let it = pool.imap(sqr, 0..1000);
        let mut it = match chunksize {
            Some(n) => it.chunksize(n),
            None => it,
        };
        for (i, want) in squares.iter().enumerate() {
            let got = it.next().await;
            ensure!(
                matches!(got, Some(Ok(v)) if v == *want),
                "chunksize {chunksize:?}: item {i} was {got:?}"
            );
        }
        ensure!(it.next().await.is_none(), "imap did not end");
        ensure!(it.next().await.is_none(), "imap did not stay ended");
    }
    for chunksize in [None, Some(53)] {
        let it = pool.imap_unordered(sqr, 0..1000);
        let it = match chunksize {
            Some(n) => it.chunksize(n),
            None => it,
        };
        let mut got = it
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        got.sort_unstable();
        ensure!(got == squares, "imap_unordered, chunksize {chunksize:?}");
    }
    pool.close();
    pool.join().await?;
    Ok(())
}

/// The live [`Counted`] values of this process.
static COUNTED: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// CPython's `CountedObject`: counts its live instances (made, decoded, or dropped).
#[derive(Debug, serde::Serialize)]
struct Counted(u32);

impl Counted {
    fn new(n: u32) -> Counted {
        COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Counted(n)
    }
}

impl<'de> serde::Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(Counted::new)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        COUNTED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn identity(c: Counted) -> Counted {
    c
}

/// `_TestPool.test_release_task_refs` (issue #29861): a map's arguments and results are not
/// kept once the caller is done with them: once the results are dropped, no `Counted` is
/// alive in this process, through `map`, `imap` and `apply_async` alike.
async fn release_task_refs() -> TestResult {
    use std::sync::atomic::Ordering::SeqCst;
    let pool = Pool::new(2).await?;
    let objs: Vec<Counted> = (0..10).map(Counted::new).collect();
    let back = pool.map(identity, objs).await?;
    ensure!(back.iter().map(|c| c.0).eq(0..10), "map gave back {back:?}");
    drop(back);
    ensure!(
        COUNTED.load(SeqCst) == 0,
        "after map: {}",
        COUNTED.load(SeqCst)
    );
    let back: Vec<_> = pool
        .imap(identity, (0..10).map(Counted::new).collect::<Vec<_>>())
        .collect()
        .await;
    ensure!(back.len() == 10, "imap gave {} items", back.len());
    drop(back);
    ensure!(
        COUNTED.load(SeqCst) == 0,
        "after imap: {}",
        COUNTED.load(SeqCst)
    );
    let one = pool.apply(identity, (Counted::new(7),)).await?;
    ensure!(one.0 == 7, "apply gave back {one:?}");
    drop(one);
    ensure!(
        COUNTED.load(SeqCst) == 0,
        "after apply: {}",
        COUNTED.load(SeqCst)
    );
    Ok(())
}

// ================================================================ _TestQueue (more)

/// `_TestQueue._test_put`: waits for the go, then takes six items.
async fn take_six(q: Queue<u32>, child_can_start: Event, parent_can_continue: Event) {
    assert!(child_can_start.wait_timeout(LONG).await.expect("wait"));
    for _ in 0..6 {
        q.get_timeout(LONG).await.expect("get");
    }
    parent_can_continue.set();
}

/// Whether `r` is a failed put of `item` that says `Full`.
fn is_full<T: PartialEq>(r: Result<(), mp::PutError<T>>, item: T) -> bool {
    r.is_err_and(|e| matches!(e.error(), Error::Full) && e.into_inner() == item)
}

/// `_TestQueue.test_put`: a bounded queue of six fills with every form of `put`; then each
/// non-blocking or timed put fails with `Full` (handing its item back); a child takes the
/// six, and the queue reads empty and not full here as soon as the child says so.
async fn queue_put() -> TestResult {
    let q = Queue::<u32>::with_maxsize(6)?;
    let (child_can_start, parent_can_continue) = (Event::new()?, Event::new()?);
    let events = (child_can_start.clone(), parent_can_continue.clone());
    let mut p = start(take_six, (q.clone(), events.0, events.1)).await?;
    ensure!(q.empty() && !q.full(), "a fresh queue");
    q.put(1).await?; // put(1)
    q.put(2).await?; // put(2, True)
    q.put_timeout(3, LONG).await?; // put(3, True, None), bounded here
    q.put_nowait(4)?; // put(4, False)
    q.put_nowait(5)?; // put(5, False, None)
    q.put_nowait(6)?;
    ensure!(!q.empty() && q.full(), "six items: qsize {}", q.qsize());
    ensure!(is_full(q.put_nowait(7), 7), "put(7, False)");
    ensure!(is_full(q.put_nowait(7), 7), "put(7, False, None)");
    ensure!(is_full(q.put_nowait(7), 7), "put_nowait(7)");
    let t = Duration::from_millis(100);
    ensure!(is_full(q.put_timeout(7, t).await, 7), "put(7, True, T1)");
    ensure!(is_full(q.put_nowait(7), 7), "put(7, False, T2)");
    ensure!(is_full(q.put_timeout(7, t).await, 7), "put(7, timeout=T3)");
    child_can_start.set();
    ensure!(
        parent_can_continue.wait_timeout(LONG).await?,
        "the child did not take the six"
    );
    ensure!(
        q.empty() && !q.full(),
        "after the child: qsize {}",
        q.qsize()
    );
    join_ok(&mut p).await
}

/// `_TestQueue._test_get`: waits for the go, then puts 2, 3, 4, 5.
async fn put_four(q: Queue<u32>, child_can_start: Event, parent_can_continue: Event) {
    assert!(child_can_start.wait_timeout(LONG).await.expect("wait"));
    for i in 2..6 {
        q.put(i).await.expect("put");
    }
    parent_can_continue.set();
}

/// `_TestQueue.test_get`: a child's items come in its order through every form of `get`;
/// then each non-blocking or timed get of the empty queue fails with `Empty`. (No sleep
/// after the child's signal: a returned `put` has its item in the queue, the README says.)
async fn queue_get() -> TestResult {
    let q = Queue::<u32>::new()?;
    let (child_can_start, parent_can_continue) = (Event::new()?, Event::new()?);
    let events = (child_can_start.clone(), parent_can_continue.clone());
    let mut p = start(put_four, (q.clone(), events.0, events.1)).await?;
    ensure!(q.empty(), "a fresh queue");
    child_can_start.set();
    ensure!(
        parent_can_continue.wait_timeout(LONG).await?,
        "the child did not put"
    );
    ensure!(!q.empty(), "empty after the child's puts");
    ensure!(q.get().await? == 2, "get(True, None)");
    ensure!(q.get().await? == 3, "get(True)");
    ensure!(q.get_timeout(LONG).await? == 4, "get(timeout=1)");
    ensure!(q.get_nowait()? == 5, "get_nowait()");
    ensure!(q.empty(), "drained");
    let empty = |r: mp::Result<u32>| matches!(r, Err(Error::Empty));
    let t = Duration::from_millis(100);
    ensure!(empty(q.get_nowait()), "get(False)");
    ensure!(empty(q.get_nowait()), "get(False, None)");
    ensure!(empty(q.get_nowait()), "get_nowait()");
    ensure!(empty(q.get_timeout(t).await), "get(True, T1)");
    ensure!(empty(q.get_nowait()), "get(False, T2)");
    ensure!(empty(q.get_timeout(t).await), "get(timeout=T3)");
    join_ok(&mut p).await
}

/// `_TestQueue._test_fork`: puts 10..20.
async fn put_ten_to_twenty(q: Queue<u32>) {
    for i in 10..20 {
        q.put(i).await.expect("put");
    }
}

/// `_TestQueue.test_fork`: a queue that this process already put to, passed to a child
/// (of each start method) that puts to it too: all twenty items come, in order, then none.
async fn queue_used_before_the_child() -> TestResult {
    for m in support::process::METHODS {
        let q = Queue::<u32>::new()?;
        for i in 0..10 {
            q.put(i).await?;
        }
        let mut p = Process::new(put_ten_to_twenty, (q.clone(),))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        for i in 0..20 {
            let got = q.get_timeout(LONG).await?;
            ensure!(got == i, "{m:?}: item {i} was {got}");
        }
        ensure!(
            matches!(q.get_nowait(), Err(Error::Empty)),
            "{m:?}: an item too many"
        );
        join_ok(&mut p).await?;
    }
    Ok(())
}

/// An item whose encoding fails, as CPython's `NotSerializable`, whose `__reduce__` raises.
#[derive(Debug, PartialEq, serde::Deserialize)]
enum Picky<T> {
    Fine(T),
    NotSerializable,
}

impl<T: serde::Serialize> serde::Serialize for Picky<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Picky::Fine(v) => s.serialize_newtype_variant("Picky", 0, "Fine", v),
            Picky::NotSerializable => Err(serde::ser::Error::custom("NotSerializable")),
        }
    }
}

/// `_TestQueue.test_queue_feeder_donot_stop_onexc` (bpo-30414, bpo-33078) and
/// `test_queue_feeder_on_queue_feeder_error` (bpo-30006): an item that cannot be encoded
/// fails its own put (with `Error::Encode`, the item handed back: the caller's hook;
/// Python's feeder thread prints the error or calls `_on_queue_feeder_error` instead) and
/// the queue serves on: the next put arrives, and in a queue of one the failed put took no
/// room.
async fn queue_serves_on_after_an_unencodable_item() -> TestResult {
    let q = Queue::<Picky<bool>>::new()?;
    let e = q
        .put(Picky::NotSerializable)
        .await
        .err()
        .ok_or("an unencodable put succeeded")?;
    ensure!(
        matches!(e.error(), Error::Encode { .. }) && e.into_inner() == Picky::NotSerializable,
        "the failed put"
    );
    q.put(Picky::Fine(true)).await?;
    ensure!(
        q.get_timeout(LONG).await? == Picky::Fine(true),
        "the next put"
    );

    let q = Queue::<Picky<bool>>::with_maxsize(1)?;
    ensure!(
        q.put(Picky::NotSerializable).await.is_err(),
        "an unencodable put succeeded"
    );
    // Python's blocking put would hang had the failed one taken the only slot.
    q.put_nowait(Picky::Fine(true))?;
    ensure!(q.qsize() == 1, "qsize {}", q.qsize());
    ensure!(q.get_timeout(LONG).await? == Picky::Fine(true), "the item");
    ensure!(q.empty(), "not empty after the get");
    Ok(())
}

/// `_TestQueue.test_closed_queue_empty_exceptions`, and the `JoinableQueue` half of
/// `test_closed_queue_put_get_exceptions`: a closed unused queue reads empty; a closed used
/// one reads its count (documented difference: Python raises `OSError` there); put and get
/// through a closed `JoinableQueue` fail with `HandleClosed`.
async fn closed_queue_empty_and_joinable_put_get() -> TestResult {
    let q = Queue::<String>::new()?;
    q.close();
    ensure!(q.empty(), "a closed unused queue");
    let j = mp::JoinableQueue::<String>::new()?;
    j.close();
    ensure!(j.empty(), "a closed unused joinable queue");

    let q = Queue::<String>::new()?;
    q.put("foo".into()).await?;
    q.close();
    ensure!(!q.empty() && q.qsize() == 1, "a closed used queue");
    let j = mp::JoinableQueue::<String>::new()?;
    j.put("foo".into()).await?;
    j.close();
    ensure!(!j.empty() && j.qsize() == 1, "a closed used joinable queue");

    let j = mp::JoinableQueue::<String>::new()?;
    j.close();
    let e = j.put("foo".into()).await.err().ok_or("put after close")?;
    ensure!(matches!(e.error(), Error::HandleClosed { .. }), "put: {e}");
    ensure!(
        matches!(j.get().await, Err(Error::HandleClosed { .. })),
        "get after close"
    );
    Ok(())
}

/// `_TestQueue.test_timeout`: a `get` with a timeout on an empty queue gives up with
/// `Empty` (Python's `queue.Empty`), a timeout of zero too, and takes nothing: the items a
/// child puts afterwards come out whole, in order.
async fn queue_get_timeout() -> TestResult {
    let q = Queue::<u32>::new()?;
    ensure!(
        matches!(
            q.get_timeout(Duration::from_millis(200)).await,
            Err(Error::Empty)
        ),
        "get(timeout=0.2) of an empty queue"
    );
    ensure!(
        matches!(q.get_timeout(Duration::ZERO).await, Err(Error::Empty)),
        "get(timeout=0) of an empty queue"
    );
    let mut p = start(put_ten_to_twenty, (q.clone(),)).await?;
    for i in 10..20 {
        let got = q.get_timeout(LONG).await?;
        ensure!(got == i, "item {i} was {got}");
    }
    join_ok(&mut p).await
}

/// `_TestSimpleQueue.test_empty_exceptions`: a closed `SimpleQueue`, used or not, still
/// reads its count (a documented difference: Python raises `OSError`, where its `Queue`
/// reads empty), and its `put` and `get` fail with `HandleClosed`, the item handed back.
async fn closed_simple_queue_empty_and_put_get() -> TestResult {
    let q = SimpleQueue::<u32>::new()?;
    q.close();
    ensure!(q.empty(), "a closed unused simple queue");
    let q = SimpleQueue::<u32>::new()?;
    q.put(1).await?;
    q.close();
    ensure!(!q.empty(), "a closed used simple queue");
    let e = q.put(2).await.err().ok_or("put after close")?;
    ensure!(matches!(e.error(), Error::HandleClosed { .. }), "put: {e}");
    ensure!(e.into_inner() == 2, "the item handed back");
    ensure!(
        matches!(q.get().await, Err(Error::HandleClosed { .. })),
        "get after close"
    );
    Ok(())
}

// ================================================================ _TestBarrier (more)

/// `_TestBarrier._test_abort_and_reset_f`: the party with index `PARTIES / 2` aborts where
/// the others wait again (they count as broken); all meet at a second barrier, whose middle
/// party resets the first; then all pass the first once more.
async fn abort_and_reset_party(
    b: Barrier,
    b2: Barrier,
    counts: RawArray<u32>,
    lock: Lock,
) -> ExitCode {
    let bump = |i: usize| bump(&lock, &counts, i);
    match b.wait_timeout(LONG).await {
        Ok(i) if i == PARTIES / 2 => b.abort(),
        Ok(_) => match b.wait_timeout(LONG).await {
            Ok(_) => bump(0).await,
            Err(Error::BrokenBarrier) => bump(1).await,
            Err(_) => return ExitCode::from(3),
        },
        Err(Error::BrokenBarrier) => bump(1).await,
        Err(_) => return ExitCode::from(4),
    }
    match b2.wait_timeout(LONG).await {
        Ok(i) if i == PARTIES / 2 => b.reset(),
        Ok(_) => {}
        Err(_) => return ExitCode::from(5),
    }
    if b2.wait_timeout(LONG).await.is_err() {
        return ExitCode::from(6);
    }
    if b.wait_timeout(LONG).await.is_err() {
        return ExitCode::from(7);
    }
    bump(2).await;
    ExitCode::SUCCESS
}

/// `_TestBarrier.test_abort_and_reset`: a barrier broken by an abort serves again after a
/// reset: none passed the aborted round, the other four were broken, all five pass after.
async fn barrier_abort_and_reset() -> TestResult {
    let (b, b2) = (Barrier::new(PARTIES)?, Barrier::new(PARTIES)?);
    let counts = RawArray::from_elem(0u32, 3)?;
    let lock = Lock::new()?;
    every_party(abort_and_reset_party, (b, b2, counts.clone(), lock)).await?;
    let c = counts.to_vec();
    ensure!(
        c == vec![0, PARTIES - 1, PARTIES],
        "passed/broken/after: {c:?}"
    );
    Ok(())
}

/// `_TestBarrier._test_timeout_f`: after a first round, the party with index `PARTIES / 2`
/// is late; the others' timed waits break the barrier, and every party, the late one
/// included, counts a `BrokenBarrier`.
async fn timeout_party(b: Barrier, counts: RawArray<u32>, lock: Lock) -> ExitCode {
    let Ok(i) = b.wait_timeout(LONG).await else {
        return ExitCode::from(3);
    };
    if i == PARTIES / 2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    match b.wait_timeout(Duration::from_millis(500)).await {
        Err(Error::BrokenBarrier) => bump(&lock, &counts, 0).await,
        Ok(_) => {}
        Err(_) => return ExitCode::from(4),
    }
    ExitCode::SUCCESS
}

/// `_TestBarrier.test_timeout`, across processes: a wait that times out breaks the barrier
/// for every party, those waiting and the one that comes late.
async fn barrier_timeout_across_processes() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counts = RawArray::from_elem(0u32, 1)?;
    let lock = Lock::new()?;
    every_party(timeout_party, (b, counts.clone(), lock)).await?;
    ensure!(
        counts.get(0) == Some(PARTIES),
        "broken: {:?}",
        counts.get(0)
    );
    Ok(())
}

// ================================================================ _TestBarrier (manager)

/// What a party of a manager's barrier saw: `[passed, broken, after]`, CPython's
/// `results1`, `results2` and `results3`.
type Tally = [u32; 3];

/// `_TestBarrier._test_abort_f` with a manager's barrier: the party with index
/// `PARTIES / 2` aborts; the others count whether their second wait passed or broke.
async fn proxy_abort_party(b: mp::BarrierProxy) -> mp::Result<Tally> {
    if b.wait_timeout(LONG).await? == PARTIES / 2 {
        b.abort().await?;
        return Ok([0; 3]);
    }
    match b.wait_timeout(LONG).await {
        Ok(_) => Ok([1, 0, 0]),
        Err(Error::BrokenBarrier) => Ok([0, 1, 0]),
        Err(e) => Err(e),
    }
}

/// `_TestBarrier._test_reset_f` with a manager's barrier: the party with index
/// `PARTIES / 2` resets the barrier once the others wait again; they count whether that
/// wait passed or broke, then every party passes the barrier once more.
async fn proxy_reset_party(b: mp::BarrierProxy) -> mp::Result<Tally> {
    let mut t = [0; 3];
    if b.wait_timeout(LONG).await? == PARTIES / 2 {
        let deadline = tokio::time::Instant::now() + LONG;
        while b.n_waiting().await? < PARTIES - 1 {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b.reset().await?;
    } else {
        match b.wait_timeout(LONG).await {
            Ok(_) => t[0] += 1,
            Err(Error::BrokenBarrier) => t[1] += 1,
            Err(e) => return Err(e),
        }
    }
    b.wait_timeout(LONG).await?;
    t[2] += 1;
    Ok(t)
}

/// `_TestBarrier._test_abort_and_reset_f` with managers' barriers: a round of `b` broken by
/// an abort; all meet at `b2`, whose party `PARTIES / 2` resets `b`; all meet at `b2`
/// again, then pass `b`.
async fn proxy_abort_and_reset_party(
    b: mp::BarrierProxy,
    b2: mp::BarrierProxy,
) -> mp::Result<Tally> {
    let mut t = [0; 3];
    match b.wait_timeout(LONG).await {
        Ok(i) if i == PARTIES / 2 => b.abort().await?,
        Ok(_) => match b.wait_timeout(LONG).await {
            Ok(_) => t[0] += 1,
            Err(Error::BrokenBarrier) => t[1] += 1,
            Err(e) => return Err(e),
        },
        Err(Error::BrokenBarrier) => t[1] += 1,
        Err(e) => return Err(e),
    }
    if b2.wait_timeout(LONG).await? == PARTIES / 2 {
        b.reset().await?;
    }
    b2.wait_timeout(LONG).await?;
    b.wait_timeout(LONG).await?;
    t[2] += 1;
    Ok(t)
}

/// `_TestBarrier._test_wait_return_f` with a manager's barrier: the index `wait` returned,
/// counted in its slot (`PARTIES` slots would not fit a [`Tally`]: index 0 in slot 0, any
/// other in slot 1).
async fn proxy_wait_return_party(b: mp::BarrierProxy) -> mp::Result<Tally> {
    Ok(match b.wait_timeout(LONG).await? {
        0 => [1, 0, 0],
        _ => [0, 1, 0],
    })
}

/// CPython's `run_threads` with a manager's barrier: `party` runs in `PARTIES` children at
/// once; the sum of what they saw.
async fn every_proxy_party<A, F, M>(
    party: F,
    args: A,
) -> Result<Tally, Box<dyn std::error::Error + Send + Sync>>
where
    A: Clone + serde::Serialize + serde::de::DeserializeOwned,
    F: mp::Target<A, M, Output = mp::Result<Tally>> + Copy,
{
    let mut kids = Vec::new();
    for _ in 0..PARTIES {
        kids.push(Process::call(party, args.clone()).start().await?);
    }
    let mut sum = [0; 3];
    for k in kids {
        let t = k.await??;
        for (s, v) in sum.iter_mut().zip(t) {
            *s += v;
        }
    }
    Ok(sum)
}

/// `_TestBarrier.multipass` with a manager's barrier: `passes` rounds, each in two halves,
/// counting arrivals in shared memory; `[out of step, 0, 0]`, where a party counts each time
/// it saw a count out of step, or the barrier waiting or broken at the end.
async fn proxy_multipass(
    b: mp::BarrierProxy,
    counts: RawArray<u32>,
    lock: Lock,
    passes: u32,
) -> mp::Result<Tally> {
    let mut off = 0;
    for i in 0..passes {
        bump(&lock, &counts, 0).await;
        off += u32::from(counts.get(1) != Some(i * PARTIES));
        b.wait_timeout(LONG).await?;
        bump(&lock, &counts, 1).await;
        off += u32::from(counts.get(0) != Some((i + 1) * PARTIES));
        b.wait_timeout(LONG).await?;
    }
    off += u32::from(b.n_waiting().await? != 0 || b.broken().await?);
    Ok([off, 0, 0])
}

/// `_TestBarrier.test_barrier` and `test_barrier_10` with a manager's barrier: five
/// parties in children pass it in lockstep, once and ten times over.
async fn manager_barrier_in_lockstep() -> TestResult {
    let m = mp::Manager::start().await?;
    for passes in [1, 10] {
        let b = m.barrier(PARTIES).await?;
        let (counts, lock) = (RawArray::from_elem(0u32, 2)?, Lock::new()?);
        let t = every_proxy_party(proxy_multipass, (b, counts.clone(), lock, passes)).await?;
        ensure!(t[0] == 0, "{passes} passes: {} counts out of step", t[0]);
        let c = counts.to_vec();
        ensure!(
            c == vec![passes * PARTIES; 2],
            "{passes} passes: counts {c:?}"
        );
    }
    m.shutdown().await?;
    Ok(())
}

/// `_TestBarrier` with a manager's barrier (Python's `WithManagerTestBarrier`): `test_abort`
/// (none passes the aborted round, the four others are broken, and the barrier stays
/// broken), `test_reset` (the reset breaks the four waiting, then all five pass),
/// `test_abort_and_reset` (the same through an abort, the reset made between two rounds of a
/// second barrier), `test_wait_return` (one party gets index 0) and `test_single_thread`.
async fn manager_barrier_abort_reset_and_wait_return() -> TestResult {
    let m = mp::Manager::start().await?;
    let b = m.barrier(PARTIES).await?;
    let t = every_proxy_party(proxy_abort_party, (b.clone(),)).await?;
    ensure!(t == [0, PARTIES - 1, 0], "test_abort: passed/broken {t:?}");
    ensure!(b.broken().await?, "test_abort: the barrier is not broken");

    let b = m.barrier(PARTIES).await?;
    let t = every_proxy_party(proxy_reset_party, (b.clone(),)).await?;
    ensure!(
        t == [0, PARTIES - 1, PARTIES],
        "test_reset: passed/broken/after {t:?}"
    );

    let (b, b2) = (m.barrier(PARTIES).await?, m.barrier(PARTIES).await?);
    let t = every_proxy_party(proxy_abort_and_reset_party, (b.clone(), b2.clone())).await?;
    ensure!(
        t == [0, PARTIES - 1, PARTIES],
        "test_abort_and_reset: {t:?}"
    );

    let b = m.barrier(PARTIES).await?;
    let t = every_proxy_party(proxy_wait_return_party, (b.clone(),)).await?;
    ensure!(
        t == [1, PARTIES - 1, 0],
        "test_wait_return: index 0 / others {t:?}"
    );

    let b = m.barrier(1).await?;
    ensure!(
        b.wait().await? == 0 && b.wait().await? == 0,
        "test_single_thread"
    );
    drop((b, b2));
    m.shutdown().await?;
    Ok(())
}

// ================================================================ _TestCondition (manager)

/// `_TestCondition.f` with a manager's condition: takes the lock, says it sleeps, waits
/// (at most `timeout_ms`, if any), says it woke, and releases the lock.
async fn proxy_condition_sleeper(
    cond: mp::ConditionProxy,
    sleeping: mp::SemaphoreProxy,
    woken: mp::SemaphoreProxy,
    timeout_ms: Option<u64>,
) -> mp::Result<()> {
    cond.lock().await?;
    sleeping.release().await?;
    match timeout_ms {
        Some(ms) => drop(cond.wait_timeout(Duration::from_millis(ms)).await?),
        None => cond.wait().await?,
    }
    woken.release().await?;
    cond.release().await
}

/// CPython's `assertReachesEventually(lambda: get_value(woken), n)`.
async fn woken_reaches(woken: &mp::SemaphoreProxy, n: u32) -> TestResult {
    let deadline = tokio::time::Instant::now() + LONG;
    let mut v = woken.get_value().await?;
    while v != n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        v = woken.get_value().await?;
    }
    ensure!(v == n, "woken stayed at {v}, not {n}");
    Ok(())
}

/// Starts `n` [`proxy_condition_sleeper`]s and waits until each sleeps.
async fn start_sleepers(
    cond: &mp::ConditionProxy,
    sleeping: &mp::SemaphoreProxy,
    woken: &mp::SemaphoreProxy,
    n: usize,
    timeout_ms: Option<u64>,
) -> Result<Vec<mp::JoinHandle<mp::Result<()>>>, Box<dyn std::error::Error + Send + Sync>> {
    let mut kids = Vec::new();
    for _ in 0..n {
        let args = (cond.clone(), sleeping.clone(), woken.clone(), timeout_ms);
        kids.push(Process::call(proxy_condition_sleeper, args).start().await?);
    }
    for _ in 0..n {
        sleeping.acquire_timeout(LONG).await?;
    }
    Ok(kids)
}

/// `_TestCondition.test_notify_all` and `test_notify_n` with a manager's condition (Python's
/// `WithManagerTestCondition`), the waiters in children: waits with a timeout all end on
/// it; then `notify(2)` wakes two of five waiters, `notify(4)` the other three, a
/// `notify(3)` with none left wakes nobody, and `notify_all` wakes three more at once.
async fn manager_condition_notify_n_and_all() -> TestResult {
    let m = mp::Manager::start().await?;
    let cond = m.condition().await?;
    let (sleeping, woken) = (m.semaphore(0).await?, m.semaphore(0).await?);

    let kids = start_sleepers(&cond, &sleeping, &woken, 3, Some(100)).await?;
    for _ in 0..3 {
        woken.acquire_timeout(LONG).await?;
    }
    for k in kids {
        k.await??;
    }
    ensure!(woken.get_value().await? == 0, "woken after the timed waits");

    let kids = start_sleepers(&cond, &sleeping, &woken, 5, None).await?;
    ensure!(woken.get_value().await? == 0, "woken before any notify");
    for (n, total) in [(2, 2), (4, 5), (3, 5)] {
        cond.lock().await?;
        cond.notify(n).await?;
        cond.release().await?;
        woken_reaches(&woken, total).await?;
    }
    for k in kids {
        k.await??;
    }
    for _ in 0..5 {
        woken.acquire_timeout(LONG).await?;
    }

    let kids = start_sleepers(&cond, &sleeping, &woken, 3, None).await?;
    cond.lock().await?;
    cond.notify_all().await?;
    cond.release().await?;
    for k in kids {
        k.await??;
    }
    ensure!(woken.get_value().await? == 3, "woken by notify_all");
    drop((cond, sleeping, woken));
    m.shutdown().await?;
    Ok(())
}

/// `_TestCondition._test_wait_result` with a manager's condition: notifies once.
async fn proxy_notify_once(c: mp::ConditionProxy) -> mp::Result<()> {
    c.lock().await?;
    c.notify(1).await?;
    c.release().await
}

/// `_TestCondition.test_wait_result` and `test_timeout` with a manager's condition: `wait(0)`
/// and `wait(0.1)` with nobody to notify give false, the lock held again after each; a
/// notification from a child gives true.
async fn manager_condition_wait_result() -> TestResult {
    let m = mp::Manager::start().await?;
    let c = m.condition().await?;
    c.lock().await?;
    ensure!(!c.wait_timeout(Duration::ZERO).await?, "wait(0)");
    ensure!(
        !c.wait_timeout(Duration::from_millis(100)).await?,
        "wait(0.1)"
    );
    let child = Process::call(proxy_notify_once, (c.clone(),))
        .start()
        .await?;
    ensure!(c.wait_timeout(LONG).await?, "wait(60) after a notify");
    c.release().await?;
    child.await??;
    drop(c);
    m.shutdown().await?;
    Ok(())
}

// ================================================================ TestWait (more)

/// A pause of 0 to 99 ms that differs from call to call, as CPython's
/// `random.random() * 0.1`.
fn jitter(i: u32) -> Duration {
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503);
    Duration::from_millis(u64::from(seed % 100))
}

/// `TestWait._child_test_wait`: sends `(i, pid)` for `i` in `0..10`, then ends.
async fn send_ten(w: Connection<(u32, u32)>, slow: bool) {
    for i in 0..10 {
        if slow {
            tokio::time::sleep(jitter(i)).await;
        }
        w.send(&(i, std::process::id())).await.expect("send");
    }
}

/// `TestWait.test_wait` and `test_wait_slow`: four children write ten messages each on
/// pipes of their own; `wait` on the read ends, receiving from each ready one until its end
/// of stream, collects all forty.
async fn wait_on_pipes_until_eof() -> TestResult {
    for slow in [false, true] {
        let mut readers = Vec::new();
        let mut procs = Vec::new();
        for _ in 0..4 {
            let (r, w) = Pipe::<(u32, u32)>::simplex()?;
            procs.push(
                Process::new(send_ten, (w, slow))
                    .daemon(true)
                    .start()
                    .await?,
            );
            readers.push(r);
        }
        let mut messages = Vec::new();
        while !readers.is_empty() {
            let ready = {
                let ws: Vec<&dyn mp::Waitable> =
                    readers.iter().map(|r| r as &dyn mp::Waitable).collect();
                mp::wait(&ws, Some(LONG)).await?
            };
            ensure!(!ready.is_empty(), "slow={slow}: nothing became ready");
            let mut done = Vec::new();
            for i in ready {
                match readers[i].recv().await {
                    Ok(m) => messages.push(m),
                    Err(Error::Closed) => done.push(i),
                    Err(e) => return Err(e.into()),
                }
            }
            for i in done.into_iter().rev() {
                readers.remove(i);
            }
        }
        for p in &mut procs {
            join_ok(p).await?;
        }
        messages.sort_unstable();
        let mut expected: Vec<(u32, u32)> = (0..10)
            .flat_map(|i| procs.iter().map(move |p| (i, p.pid())))
            .collect();
        expected.sort_unstable();
        ensure!(messages == expected, "slow={slow}: {messages:?}");
    }
    Ok(())
}

/// `TestWait._child_test_wait_socket`: connects to `address` and writes `"0\n"` to
/// `"9\n"`, then closes.
async fn write_lines_to(address: std::net::SocketAddr, slow: bool) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    for i in 0..10 {
        if slow {
            tokio::time::sleep(jitter(i)).await;
        }
        s.write_all(format!("{i}\n").as_bytes())
            .await
            .expect("write");
    }
}

/// `TestWait.test_wait_socket` and `test_wait_socket_slow`: four children write lines on
/// TCP connections this process accepted; `wait` on the sockets, reading from each ready
/// one until end of stream, gets every connection's lines whole and in order.
async fn wait_on_tcp_sockets_until_eof() -> TestResult {
    use std::io::Read;
    use std::os::fd::AsFd;
    for slow in [false, true] {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let mut procs = Vec::new();
        for _ in 0..4 {
            procs.push(
                Process::new(write_lines_to, (addr, slow))
                    .daemon(true)
                    .start()
                    .await?,
            );
        }
        let mut readers = Vec::new();
        for _ in 0..4 {
            readers.push((l.accept()?.0, Vec::new()));
        }
        drop(l);
        let mut finished = Vec::new();
        while !readers.is_empty() {
            let ready = {
                let fds: Vec<_> = readers.iter().map(|(s, _)| s.as_fd()).collect();
                let ws: Vec<&dyn mp::Waitable> =
                    fds.iter().map(|f| f as &dyn mp::Waitable).collect();
                mp::wait(&ws, Some(LONG)).await?
            };
            ensure!(!ready.is_empty(), "slow={slow}: nothing became ready");
            let mut done = Vec::new();
            for i in ready {
                let (s, got) = &mut readers[i];
                let mut buf = [0u8; 32];
                let n = s.read(&mut buf)?;
                if n == 0 {
                    done.push(i);
                } else {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            for i in done.into_iter().rev() {
                finished.push(readers.remove(i).1);
            }
        }
        for p in &mut procs {
            join_ok(p).await?;
        }
        let expected: String = (0..10).map(|i| format!("{i}\n")).collect();
        for got in &finished {
            ensure!(
                got == expected.as_bytes(),
                "slow={slow}: {:?}",
                String::from_utf8_lossy(got)
            );
        }
        ensure!(
            finished.len() == 4,
            "slow={slow}: {} sockets",
            finished.len()
        );
    }
    Ok(())
}

// ================================================================ _TestPicklingConnections

/// What `_TestPicklingConnections._listener` sends its parent.
#[allow(clippy::large_enum_variant)] // a few values, each sent once
#[derive(serde::Serialize, serde::Deserialize)]
enum FromListener {
    Address(mp::Address),
    Accepted(Connection<String>),
    SocketAddress(std::net::SocketAddr),
    Socket(Fd),
}

/// What `_TestPicklingConnections._remote` is told: a listener's address and a message for
/// it, the end of those, then a plain socket's address and bytes for it.
#[derive(serde::Serialize, serde::Deserialize)]
enum ToRemote {
    Client(mp::Address, String),
    NoMore,
    Socket(std::net::SocketAddr, Vec<u8>),
}

/// `_TestPicklingConnections._listener`: for each family, a listener whose address it
/// sends, and whose accepted connection it sends on; then a plain TCP socket's accepted
/// connection; then it waits for the word to end.
async fn listener_child(conn: Connection<FromListener>) {
    let unix = Listener::new(None).expect("unix listener");
    let tcp = Listener::bind("127.0.0.1:0", None).expect("tcp listener");
    for l in [unix, tcp] {
        conn.send(&FromListener::Address(l.address().clone()))
            .await
            .expect("send address");
        let new_conn: Connection<String> = l.accept().await.expect("accept");
        conn.send(&FromListener::Accepted(new_conn))
            .await
            .expect("send connection");
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("socket");
    conn.send(&FromListener::SocketAddress(
        l.local_addr().expect("address"),
    ))
    .await
    .expect("send address");
    let (s, _) = l.accept().expect("accept");
    conn.send(&FromListener::Socket(Fd::from(OwnedFd::from(s))))
        .await
        .expect("send socket");
    drop(l);
    let _ = conn.recv_timeout(LONG).await;
}

/// `_TestPicklingConnections._remote`: connects where it is told, sending its message in
/// capitals.
async fn remote_child(conn: Connection<ToRemote>) {
    use std::io::Write;
    loop {
        match conn.recv().await.expect("recv") {
            ToRemote::Client(address, msg) => {
                let c = Client::connect::<String>(&address, None)
                    .await
                    .expect("connect");
                c.send(&msg.to_uppercase()).await.expect("send");
            }
            ToRemote::NoMore => break,
            ToRemote::Socket(..) => panic!("a socket before the end of the clients"),
        }
    }
    let ToRemote::Socket(address, msg) = conn.recv().await.expect("recv") else {
        panic!("expected a socket's address");
    };
    let mut s = std::net::TcpStream::connect(address).expect("connect");
    s.write_all(&msg.to_ascii_uppercase()).expect("write");
}

/// `_TestPicklingConnections.test_pickling`: connections a child's listener accepted (on
/// a Unix socket and on TCP), and a plain accepted TCP socket, sent to this process through
/// a pipe, carry what a third process sent to them.
async fn accepted_connections_through_a_pipe() -> TestResult {
    use std::io::Read;
    let (lconn, lconn0) = Pipe::<FromListener>::new()?;
    let mut lp = start(listener_child, (lconn0,)).await?;
    let (rconn, rconn0) = Pipe::<ToRemote>::new()?;
    let mut rp = start(remote_child, (rconn0,)).await?;
    for (family, msg) in [
        ("unix", "This connection uses family unix"),
        ("tcp", "This connection uses family tcp"),
    ] {
        let FromListener::Address(address) = lconn.recv_timeout(LONG).await? else {
            return Err(format!("{family}: expected an address").into());
        };
        rconn
            .send(&ToRemote::Client(address, msg.to_string()))
            .await?;
        let FromListener::Accepted(new_conn) = lconn.recv_timeout(LONG).await? else {
            return Err(format!("{family}: expected a connection").into());
        };
        let got = new_conn.recv_timeout(LONG).await?;
        ensure!(got == msg.to_uppercase(), "{family}: {got:?}");
    }
    rconn.send(&ToRemote::NoMore).await?;
    let msg = b"This connection uses a normal socket".to_vec();
    let FromListener::SocketAddress(address) = lconn.recv_timeout(LONG).await? else {
        return Err("expected a socket's address".into());
    };
    rconn.send(&ToRemote::Socket(address, msg.clone())).await?;
    let FromListener::Socket(fd) = lconn.recv_timeout(LONG).await? else {
        return Err("expected a socket".into());
    };
    let mut s = std::net::TcpStream::from(fd.into_owned());
    s.set_read_timeout(Some(LONG))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    ensure!(
        buf == msg.to_ascii_uppercase(),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    lconn.send_bytes(b"").await?;
    drop(rconn);
    join_ok(&mut lp).await?;
    join_ok(&mut rp).await
}

/// What `_TestPicklingConnections.child_access` is sent and sends back.
#[derive(serde::Serialize, serde::Deserialize)]
enum Access {
    Writer(Connection<String>),
    Reader(Connection<String>),
    Text(String),
}

/// `_TestPicklingConnections.child_access`: writes on the write end it is sent; reads from
/// the read end it is sent, and sends what it read twice over.
async fn child_access(conn: Connection<Access>) {
    let Access::Writer(w) = conn.recv().await.expect("recv") else {
        panic!("expected a write end");
    };
    w.send(&"all is well".to_string()).await.expect("send");
    drop(w);
    let Access::Reader(r) = conn.recv().await.expect("recv") else {
        panic!("expected a read end");
    };
    let msg = r.recv().await.expect("recv");
    conn.send(&Access::Text(msg.repeat(2))).await.expect("send");
}

/// `_TestPicklingConnections.test_access`: the write end and the read end of simplex
/// pipes, sent to a child, write and read there.
async fn pipe_ends_sent_to_a_child() -> TestResult {
    let (conn, child_conn) = Pipe::<Access>::new()?;
    let mut p = Process::new(child_access, (child_conn,))
        .daemon(true)
        .start()
        .await?;
    let (r, w) = Pipe::<String>::simplex()?;
    conn.send(&Access::Writer(w)).await?;
    ensure!(
        r.recv_timeout(LONG).await? == "all is well",
        "via the writer"
    );
    drop(r);
    let (r, w) = Pipe::<String>::simplex()?;
    conn.send(&Access::Reader(r)).await?;
    w.send(&"foobar".to_string()).await?;
    drop(w);
    match conn.recv_timeout(LONG).await? {
        Access::Text(t) => ensure!(t == "foobarfoobar", "{t:?}"),
        _ => return Err("expected text".into()),
    }
    join_ok(&mut p).await
}

// ================================================================ signals (more)

/// `TestIgnoreEINTR._test_ignore_listener`: handles SIGUSR1, sends a listener's address,
/// accepts, and welcomes.
async fn welcome_after_signal(conn: Connection<mp::Address>) {
    use tokio::signal::unix::{SignalKind, signal};
    let _usr1 = signal(SignalKind::user_defined1()).expect("handler");
    let l = Listener::new(None).expect("listener");
    conn.send(l.address()).await.expect("send");
    let a: Connection<String> = l.accept().await.expect("accept");
    a.send(&"welcome".to_string()).await.expect("send");
}

/// `TestIgnoreEINTR.test_ignore_listener`: a signal the child handles, arriving while its
/// listener waits in `accept`, does not interrupt it.
async fn signal_during_accept() -> TestResult {
    let (conn, child_conn) = Pipe::<mp::Address>::new()?;
    let mut p = Process::new(welcome_after_signal, (child_conn,))
        .daemon(true)
        .start()
        .await?;
    let address = conn.recv_timeout(LONG).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = Client::connect::<String>(&address, None).await?;
    ensure!(client.recv_timeout(LONG).await? == "welcome", "welcome");
    join_ok(&mut p).await
}

/// `_TestPollEintr._killer`: sends SIGUSR1 to `pid` after 100 ms.
fn killer(pid: u32) {
    std::thread::sleep(Duration::from_millis(100));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .expect("kill");
}

/// `_TestPollEintr.test_poll_eintr`: a signal this process handles, arriving while it joins
/// a child, interrupts neither the join nor its exit code.
async fn signal_during_join() -> TestResult {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut k = start(killer, (std::process::id(),)).await?;
    let mut p = start(sleep_ms, (1000,)).await?;
    let code = join_code(&mut p).await?;
    join_ok(&mut k).await?;
    ensure!(code == 0, "the sleeper's exit code: {code}");
    ensure!(
        tokio::time::timeout(LONG, usr1.recv()).await.is_ok(),
        "the signal never came"
    );
    Ok(())
}

// ================================================================ _TestContainers

/// A list item of either kind, as CPython's test mixes ints and `'hello'`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Elem {
    I(i64),
    S(String),
}

fn ints(r: std::ops::Range<i64>) -> Vec<Elem> {
    r.map(Elem::I).collect()
}

/// `_TestContainers.test_list`: a list proxy from a range and an empty one; `extend`,
/// index, `b *= 2`, `b + [5, 6]`; lists of list proxies read through, and see later
/// changes. (Slices are read with `to_vec`.)
async fn manager_list() -> TestResult {
    let m = mp::Manager::start().await?;
    let a = m.list(ints(0..10)).await?;
    ensure!(a.to_vec().await? == ints(0..10), "a[:]");
    let b = m.list(Vec::<Elem>::new()).await?;
    ensure!(b.to_vec().await?.is_empty(), "b[:]");
    b.extend(ints(0..5)).await?;
    ensure!(b.to_vec().await? == ints(0..5), "after extend");
    ensure!(b.get(2).await? == Some(Elem::I(2)), "b[2]");
    ensure!(b.to_vec().await?[2..] == ints(2..5), "b[2:10]");
    b.extend(b.to_vec().await?).await?; // b *= 2
    let twice: Vec<Elem> = ints(0..5).into_iter().chain(ints(0..5)).collect();
    ensure!(b.to_vec().await? == twice, "b *= 2");
    let mut plus = b.to_vec().await?;
    plus.extend(ints(5..7));
    ensure!(plus.len() == 12 && plus[10..] == ints(5..7), "b + [5, 6]");
    ensure!(a.to_vec().await? == ints(0..10), "a unchanged");

    let e = m.list([a.clone(), b.clone()]).await?;
    let mut inner = Vec::new();
    for x in e.to_vec().await? {
        inner.push(x.to_vec().await?);
    }
    ensure!(inner == vec![ints(0..10), twice], "e's elements: {inner:?}");

    let f = m.list([a.clone()]).await?;
    a.append(Elem::S("hello".into())).await?;
    let mut want = ints(0..10);
    want.push(Elem::S("hello".into()));
    let f0 = f.get(0).await?.ok_or("f[0]")?;
    ensure!(f0.to_vec().await? == want, "f[0][:]");
    m.shutdown().await?;
    Ok(())
}

/// `_TestContainers.test_list_proxy_in_list`: a list of three list proxies; a change through
/// one is seen through it alone. (CPython's last lines, a list appended to itself, have no
/// Rust counterpart: a `ListProxy<T>` cannot be its own `T`.)
async fn manager_list_proxy_in_list() -> TestResult {
    let m = mp::Manager::start().await?;
    let mut inners = Vec::new();
    for _ in 0..3 {
        inners.push(m.list(0..3i64).await?);
    }
    let a = m.list(inners).await?;
    for inner in a.to_vec().await? {
        ensure!(inner.to_vec().await? == [0, 1, 2], "an inner list");
    }
    let at = |i: i64| {
        let a = a.clone();
        async move {
            a.get(i)
                .await?
                .ok_or_else(|| Error::Manager(format!("a[{i}]")))
        }
    };
    at(0).await?.set(-1, 55).await?;
    ensure!(at(0).await?.to_vec().await? == [0, 1, 55], "a[0][:]");
    for i in 1..3 {
        ensure!(at(i).await?.to_vec().await? == [0, 1, 2], "a[{i}][:]");
    }
    ensure!(at(1).await?.pop(-1).await? == Some(2), "a[1].pop()");
    ensure!(at(1).await?.len().await? == 2, "len(a[1])");
    for i in [0, 2] {
        ensure!(at(i).await?.len().await? == 3, "len(a[{i}])");
    }
    m.shutdown().await?;
    Ok(())
}

type Pets = mp::DictProxy<String, i64>;

/// `d[k]` of a dict of dict proxies, failing if there is none.
async fn entry(d: &mp::DictProxy<String, Pets>, k: &str) -> mp::Result<Pets> {
    d.get(&k.to_string())
        .await?
        .ok_or_else(|| Error::Manager(format!("no {k}")))
}

/// A list item that is a plain list or a proxy, as CPython's `[[88, 99], l]`.
#[derive(serde::Serialize, serde::Deserialize)]
enum Entry {
    Plain(Vec<i64>),
    Proxy(mp::ListProxy<Pets>),
}

/// `_TestContainers.test_dict_proxy_nested`: dict proxies stored in a dict stay proxies to
/// the same objects; they outlive the proxies they were stored from, and `clear` of the
/// outer dict leaves them whole; the same through a list, and a plain list beside a proxy
/// stays a plain list.
async fn manager_dict_proxy_nested() -> TestResult {
    let m = mp::Manager::start().await?;
    let s = |k: &str| k.to_string();
    let pets: Pets = m.dict_from([(s("ferrets"), 2), (s("hamsters"), 4)]).await?;
    let supplies: Pets = m.dict_from([(s("water"), 10), (s("feed"), 3)]).await?;
    let d = m
        .dict_from([(s("pets"), pets.clone()), (s("supplies"), supplies.clone())])
        .await?;

    ensure!(
        supplies.get(&s("water")).await? == Some(10),
        "supplies['water']"
    );
    let water = entry(&d, "supplies").await?.get(&s("water")).await?;
    ensure!(water == Some(10), "d['supplies']['water']");

    entry(&d, "supplies")
        .await?
        .insert(s("blankets"), 5)
        .await?;
    ensure!(
        supplies.get(&s("blankets")).await? == Some(5),
        "supplies['blankets']"
    );
    let got = entry(&d, "supplies").await?.get(&s("blankets")).await?;
    ensure!(got == Some(5), "d['supplies']['blankets']");

    entry(&d, "supplies").await?.insert(s("water"), 7).await?;
    ensure!(
        supplies.get(&s("water")).await? == Some(7),
        "supplies['water'] = 7"
    );
    let got = entry(&d, "supplies").await?.get(&s("water")).await?;
    ensure!(got == Some(7), "d['supplies']['water'] = 7");

    drop(pets);
    drop(supplies);
    let got = entry(&d, "pets").await?.get(&s("ferrets")).await?;
    ensure!(got == Some(2), "d['pets']['ferrets'] after del");
    entry(&d, "supplies")
        .await?
        .insert(s("blankets"), 11)
        .await?;
    let got = entry(&d, "supplies").await?.get(&s("blankets")).await?;
    ensure!(got == Some(11), "d['supplies']['blankets'] = 11");

    let pets = entry(&d, "pets").await?;
    let supplies = entry(&d, "supplies").await?;
    d.clear().await?;
    ensure!(d.len().await? == 0, "len(d) after clear");
    ensure!(
        supplies.get(&s("water")).await? == Some(7),
        "supplies after clear"
    );
    ensure!(
        pets.get(&s("hamsters")).await? == Some(4),
        "pets after clear"
    );

    let l = m.list([pets.clone(), supplies.clone()]).await?;
    let l0 = || async { l.get(0).await?.ok_or_else(|| Error::Manager("l[0]".into())) };
    l0().await?.insert(s("marmots"), 1).await?;
    ensure!(pets.get(&s("marmots")).await? == Some(1), "pets['marmots']");
    ensure!(
        l0().await?.get(&s("marmots")).await? == Some(1),
        "l[0]['marmots']"
    );
    drop(pets);
    drop(supplies);
    ensure!(
        l0().await?.get(&s("marmots")).await? == Some(1),
        "l[0]['marmots'] after del"
    );

    let outer = m
        .list([Entry::Plain(vec![88, 99]), Entry::Proxy(l.clone())])
        .await?;
    ensure!(
        matches!(outer.get(0).await?, Some(Entry::Plain(v)) if v == [88, 99]),
        "outer[0] is a plain list"
    );
    let Some(Entry::Proxy(last)) = outer.get(-1).await? else {
        return Err("outer[-1] is not a list proxy".into());
    };
    let feed = last.get(-1).await?.ok_or("outer[-1][-1]")?;
    ensure!(
        feed.get(&s("feed")).await? == Some(3),
        "outer[-1][-1]['feed']"
    );
    m.shutdown().await?;
    Ok(())
}

// ================================================================ managers

/// `_TestRemoteManager.values`: text in several scripts, nothing, a flag, a number, bytes.
type RemoteValues = (String, Option<()>, bool, f64, String, String, Vec<u8>);

fn remote_values() -> RemoteValues {
    (
        "hello world".into(),
        None,
        true,
        2.25,
        "hall\u{e5} v\u{e4}rlden".into(),
        "\u{43f}\u{440}\u{438}\u{432}\u{456}\u{442} \u{441}\u{432}\u{456}\u{442}".into(),
        b"hall\xe5 v\xe4rlden".to_vec(),
    )
}

/// `_TestRemoteManager._putter`: connects to the manager by address and key and puts the
/// values on its queue.
async fn remote_putter(address: String, key: Vec<u8>) -> mp::Result<()> {
    let m = mp::Manager::connect(address.as_str(), &key).await?;
    let q: mp::QueueProxy<Picky<RemoteValues>> = m.get("get_queue").await?;
    q.put(Picky::Fine(remote_values()))
        .await
        .map_err(Error::from)
}

fn tcp_address(m: &mp::Manager) -> Result<std::net::SocketAddr, String> {
    match m.address() {
        Some(mp::Address::Tcp(a)) => Ok(*a),
        other => Err(format!("no TCP address: {other:?}")),
    }
}

/// `_TestRemoteManager.test_remote`: a child connects to a TCP manager by address and key
/// and puts a tuple of values; a second client of the manager gets them whole; a value that
/// cannot be encoded fails its put.
async fn remote_manager_values() -> TestResult {
    let key: Vec<u8> = (0..32).map(|i| (i * 7 + 3) as u8).collect();
    let m = mp::Manager::builder()
        .address("127.0.0.1:0")
        .authkey(&key)
        .start()
        .await?;
    let q = m.queue::<Picky<RemoteValues>>().await?;
    m.register("get_queue", &q).await?;
    let address = tcp_address(&m)?.to_string();
    let mut p = Process::new(remote_putter, (address.clone(), key.clone()))
        .daemon(true)
        .start()
        .await?;
    let manager2 = mp::Manager::connect(address.as_str(), &key).await?;
    let queue: mp::QueueProxy<Picky<RemoteValues>> = manager2.get("get_queue").await?;
    let got = queue.get_timeout(LONG).await?;
    ensure!(got == Picky::Fine(remote_values()), "got {got:?}");
    ensure!(
        queue.put(Picky::NotSerializable).await.is_err(),
        "an unencodable put succeeded"
    );
    join_ok(&mut p).await?;
    drop(queue);
    drop(manager2);
    drop(q);
    m.shutdown().await?;
    Ok(())
}

/// `_TestManagerRestart._putter`: puts `"hello world"` on the manager's queue.
async fn restart_putter(address: String, key: Vec<u8>) -> mp::Result<()> {
    let m = mp::Manager::connect(address.as_str(), &key).await?;
    let q: mp::QueueProxy<String> = m.get("get_queue").await?;
    q.put("hello world".into()).await.map_err(Error::from)
}

/// `_TestManagerRestart.test_rapid_restart`: a TCP manager that served a client is shut
/// down, and a new one starts at the same address at once (as CPython's test, one retry
/// after a second is allowed for a lingering socket) and serves.
async fn manager_rapid_restart() -> TestResult {
    let key: Vec<u8> = (0..32).map(|i| (i * 11 + 5) as u8).collect();
    let m = mp::Manager::builder()
        .address("127.0.0.1:0")
        .authkey(&key)
        .start()
        .await?;
    let addr = tcp_address(&m)?;
    let q = m.queue::<String>().await?;
    m.register("get_queue", &q).await?;
    let mut p = start(restart_putter, (addr.to_string(), key.clone())).await?;
    join_ok(&mut p).await?;
    ensure!(q.get_timeout(LONG).await? == "hello world", "the item");
    drop(q);
    m.shutdown().await?;

    // CPython retries once for a socket left in TIME_WAIT; a manager's listener reuses the
    // address (SO_REUSEADDR), so the first start must succeed.
    let m = mp::Manager::builder()
        .address(addr.to_string().as_str())
        .authkey(&key)
        .start()
        .await?;
    ensure!(tcp_address(&m)? == addr, "restarted at {:?}", m.address());
    let client = mp::Manager::connect(addr.to_string().as_str(), &key).await?;
    let d = client.dict::<String, u32>().await?;
    d.insert("k".into(), 1).await?;
    ensure!(
        d.get(&"k".into()).await? == Some(1),
        "the new manager serves"
    );
    drop(d);
    drop(client);
    m.shutdown().await?;
    Ok(())
}

/// `TestInitializers`' `initializer`: adds one to `ns.test`.
async fn add_one_to_test(ns: mp::NamespaceProxy) -> Result<(), String> {
    let n: i64 = ns.get("test").await.map_err(|e| e.to_string())?;
    ns.set("test", n + 1).await.map_err(|e| e.to_string())
}

/// `TestInitializers.test_pool_initializer`: a pool of one runs its initializer, on a
/// manager's namespace, once; after `close` and `join` the namespace says so.
async fn pool_initializer_on_a_namespace() -> TestResult {
    let m = mp::Manager::start().await?;
    let ns = m.namespace().await?;
    ns.set("test", 0i64).await?;
    let pool = Pool::builder()
        .processes(1)
        .initializer(add_one_to_test, (ns.clone(),))
        .build()
        .await?;
    pool.close();
    pool.join().await?;
    ensure!(ns.get::<i64>("test").await? == 1, "ns.test");
    m.shutdown().await?;
    Ok(())
}

// ================================================================ processes (more)

/// `_UpperCaser.run`: answers each string with it in capitals, until `None`.
async fn upper_caser(conn: Connection<Option<String>>) {
    while let Some(s) = conn.recv().await.expect("recv") {
        conn.send(&Some(s.to_uppercase())).await.expect("send");
    }
}

/// `_TestSubclassingProcess.test_subclassing`: a process that serves requests over its pipe
/// (Python's `Process` subclass with a `run` of its own) answers each string in capitals;
/// `None` ends it, and its end of the pipe closes with it.
async fn process_serving_a_pipe() -> TestResult {
    let (conn, child_conn) = Pipe::<Option<String>>::new()?;
    let mut p = Process::new(upper_caser, (child_conn,))
        .daemon(true)
        .start()
        .await?;
    for (s, want) in [("hello", "HELLO"), ("world", "WORLD")] {
        conn.send(&Some(s.to_string())).await?;
        let got = conn.recv_timeout(LONG).await?;
        ensure!(got.as_deref() == Some(want), "submit({s:?}) gave {got:?}");
    }
    conn.send(&None).await?;
    join_ok(&mut p).await?;
    let after = conn.recv_timeout(LONG).await;
    ensure!(
        matches!(after, Err(Error::Closed)),
        "after the child ended: {after:?}"
    );
    Ok(())
}

/// `_TestSubclassingProcess._test_stderr_flush`: makes a new file at `path` its stderr,
/// then fails (Python's `1/0 # MARKER`).
fn panic_with_stderr_in(path: std::path::PathBuf) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("open");
    nix::unistd::dup2_stderr(&file).expect("dup2");
    panic!("1/0 # MARKER");
}

/// `_TestSubclassingProcess.test_stderr_flush` (issue #13812): a child that fails ends with
/// exit code 1, and what it wrote on its stderr is all there: the message and where it
/// failed (Python's whole traceback).
async fn stderr_of_a_failed_child_is_whole() -> TestResult {
    let path = temp_path("stderr");
    let mut p = start(panic_with_stderr_in, (path.to_path_buf(),)).await?;
    let code = join_code(&mut p).await?;
    let err = std::fs::read_to_string(&path)?;
    ensure!(code == 1, "exit code {code}");
    ensure!(err.contains("1/0 # MARKER"), "no message in {err:?}");
    ensure!(err.contains("cpython_ports.rs"), "no location in {err:?}");
    Ok(())
}

/// `_TestProcess._test_error_on_stdio_flush`, in a grandchild: writes on its stdout (left
/// in its buffer, to be flushed at exit) or its stderr, as `which` says, then reports
/// through `w` and `e`.
async fn write_then_report(which: i32, w: Connection<String>, e: Event) {
    use std::io::Write;
    if which == 1 {
        print!("no newline: flushed at exit");
    } else {
        let _ = write!(std::io::stderr(), "a line on stderr");
    }
    w.send(&"hello".to_string()).await.expect("send");
    e.set();
}

/// Makes its descriptor `which` (stdout or stderr) one whose writes fail: `/dev/full`
/// (`ENOSPC`) or a pipe with no reader (`EPIPE`), as `how` says; then starts a grandchild
/// by `method` and checks that it ran whole. Exit codes 3 to 6 say what went wrong (its
/// stderr may be the broken one).
async fn start_with_broken_stdio(which: i32, how: String, method: String) -> ExitCode {
    let broken = match how.as_str() {
        "full" => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .map(OwnedFd::from),
        _ => nix::unistd::pipe()
            .map(|(_reader, writer)| writer)
            .map_err(std::io::Error::from),
    };
    let Ok(broken) = broken else {
        return ExitCode::from(3);
    };
    let replaced = match which {
        1 => nix::unistd::dup2_stdout(&broken),
        _ => nix::unistd::dup2_stderr(&broken),
    };
    let (Ok(()), Ok(method)) = (replaced, method.parse::<mp::StartMethod>()) else {
        return ExitCode::from(3);
    };
    let (Ok((r, w)), Ok(e)) = (Pipe::<String>::simplex(), Event::new()) else {
        return ExitCode::from(3);
    };
    let started = Process::new(write_then_report, (which, w, e.clone()))
        .start_method(method)
        .start()
        .await;
    let Ok(mut p) = started else {
        return ExitCode::from(4);
    };
    if !matches!(p.join_timeout(LONG).await, Ok(Some(0))) {
        return ExitCode::from(5);
    }
    match r.recv_timeout(LONG).await {
        Ok(s) if s == "hello" && e.is_set() => ExitCode::SUCCESS,
        _ => ExitCode::from(6),
    }
}

/// `_TestProcess.test_error_on_stdio_flush_1`: a process whose stdout or stderr fails every
/// write starts children of each method, which inherit it; they run, write on it, and end
/// with 0 (a failed flush at exit is not an error).
async fn children_of_a_parent_with_broken_stdio() -> TestResult {
    for m in support::process::METHODS {
        for which in [1, 2] {
            for how in ["full", "no reader"] {
                let args = (which, how.to_string(), m.name().to_string());
                let mut p = start(start_with_broken_stdio, args).await?;
                let code = join_code(&mut p).await?;
                ensure!(
                    code == 0,
                    "{m:?}, descriptor {which} {how}: exit code {code}"
                );
            }
        }
    }
    Ok(())
}

/// `TestForkAwareThreadLock.child`: sends how many descriptors it has open, then starts the
/// next generation (the last starts none). A plain target with a runtime of its own, so
/// that it can start itself.
fn generation(n: u32, conn: Connection<u32>) -> ExitCode {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(3);
    };
    rt.block_on(async move {
        if conn.send(&fd_count()).await.is_err() {
            return ExitCode::from(4);
        }
        if n <= 1 {
            return ExitCode::SUCCESS;
        }
        let Ok(mut p) = Process::new(generation, (n - 1, conn)).start().await else {
            return ExitCode::from(5);
        };
        match p.join_timeout(LONG).await {
            Ok(Some(0)) => ExitCode::SUCCESS,
            _ => ExitCode::from(6),
        }
    })
}

/// `TestForkAwareThreadLock.test_lock` (issue #17555, where each generation's registry
/// doubled): five generations of processes, each started by the one before; the
/// descriptors a generation holds do not grow down the line.
async fn generations_do_not_accumulate() -> TestResult {
    let (r, w) = Pipe::<u32>::simplex()?;
    let mut p = start(generation, (5, w)).await?;
    let mut counts = Vec::new();
    for _ in 0..5 {
        counts.push(r.recv_timeout(LONG).await?);
    }
    join_ok(&mut p).await?;
    ensure!(
        counts.iter().all(|&c| c <= counts[0]),
        "descriptors by generation: {counts:?}"
    );
    Ok(())
}

// ================================================================ _TestPool (more)

/// `MiscTestCase.test_large_pool`'s script: a pool of 200 maps `f` over `range(1000)`, and
/// the sum of the squares goes into `sum`.
async fn large_pool(sum: RawValue<i64>) -> Result<(), String> {
    let pool = Pool::new(200).await.map_err(|e| e.to_string())?;
    let squares = pool.map(sqr, 0..1000).await.map_err(|e| e.to_string())?;
    sum.set(squares.iter().sum());
    pool.close();
    pool.join().await.map_err(|e| e.to_string())
}

/// `MiscTestCase.test_large_pool` (gh-89240): a pool of 200 workers maps and joins. In a
/// child, as CPython runs a script, so that its descriptors are not this process's.
async fn large_pool_of_200() -> TestResult {
    let sum = RawValue::new(0i64)?;
    let mut p = start(large_pool, (sum.clone(),)).await?;
    join_ok(&mut p).await?;
    ensure!(sum.get() == 332_833_500, "sum {}", sum.get());
    Ok(())
}

/// The script's global `problem`: a pool that lives as long as the program.
static PROBLEM: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();

fn as_float(x: i64) -> f64 {
    x as f64
}

/// The script of `_TestPoolWorkerLifetime`'s
/// `test_worker_finalization_via_atexit_handler_of_multiprocessing`: a pool held in a
/// global, never closed, maps; its workers' pids go on `pids`; then the program returns.
async fn map_on_a_global_pool(pids: Queue<u32>) -> Result<(), String> {
    let pool = Pool::new(1).await.map_err(|e| e.to_string())?;
    let floats = pool.map(as_float, 0..10).await.map_err(|e| e.to_string())?;
    if floats != (0..10).map(as_float).collect::<Vec<_>>() {
        return Err(format!("map gave {floats:?}"));
    }
    for c in mp::active_children() {
        pids.put(c.pid()).await.map_err(|e| e.to_string())?;
    }
    PROBLEM.set(pool).map_err(|_| "set twice".to_string())
}

/// `_TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing`
/// (bpo-38744, bpo-39360): a program whose pool is never closed nor dropped ends with 0,
/// and takes its workers with it.
async fn program_ends_with_a_pool_never_closed() -> TestResult {
    let pids = Queue::<u32>::new()?;
    let mut p = start(map_on_a_global_pool, (pids.clone(),)).await?;
    join_ok(&mut p).await?;
    let mut workers = Vec::new();
    while let Ok(pid) = pids.get_nowait() {
        workers.push(pid);
    }
    ensure!(!workers.is_empty(), "the child had no pool worker");
    for w in workers {
        ensure!(
            support::eventually(LONG, || support::is_zombie_or_gone(w)).await,
            "worker {w} outlived its program"
        );
    }
    Ok(())
}

// ================================================================ _TestSharedCTypes

/// CPython's `_Foo`: a C structure of an int, a double and a long long.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Foo {
    x: i32,
    y: f64,
    z: i64,
}

// SAFETY: three numbers, written only through the typed API: no pointers, and every bit
// pattern is a valid Foo.
unsafe impl mp::Pod for Foo {}

/// The shared objects of `test_sharedctypes`, each without a lock (`lock=False`).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct CTypes {
    x: RawValue<i32>,
    y: RawValue<f64>,
    z: RawValue<i64>,
    foo: RawValue<Foo>,
    arr: RawArray<f64>,
    string: RawArray<u8>,
}

/// A `c_char` array's `value`: the bytes before the first NUL.
fn c_string(a: &RawArray<u8>) -> Vec<u8> {
    a.to_vec().into_iter().take_while(|&b| b != 0).collect()
}

/// Sets a `c_char` array's `value`: the bytes, then a NUL if there is room.
fn set_c_string(a: &RawArray<u8>, s: &[u8]) -> mp::Result<()> {
    let mut all = vec![0; a.len()];
    all[..s.len()].copy_from_slice(s);
    a.copy_from_slice(&all)
}

/// `_TestSharedCTypes._double`: doubles every number, and the string.
fn double(c: CTypes) -> Result<(), String> {
    c.x.set(c.x.get() * 2);
    c.y.set(c.y.get() * 2.0);
    c.z.set(c.z.get() * 2);
    let f = c.foo.get();
    c.foo.set(Foo {
        x: f.x * 2,
        y: f.y * 2.0,
        ..f
    });
    set_c_string(&c.string, &c_string(&c.string).repeat(2)).map_err(|e| e.to_string())?;
    for i in 0..c.arr.len() {
        let v = c.arr.get(i).ok_or("index")?;
        c.arr.set(i, v * 2.0).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `_TestSharedCTypes.test_sharedctypes`: raw values of several C types, a structure, an
/// array of doubles and a `c_char` string, doubled by a child, read here.
async fn sharedctypes_doubled_by_a_child() -> TestResult {
    let c = CTypes {
        x: RawValue::new(7)?,
        y: RawValue::new(1.0 / 3.0)?,
        z: RawValue::new(1 << 33)?,
        foo: RawValue::new(Foo { x: 3, y: 2.0, z: 0 })?,
        arr: RawArray::from_slice(&(0..10).map(f64::from).collect::<Vec<_>>())?,
        string: RawArray::from_elem(0u8, 20)?,
    };
    set_c_string(&c.string, b"hello")?;
    let mut p = Process::new(double, (c.clone(),))
        .daemon(true)
        .start()
        .await?;
    join_ok(&mut p).await?;
    // Each doubling is exact: the values compare equal, not only close.
    ensure!(c.x.get() == 14, "x {}", c.x.get());
    ensure!(c.y.get() == 2.0 / 3.0, "y {}", c.y.get());
    ensure!(c.z.get() == 1 << 34, "z {}", c.z.get());
    let got = c.foo.get();
    ensure!(got == Foo { x: 6, y: 4.0, z: 0 }, "foo {got:?}");
    let doubled: Vec<f64> = (0..10).map(|i| f64::from(2 * i)).collect();
    ensure!(c.arr.to_vec() == doubled, "arr {:?}", c.arr.to_vec());
    let s = c_string(&c.string);
    ensure!(
        s == b"hellohello",
        "string {:?}",
        String::from_utf8_lossy(&s)
    );
    Ok(())
}

// ================================================================ _TestSharedMemory (more)

/// `test_shared_memory_pickle_unpickle`'s other side: the segment it was sent is the one
/// named `name`, holding `pickle`; after the go, it reads `newval` and writes `oldval`.
async fn shm_other_side(shm: SharedMemory, name: String, conn: Connection<()>) -> TestResult {
    ensure!(shm.name() == Some(name.as_str()), "name {:?}", shm.name());
    let mut buf = [0u8; 6];
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"pickle", "first read {buf:?}");
    conn.send(&()).await?;
    conn.recv().await?;
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"newval", "after the parent's write {buf:?}");
    shm.write(0, b"oldval")?;
    conn.send(&()).await?;
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_pickle_unpickle`: a named segment sent to a child
/// is the same segment there (its name, its bytes), and a write on either side is seen on
/// the other.
async fn shared_memory_sent_is_the_same_segment() -> TestResult {
    let name = format!("tkmp-cpy-pickle-{}", std::process::id());
    let shm = SharedMemory::create(&name, 512)?;
    shm.write(0, b"pickle")?;
    let (conn, child_conn) = Pipe::<()>::new()?;
    let mut p = start(shm_other_side, (shm.try_clone()?, name.clone(), child_conn)).await?;
    conn.recv_timeout(LONG).await?;
    shm.write(0, b"newval")?;
    conn.send(&()).await?;
    conn.recv_timeout(LONG).await?;
    let mut buf = [0u8; 6];
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"oldval", "after the child's write {buf:?}");
    join_ok(&mut p).await
}

/// `test_shared_memory_ShareableList_pickling`'s other side: reads the list it was sent and
/// sets `sl[4]`; after the go, reads the parent's `sl[3]`.
async fn sl_other_side(sl: ShareableList, conn: Connection<()>) -> TestResult {
    ensure!(
        sl.get(-1)? == ShareableItem::Int(9),
        "sl[-1] {:?}",
        sl.get(-1)
    );
    sl.set(4, "changed")?;
    conn.send(&()).await?;
    conn.recv().await?;
    let got = sl.get(3)?;
    ensure!(got == ShareableItem::from("newvalue"), "sl[3] {got:?}");
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_ShareableList_pickling`: a list sent to a child is
/// the same list: a change made there is seen here, and one made here is seen there.
async fn shareable_list_sent_is_the_same_list() -> TestResult {
    let sl = ShareableList::create(None::<&str>, 0..10i64)?;
    let (conn, child_conn) = Pipe::<()>::new()?;
    let mut p = start(sl_other_side, (sl.try_clone()?, child_conn)).await?;
    conn.recv_timeout(LONG).await?;
    let got = sl.get(4)?;
    ensure!(got == ShareableItem::from("changed"), "sl[4] {got:?}");
    sl.set(3, "newvalue")?;
    conn.send(&()).await?;
    join_ok(&mut p).await
}

// ================================================================ _TestContainers (more)

/// Gets one item from the queue at `a[0]`, and puts 456 on the queue at `b[0]`.
async fn through_nested_queues(
    a: mp::ListProxy<mp::QueueProxy<i64>>,
    b: mp::DictProxy<i64, mp::QueueProxy<i64>>,
) -> TestResult {
    let q = a.get(0).await?.ok_or("a[0]")?;
    let got = q.get_timeout(LONG).await?;
    ensure!(got == 123, "a[0].get() {got}");
    let q = b.get(&0).await?.ok_or("b[0]")?;
    q.put(456).await?;
    Ok(())
}

/// `_TestContainers.test_nested_queue`: a queue proxy stored in a list proxy and in a dict
/// proxy comes back as a proxy to the same queue, here and in a child.
async fn manager_nested_queue() -> TestResult {
    let m = mp::Manager::start().await?;
    let a = m.list(Vec::<mp::QueueProxy<i64>>::new()).await?;
    a.append(m.queue().await?).await?;
    a.get(0).await?.ok_or("a[0]")?.put(123).await?;
    let b = m.dict::<i64, mp::QueueProxy<i64>>().await?;
    b.insert(0, m.queue().await?).await?;
    b.get(&0).await?.ok_or("b[0]")?.put(7).await?;
    ensure!(
        b.get(&0).await?.ok_or("b[0]")?.get_timeout(LONG).await? == 7,
        "b[0].get() here"
    );
    let mut p = start(through_nested_queues, (a.clone(), b.clone())).await?;
    join_ok(&mut p).await?;
    let q = b.get(&0).await?.ok_or("b[0]")?;
    ensure!(q.get_timeout(LONG).await? == 456, "b[0].get()");
    ensure!(
        a.get(0).await?.ok_or("a[0]")?.empty().await?,
        "a[0] after the child's get"
    );
    drop((a, b, q));
    m.shutdown().await?;
    Ok(())
}

/// `_TestContainers.test_namespace`: attributes are set, read and removed, and the
/// namespace shows as Python's `str(ns)` shows it: only the names that do not start with
/// `_`, as `name=value` sorted (Python's `Namespace.__repr__`), whatever order they were
/// set in, each value as Python's `repr` writes it.
async fn manager_namespace() -> TestResult {
    let m = mp::Manager::start().await?;
    let n = m.namespace().await?;
    n.set("name", "Bob").await?;
    n.set("job", "Builder").await?;
    n.set("_hidden", "hidden").await?;
    let got = (
        n.get::<String>("name").await?,
        n.get::<String>("job").await?,
    );
    ensure!(
        got == ("Bob".into(), "Builder".into()),
        "(n.name, n.job): {got:?}"
    );
    n.remove("job").await?;
    let shown = n.repr().await?;
    ensure!(shown == "Namespace(name='Bob')", "str(n): {shown}");
    ensure!(n.get::<String>("name").await.is_ok(), "hasattr(n, 'name')");
    let job = n.get::<String>("job").await;
    ensure!(
        matches!(job, Err(Error::Manager(_))),
        "n.job after del: {job:?}"
    );
    n.set("age", 42).await?;
    let shown = n.repr().await?;
    ensure!(
        shown == "Namespace(age=42, name='Bob')",
        "str(n), sorted: {shown}"
    );
    n.set("scale", 1e16).await?;
    n.set("unit", "m\r").await?;
    let shown = n.repr().await?;
    ensure!(
        shown == "Namespace(age=42, name='Bob', scale=1e+16, unit='m\\r')",
        "str(n), values as Python shows them: {shown}"
    );
    drop(n);
    m.shutdown().await?;
    Ok(())
}

// ================================================================ TestSyncManagerTypes

/// `TestSyncManagerTypes._test_queue`: the two items of a full queue of two, taken here.
async fn take_two_of_two(q: mp::QueueProxy<i64>) -> TestResult {
    ensure!(q.qsize().await? == 2, "qsize {}", q.qsize().await?);
    ensure!(q.full().await? && !q.empty().await?, "full, not empty");
    ensure!(q.get().await? == 5, "first item");
    ensure!(!q.empty().await?, "empty after one get");
    ensure!(q.get().await? == 6, "second item");
    ensure!(q.empty().await?, "not empty after two gets");
    Ok(())
}

/// `TestSyncManagerTypes.test_queue` and `test_joinable_queue`: a queue of two that this
/// process filled reads full in a child, which takes both items; it then reads empty and
/// not full here.
async fn manager_queue_taken_by_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let q = m.queue_with_maxsize::<i64>(2).await?;
    let j = m.joinable_queue::<i64>(2).await?;
    for (kind, q) in [("Queue", q), ("JoinableQueue", (*j).clone())] {
        q.put(5).await?;
        q.put(6).await?;
        let mut p = Process::new(take_two_of_two, (q.clone(),))
            .daemon(true)
            .start()
            .await?;
        join_ok(&mut p).await?;
        ensure!(
            q.empty().await? && !q.full().await?,
            "{kind}: after the child"
        );
    }
    drop(j);
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_event`: the event is set; waits, clears, and a short wait
/// then times out.
async fn see_set_then_clear(e: mp::EventProxy) -> TestResult {
    ensure!(e.is_set().await?, "not set");
    e.wait().await?;
    e.clear().await?;
    ensure!(
        !e.wait_timeout(Duration::from_millis(1)).await?,
        "a wait after clear returned true"
    );
    Ok(())
}

/// `TestSyncManagerTypes.test_event`: an event set here, cleared by a child, is clear here.
async fn manager_event_cleared_by_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let e = m.event().await?;
    e.set().await?;
    let mut p = Process::new(see_set_then_clear, (e.clone(),))
        .daemon(true)
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(!e.is_set().await?, "set after the child cleared it");
    ensure!(
        !e.wait_timeout(Duration::from_millis(1)).await?,
        "a wait returned true"
    );
    drop(e);
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_semaphore`: takes a unit of each and ends, keeping them.
async fn acquire_and_end(s: mp::SemaphoreProxy, b: mp::BoundedSemaphoreProxy) -> TestResult {
    s.acquire().await?;
    b.acquire().await?;
    Ok(())
}

/// `TestSyncManagerTypes.test_semaphore` and `test_bounded_semaphore`: a unit a child took
/// (and ended with) stays taken, and this process gives it back; a bounded semaphore then
/// refuses one release more.
async fn manager_semaphores_taken_by_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let s = m.semaphore(1).await?;
    let b = m.bounded_semaphore(1).await?;
    let mut p = Process::new(acquire_and_end, (s.clone(), b.clone()))
        .daemon(true)
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        s.get_value().await? == 0 && b.get_value().await? == 0,
        "values after the child: {} {}",
        s.get_value().await?,
        b.get_value().await?
    );
    s.release().await?;
    b.release().await?;
    ensure!(
        s.get_value().await? == 1 && b.get_value().await? == 1,
        "values after the releases"
    );
    ensure!(
        matches!(b.release().await, Err(Error::SemaphoreOverRelease { .. })),
        "a bounded semaphore took one release too many"
    );
    drop((s, b));
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_barrier`: the barrier has five parties; resets it.
async fn check_parties_and_reset(b: mp::BarrierProxy) -> TestResult {
    ensure!(b.parties().await? == 5, "parties {}", b.parties().await?);
    b.reset().await?;
    Ok(())
}

/// `TestSyncManagerTypes.test_barrier`: a child reads a barrier's parties and resets it; it
/// is then whole, with none waiting.
async fn manager_barrier_reset_by_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let b = m.barrier(5).await?;
    let mut p = Process::new(check_parties_and_reset, (b.clone(),))
        .daemon(true)
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        !b.broken().await? && b.n_waiting().await? == 0,
        "after the reset"
    );
    drop(b);
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_value`, `_test_array` and `_test_namespace`: reads what the
/// parent stored, and sets the value to 2.
async fn read_value_array_namespace(
    v: mp::ValueProxy<i32>,
    a: mp::ArrayProxy<i32>,
    ns: mp::NamespaceProxy,
) -> TestResult {
    ensure!(v.get().await? == 1, "value {}", v.get().await?);
    v.set(2).await?;
    ensure!(
        a.get(0).await? == 0 && a.get(1).await? == 1 && a.len().await? == 2,
        "array items"
    );
    ensure!(a.to_vec().await? == [0, 1], "list(array)");
    ensure!(
        ns.get::<i32>("x").await? == 0 && ns.get::<i32>("y").await? == 1,
        "namespace x and y"
    );
    Ok(())
}

/// `TestSyncManagerTypes.test_value`, `test_array` and `test_namespace`: a child reads a
/// value, an array and a namespace this process filled, and sets the value, seen here.
async fn manager_value_array_namespace_in_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let v = m.value(1i32).await?;
    let a = m.array([0i32, 1]).await?;
    let ns = m.namespace().await?;
    ns.set("x", 0i32).await?;
    ns.set("y", 1i32).await?;
    let mut p = Process::new(
        read_value_array_namespace,
        (v.clone(), a.clone(), ns.clone()),
    )
    .daemon(true)
    .start()
    .await?;
    join_ok(&mut p).await?;
    ensure!(v.get().await? == 2, "value {}", v.get().await?);
    drop((v, a, ns));
    m.shutdown().await?;
    Ok(())
}

// ================================================================ more ports

/// `TestInvalidFamily.test_invalid_family`: a Windows pipe name is no address on Linux; the
/// listener is refused (Python's `ValueError`) and makes nothing in the current directory.
async fn invalid_family() -> TestResult {
    let name = r"\\.\test";
    let r = Listener::bind(name, None);
    ensure!(
        matches!(&r, Err(Error::InvalidArgument(_))),
        "bind({name:?}): {:?}",
        r.as_ref().map(|l| l.address().clone())
    );
    ensure!(
        !std::path::Path::new(name).exists(),
        "a file named {name:?} was made"
    );
    Ok(())
}

/// `TestTimeouts._test_timeout`: after a second, answers on its pipe end, then connects to
/// `address` and sends there.
async fn answer_late(child: Connection<i32>, address: mp::Address) -> TestResult {
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.send(&123).await?;
    drop(child);
    let conn = Client::connect::<i32>(&address, None).await?;
    conn.send(&456).await?;
    Ok(())
}

/// `TestTimeouts.test_timeout`: a pipe's `recv` and a TCP listener's `accept` wait for a
/// child that takes a second before it answers on each (no socket timeout ends them early).
async fn late_answers_on_pipe_and_listener() -> TestResult {
    let (parent, child) = Pipe::<i32>::new()?;
    let l = Listener::bind("127.0.0.1:0", None)?;
    let mut p = start(answer_late, (child, l.address().clone())).await?;
    ensure!(parent.recv().await? == 123, "the pipe's message");
    drop(parent);
    let conn = l.accept::<i32>().await?;
    ensure!(conn.recv().await? == 456, "the listener's message");
    drop((conn, l));
    join_ok(&mut p).await
}

/// A small generator of pseudo-random numbers (xorshift), enough for a stress test's sizes.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A size drawn roughly as CPython's `int(random.lognormvariate(0, 1) * 1000)`: mostly
    /// hundreds to a few thousand bytes, now and then tens of thousands, sometimes 0.
    fn size(&mut self) -> usize {
        let n = self.next();
        let scale = [1usize, 10, 100, 1000, 1000, 1000, 3000, 20_000][(n % 8) as usize];
        ((n >> 8) as usize) % (scale + 1)
    }
}

/// The number of lines of `/proc/self/maps`: this process's mappings.
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count())
}

/// One block of `_TestHeap.test_heap`, made of one of the crate's shared objects.
enum Block {
    Raw(RawArray<u8>),
    Locked(mp::Array<f64>),
    Value(Value<i64>),
}

/// `_TestHeap.test_heap`'s body, in a child of its own (so that no other test's descriptors
/// or mappings come and go meanwhile): makes and drops 3,000 shared blocks of random sizes,
/// at most 50 alive, each written and read back; once all are dropped, the process holds
/// the descriptors and mappings it held before.
async fn heap_churn() -> TestResult {
    let warm = (RawArray::<u8>::from_elem(0, 1)?, Value::new(0i64)?);
    drop(warm);
    let (fds, maps) = (support::open_fds(), mappings());
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut blocks: Vec<Block> = Vec::new();
    for i in 0..3000u64 {
        let size = rng.size();
        let b = match i % 3 {
            0 => Block::Raw(RawArray::from_elem(i as u8, size)?),
            1 => Block::Locked(mp::Array::from_elem(i as f64, size / 8)?),
            _ => Block::Value(Value::new(i as i64)?),
        };
        let fine = match &b {
            Block::Raw(a) => a.len() == size && (size == 0 || a.get(size - 1) == Some(i as u8)),
            Block::Locked(a) => {
                a.len() == size / 8 && a.to_vec().await?.iter().all(|&x| x == i as f64)
            }
            Block::Value(v) => v.get().await? == i as i64,
        };
        ensure!(fine, "block {i} of {size} bytes reads back wrong");
        blocks.push(b);
        if blocks.len() > 50 {
            let at = (rng.next() % 50) as usize;
            blocks.swap_remove(at);
        }
    }
    while !blocks.is_empty() {
        let at = (rng.next() as usize) % blocks.len();
        blocks.swap_remove(at);
    }
    ensure!(
        support::open_fds() == fds,
        "descriptors: {fds} before, {} after",
        support::open_fds()
    );
    ensure!(
        mappings() == maps,
        "mappings: {maps} before, {} after",
        mappings()
    );
    Ok(())
}

/// `_TestHeap.test_heap`: many shared blocks made and dropped in a random order leave
/// nothing behind (CPython checks its heap's arenas; the crate maps each block by itself,
/// so the process's descriptors and mappings are what must come back).
async fn heap_of_values_and_arrays() -> TestResult {
    let mut p = start(heap_churn, ()).await?;
    join_ok(&mut p).await
}

/// `TestPoolNotLeakOnFailure.test_release_unused_processes`'s body, in a child of its own:
/// pools of five built and used with fewer and fewer descriptors to spare, so that some
/// workers' starts fail (the README: the pool serves with those that started, and `build`
/// fails only if none did). Whatever failed, terminating the pool leaves no worker alive and
/// gives back every descriptor; the pools that serve give every result. Fails if no limit
/// made a start fail.
async fn pools_at_descriptor_limits() -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let me = std::process::id();
    // What the first pools set up for good (the launcher thread, the runtime's own), first.
    for _ in 0..2 {
        Pool::new(5).await?.terminate().await?;
    }
    ensure!(
        support::eventually(LONG, || support::live_children_of(me).is_empty()).await,
        "a worker outlived terminate: {:?}",
        support::live_children_of(me)
    );
    // The last pool's descriptors may still be closing: the count once it holds still.
    let mut fds = support::open_fds();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match support::open_fds() {
            now if now == fds => break,
            now => fds = now,
        }
    }
    let mut failed = 0;
    for spare in (0..=12u64).rev() {
        // New descriptors take the lowest free numbers: about `spare` of them are left.
        setrlimit(Resource::RLIMIT_NOFILE, fds as u64 + spare, hard)?;
        let served = match Pool::builder().processes(5).build().await {
            Ok(pool) => {
                let squares = pool.map(sqr, 0..20i64).await;
                pool.terminate().await?;
                Some(squares)
            }
            Err(_) => None,
        };
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
        match served {
            Some(squares) => {
                let squares = squares?;
                ensure!(
                    squares == (0..20i64).map(|x| x * x).collect::<Vec<_>>(),
                    "{spare} spare: {squares:?}"
                );
            }
            None => failed += 1,
        }
        ensure!(
            support::eventually(LONG, || support::live_children_of(me).is_empty()).await,
            "{spare} descriptors to spare: workers left alive {:?}",
            support::live_children_of(me)
        );
        ensure!(
            support::eventually(LONG, || support::open_fds() == fds).await,
            "{spare} descriptors to spare: {fds} descriptors before, {} after",
            support::open_fds()
        );
    }
    ensure!(failed > 0, "no limit made a pool's start fail");
    Ok(())
}

/// `TestPoolNotLeakOnFailure.test_release_unused_processes` (issue 19675): pools whose
/// workers' starts fail, here for want of descriptors, leave none of the workers they had
/// started.
async fn failed_pool_start_leaks_no_worker() -> TestResult {
    let mut p = start(pools_at_descriptor_limits, ()).await?;
    join_ok(&mut p).await
}

/// `_TestSharedMemory.test_invalid_shared_memory_creation`: a segment of size 0 is refused
/// (Python's `ValueError`), named or anonymous, and no name is left behind.
async fn invalid_shared_memory_creation() -> TestResult {
    let name = format!("tkmp-cpy-size0-{}", std::process::id());
    for (kind, r) in [
        ("named", SharedMemory::create(&name, 0)),
        ("anonymous", SharedMemory::create_anonymous(0)),
    ] {
        ensure!(
            matches!(&r, Err(Error::InvalidArgument(_))),
            "{kind} of size 0: {:?}",
            r.map(|s| s.size())
        );
    }
    ensure!(
        !std::path::Path::new("/dev/shm").join(&name).exists(),
        "a refused create left its name"
    );
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_basics`, its double unlink: once an attacher has
/// unlinked the name, the creator's `unlink` fails with `NotFound` (Python's
/// `FileNotFoundError`), and the memory stays readable to both.
async fn shared_memory_double_unlink() -> TestResult {
    let name = format!("tkmp-cpy-dblunlink-{}", std::process::id());
    let mut uno = SharedMemory::create(&name, 5000)?;
    ensure!(uno.size() >= 5000, "size {}", uno.size());
    let mut duo = SharedMemory::attach(&name)?;
    duo.unlink()?;
    uno.write(0, b"still")?;
    let mut buf = [0u8; 5];
    duo.read(0, &mut buf)?;
    ensure!(&buf == b"still", "the attacher reads {buf:?}");
    drop(duo);
    let again = uno.unlink();
    ensure!(
        matches!(&again, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound),
        "the second unlink: {again:?}"
    );
    Ok(())
}

/// Reads the first six bytes of `shm` and sends them back.
async fn read_six(shm: SharedMemory, conn: Connection<Vec<u8>>) -> TestResult {
    let mut buf = vec![0u8; 6];
    shm.read(0, &mut buf)?;
    conn.send(&buf).await?;
    Ok(())
}

/// Reads the last item of `sl` and sends it back.
async fn read_last(sl: ShareableList, conn: Connection<ShareableItem>) -> TestResult {
    conn.send(&sl.get(-1)?).await?;
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_pickle_unpickle_dead_object` and
/// `test_shared_memory_ShareableList_pickling_dead_object`, as the README's difference
/// says: a segment or a list sent after its name was unlinked travels with its descriptor,
/// so the receiver has the same memory (Python pickles the name, and the receiver's attach
/// fails with `FileNotFoundError`).
async fn sent_after_unlink_is_the_same_memory() -> TestResult {
    let mut shm = SharedMemory::create_anonymous(512)?;
    let name = format!("tkmp-cpy-dead-{}", std::process::id());
    let mut named = SharedMemory::create(&name, 512)?;
    for (kind, shm) in [("anonymous", &mut shm), ("named", &mut named)] {
        shm.write(0, b"pickle")?;
        shm.unlink()?;
        let (conn, child_conn) = Pipe::<Vec<u8>>::new()?;
        let mut p = start(read_six, (shm.try_clone()?, child_conn)).await?;
        let got = conn.recv_timeout(LONG).await?;
        ensure!(got == b"pickle", "{kind}: the child read {got:?}");
        join_ok(&mut p).await?;
    }
    let mut sl = ShareableList::create(None::<&str>, 0..10i64)?;
    sl.unlink()?;
    let (conn, child_conn) = Pipe::<ShareableItem>::new()?;
    let mut p = start(read_last, (sl.try_clone()?, child_conn)).await?;
    let got = conn.recv_timeout(LONG).await?;
    ensure!(
        got == ShareableItem::Int(9),
        "the child read sl[-1] = {got:?}"
    );
    join_ok(&mut p).await
}

/// `TestResourceTracker.test_resource_tracker_blocked_signals`'s body (gh-127586), in a
/// child: with a signal blocked, making a named segment (which starts this process's
/// segment tracker) leaves the signal mask as it was, and the segment works.
fn tracker_keeps_the_mask() -> TestResult {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1] {
        let mut only = SigSet::empty();
        only.add(sig);
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&only), None)?;
        let name = format!("tkmp-cpy-mask-{}-{}", std::process::id(), sig as i32);
        let shm = SharedMemory::create(&name, 16)?;
        shm.write(0, b"tracked")?;
        let mut now = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut now))?;
        ensure!(
            now.iter().collect::<Vec<_>>() == vec![sig],
            "with {sig} blocked, the mask became {:?}",
            now.iter().collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// `TestResourceTracker.test_resource_tracker_blocked_signals`: starting the tracker of a
/// process that blocks a signal does not change which signals it blocks.
async fn segment_tracker_leaves_blocked_signals() -> TestResult {
    let mut p = start(tracker_keeps_the_mask, ()).await?;
    join_ok(&mut p).await
}

/// `TestSyncManagerTypes._test_lock`: takes the lock and ends, holding it.
async fn take_and_keep(l: mp::LockProxy) -> TestResult {
    l.lock().await?;
    ensure!(!l.try_lock().await?, "the lock is free after lock()");
    Ok(())
}

/// `TestSyncManagerTypes.test_lock`, with the README's owner death: a lock a child took
/// and kept when it ended is free again, its next taker told `LockOwnerDied` (Python's
/// lock stays held, and this process's `release` frees it); then it is taken and released
/// as usual, and a release too many fails (Python's `RuntimeError`).
async fn manager_lock_kept_by_a_child_that_ended() -> TestResult {
    let m = mp::Manager::start().await?;
    let l = m.lock().await?;
    let mut p = Process::new(take_and_keep, (l.clone(),))
        .daemon(true)
        .start()
        .await?;
    let child = p.pid();
    join_ok(&mut p).await?;
    let first = l.lock_timeout(LONG).await;
    ensure!(
        matches!(first, Err(Error::LockOwnerDied { pid }) if pid == child),
        "the first lock after the child: {first:?}"
    );
    l.lock_timeout(LONG).await?;
    l.release().await?;
    let again = l.release().await;
    ensure!(
        matches!(again, Err(Error::NotHeld)),
        "a release too many: {again:?}"
    );
    drop(l);
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_rlock` and `_test_condition`: takes and releases each.
async fn take_and_release(r: mp::RLockProxy, c: mp::ConditionProxy) -> TestResult {
    r.lock().await?;
    r.release().await?;
    c.lock().await?;
    c.release().await?;
    Ok(())
}

/// `TestSyncManagerTypes.test_rlock` and `test_condition`: a child takes and releases a
/// manager's re-entrant lock and condition and ends; both are free here after.
async fn manager_rlock_and_condition_in_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let r = m.rlock().await?;
    let c = m.condition().await?;
    let mut p = Process::new(take_and_release, (r.clone(), c.clone()))
        .daemon(true)
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(r.try_lock().await?, "the re-entrant lock is not free");
    r.release().await?;
    ensure!(c.try_lock().await?, "the condition's lock is not free");
    c.release().await?;
    drop((r, c));
    m.shutdown().await?;
    Ok(())
}

// ================================================================ _TestProcess (more)

/// How many [`Target`] values this process has dropped (a counter of its own, as
/// `release_task_refs` runs beside and counts its `Counted`).
static TARGET_DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An argument that counts its drops (CPython's `DummyCallable`, whose weak reference
/// tells whether the parent let it go).
#[derive(serde::Serialize, serde::Deserialize)]
struct Target(u32);

impl Drop for Target {
    fn drop(&mut self) {
        TARGET_DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `_TestProcess.test_lose_target_ref`'s target: puts 5 once it holds its argument.
async fn put_five(q: Queue<u32>, c: Target) {
    q.put(5 + c.0).await.expect("put");
}

/// `_TestProcess.test_lose_target_ref`: once a process has started, the parent holds no
/// copy of its arguments (the builder that held them is spent), and the child got them.
async fn lose_target_ref() -> TestResult {
    use std::sync::atomic::Ordering::SeqCst;
    for m in support::process::METHODS {
        let q = Queue::<u32>::new()?;
        let before = TARGET_DROPS.load(SeqCst);
        let mut p = Process::new(put_five, (q.clone(), Target(0)))
            .start_method(m)
            .start()
            .await?;
        let dropped = TARGET_DROPS.load(SeqCst) - before;
        ensure!(dropped == 1, "{m:?}: {dropped} drops once started, not 1");
        join_ok(&mut p).await?;
        ensure!(q.get_timeout(LONG).await? == 5, "{m:?}: the child's item");
    }
    Ok(())
}

/// `_TestProcess._test_wait_for_threads`: starts a thread that sets `e` after a while; joins
/// it if `join`, else leaves it parked for good.
fn thread_sets_event(e: Event, join: bool) {
    if join {
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            e.set();
        });
        t.join().expect("the thread");
    } else {
        // Holds the event and never sets it: the process must end all the same.
        std::thread::spawn(move || {
            let _e = e;
            loop {
                std::thread::park();
            }
        });
    }
}

/// `_TestProcess.test_wait_for_threads`: a target that joins its thread ends with the
/// thread's work done (Python waits for a child's non-daemon threads itself); one that does
/// not ends when it returns, its thread with it (the README's "A child ends when its target
/// returns").
async fn wait_for_threads() -> TestResult {
    let e = Event::new()?;
    let mut p = start(thread_sets_event, (e.clone(), true)).await?;
    join_ok(&mut p).await?;
    ensure!(e.is_set(), "the joined thread's set");

    let e = Event::new()?;
    let mut p = start(thread_sets_event, (e.clone(), false)).await?;
    join_ok(&mut p).await?;
    ensure!(!e.is_set(), "the parked thread set the event");
    Ok(())
}

/// `_TestProcess.test_wait_for_threads`, the other side of the difference: a child whose
/// thread puts `size`-byte items for ever, counting each `put` that returned in `count`; the
/// target returns (ending the process) while the thread puts.
fn put_until_the_end(q: mp::JoinableQueue<Vec<u8>>, size: usize, count: RawValue<u64>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            for i in 1.. {
                if q.put(vec![1u8; size]).await.is_err() {
                    return;
                }
                count.set(i);
            }
        })
    });
    std::thread::sleep(Duration::from_millis(30));
}

/// A process that ends while its thread is in a `put` (of an item in shared memory, through
/// the socket, or in a memfd) leaves the queue whole: every `put` that returned arrives (and
/// the one cut off at most once more), the queue serves on, and `join` returns once each
/// item taken is done, and the one cut off, if it was counted and lost.
async fn thread_putting_as_its_process_ends() -> TestResult {
    for size in [8usize, 500, 100_000] {
        for round in 0..2 {
            let q = mp::JoinableQueue::<Vec<u8>>::with_maxsize(64)?;
            let count = RawValue::new(0u64)?;
            let mut p = start(put_until_the_end, (q.clone(), size, count.clone())).await?;
            let mut got = 0u64;
            loop {
                match q.get_timeout(Duration::from_millis(500)).await {
                    Ok(v) => {
                        ensure!(v == vec![1u8; size], "size {size}: a torn item");
                        got += 1;
                        q.task_done()?;
                    }
                    Err(Error::Empty) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            join_ok(&mut p).await?;
            while let Ok(v) = q.get_nowait() {
                ensure!(v == vec![1u8; size], "size {size}: a torn item");
                got += 1;
                q.task_done()?;
            }
            let put = count.get();
            ensure!(
                got == put || got == put + 1,
                "size {size}, round {round}: {put} puts returned, {got} items came"
            );
            // Every item that came is done. A put cut off in the few instructions between
            // counting its item and publishing it leaves that one item counted and lost (see
            // `JoinableQueue::join`); no other is left counted.
            match q.unfinished() {
                0 => {}
                1 if got == put => q.task_done()?,
                n => return Err(format!("size {size}: {n} unfinished, {got} came").into()),
            }
            tokio::time::timeout(LONG, q.join()).await??;
            q.put(vec![2; size]).await?;
            ensure!(
                q.get_timeout(LONG).await? == vec![2; size],
                "size {size}: after"
            );
        }
    }
    Ok(())
}

// ================================================================ _TestEvent

/// `_TestEvent.test_repr`: an event's `Debug` shows whether it is set (Python's
/// `<Event at ... unset>`), as set and cleared here or by another process.
async fn event_debug_shows_its_state() -> TestResult {
    let e = Event::new()?;
    ensure!(format!("{e:?}") == "Event { set: false }", "{e:?}");
    e.set();
    ensure!(format!("{e:?}") == "Event { set: true }", "{e:?}");
    e.clear();
    ensure!(format!("{e:?}") == "Event { set: false }", "{e:?}");
    let mut p = start(set_it, (e.clone(),)).await?;
    join_ok(&mut p).await?;
    ensure!(
        format!("{e:?}") == "Event { set: true }",
        "set by a child: {e:?}"
    );
    Ok(())
}

// `_TestLock.test_repr_lock`, `test_repr_rlock`, `_TestSemaphore` and `_TestBarrier`'s
// reprs: each primitive's `Debug` shows its state as Python's `repr` does, as any process
// left it.
async fn sync_primitives_show_their_state_in_debug() -> TestResult {
    let me = std::process::id();
    let l = Lock::new()?;
    ensure!(format!("{l:?}") == "Lock { holder: None }", "{l:?}");
    let g = l.lock().await?;
    ensure!(
        format!("{l:?}") == format!("Lock {{ holder: Some({me}) }}"),
        "{l:?}"
    );
    drop(g);
    let r = RLock::new()?;
    let (a, b) = (r.lock().await?, r.lock().await?);
    ensure!(
        format!("{r:?}") == format!("RLock {{ holder: Some(({me}, 2)) }}"),
        "{r:?}"
    );
    drop((b, a));
    ensure!(format!("{r:?}") == "RLock { holder: None }", "{r:?}");
    let s = Semaphore::new(2)?;
    s.acquire().await?.forget();
    ensure!(format!("{s:?}") == "Semaphore { value: 1 }", "{s:?}");
    let bs = mp::BoundedSemaphore::new(3)?;
    bs.acquire().await?.forget();
    ensure!(
        format!("{bs:?}") == "BoundedSemaphore { value: 2, bound: 3 }",
        "{bs:?}"
    );
    let c = mp::Condition::with_lock(l.clone())?;
    let g = l.lock().await?;
    ensure!(
        format!("{c:?}") == format!("Condition {{ lock: Lock(Lock {{ holder: Some({me}) }}) }}"),
        "{c:?}"
    );
    drop(g);
    let bar = Barrier::new(3)?;
    let waiting = tokio::spawn({
        let bar = bar.clone();
        async move { bar.wait().await }
    });
    let one_waits = support::eventually(Duration::from_secs(10), || bar.n_waiting() == 1).await;
    ensure!(one_waits, "{bar:?}");
    ensure!(
        format!("{bar:?}") == "Barrier { parties: 3, n_waiting: 1, broken: false }",
        "{bar:?}"
    );
    bar.abort();
    ensure!(waiting.await?.is_err(), "an aborted wait gave an index");
    ensure!(
        format!("{bar:?}") == "Barrier { parties: 3, n_waiting: 0, broken: true }",
        "{bar:?}"
    );
    Ok(())
}

/// Sets `e`.
fn set_it(e: Event) {
    e.set();
}

// ================================================================ _TestBarrier (action)

/// `_TestBarrier._test_action_f`: waits `passes` times; the party that gets index 0 runs
/// the action, adding one to `runs`.
async fn action_party(b: Barrier, runs: Value<u32>, passes: u32) -> ExitCode {
    for _ in 0..passes {
        match b.wait_timeout(LONG).await {
            Ok(0) => {
                runs.lock().await.expect("lock").update(|n| n + 1);
            }
            Ok(_) => {}
            Err(_) => return ExitCode::from(3),
        }
    }
    ExitCode::SUCCESS
}

/// `_TestBarrier.test_action`, as the README says to write it: the action runs on the
/// party that gets index 0, so once per pass whichever process that is.
async fn barrier_action() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let runs = Value::new(0u32)?;
    every_party(action_party, (b, runs.clone(), 3)).await?;
    let n = runs.get().await?;
    ensure!(n == 3, "the action ran {n} times in 3 passes");
    Ok(())
}

// ================================================================ _TestArray (more)

/// `_TestArray.test_getobj_getlock_obj`: an array's lock is its own unless it was given
/// one, then it is that lock (taking either takes both); its object is the raw array that
/// holds its items. `RawArray` has neither: it has no `get_lock` to call.
async fn array_get_obj_and_get_lock() -> TestResult {
    let items: Vec<i32> = (0..10).collect();
    let arr1 = Array::from_slice(&items)?;
    ensure!(arr1.get_obj().to_vec() == items, "arr1's object");
    let g = arr1
        .get_lock()
        .try_lock()?
        .ok_or("arr1's own lock was held")?;
    drop(g);

    let lock = Lock::new()?;
    let arr3 = Array::with_lock(&items, lock.clone())?;
    ensure!(arr3.get_obj().to_vec() == items, "arr3's object");
    let held = lock.try_lock()?.ok_or("the given lock was held")?;
    ensure!(
        arr3.get_lock().try_lock()?.is_none(),
        "arr3's lock is not the one it was given"
    );
    drop(held);
    let via_array = arr3.lock().await?;
    ensure!(lock.try_lock()?.is_none(), "arr3.lock() took another lock");
    drop(via_array);

    let raw = RawArray::from_slice(&items)?;
    let arr = Array::from_raw(raw.clone(), Lock::new()?);
    arr.set(0, 100).await?;
    ensure!(raw.get(0) == Some(100), "from_raw is not the same memory");
    Ok(())
}

// ================================================================ _TestContainers (iter)

/// `_TestContainers.test_list_iter`: a list's items, in order, as they are at the call;
/// a change made after is seen by the next call. (`to_vec` is a snapshot, Python's `list(a)`,
/// not a live iterator.)
async fn manager_list_iter() -> TestResult {
    let m = mp::Manager::start().await?;
    let a = m.list(0..10i64).await?;
    ensure!(
        a.to_vec().await? == (0..10).collect::<Vec<_>>(),
        "the items"
    );
    let before = a.to_vec().await?;
    a.set(0, 100).await?;
    ensure!(before[0] == 0, "a snapshot changed");
    ensure!(a.get(0).await? == Some(100), "the change");
    ensure!(a.to_vec().await?[0] == 100, "the next snapshot");
    m.shutdown().await?;
    Ok(())
}

/// `_TestContainers.test_dict_iter`: a dict's keys come in the order they were inserted, as
/// Python's; a snapshot taken before a `clear` keeps them (Python's live iterator raises
/// `RuntimeError` instead), and the next one is empty.
async fn manager_dict_iter() -> TestResult {
    let m = mp::Manager::start().await?;
    let d = m.dict::<u32, char>().await?;
    let indices: Vec<u32> = (65..70).rev().collect();
    for &i in &indices {
        d.insert(i, char::from_u32(i).ok_or("a char")?).await?;
    }
    let keys = d.keys().await?;
    ensure!(keys == indices, "keys {keys:?}");
    d.clear().await?;
    ensure!(keys.len() == 5, "the snapshot");
    ensure!(d.keys().await?.is_empty(), "keys after clear");
    m.shutdown().await?;
    Ok(())
}

// ================================================================ _TestPool (more)

/// `_TestPool.test_map_async`.
async fn pool_map_async() -> TestResult {
    let pool = Pool::new(2).await?;
    let got = pool.map_async(sqr, (0..10).collect::<Vec<i64>>()).await?;
    ensure!(got == (0..10).map(sqr).collect::<Vec<_>>(), "{got:?}");
    Ok(())
}

/// `_TestPool.test_enter` (bpo-35477): a pool that is no longer running refuses work (its
/// `with` block refuses to enter), and `join` after `terminate` returns.
async fn pool_enter_after_terminate() -> TestResult {
    let pool = Pool::new(1).await?;
    pool.terminate().await?;
    ensure!(
        pool.apply(sqr, (3,))
            .await
            .is_err_and(|e| e.is_pool_closed()),
        "a terminated pool ran a task"
    );
    tokio::time::timeout(LONG, pool.join()).await??;
    Ok(())
}

/// `_TestPool.test_context`: a pool used as Python's `with` block uses it (work, then
/// `terminate` on leaving it) refuses every kind of work afterwards with `PoolClosed`, as
/// Python's `map_async` raises `ValueError` at the call: a map of an empty input too, and
/// a stream, which reads no input and yields the refusal once (Python's `imap` raises at
/// the call).
async fn pool_refuses_work_after_its_with_block() -> TestResult {
    let pool = Pool::new(2).await?;
    let l: Vec<i64> = (0..10).collect();
    let got = pool.map_async(sqr, l.clone()).await?;
    ensure!(
        got == l.iter().map(|&x| sqr(x)).collect::<Vec<_>>(),
        "{got:?}"
    );
    pool.terminate().await?;
    tokio::time::timeout(LONG, pool.join()).await??;
    for input in [l, Vec::new()] {
        let n = input.len();
        let r = pool.map_async(sqr, input.clone()).await;
        ensure!(
            r.as_ref().is_err_and(|e| e.is_pool_closed()),
            "map_async of {n}: {r:?}"
        );
        let r = pool.map(sqr, input.clone()).await;
        ensure!(
            r.as_ref().is_err_and(|e| e.is_pool_closed()),
            "map of {n}: {r:?}"
        );
        let pairs: Vec<(i64, i64)> = input.iter().map(|&x| (x, x)).collect();
        let r = pool.starmap_async(mul, pairs).await;
        ensure!(
            r.as_ref().is_err_and(|e| e.is_pool_closed()),
            "starmap_async of {n}: {r:?}"
        );
        for ordered in [true, false] {
            let s = match ordered {
                true => pool.imap(sqr, input.clone()),
                false => pool.imap_unordered(sqr, input.clone()),
            };
            let got: Vec<_> = s.collect().await;
            ensure!(
                got.len() == 1 && got[0].as_ref().is_err_and(|e| e.is_pool_closed()),
                "imap (ordered {ordered}) of {n}: {got:?}"
            );
        }
    }
    Ok(())
}

/// `_TestPoolWorkerErrors.test_async_error_callback`: a failing task's error reaches the
/// error callback (here a closure chained on the result) and the awaiting caller both.
async fn async_error_callback() -> TestResult {
    use futures::FutureExt;
    let pool = Pool::new(2).await?;
    let scratchpad = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = scratchpad.clone();
    let res = pool
        .apply_async(support::pool::boom, (3,))
        .inspect(move |r| {
            if let Err(e) = r {
                *support::locked(&seen) = e.panic_message().map(str::to_string);
            }
        })
        .await;
    ensure!(res.is_err_and(|e| e.is_panic()), "the task did not fail");
    let got = support::locked(&scratchpad).clone();
    ensure!(got.is_some(), "the callback saw no panic");
    pool.close();
    tokio::time::timeout(LONG, pool.join()).await??;
    Ok(())
}

// ================================================================ _TestMyManager

/// `_TestMyManager`'s `FooBar`: `f` answers, `g` fails (Python's `ValueError`).
#[derive(Default)]
struct FooBar;

#[derive(serde::Serialize, serde::Deserialize)]
enum FooBarCall {
    F,
    G,
}

impl mp::Managed for FooBar {
    type Request = FooBarCall;
    type Reply = String;
    fn call(&mut self, call: FooBarCall) -> String {
        match call {
            FooBarCall::F => "f()".to_string(),
            FooBarCall::G => panic!("ValueError"),
        }
    }
}

/// `_TestMyManager`'s `baz` generator with its `IteratorProxy`: each call the next square,
/// then `None`.
#[derive(Default)]
struct Baz(u64);

impl mp::Managed for Baz {
    type Request = ();
    type Reply = Option<u64>;
    fn call(&mut self, (): ()) -> Option<u64> {
        let i = self.0;
        self.0 += 1;
        (i < 10).then_some(i * i)
    }
}

/// `_TestMyManager.common`.
async fn my_manager_common(m: &mp::Manager) -> TestResult {
    let foobar = m.managed::<FooBar>().await?;
    ensure!(foobar.call(FooBarCall::F).await? == "f()", "f()");
    ensure!(
        matches!(foobar.call(FooBarCall::G).await, Err(Error::Manager(msg)) if msg.contains("ValueError")),
        "g() did not fail"
    );
    let squares = m.managed::<Baz>().await?;
    let mut got = Vec::new();
    while let Some(x) = squares.call(()).await? {
        got.push(x);
    }
    ensure!(got == (0..10).map(|i| i * i).collect::<Vec<_>>(), "{got:?}");
    Ok(())
}

/// `_TestMyManager.test_mymanager`, `test_mymanager_context` and
/// `test_mymanager_context_prestarted`: a manager of registered types serves them, and its
/// server process ends, reaped, whether it is shut down or its handle dropped (Python's
/// `with` block).
async fn my_manager() -> TestResult {
    for shutdown in [true, false] {
        let m = mp::Manager::builder()
            .register::<FooBar>()
            .register::<Baz>()
            .start()
            .await?;
        let pid = m.pid().ok_or("no server process")?;
        my_manager_common(&m).await?;
        if shutdown {
            m.shutdown().await?;
        } else {
            drop(m);
        }
        ensure!(
            support::eventually(LONG, || !support::exists(pid)).await,
            "server {pid} left behind (shutdown: {shutdown})"
        );
        ensure!(
            !mp::active_children().iter().any(|c| c.pid() == pid),
            "server {pid} among the active children"
        );
    }
    Ok(())
}

/// `TestManagerExceptions.test_queue_get` (gh-106558): `get_nowait` on an empty manager
/// queue fails with `Empty`, and the queue serves on.
async fn manager_queue_get_nowait_empty() -> TestResult {
    let m = mp::Manager::start().await?;
    let q = m.queue::<u8>().await?;
    ensure!(
        matches!(q.get_nowait().await, Err(Error::Empty)),
        "get_nowait of an empty queue"
    );
    q.put(1).await?;
    ensure!(q.get_nowait().await? == 1, "the item");
    m.shutdown().await?;
    Ok(())
}

// ================================================================ TestStartMethod (more)

/// `TestStartMethod.test_mixed_startmethod`'s `close_queue`: takes the item, puts its own.
async fn take_and_answer(q: Queue<u32>) {
    let x = q.get_timeout(LONG).await.expect("get");
    q.put(x + 1).await.expect("put");
}

/// `TestStartMethod.test_mixed_startmethod`: a queue made here serves children of every
/// start method (Python refuses a queue made in a `fork` context to a `spawn` child; ours
/// belong to no context).
async fn queue_with_mixed_start_methods() -> TestResult {
    let q = Queue::<u32>::new()?;
    for m in support::process::METHODS {
        q.put(1).await?;
        let mut p = Process::new(take_and_answer, (q.clone(),))
            .start_method(m)
            .start()
            .await?;
        join_ok(&mut p).await?;
        ensure!(q.get_timeout(LONG).await? == 2, "{m:?}: the answer");
    }
    Ok(())
}

// ================================================================ _TestQueue (shutdown)

/// `_TestQueue._join_worker`: waits on the joinable queue's `join`.
async fn join_worker(q: mp::JoinableQueue<String>) -> mp::Result<()> {
    q.join().await
}

/// `ProcessFuture.run(q.put, "data")`: a put made in a child.
async fn put_data(q: Queue<String>) -> mp::Result<()> {
    q.put("data".into()).await.map_err(|e| e.into_parts().0)
}

/// `ProcessFuture.run(q.get)`: a get made in a child.
async fn get_one(q: Queue<String>) -> mp::Result<String> {
    q.get().await
}

/// `assertRaisesShutdown` of a put and a get made in a child, and of `put_nowait` and
/// `get_nowait` made here.
async fn refuses_puts_and_gets(q: &Queue<String>) -> TestResult {
    let put = Process::call(put_data, (q.clone(),)).start().await?.await?;
    ensure!(
        matches!(put, Err(Error::ShutDown)),
        "a child's put: {put:?}"
    );
    let e = q.put_nowait("data".into()).err().ok_or("put_nowait")?;
    ensure!(matches!(e.error(), Error::ShutDown), "put_nowait: {e}");
    let get = Process::call(get_one, (q.clone(),)).start().await?.await?;
    ensure!(
        matches!(get, Err(Error::ShutDown)),
        "a child's get: {get:?}"
    );
    let get = q.get_nowait();
    ensure!(matches!(get, Err(Error::ShutDown)), "get_nowait: {get:?}");
    Ok(())
}

/// A queue of `maxsize` holding `items` copies of `"data"`: a plain one, or a joinable one
/// whose `join` a child is waiting on.
async fn queue_with_joiner(
    joinable: bool,
    maxsize: usize,
    items: usize,
) -> Result<
    (
        Queue<String>,
        Option<mp::JoinableQueue<String>>,
        Option<mp::JoinHandle<mp::Result<()>>>,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let (q, j) = match joinable {
        true => {
            let j = mp::JoinableQueue::<String>::with_maxsize(maxsize)?;
            ((*j).clone(), Some(j))
        }
        false => (Queue::<String>::with_maxsize(maxsize)?, None),
    };
    for _ in 0..items {
        q.put("data".into()).await?;
    }
    let joiner = match &j {
        Some(j) => Some(Process::call(join_worker, (j.clone(),)).start().await?),
        None => None,
    };
    Ok((q, j, joiner))
}

/// Whether the child waiting on `join` still waits; it is given a moment to return.
async fn still_joining(joiner: &mut mp::JoinHandle<mp::Result<()>>) -> Result<bool, mp::TaskError> {
    Ok(joiner
        .join_timeout(Duration::from_millis(100))
        .await?
        .is_none())
}

/// `_TestQueue.test_shutdown_empty`: an empty queue, plain or joinable, shut down: its
/// size stays 0, a child waiting on `join` returns, and puts and gets fail with `ShutDown`,
/// here and in children.
async fn queue_shutdown_empty() -> TestResult {
    for joinable in [false, true] {
        let (q, _j, joiner) = queue_with_joiner(joinable, 0, 0).await?;
        q.shutdown();
        ensure!(q.qsize() == 0, "joinable {joinable}: qsize {}", q.qsize());
        if let Some(joiner) = joiner {
            joiner.await??;
        }
        refuses_puts_and_gets(&q).await?;
    }
    Ok(())
}

/// `_TestQueue.test_shutdown_nonempty`: a full queue of one, shut down, keeps its item
/// for a child's get; then puts and gets fail with `ShutDown`. A joinable queue's `join`
/// in a child waits until that item is marked done.
async fn queue_shutdown_nonempty() -> TestResult {
    for joinable in [false, true] {
        let (q, j, mut joiner) = queue_with_joiner(joinable, 1, 1).await?;
        q.shutdown();
        ensure!(q.qsize() == 1, "joinable {joinable}: qsize {}", q.qsize());
        let got = Process::call(get_one, (q.clone(),))
            .start()
            .await?
            .await??;
        ensure!(got == "data", "the item left: {got}");
        if let Some(joiner) = &mut joiner {
            ensure!(
                still_joining(joiner).await?,
                "join returned with an item not done"
            );
        }
        refuses_puts_and_gets(&q).await?;
        if let (Some(j), Some(joiner)) = (j, joiner) {
            j.task_done()?;
            joiner.await??;
        }
    }
    Ok(())
}

/// `_TestQueue.test_shutdown_immediate`: an immediate shutdown drops the item left (the
/// size falls to 0) and counts it done, so a child's `join` returns; puts and gets fail
/// with `ShutDown`, and a `task_done` more is one too many.
async fn queue_shutdown_immediate() -> TestResult {
    for joinable in [false, true] {
        let (q, j, joiner) = queue_with_joiner(joinable, 0, 1).await?;
        let dropped = q.shutdown_immediate().await?;
        ensure!(dropped == 1, "joinable {joinable}: dropped {dropped}");
        ensure!(q.qsize() == 0, "joinable {joinable}: qsize {}", q.qsize());
        if let Some(joiner) = joiner {
            joiner.await??;
        }
        refuses_puts_and_gets(&q).await?;
        if let Some(j) = j {
            let done = j.task_done();
            ensure!(
                matches!(done, Err(Error::TaskDoneTooManyTimes)),
                "task_done: {done:?}"
            );
        }
    }
    Ok(())
}

/// `_TestQueue.test_shutdown_immediate_with_unfinished`: of two items, a child took one;
/// an immediate shutdown drops the other, and a child's `join` waits for the one taken,
/// until its `task_done`; a second `task_done` is one too many.
async fn queue_shutdown_immediate_with_unfinished() -> TestResult {
    let (q, j, joiner) = queue_with_joiner(true, 0, 2).await?;
    let (j, mut joiner) = (j.ok_or("joinable")?, joiner.ok_or("joiner")?);
    let got = Process::call(get_one, (q.clone(),))
        .start()
        .await?
        .await??;
    ensure!(got == "data", "the item taken: {got}");
    let dropped = q.shutdown_immediate().await?;
    ensure!(dropped == 1, "dropped {dropped}");
    ensure!(q.qsize() == 0, "qsize {}", q.qsize());
    ensure!(
        still_joining(&mut joiner).await?,
        "join returned with an item not done"
    );
    refuses_puts_and_gets(&q).await?;
    j.task_done()?;
    let done = j.task_done();
    ensure!(
        matches!(done, Err(Error::TaskDoneTooManyTimes)),
        "a second task_done: {done:?}"
    );
    joiner.await??;
    Ok(())
}

/// `_TestQueue._join_worker` for a manager's joinable queue.
async fn proxy_join_worker(q: mp::JoinableQueueProxy<String>) -> mp::Result<()> {
    q.join().await
}

/// `ProcessFuture.run(q.put, "data")` for a manager's queue.
async fn proxy_put_data(q: mp::QueueProxy<String>) -> mp::Result<()> {
    q.put("data".into()).await.map_err(|e| e.into_parts().0)
}

/// `ProcessFuture.run(q.get)` for a manager's queue.
async fn proxy_get_one(q: mp::QueueProxy<String>) -> mp::Result<String> {
    q.get().await
}

/// [`refuses_puts_and_gets`] for a manager's queue.
async fn proxy_refuses_puts_and_gets(q: &mp::QueueProxy<String>) -> TestResult {
    let put = Process::call(proxy_put_data, (q.clone(),)).start().await?;
    let get = Process::call(proxy_get_one, (q.clone(),)).start().await?;
    let put_nowait = q
        .put_nowait("data".into())
        .await
        .err()
        .map(|e| e.into_parts().0);
    for (what, e) in [
        ("a child's put", put.await?.err()),
        ("a child's get", get.await?.err()),
        ("put_nowait", put_nowait),
        ("get_nowait", q.get_nowait().await.err()),
    ] {
        ensure!(matches!(e, Some(Error::ShutDown)), "{what}: {e:?}");
    }
    Ok(())
}

/// `_TestQueue.test_shutdown_nonempty`, `test_shutdown_immediate` and
/// `test_shutdown_immediate_with_unfinished` with a manager's joinable queue: after a plain
/// shutdown the item left is still taken, and `join` in a child waits for its `task_done`;
/// an immediate one drops what is left, counts it done, and a child's `join` waits only for
/// the item a child took; past that, a `task_done` is one too many.
async fn manager_queue_shutdown() -> TestResult {
    let m = mp::Manager::start().await?;
    for immediate in [false, true] {
        let q = m.joinable_queue::<String>(2).await?;
        for _ in 0..2 {
            q.put("data".into()).await.map_err(|e| e.to_string())?;
        }
        let mut joiner = Process::call(proxy_join_worker, (q.clone(),))
            .start()
            .await?;
        let got = Process::call(proxy_get_one, ((*q).clone(),))
            .start()
            .await?
            .await??;
        ensure!(got == "data", "the item taken: {got}");
        match immediate {
            true => {
                let dropped = q.shutdown_immediate().await?;
                ensure!(dropped == 1, "dropped {dropped}");
                ensure!(q.qsize().await? == 0, "qsize after an immediate shutdown");
            }
            false => {
                q.shutdown().await?;
                ensure!(q.qsize().await? == 1, "qsize after a shutdown");
                let got = Process::call(proxy_get_one, ((*q).clone(),))
                    .start()
                    .await?
                    .await??;
                ensure!(got == "data", "the item left: {got}");
            }
        }
        let waiting = joiner
            .join_timeout(Duration::from_millis(100))
            .await?
            .is_none();
        ensure!(
            waiting,
            "immediate {immediate}: join returned with items not done"
        );
        proxy_refuses_puts_and_gets(&q).await?;
        if !immediate {
            q.task_done().await?;
        }
        q.task_done().await?;
        let done = q.task_done().await;
        ensure!(
            matches!(done, Err(Error::TaskDoneTooManyTimes)),
            "immediate {immediate}: a task_done too many: {done:?}"
        );
        joiner.await??;
    }
    m.shutdown().await?;
    Ok(())
}

/// `TestSyncManagerTypes._test_dict`, the whole of it that has a counterpart: the child's
/// checks of a dict holding `{'foo': 5}`; a description of the first that fails.
async fn whole_dict_check(d: mp::DictProxy<String, i64>) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    let s = |k: &str| k.to_string();
    let got = (
        d.len().await.map_err(e)?,
        d.get(&s("foo")).await.map_err(e)?,
    );
    if got != (1, Some(5)) {
        return Err(format!("len(), get('foo'): {got:?}"));
    }
    d.update([(s("bar"), 6)]).await.map_err(e)?;
    let items = d.items().await.map_err(e)?;
    if items != [(s("foo"), 5), (s("bar"), 6)] {
        return Err(format!("items after obj |= {{'bar': 6}}: {items:?}"));
    }
    let mut keys = d.keys().await.map_err(e)?;
    keys.reverse();
    if keys != [s("bar"), s("foo")] {
        return Err(format!("reversed(obj): {keys:?}"));
    }
    let popped = d.popitem().await.map_err(e)?;
    if popped != Some((s("bar"), 6)) {
        return Err(format!("popitem(): {popped:?}"));
    }
    let set = d.setdefault(s("bar"), 0).await.map_err(e)?;
    d.update([(s("bar"), 7)]).await.map_err(e)?;
    let items = d.items().await.map_err(e)?;
    if set != 0 || items != [(s("foo"), 5), (s("bar"), 7)] {
        return Err(format!(
            "setdefault('bar', 0) {set}, then update: {items:?}"
        ));
    }
    let popped = d.remove(&s("bar")).await.map_err(e)?;
    if popped != Some(7) {
        return Err(format!("pop('bar'): {popped:?}"));
    }
    d.clear().await.map_err(e)?;
    match d.len().await.map_err(e)? {
        0 => Ok(()),
        n => Err(format!("len() after clear(): {n}")),
    }
}

/// `TestSyncManagerTypes._test_list`, the part `list_and_dict_methods_in_a_child` (in
/// `tests/manager.rs`) leaves out: the child's checks of a list holding `[5]` as it grows;
/// a description of the first that fails.
async fn whole_list_check(l: mp::ListProxy<i64>) -> Result<(), String> {
    let e = |e: Error| e.to_string();
    l.extend([7]).await.map_err(e)?;
    l.extend(l.to_vec().await.map_err(e)?).await.map_err(e)?;
    let twice = l.to_vec().await.map_err(e)?;
    if twice != [5, 7, 5, 7] {
        return Err(format!("obj += [7]; obj *= 2: {twice:?}"));
    }
    let doubled: Vec<i64> = twice.iter().chain(&twice).copied().collect();
    l.extend(doubled.iter().chain(&twice).copied())
        .await
        .map_err(e)?;
    let mut sorted = l.to_vec().await.map_err(e)?;
    sorted.sort();
    l.clear().await.map_err(e)?;
    l.extend(sorted).await.map_err(e)?;
    l.reverse().await.map_err(e)?;
    let got = (l.len().await.map_err(e)?, l.pop(0).await.map_err(e)?);
    if got != (16, Some(7)) {
        return Err(format!(
            "len() after extend, sort, reverse; pop(0): {got:?}"
        ));
    }
    l.clear().await.map_err(e)?;
    match l.len().await.map_err(e)? {
        0 => Ok(()),
        n => Err(format!("len() after clear(): {n}")),
    }
}

/// `TestSyncManagerTypes.test_dict` and `test_list`, the child's checks whole: a dict's
/// update, its keys reversed, `popitem` taking the latest pair, `setdefault` then
/// `update` of a key popped, `pop` and `clear`; a list growing by extends (Python's `+=`
/// and `*=`), its sorted items reversed, `pop(0)` and `clear`. The parent then sees both
/// empty.
async fn manager_dict_and_list_whole_in_a_child() -> TestResult {
    let m = mp::Manager::start().await?;
    let d = m.dict::<String, i64>().await?;
    d.insert("foo".into(), 5).await?;
    Process::call(whole_dict_check, (d.clone(),))
        .start()
        .await?
        .await??;
    ensure!(d.is_empty().await?, "the dict after the child");
    let l = m.list([5i64]).await?;
    Process::call(whole_list_check, (l.clone(),))
        .start()
        .await?
        .await??;
    ensure!(l.is_empty().await?, "the list after the child");
    drop((d, l));
    m.shutdown().await?;
    Ok(())
}

// ================================================================ more ports

/// What `_TestProcess._test` sends back, one item at a time through a queue of one.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Told {
    Args(i64, i64),
    Name(String),
    Pid(u32),
    Daemon(bool),
}

/// `_TestProcess._test`: sends its arguments, its name, its pid and its daemon flag, each
/// waiting for room in a queue of one (so that it is alive while the parent checks).
async fn tell_about_self(q: Queue<Told>, a: i64, b: i64) {
    let me = mp::current_process();
    for t in [
        Told::Args(a, b),
        Told::Name(me.name().to_string()),
        Told::Pid(me.pid()),
        Told::Daemon(me.daemon()),
    ] {
        q.put(t).await.expect("put");
    }
}

/// `_TestProcess.test_process`: a named daemon child, once started, has no exit code, is
/// alive and among the active children while it sends, through a queue of one, its
/// arguments, its name, its pid and its daemon flag, which are those the parent gave and
/// sees; joined, it exited with 0, is not alive and no longer an active child. (Python's
/// checks before `start` have no counterpart: a builder is not a process.)
async fn process_whole_life() -> TestResult {
    for m in support::process::METHODS {
        let q = Queue::<Told>::with_maxsize(1)?;
        let mut p = Process::new(tell_about_self, (q.clone(), 1, 2))
            .name("SomeProcess")
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        ensure!(p.exitcode()?.is_none(), "{m:?}: exit code while running");
        ensure!(p.is_alive(), "{m:?}: not alive");
        ensure!(p.daemon() && p.name() == "SomeProcess", "{m:?}: {p:?}");
        ensure!(
            mp::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m:?}: not among the active children"
        );
        let want = [
            Told::Args(1, 2),
            Told::Name("SomeProcess".into()),
            Told::Pid(p.pid()),
            Told::Daemon(true),
        ];
        for w in want {
            let got = q.get_timeout(LONG).await?;
            ensure!(got == w, "{m:?}: got {got:?}, want {w:?}");
        }
        ensure!(join_code(&mut p).await? == 0, "{m:?}: exit code");
        ensure!(p.exitcode()? == Some(0), "{m:?}: exitcode() after join");
        ensure!(!p.is_alive(), "{m:?}: alive after join");
        ensure!(
            !mp::active_children().iter().any(|c| c.pid() == p.pid()),
            "{m:?}: still among the active children"
        );
    }
    Ok(())
}

/// `_TestProcess._test_process_mainthread_native_id`: sends the kernel's id of the main
/// thread of this process (which is the thread a target runs on, or not: its id is read
/// from `/proc`, not from the calling thread).
async fn send_main_thread_id(q: Queue<u32>) {
    let tid = std::process::id();
    let task = std::fs::read_dir("/proc/self/task")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()))
        .map(|ids| ids.min().unwrap_or(0))
        .unwrap_or(0);
    q.put(if task == tid { tid } else { 0 }).await.expect("put");
}

/// `_TestProcess.test_process_mainthread_native_id`: a child's main thread is not the
/// parent's (its kernel id is the child's pid, which `/proc` lists as the child's first
/// thread).
async fn process_mainthread_native_id() -> TestResult {
    let q = Queue::<u32>::new()?;
    let mut p = start(send_main_thread_id, (q.clone(),)).await?;
    let child_main = q.get_timeout(LONG).await?;
    join_ok(&mut p).await?;
    ensure!(child_main != 0, "the child's main thread is not its first");
    ensure!(
        child_main != std::process::id(),
        "the child's main thread is the parent's"
    );
    ensure!(
        child_main == p.pid(),
        "the child's main thread: {child_main}"
    );
    Ok(())
}

async fn wait_for_event(e: Event) {
    e.wait_timeout(LONG).await.expect("wait");
}

/// `_TestProcess.test_sentinel`: a running child's sentinel is not ready (`wait` with a
/// zero timeout gives nothing); once the child ended, it is. (Python's `sentinel` before
/// `start` raises; here there is no process to ask before `start`.)
async fn sentinel_ready_once_ended() -> TestResult {
    for m in support::process::METHODS {
        let e = Event::new()?;
        let mut p = Process::new(wait_for_event, (e.clone(),))
            .start_method(m)
            .start()
            .await?;
        let ready = mp::wait(&[&p.sentinel()], Some(Duration::ZERO)).await?;
        ensure!(
            ready.is_empty(),
            "{m:?}: a running child's sentinel is ready"
        );
        e.set();
        join_ok(&mut p).await?;
        let ready = mp::wait(&[&p.sentinel()], Some(Duration::from_secs(1))).await?;
        ensure!(ready == [0], "{m:?}: an ended child's sentinel: {ready:?}");
    }
    Ok(())
}

/// `_TestProcess._test_close`: takes one item, then exits with 0.
async fn take_one_then_exit(q: Queue<()>) {
    q.get_timeout(LONG).await.expect("get");
}

/// `_TestProcess.test_close`: closing a running child is refused (Python's `ValueError`),
/// and gives the process back, still running and usable; once it was joined, it exited with
/// 0 and `close` succeeds. (Python's `ValueError` on every use after `close`, and the
/// object's being freed, are the type system's here: `close` consumes the process.)
async fn close_refused_while_running() -> TestResult {
    for m in support::process::METHODS {
        let q = Queue::<()>::new()?;
        let mut p = Process::new(take_one_then_exit, (q.clone(),))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        ensure!(p.is_alive(), "{m:?}: not alive");
        let p_pid = p.pid();
        let mut p = match p.close() {
            Ok(()) => return Err(format!("{m:?}: a running child was closed").into()),
            Err(e) => {
                ensure!(
                    matches!(e.error(), Error::ProcessRunning { pid } if *pid == p_pid),
                    "{m:?}: close of a running child: {:?}",
                    e.error()
                );
                e.into_inner()
            }
        };
        ensure!(p.is_alive(), "{m:?}: not alive after the refused close");
        q.put(()).await?;
        ensure!(join_code(&mut p).await? == 0, "{m:?}: exit code");
        ensure!(!p.is_alive(), "{m:?}: alive after join");
        ensure!(p.exitcode()? == Some(0), "{m:?}: exitcode()");
        p.close()
            .map_err(|e| format!("{m:?}: close after join: {:?}", e.error()))?;
    }
    Ok(())
}

/// `_TestSubclassingProcess._test_sys_exit` with a reason: fails with it (Python's
/// `sys.exit(reason)` with a reason that is not a number).
fn fail_with(reason: String) -> Result<(), String> {
    Err(reason)
}

/// `sys.exit(True)`, `sys.exit(False)`, `sys.exit(8)`, `sys.exit(None)` and `sys.exit()`,
/// as a target returns them: an exit code.
fn exit_code_of(code: u8) -> ExitCode {
    ExitCode::from(code)
}

fn return_nothing() {}

/// `_TestSubclassingProcess.test_sys_exit` (issue 13854): a child that fails with a reason
/// exits with 1 and writes the reason to its standard error (here the file it was given as
/// stderr; Rust's `main` shows an `Err` by its `Debug`, so the string comes quoted where
/// Python prints `str(reason)`); a child's exit code is its own, 1, 0 or 8, and a target
/// that returns nothing exits with 0.
async fn sys_exit_reasons() -> TestResult {
    for m in support::process::METHODS {
        for reason in ["[1, 2, 3]", "ignore this"] {
            let path = unique("sys-exit");
            let file = std::fs::File::create(&path)?;
            let mut p = Process::new(fail_with, (reason.to_string(),))
                .daemon(true)
                .stderr(file)
                .start_method(m)
                .start()
                .await?;
            let code = join_code(&mut p).await?;
            let content = std::fs::read_to_string(&path)?;
            std::fs::remove_file(&path)?;
            ensure!(code == 1, "{m:?}: {reason:?}: exit code {code}");
            ensure!(
                content.trim_end() == format!("Error: {reason:?}"),
                "{m:?}: stderr of a child failing with {reason:?}: {content:?}"
            );
        }
        for (code, want) in [(1u8, 1), (0, 0), (8, 8)] {
            let mut p = Process::new(exit_code_of, (code,))
                .daemon(true)
                .start_method(m)
                .start()
                .await?;
            ensure!(join_code(&mut p).await? == want, "{m:?}: exit({code})");
        }
        let mut p = Process::new(return_nothing, ())
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        ensure!(join_code(&mut p).await? == 0, "{m:?}: exit()");
    }
    Ok(())
}

/// `_TestCondition.f`: takes the lock, says it sleeps, waits (up to `timeout_ms`, or until
/// notified if 0), says it woke, lets go.
async fn cond_f(c: mp::Condition, sleeping: Semaphore, woken: Semaphore, timeout_ms: u64) {
    let g = c.lock().await.expect("lock");
    sleeping.release().expect("release");
    let g = if timeout_ms == 0 {
        g.wait().await.expect("wait")
    } else {
        g.wait_timeout(Duration::from_millis(timeout_ms))
            .await
            .expect("wait")
            .0
    };
    woken.release().expect("release");
    drop(g);
}

/// The waiters of a `_TestCondition` case: children, and threads of this process (Python's
/// `threading.Thread`s; here each a thread with a runtime of its own).
struct CondWaiters {
    kids: Vec<Process>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CondWaiters {
    /// Starts `n` children and `n` threads running [`cond_f`], as Python's loop does (a
    /// process, then a thread), and waits until each has said it sleeps.
    async fn start(
        n: usize,
        c: &mp::Condition,
        sleeping: &Semaphore,
        woken: &Semaphore,
        timeout_ms: u64,
    ) -> Result<CondWaiters, Box<dyn std::error::Error + Send + Sync>> {
        let mut w = CondWaiters {
            kids: Vec::new(),
            threads: Vec::new(),
        };
        for _ in 0..n {
            w.kids.push(
                Process::new(
                    cond_f,
                    (c.clone(), sleeping.clone(), woken.clone(), timeout_ms),
                )
                .daemon(true)
                .start()
                .await?,
            );
            let args = (c.clone(), sleeping.clone(), woken.clone());
            w.threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(cond_f(args.0, args.1, args.2, timeout_ms));
            }));
        }
        for i in 0..2 * n {
            sleeping
                .acquire_timeout(LONG)
                .await
                .map_err(|e| format!("waiter {i} never slept: {e}"))?
                .forget();
        }
        Ok(w)
    }

    /// Joins every waiter (each has woken by now).
    async fn join(self) -> TestResult {
        for mut k in self.kids {
            join_ok(&mut k).await?;
        }
        for t in self.threads {
            tokio::task::spawn_blocking(move || t.join())
                .await?
                .map_err(|_| "a waiter thread panicked")?;
        }
        Ok(())
    }
}

/// Waits until `sem`'s value is `n` (at most 20 s), as CPython's `assertReachesEventually`.
async fn reaches(sem: &Semaphore, n: u32) -> bool {
    support::eventually(LONG, || sem.get_value() == n).await
}

/// Takes `c`'s lock (so that every waiter not woken is inside `wait`), checks that
/// `before` waiters woke so far, notifies `n` of them (`None`: all), and waits until
/// `after` have woken in all.
async fn notify_and_see(
    c: &mp::Condition,
    woken: &Semaphore,
    before: u32,
    n: Option<usize>,
    after: u32,
) -> TestResult {
    let g = c.lock_timeout(LONG).await?;
    let seen = woken.get_value();
    ensure!(
        seen == before,
        "{seen} woke before notify({n:?}), not {before}"
    );
    match n {
        Some(n) => g.notify(n),
        None => g.notify_all(),
    }
    drop(g);
    ensure!(
        reaches(woken, after).await,
        "after notify({n:?}), {} woke in all, not {after}",
        woken.get_value()
    );
    Ok(())
}

/// `_TestCondition.test_notify`, with its mix: a waiter in a child and one in a thread of
/// this process. Neither wakes unnotified; each `notify` wakes one.
async fn condition_notify_process_and_thread() -> TestResult {
    let c = mp::Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let w = CondWaiters::start(1, &c, &sleeping, &woken, 0).await?;
    notify_and_see(&c, &woken, 0, Some(1), 1).await?;
    notify_and_see(&c, &woken, 1, Some(1), 2).await?;
    w.join().await
}

/// `_TestCondition.test_notify_all`, with its mix: three children and three threads that
/// wait with a timeout all time out; three more of each then wait, none wakes unnotified,
/// and `notify_all` wakes all six.
async fn condition_notify_all_processes_and_threads() -> TestResult {
    let c = mp::Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let w = CondWaiters::start(3, &c, &sleeping, &woken, 100).await?;
    for i in 0..6 {
        woken
            .acquire_timeout(LONG)
            .await
            .map_err(|e| format!("waiter {i} did not time out: {e}"))?
            .forget();
    }
    ensure!(woken.get_value() == 0, "more woke than waited");
    w.join().await?;
    let w = CondWaiters::start(3, &c, &sleeping, &woken, 0).await?;
    notify_and_see(&c, &woken, 0, None, 6).await?;
    w.join().await
}

/// `_TestCondition.test_notify_n`, with its mix: of three children and three threads,
/// `notify(2)` wakes two, `notify(4)` the other four, and `notify(3)` then nobody.
async fn condition_notify_n_processes_and_threads() -> TestResult {
    let c = mp::Condition::new()?;
    let sleeping = Semaphore::new(0)?;
    let woken = Semaphore::new(0)?;
    let w = CondWaiters::start(3, &c, &sleeping, &woken, 0).await?;
    notify_and_see(&c, &woken, 0, Some(2), 2).await?;
    notify_and_see(&c, &woken, 2, Some(4), 6).await?;
    let g = c.lock_timeout(LONG).await?;
    g.notify(3);
    drop(g);
    ensure!(woken.get_value() == 6, "notify(3) with nobody waiting");
    w.join().await
}

/// `_TestSharedMemory._attach_existing_shmem_then_write`, by name: attaches to the segment
/// and writes `data` at its start.
fn attach_by_name_then_write(name: String, data: Vec<u8>) -> Result<(), String> {
    let sms = SharedMemory::attach(&name).map_err(|e| e.to_string())?;
    sms.write(0, &data).map_err(|e| e.to_string())
}

/// `_TestSharedMemory._attach_existing_shmem_then_write`, given the segment itself.
fn write_to_segment(sms: SharedMemory, data: Vec<u8>) -> Result<(), String> {
    sms.write(0, &data).map_err(|e| e.to_string())
}

/// `_TestSharedMemory.test_shared_memory_across_processes` (bpo-40135): a child that
/// attaches to a segment by its name writes where this process reads, and so does a child
/// given the segment itself. CPython's segment has a generated name; the README's
/// counterpart, `create_anonymous`, has no name to attach by, so this one is named.
async fn shared_memory_across_processes() -> TestResult {
    let name = support::unique_name("tkmp-cpy-across");
    let sms = SharedMemory::create(&name, 512)?;
    for m in support::process::METHODS {
        let mut p = Process::new(attach_by_name_then_write, (name.clone(), b"howdy".to_vec()))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        join_ok(&mut p).await?;
        ensure!(sms.to_vec()[..5] == *b"howdy", "{m:?}: by name");
        let mut p = Process::new(write_to_segment, (sms.try_clone()?, b"HELLO".to_vec()))
            .daemon(true)
            .start_method(m)
            .start()
            .await?;
        join_ok(&mut p).await?;
        ensure!(sms.to_vec()[..5] == *b"HELLO", "{m:?}: the segment sent");
    }
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_SharedMemoryServer_ignores_sigint` (bpo-36368): a
/// shared memory manager's server that gets SIGINT serves on and makes another list. (The
/// case's other half, that this process still takes SIGINT as Python's
/// `KeyboardInterrupt`, has no counterpart: SIGINT would end the test binary.)
async fn shared_memory_manager_ignores_sigint() -> TestResult {
    let smm = mp::SharedMemoryManager::start().await?;
    let sl = smm.shareable_list(0..10i64).await?;
    let pid = smm.pid().ok_or("no server process")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    let sl2 = tokio::time::timeout(LONG, smm.shareable_list(0..10i64)).await??;
    ensure!(sl2.to_vec()? == sl.to_vec()?, "the second list: {sl2:?}");
    ensure!(
        sl2.get(9)? == ShareableItem::from(9i64),
        "the second list's last item"
    );
    drop((sl, sl2));
    smm.shutdown().await?;
    ensure!(
        support::is_zombie_or_gone(pid),
        "server {pid} still running after shutdown"
    );
    Ok(())
}

/// Runs `fut` to its end on a thread of its own with a runtime of its own, as a Python
/// test's `threading.Thread` runs its target beside the main thread.
fn on_thread<F>(fut: F) -> std::thread::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the thread")
            .block_on(fut)
    })
}

/// Joins a thread of [`on_thread`] without blocking the test's runtime.
/// Waits for the parties in children (each must exit 0) and in threads (none may panic).
async fn join_parties(
    kids: &mut [Process],
    threads: Vec<std::thread::JoinHandle<()>>,
) -> TestResult {
    for k in kids {
        join_ok(k).await?;
    }
    for t in threads {
        join_thread(t).await?;
    }
    Ok(())
}

/// A barrier broken with all its parties but one waiting: none passed, and each of those
/// found it broken.
fn none_passed_all_others_broke(passed: &Semaphore, broken: &Semaphore) -> TestResult {
    ensure!(passed.get_value() == 0, "{} passed", passed.get_value());
    ensure!(
        broken.get_value() == PARTIES - 1,
        "{} of {} found it broken",
        broken.get_value(),
        PARTIES - 1
    );
    Ok(())
}

async fn join_thread<T: Send + 'static>(
    t: std::thread::JoinHandle<T>,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    Ok(tokio::task::spawn_blocking(move || t.join())
        .await?
        .map_err(|_| "a thread panicked")?)
}

/// `_TestBarrier.test_barrier_10`, which CPython runs once with processes and once with
/// threads (its `ThreadsMixin`), with both at once: of the five parties, two are children,
/// two are threads of this process and one is its main task; they pass the barrier in
/// lockstep fifty times.
async fn barrier_10_processes_and_threads() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counts = RawArray::from_elem(0u32, 2)?;
    let lock = Lock::new()?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        kids.push(start(multipass, (b.clone(), counts.clone(), lock.clone(), 50)).await?);
        threads.push(on_thread(multipass(
            b.clone(),
            counts.clone(),
            lock.clone(),
            50,
        )));
    }
    let mine = multipass(b.clone(), counts.clone(), lock.clone(), 50).await;
    ensure!(mine == ExitCode::SUCCESS, "this task's party: {mine:?}");
    for k in &mut kids {
        let code = join_code(k).await?;
        ensure!(code == 0, "a child's party ended with {code}");
    }
    for t in threads {
        let r = join_thread(t).await?;
        ensure!(r == ExitCode::SUCCESS, "a thread's party: {r:?}");
    }
    Ok(())
}

/// Adds 1 to `v`, `n` times, each a read and a write apart under `l` (with a yield
/// between, so that a lock that let two in would lose counts).
async fn add_under_lock(l: Lock, v: RawValue<u64>, n: u32) {
    for _ in 0..n {
        let g = l.lock().await.expect("lock");
        let x = v.get();
        tokio::task::yield_now().await;
        v.set(x + 1);
        drop(g);
    }
}

/// As [`add_under_lock`], under a re-entrant lock taken twice over.
async fn add_under_rlock(l: RLock, v: RawValue<u64>, n: u32) {
    for _ in 0..n {
        let outer = l.lock().await.expect("lock");
        let inner = l.lock().await.expect("lock again");
        let x = v.get();
        tokio::task::yield_now().await;
        v.set(x + 1);
        drop(inner);
        drop(outer);
    }
}

/// `_TestLock.test_lock_context` and `test_rlock_context`, which CPython runs with
/// processes and with threads, with both at once and with tasks beside them: two children,
/// two threads and two tasks of this process each add to a counter 300 times under a
/// `Lock`, and as many under an `RLock` taken twice; no addition is lost.
async fn lock_context_processes_threads_and_tasks() -> TestResult {
    let l = Lock::new()?;
    let v = RawValue::new(0u64)?;
    let r = RLock::new()?;
    let w = RawValue::new(0u64)?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        kids.push(start(add_under_lock, (l.clone(), v.clone(), 300)).await?);
        kids.push(start(add_under_rlock, (r.clone(), w.clone(), 300)).await?);
        threads.push(on_thread(add_under_lock(l.clone(), v.clone(), 300)));
        threads.push(on_thread(add_under_rlock(r.clone(), w.clone(), 300)));
        tasks.push(tokio::spawn(add_under_lock(l.clone(), v.clone(), 300)));
        tasks.push(tokio::spawn(add_under_rlock(r.clone(), w.clone(), 300)));
    }
    for t in tasks {
        t.await?;
    }
    for t in threads {
        join_thread(t).await?;
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(v.get() == 1800, "under the lock: {} of 1800", v.get());
    ensure!(w.get() == 1800, "under the rlock: {} of 1800", w.get());
    ensure!(
        !l.is_locked() && r.holder().is_none(),
        "a lock is still held"
    );
    Ok(())
}

/// `_TestEvent._test_event`: sets the event once `go` says so.
async fn set_event_when_told(e: Event, go: Event) {
    go.wait_timeout(LONG).await.expect("wait for go");
    e.set();
}

/// Says it waits, then waits for `e` and says it passed.
async fn wait_event_then_say(e: Event, started: Semaphore, passed: Semaphore) {
    started.release().expect("release");
    if e.wait_timeout(LONG).await.expect("wait") {
        passed.release().expect("release");
    }
}

/// `_TestEvent.test_event`, with waiters in children and in threads of this process, as
/// CPython runs it with processes and with threads: a clear event's `wait(0)` and timed
/// `wait` give false; set, waits give true at once; cleared, the waiters of both kinds and
/// this process's main task wait until a child sets it.
async fn event_with_processes_and_threads() -> TestResult {
    let e = Event::new()?;
    ensure!(!e.is_set(), "a new event is set");
    ensure!(
        !e.wait_timeout(Duration::ZERO).await?,
        "wait(0) of a clear event"
    );
    ensure!(
        !e.wait_timeout(Duration::from_millis(100)).await?,
        "a timed wait of a clear event"
    );
    e.set();
    ensure!(e.is_set(), "a set event is not set");
    ensure!(e.wait_timeout(LONG).await?, "wait() of a set event");
    ensure!(
        e.wait_timeout(Duration::from_millis(100)).await?,
        "a timed wait of a set event"
    );
    e.clear();
    ensure!(!e.is_set(), "a cleared event is set");
    let started = Semaphore::new(0)?;
    let passed = Semaphore::new(0)?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..3 {
        let args = (e.clone(), started.clone(), passed.clone());
        kids.push(start(wait_event_then_say, args.clone()).await?);
        threads.push(on_thread(wait_event_then_say(args.0, args.1, args.2)));
    }
    for _ in 0..6 {
        started.acquire_timeout(LONG).await?.forget();
    }
    let go = Event::new()?;
    let mut setter = start(set_event_when_told, (e.clone(), go.clone())).await?;
    ensure!(passed.get_value() == 0, "a waiter passed a clear event");
    go.set();
    ensure!(
        e.wait_timeout(LONG).await?,
        "the set of a child did not reach this task"
    );
    join_ok(&mut setter).await?;
    join_parties(&mut kids, threads).await?;
    ensure!(
        passed.get_value() == 6,
        "{} of 6 waiters passed",
        passed.get_value()
    );
    Ok(())
}

/// `_TestProcess._test_report_parent_status`: says whether its parent is alive, then waits.
async fn report_parent_status(w: Connection<String>) {
    let alive = mp::parent_process().map(|p| p.is_alive());
    let status = match alive {
        Some(Ok(true)) => "alive",
        Some(Ok(false)) => "not alive",
        _ => "no parent",
    };
    w.send(&status.to_string()).await.expect("send");
    tokio::time::sleep(Duration::from_secs(300)).await;
}

/// `_TestProcess._test_create_grandchild_process`: starts a grandchild, then sleeps.
async fn create_grandchild(w: Connection<String>) {
    let _p = Process::new(report_parent_status, (w,))
        .start()
        .await
        .expect("start the grandchild");
    tokio::time::sleep(Duration::from_secs(300)).await;
}

/// `_TestProcess.test_parent_process`: a grandchild finds its parent, the child, alive.
/// CPython's grandchild then sees the child gone once it is terminated, and says so; here
/// a child dies with its parent (the README's "children die with their parent"), so the
/// grandchild ends too, and the pipe it held reports end of stream instead.
async fn parent_process_of_a_grandchild() -> TestResult {
    for m in support::process::METHODS {
        let (r, w) = Pipe::<String>::simplex()?;
        let mut p = Process::new(create_grandchild, (w,))
            .start_method(m)
            .start()
            .await?;
        let status = r.recv_timeout(LONG).await?;
        ensure!(status == "alive", "{m:?}: the grandchild said {status:?}");
        p.terminate()?;
        ensure!(
            join_code(&mut p).await? == -15,
            "{m:?}: the child's exit code"
        );
        let after = r.recv_timeout(LONG).await;
        ensure!(
            matches!(after, Err(Error::Closed)),
            "{m:?}: after its parent ended, the grandchild's pipe gave {after:?}"
        );
    }
    Ok(())
}

/// `_TestBarrier._test_abort_f`: the party that gets index `PARTIES / 2` aborts the barrier;
/// the others find it broken at their second wait (counted on `broken`), or pass it (counted
/// on `passed`, which must not happen).
async fn abort_f(b: Barrier, passed: Semaphore, broken: Semaphore) {
    let r = match b.wait_timeout(LONG).await {
        Ok(i) if i == PARTIES / 2 => {
            b.abort();
            return;
        }
        Ok(_) => b.wait_timeout(LONG).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(_) => passed.release().expect("release"),
        Err(Error::BrokenBarrier) => broken.release().expect("release"),
        Err(e) => panic!("a wait failed otherwise: {e}"),
    }
}

/// `_TestBarrier.test_abort`, with its parties in children, in threads of this process and
/// in its main task at once (CPython runs it with processes and with threads): the party of
/// index `PARTIES / 2` aborts; the other four find the barrier broken, none passes it, and
/// it stays broken.
async fn barrier_abort_processes_and_threads() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let passed = Semaphore::new(0)?;
    let broken = Semaphore::new(0)?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        kids.push(start(abort_f, (b.clone(), passed.clone(), broken.clone())).await?);
        threads.push(on_thread(abort_f(
            b.clone(),
            passed.clone(),
            broken.clone(),
        )));
    }
    abort_f(b.clone(), passed.clone(), broken.clone()).await;
    join_parties(&mut kids, threads).await?;
    none_passed_all_others_broke(&passed, &broken)?;
    ensure!(b.broken(), "the barrier is not broken");
    Ok(())
}

/// `_TestBarrier._test_reset_f`: the party of index `PARTIES / 2` waits until the others
/// wait again, then resets the barrier; they find it broken (counted on `broken`; passing
/// is counted on `passed`); then all pass it once more (counted on `again`).
async fn reset_f(b: Barrier, passed: Semaphore, broken: Semaphore, again: Semaphore) {
    let i = b.wait_timeout(LONG).await.expect("the first wait");
    if i == PARTIES / 2 {
        let until = std::time::Instant::now() + LONG;
        while b.n_waiting() < PARTIES - 1 && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b.reset();
    } else {
        match b.wait_timeout(LONG).await {
            Ok(_) => passed.release().expect("release"),
            Err(Error::BrokenBarrier) => broken.release().expect("release"),
            Err(e) => panic!("the second wait failed otherwise: {e}"),
        }
    }
    b.wait_timeout(LONG)
        .await
        .expect("the wait after the reset");
    again.release().expect("release");
}

/// `_TestBarrier.test_reset`, with its parties in children, threads and this task at once:
/// a reset while four parties wait frees them with `BrokenBarrier`, none passes, and the
/// barrier then serves all five again.
async fn barrier_reset_processes_and_threads() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counters = (Semaphore::new(0)?, Semaphore::new(0)?, Semaphore::new(0)?);
    let (passed, broken, again) = counters.clone();
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        let c = counters.clone();
        kids.push(start(reset_f, (b.clone(), c.0, c.1, c.2)).await?);
        let c = counters.clone();
        threads.push(on_thread(reset_f(b.clone(), c.0, c.1, c.2)));
    }
    let c = counters.clone();
    reset_f(b.clone(), c.0, c.1, c.2).await;
    join_parties(&mut kids, threads).await?;
    none_passed_all_others_broke(&passed, &broken)?;
    ensure!(
        again.get_value() == PARTIES,
        "{} passed after the reset",
        again.get_value()
    );
    ensure!(!b.broken(), "the barrier is broken after the reset");
    Ok(())
}

/// `_TestQueue._test_task_done`: takes items until `None`, marking each done.
async fn task_done_worker(q: mp::JoinableQueue<Option<u32>>) {
    while let Some(_item) = q.get_timeout(LONG).await.expect("get") {
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.task_done().expect("task_done");
    }
}

/// `_TestQueue.test_task_done`, with workers in children and in threads of this process at
/// once (CPython runs it with processes and with threads): ten items, `join` returns once
/// every one is done; then a `None` for each worker ends it.
async fn task_done_processes_and_threads() -> TestResult {
    let q = mp::JoinableQueue::<Option<u32>>::new()?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..2 {
        kids.push(
            Process::new(task_done_worker, (q.clone(),))
                .daemon(true)
                .start()
                .await?,
        );
        threads.push(on_thread(task_done_worker(q.clone())));
    }
    for i in 0..10 {
        q.put(Some(i)).await?;
    }
    tokio::time::timeout(LONG, q.join()).await??;
    ensure!(
        q.unfinished() == 0,
        "{} unfinished after join",
        q.unfinished()
    );
    for _ in 0..4 {
        q.put(None).await?;
    }
    join_parties(&mut kids, threads).await?;
    Ok(())
}

/// Puts `(who, 0..n)` in order, waiting for room in a bounded queue.
async fn put_in_order(q: Queue<(u32, u32)>, who: u32, n: u32) {
    for i in 0..n {
        q.put((who, i)).await.expect("put");
    }
}

/// `_TestQueue.test_get` and `test_put`, which CPython runs with processes and with threads,
/// with writers of both kinds at once: two children, two threads and two tasks of this
/// process each put 200 numbered items into a queue of five; this task takes all 1200, and
/// each writer's items come in the order it put them.
async fn queue_writers_in_processes_threads_and_tasks() -> TestResult {
    let q = Queue::<(u32, u32)>::with_maxsize(5)?;
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..2 {
        kids.push(start(put_in_order, (q.clone(), w, 200)).await?);
        threads.push(on_thread(put_in_order(q.clone(), 2 + w, 200)));
        tasks.push(tokio::spawn(put_in_order(q.clone(), 4 + w, 200)));
    }
    let mut next = [0u32; 6];
    for _ in 0..1200 {
        let (who, i) = q.get_timeout(LONG).await?;
        let slot = next
            .get_mut(who as usize)
            .ok_or_else(|| format!("an item of writer {who}"))?;
        ensure!(
            i == *slot,
            "writer {who}: item {i} came where {slot} was due"
        );
        *slot += 1;
    }
    ensure!(q.empty(), "items left after 1200");
    for t in tasks {
        t.await?;
    }
    for t in threads {
        join_thread(t).await?;
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    Ok(())
}

/// Enters a section guarded by `s` a hundred times, staying a millisecond, counting those
/// inside on `inside` (under `l`) and raising `over` if more than two ever are.
async fn semaphore_section(s: Semaphore, l: Lock, inside: RawValue<u32>, over: RawValue<u32>) {
    for _ in 0..100 {
        let g = s.acquire().await.expect("acquire");
        {
            let _l = l.lock().await.expect("lock");
            inside.set(inside.get() + 1);
            if inside.get() > 2 {
                over.set(1);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        {
            let _l = l.lock().await.expect("lock");
            inside.set(inside.get() - 1);
        }
        drop(g);
    }
}

/// `_TestSemaphore.test_semaphore`, which CPython runs with processes and with threads, as
/// contention of both at once: two children, two threads and two tasks of this process
/// each enter a section of a `Semaphore(2)` a hundred times; never more than two are
/// inside, and the semaphore is back at 2 at the end.
async fn semaphore_processes_threads_and_tasks() -> TestResult {
    let s = Semaphore::new(2)?;
    let l = Lock::new()?;
    let inside = RawValue::new(0u32)?;
    let over = RawValue::new(0u32)?;
    let args = (s.clone(), l.clone(), inside.clone(), over.clone());
    let mut kids = Vec::new();
    let mut threads = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let a = args.clone();
        kids.push(start(semaphore_section, a).await?);
        let a = args.clone();
        threads.push(on_thread(semaphore_section(a.0, a.1, a.2, a.3)));
        let a = args.clone();
        tasks.push(tokio::spawn(semaphore_section(a.0, a.1, a.2, a.3)));
    }
    for t in tasks {
        t.await?;
    }
    for t in threads {
        join_thread(t).await?;
    }
    for k in &mut kids {
        join_ok(k).await?;
    }
    ensure!(over.get() == 0, "more than two were inside at once");
    ensure!(inside.get() == 0, "{} still inside", inside.get());
    ensure!(
        s.get_value() == 2,
        "the semaphore ended at {}",
        s.get_value()
    );
    Ok(())
}

/// `_TestCondition._test_waitfor_f`: sets the state to 0, notifies, then waits for it to be 4.
async fn waitfor_f(c: mp::Condition, state: RawValue<i32>) -> ExitCode {
    let g = c.lock().await.expect("lock");
    state.set(0);
    g.notify(1);
    let (g, ok) = g
        .wait_for(|| state.get() == 4, Some(LONG))
        .await
        .expect("wait_for");
    drop(g);
    if ok && state.get() == 4 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `_TestCondition.test_waitfor`, run as CPython runs it, once with the waiter in a child
/// and once with it in a thread of this process: this task's `wait_for` sees the waiter's
/// 0, then four notified steps bring the waiter's own `wait_for` to 4.
async fn condition_waitfor_process_then_thread() -> TestResult {
    for in_thread in [false, true] {
        let c = mp::Condition::new()?;
        let state = RawValue::new(-1i32)?;
        let mut kid = None;
        let mut thread = None;
        if in_thread {
            thread = Some(on_thread(waitfor_f(c.clone(), state.clone())));
        } else {
            kid = Some(start(waitfor_f, (c.clone(), state.clone())).await?);
        }
        let g = c.lock_timeout(LONG).await?;
        let (g, ok) = g.wait_for(|| state.get() == 0, Some(LONG)).await?;
        ensure!(ok && state.get() == 0, "thread={in_thread}: the waiter's 0");
        drop(g);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let g = c.lock_timeout(LONG).await?;
            state.set(state.get() + 1);
            g.notify(1);
        }
        if let Some(mut k) = kid {
            ensure!(join_code(&mut k).await? == 0, "the child's wait_for");
        }
        if let Some(t) = thread {
            let code = join_thread(t).await?;
            ensure!(code == ExitCode::SUCCESS, "the thread's wait_for: {code:?}");
        }
    }
    Ok(())
}

fn main() {
    mp::init();
    support::run(trials![
        process_recursion,
        join_zero_then_terminate,
        sigint_kills_a_child,
        many_processes,
        child_fd_inflation,
        child_does_not_inherit_descriptors,
        closed_stdio_in_child,
        pool_and_queue_in_a_child,
        spawn_close,
        poll_empty_string,
        poll_strings,
        poll_dont_merge,
        missing_fd_transfer,
        signal_during_recv_and_send,
        multiple_bind_unix,
        abstract_socket,
        empty_authkey,
        client_gone_before_accept,
        client_polls_accepted_side,
        wait_timeout,
        wait_integer,
        wait_socket,
        wait_zero_timeout,
        wait_pipe_write_end_whose_reader_goes,
        lock_locked_2processes,
        waitfor_timeout,
        barrier_10,
        barrier_wait_return,
        barrier_single_thread,
        barrier_reset,
        barrier_thousand,
        rawvalue,
        rawarray,
        simple_queue_close_twice,
        queue_qsize,
        map_no_failfast,
        empty_iterables,
        make_pool,
        terminate_long_map,
        starmap_chunksize,
        map_handle_iterable_panic,
        imap_handle_iterable_panic,
        map_async_callbacks,
        imap_a_thousand,
        release_task_refs,
        queue_put,
        queue_get,
        queue_used_before_the_child,
        queue_serves_on_after_an_unencodable_item,
        closed_queue_empty_and_joinable_put_get,
        queue_get_timeout,
        closed_simple_queue_empty_and_put_get,
        barrier_abort_and_reset,
        barrier_timeout_across_processes,
        wait_on_pipes_until_eof,
        wait_on_tcp_sockets_until_eof,
        accepted_connections_through_a_pipe,
        pipe_ends_sent_to_a_child,
        signal_during_accept,
        signal_during_join,
        manager_list,
        manager_list_proxy_in_list,
        manager_dict_proxy_nested,
        remote_manager_values,
        manager_rapid_restart,
        pool_initializer_on_a_namespace,
        process_serving_a_pipe,
        stderr_of_a_failed_child_is_whole,
        children_of_a_parent_with_broken_stdio,
        generations_do_not_accumulate,
        large_pool_of_200,
        program_ends_with_a_pool_never_closed,
        sharedctypes_doubled_by_a_child,
        shared_memory_sent_is_the_same_segment,
        shareable_list_sent_is_the_same_list,
        manager_nested_queue,
        manager_queue_taken_by_a_child,
        manager_event_cleared_by_a_child,
        manager_semaphores_taken_by_a_child,
        manager_barrier_reset_by_a_child,
        manager_value_array_namespace_in_a_child,
        invalid_family,
        late_answers_on_pipe_and_listener,
        heap_of_values_and_arrays,
        failed_pool_start_leaks_no_worker,
        invalid_shared_memory_creation,
        shared_memory_double_unlink,
        sent_after_unlink_is_the_same_memory,
        segment_tracker_leaves_blocked_signals,
        manager_lock_kept_by_a_child_that_ended,
        manager_rlock_and_condition_in_a_child,
        lock_holders_as_repr_shows_them,
        lose_target_ref,
        wait_for_threads,
        event_debug_shows_its_state,
        sync_primitives_show_their_state_in_debug,
        thread_putting_as_its_process_ends,
        barrier_action,
        array_get_obj_and_get_lock,
        manager_list_iter,
        manager_dict_iter,
        pool_map_async,
        pool_enter_after_terminate,
        async_error_callback,
        my_manager,
        manager_queue_get_nowait_empty,
        queue_with_mixed_start_methods,
        queue_shutdown_empty,
        queue_shutdown_nonempty,
        queue_shutdown_immediate,
        queue_shutdown_immediate_with_unfinished,
        manager_namespace,
        pool_refuses_work_after_its_with_block,
        manager_barrier_abort_reset_and_wait_return,
        manager_condition_notify_n_and_all,
        rlock_context_across_processes,
        manager_barrier_in_lockstep,
        manager_condition_wait_result,
        listener_and_connection_after_their_block,
        manager_queue_shutdown,
        manager_dict_and_list_whole_in_a_child,
        process_whole_life,
        process_mainthread_native_id,
        sentinel_ready_once_ended,
        close_refused_while_running,
        sys_exit_reasons,
        condition_notify_process_and_thread,
        condition_notify_all_processes_and_threads,
        condition_notify_n_processes_and_threads,
        shared_memory_across_processes,
        shared_memory_manager_ignores_sigint,
        barrier_10_processes_and_threads,
        lock_context_processes_threads_and_tasks,
        event_with_processes_and_threads,
        parent_process_of_a_grandchild,
        barrier_abort_processes_and_threads,
        barrier_reset_processes_and_threads,
        task_done_processes_and_threads,
        queue_writers_in_processes_threads_and_tasks,
        semaphore_processes_threads_and_tasks,
        condition_waitfor_process_then_thread,
    ])
}
