//! `Pipe` / `Connection` and `wait` between real processes.
//!
//! Ported from CPython's `Lib/test/_test_multiprocessing.py` (`_TestConnection`,
//! `_TestWait`); each test names the case it comes from.

#[macro_use]
mod support;

use std::os::fd::AsRawFd;
use std::time::Duration;

use support::{TestResult, join_code, join_ok, run, start, test};
use tokio_multiprocessing as mp;

// ---- child targets ----

/// Echoes values and byte messages until end of stream.
async fn echo(conn: mp::Connection<Vec<String>>) {
    loop {
        match conn.recv_bytes().await {
            Ok(b) => {
                if conn.send_bytes(&b).await.is_err() {
                    std::process::exit(3);
                }
            }
            Err(mp::Error::Closed) => return,
            Err(_) => std::process::exit(4),
        }
    }
}

async fn send_and_drop(conn: mp::Connection<u32>, n: u32) {
    for i in 0..n {
        if conn.send(&i).await.is_err() {
            std::process::exit(3);
        }
    }
}

/// Holds its end and waits for ever (until killed).
async fn hold(conn: mp::Connection<u32>, never: mp::Connection<u32>) {
    let _keep = conn;
    let _ = never.recv().await;
    std::future::pending::<()>().await;
}

async fn send_big(conn: mp::Connection<Vec<u8>>, len: u64) {
    let v: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    if conn.send(&v).await.is_err() {
        std::process::exit(3);
    }
}

async fn forward_end(carrier: mp::Connection<mp::Connection<String>>) {
    match carrier.recv().await {
        Ok(end) => {
            if end.send(&"through a pipe".to_string()).await.is_err() {
                std::process::exit(3);
            }
        }
        Err(_) => std::process::exit(4),
    }
}

async fn send_after(conn: mp::Connection<u32>, go: mp::Connection<u32>, value: u32) {
    if go.recv().await.is_err() || conn.send(&value).await.is_err() {
        std::process::exit(3);
    }
}

/// Answers the challenge on `conn` with `key`, then the parent's, then echoes one message;
/// exits 5 if the exchange fails.
async fn answer_then_echo(conn: mp::Connection<String>, key: Vec<u8>) {
    if conn.answer_challenge(&key).await.is_err() || conn.deliver_challenge(&key).await.is_err() {
        std::process::exit(5);
    }
    match conn.recv().await {
        Ok(m) if conn.send(&format!("echo: {m}")).await.is_ok() => {}
        _ => std::process::exit(4),
    }
}

async fn exit_on_signal(go: mp::Connection<u32>) {
    let _ = go.recv().await;
}

/// Receives a read end `r` through `carrier`, polls it (and waits on it with `wait`) until a
/// message is there, takes nothing, and exits 0 if both said it was ready.
async fn only_poll(carrier: mp::Connection<mp::Connection<u32>>) {
    let Ok(r) = carrier.recv().await else {
        std::process::exit(4)
    };
    let polled = matches!(r.poll(Duration::from_secs(20)).await, Ok(true));
    let waited = matches!(
        mp::wait(&[&r], Some(Duration::from_secs(20)))
            .await
            .as_deref(),
        Ok([0])
    );
    std::process::exit(if polled && waited { 0 } else { 3 });
}

/// Receives a read end `r` through `carrier`, receives one message from it and sends that
/// back on `out`.
async fn recv_one(carrier: mp::Connection<mp::Connection<u32>>, out: mp::Connection<Vec<u8>>) {
    let Ok(r) = carrier.recv().await else {
        std::process::exit(4)
    };
    match r.recv_bytes().await {
        Ok(b) => {
            if out.send(&b).await.is_err() {
                std::process::exit(3);
            }
        }
        Err(_) => std::process::exit(4),
    }
}

/// This process's open descriptors, counted with one more.
fn open_descriptors() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// Lowers this process's descriptor limit to leave 4 free, receives a queue (11
/// descriptors) through `carrier`, drops `carrier`, and sends back on `out` the error that
/// came instead of the queue (empty if the queue came), then its open descriptors before
/// and after, a line each.
async fn recv_queue_near_the_limit(
    carrier: mp::Connection<mp::Queue<u8>>,
    out: mp::Connection<String>,
) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Some(before) = open_descriptors() else {
        std::process::exit(5)
    };
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        std::process::exit(5)
    };
    if setrlimit(Resource::RLIMIT_NOFILE, before + 4, hard).is_err() {
        std::process::exit(5);
    }
    let said = match carrier.recv().await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    drop(carrier);
    let after = open_descriptors().unwrap_or(u64::MAX);
    if out
        .send(&format!("{said}\n{before}\n{after}"))
        .await
        .is_err()
    {
        std::process::exit(3);
    }
}

/// With no descriptor to spare (its limit lowered to its lowest free descriptor), sends
/// `event` through `a`, which fails with the system's error naming the value; then, the
/// limit restored, sends it again.
async fn send_event_without_spare_descriptors(
    a: mp::Connection<mp::Event>,
    event: mp::Event,
) -> TestResult {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let lowest_free = std::fs::File::open("/dev/null")?.as_raw_fd() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free, hard)?;
    let sent = a.send(&event).await;
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    match sent {
        Err(mp::Error::Io(e)) => {
            let said = e.to_string();
            ensure!(
                said.contains("Too many open files") && said.contains("Event"),
                "the error: {said}"
            );
        }
        other => return Err(format!("a send with no descriptor to spare: {other:?}").into()),
    }
    a.send(&event).await?;
    Ok(())
}

