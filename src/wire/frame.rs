//! Frames: a 5-byte header (`u32` big-endian body length, `u8` count of descriptors sent
//! beside the frame) and a MessagePack body.
//!
//! Descriptors ride on the `sendmsg` that carries the first byte of their frame, so by the
//! time a frame is complete in the receive buffer, its descriptors have arrived: they are
//! queued in arrival order and each frame takes as many as its header announces.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::codec::{self, Encoded};
use super::max_frame_size;
use crate::error::{Error, Result};
use crate::sys;

/// Bytes of the frame header.
pub(crate) const HEADER_LEN: usize = 5;
/// The room a read is given at most (when no large frame is in progress), so that small
/// frames arrive many per system call.
const READ_CHUNK: usize = 64 * 1024;
/// The room a fresh buffer's reads are given; it doubles, up to [`READ_CHUNK`], each time a
/// read fills it. A socket that carries a few small frames (a child's bootstrap) never
/// faults in the pages of a large buffer.
const FIRST_READ_CHUNK: usize = 4 * 1024;
/// Frames at least this large are handed over without a copy when they fill the buffer.
const HAND_OVER: usize = 64 * 1024;

/// A range of a buffer that several owners share, sent from where it lies: a map's input of
/// plain numbers, chunk by chunk, with no copy per chunk and none kept to send it again.
#[derive(Clone)]
pub(crate) struct SharedBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// All of `owner`'s bytes.
    pub(crate) fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>) -> SharedBytes {
        let len = (*owner).as_ref().len();
        SharedBytes {
            owner,
            range: 0..len,
        }
    }

    /// `self[range]`, sharing the same owner; `None` if `range` is out of bounds.
    pub(crate) fn slice(&self, range: Range<usize>) -> Option<SharedBytes> {
        let start = self.range.start.checked_add(range.start)?;
        let end = self.range.start.checked_add(range.end)?;
        (start <= end && end <= self.range.end).then(|| SharedBytes {
            owner: self.owner.clone(),
            range: start..end,
        })
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// The part of a frame's body sent after its head: a large value's own buffer, or shared
/// bytes.
#[derive(Debug)]
enum Tail {
    Owned(Vec<u8>),
    Shared(SharedBytes),
}

impl std::ops::Deref for Tail {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Tail::Owned(v) => v,
            Tail::Shared(s) => s.as_slice(),
        }
    }
}

impl Tail {
    /// The tail as a buffer that can grow (shared bytes are copied first).
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Tail::Shared(s) = self {
            *self = Tail::Owned(s.as_slice().to_vec());
        }
        match self {
            Tail::Owned(v) => v,
            Tail::Shared(_) => unreachable!("made owned above"),
        }
    }
}

/// A frame under construction: header room, then one or more encoded values.
///
/// A large encoded value pushed whole ([`push_encoded`](Self::push_encoded)) is kept as the
/// frame's tail rather than copied in after the header, as are shared bytes
/// ([`push_shared`](Self::push_shared)); the frame is sent as its two parts.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
    /// The rest of the body, after `buf`.
    tail: Tail,
    fds: Vec<OwnedFd>,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf::new()
    }
}

impl FrameBuf {
    pub(crate) fn new() -> FrameBuf {
        FrameBuf {
            buf: vec![0; HEADER_LEN],
            tail: Tail::Owned(Vec::new()),
            fds: Vec::new(),
        }
    }

    /// A frame holding one value.
    pub(crate) fn of<T: Serialize + ?Sized>(value: &T) -> Result<FrameBuf> {
        let mut f = FrameBuf::new();
        f.push(value)?;
        Ok(f)
    }

