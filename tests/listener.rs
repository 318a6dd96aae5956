//! `Listener` / `Client` between real processes, with and without an authentication key.
//!
//! Ported from CPython's `Lib/test/_test_multiprocessing.py` (`_TestListenerClient`,
//! `_TestListener`, and `OtherTest`'s challenge failures); each test names the case it
//! comes from.
//!
//! Tests run one at a time (unless `--test-threads` says otherwise), because one of them
//! counts this process's descriptors before and after.

#[macro_use]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libtest_mimic::{Arguments, Trial};
use support::{TestResult, fds_return_to, join_code, open_fds, test};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

const KEY: &[u8] = b"a shared secret";

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(support::unique_name(&format!("tmp-mp-listener-{tag}")))
}

// ---- child targets ----

/// Connects to `address` (as the listener reported it, passed as it is, as Python passes
/// `l.address`), and echoes one message.
async fn echo_client(address: mp::Address, key: Option<Vec<u8>>) {
    let conn = match mp::Client::connect::<String>(address, key.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect: {e}");
            std::process::exit(3)
        }
    };
    match conn.recv().await {
        Ok(m) => {
            if conn.send(&format!("echo: {m}")).await.is_err() {
                std::process::exit(4);
            }
        }
        Err(_) => std::process::exit(4),
    }
}

/// Exits 0 if connecting with `key` fails with an authentication error, 1 if it succeeds,
/// 2 on another error.
async fn refused_client(address: PathBuf, key: Vec<u8>) {
    match mp::Client::connect::<String>(address, Some(&key)).await {
        Ok(_) => std::process::exit(1),
        Err(mp::Error::Authentication { .. }) => {}
        Err(e) => {
            eprintln!("unexpected: {e}");
            std::process::exit(2)
        }
    }
}

/// Connects `times` times, one connection after another; on each, sends its number and
/// waits for it to come back.
async fn connect_repeatedly(address: PathBuf, key: Vec<u8>, times: u32) {
    for i in 0..times {
        let conn = match mp::Client::connect::<u32>(address.clone(), Some(&key)).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("connect {i}: {e}");
                std::process::exit(3)
            }
        };
        if conn.send(&i).await.is_err() {
            std::process::exit(4);
        }
        if !matches!(conn.recv().await, Ok(v) if v == i) {
            std::process::exit(5);
        }
    }
}

