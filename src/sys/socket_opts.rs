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
pub(crate) fn fail_when_silent(fd: BorrowedFd<'_>, deadline: Duration) -> io::Result<()> {
    let quarter = u32::try_from(deadline.as_secs() / 4)
        .unwrap_or(u32::MAX)
        .max(1);
    let millis = u32::try_from(deadline.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    setsockopt(&fd, sockopt::TcpKeepIdle, &quarter)?;
    setsockopt(&fd, sockopt::TcpKeepInterval, &quarter)?;
    setsockopt(&fd, sockopt::TcpKeepCount, &3)?;
    setsockopt(&fd, sockopt::TcpUserTimeout, &millis)?;
    Ok(setsockopt(&fd, sockopt::KeepAlive, &true)?)
}

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