    /// Appends the encoding of `value` to the body.
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let end = if self.tail.is_empty() {
            &mut self.buf
        } else {
            self.tail.owned()
        };
        codec::encode_into(end, &mut self.fds, value)
    }

    /// Appends bytes that are already MessagePack, with their descriptors. Large ones
    /// (from [`HAND_OVER`] bytes) become the tail, without a copy.
    pub(crate) fn push_encoded(&mut self, e: Encoded) {
        self.append(Tail::Owned(e.bytes));
        self.fds.extend(e.fds);
    }

    /// Appends bytes that are already MessagePack (or the rest of a value begun with
    /// [`push_encoded`](Self::push_encoded)). Large ones (from [`HAND_OVER`] bytes) are sent
    /// from where they lie; small ones are copied, so that small frames still go out many
    /// to a write.
    pub(crate) fn push_shared(&mut self, s: SharedBytes) {
        self.append(Tail::Shared(s));
    }

    /// Appends encoded bytes to the body: a large part becomes the tail as it is, a small
    /// one is copied in (behind a tail, any part is copied onto it).
    fn append(&mut self, part: Tail) {
        if !self.tail.is_empty() {
            self.tail.owned().extend_from_slice(&part);
        } else if part.len() >= HAND_OVER {
            self.tail = part;
        } else {
            self.buf.extend_from_slice(&part);
        }
    }

    /// The frame's size on the wire, header included.
    pub(crate) fn wire_len(&self) -> usize {
        self.buf.len() + self.tail.len()
    }

    /// Fails if the frame could not be sent: a body over the maximum frame size, or too
    /// many descriptors.
    pub(crate) fn check_size(&mut self) -> Result<()> {
        self.seal()
    }

    /// Fills in the header; fails if the body exceeds the maximum frame size.
    fn seal(&mut self) -> Result<()> {
        let body = self.buf.len() - HEADER_LEN + self.tail.len();
        write_header(&mut self.buf, body, self.fds.len())
    }

    fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// Writes a frame header (body length, descriptor count) into the first [`HEADER_LEN`] bytes
/// of `head`; fails for a body over the maximum frame size or too many descriptors.
pub(crate) fn write_header(head: &mut [u8], body: usize, nfds: usize) -> Result<()> {
    let max = max_frame_size();
    if body > max {
        return Err(Error::FrameTooLarge {
            size: body as u64,
            max,
        });
    }
    let count = u8::try_from(nfds)
        .ok()
        .filter(|&n| usize::from(n) <= sys::MAX_FDS_PER_MESSAGE)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a message may carry at most {} descriptors, this one holds {nfds}",
                sys::MAX_FDS_PER_MESSAGE
            ))
        })?;
    head[..4].copy_from_slice(&(body as u32).to_be_bytes());
    head[4] = count;
    Ok(())
}

/// A received frame: its body and the descriptors that came with it.
#[derive(Debug)]
pub(crate) struct Frame {
    data: Vec<u8>,
    offset: usize,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Drop for Frame {
    fn drop(&mut self) {
        keep_buffer(std::mem::take(&mut self.data));
    }
}

/// Buffers of large frames, kept when their frame is dropped for the next large frames to be
/// read into. A fresh buffer costs a page fault per 4 KiB as it fills (a megabyte costs
/// about a millisecond on a virtual machine); a kept one is memory already in place.
static KEPT_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The most buffers kept, and the most bytes they may hold in all.
const KEPT_COUNT: usize = 4;
const KEPT_BYTES: usize = 32 << 20;

/// Keeps `buf` for a later large frame, if it is large and there is room among those kept.
fn keep_buffer(buf: Vec<u8>) {
    if buf.len() < HAND_OVER {
        return;
    }
    let mut kept = KEPT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    let held: usize = kept.iter().map(Vec::len).sum();
    if kept.len() < KEPT_COUNT && held + buf.len() <= KEPT_BYTES {
        kept.push(buf);
    }
}

#[cfg(test)]
thread_local! {
    /// Turns kept buffers off on this thread, for tests of how a buffer grows by itself.
    static NO_KEPT_BUFFERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The smallest kept buffer of at least `len` bytes, taken.
fn take_kept_buffer(len: usize) -> Option<Vec<u8>> {
    #[cfg(test)]
    if NO_KEPT_BUFFERS.with(std::cell::Cell::get) {
        return None;
    }
    let mut kept = KEPT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    let (i, _) = kept
        .iter()
        .enumerate()
        .filter(|(_, b)| b.len() >= len)
        .min_by_key(|(_, b)| b.len())?;
    Some(kept.swap_remove(i))
}

impl Frame {
    pub(crate) fn body(&self) -> &[u8] {
        &self.data[self.offset..]
    }

    /// The body as a vector of its own: the frame's buffer, with the header moved out if it
    /// holds one (no new allocation either way).
    pub(crate) fn into_body(mut self) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.data);
        data.drain(..self.offset);
        data
    }