/// Connects `n` clients to `address` with `key` at once, each on a task of its own; each
/// sends its number and waits for it to come back. Exits 3, saying which failed and how, if
/// any of them fails.
async fn connect_at_once(address: mp::Address, key: Vec<u8>, n: u32) {
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..n {
        let (address, key) = (address.clone(), key.clone());
        clients.spawn(async move {
            let conn = mp::Client::connect::<u32>(address, Some(&key))
                .await
                .map_err(|e| format!("connect {i}: {e}"))?;
            conn.send(&i).await.map_err(|e| format!("send {i}: {e}"))?;
            match conn.recv().await {
                Ok(v) if v == i => Ok(()),
                other => Err(format!("recv {i}: {other:?}")),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = clients.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !failed.is_empty() {
        let first: Vec<_> = failed.iter().take(3).cloned().collect();
        eprintln!(
            "{} of {n} clients failed: {} ...",
            failed.len(),
            first.join("; ")
        );
        std::process::exit(3)
    }
}

/// Writes `body` as one frame of the crate's (a 5-byte header: the length, big-endian, and
/// no descriptors).
async fn write_frame<S: AsyncWriteExt + Unpin>(s: &mut S, body: &[u8]) -> std::io::Result<()> {
    let mut frame = u32::try_from(body.len())
        .map_err(std::io::Error::other)?
        .to_be_bytes()
        .to_vec();
    frame.push(0);
    frame.extend_from_slice(body);
    s.write_all(&frame).await
}

/// Reads one frame without descriptors, of at most 256 bytes, and returns its body.
async fn read_frame<S: AsyncReadExt + Unpin>(s: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > 256 || head[4] != 0 {
        return Err(std::io::Error::other(format!("a frame header {head:?}")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(body)
}

/// HMAC-SHA256 of `message` under `key`, as the exchange computes it.
fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(message);
    m.finalize().into_bytes().to_vec()
}

/// The client's side of the exchange on a plain socket, as [`mp::Client::connect`] runs it
/// (written out here so that a test can hold the client back before it answers): answers
/// the listener's challenge, then challenges it.
async fn answer_then_challenge<S>(s: &mut S, key: &[u8]) -> Result<(), String>
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    let io = |e: std::io::Error| e.to_string();
    let challenge = read_frame(s).await.map_err(io)?;
    let message = challenge
        .strip_prefix(b"#CHALLENGE#")
        .ok_or("not a challenge")?;
    let answer = [b"{sha256}".as_slice(), &mac(key, message)].concat();
    write_frame(s, &answer).await.map_err(io)?;
    if read_frame(s).await.map_err(io)? != b"#WELCOME#" {
        return Err("not welcomed".into());
    }
    let message = [b"{sha256}".as_slice(), &[7; 40]].concat();
    write_frame(s, &[b"#CHALLENGE#".as_slice(), &message].concat())
        .await
        .map_err(io)?;
    let expected = [b"{sha256}".as_slice(), &mac(key, &message)].concat();
    if read_frame(s).await.map_err(io)? != expected {
        return Err("the listener's answer is wrong".into());
    }
    write_frame(s, b"#WELCOME#").await.map_err(io)
}

// ---- tests ----

/// [`round_trip`] with an echo client started with the key, which connects by the address
/// the listener reports.
async fn echo_by_address(l: &mp::Listener) -> TestResult {
    let p = mp::Process::new(echo_client, (l.address().clone(), Some(KEY.to_vec())))
        .start()
        .await?;
    round_trip(l, p).await
}

async fn round_trip(l: &mp::Listener, mut p: mp::Process) -> TestResult {
    let conn = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
    conn.send(&"hello".to_string()).await?;
    ensure!(
        conn.recv_timeout(Duration::from_secs(20)).await? == "echo: hello",
        "echo"
    );
    ensure!(join_code(&mut p).await? == 0, "client");
    ensure!(
        matches!(conn.recv().await, Err(mp::Error::Closed)),
        "EOF after the client exits"
    );
    Ok(())
}

/// `_TestListenerClient.test_listener_client` on a Unix socket path, with a key: both
/// sides pass the challenge and messages flow.
async fn unix_path_with_key() -> TestResult {
    let path = socket_path("unix");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    echo_by_address(&l).await?;
    drop(l);
    ensure!(
        !path.exists(),
        "the socket file is removed with the listener"
    );
    Ok(())
}

/// An address whose path is not UTF-8 (an abstract name of any bytes, as Linux allows)
/// travels to a child, which connects by it.
async fn an_address_of_any_bytes_travels_to_a_child() -> TestResult {
    use std::os::unix::ffi::OsStringExt;
    let mut name = format!("\0{}-", support::unique_name("tkmp-listener")).into_bytes();
    name.extend_from_slice(&[0xff, 0xfe]);
    let path = PathBuf::from(std::ffi::OsString::from_vec(name));
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    ensure!(
        *l.address() == mp::Address::Unix(path),
        "bound at {:?}",
        l.address()
    );
    echo_by_address(&l).await
}

/// `_TestListener.test_multiple_bind`-style TCP listener on port 0: the bound port is
/// reported and a client in another process connects to it.
async fn tcp_with_key() -> TestResult {
    let l = mp::Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, Some(KEY))?;
    let mp::Address::Tcp(addr) = l.address().clone() else {
        return Err("not a TCP address".into());
    };
    ensure!(addr.port() != 0, "a port was chosen");
    echo_by_address(&l).await
}

/// `_TestListenerClient.test_listener_client` with `Listener(family='AF_UNIX')` and no
/// address: the listener picks a Unix socket in a directory of its own that only this user
/// may enter, a child connects by the address it reports, and dropping the listener removes
/// the socket and the directory.
async fn a_listener_with_no_address_picks_a_private_socket() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let l = mp::Listener::new(Some(KEY))?;
    let mp::Address::Unix(path) = l.address().clone() else {
        return Err(format!("not a Unix socket: {}", l.address()).into());
    };
    let dir = path
        .parent()
        .ok_or("the socket has no directory")?
        .to_path_buf();
    ensure!(path.exists(), "no socket at {}", path.display());
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "the directory's mode is {mode:o}");
    let other = mp::Listener::new(None)?;
    ensure!(
        other.address() != l.address(),
        "two listeners picked {}",
        l.address()
    );
    echo_by_address(&l).await?;
    drop(l);
    ensure!(
        !path.exists() && !dir.exists(),
        "{} is left after the listener",
        dir.display()
    );
    Ok(())
}

/// `_TestListener.test_multiple_bind`: binding the address a listener holds fails with an
/// OS error (a free Unix socket and a free TCP port alike), and leaves the first listener
/// whole: its socket is still there and a client still reaches it.
async fn binding_a_held_address_fails() -> TestResult {
    for l in [
        mp::Listener::new(None)?,
        mp::Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, None)?,
    ] {
        match mp::Listener::bind(l.address().clone(), None) {
            Err(mp::Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            other => return Err(format!("second bind of {}: {other:?}", l.address()).into()),
        }
        let (client, served) = tokio::join!(
            mp::Client::connect::<u32>(l.address().clone(), None),
            async {
                let c = l.accept::<u32>().await?;
                c.send(&1729).await
            }
        );
        served?;
        ensure!(
            client?.recv_timeout(Duration::from_secs(20)).await? == 1729,
            "no message through {}",
            l.address()
        );
    }
    Ok(())
}

/// `last_accepted` (the documentation's `print('connection accepted from',
/// listener.last_accepted)`): `None` before a connection, then the client's own address:
/// its IP address and port over TCP, an empty path for a Unix client that bound no path.
async fn last_accepted_is_the_clients_address() -> TestResult {
    let l = mp::Listener::bind("127.0.0.1:0".parse::<SocketAddr>()?, None)?;
    ensure!(l.last_accepted().is_none(), "{:?}", l.last_accepted());
    let mp::Address::Tcp(addr) = l.address().clone() else {
        return Err("not a TCP address".into());
    };
    for _ in 0..2 {
        let (stream, conn) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept::<u32>());
        let (stream, _conn) = (stream?, conn?);
        let ours = mp::Address::Tcp(stream.local_addr()?);
        ensure!(
            l.last_accepted().as_ref() == Some(&ours),
            "last_accepted {:?}, the client is at {ours}",
            l.last_accepted()
        );
    }
    let u = mp::Listener::new(None)?;
    let (client, conn) = tokio::join!(
        mp::Client::connect::<u32>(u.address().clone(), None),
        u.accept::<u32>()
    );
    let (_client, _conn) = (client?, conn?);
    ensure!(
        u.last_accepted() == Some(mp::Address::Unix(PathBuf::new())),
        "{:?}",
        u.last_accepted()
    );
    Ok(())
}

/// Python's address forms: `(host, port)` pairs, `"host:port"` strings, a path string; a
/// string that is none of them is an invalid argument.
async fn addresses_as_python_writes_them() -> TestResult {
    // `localhost` on both sides: the listener and the client take its first address alike.
    let l = mp::Listener::bind(("localhost", 0), Some(KEY))?;
    let mp::Address::Tcp(addr) = l.address().clone() else {
        return Err("not a TCP address".into());
    };
    let port = addr.port();
    let text = format!("localhost:{port}");
    let pair = ("localhost".to_string(), port);
    for to in [
        mp::ToAddress::to_address(&pair)?,
        mp::ToAddress::to_address(&text)?,
    ] {
        let (client, served) = tokio::join!(mp::Client::connect::<u32>(&to, Some(KEY)), async {
            let c = l.accept::<u32>().await?;
            c.send(&7).await
        });
        served?;
        ensure!(client?.recv().await? == 7, "no message through {to}");
    }
    let path = socket_path("string");
    let u = mp::Listener::bind(path.to_string_lossy().as_ref(), None)?;
    ensure!(
        u.address() == &mp::Address::Unix(path.clone()),
        "{:?}",
        u.address()
    );
    let r = mp::Client::connect::<u32>("not an address", None).await;
    ensure!(matches!(r, Err(mp::Error::InvalidArgument(_))), "{r:?}");
    Ok(())
}

/// `_TestListenerClient.test_listener_client` without a key: no exchange at all.
async fn unix_path_without_key() -> TestResult {
    let path = socket_path("nokey");
    let l = mp::Listener::bind(path.clone(), None)?;
    let p = mp::Process::new(echo_client, (mp::Address::Unix(path), None::<Vec<u8>>))
        .start()
        .await?;
    round_trip(&l, p).await
}

/// Python's `Listener(address, backlog=1)`: connections the listener has not accepted queue
/// up to the backlog (Linux counts a Unix socket's queue full once it holds more than the
/// backlog), and a non-blocking connect past that fails at once with `WouldBlock`; `bind`'s
/// own backlog queues them all. An `accept` takes the queue off the socket, making room.
async fn the_backlog_bounds_the_connections_not_accepted() -> TestResult {
    use std::io::ErrorKind::WouldBlock;
    let path = socket_path("backlog");
    let l = mp::Listener::bind_with_backlog(path.clone(), None, 1)?;
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(tokio::net::UnixStream::connect(&path).await?);
    }
    match tokio::net::UnixStream::connect(&path).await {
        Err(e) if e.kind() == WouldBlock => {}
        other => return Err(format!("a third connect with a backlog of 1: {other:?}").into()),
    }
    let _first: mp::Connection<u8> = l.accept().await?;
    queued.push(tokio::net::UnixStream::connect(&path).await?);

    let roomy_path = socket_path("default-backlog");
    let _roomy = mp::Listener::bind(roomy_path.clone(), None)?;
    for _ in 0..3 {
        queued.push(tokio::net::UnixStream::connect(&roomy_path).await?);
    }
    // A backlog over the kernel's most is capped, not refused.
    let tcp = mp::Listener::bind_with_backlog("127.0.0.1:0", None, u32::MAX)?;
    ensure!(
        matches!(tcp.address(), mp::Address::Tcp(_)),
        "{:?}",
        tcp.address()
    );
    Ok(())
}

