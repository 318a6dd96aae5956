//! [`Direct`]: the writer a value is encoded into while its frame goes out, its large byte
//! strings written to the socket straight from the value (see `Framed::send_value`).

use std::io;
use std::os::fd::BorrowedFd;

use crate::sys;
use crate::wire::codec::DIRECT;

/// The writer a frame is encoded into as it goes out: pieces of [`DIRECT`] bytes or more
/// go to the socket from where they lie, as far as it takes them at once; the rest (and
/// whatever the socket did not take) is kept in `pending`, written afterwards.
pub(super) struct Direct<'a> {
    fd: BorrowedFd<'a>,
    /// Bytes of the frame encoded and not yet taken by the socket, in order.
    pub(super) pending: Vec<u8>,
    /// Bytes of the frame the socket has taken.
    pub(super) sent: usize,
    /// Bytes of the frame encoded so far, header included, and all the frame holds.
    pub(super) encoded: usize,
    total: usize,
    /// Whether the socket stopped taking bytes (it is full): from then on all is copied.
    full: bool,
    /// The socket's error, if a write to it failed (it is broken).
    pub(super) broken: Option<io::Error>,
}

impl<'a> Direct<'a> {
    /// A frame of `total` bytes that begins with `head` (its header), to go out on `fd`.
    pub(super) fn new(fd: BorrowedFd<'a>, head: &[u8], total: usize) -> Direct<'a> {
        Direct {
            fd,
            pending: head.to_vec(),
            sent: 0,
            encoded: head.len(),
            total,
            full: false,
            broken: None,
        }
    }

    /// Sends what of `data` the socket takes now; returns how much that was.
    fn send_some(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut off = 0;
        while off < data.len() && !self.full {
            match sys::send_with_fds(self.fd, &data[off..], &[]) {
                Ok(n) => {
                    off += n;
                    self.sent += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.full = true,
                Err(e) => {
                    self.broken = Some(io::Error::new(e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(off)
    }

    /// Fills the rest of a frame whose encoding failed midway with bytes no value begins
    /// with (MessagePack's reserved `0xc1`), so that the peer's decoding fails on it and the
    /// stream stays in step.
    pub(super) fn spoil(&mut self) {
        let rest = self.total.saturating_sub(self.encoded);
        self.pending.resize(self.pending.len() + rest, 0xc1);
        self.encoded = self.total;
    }
}

impl io::Write for Direct<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.encoded + b.len() > self.total {
            return Err(io::Error::other(
                "the value's encoding grew between its measure and its encoding",
            ));
        }
        self.encoded += b.len();
        if b.len() >= DIRECT && !self.full {
            let pending = std::mem::take(&mut self.pending);
            let r = self.send_some(&pending);
            self.pending = pending;
            self.pending.drain(..r?);
            if self.pending.is_empty() {
                let n = self.send_some(b)?;
                self.pending.extend_from_slice(&b[n..]);
                return Ok(b.len());
            }
        }
        self.pending.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