    /// Decodes the first value of the body, then hands back the rest.
    pub(crate) fn decode_head<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let (v, used) = codec::decode_prefix::<T>(self.body(), Vec::new())?;
        self.offset += used;
        Ok(v)
    }

    /// Decodes the (rest of the) body as one value, giving it the frame's descriptors.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(mut self) -> Result<T> {
        let fds = std::mem::take(&mut self.fds);
        codec::decode(&self.data[self.offset..], fds)
    }

    /// Decodes the (rest of the) body through `seed`, giving it the frame's descriptors.
    pub(crate) fn decode_with<'a, S: serde::de::DeserializeSeed<'a>>(
        &'a mut self,
        seed: S,
    ) -> Result<S::Value> {
        let fds = std::mem::take(&mut self.fds);
        let this: &'a Frame = self;
        codec::decode_with(&this.data[this.offset..], fds, seed)
    }
}

/// Receive state: bytes read but not yet consumed, and descriptors waiting for their frame.
#[derive(Debug)]
pub(crate) struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    /// The room reads are given now: [`FIRST_READ_CHUNK`] at first, doubling up to
    /// [`READ_CHUNK`].
    chunk: usize,
    /// The room the last [`room`](Self::room) offered.
    offered: usize,
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
            end: 0,
            fds: VecDeque::new(),
            chunk: FIRST_READ_CHUNK,
            offered: 0,
        }
    }

    /// Takes the next complete frame out of the buffer, if there is one.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        let nfds = usize::from(avail[4]);
        let max = max_frame_size();
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
        let frame = if self.start == 0 && frame_end == self.end && len >= HAND_OVER {
            let mut data = std::mem::take(&mut self.buf);
            data.truncate(frame_end);
            self.start = 0;
            self.end = 0;
            Frame {
                data,
                offset: HEADER_LEN,
                fds,
            }
        } else {
            let data = self.buf[self.start + HEADER_LEN..frame_end].to_vec();
            self.start = frame_end;
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            }
            Frame {
                data,
                offset: 0,
                fds,
            }
        };
        Ok(Some(frame))
    }

    /// Room to read into: the current read chunk (see [`FIRST_READ_CHUNK`]), or what the
    /// frame in progress still needs. The buffer grows only as bytes actually arrive (at
    /// most doubling), never to a length a peer merely claims; but a large frame goes
    /// straight into a kept buffer that holds it whole, if there is one (see
    /// [`keep_buffer`]). Given `exact` (the length, header included, of the frame in
    /// progress), the room ends where that frame ends: not one byte of the next frame.
    fn room(&mut self, exact: Option<usize>) -> &mut [u8] {
        if self.start > 0 && self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let pending = self.end - self.start;
        let frame_len = exact.or_else(|| match self.buf.get(self.start..self.end) {
            Some(h) if h.len() >= HEADER_LEN => {
                Some(HEADER_LEN + u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
            }
            _ => None,
        });
        let chunk = self.chunk;
        let wanted = frame_len.map_or(chunk, |n| n.saturating_sub(pending).max(1));
        if let Some(n) = frame_len
            && n >= HAND_OVER
            && self.buf.len() - self.start < n
            && let Some(mut kept) = take_kept_buffer(n)
        {
            kept[..pending].copy_from_slice(&self.buf[self.start..self.end]);
            self.buf = kept;
            self.start = 0;
            self.end = pending;
        }
        if self.buf.len() - self.end < wanted.min(chunk) {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end = pending;
                self.start = 0;
            }
            let room = self.buf.len() - self.end;
            if room < wanted.min(chunk) {
                let grow = wanted.min(self.buf.len().max(chunk));
                self.buf.resize(self.end + room.max(grow), 0);
            }
        }
        // A large frame is read up to its end and no further, so that it fills the buffer
        // and is handed over without a copy; so is every frame when asked to be exact.
        let stop = match frame_len {
            Some(n) if (exact.is_some() || n >= HAND_OVER) && self.start + n > self.end => {
                (self.start + n).min(self.buf.len())
            }
            _ => self.buf.len(),
        };
        self.offered = stop - self.end;
        &mut self.buf[self.end..stop]
    }

    /// Records `n` bytes read into the room [`room`](Self::room) gave; a read that filled
    /// it doubles the read chunk (more was probably waiting).
    fn filled(&mut self, n: usize) {
        self.end += n;
        if n > 0 && n == self.offered {
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
        }
    }

    pub(crate) fn at_eof(&self) -> Result<Frame> {
        if self.end > self.start {
            Err(Error::Protocol(format!(
                "the connection closed in the middle of a frame ({} bytes of it arrived)",
                self.end - self.start
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
        let mut fds = std::mem::take(&mut self.fds);
        let res = sys::recv_with_fds(fd, self.room(exact), &mut fds);
        self.fds = fds;
        if let Ok(n) = res {
            self.filled(n);
        }
        res
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
        let pending = self.end - self.start;
        let mut drained_at = None;
        let frame_len = if pending == 0 {
            let mut head = [0u8; PEEK_LEN];
            let seen = sys::peek(fd, &mut head)?;
            if seen == 0 {
                return Ok((0, true));
            }
            if seen < HEADER_LEN {
                HEADER_LEN
            } else {
                let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                // A header that claims too much is read alone: `next_frame` refuses it.
                let n = if len > max_frame_size() {
                    HEADER_LEN
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
            let h = &self.buf[self.start..self.end];
            HEADER_LEN.saturating_add(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
        };
        let room = self.room(Some(frame_len)).len();
        let n = self.read_into_room(fd, Some(frame_len))?;
        let drained = n < room || drained_at == Some(n);
        Ok((n, drained))
    }

    /// Reads the next frame from a blocking descriptor.
    pub(crate) fn recv_blocking(&mut self, fd: BorrowedFd<'_>) -> Result<Frame> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            match self.read_once(fd) {
                Ok(0) => return self.at_eof(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Writes a sealed frame to a blocking descriptor.
pub(crate) fn send_blocking(fd: BorrowedFd<'_>, frame: &mut FrameBuf) -> Result<()> {
    frame.seal()?;
    let raw = frame.raw_fds();
    for (i, part) in [&frame.buf[..], &frame.tail[..]].into_iter().enumerate() {
        let mut off = 0;
        while off < part.len() {
            let fds: &[RawFd] = if i == 0 && off == 0 { &raw } else { &[] };
            match sys::send_with_fds(fd, &part[off..], fds) {
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
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

/// Makes a tokio stream out of a socket descriptor (switching it to non-blocking).
pub(crate) fn into_stream(fd: OwnedFd) -> Result<UnixStream> {
    sys::set_nonblocking(fd.as_fd(), true)?;
    Ok(UnixStream::from_std(std::os::unix::net::UnixStream::from(
        fd,
    ))?)
}

/// The receiving half of a framed socket.
#[derive(Debug)]
pub(crate) struct FrameReader {
    io: Arc<UnixStream>,
    buf: RecvBuf,
}

/// The sending half of a framed socket.
#[derive(Debug, Clone)]
pub(crate) struct FrameWriter {
    io: Arc<UnixStream>,
}

/// Splits a socket into its framed halves.
pub(crate) fn framed(stream: UnixStream) -> (FrameReader, FrameWriter) {
    framed_after(stream, RecvBuf::new())
}

/// Like [`framed`], for a socket already read from through `buf` (bytes it holds are the
/// start of what the reader gives).
pub(crate) fn framed_after(stream: UnixStream, buf: RecvBuf) -> (FrameReader, FrameWriter) {
    let io = Arc::new(stream);
    (
        FrameReader {
            io: io.clone(),
            buf,
        },
        FrameWriter { io },
    )
}

impl FrameReader {
    /// Receives the next frame.
    ///
    /// # Errors
    /// [`Error::Closed`] at a clean end of stream; [`Error::Protocol`] if the stream ends
    /// inside a frame or a frame is malformed; [`Error::FrameTooLarge`] for a header that
    /// announces more than the maximum frame size.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes already read stay in the buffer for the next call.
    pub(crate) async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.buf.next_frame()? {
                return Ok(f);
            }
            let io = self.io.clone();
            let buf = &mut self.buf;
            let n = io
                .async_io(Interest::READABLE, || buf.read_once(io.as_fd()))
                .await?;
            if n == 0 {
                return self.buf.at_eof();
            }
        }
    }
}

impl FrameReader {
    /// Receives the next frame if it is buffered or can be read at once, without waiting and
    /// without the reactor: `None` when the socket has no complete frame now (bytes of a
    /// partial one stay buffered for the next call).
    pub(crate) fn try_recv(&mut self) -> Option<Result<Frame>> {
        loop {
            match self.buf.next_frame() {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.buf.read_once(self.io.as_fd()) {
                Ok(0) => return Some(self.buf.at_eof()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Waits actively, for at most `limit`, until the socket has input; returns whether it
    /// has. A process that sleeps in the reactor pays a wake-up when input arrives (tens of
    /// microseconds on a virtual machine); one that is still spinning here does not.
    pub(crate) fn spin_for_input(&self, limit: Duration) -> bool {
        let start = std::time::Instant::now();
        loop {
            if sys::has_input(self.io.as_fd()) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::hint::spin_loop();
        }
    }
}

impl FrameWriter {
    /// Sends a frame, descriptors included.
    ///
    /// # Cancel safety
    /// Not cancel safe: a send dropped midway leaves part of a frame on the socket, after
    /// which the stream is unusable. Callers that may be cancelled send from a task of their
    /// own.
    pub(crate) async fn send(&self, frame: &mut FrameBuf) -> Result<()> {
        frame.seal()?;
        let raw = frame.raw_fds();
        let mut off = 0;
        while off < frame.buf.len() {
            let fds: &[RawFd] = if off == 0 { &raw } else { &[] };
            let data = &frame.buf[off..];
            off += self
                .io
                .async_io(Interest::WRITABLE, || {
                    sys::send_with_fds(self.io.as_fd(), data, fds)
                })
                .await?;
        }
        self.write_all(&frame.tail).await
    }
}

impl FrameWriter {
    /// Sends several frames in order, frames without descriptors written together in as few
    /// system calls as the socket allows.
    ///
    /// # Cancel safety
    /// Not cancel safe, like [`send`](Self::send).
    pub(crate) async fn send_batch(&self, frames: &mut [FrameBuf]) -> Result<()> {
        let mut joined: Vec<u8> = Vec::new();
        for f in frames.iter_mut() {
            if !f.fds.is_empty() {
                self.write_all(&joined).await?;
                joined.clear();
                self.send(f).await?;
                continue;
            }
            f.seal()?;
            if joined.is_empty() {
                joined = std::mem::take(&mut f.buf);
            } else {
                joined.extend_from_slice(&f.buf);
            }
            if !f.tail.is_empty() {
                self.write_all(&joined).await?;
                joined.clear();
                self.write_all(&f.tail).await?;
            }
        }
        self.write_all(&joined).await
    }

    async fn write_all(&self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = self
                .io
                .async_io(Interest::WRITABLE, || {
                    sys::send_with_fds(self.io.as_fd(), data, &[])
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(rb: &mut RecvBuf, bytes: &[u8]) {
        let spare = rb.room(None);
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        rb.filled(n);
    }

    /// Feeds all of `bytes` through the buffer's own room, read after read, handing each
    /// frame that completes to `each` (which drops it, or keeps it).
    fn feed_through(rb: &mut RecvBuf, bytes: &[u8], mut each: impl FnMut(Frame)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = rb.room(None);
            let n = rest.len().min(spare.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rb.filled(n);
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
            f.seal().unwrap();
            (payload, [&f.buf[..], &f.tail[..]].concat())
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
    fn frames_split_and_join() {
        let mut wire = Vec::new();
        for i in 0..3u32 {
            let mut f = FrameBuf::of(&(i, "abc")).unwrap();
            f.seal().unwrap();
            wire.extend_from_slice(&f.buf);
            wire.extend_from_slice(&f.tail[..]);
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
            let mut f = FrameBuf::of(&(i, "small")).unwrap();
            f.seal().unwrap();
            feed(&mut rb, &f.buf);
            assert!(rb.next_frame().unwrap().is_some());
        }
        assert_eq!(rb.buf.len(), FIRST_READ_CHUNK);
        // Reads that fill all the room they get (many small frames waiting) double it, up
        // to READ_CHUNK.
        let mut many = Vec::new();
        for i in 0..20_000u32 {
            let mut f = FrameBuf::of(&i).unwrap();
            f.seal().unwrap();
            many.extend_from_slice(&f.buf);
        }
        let mut got = 0;
        feed_through(&mut rb, &many, |_| got += 1);
        assert_eq!(got, 20_000);
        assert_eq!(rb.buf.len(), READ_CHUNK);
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
            assert_eq!(rb.end, rb.start, "nothing of the next frame was read");
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
    fn an_absurd_length_is_refused_without_allocating_it() {
        let mut rb = RecvBuf::new();
        feed(&mut rb, &[0xff, 0xff, 0xff, 0xf0, 0]);
        assert!(matches!(rb.next_frame(), Err(Error::FrameTooLarge { .. })));
        assert!(rb.buf.len() <= READ_CHUNK);
    }
}

#[cfg(test)]
mod fuzz {
    //! Random and mutated frames through the receive buffer and the decoders: every outcome
    //! is a frame or an error, never a panic, a hang or an allocation of a claimed length.

    use super::*;
    use crate::wire::Hello;

    #[derive(serde::Serialize)]
    enum Reply {
        Refused(String),
    }

    /// xorshift64*: deterministic, so a failure can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn valid_frames() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut push = |f: &mut FrameBuf| {
            f.seal().unwrap();
            out.push([&f.buf[..], &f.tail[..]].concat());
        };
        push(&mut FrameBuf::of(&Hello::ours()).unwrap());
        push(&mut FrameBuf::of(&Reply::Refused("a reason".into())).unwrap());
        push(&mut FrameBuf::of(&(1u32, "text", vec![1u8; 300], -5i64, 2.5f64)).unwrap());
        push(&mut FrameBuf::of(&vec![vec![(1u8, 'x')]; 20]).unwrap());
        out
    }

    fn feed_all(bytes: &[u8], rng: &mut Rng) -> usize {
        let mut rb = RecvBuf::new();
        let mut frames = 0;
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(700));
            let spare = rb.room(None);
            let n = n.min(spare.len());
            spare[..n].copy_from_slice(&rest[..n]);
            rb.filled(n);
            rest = &rest[n..];
            assert!(
                rb.buf.len() <= 2 * (bytes.len() + READ_CHUNK),
                "buffer grew past what arrived"
            );
            loop {
                match rb.next_frame() {
                    Ok(Some(f)) => {
                        frames += 1;
                        let _ = codec::decode::<Hello>(f.body(), vec![]).map(|h| h.check().is_ok());
                        let _ = codec::decode::<(u32, String, Vec<u8>, i64, f64)>(f.body(), vec![]);
                        let _ = codec::decode::<Vec<Vec<(u8, char)>>>(f.body(), vec![]);
                        let _ = codec::value_len(f.body());
                    }
                    Ok(None) => break,
                    Err(_) => return frames,
                }
            }
        }
        let _ = rb.at_eof();
        frames
    }

    #[test]
    fn ten_thousand_random_and_mutated_frames() {
        // The buffer's own growth is checked: a kept buffer (memory already held) could be
        // larger than what arrived.
        super::NO_KEPT_BUFFERS.with(|c| c.set(true));
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let valid = valid_frames();
        let mut decoded = 0;
        for i in 0..12_000 {
            let mut bytes = valid[rng.below(valid.len())].clone();
            match i % 6 {
                0 => {
                    // pure noise
                    let n = rng.below(2000);
                    bytes = (0..n).map(|_| rng.next() as u8).collect();
                }
                1 => {
                    // bit flips
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                }
                2 => {
                    // truncation
                    bytes.truncate(rng.below(bytes.len()));
                }
                3 => {
                    // absurd or lying length header
                    let len = match rng.below(3) {
                        0 => u32::MAX,
                        1 => (rng.next() as u32) | 0x8000_0000,
                        _ => rng.below(bytes.len() * 2) as u32,
                    };
                    bytes[..4].copy_from_slice(&len.to_be_bytes());
                }
                4 => {
                    // a descriptor count with no descriptors behind it
                    bytes[4] = 1 + rng.below(250) as u8;
                }
                _ => {
                    // body bytes replaced by MessagePack markers claiming huge containers
                    for _ in 0..1 + rng.below(4) {
                        let at = HEADER_LEN + rng.below(bytes.len() - HEADER_LEN);
                        bytes[at] = [0xdd, 0xdf, 0xc6, 0xdb, 0xc9, 0xc1][rng.below(6)];
                    }
                }
            }
            decoded += feed_all(&bytes, &mut rng);
        }
        // Unmutated truncations and some bit flips in the body still decode as frames.
        assert!(decoded > 1000, "only {decoded} frames came through");
    }

    #[test]
    fn garbage_in_a_decoder_never_allocates_what_it_claims() {
        // An array header claiming 4 billion elements followed by nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(codec::decode::<Vec<u64>>(&bytes, vec![]).is_err());
        let bytes = [0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2];
        assert!(codec::decode::<Vec<u8>>(&bytes, vec![]).is_err());
    }
}