/// Python's `Client` waits while the listener's backlog is full: a `Client::connect` to a
/// Unix socket bound with a backlog of 1 that already queues two connections waits until
/// an `accept` makes room, then connects, and its message arrives.
async fn a_client_waits_for_room_in_a_full_backlog() -> TestResult {
    let path = socket_path("full-backlog");
    let l = mp::Listener::bind_with_backlog(path.clone(), None, 1)?;
    let queued = [
        tokio::net::UnixStream::connect(&path).await?,
        tokio::net::UnixStream::connect(&path).await?,
    ];
    let connecting = async {
        let conn = mp::Client::connect::<u32>(path.clone(), None).await?;
        conn.send(&42).await?;
        Ok::<_, mp::Error>(conn)
    };
    tokio::pin!(connecting);
    // Its first try, with the backlog full.
    if let Ok(r) = tokio::time::timeout(Duration::ZERO, connecting.as_mut()).await {
        return Err(format!(
            "a connect to a full backlog ended at once: {:?}",
            r.map(drop)
        )
        .into());
    }
    let accepting = async {
        let mut accepted = Vec::new();
        for _ in 0..3 {
            accepted.push(l.accept::<u32>().await?);
        }
        Ok::<_, mp::Error>(accepted)
    };
    let both = async { tokio::join!(connecting, accepting) };
    let (client, accepted) = tokio::time::timeout(Duration::from_secs(30), both).await?;
    let (_client, accepted) = (client?, accepted?);
    let waitables: Vec<&dyn mp::Waitable> = accepted.iter().map(|c| c as _).collect();
    let ready = mp::wait(&waitables, Some(Duration::from_secs(20))).await?;
    ensure!(ready.len() == 1, "connections with a message: {ready:?}");
    ensure!(
        accepted[ready[0]].recv().await? == 42,
        "the client's message"
    );
    drop(queued);
    Ok(())
}

/// `bind`'s backlog over TCP is the kernel's most (`net.core.somaxconn`), as over a Unix
/// socket: 300 connections that the listener has not accepted are all queued, where a
/// backlog of 128 queues 129 and leaves the rest retrying their handshake.
async fn bind_queues_as_many_tcp_connections_as_the_kernel_allows() -> TestResult {
    let most = std::fs::read_to_string("/proc/sys/net/core/somaxconn")?
        .trim()
        .parse::<usize>()?;
    let n = 300.min(most);
    let l = mp::Listener::bind("127.0.0.1:0", None)?;
    let mp::Address::Tcp(addr) = l.address().clone() else {
        return Err("not a TCP address".into());
    };
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..n {
        connects.spawn(tokio::net::TcpStream::connect(addr));
    }
    let queued = support::eventually(Duration::from_secs(10), || {
        support::not_accepted(l.address()) == n
    })
    .await;
    let count = support::not_accepted(l.address());
    connects.abort_all();
    ensure!(queued, "{count} of {n} connections queued");
    Ok(())
}