// ---- tests ----

/// `_TestConnection.test_connection`: values and bytes go both ways through a child; `poll`
/// says whether something waits; `recv` with a timeout gives up; end of stream once the
/// child has gone.
async fn duplex_round_trips() -> TestResult {
    let (a, b) = mp::Pipe::<Vec<String>>::new()?;
    let mut p = start(echo, (b,)).await?;
    ensure!(!a.poll(Duration::ZERO).await?, "nothing to read yet");
    let v = vec!["hello".to_string(), "world".to_string()];
    a.send(&v).await?;
    ensure!(a.poll(Duration::from_secs(20)).await?, "the echo arrives");
    ensure!(a.recv().await? == v, "value round trip");
    a.send_bytes(b"raw bytes").await?;
    ensure!(a.recv_bytes().await? == b"raw bytes", "bytes round trip");
    a.send_bytes(&[]).await?;
    ensure!(a.recv_bytes().await?.is_empty(), "empty message");
    ensure!(
        matches!(
            a.recv_timeout(Duration::from_millis(100)).await,
            Err(mp::Error::Timeout)
        ),
        "recv_timeout"
    );
    drop(a);
    ensure!(join_code(&mut p).await? == 0, "echo saw end of stream");
    Ok(())
}

/// `_TestConnection.test_connection`, the `recv_bytes_into` and `maxlength` halves: a
/// message fits in a buffer (at an offset), or comes back inside `BufferTooShort`; the
/// connection serves on either way. `send_bytes` of a slice is Python's offset and size.
async fn recv_bytes_into_a_buffer() -> TestResult {
    let (a, b) = mp::Pipe::<Vec<String>>::new()?;
    let mut p = start(echo, (b,)).await?;
    let msg = b"abcdefghijklmnopqrstuvwxyz";
    a.send_bytes(&msg[3..3 + 5]).await?;
    let mut buf = [0u8; 16];
    let n = a.recv_bytes_into(&mut buf[4..]).await?;
    ensure!(
        n == 5 && &buf[4..9] == b"defgh" && buf[..4] == [0; 4],
        "into an offset: {buf:?}"
    );
    a.send_bytes(msg).await?;
    match a.recv_bytes_into(&mut buf).await {
        Err(mp::Error::BufferTooShort { room: 16, message }) => {
            ensure!(message == msg, "the message in the error: {message:?}");
        }
        other => return Err(format!("a long message into 16 bytes gave {other:?}").into()),
    }
    ensure!(buf[4..9] == *b"defgh", "the buffer was written: {buf:?}");
    a.send_bytes(msg).await?;
    match a.recv_bytes_max(10).await {
        Err(mp::Error::BufferTooShort { room: 10, message }) => {
            ensure!(message == msg, "the message in the error: {message:?}");
        }
        other => return Err(format!("recv_bytes_max(10) gave {other:?}").into()),
    }
    a.send_bytes(b"short").await?;
    ensure!(
        a.recv_bytes_max(10).await? == b"short",
        "a message within maxlength"
    );
    drop(a);
    ensure!(join_code(&mut p).await? == 0, "echo saw end of stream");
    Ok(())
}

/// `_TestConnection.test_connection` (the `EOFError` half): messages sent before the writer
/// went are all received, then `recv` reports end of stream.
async fn eof_after_writer_exits() -> TestResult {
    let (a, b) = mp::Pipe::<u32>::new()?;
    let mut p = start(send_and_drop, (b, 5u32)).await?;
    ensure!(join_code(&mut p).await? == 0, "sender");
    for i in 0..5 {
        ensure!(a.recv().await? == i, "message {i}");
    }
    ensure!(matches!(a.recv().await, Err(mp::Error::Closed)), "EOF");
    ensure!(
        a.poll(Duration::ZERO).await?,
        "poll is true at end of stream"
    );
    ensure!(
        matches!(a.send(&1).await, Err(mp::Error::Closed)),
        "send to a vanished peer"
    );
    Ok(())
}

/// End of stream when the holder of the other end is killed by SIGKILL (CPython's
/// `test_sentinel`-style death), not a hang.
async fn eof_after_holder_is_killed() -> TestResult {
    let (a, b) = mp::Pipe::<u32>::new()?;
    let (never_keep, never) = mp::Pipe::<u32>::new()?;
    let mut p = start(hold, (b, never)).await?;
    ensure!(
        matches!(
            a.recv_timeout(Duration::from_millis(200)).await,
            Err(mp::Error::Timeout)
        ),
        "still held"
    );
    p.kill()?;
    ensure!(
        matches!(
            a.recv_timeout(Duration::from_secs(20)).await,
            Err(mp::Error::Closed)
        ),
        "EOF after SIGKILL"
    );
    ensure!(join_code(&mut p).await? == -9, "killed by SIGKILL");
    drop(never_keep);
    Ok(())
}

/// End of stream, too, when the holder of the other end is killed with messages it never
/// read (the kernel then reports the connection reset, not its end): `recv` and `send` give
/// `Closed`, as for a holder that read everything.
async fn eof_after_holder_is_killed_with_messages_unread() -> TestResult {
    let (a, b) = mp::Pipe::<u32>::new()?;
    let (never_keep, never) = mp::Pipe::<u32>::new()?;
    let mut p = start(hold, (b, never)).await?;
    a.send(&1).await?;
    p.kill()?;
    ensure!(join_code(&mut p).await? == -9, "killed by SIGKILL");
    let r = a.recv_timeout(Duration::from_secs(20)).await;
    ensure!(matches!(r, Err(mp::Error::Closed)), "recv: {r:?}");
    ensure!(
        a.poll(Duration::ZERO).await?,
        "poll is true at end of stream"
    );
    let r = a.send(&2).await;
    ensure!(matches!(r, Err(mp::Error::Closed)), "send: {r:?}");
    drop(never_keep);
    Ok(())
}

