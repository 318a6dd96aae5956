//! A raw ping-pong of 8-byte messages between this process and a child, with no framing:
//! over a tokio Unix socket pair (the socket under a `Pipe` end), or over TCP loopback. The
//! floor under a round trip by the same transport, shared by the benches that time one.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_multiprocessing as mp;

/// The child's end: echoes 8-byte messages on the socket under `conn`, or, if `port` is not
/// 0, on a TCP connection to that port on loopback.
pub async fn echo(conn: mp::Connection<u64>, port: u16) {
    use std::os::fd::AsFd;
    if port != 0 {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) if s.set_nodelay(true).is_ok() => echo_on(s).await,
            _ => std::process::exit(3),
        }
        return;
    }
    let Ok(fd) = conn.as_fd().try_clone_to_owned() else {
        std::process::exit(3)
    };
    match tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)) {
        Ok(s) => echo_on(s).await,
        Err(_) => std::process::exit(3),
    }
}

async fn echo_on<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) {
    let mut buf = [0u8; 8];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Microseconds per round trip with a child running [`echo`], over TCP loopback if `tcp`,
/// else over a Unix socket pair: `warm_up` trips first, then `runs` runs of `trips` trips.
pub async fn round_trips(tcp: bool, warm_up: u64, trips: u64, runs: usize) -> mp::Result<Vec<f64>> {
    use std::os::fd::AsFd;
    let (a, b) = mp::Pipe::<u64>::new()?;
    let listener = match tcp {
        true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
        false => None,
    };
    let port = match &listener {
        Some(l) => l.local_addr()?.port(),
        None => 0,
    };
    let mut p = mp::Process::new(echo, (b, port)).start().await?;
    let r = match listener {
        Some(l) => {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            timed(s, warm_up, trips, runs).await
        }
        None => {
            let fd = a.as_fd().try_clone_to_owned()?;
            let std = std::os::unix::net::UnixStream::from(fd);
            timed(tokio::net::UnixStream::from_std(std)?, warm_up, trips, runs).await
        }
    };
    drop(a);
    p.join().await?;
    r
}

async fn timed<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut s: S,
    warm_up: u64,
    trips: u64,
    runs: usize,
) -> mp::Result<Vec<f64>> {
    let mut buf = [0u8; 8];
    for i in 0..warm_up {
        s.write_all(&i.to_le_bytes()).await?;
        s.read_exact(&mut buf).await?;
    }
    let mut out = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        for i in 0..trips {
            s.write_all(&i.to_le_bytes()).await?;
            s.read_exact(&mut buf).await?;
        }
        out.push(t.elapsed().as_secs_f64() * 1e6 / trips as f64);
    }
    Ok(out)
}