/// A bind or a connect that the system refuses says which address it was, as a manager's
/// connect does, and keeps the error's kind.
async fn refused_bind_and_connect_name_the_address() -> TestResult {
    let path = socket_path("taken");
    let first = mp::Listener::bind(path.clone(), None)?;
    let shown = path.display().to_string();
    let io_error = |r: mp::Result<()>, kind: std::io::ErrorKind, what: &str| -> TestResult {
        match r {
            Err(mp::Error::Io(e)) if e.kind() == kind => {
                ensure!(e.to_string().contains(&shown), "{what}: {e}");
                Ok(())
            }
            r => Err(format!("{what}: {r:?}").into()),
        }
    };
    let again = mp::Listener::bind(path.clone(), None).map(|_| ());
    io_error(again, std::io::ErrorKind::AddrInUse, "a second bind")?;
    drop(first);
    let gone = mp::Client::connect::<u8>(path.clone(), None)
        .await
        .map(|_| ());
    io_error(gone, std::io::ErrorKind::NotFound, "a connect to no socket")?;
    let tcp = mp::Listener::bind("127.0.0.1:0", None)?;
    let mp::Address::Tcp(addr) = tcp.address().clone() else {
        return Err("a TCP listener's address".into());
    };
    match mp::Listener::bind(addr, None) {
        Err(mp::Error::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            ensure!(
                e.to_string().contains(&addr.to_string()),
                "a second TCP bind: {e}"
            );
        }
        r => return Err(format!("a second TCP bind: {:?}", r.map(|_| ())).into()),
    }
    Ok(())
}

/// `OtherTest.test_deliver_challenge_auth_failure` / `test_answer_challenge_auth_failure`:
/// a wrong key fails on both sides with an authentication error, before any message.
async fn wrong_key_fails_on_both_sides() -> TestResult {
    let path = socket_path("wrongkey");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    let mut p = mp::Process::new(refused_client, (path, b"another key".to_vec()))
        .start()
        .await?;
    let r = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await?;
    ensure!(
        matches!(r, Err(mp::Error::Authentication { .. })),
        "listener side: {r:?}"
    );
    ensure!(
        join_code(&mut p).await? == 0,
        "client side saw an authentication error"
    );
    Ok(())
}

/// A client connected without a key to a listener that has one receives the listener's
/// challenge in place of a message: its `recv` says the listener asks for a key, rather
/// than that a message was not the type it expected.
async fn a_keyless_client_is_told_the_listener_wants_a_key() -> TestResult {
    let path = socket_path("keyless");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    // The listener's side of the exchange, which sends the challenge and then waits for
    // an answer that never comes.
    let accepting = tokio::spawn(async move { l.accept::<String>().await.map(drop) });
    let conn = mp::Client::connect::<String>(path.as_path(), None).await?;
    let r = tokio::time::timeout(Duration::from_secs(20), conn.recv()).await?;
    accepting.abort();
    ensure!(
        matches!(&r, Err(mp::Error::Authentication { message }) if message.contains("key")),
        "a keyless client's recv gave {r:?}"
    );
    Ok(())
}

/// A client connected with a key to a listener bound without one gets no challenge: when the
/// listener's program sends first, the client's connect fails at once, and when it waits
/// for the client, after [`mp::AUTH_TIMEOUT`]; both errors say the listener may have no key.
async fn a_keyed_client_is_told_the_listener_asks_for_no_key() -> TestResult {
    let path = socket_path("keyed-to-keyless");
    let l = mp::Listener::bind(path.clone(), None)?;
    let serving = tokio::spawn(async move {
        let speaks: mp::Connection<String> = l.accept().await?;
        speaks.send(&"welcome".to_string()).await?;
        let waits: mp::Connection<String> = l.accept().await?;
        // The keyed client gives up and closes; the message it never sent is not read.
        let _ = waits.recv().await;
        Ok::<(), mp::Error>(())
    });
    let told = |r: mp::Result<mp::Connection<String>>| match r {
        Err(mp::Error::Authentication { message }) if message.contains("without a key") => Ok(()),
        other => Err(format!("a keyed client of a keyless listener: {other:?}")),
    };
    told(mp::Client::connect::<String>(path.as_path(), Some(KEY)).await)?;
    let limit = mp::AUTH_TIMEOUT + Duration::from_secs(20);
    told(
        tokio::time::timeout(
            limit,
            mp::Client::connect::<String>(path.as_path(), Some(KEY)),
        )
        .await?,
    )?;
    tokio::time::timeout(Duration::from_secs(20), serving).await???;
    Ok(())
}

/// `OtherTest.test_answer_challenge_auth_failure` with garbage: bytes that are not an
/// answer, sent in place of one, fail the listener's `accept` cleanly; the listener then
/// accepts the next, honest client.
async fn garbage_in_place_of_the_answer() -> TestResult {
    let path = socket_path("garbage");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    let mut raw = tokio::net::UnixStream::connect(&path).await?;
    raw.write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n")
        .await?;
    let r = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await?;
    ensure!(
        matches!(r, Err(mp::Error::Authentication { .. })),
        "garbage answer: {r:?}"
    );
    // A short, well-framed message that is not the answer.
    let mut raw2 = tokio::net::UnixStream::connect(&path).await?;
    raw2.write_all(&[0, 0, 0, 3, 0, b'a', b'b', b'c']).await?;
    let r = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await?;
    ensure!(
        matches!(r, Err(mp::Error::Authentication { .. })),
        "wrong answer: {r:?}"
    );
    let mut failure = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw2.read_to_end(&mut failure)).await;
    ensure!(
        failure.windows(9).any(|w| w == b"#FAILURE#"),
        "the listener told the client it failed"
    );
    let p = mp::Process::new(echo_client, (mp::Address::Unix(path), Some(KEY.to_vec())))
        .start()
        .await?;
    round_trip(&l, p).await
}