/// `_TestConnection.test_duplex_false`: a simplex pipe receives on one end and sends on the
/// other only.
async fn simplex_directions() -> TestResult {
    let (r, w) = mp::Pipe::<u32>::simplex()?;
    ensure!(
        r.readable() && !r.writable() && w.writable() && !w.readable(),
        "flags"
    );
    ensure!(r.send(&1).await.is_err(), "the reader cannot send");
    ensure!(w.recv().await.is_err(), "the writer cannot receive");
    let mut p = start(send_and_drop, (w, 3u32)).await?;
    for i in 0..3 {
        ensure!(r.recv().await? == i, "message {i}");
    }
    ensure!(matches!(r.recv().await, Err(mp::Error::Closed)), "EOF");
    ensure!(join_code(&mut p).await? == 0, "sender");
    Ok(())
}

/// `_TestConnection.test_sendbytes` / garbage: bytes that are not a `T` give a decode error,
/// and the connection stays usable.
async fn garbage_is_a_decode_error() -> TestResult {
    let (a, b) = mp::Pipe::<(u32, String)>::new()?;
    a.send_bytes(&[0xc1, 0xff, 0x00]).await?;
    a.send(&(1, "fine".to_string())).await?;
    ensure!(
        matches!(b.recv().await, Err(mp::Error::Decode { .. })),
        "decode error"
    );
    ensure!(b.recv().await? == (1, "fine".to_string()), "next message");
    Ok(())
}

/// Polls `send`, a send of a message far larger than the socket holds to `peer`, which is
/// not reading, until the socket has taken part of it (`peer` sees a message begin), then
/// drops it midway. A first poll alone may write nothing: the reactor may not have reported
/// the socket writable yet.
async fn drop_once_begun<T: serde::Serialize + serde::de::DeserializeOwned>(
    send: impl std::future::Future<Output = mp::Result<()>>,
    peer: &mp::Connection<T>,
) -> TestResult {
    let mut send = std::pin::pin!(send);
    for _ in 0..10_000 {
        ensure!(
            futures::poll!(send.as_mut()).is_pending(),
            "a send larger than the socket holds went through to a peer that is not reading"
        );
        if peer.poll(Duration::ZERO).await? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err("the send never began".into())
}

/// A send dropped midway (a timeout around the send of a message larger than the socket
/// holds, to a peer that is not reading yet) leaves the stream whole: the next send writes
/// the rest of that message before its own, and the peer receives both, each whole.
async fn a_send_dropped_midway_leaves_the_stream_whole() -> TestResult {
    const LEN: usize = 16 << 20;
    let (a, b) = mp::Pipe::<Vec<u8>>::new()?;
    let big: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8).collect();
    drop_once_begun(a.send(&big), &b).await?;
    let receiving = async {
        let first = b.recv_timeout(Duration::from_secs(20)).await;
        let second = b.recv_timeout(Duration::from_secs(20)).await;
        (first, second)
    };
    let small = vec![1, 2, 3];
    let (sent, (first, second)) = tokio::join!(a.send(&small), receiving);
    sent?;
    match first {
        Ok(v) => ensure!(v == big, "the dropped send's message came altered"),
        Err(e) => return Err(format!("the first message: {e}").into()),
    }
    ensure!(second? == small, "the next message");
    Ok(())
}

/// A value with large byte strings between small fields, as a pipe sends them.
type Strings = (String, serde_bytes::ByteBuf, u32, serde_bytes::ByteBuf);

fn strings(len: usize, seed: u32) -> Strings {
    let bytes = |k: u32| {
        serde_bytes::ByteBuf::from(
            (0..len)
                .map(|i| (i as u32).wrapping_mul(31).wrapping_add(k) as u8)
                .collect::<Vec<u8>>(),
        )
    };
    (format!("head {seed}"), bytes(seed), seed, bytes(seed + 1))
}

/// Large byte strings inside a value (sent from where they lie while the socket takes them,
/// copied once it is full) arrive whole: to a peer that reads as they come, and to one that
/// reads only after a send was dropped midway (the next send finishes that message first).
async fn large_byte_strings_arrive_whole() -> TestResult {
    let (a, b) = mp::Pipe::<Strings>::new()?;
    // Read as they come: each fits the socket, or not, and is followed by a small one.
    for (i, len) in [64 * 1024, (1 << 20) + 3, 9 << 20].into_iter().enumerate() {
        let value = strings(len, i as u32);
        let small = strings(3, 100 + i as u32);
        let receiving = async {
            let first = b.recv_timeout(Duration::from_secs(20)).await;
            (first, b.recv_timeout(Duration::from_secs(20)).await)
        };
        let (sent, (first, second)) = tokio::join!(
            async {
                a.send(&value).await?;
                a.send(&small).await
            },
            receiving
        );
        sent?;
        ensure!(
            first? == value,
            "a value of {len}-byte strings came altered"
        );
        ensure!(second? == small, "the small value after {len}-byte strings");
    }
    // Dropped midway, to a peer that is not reading.
    let big = strings(16 << 20, 7);
    drop_once_begun(a.send(&big), &b).await?;
    let small = strings(1, 8);
    let receiving = async {
        let first = b.recv_timeout(Duration::from_secs(20)).await;
        (first, b.recv_timeout(Duration::from_secs(20)).await)
    };
    let (sent, (first, second)) = tokio::join!(a.send(&small), receiving);
    sent?;
    ensure!(first? == big, "the dropped send's message came altered");
    ensure!(second? == small, "the next message");
    Ok(())
}

