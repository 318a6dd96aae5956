//! Descriptors: socket pairs, `SCM_RIGHTS` passing, duplication and bulk closing.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};

use super::cvt;

/// The most descriptors one `sendmsg` may carry (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// A connected pair of Unix stream sockets, both close-on-exec and blocking.
pub(crate) fn socketpair_stream() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags - OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// A close-on-exec duplicate of `fd`.
pub(crate) fn dup_fd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Fails unless this process can open one more descriptor now (a duplicate of `fd`, closed
/// at once), with an error that names its limit: for a receive that may carry descriptors,
/// which the kernel would drop, and the message with them.
pub(crate) fn descriptor_free(fd: BorrowedFd<'_>) -> io::Result<()> {
    match fd.try_clone_to_owned() {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => Err(io::Error::new(
            e.kind(),
            format!("no descriptor is free{}", out_of_descriptors()),
        )),
        Err(e) => Err(e),
    }
}

/// Sends `data`, with `fds` attached to its first byte. Returns how many bytes went out.
///
/// `MSG_NOSIGNAL`: a closed peer is an `EPIPE` error, never a `SIGPIPE`.
pub(crate) fn send_with_fds(fd: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    send_slices(fd, &[IoSlice::new(data)], fds)
}

/// [`send_with_fds`] of `head` followed by `data`, in one message.
pub(crate) fn send_headed_with_fds(
    fd: BorrowedFd<'_>,
    head: &[u8],
    data: &[u8],
    fds: &[RawFd],
) -> io::Result<usize> {
    send_slices(fd, &[IoSlice::new(head), IoSlice::new(data)], fds)
}

fn send_slices(fd: BorrowedFd<'_>, iov: &[IoSlice<'_>], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a message may carry at most {MAX_FDS_PER_MESSAGE} descriptors, this one holds {}",
                fds.len()
            ),
        ));
    }
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    Ok(sendmsg::<()>(
        fd.as_raw_fd(),
        iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?)
}

/// Receives into `buf`; descriptors that arrive are appended to `fds`, close-on-exec.
///
/// Returns the number of bytes read, 0 at end of stream. On a packet socket it receives one
/// packet; a packet longer than `buf`, or whose descriptors did not all fit, is an error (its
/// excess is lost, so the caller must treat it as a protocol breach).
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero `msghdr` is a valid empty one (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.capacity() as _;
    // SAFETY: `msg` points at one iovec covering `buf`, borrowed mutably here, and at the
    // `capacity` bytes of the control buffer `cmsg_space!` allocated (as nix's own `recvmsg`
    // uses it: a heap block, aligned for `cmsghdr` by the allocator); the kernel writes
    // within those lengths only.
    let n = cvt(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    // The descriptors the kernel installed are taken even when it could not install them
    // all (`MSG_CTRUNC`: this process at its limit, or more than the buffer holds): the
    // headers it wrote are whole and cover those only, and left unowned they would leak.
    // SAFETY: `msg` is as the kernel left it: `msg_control` holds `msg_controllen` bytes of
    // whole control messages, which the CMSG_* walk stays within.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: a non-null header from the walk lies whole within the control data.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: the data of a header within the control data, of `len` bytes counted
            // from the header's start.
            let data = unsafe { libc::CMSG_DATA(c) };
            // `cmsg_len` is a `size_t` with glibc, a `socklen_t` with musl.
            #[allow(clippy::unnecessary_cast)]
            let bytes = (len as usize).saturating_sub(data as usize - c as usize);
            for i in 0..bytes / std::mem::size_of::<RawFd>() {
                // SAFETY: the `i`-th descriptor within the message's data, read unaligned;
                // the kernel installed it in our table for this message, so nothing else
                // owns it yet.
                fds.push_back(unsafe {
                    OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.cast::<RawFd>().add(i)))
                });
            }
        }
        // SAFETY: as for the first header.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    // Only a datagram or packet socket truncates data: the rest of the packet is lost.
    let data_truncated = msg.msg_flags & libc::MSG_TRUNC != 0;
    if truncated {
        return Err(io::Error::other(format!(
            "descriptors sent with a message were dropped by the kernel (control data \
             truncated){}",
            out_of_descriptors()
        )));
    }
    if data_truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a packet was larger than announced and has been truncated",
        ));
    }
    Ok(n as usize)
}