/// Garbage in place of the challenge: a client facing a server that is not ours fails
/// cleanly with an authentication error.
async fn garbage_in_place_of_the_challenge() -> TestResult {
    let path = socket_path("fakeserver");
    let _ = std::fs::remove_file(&path);
    let fake = tokio::net::UnixListener::bind(&path)?;
    let server = tokio::spawn(async move {
        if let Ok((mut s, _)) = fake.accept().await {
            let _ = s
                .write_all(b"\xff\xff\xff\xff\x00 this is not a challenge")
                .await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        }
    });
    let r = mp::Client::connect::<String>(path.clone(), Some(KEY)).await;
    ensure!(
        matches!(r, Err(mp::Error::Authentication { .. })),
        "client: {r:?}"
    );
    let path2 = socket_path("fakeserver2");
    let _ = std::fs::remove_file(&path2);
    let fake2 = tokio::net::UnixListener::bind(&path2)?;
    let server2 = tokio::spawn(async move {
        if let Ok((mut s, _)) = fake2.accept().await {
            let _ = s.write_all(&[0, 0, 0, 4, 0, b'n', b'o', b'p', b'e']).await;
        }
    });
    let r = mp::Client::connect::<String>(path2.clone(), Some(KEY)).await;
    ensure!(
        matches!(r, Err(mp::Error::Authentication { .. })),
        "client, short message: {r:?}"
    );
    // A server of another protocol that speaks first, as sshd does: the error says so.
    let path3 = socket_path("fakeserver3");
    let _ = std::fs::remove_file(&path3);
    let fake3 = tokio::net::UnixListener::bind(&path3)?;
    let server3 = tokio::spawn(async move {
        if let Ok((mut s, _)) = fake3.accept().await {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        }
    });
    let r = mp::Client::connect::<String>(path3.clone(), Some(KEY)).await;
    ensure!(
        matches!(&r, Err(mp::Error::Authentication { message })
            if message.contains("\"SSH-\"") && message.contains("another protocol")),
        "client, another protocol: {r:?}"
    );
    server.abort();
    server2.abort();
    server3.abort();
    for p in [&path, &path2, &path3] {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// Runs in a child of its own, whose descriptor limit it lowers: a listener whose `accept`
/// took two connections and returned one holds the other, through its exchange, when the
/// kernel refuses the next connection for want of a descriptor (`EMFILE`). The next
/// `accept` returns the one held, which a server at its limit can serve and close; only the
/// one after fails, and once the limit is raised the waiting connection is accepted.
async fn accept_at_the_descriptor_limit() -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use std::os::fd::AsRawFd;
    let why = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let l = mp::Listener::new(None).map_err(|x| why("bind", &x))?;
    let mp::Address::Unix(path) = l.address().clone() else {
        return Err("a Unix listener".into());
    };
    let connect = || std::os::unix::net::UnixStream::connect(&path);
    let _clients = [connect(), connect()];
    let first = l
        .accept::<u8>()
        .await
        .map_err(|x| why("the first accept", &x))?;
    let _third = connect().map_err(|x| why("the third connect", &x))?;
    // The reactor, turning while this task sleeps, sees the third connection waiting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|x| why("getrlimit", &x))?;
    let lowest_free = std::fs::File::open("/dev/null")
        .map(|f| f.as_raw_fd() as u64)
        .map_err(|x| why("open", &x))?;
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free, hard).map_err(|x| why("setrlimit", &x))?;
    let held = l.accept::<u8>().await;
    let refused = l.accept::<u8>().await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(|x| why("setrlimit", &x))?;
    held.map_err(|x| why("the accept of the connection held at the limit", &x))?;
    match refused {
        Err(mp::Error::Io(x)) if x.raw_os_error() == Some(nix::libc::EMFILE) => {}
        other => return Err(format!("an accept at the limit with none held: {other:?}")),
    }
    l.accept::<u8>()
        .await
        .map_err(|x| why("the accept once the limit is raised", &x))?;
    drop(first);
    Ok(())
}

/// A listener at its descriptor limit still hands out the connections it holds (see
/// `accept_at_the_descriptor_limit`).
async fn a_listener_at_its_descriptor_limit_hands_out_what_it_holds() -> TestResult {
    let mut p = mp::Process::new(accept_at_the_descriptor_limit, ())
        .start()
        .await?;
    ensure!(join_code(&mut p).await? == 0, "the child failed");
    Ok(())
}

/// Connections are authenticated concurrently: with 60 clients connected and silent (they
/// never answer the challenge), a good client that connects again and again is accepted
/// each time, long before the silent ones time out; the silent ones cost only themselves.
/// Every descriptor is closed once the listener and the silent sockets are dropped.
async fn silent_clients_do_not_stall_accept() -> TestResult {
    const SILENT: usize = 60;
    const TIMES: u32 = 5;
    let before = open_fds();
    let path = socket_path("silent");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    let mut silent = Vec::new();
    for _ in 0..SILENT {
        silent.push(tokio::net::UnixStream::connect(&path).await?);
    }
    let mut p = mp::Process::new(connect_repeatedly, (path.clone(), KEY.to_vec(), TIMES))
        .start()
        .await?;
    for i in 0..TIMES {
        // A quarter of the authentication timeout: an accept that waited for a silent
        // client to time out would take the whole of it.
        let conn = tokio::time::timeout(mp::AUTH_TIMEOUT / 4, l.accept::<u32>())
            .await
            .map_err(|_| format!("accept {i} waited behind the silent clients"))??;
        ensure!(
            conn.recv_timeout(Duration::from_secs(20)).await? == i,
            "message {i}"
        );
        conn.send(&i).await?;
    }
    ensure!(join_code(&mut p).await? == 0, "the good client");
    drop(p);
    drop(silent);
    drop(l);
    ensure!(!path.exists(), "the socket file is removed");
    fds_return_to(before, Duration::from_secs(10)).await
}

