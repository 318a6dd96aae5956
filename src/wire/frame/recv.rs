//! [`RecvBuf`]: bytes read from a socket until they make whole frames, and the descriptors
//! that arrived with them, queued in arrival order (each frame takes as many as its header
//! announces).
//!
//! Reads are sized to what is waiting: small frames arrive many per system call, a large
//! frame goes straight into a buffer that holds it whole (and is handed over without a
//! copy), and nothing is allocated for a length a peer merely claims.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::HAND_OVER;
use super::header::{HEADER_LEN, body_len};
use super::received::{Frame, take_kept_buffer};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{codec, max_frame_size};

/// The room a read is given at most (when no large frame is in progress), so that small
/// frames arrive many per system call.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// The room a fresh buffer's reads are given; it doubles, up to [`READ_CHUNK`], each time a
/// read fills it. A socket that carries a few small frames (a child's bootstrap) never
/// faults in the pages of a large buffer.
const FIRST_READ_CHUNK: usize = 4 * 1024;
/// The most the buffer grows by at once for bytes whose frame is not yet known to be large.
const GROW_STEP: usize = 1 << 20;

/// The capacity a frame of known length gets at once (up to its end), before it doubles as
/// bytes arrive: a frame up to this size is read without a move, and a peer's claim of a
/// larger one costs this much address space, not the length it claims.
pub(super) const RESERVE_AT_ONCE: usize = 4 << 20;

/// Receive state: bytes read but not yet consumed, and descriptors waiting for their frame.
///
/// `buf` holds what has been read: its bytes from `start` on are not yet consumed. Reads
/// land in its spare capacity, which is never zeroed first (the kernel's copy is the only
/// write to it), so the capacity is the room reads are given.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    fds: VecDeque<OwnedFd>,
    /// The room reads are given now: [`FIRST_READ_CHUNK`] at first, doubling up to
    /// [`READ_CHUNK`].
    chunk: usize,
    /// The room the last [`room`](Self::room) offered.
    offered: usize,
    /// The largest body accepted, when lower than the maximum frame size (an exchange that
    /// expects only short messages refuses a long one as soon as its header arrives).
    limit: Option<usize>,
    /// The payload read so far of the frame whose first bytes are in `buf` (from `start`,
    /// [`BIN_PREFIX`] of them) when its body is one large MessagePack `bin`: read apart, into
    /// a buffer of its own, so that it is handed over without a copy.
    bin: Option<Vec<u8>>,
}

/// The bytes before the payload of a frame whose body is one `bin`: the frame's header and
/// the `bin`'s marker.
const BIN_PREFIX: usize = HEADER_LEN + codec::BIN_HEAD;

/// The payload length of the frame `h` begins (at least its first [`BIN_PREFIX`] bytes), if
/// its body is one MessagePack `bin` of [`codec::BIN_MIN`] bytes or more, of at most `max`
/// bytes, and it carries no descriptors.
fn bin_frame(h: &[u8], max: usize) -> Option<usize> {
    if h.len() < BIN_PREFIX || h[4] != 0 || body_len(h) > max {
        return None;
    }
    codec::bin_body(&h[HEADER_LEN..], body_len(h))
}

impl Default for RecvBuf {
    fn default() -> Self {
        RecvBuf::new()
    }
}

impl RecvBuf {
    pub(crate) fn new() -> RecvBuf {
        RecvBuf {
            buf: Vec::new(),
            start: 0,
            fds: VecDeque::new(),
            chunk: FIRST_READ_CHUNK,
            offered: 0,
            limit: None,
            bin: None,
        }
    }

