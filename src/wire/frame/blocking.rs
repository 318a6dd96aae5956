//! Frames on a blocking descriptor, for the code that runs without a runtime (the
//! launcher thread, the fork server) and for a child's first frame, sent before the child
//! starts.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use super::out::FrameBuf;
use crate::error::Result;
use crate::sys;

/// Writes a frame to a descriptor, waiting (without a runtime) while the socket is full.
/// Meant for a blocking descriptor; on a non-blocking one it waits in `poll(2)`.
pub(crate) fn send_blocking(fd: BorrowedFd<'_>, frame: &mut FrameBuf) -> Result<()> {
    frame.seal()?;
    let raw = frame.raw_fds();
    let [head, tail] = frame.parts();
    send_all_blocking(fd, head, &raw)?;
    send_all_blocking(fd, tail, &[])
}

/// Writes all of `data`, with `fds` on its first byte, waiting in `poll(2)` while the socket
/// is full.
fn send_all_blocking(fd: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        let with: &[RawFd] = if off == 0 { fds } else { &[] };
        match sys::send_with_fds(fd, &data[off..], with) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sys::wait_writable(fd)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The largest frame [`send_early`] sends: far below a socket's buffer, so the send never
/// blocks.
const EARLY_MAX: usize = 32 * 1024;

/// Sends a small frame at once on a blocking socket whose peer is not reading yet (a child
/// about to be started), so that it waits there for the peer; gives a large one back, to be
/// sent once the peer reads.
pub(crate) fn send_early(fd: BorrowedFd<'_>, mut frame: FrameBuf) -> Result<Option<FrameBuf>> {
    if frame.wire_len() > EARLY_MAX {
        return Ok(Some(frame));
    }
    send_blocking(fd, &mut frame)?;
    Ok(None)
}