/// A client that sends descriptors during the authentication exchange, whose messages
/// carry none (a byte at a time, each with 200 descriptors, never finishing a message), is
/// refused as its first ones arrive: the accept fails saying so, the listener holds none of
/// them, and it still accepts a good client.
async fn descriptors_during_the_exchange_are_refused_at_once() -> TestResult {
    use std::os::fd::AsRawFd;
    let before = open_fds();
    let path = socket_path("fds-in-exchange");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    let attacker = std::os::unix::net::UnixStream::connect(&path)?;
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let files: Vec<std::fs::File> = (0..200)
            .map(|_| std::fs::File::open("/dev/null"))
            .collect::<std::io::Result<_>>()?;
        let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        // A header that announces 200 bytes and no descriptors, then its body.
        let mut bytes = 200u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 61]);
        for b in bytes.chunks(1) {
            let iov = [std::io::IoSlice::new(b)];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            // An error: the listener closed the connection.
            if sendmsg::<()>(attacker.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    let r = l.accept::<u32>().await;
    let said = match r {
        Err(e) => e.to_string(),
        Ok(_) => return Err("the attacker's connection was accepted".into()),
    };
    ensure!(said.contains("descriptors"), "the accept's error: {said}");
    sending
        .join()
        .map_err(|_| "the attacking thread panicked")??;
    let mut p = mp::Process::new(connect_repeatedly, (path.clone(), KEY.to_vec(), 1))
        .start()
        .await?;
    let conn = l.accept::<u32>().await?;
    ensure!(
        conn.recv_timeout(Duration::from_secs(20)).await? == 0,
        "the good client"
    );
    conn.send(&0).await?;
    ensure!(join_code(&mut p).await? == 0, "the good client's end");
    drop((p, conn, l));
    fds_return_to(before, Duration::from_secs(10)).await
}

/// More silent clients than [`mp::MAX_HANDSHAKES`] (a child holds 400 TCP connections that
/// never answer the challenge): the listener goes on taking connections and closes the
/// silent ones that have waited a while, so a good client that comes after all of them is
/// accepted long before they would time out, and the listener never holds more than
/// `MAX_HANDSHAKES` of them. Every one of their descriptors is closed once they are gone.
async fn more_silent_clients_than_max_handshakes_lock_no_one_out() -> TestResult {
    let l = std::sync::Arc::new(mp::Listener::bind(
        "127.0.0.1:0".parse::<SocketAddr>()?,
        Some(KEY),
    )?);
    let mp::Address::Tcp(addr) = l.address().clone() else {
        return Err("the listener has no TCP address".into());
    };
    // Accepts throughout, as a server does; silent clients that time out are refused.
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = {
        let l = l.clone();
        tokio::spawn(async move {
            loop {
                match l.accept::<String>().await {
                    Ok(c) => {
                        if tx.send(c).is_err() {
                            return;
                        }
                    }
                    Err(mp::Error::Authentication { .. }) => {}
                    Err(_) => return,
                }
            }
        })
    };
    let silent = support::SilentSockets::open(addr).await?;
    let mut good = mp::Process::new(echo_client, (mp::Address::Tcp(addr), Some(KEY.to_vec())))
        .start()
        .await?;
    // Half the timeout of the challenge, which waiting behind the silent clients would take.
    let conn = tokio::time::timeout(mp::AUTH_TIMEOUT / 2, accepted.recv())
        .await
        .map_err(|_| "the good client waited behind the silent ones")?
        .ok_or("the accepting task ended")?;
    conn.send(&"hello".to_string()).await?;
    ensure!(
        conn.recv_timeout(Duration::from_secs(20)).await? == "echo: hello",
        "echo"
    );
    ensure!(join_code(&mut good).await? == 0, "the good client");
    // The good client came after every silent one: all were taken, most closed since.
    // Those in their exchange, and the good client's.
    let bound = mp::MAX_HANDSHAKES + 1;
    let held = || support::connections_on_port(addr.port());
    ensure!(
        support::eventually(Duration::from_secs(10), || held() <= bound).await,
        "the listener holds {} connections, more than {bound}",
        held()
    );
    silent.close().await?;
    drop((conn, good));
    // The silent sockets' exchanges end with them, while the listener goes on.
    let closed = support::eventually(Duration::from_secs(20), || held() == 0).await;
    acceptor.abort();
    ensure!(closed, "the listener still holds {} connections", held());
    Ok(())
}

/// A burst of more honest clients than [`mp::MAX_HANDSHAKES`] (a child connects 300 with
/// the key at once, over a Unix socket and over TCP, and all are in the listener's backlog
/// before it accepts): every one is accepted and its connection carries a message both ways,
/// as Python's `accept` serves them one by one. The listener's bound on exchanges under way
/// closes none of them: they are all answering.
async fn a_burst_of_more_clients_than_max_handshakes_is_accepted_whole() -> TestResult {
    const CLIENTS: u32 = 300;
    let addresses = [
        mp::Address::Unix(socket_path("burst")),
        mp::Address::Tcp("127.0.0.1:0".parse()?),
    ];
    for address in addresses {
        let l = mp::Listener::bind_with_backlog(address, Some(KEY), 2 * CLIENTS)?;
        let mut p = mp::Process::new(
            connect_at_once,
            (l.address().clone(), KEY.to_vec(), CLIENTS),
        )
        .start()
        .await?;
        let queued = || support::not_accepted(l.address()) == CLIENTS as usize;
        if !support::eventually(Duration::from_secs(20), queued).await {
            let _ = p.kill();
            let n = support::not_accepted(l.address());
            return Err(format!("{n} of {CLIENTS} clients queued").into());
        }
        let mut served = tokio::task::JoinSet::new();
        // Accepts until the child ends: it ends once each of its clients is through or failed.
        let code = loop {
            tokio::select! {
                conn = l.accept::<u32>() => {
                    let conn = conn?;
                    served.spawn(async move {
                        let i = conn.recv_timeout(Duration::from_secs(20)).await?;
                        conn.send(&i).await
                    });
                }
                code = join_code(&mut p) => break code?,
            }
        };
        ensure!(
            code == 0,
            "some of {CLIENTS} clients failed over {} (the child's stderr says which)",
            l.address()
        );
        ensure!(
            served.len() == CLIENTS as usize,
            "{} accepted",
            served.len()
        );
        while let Some(r) = served.join_next().await {
            r??;
        }
    }
    Ok(())
}

/// More honest clients than [`mp::MAX_HANDSHAKES`] that all connect, then all wait until
/// the listener has taken what it will before they answer (as a burst of clients does whose
/// process is slower than the listener's): every exchange ends, every connection carries a
/// message both ways, over a Unix socket and over TCP. The listener takes `MAX_HANDSHAKES`
/// of them and the rest once those are through, where it closed the oldest to take the rest.
async fn answering_clients_beyond_max_handshakes_are_not_closed() -> TestResult {
    const CLIENTS: usize = mp::MAX_HANDSHAKES + 44;
    let addresses = [
        mp::Address::Unix(socket_path("held-burst")),
        mp::Address::Tcp("127.0.0.1:0".parse()?),
    ];
    for address in addresses {
        let l = std::sync::Arc::new(mp::Listener::bind_with_backlog(
            address,
            Some(KEY),
            2 * CLIENTS as u32,
        )?);
        let acceptor = {
            let l = l.clone();
            tokio::spawn(async move {
                let mut served = tokio::task::JoinSet::new();
                for _ in 0..CLIENTS {
                    let conn = l.accept::<u32>().await?;
                    served.spawn(async move {
                        conn.send_bytes(b"hello").await?;
                        conn.recv_bytes().await
                    });
                }
                served
                    .join_all()
                    .await
                    .into_iter()
                    .collect::<mp::Result<Vec<_>>>()
            })
        };
        let (go, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let mut wait = go.subscribe();
            let address = l.address().clone();
            clients.spawn(async move {
                let client = async {
                    // Waits for the word before it reads or answers anything.
                    match address {
                        mp::Address::Unix(path) => {
                            let mut s = tokio::net::UnixStream::connect(path).await?;
                            let _ = wait.recv().await;
                            exchange_and_echo(&mut s).await
                        }
                        mp::Address::Tcp(addr) => {
                            let mut s = tokio::net::TcpStream::connect(addr).await?;
                            let _ = wait.recv().await;
                            exchange_and_echo(&mut s).await
                        }
                    }
                };
                client
                    .await
                    .map_err(|e: Box<dyn std::error::Error + Send + Sync>| {
                        format!("client {i}: {e}")
                    })
            });
        }
        // The listener has taken every connection it will before the clients answer.
        let taken = || support::not_accepted(l.address()) <= CLIENTS - mp::MAX_HANDSHAKES;
        ensure!(
            support::eventually(Duration::from_secs(20), taken).await,
            "the listener took no connection"
        );
        let _ = go.send(());
        let mut failed = Vec::new();
        while let Some(r) = clients.join_next().await {
            if let Err(e) = r? {
                failed.push(e);
            }
        }
        ensure!(
            failed.is_empty(),
            "{} of {CLIENTS} clients failed over {}, the first: {}",
            failed.len(),
            l.address(),
            failed[0]
        );
        let echoed = tokio::time::timeout(Duration::from_secs(20), acceptor).await???;
        ensure!(
            echoed.len() == CLIENTS && echoed.iter().all(|b| b == b"hello"),
            "the connections' messages"
        );
    }
    Ok(())
}

/// A connection that waits in the backlog is taken, and its exchange started, by an
/// `accept` that returns another whose exchange had ended already (begun by an earlier
/// `accept` that lost a `select!` race): it was left in the backlog, its client waiting for
/// the challenge until the next `accept`, so a server serving one connection at a time
/// stalled it (and, under load, `exchanges_go_on_while_the_server_serves_another` failed
/// the same way when the first exchange ended before `accept` looked at the backlog again).
async fn an_accept_that_returns_a_finished_exchange_starts_the_waiting_ones() -> TestResult {
    let path = socket_path("finished-first");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    let mut first = tokio::net::UnixStream::connect(&path).await?;
    // An accept polled once, which takes the first connection and starts its exchange,
    // then is dropped. The client answers only after, so that the exchange cannot end
    // within that poll (on a loaded machine, it did when the client answered at once: the
    // exchange ran to its end on another worker thread before the poll looked at it).
    if let Some(r) = futures::FutureExt::now_or_never(l.accept::<String>()) {
        return Err(format!("the exchange ended within one poll: {:?}", r.map(|_| ())).into());
    }
    let first_done =
        tokio::spawn(async move { answer_then_challenge(&mut first, KEY).await.map(|()| first) });
    let mut first = tokio::time::timeout(Duration::from_secs(20), first_done).await???;
    // The first connection's exchange has ended; a second connection waits in the backlog.
    let mut second = tokio::net::UnixStream::connect(&path).await?;
    let second_done = tokio::spawn(async move {
        answer_then_challenge(&mut second, KEY)
            .await
            .map(|()| second)
    });
    let served = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
    // Serving the first: the second's exchange ends without another accept.
    let mut second = tokio::time::timeout(mp::AUTH_TIMEOUT / 2, second_done)
        .await
        .map_err(
            |_| "the waiting connection's exchange stood still while the server served another",
        )???;
    let other = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
    served.send_bytes(b"first").await?;
    other.send_bytes(b"second").await?;
    let got = (
        tokio::time::timeout(Duration::from_secs(20), read_frame(&mut first)).await??,
        tokio::time::timeout(Duration::from_secs(20), read_frame(&mut second)).await??,
    );
    ensure!(
        got == (b"first".to_vec(), b"second".to_vec()),
        "the clients received {got:?}"
    );
    Ok(())
}

/// A server that serves one connection at a time, as Python's examples do: two clients
/// connect at once, the first `accept` takes both and returns one, and while the server
/// serves that one (no `accept` awaited) the other's exchange goes on to its end; the next
/// `accept` returns it, and both connections carry a message.
async fn exchanges_go_on_while_the_server_serves_another() -> TestResult {
    let path = socket_path("one-at-a-time");
    let l = mp::Listener::bind(path.clone(), Some(KEY))?;
    // Both connections wait in the backlog before the first accept.
    let mut exchanges = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::UnixStream::connect(&path).await?;
        exchanges.push(tokio::spawn(async move {
            answer_then_challenge(&mut s, KEY).await.map(|()| s)
        }));
    }
    let first = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
    // Serving the first: the other's exchange ends without another accept.
    let mut clients = Vec::new();
    for exchange in exchanges {
        let done = tokio::time::timeout(mp::AUTH_TIMEOUT / 2, exchange)
            .await
            .map_err(|_| "a client's exchange stood still while the server served another")?;
        clients.push(done??);
    }
    let second = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
    first.send_bytes(b"first").await?;
    second.send_bytes(b"second").await?;
    let mut got = Vec::new();
    for s in &mut clients {
        got.push(tokio::time::timeout(Duration::from_secs(20), read_frame(s)).await??);
    }
    got.sort();
    ensure!(
        got == [b"first".to_vec(), b"second".to_vec()],
        "the clients received {got:?}"
    );
    Ok(())
}