/// Receives at most `max` bytes into the spare capacity of `buf` and appends them to it;
/// descriptors that arrive are appended to `fds`, as [`recv_with_fds`] does.
///
/// The spare capacity is not zeroed first: the kernel's copy is the only write to it, so a
/// large read costs one pass over its memory, not two. Returns the number of bytes read, 0
/// at end of stream.
pub(crate) fn recv_appending(
    fd: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    max: usize,
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    let max = max.min(spare.len());
    // SAFETY: `spare[..max]` lies within the vector's allocation, borrowed mutably here.
    // The byte slice made over it is written by the kernel's copy in `recvmsg` and read by
    // no one before the `set_len` below covers exactly the bytes written (the way tokio
    // reads into a `ReadBuf`'s unfilled part).
    let room = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), max) };
    let n = recv_with_fds(fd, room, fds)?;
    let len = buf.len() + n.min(max);
    // SAFETY: `recvmsg` copied `n` bytes (at most `max`, the room it was given) to the start
    // of the spare capacity, so the first `len` bytes are initialised, and `len` is within
    // the capacity.
    unsafe { buf.set_len(len) };
    Ok(n)
}

/// Whether a socket has something to read (data, end of stream or an error), checked
/// without reading and without blocking: a `MSG_PEEK | MSG_DONTWAIT` receive of one byte.
pub(crate) fn has_input(fd: BorrowedFd<'_>) -> bool {
    let mut byte = [0u8; 1];
    !matches!(
        nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Whether a socket is a Unix domain socket (rather than TCP, say).
pub(crate) fn is_unix_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let addr = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd.as_raw_fd())?;
    Ok(addr.as_unix_addr().is_some())
}

/// Blocks until a descriptor can be written to (or has failed: the write that follows says
/// how).
pub(crate) fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut pfd = [PollFd::new(fd, PollFlags::POLLOUT)];
        match poll(&mut pfd, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return r.map(drop).map_err(io::Error::from),
        }
    }
}

/// Whether the peer of a connected socket has closed it, or its end for writing, or the
/// connection failed: a `poll` for `POLLRDHUP` with no wait, which tells it even while
/// bytes the peer sent before wait unread.
pub(crate) fn peer_hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // nix knows no `POLLRDHUP`, and hides the events of a poll that reports one.
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one initialised pollfd, valid for the call, whose descriptor is
        // borrowed open; a zero timeout never blocks.
        match cvt(unsafe { libc::poll(&mut pfd, 1, 0) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
            Ok(_) => {
                return Ok(pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0);
            }
        }
    }
}

/// Copies the first bytes waiting on a socket into `buf` without taking them (`MSG_PEEK |
/// MSG_DONTWAIT`, no room for descriptors, so none are received). Returns how many bytes were
/// copied, 0 at end of stream; `WouldBlock` when nothing waits.
pub(crate) fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            buf,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Err(nix::errno::Errno::EINTR) => {}
            r => return Ok(r?),
        }
    }
}

/// Closes every descriptor from 3 up, except those in `keep` (which must be sorted).
///
/// Async-signal-safe: it allocates nothing and makes only `close_range` calls, so a freshly
/// forked child may call it.
pub(crate) fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut low: libc::c_uint = 3;
    for &k in keep {
        let Ok(k) = libc::c_uint::try_from(k) else {
            continue;
        };
        if k < low {
            continue;
        }
        if k > low {
            close_range(low, k - 1)?;
        }
        low = k + 1;
    }
    close_range(low, libc::c_uint::MAX)
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes integers by value; closing descriptors is memory safe (the
    // caller guarantees no live `OwnedFd` in this process will be used after this call).
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// Registers a descriptor with the current tokio runtime's reactor.
///
/// # Panics
/// Outside a tokio runtime, saying what to do (see [`crate::runtime::current`]).
pub(crate) fn register_owned(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    crate::runtime::current();
    // SAFETY: an `OwnedFd` keeps its descriptor open, and always returns the same number,
    // for as long as it lives, which is as long as the `AsyncFd` that owns it.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }?)
}

/// Registers a shared descriptor with the current tokio runtime's reactor.
///
/// A descriptor is registered once per reactor: a handle that registers anew on each
/// runtime that awaits it, while a wait of an earlier turn on this runtime still holds that
/// turn's registration, would be refused (`EEXIST`). Then a duplicate of it (the same
/// socket or eventfd, under another number) is registered instead.
///
/// # Panics
/// Outside a tokio runtime, saying what to do (see [`crate::runtime::current`]).
pub(crate) fn register_shared(
    fd: std::sync::Arc<OwnedFd>,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<std::sync::Arc<OwnedFd>>> {
    crate::runtime::current();
    // SAFETY: the descriptor is closed only when the last `Arc` goes, and the `AsyncFd`
    // holds one; an `Arc<OwnedFd>` always returns the same number.
    let refused = match unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) } {
        Ok(afd) => return Ok(afd),
        Err(e) => e.into_parts(),
    };
    match refused {
        (fd, e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let dup = std::sync::Arc::new(dup_fd(fd.as_fd())?);
            // SAFETY: as above, for the duplicate, which only this `Arc` holds.
            Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, interest) }?)
        }
        (_, e) => Err(e),
    }
}