/// Receives dropped wherever a short timeout finds them, while a message larger than the
/// socket holds arrives (its payload read apart from its first bytes), leave the stream
/// whole: the message arrives whole, and the one after it.
async fn receives_dropped_in_a_large_message_leave_the_stream_whole() -> TestResult {
    let (a, b) = mp::Pipe::<serde_bytes::ByteBuf>::new()?;
    let big =
        serde_bytes::ByteBuf::from((0..9 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let small = serde_bytes::ByteBuf::from(vec![3u8; 10]);
    let sending = async {
        a.send(&big).await?;
        a.send(&small).await
    };
    let receiving = async {
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(Duration::from_micros(200), b.recv()).await {
                Ok(v) => got.push(v?),
                Err(_) => tokio::task::yield_now().await,
            }
        }
        Ok::<_, mp::Error>(got)
    };
    let (sent, got) = tokio::join!(sending, receiving);
    sent?;
    let got = got?;
    ensure!(got[0] == big, "the large message came altered");
    ensure!(got[1] == small, "the message after it");
    Ok(())
}

/// A value whose `Serialize` fails on its `fail_on`-th call (counting every call), after its
/// large byte string.
#[derive(Debug, Default, serde::Deserialize)]
struct Flaky {
    bytes: serde_bytes::ByteBuf,
    tail: u8,
    #[serde(skip)]
    fail_on: std::sync::atomic::AtomicU32,
    #[serde(skip)]
    calls: std::sync::atomic::AtomicU32,
}

impl serde::Serialize for Flaky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        use std::sync::atomic::Ordering::Relaxed;
        let call = self.calls.fetch_add(1, Relaxed) + 1;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.bytes)?;
        if call == self.fail_on.load(Relaxed) {
            return Err(S::Error::custom("fails this time"));
        }
        t.serialize_element(&self.tail)?;
        t.end()
    }
}

/// A value whose encoding fails, on the pass that measures it or on the one that sends its
/// large byte string straight to the socket, fails its send with an encoding error; the
/// peer receives nothing of it (the first case) or a message that fails to decode (the
/// second), and the messages after it whole.
async fn an_encoding_that_fails_midway_spoils_only_its_message() -> TestResult {
    let (a, b) = mp::Pipe::<Flaky>::new()?;
    let flaky = |fail_on: u32| Flaky {
        bytes: serde_bytes::ByteBuf::from(vec![5u8; 1 << 20]),
        tail: 9,
        fail_on: fail_on.into(),
        ..Flaky::default()
    };
    for fail_on in [2, 3] {
        let e = a.send(&flaky(fail_on)).await.unwrap_err();
        ensure!(matches!(e, mp::Error::Encode { .. }), "{e}");
        let next = flaky(0);
        let (sent, got) = tokio::join!(a.send(&next), b.recv_timeout(Duration::from_secs(20)));
        sent?;
        let got = match (fail_on, got) {
            (2, got) => got?,
            (_, Err(mp::Error::Decode { .. })) => b.recv_timeout(Duration::from_secs(20)).await?,
            (_, got) => return Err(format!("the spoiled message came as {got:?}").into()),
        };
        ensure!(
            got.bytes.len() == 1 << 20 && got.tail == 9,
            "the next message"
        );
    }
    Ok(())
}

/// `_TestConnection.test_large_fd_transfer`-style: a 16 MiB message crosses whole.
async fn large_message() -> TestResult {
    const LEN: u64 = 16 << 20;
    let (a, b) = mp::Pipe::<Vec<u8>>::new()?;
    let mut p = start(send_big, (b, LEN)).await?;
    let v = a.recv_timeout(Duration::from_secs(20)).await?;
    ensure!(v.len() == LEN as usize, "length {}", v.len());
    ensure!(
        v.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8),
        "content"
    );
    ensure!(join_code(&mut p).await? == 0, "sender");
    Ok(())
}

/// `_TestPicklingConnections` / `test_fd_transfer`: a pipe end sent through a pipe works in
/// the process that received it.
async fn pipe_end_through_a_pipe() -> TestResult {
    let (carrier_mine, carrier_theirs) = mp::Pipe::<mp::Connection<String>>::new()?;
    let (mine, theirs) = mp::Pipe::<String>::new()?;
    let mut p = start(forward_end, (carrier_theirs,)).await?;
    carrier_mine.send(&theirs).await?;
    drop(theirs);
    ensure!(
        mine.recv_timeout(Duration::from_secs(20)).await? == "through a pipe",
        "message"
    );
    ensure!(join_code(&mut p).await? == 0, "forwarder");
    ensure!(
        matches!(mine.recv().await, Err(mp::Error::Closed)),
        "EOF: the only other copy was the child's"
    );
    Ok(())
}

/// Receives a file's descriptor on `conn` and writes "bar" to the file
/// (`_TestConnection._writefd`).
async fn write_bar_to_sent_fd(conn: mp::Connection<mp::Fd>) -> Result<(), String> {
    use std::io::Write;
    let fd = conn.recv().await.map_err(|e| e.to_string())?;
    let mut file = std::fs::File::from(fd.into_owned());
    file.write_all(b"bar").map_err(|e| e.to_string())
}