/// Every connection that waits in the backlog when `accept` is called is taken by that call,
/// even when the first one's exchange ends before `accept` looks at the socket again: a
/// keyed client left behind would count its time in the backlog in its `AUTH_TIMEOUT`
/// while the server serves the connection it got. Here the calling task's tokio budget runs
/// out right after the first connection is taken, so its exchange (a keyless one, which
/// ends at once) runs before `accept` is polled again; the test tries each small budget
/// left, so whichever step of `accept` spends the last unit, one try meets that moment.
async fn accept_takes_every_connection_waiting() -> TestResult {
    for left in 1..=8 {
        let path = socket_path(&format!("budget-{left}"));
        let l = mp::Listener::bind(path.clone(), None)?;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::UnixStream::connect(&path).await?);
        }
        ensure!(
            support::not_accepted(l.address()) == 3,
            "the three connections wait in the backlog"
        );
        // A fresh budget (tokio's is 128 units per poll), then all but `left` spent.
        tokio::task::yield_now().await;
        for _ in 0..128 - left {
            tokio::task::consume_budget().await;
        }
        let first = tokio::time::timeout(Duration::from_secs(20), l.accept::<String>()).await??;
        let behind = support::not_accepted(l.address());
        ensure!(
            behind == 0,
            "with {left} units of budget left, accept returned a connection and left {behind} \
             that waited before it in the backlog"
        );
        drop((first, clients));
    }
    Ok(())
}