    /// Accepts bodies of at most `limit` bytes, and no descriptors, from now on (`None`: up to
    /// the maximum frame size, with descriptors); a longer one is refused with
    /// [`Error::FrameTooLarge`] once its header is in.
    pub(crate) fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// The bytes read and not yet taken as frames: those of a frame still arriving, once
    /// the whole frames before it are taken.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.start + self.bin.as_ref().map_or(0, Vec::len)
    }

    /// The payload length of the frame in progress if it is read apart (see `bin`): its
    /// first [`BIN_PREFIX`] bytes, and no more, are in `buf`, and announce one.
    fn bin_ahead(&self) -> Option<usize> {
        let h = &self.buf[self.start..];
        if h.len() != BIN_PREFIX {
            return None;
        }
        match self.bin {
            // Begun: the limit it was begun under holds.
            Some(_) => Some(body_len(h).saturating_sub(codec::BIN_HEAD)),
            None => bin_frame(h, self.max_body()),
        }
    }

    /// The capacity of the buffer, for tests of how it grows.
    #[cfg(test)]
    pub(super) fn buffer_len(&self) -> usize {
        self.buf.capacity()
    }

    /// Takes in as much of `bytes` as the next read would (its room), as if a read had
    /// brought it; returns how much that was. For tests that feed bytes without a socket.
    #[cfg(test)]
    pub(super) fn feed(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room(None).unwrap_or(0));
        self.buf.extend_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// The largest body accepted now.
    fn max_body(&self) -> usize {
        let max = max_frame_size();
        self.limit.map_or(max, |l| l.min(max))
    }

    /// Takes the next complete frame out of the buffer, if there is one.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>> {
        if let Some(payload) = &self.bin {
            if Some(payload.len()) != self.bin_ahead() {
                return Ok(None);
            }
            let payload = self.bin.take().unwrap_or_default();
            self.start += BIN_PREFIX;
            if self.start == self.buf.len() {
                self.start = 0;
                self.buf.clear();
            }
            return Ok(Some(Frame::bin(payload)));
        }
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = body_len(avail);
        let nfds = usize::from(avail[4]);
        let max = self.max_body();
        if len > max {
            return Err(Error::FrameTooLarge {
                size: len as u64,
                max,
            });
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        if self.fds.len() < nfds {
            return Err(Error::Protocol(format!(
                "a frame announces {nfds} descriptors but {} arrived",
                self.fds.len()
            )));
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..nfds).collect();
        let frame_end = self.start + HEADER_LEN + len;
        let frame = if self.start == 0 && frame_end == self.buf.len() && len >= HAND_OVER {
            let data = std::mem::take(&mut self.buf);
            self.start = 0;
            Frame::new(data, HEADER_LEN, fds)
        } else {
            let data = self.buf[self.start + HEADER_LEN..frame_end].to_vec();
            self.start = frame_end;
            if self.start == self.buf.len() {
                self.start = 0;
                self.buf.clear();
            }
            Frame::new(data, 0, fds)
        };
        Ok(Some(frame))
    }

    /// Room to read into, in bytes past the end of the buffer: the current read chunk (see
    /// [`FIRST_READ_CHUNK`]), or what the frame in progress still needs. Past
    /// [`RESERVE_AT_ONCE`], the buffer grows only as bytes actually arrive (at most
    /// doubling), never to a length a peer merely claims; but a large frame goes straight
    /// into a kept buffer that holds it whole, if there is one (see [`keep_buffer`]). Given
    /// `exact` (the length, header included, of the frame in progress), the room ends where
    /// that frame ends: not one byte of the next frame.
    ///
    /// Memory this process cannot have (a limit on its address space, a cgroup's memory
    /// limit, overcommit turned off) is an error of kind `OutOfMemory` that names the frame's
    /// length, not an abort: the connection's reader fails, and this process lives on.
    pub(super) fn room(&mut self, exact: Option<usize>) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
        }
        let pending = self.buf.len() - self.start;
        let frame_len = exact.or_else(|| match self.buf.get(self.start..) {
            Some(h) if h.len() >= HEADER_LEN => Some(HEADER_LEN + body_len(h)),
            _ => None,
        });
        let chunk = self.chunk;
        let wanted = frame_len.map_or(chunk, |n| n.saturating_sub(pending).max(1));
        if let Some(n) = frame_len
            && n >= HAND_OVER
            && self.buf.capacity() - self.start < n
            && let Some(mut kept) = take_kept_buffer(n)
        {
            kept.clear();
            kept.extend_from_slice(&self.buf[self.start..]);
            self.buf = kept;
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < wanted.min(chunk) {
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let room = self.buf.capacity() - self.buf.len();
            if room < wanted.min(chunk) {
                // It grows by at most `GROW_STEP` at a time, so that it follows what
                // arrives.
                let grow = wanted
                    .min(self.buf.capacity().max(chunk))
                    .min(GROW_STEP)
                    .max(wanted.min(chunk));
                let len = self.buf.len() + room.max(grow);
                // For a frame whose length is known (and allowed), the capacity goes to
                // its end, up to `RESERVE_AT_ONCE`, then doubles as bytes arrive: it follows
                // what has arrived, never the length a peer merely claims, and a large frame
                // moves a few times only (the allocator remaps a large block's pages rather
                // than copying them).
                match frame_len {
                    Some(n) if n <= HEADER_LEN + self.max_body() && len > self.buf.capacity() => {
                        let capacity = (2 * self.buf.capacity())
                            .max(RESERVE_AT_ONCE)
                            .min(self.start + n)
                            .max(len);
                        reserve(&mut self.buf, capacity, Some(n))?;
                        // Faulted in 2 MiB at a time where the kernel allows.
                        sys::advise_huge_pages(&mut self.buf);
                    }
                    _ => reserve(&mut self.buf, len, frame_len)?,
                }
            }
        }
        // A large frame is read up to its end and no further, so that it fills the buffer
        // and is handed over without a copy; so is every frame when asked to be exact.
        let stop = match frame_len {
            Some(n) if (exact.is_some() || n >= HAND_OVER) && self.start + n > self.buf.len() => {
                (self.start + n).min(self.buf.capacity())
            }
            _ => self.buf.capacity(),
        };
        self.offered = stop - self.buf.len();
        Ok(self.offered)
    }

    /// Records `n` bytes read into the room [`room`](Self::room) gave; a read that filled
    /// it doubles the read chunk (more was probably waiting).
    pub(super) fn filled(&mut self, n: usize) {
        if n > 0 && n == self.offered {
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
        }
    }

    pub(crate) fn at_eof(&self) -> Result<Frame> {
        if self.pending() > 0 {
            Err(Error::Protocol(format!(
                "the connection closed in the middle of a frame ({} bytes of it arrived)",
                self.pending()
            )))
        } else {
            Err(Error::Closed)
        }
    }

    /// Reads once from `fd` (which must be readable or blocking); 0 at end of stream.
    pub(crate) fn read_once(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.read_into_room(fd, None)
    }

    fn read_into_room(&mut self, fd: BorrowedFd<'_>, exact: Option<usize>) -> io::Result<usize> {
        if let Some(len) = self.bin_ahead() {
            // A large `bin` frame's payload goes into a buffer of its own, up to its end.
            if self.bin.is_none() {
                let payload = match take_kept_buffer(len) {
                    Some(kept) => kept,
                    None => {
                        let mut fresh = Vec::new();
                        reserve(&mut fresh, len, Some(BIN_PREFIX + len))?;
                        fresh
                    }
                };
                self.bin = Some(payload);
            }
            let payload = self.bin.get_or_insert_default();
            let want = len - payload.len();
            self.offered = want;
            let n = reset_is_end(sys::recv_appending(fd, payload, want, &mut self.fds))?;
            self.check_fds()?;
            return Ok(n);
        }
        let room = self.room(exact)?;
        let n = reset_is_end(sys::recv_appending(fd, &mut self.buf, room, &mut self.fds))?;
        self.filled(n);
        self.check_fds()?;
        Ok(n)
    }

    /// Refuses, and closes at once, descriptors beyond what the frames being read may carry,
    /// so that a peer cannot make this process hold descriptors without frames that claim
    /// them: none under a receive limit (the messages read under one carry none), else at
    /// most those of two messages (a read stops after the bytes that carry descriptors, and
    /// the frames read are taken before the next read).
    fn check_fds(&mut self) -> io::Result<()> {
        let allowed = match self.limit {
            Some(_) => 0,
            None => 2 * sys::MAX_FDS_PER_MESSAGE,
        };
        if self.fds.len() <= allowed {
            return Ok(());
        }
        let n = std::mem::take(&mut self.fds).len();
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            match self.limit {
                Some(_) => format!("{n} descriptors arrived where messages carry none"),
                None => format!("{n} descriptors arrived, more than the frames read can carry"),
            },
        ))
    }

    /// Reads once from a non-blocking socket that other processes may read too, taking no
    /// byte past the end of the frame in progress: the frames behind it stay in the socket
    /// for whichever reader comes next. With nothing buffered, the first bytes waiting are
    /// peeked (`MSG_PEEK`: nothing is taken), and the read asks for the whole frame, header
    /// included, so that a frame that has arrived whole is taken by one system call.
    ///
    /// Returns the bytes read (0 at end of stream) and whether the socket was left empty
    /// then, as far as this read can tell (a short read, or a peek that saw this frame and
    /// nothing after it): the caller may then clear its readiness.
    pub(crate) fn read_frame_once(&mut self, fd: BorrowedFd<'_>) -> io::Result<(usize, bool)> {
        /// How far a peek looks: past the end of a small frame, to see whether another
        /// follows it.
        const PEEK_LEN: usize = 1024;
        let pending = self.buf.len() - self.start;
        if self.bin_ahead().is_some() {
            let fds_before = self.fds.len();
            let n = self.read_into_room(fd, None)?;
            return Ok((n, n < self.offered && self.fds.len() == fds_before));
        }
        let mut drained_at = None;
        let frame_len = if pending == 0 {
            let mut head = [0u8; PEEK_LEN];
            let seen = reset_is_end(sys::peek(fd, &mut head))?;
            if seen == 0 {
                return Ok((0, true));
            }
            if seen < HEADER_LEN {
                HEADER_LEN
            } else {
                let len = body_len(&head);
                // A header that claims too much is read alone: `next_frame` refuses it. A
                // large `bin` frame's first bytes are read alone too: its payload is read
                // apart from them.
                let n = if len > self.max_body() {
                    HEADER_LEN
                } else if bin_frame(&head[..seen], self.max_body()).is_some() {
                    BIN_PREFIX
                } else {
                    HEADER_LEN + len
                };
                // A peek stops after bytes that carry descriptors, so it sees all that
                // waits only if this frame carries none.
                if head[4] == 0 && seen < PEEK_LEN {
                    drained_at = Some(seen);
                }
                n
            }
        } else if pending < HEADER_LEN {
            HEADER_LEN
        } else {
            // The room given grows only as bytes arrive, whatever the header claims.
            let h = &self.buf[self.start..];
            HEADER_LEN.saturating_add(body_len(h))
        };
        let room = self.room(Some(frame_len))?;
        let fds_before = self.fds.len();
        let n = self.read_into_room(fd, Some(frame_len))?;
        // A read stops after bytes that carry descriptors, however much follows them: a
        // short read says the socket is empty only if it brought none.
        let short = n < room && self.fds.len() == fds_before;
        let drained = short || drained_at == Some(n);
        Ok((n, drained))
    }

    /// Reads the next frame from a descriptor, waiting (without a runtime) until it has
    /// arrived. Meant for a blocking descriptor; on a non-blocking one it waits in `poll(2)`.
    pub(crate) fn recv_blocking(&mut self, fd: BorrowedFd<'_>) -> Result<Frame> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            match self.read_once(fd) {
                Ok(0) => return self.at_eof(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sys::poll_readable(&[fd], None)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Gives `buf` a capacity of `capacity` bytes at least (it holds no more than that), for a
/// frame of `frame` bytes (header included) if its length is known; memory this process
/// cannot have is an error of kind `OutOfMemory` that says so, where `reserve_exact` would
/// abort the process.
fn reserve(buf: &mut Vec<u8>, capacity: usize, frame: Option<usize>) -> io::Result<()> {
    buf.try_reserve_exact(capacity - buf.len()).map_err(|_| {
        let what = frame.map_or_else(String::new, |n| format!(" for a frame of {n} bytes"));
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "cannot allocate {capacity} bytes{what}: this process is out of memory or at \
                 its limit (RLIMIT_AS, `ulimit -v`, or its cgroup's)"
            ),
        )
    })
}

