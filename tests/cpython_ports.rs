//! Cases of CPython's `Lib/test/_test_multiprocessing.py` that no other test file ported,
//! across areas: processes, pipes and polling, listeners, `wait`, locks,
//! barriers, shared values and the pool. Each test names the Python case it comes from;
//! where the crate's API differs (a `Duration` for a float timeout, a guard for a bare
//! `acquire`), the test keeps the case's meaning, not its spelling.

mod support;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use support::pool::{mul, sqr};
use support::process::sleep_ms;
use support::{TestResult, join_code, join_ok, start};
use tokio_multiprocessing::{
    self as mp, Barrier, Client, Connection, Error, Event, Fd, Listener, Lock, Pipe, Pool, Process,
    Queue, RLock, RawArray, RawValue, Semaphore, SimpleQueue, Value,
};

const LONG: Duration = Duration::from_secs(20);

fn unique(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("tkmp-cpy-{tag}-{}", std::process::id()))
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

/// `_TestListener.test_abstract_socket`: a listener at `"\0name"` is in Linux's abstract
/// namespace: a client in a child reaches it by the same string, no file is made, and a
/// manager serves there too.
async fn abstract_socket() -> TestResult {
    let name = format!("\0tkmp-cpy-abstract-{}", std::process::id());
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
    // Its name is free again once its listener is gone.
    drop(Listener::bind(name.as_str(), None)?);

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

/// `_TestBarrier.test_reset`: a reset frees the waiting parties with `BrokenBarrier`, and the
/// barrier then serves the next round.
async fn barrier_reset() -> TestResult {
    let b = Barrier::new(PARTIES)?;
    let counts = RawArray::from_elem(0u32, 3)?;
    let lock = Lock::new()?;
    let mut kids = Vec::new();
    for _ in 0..PARTIES - 1 {
        kids.push(start(reset_party, (b.clone(), counts.clone(), lock.clone())).await?);
    }
    let mine = reset_party(b.clone(), counts.clone(), lock.clone()).await;
    ensure!(mine == ExitCode::SUCCESS, "this process's party: {mine:?}");
    for k in &mut kids {
        let code = join_code(k).await?;
        ensure!(code == 0, "a party ended with {code}");
    }
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
    ])
}