/// What `fd` is, as `/proc/self/fd` names it (`anon_inode:[eventfd]`, `/memfd:name
/// (deleted)`, a path); `None` where that cannot be read (no `/proc`).
pub(crate) fn fd_target(fd: BorrowedFd<'_>) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// The descriptors open in this process, from `/proc/self/fd` (without the one used to
/// read that directory).
pub(crate) fn open_fds() -> io::Result<Vec<RawFd>> {
    use nix::dir::Dir;
    let mut dir = Dir::open(
        "/proc/self/fd",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let own = dir.as_raw_fd();
    let mut fds = Vec::new();
    for entry in dir.iter() {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .ok()
            .and_then(|n| n.parse().ok())
            && fd != own
        {
            fds.push(fd);
        }
    }
    Ok(fds)
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec and blocking: each
/// `sendmsg` arrives whole, as one message, even when many processes send on one end.
pub(crate) fn socketpair_seqpacket() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The size of a file.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let size = nix::sys::stat::fstat(fd)?.st_size;
    usize::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))
}

/// Why the kernel may have dropped descriptors sent to this process: `": this process ..."`
/// when it has (nearly) as many open as its limit allows, as the kernel then installs no
/// more; empty otherwise.
fn out_of_descriptors() -> String {
    match (descriptors_left(), descriptor_limit()) {
        (Some(left), Some(soft)) if left < 8 => format!(
            ": this process is at its limit of open descriptors ({soft}, RLIMIT_NOFILE, \
             `ulimit -n`)"
        ),
        _ => String::new(),
    }
}

/// What to add to the message of `e` when the kernel refused a descriptor because a limit
/// was met (`EMFILE`, `ENFILE`), naming that limit, so that "Too many open files" says
/// which; empty for any other error. It names no number: an error decoded from another
/// process met that process's limit.
pub(crate) fn descriptor_limit_note(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) => {
            ": the process is at its limit of open descriptors (RLIMIT_NOFILE, `ulimit -n`)"
        }
        Some(libc::ENFILE) => ": the system is at its limit of open files (`fs.file-max`)",
        _ => "",
    }
}

/// Whether a send failed because its user has too many descriptors in flight
/// (`ETOOMANYREFS`): without `CAP_SYS_RESOURCE`, the kernel holds at most the sender's limit
/// of open descriptors (the soft `RLIMIT_NOFILE`) in sockets' queues for its user, sent and
/// not yet received. A receive takes some out, and makes the sending socket writable anew.
pub(crate) fn too_many_in_flight(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETOOMANYREFS)
}

/// A file's identity: its device and inode, the same for every descriptor of it, in any
/// process that holds one.
pub(crate) type FileId = (u64, u64);

/// The identity of the file behind `fd`.
pub(crate) fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let stat = nix::sys::stat::fstat(fd)?;
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

/// This process's limit of open descriptors (the soft `RLIMIT_NOFILE`).
fn descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises this process's limit of open descriptors as far as it may: both limits to the
/// system's most (`/proc/sys/fs/nr_open`) where it may raise its hard limit
/// (`CAP_SYS_RESOURCE`), else its soft limit to its hard one.
pub(crate) fn raise_descriptor_limit() -> io::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(most) = most.filter(|&most| most > hard)
        && setrlimit(Resource::RLIMIT_NOFILE, most, most).is_ok()
    {
        return Ok(());
    }
    // A hard limit past the system's most (unlimited) is not a soft limit it takes.
    let soft = most.map_or(hard, |most| hard.min(most));
    Ok(setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?)
}

/// How many more descriptors this process may open before it reaches its limit (the soft
/// `RLIMIT_NOFILE`), counted now; `None` if it cannot tell.
pub(crate) fn descriptors_left() -> Option<u64> {
    let soft = descriptor_limit()?;
    match open_fds() {
        Ok(open) => Some(soft.saturating_sub(open.len() as u64)),
        // Counting them takes a descriptor too: failing for want of one, none is left.
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) => Some(0),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that closes is seen at once, though bytes it sent before wait unread; a live
    /// one, or one that only shut its reading side, is not.
    #[test]
    fn a_peer_that_closed_is_seen_before_its_bytes_are_read() {
        let (a, b) = socketpair_stream().unwrap();
        assert!(!peer_hung_up(a.as_fd()).unwrap(), "a live peer");
        nix::sys::socket::shutdown(b.as_raw_fd(), nix::sys::socket::Shutdown::Read).unwrap();
        assert!(
            !peer_hung_up(a.as_fd()).unwrap(),
            "a peer that still writes"
        );
        nix::unistd::write(&b, b"last words").unwrap();
        drop(b);
        assert!(peer_hung_up(a.as_fd()).unwrap(), "a peer that closed");
        let mut buf = [0u8; 4];
        assert_eq!(
            peek(a.as_fd(), &mut buf).unwrap(),
            4,
            "its bytes still wait"
        );
    }
}