/// `_TestConnection.test_large_fd_transfer` and `test_fd_transfer`: a descriptor numbered
/// above 256 crosses a pipe to a child, which writes through it to the parent's file.
async fn a_descriptor_numbered_past_256_travels_through_a_pipe() -> TestResult {
    let path = support::temp_path("large-fd");
    // Open descriptors until the next is numbered past 256, as Python's test dup2()s to one.
    let mut held = Vec::new();
    let file = loop {
        let file = std::fs::File::create(&path)?;
        if file.as_raw_fd() > 256 {
            break file;
        }
        held.push(file);
    };
    drop(held);
    let (mine, theirs) = mp::Pipe::<mp::Fd>::new()?;
    let mut p = start(write_bar_to_sent_fd, (theirs,)).await?;
    mine.send(&mp::Fd::from(std::os::fd::OwnedFd::from(file)))
        .await?;
    ensure!(join_code(&mut p).await? == 0, "the child failed");
    let written = std::fs::read_to_string(&path)?;
    ensure!(written == "bar", "the file holds {written:?}");
    Ok(())
}

/// `_TestWait.test_wait` / `test_wait_timeout` / sentinels: `wait` returns the ready ones
/// among connections, queues and processes, and an empty list after its timeout.
async fn wait_on_connections_queues_and_sentinels() -> TestResult {
    let (c0, c0_child) = mp::Pipe::<u32>::new()?;
    let (go0, go0_child) = mp::Pipe::<u32>::new()?;
    let (go1, go1_child) = mp::Pipe::<u32>::new()?;
    let q = mp::Queue::<u32>::new()?;
    let mut sender = start(send_after, (c0_child, go0_child, 7u32)).await?;
    let mut ender = start(exit_on_signal, (go1_child,)).await?;
    let none = mp::wait(&[&c0, &q, &ender], Some(Duration::from_millis(200))).await?;
    ensure!(none.is_empty(), "nothing is ready yet: {none:?}");
    go0.send(&1).await?;
    let ready = mp::wait(&[&c0, &q, &ender], Some(Duration::from_secs(20))).await?;
    ensure!(ready == vec![0], "the connection: {ready:?}");
    ensure!(c0.recv().await? == 7, "value");
    ensure!(join_code(&mut sender).await? == 0, "sender");
    let ready = mp::wait(&[&c0, &q, &ender], Some(Duration::from_secs(20))).await?;
    ensure!(ready == vec![0], "end of stream is ready: {ready:?}");
    go1.send(&1).await?;
    let ready = mp::wait(&[&q, &ender], Some(Duration::from_secs(20))).await?;
    ensure!(ready == vec![1], "the sentinel: {ready:?}");
    q.put(5).await?;
    let ready = mp::wait(&[&q], None).await?;
    ensure!(ready == vec![0], "the queue: {ready:?}");
    ensure!(q.get().await? == 5, "item");
    ensure!(join_code(&mut ender).await? == 0, "ender");
    Ok(())
}

/// `_TestConnection.test_boundaries`: a child that only polls a shared read end (with
/// `poll`, then `wait`) takes nothing from it, so the parent then receives every message,
/// whole and in order, before end of stream.
async fn poll_in_another_process_takes_nothing() -> TestResult {
    let (r, w) = mp::Pipe::<u32>::simplex()?;
    let (carrier, carrier_child) = mp::Pipe::<mp::Connection<u32>>::new()?;
    let mut p = start(only_poll, (carrier_child,)).await?;
    // The child gets its own descriptor for the read end; the parent keeps its own.
    carrier.send(&r).await?;
    for m in [&b"first"[..], b"second"] {
        w.send_bytes(m).await?;
    }
    drop(w);
    ensure!(
        join_code(&mut p).await? == 0,
        "the child saw the pipe ready"
    );
    for m in [&b"first"[..], b"second"] {
        let got = r.recv_bytes().await?;
        ensure!(
            got == m,
            "got {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(m)
        );
    }
    ensure!(
        matches!(r.recv_bytes().await, Err(mp::Error::Closed)),
        "then end of stream"
    );
    Ok(())
}

/// A child that receives one message from a shared read end takes that message only: the
/// messages behind it stay in the socket for the next reader, here the parent.
async fn recv_in_another_process_takes_one_message() -> TestResult {
    let (r, w) = mp::Pipe::<u32>::simplex()?;
    let (back, back_child) = mp::Pipe::<Vec<u8>>::new()?;
    for m in [&b"one"[..], b"two", b"three"] {
        w.send_bytes(m).await?;
    }
    drop(w);
    let (carrier, carrier_child) = mp::Pipe::<mp::Connection<u32>>::new()?;
    let mut p = start(recv_one, (carrier_child, back_child)).await?;
    carrier.send(&r).await?;
    ensure!(
        back.recv_timeout(Duration::from_secs(20)).await? == b"one",
        "the child's message"
    );
    ensure!(join_code(&mut p).await? == 0, "receiver");
    for m in [&b"two"[..], b"three"] {
        let got = r.recv_bytes().await?;
        ensure!(
            got == m,
            "got {:?}, expected {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(m)
        );
    }
    ensure!(
        matches!(r.recv_bytes().await, Err(mp::Error::Closed)),
        "then end of stream"
    );
    Ok(())
}