/// A read's outcome, with a connection reset taken for the end of the stream: the kernel
/// reports one (once) in place of the end when the peer closed with bytes it had not read
/// (a process killed before it read what was sent to it, over a Unix socket or TCP), and
/// the peer is gone either way.
fn reset_is_end(r: io::Result<usize>) -> io::Result<usize> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::wire::frame::{FrameBuf, send_blocking};

    /// A frame as it goes on the wire.
    fn wire_of(f: &mut FrameBuf) -> Vec<u8> {
        f.seal().unwrap();
        f.parts().concat()
    }

    fn feed(rb: &mut RecvBuf, bytes: &[u8]) {
        rb.feed(bytes);
    }

    /// Feeds all of `bytes` through the buffer's own room, read after read, handing each
    /// frame that completes to `each` (which drops it, or keeps it).
    fn feed_through(rb: &mut RecvBuf, bytes: &[u8], mut each: impl FnMut(Frame)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rb.feed(rest);
            rest = &rest[n..];
            while let Some(f) = rb.next_frame().unwrap() {
                each(f);
            }
        }
    }

    #[test]
    fn large_frames_in_kept_buffers_arrive_whole() {
        // Large frames of several sizes through one receive buffer, fed in pieces, two of
        // them back to back: each is read into a buffer a dropped frame left behind (stale
        // bytes and all) and must come out exactly as sent.
        let frame_of = |n: usize, seed: usize| {
            let payload: Vec<u8> = (0..n).map(|j| (j * 7 + seed) as u8).collect();
            let mut f = FrameBuf::of(&serde_bytes::Bytes::new(&payload)).unwrap();
            (payload, wire_of(&mut f))
        };
        let (a, wire_a) = frame_of(300_000, 1);
        let (b, wire_b) = frame_of(100_000, 2);
        let (c, wire_c) = frame_of(200_000, 3);
        let (d, wire_d) = frame_of(100_000, 4);
        let wire = [wire_a, wire_b, wire_c, wire_d].concat();
        let mut rb = RecvBuf::new();
        let mut got = Vec::new();
        for piece in wire.chunks(70_001) {
            feed_through(&mut rb, piece, |f| {
                // Dropped here: its buffer is kept for the next one.
                got.push(f.decode::<serde_bytes::ByteBuf>().unwrap().into_vec());
            });
        }
        assert!(got == [a, b, c, d], "frames changed on the way");
    }

    #[test]
    fn a_large_bin_frame_is_read_apart_in_any_pieces() {
        // Frames whose body is one `bin` just under, at and above the size read apart, each
        // followed by a small frame, arrive in pieces of odd sizes while exact and plain
        // reads take turns (as when a receive dropped midway is taken up by the other kind):
        // each arrives whole, the large ones held apart.
        let (a, b) = sys::socketpair_stream().unwrap();
        sys::set_nonblocking(b.as_fd(), true).unwrap();
        for len in [codec::BIN_MIN - 1, codec::BIN_MIN, (1 << 20) + 1] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
            let mut big = FrameBuf::of(&serde_bytes::Bytes::new(&payload)).unwrap();
            let mut small = FrameBuf::of(&(7u32, "after")).unwrap();
            let wire = [wire_of(&mut big), wire_of(&mut small)].concat();
            let mut rb = RecvBuf::new();
            let mut got = Vec::new();
            let mut exact = true;
            for piece in wire.chunks(4093) {
                send_all_blocking(a.as_fd(), piece);
                loop {
                    let r = if exact {
                        rb.read_frame_once(b.as_fd()).map(|(n, _)| n)
                    } else {
                        rb.read_once(b.as_fd())
                    };
                    exact = !exact;
                    match r {
                        Ok(n) => assert!(n > 0, "the stream ended"),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("{e}"),
                    }
                    while let Some(f) = rb.next_frame().unwrap() {
                        got.push(f);
                    }
                }
            }
            assert_eq!(got.len(), 2, "{len}: both frames");
            assert_eq!(rb.pending(), 0);
            let second = got.pop().unwrap();
            let first = got.pop().unwrap();
            assert_eq!(first.is_bin(), len >= codec::BIN_MIN, "{len}");
            assert_eq!(first.body(), &wire_of(&mut big)[HEADER_LEN..], "{len}");
            assert!(first.decode::<serde_bytes::ByteBuf>().unwrap().into_vec() == payload);
            assert_eq!(second.decode::<(u32, String)>().unwrap().0, 7);
        }
    }

    #[test]
    fn a_bin_frame_decodes_as_any_type_its_body_does() {
        // A payload held apart decodes as its MessagePack would: as bytes taken over whole,
        // as a plain `Vec<u8>`, and as a type it is not (an error, not a panic).
        let payload: Vec<u8> = (0..codec::BIN_MIN).map(|i| i as u8).collect();
        let frame = || Frame::bin(payload.clone());
        assert!(frame().decode::<serde_bytes::ByteBuf>().unwrap().into_vec() == payload);
        assert!(frame().decode::<Vec<u8>>().unwrap() == payload);
        assert!(frame().decode::<(u32, String)>().is_err());
        assert!(frame().decode::<String>().is_err());
        assert!(frame().into_body() == codec::bin_of(&payload));
    }

    /// Writes all of `bytes` to a blocking socket.
    fn send_all_blocking(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = sys::send_with_fds(fd, bytes, &[]).unwrap();
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn frames_split_and_join() {
        let mut wire = Vec::new();
        for i in 0..3u32 {
            wire.extend_from_slice(&wire_of(&mut FrameBuf::of(&(i, "abc")).unwrap()));
        }
        let mut rb = RecvBuf::new();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            feed(&mut rb, b);
            while let Some(f) = rb.next_frame().unwrap() {
                got.push(f.decode::<(u32, String)>().unwrap().0);
            }
        }
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[test]
    fn reads_start_small_and_grow_while_they_fill() {
        let mut rb = RecvBuf::new();
        // A few small frames, one read each: the buffer stays at the first read chunk.
        for i in 0..3u32 {
            feed(&mut rb, &wire_of(&mut FrameBuf::of(&(i, "small")).unwrap()));
            assert!(rb.next_frame().unwrap().is_some());
        }
        assert_eq!(rb.buf.capacity(), FIRST_READ_CHUNK);
        // Reads that fill all the room they get (many small frames waiting) double it, up
        // to READ_CHUNK.
        let mut many = Vec::new();
        for i in 0..20_000u32 {
            many.extend_from_slice(&wire_of(&mut FrameBuf::of(&i).unwrap()));
        }
        let mut got = 0;
        feed_through(&mut rb, &many, |_| got += 1);
        assert_eq!(got, 20_000);
        assert_eq!(rb.buf.capacity(), READ_CHUNK);
    }

    #[test]
    fn exact_reads_take_one_frame_and_leave_the_rest() {
        // Small frames and a large one waiting in a socket: each frame is taken whole by
        // reads that stop at its end, the next stays in the socket (another process may read
        // it), and no read of a small frame claims that the socket is empty.
        let (a, b) = sys::socketpair_stream().unwrap();
        sys::set_nonblocking(b.as_fd(), true).unwrap();
        let big = vec![9u8; 100_000];
        let mut frames = Vec::new();
        for i in 0..3u32 {
            frames.push(FrameBuf::of(&(i, "abc")).unwrap());
        }
        frames.push(FrameBuf::of(&serde_bytes::Bytes::new(&big)).unwrap());
        for f in &mut frames {
            send_blocking(a.as_fd(), f).unwrap();
        }
        let mut rb = RecvBuf::new();
        for i in 0..4u32 {
            let frame = loop {
                if let Some(f) = rb.next_frame().unwrap() {
                    break f;
                }
                let (n, drained) = rb.read_frame_once(b.as_fd()).unwrap();
                assert!(n > 0, "a frame waits");
                assert!(i == 3 || !drained, "frame {i}: more frames wait behind it");
            };
            assert_eq!(rb.buf.len(), rb.start, "nothing of the next frame was read");
            if i < 3 {
                assert_eq!(frame.decode::<(u32, String)>().unwrap().0, i);
            } else {
                assert!(frame.decode::<serde_bytes::ByteBuf>().unwrap().into_vec() == big);
            }
        }
        assert_eq!(
            rb.read_frame_once(b.as_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_claimed_length_reserves_only_what_arrives() {
        // A header that announces a frame of the maximum size, then a few bytes at a time:
        // past what is reserved at once, the buffer's capacity follows what arrived, not
        // what was announced.
        super::super::received::NO_KEPT_BUFFERS.with(|off| off.set(true));
        let max = max_frame_size();
        let len = u32::try_from(max).unwrap_or(u32::MAX);
        let mut rb = RecvBuf::new();
        let mut arrived = 0;
        let mut header = len.to_be_bytes().to_vec();
        header.push(0);
        let piece = vec![7u8; 100_000];
        for i in 0..40 {
            let bytes = if i == 0 { &header[..] } else { &piece[..] };
            feed_through(&mut rb, bytes, |_| panic!("the frame is not whole"));
            arrived += bytes.len();
            assert!(
                rb.buf.capacity() <= RESERVE_AT_ONCE.max(2 * (arrived + GROW_STEP)),
                "{} bytes reserved for {arrived} arrived of {max} announced",
                rb.buf.capacity()
            );
        }
        assert_eq!(
            rb.buf.len() - rb.start,
            arrived,
            "every byte fed was taken in"
        );
    }

    #[test]
    fn an_absurd_length_is_refused_without_allocating_it() {
        let mut rb = RecvBuf::new();
        feed(&mut rb, &[0xff, 0xff, 0xff, 0xf0, 0]);
        assert!(matches!(rb.next_frame(), Err(Error::FrameTooLarge { .. })));
        assert!(rb.buf.capacity() <= READ_CHUNK);
    }
}
