//! Frames going out: [`FrameBuf`], a frame built from encoded values, and [`SharedBytes`],
//! a part of its body sent from where it lies.

use std::fmt;
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use serde::Serialize;

use super::HAND_OVER;
use super::header::{HEADER_LEN, write_header};
use crate::error::Result;
use crate::wire::codec::{self, Encoded};

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

    /// Appends the encoding of `value` to the body (as [`push`](Self::push)) unless it
    /// writes a single piece (a byte string, say) of `piece` bytes or more: `Ok(false)` then,
    /// found out on meeting it, and the frame is left as it was.
    pub(crate) fn push_unless_piece<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        piece: usize,
    ) -> Result<bool> {
        if !self.tail.is_empty() {
            return Ok(false);
        }
        codec::encode_within(&mut self.buf, &mut self.fds, value, usize::MAX, piece)
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

    /// The size of the frame's body: what a receiver's maximum frame size is measured
    /// against.
    pub(crate) fn body_len(&self) -> usize {
        self.wire_len().saturating_sub(HEADER_LEN)
    }

    /// Fails if the frame could not be sent: a body over the maximum frame size, or too
    /// many descriptors.
    pub(crate) fn check_size(&mut self) -> Result<()> {
        self.seal()
    }

    /// A frame whose body is `data` as it is, not MessagePack (a `Connection`'s
    /// `send_bytes`). The bytes are copied behind the header, so the frame goes out in one
    /// piece.
    pub(crate) fn raw(data: &[u8]) -> FrameBuf {
        let mut buf = Vec::with_capacity(HEADER_LEN + data.len());
        buf.extend_from_slice(&[0; HEADER_LEN]);
        buf.extend_from_slice(data);
        FrameBuf {
            buf,
            tail: Tail::Owned(Vec::new()),
            fds: Vec::new(),
        }
    }

    /// The header of a frame of a `body` bytes long without descriptors; fails if the body
    /// exceeds the maximum frame size.
    pub(in crate::wire) fn header(body: usize) -> Result<[u8; HEADER_LEN]> {
        let mut head = [0; HEADER_LEN];
        write_header(&mut head, body, 0)?;
        Ok(head)
    }

    /// Fills in the header; fails if the body exceeds the maximum frame size.
    pub(in crate::wire) fn seal(&mut self) -> Result<()> {
        let body = self.buf.len() - HEADER_LEN + self.tail.len();
        write_header(&mut self.buf, body, self.fds.len())
    }

    /// The descriptors that go with the frame.
    pub(in crate::wire) fn fd_count(&self) -> usize {
        self.fds.len()
    }

    pub(in crate::wire) fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// The frame's two parts as they go on the wire: header and head of the body, then its
    /// tail (often empty). Sealed first by the caller.
    pub(in crate::wire) fn parts(&self) -> [&[u8]; 2] {
        [&self.buf, &self.tail]
    }

    /// Takes the header and head of the body out (leaving the frame empty there), for
    /// frames sent together to be joined into one buffer without a copy of the first.
    pub(in crate::wire) fn take_head(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}