/// `OtherTest.test_deliver_challenge_auth_failure` and `test_answer_challenge_auth_failure`,
/// and `ChallengeResponseTest.test_challengeresponse`, on a pipe: with the same key, a child answers the parent's challenge and challenges it
/// in turn, and messages flow after; with another key, each side fails with an
/// authentication error, and a simplex end is refused.
async fn challenges_on_a_pipe() -> TestResult {
    const KEY: &[u8] = b"a shared secret";
    let (ours, theirs) = mp::Pipe::<String>::new()?;
    let mut p = start(answer_then_echo, (theirs, KEY.to_vec())).await?;
    ours.deliver_challenge(KEY).await?;
    ours.answer_challenge(KEY).await?;
    ours.send(&"hello".to_string()).await?;
    ensure!(
        ours.recv_timeout(Duration::from_secs(20)).await? == "echo: hello",
        "no echo after the exchange"
    );
    ensure!(join_code(&mut p).await? == 0, "the child's side failed");

    let (a, b) = mp::Pipe::<String>::new()?;
    let (delivered, answered) =
        tokio::join!(a.deliver_challenge(KEY), b.answer_challenge(b"another key"));
    ensure!(
        matches!(delivered, Err(mp::Error::Authentication { .. }))
            && matches!(answered, Err(mp::Error::Authentication { .. })),
        "with another key: {delivered:?}, {answered:?}"
    );
    let (r, w) = mp::Pipe::<String>::simplex()?;
    for end in [&r, &w] {
        ensure!(
            matches!(
                end.deliver_challenge(KEY).await,
                Err(mp::Error::InvalidArgument(_))
            ),
            "a simplex end took part in a challenge"
        );
    }
    Ok(())
}

/// No CPython case: Python's `poll(None)`, a poll without a time limit (`Duration::MAX`
/// here), waits until a message comes, and takes nothing.
async fn poll_without_a_time_limit_waits_for_a_message() -> TestResult {
    let (r, w) = mp::Pipe::<u32>::simplex()?;
    let (go_r, go_w) = mp::Pipe::<u32>::simplex()?;
    let mut p = start(send_after, (w, go_r, 42)).await?;
    ensure!(
        !r.poll(Duration::ZERO).await?,
        "a message before the child was told"
    );
    let (polled, told) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(20), r.poll(Duration::MAX)),
        go_w.send(&1)
    );
    told?;
    ensure!(matches!(polled, Ok(Ok(true))), "poll(MAX): {polled:?}");
    ensure!(r.recv().await? == 42, "the message polled");
    ensure!(join_code(&mut p).await? == 0, "the child");
    Ok(())
}

/// A process sent more descriptors than its limit lets it open (a queue, past `ulimit -n`)
/// gets an error that names the limit, and the descriptors the kernel did install for it
/// are closed with the connection, not leaked.
async fn descriptors_past_the_limit_are_an_error_naming_it() -> TestResult {
    let (carrier_mine, carrier_theirs) = mp::Pipe::<mp::Queue<u8>>::new()?;
    let (out_mine, out_theirs) = mp::Pipe::<String>::new()?;
    let mut p = start(recv_queue_near_the_limit, (carrier_theirs, out_theirs)).await?;
    carrier_mine.send(&mp::Queue::<u8>::new()?).await?;
    let report = out_mine.recv_timeout(Duration::from_secs(20)).await?;
    let lines: Vec<&str> = report.lines().collect();
    let [said, before, after] = lines[..] else {
        return Err(format!("the child's report: {report:?}").into());
    };
    ensure!(
        said.contains("descriptors") && said.contains("RLIMIT_NOFILE"),
        "the child's error: {said:?}"
    );
    let (before, after): (u64, u64) = (before.parse()?, after.parse()?);
    ensure!(
        after < before,
        "{before} descriptors open before, {after} after the connection was dropped"
    );
    ensure!(join_code(&mut p).await? == 0, "the child");
    Ok(())
}

/// A value that owns descriptors, sent by a process with none to spare, fails with the
/// system's error (`Error::Io`, "Too many open files", as Python's pickling of a connection
/// raises `OSError`), not as a value that cannot be encoded; nothing is sent, and the same
/// send succeeds once descriptors are free.
async fn a_send_out_of_descriptors_is_an_io_error() -> TestResult {
    let (a, b) = mp::Pipe::<mp::Event>::new()?;
    let event = mp::Event::new()?;
    let mut p = start(send_event_without_spare_descriptors, (a, event.clone())).await?;
    let got = b.recv_timeout(Duration::from_secs(20)).await?;
    got.set();
    ensure!(event.is_set(), "the event received is another");
    ensure!(join_code(&mut p).await? == 0, "the child");
    let after = b.recv_timeout(Duration::from_secs(20)).await;
    ensure!(
        matches!(after, Err(mp::Error::Closed)),
        "a second message: {after:?}"
    );
    Ok(())
}

/// A message that holds a descriptor and many bytes arrives whole, however the kernel splits
/// it: a read stops after the bytes that carry the descriptor, which does not mean the rest
/// is not there.
async fn a_large_message_with_a_descriptor_arrives() -> TestResult {
    type Msg = (mp::Fd, serde_bytes::ByteBuf);
    let (a, b) = mp::Pipe::<Msg>::new()?;
    for len in [1_000, 60_000, 150_000, 4 << 20] {
        let file = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null")?);
        let msg = (
            mp::Fd::from(file),
            serde_bytes::ByteBuf::from(vec![7u8; len]),
        );
        // Sent and received at once: the larger messages do not fit the socket's buffer.
        let (sent, got) = tokio::join!(a.send(&msg), b.recv_timeout(Duration::from_secs(20)));
        sent?;
        let (_, got) = got.map_err(|e| format!("{len} bytes with a descriptor: {e}"))?;
        ensure!(
            got.len() == len && got.iter().all(|&x| x == 7),
            "{len} bytes"
        );
    }
    Ok(())
}

