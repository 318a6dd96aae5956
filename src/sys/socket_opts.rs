//! Options of a socket every holder of it shares: its send buffer, its listen backlog, how
//! soon a silent TCP peer counts as gone, and shutting a direction down.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use nix::sys::socket::{Backlog, Shutdown, listen, setsockopt, shutdown, sockopt};

/// Asks for a send buffer of `bytes`: beyond the administrator's limit when the process may
/// (`SO_SNDBUFFORCE`, root), else up to it (`SO_SNDBUF`, capped by `net.core.wmem_max`).
pub(crate) fn grow_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    if setsockopt(&fd, sockopt::SndBufForce, &bytes).is_ok() {
        return Ok(());
    }
    let max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(bytes);
    Ok(setsockopt(&fd, sockopt::SndBuf, &bytes.min(max))?)
}

/// Sets how many connections a listening socket queues before they are accepted (a second
/// `listen` on a listening socket changes its backlog). A value over `SOMAXCONN` is capped
/// to it, as the kernel caps any to `net.core.somaxconn`; `None` asks for the kernel's most,
/// `net.core.somaxconn` itself (the standard library's TCP listener asks for 128).
pub(crate) fn set_listen_backlog(fd: BorrowedFd<'_>, backlog: Option<u32>) -> io::Result<()> {
    let backlog = match backlog {
        Some(b) => {
            let most = i32::from(Backlog::MAXCONN);
            Backlog::new(i32::try_from(b).map_or(most, |b| b.min(most)))?
        }
        None => Backlog::MAXALLOWABLE,
    };
    Ok(listen(&fd, backlog)?)
}

/// Makes a TCP connection fail, with `ETIMEDOUT`, once its peer has answered nothing for
/// `deadline`, where the kernel waits some 15 minutes (for data it sent) or for ever (for
/// data it waits for): idle, it probes the peer (`SO_KEEPALIVE`) after a quarter of the
/// deadline (at least 1 s) and every quarter from then on, and it gives up once neither a
/// probe nor its data has been answered for the deadline (`TCP_USER_TIMEOUT`, which rules
/// both).
///
/// The kernel takes a probe interval of at most [`MAX_KEEPALIVE_INTERVAL`] seconds,
/// [`MAX_KEEPALIVE_PROBES`] probes and a user timeout of at most `i32::MAX` milliseconds
/// (some 24.8 days), and refuses more with `EINVAL`: a longer deadline (up to
/// `Duration::MAX`) is asked for with more probes at the longest interval, and counts as
/// some 24.8 days at most.
pub(crate) fn fail_when_silent(fd: BorrowedFd<'_>, deadline: Duration) -> io::Result<()> {
    let secs = deadline.as_secs();
    // Four quarters (the idle time and three probes) cover the deadline; at the longest
    // interval, as many probes as the deadline holds, within the kernel's most.
    let (quarter, probes) = match secs / 4 {
        q if q > MAX_KEEPALIVE_INTERVAL => (
            MAX_KEEPALIVE_INTERVAL,
            (secs / MAX_KEEPALIVE_INTERVAL - 1).min(MAX_KEEPALIVE_PROBES),
        ),
        q => (q.max(1), 3),
    };
    let quarter = u32::try_from(quarter).unwrap_or(u32::MAX);
    let probes = u32::try_from(probes).unwrap_or(u32::MAX);
    let millis = i32::try_from(deadline.as_millis())
        .unwrap_or(i32::MAX)
        .max(1)
        .unsigned_abs();
    setsockopt(&fd, sockopt::TcpKeepIdle, &quarter)?;
    setsockopt(&fd, sockopt::TcpKeepInterval, &quarter)?;
    setsockopt(&fd, sockopt::TcpKeepCount, &probes)?;
    setsockopt(&fd, sockopt::TcpUserTimeout, &millis)?;
    Ok(setsockopt(&fd, sockopt::KeepAlive, &true)?)
}

/// The longest idle time and probe interval, in seconds, the kernel takes for TCP
/// keep-alive (`MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`).
const MAX_KEEPALIVE_INTERVAL: u64 = 32_767;

/// The most keep-alive probes the kernel sends before it gives up (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_PROBES: u64 = 127;

/// Shuts one direction of a socket down for every holder of it.
pub(crate) fn shutdown_socket(fd: BorrowedFd<'_>, read: bool, write: bool) -> io::Result<()> {
    let how = match (read, write) {
        (true, true) => Shutdown::Both,
        (true, false) => Shutdown::Read,
        (false, true) => Shutdown::Write,
        (false, false) => return Ok(()),
    };
    Ok(shutdown(fd.as_raw_fd(), how)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;
    use std::os::fd::AsFd;

    #[test]
    fn any_deadline_is_taken_within_the_kernel_s_limits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        for (deadline, idle, probes) in [
            (Duration::from_millis(20), 1, 3),
            (Duration::from_secs(10), 2, 3),
            (Duration::from_secs(4 * 32_767), 32_767, 3),
            (Duration::from_secs(200_000), 32_767, 5),
            (Duration::from_secs(100 * 86_400), 32_767, 127),
            (Duration::MAX, 32_767, 127),
        ] {
            fail_when_silent(s.as_fd(), deadline).unwrap();
            assert_eq!(getsockopt(&s, sockopt::TcpKeepIdle).unwrap(), idle);
            assert_eq!(getsockopt(&s, sockopt::TcpKeepCount).unwrap(), probes);
            let millis = u32::try_from(deadline.as_millis().min(i32::MAX as u128)).unwrap();
            assert_eq!(
                getsockopt(&s, sockopt::TcpUserTimeout).unwrap(),
                millis.max(1)
            );
        }
    }
}