/// [`answer_then_challenge`] on `s`, then one message back the way it came.
async fn exchange_and_echo<S>(s: &mut S) -> TestResult
where
    S: AsyncReadExt + AsyncWriteExt + Unpin,
{
    answer_then_challenge(s, KEY).await?;
    let hello = read_frame(s).await?;
    write_frame(s, &hello).await?;
    Ok(())
}

fn main() {
    mp::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = vec![
        test(
            "a_listener_at_its_descriptor_limit_hands_out_what_it_holds",
            a_listener_at_its_descriptor_limit_hands_out_what_it_holds,
        ),
        test("unix_path_with_key", unix_path_with_key),
        test(
            "descriptors_during_the_exchange_are_refused_at_once",
            descriptors_during_the_exchange_are_refused_at_once,
        ),
        test("tcp_with_key", tcp_with_key),
        test(
            "an_address_of_any_bytes_travels_to_a_child",
            an_address_of_any_bytes_travels_to_a_child,
        ),
        test(
            "addresses_as_python_writes_them",
            addresses_as_python_writes_them,
        ),
        test("unix_path_without_key", unix_path_without_key),
        test(
            "a_keyless_client_is_told_the_listener_wants_a_key",
            a_keyless_client_is_told_the_listener_wants_a_key,
        ),
        test(
            "a_listener_with_no_address_picks_a_private_socket",
            a_listener_with_no_address_picks_a_private_socket,
        ),
        test("binding_a_held_address_fails", binding_a_held_address_fails),
        test(
            "the_backlog_bounds_the_connections_not_accepted",
            the_backlog_bounds_the_connections_not_accepted,
        ),
        test(
            "a_client_waits_for_room_in_a_full_backlog",
            a_client_waits_for_room_in_a_full_backlog,
        ),
        test(
            "last_accepted_is_the_clients_address",
            last_accepted_is_the_clients_address,
        ),
        test(
            "bind_queues_as_many_tcp_connections_as_the_kernel_allows",
            bind_queues_as_many_tcp_connections_as_the_kernel_allows,
        ),
        test(
            "refused_bind_and_connect_name_the_address",
            refused_bind_and_connect_name_the_address,
        ),
        test(
            "wrong_key_fails_on_both_sides",
            wrong_key_fails_on_both_sides,
        ),
        test(
            "a_keyed_client_is_told_the_listener_asks_for_no_key",
            a_keyed_client_is_told_the_listener_asks_for_no_key,
        ),
        test(
            "garbage_in_place_of_the_answer",
            garbage_in_place_of_the_answer,
        ),
        test(
            "garbage_in_place_of_the_challenge",
            garbage_in_place_of_the_challenge,
        ),
        test(
            "silent_clients_do_not_stall_accept",
            silent_clients_do_not_stall_accept,
        ),
        test(
            "an_accept_that_returns_a_finished_exchange_starts_the_waiting_ones",
            an_accept_that_returns_a_finished_exchange_starts_the_waiting_ones,
        ),
        test(
            "exchanges_go_on_while_the_server_serves_another",
            exchanges_go_on_while_the_server_serves_another,
        ),
        Trial::test("accept_takes_every_connection_waiting", || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            rt.block_on(async {
                tokio::time::timeout(
                    support::TEST_TIMEOUT,
                    accept_takes_every_connection_waiting(),
                )
                .await
            })
            .map_err(|_| "timed out")?
            .map_err(|e| e.to_string().into())
        }),
        test(
            "a_burst_of_more_clients_than_max_handshakes_is_accepted_whole",
            a_burst_of_more_clients_than_max_handshakes_is_accepted_whole,
        ),
        test(
            "answering_clients_beyond_max_handshakes_are_not_closed",
            answering_clients_beyond_max_handshakes_are_not_closed,
        ),
        test(
            "more_silent_clients_than_max_handshakes_lock_no_one_out",
            more_silent_clients_than_max_handshakes_lock_no_one_out,
        ),
    ];
    libtest_mimic::run(&args, trials).exit()
}