/// Round trips over a pipe on `rt`, one with a message large enough to fill the socket, and
/// a `poll` that must wait for a send that comes later.
fn pipe_round_trips_on(
    rt: &tokio::runtime::Runtime,
    a: &mp::Connection<Vec<u8>>,
    b: &mp::Connection<Vec<u8>>,
) -> Result<(), String> {
    let trips = async {
        let step = |what: &str, e: &mp::Error| format!("{what}: {e}");
        for len in [10, 4_000_000] {
            let big = vec![3; len];
            let (sent, got) = tokio::join!(a.send(&big), b.recv());
            sent.map_err(|e| step("send", &e))?;
            if got.map_err(|e| step("recv", &e))? != big {
                return Err(format!("a message of {len} bytes came back altered"));
            }
        }
        let later = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.send(&vec![7]).await
        };
        let (sent, polled) = tokio::join!(later, a.poll(Duration::from_secs(10)));
        sent.map_err(|e| step("send", &e))?;
        match polled {
            Ok(true) => {}
            other => return Err(format!("poll for a message sent later: {other:?}")),
        }
        match a.recv().await {
            Ok(v) if v == [7] => Ok(()),
            other => Err(format!("recv of a message sent later: {other:?}")),
        }
    };
    rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(20), trips).await {
            Ok(r) => r,
            Err(_) => Err("still waiting after 20 s".to_string()),
        }
    })
}

/// A pipe used on one runtime, then on a second while the first is alive and idle, then on
/// a third once both are gone: each runtime's waits are woken, and none fails.
async fn a_pipe_serves_one_runtime_after_another() -> TestResult {
    let (a, b) = mp::Pipe::<Vec<u8>>::new()?;
    support::runtimes::on_runtimes_in_turn(move |rt| pipe_round_trips_on(rt, &a, &b)).await
}

/// An end awaited by two runtimes at once: a receive waits on A while B polls the end,
/// and a second receive then waits on A beside the first; both take a message.
async fn a_pipe_serves_two_runtimes_at_once() -> TestResult {
    let (a, b) = mp::Pipe::<u32>::new()?;
    let mut got = tokio::task::spawn_blocking(move || {
        support::runtimes::a_wait_on_a_beside_a_turn_on_b(
            || b.recv(),
            || async {
                match b.poll(Duration::from_millis(20)).await {
                    Ok(false) => Ok(()),
                    other => Err(format!("a poll of an end with nothing sent: {other:?}")),
                }
            },
            || async {
                a.send(&1).await?;
                a.send(&2).await
            },
        )
    })
    .await??;
    got.sort_unstable();
    ensure!(got == [1, 2], "A got {got:?}");
    Ok(())
}

/// A loop of receives from an end that always has a message waiting (a producer that keeps
/// up), of polls and of `wait`s on it, lets the runtime's other tasks run: on a
/// current-thread runtime, a task spawned before the loop runs while the loop goes on, as it
/// would beside a loop on one of tokio's channels.
async fn a_loop_on_an_end_with_messages_waiting_lets_other_tasks_run() -> TestResult {
    // More than tokio's budget of 128 a turn, and few enough for a socket's buffer to hold
    // (some 270 small messages, at the default send buffer size).
    const ROUNDS: u32 = 200;
    const KINDS: [&str; 5] = ["recv", "recv_bytes", "recv_timeout", "poll", "wait"];
    let mut pipes = Vec::new();
    for _ in KINDS {
        let (a, b) = mp::Pipe::<u32>::new()?;
        for i in 0..ROUNDS {
            a.send(&i).await?;
        }
        pipes.push((a, b));
    }
    let pipes = &pipes;
    support::none_starve(&KINDS, ROUNDS, |what, n| async move {
        let i = KINDS.iter().position(|k| *k == what).unwrap_or(0);
        let b = &pipes[i].1;
        match what {
            "recv" => ensure!(b.recv().await? == n, "recv: round {n}"),
            "recv_bytes" => ensure!(!b.recv_bytes().await?.is_empty(), "recv_bytes"),
            "recv_timeout" => {
                let got = b.recv_timeout(Duration::from_secs(10)).await?;
                ensure!(got == n, "recv_timeout: round {n} got {got}")
            }
            "poll" => ensure!(b.poll(Duration::ZERO).await?, "poll: no message"),
            _ => ensure!(mp::wait(&[b], None).await? == [0], "wait: not ready"),
        }
        Ok(())
    })
    .await
}

/// Sends `0..n` on `w`, then exits (its end closes).
async fn send_count(w: mp::Connection<u32>, n: u32) -> mp::Result<()> {
    for i in 0..n {
        w.send(&i).await?;
    }
    Ok(())
}

/// An end's stream yields each message the other end sent, in order, then ends once the
/// writer has exited (Python's `EOFError`), even with messages waiting when it did.
async fn an_end_as_a_stream_yields_every_message_then_ends_at_eof() -> TestResult {
    use futures::StreamExt;
    let (r, w) = mp::Pipe::<u32>::simplex()?;
    let mut writer = start(send_count, (w, 500)).await?;
    join_ok(&mut writer).await?;
    let got = tokio::time::timeout(Duration::from_secs(30), r.into_stream().collect::<Vec<_>>())
        .await?
        .into_iter()
        .collect::<mp::Result<Vec<u32>>>()?;
    ensure!(
        got == (0..500).collect::<Vec<_>>(),
        "the stream gave {got:?}"
    );
    Ok(())
}

