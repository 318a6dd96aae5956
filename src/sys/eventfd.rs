//! eventfd: the descriptor that wakes waiters of the synchronisation primitives. epoll (and so
//! tokio's reactor) sees it readable while its counter is above zero, and every write is a new
//! readiness event for every epoll instance that watches it, in every process.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::eventfd::EfdFlags;

/// A new eventfd with counter 0, close-on-exec and non-blocking. With `semaphore`, each read
/// takes 1 off the counter (`EFD_SEMAPHORE`); otherwise a read takes the whole counter.
pub(crate) fn eventfd(semaphore: bool) -> io::Result<OwnedFd> {
    let mut flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
    if semaphore {
        flags |= EfdFlags::EFD_SEMAPHORE;
    }
    Ok(nix::sys::eventfd::EventFd::from_value_and_flags(0, flags)?.into())
}

/// Adds `n` to the counter.
pub(crate) fn eventfd_add(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    loop {
        match nix::unistd::write(fd, &n.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes from the counter (1 in semaphore mode, all of it otherwise); `WouldBlock` when it is 0.
pub(crate) fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Ok(_) => return Ok(u64::from_ne_bytes(b)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether `fd` is an eventfd, as `/proc/self/fd` names it (`anon_inode:[eventfd]`); `true`
/// where that cannot be read (no `/proc`), so that nothing is refused for want of a look.
pub(crate) fn is_eventfd(fd: BorrowedFd<'_>) -> bool {
    super::fd_target(fd).is_none_or(|t| t == "anon_inode:[eventfd]")
}