/// A `u32` that refuses to be encoded when it is 13.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
struct NotThirteen(u32);

impl serde::Serialize for NotThirteen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            13 => Err(serde::ser::Error::custom("13 is not sent")),
            n => s.serialize_u32(n),
        }
    }
}

/// Collects what `r` receives until the end of stream, then sends it all back on `back`.
async fn collect_until_eof(
    r: mp::Connection<NotThirteen>,
    back: mp::Connection<Vec<u32>>,
) -> mp::Result<()> {
    use futures::StreamExt;
    let got = r.into_stream().collect::<Vec<_>>().await;
    let got = got
        .into_iter()
        .map(|v| v.map(|v| v.0))
        .collect::<mp::Result<_>>()?;
    back.send(&got).await
}

/// An end as a sink sends each value in order; a value that cannot be encoded comes back
/// with its error and costs only itself; closing the sink lets go of the end, so the other
/// process sees the end of stream.
async fn an_end_as_a_sink_sends_in_order_and_its_close_is_eof() -> TestResult {
    use futures::SinkExt;
    let (r, w) = mp::Pipe::<NotThirteen>::simplex()?;
    let (back_r, back_w) = mp::Pipe::<Vec<u32>>::simplex()?;
    let mut reader = start(collect_until_eof, (r, back_w)).await?;
    let mut sink = w.into_sink();
    for i in 0..20 {
        match sink.send(NotThirteen(i)).await {
            Ok(()) => ensure!(i != 13, "13 was sent"),
            Err(e) => {
                let (e, value) = e.into_parts();
                ensure!(
                    i == 13 && value == NotThirteen(13) && matches!(e, mp::Error::Encode { .. }),
                    "value {i}: {e:?}, {value:?}"
                );
            }
        }
    }
    sink.close().await?;
    let got = back_r.recv_timeout(Duration::from_secs(30)).await?;
    let want: Vec<u32> = (0..20).filter(|&i| i != 13).collect();
    ensure!(got == want, "the other end got {got:?}");
    join_ok(&mut reader).await
}

fn main() {
    mp::init();
    run(vec![
        test("duplex_round_trips", duplex_round_trips),
        test(
            "an_end_as_a_sink_sends_in_order_and_its_close_is_eof",
            an_end_as_a_sink_sends_in_order_and_its_close_is_eof,
        ),
        test(
            "a_pipe_serves_one_runtime_after_another",
            a_pipe_serves_one_runtime_after_another,
        ),
        test(
            "a_pipe_serves_two_runtimes_at_once",
            a_pipe_serves_two_runtimes_at_once,
        ),
        test("recv_bytes_into_a_buffer", recv_bytes_into_a_buffer),
        test(
            "a_send_out_of_descriptors_is_an_io_error",
            a_send_out_of_descriptors_is_an_io_error,
        ),
        test("eof_after_writer_exits", eof_after_writer_exits),
        test(
            "an_end_as_a_stream_yields_every_message_then_ends_at_eof",
            an_end_as_a_stream_yields_every_message_then_ends_at_eof,
        ),
        test("eof_after_holder_is_killed", eof_after_holder_is_killed),
        test(
            "eof_after_holder_is_killed_with_messages_unread",
            eof_after_holder_is_killed_with_messages_unread,
        ),
        test("simplex_directions", simplex_directions),
        support::test_current_thread(
            "a_loop_on_an_end_with_messages_waiting_lets_other_tasks_run",
            a_loop_on_an_end_with_messages_waiting_lets_other_tasks_run,
        ),
        test("challenges_on_a_pipe", challenges_on_a_pipe),
        test(
            "poll_without_a_time_limit_waits_for_a_message",
            poll_without_a_time_limit_waits_for_a_message,
        ),
        test("garbage_is_a_decode_error", garbage_is_a_decode_error),
        test("large_message", large_message),
        test(
            "large_byte_strings_arrive_whole",
            large_byte_strings_arrive_whole,
        ),
        test(
            "receives_dropped_in_a_large_message_leave_the_stream_whole",
            receives_dropped_in_a_large_message_leave_the_stream_whole,
        ),
        test(
            "an_encoding_that_fails_midway_spoils_only_its_message",
            an_encoding_that_fails_midway_spoils_only_its_message,
        ),
        test(
            "a_send_dropped_midway_leaves_the_stream_whole",
            a_send_dropped_midway_leaves_the_stream_whole,
        ),
        test("pipe_end_through_a_pipe", pipe_end_through_a_pipe),
        test(
            "a_descriptor_numbered_past_256_travels_through_a_pipe",
            a_descriptor_numbered_past_256_travels_through_a_pipe,
        ),
        test(
            "wait_on_connections_queues_and_sentinels",
            wait_on_connections_queues_and_sentinels,
        ),
        test(
            "poll_in_another_process_takes_nothing",
            poll_in_another_process_takes_nothing,
        ),
        test(
            "recv_in_another_process_takes_one_message",
            recv_in_another_process_takes_one_message,
        ),
        test(
            "a_large_message_with_a_descriptor_arrives",
            a_large_message_with_a_descriptor_arrives,
        ),
        test(
            "descriptors_past_the_limit_are_an_error_naming_it",
            descriptors_past_the_limit_are_an_error_naming_it,
        ),
    ])
}
