//! Frames come in: [`Frame`], a received body with its descriptors, and the large buffers
//! that dropped frames leave for the next ones to be read into.

use std::os::fd::OwnedFd;
use std::sync::Mutex;

use super::HAND_OVER;
use crate::error::Result;
use crate::wire::codec;

/// A received frame: its body and the descriptors that came with it.
#[derive(Debug)]
pub(crate) struct Frame {
    data: Vec<u8>,
    offset: usize,
    pub(crate) fds: Vec<OwnedFd>,
    /// Whether `data` is the payload of a body that is one MessagePack `bin` (read apart from
    /// the bytes before it, so that it can be handed over as it is).
    bin: bool,
    /// The whole body of a `bin` frame, if something asked for it as one slice.
    joined: std::sync::OnceLock<Vec<u8>>,
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
fn keep_buffer(mut buf: Vec<u8>) {
    if buf.capacity() < HAND_OVER {
        return;
    }
    buf.clear();
    let mut kept = KEPT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    let held: usize = kept.iter().map(Vec::capacity).sum();
    if kept.len() < KEPT_COUNT && held + buf.capacity() <= KEPT_BYTES {
        kept.push(buf);
    }
}

#[cfg(test)]
thread_local! {
    /// Turns kept buffers off on this thread, for tests of how a buffer grows by itself.
    pub(super) static NO_KEPT_BUFFERS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The smallest kept buffer with room for `len` bytes, taken (empty).
pub(super) fn take_kept_buffer(len: usize) -> Option<Vec<u8>> {
    #[cfg(test)]
    if NO_KEPT_BUFFERS.with(std::cell::Cell::get) {
        return None;
    }
    let mut kept = KEPT_BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    let (i, _) = kept
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())?;
    Some(kept.swap_remove(i))
}

impl Frame {
    /// The frame whose body is `data[offset..]`.
    pub(super) fn new(data: Vec<u8>, offset: usize, fds: Vec<OwnedFd>) -> Frame {
        Frame {
            data,
            offset,
            fds,
            bin: false,
            joined: std::sync::OnceLock::new(),
        }
    }

    /// The frame whose body is one MessagePack `bin` holding `payload`.
    pub(super) fn bin(payload: Vec<u8>) -> Frame {
        let mut frame = Frame::new(payload, 0, Vec::new());
        frame.bin = true;
        frame
    }

    /// Whether the body is one MessagePack `bin`, its payload held apart (see
    /// [`decode`](Self::decode)); [`body`](Self::body) joins them.
    pub(crate) fn is_bin(&self) -> bool {
        self.bin
    }

    pub(crate) fn body(&self) -> &[u8] {
        if self.bin {
            return self.joined.get_or_init(|| codec::bin_of(&self.data));
        }
        &self.data[self.offset..]
    }

    /// The body as a vector of its own: the frame's buffer, with the header moved out if it
    /// holds one (no new allocation either way; but one copy for a `bin` frame's body).
    pub(crate) fn into_body(mut self) -> Vec<u8> {
        if self.bin {
            return self.take_joined();
        }
        let mut data = std::mem::take(&mut self.data);
        data.drain(..self.offset);
        data
    }

    /// Decodes the first value of the body, then hands back the rest.
    pub(crate) fn decode_head<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        if self.bin {
            let body = self.take_joined();
            let fds = std::mem::take(&mut self.fds);
            *self = Frame::new(body, 0, fds);
        }
        let (v, used) = codec::decode_prefix::<T>(self.body(), Vec::new())?;
        self.offset += used;
        Ok(v)
    }

    /// A `bin` frame's whole body, joined (the frame keeps its payload otherwise).
    fn take_joined(&mut self) -> Vec<u8> {
        self.joined
            .take()
            .unwrap_or_else(|| codec::bin_of(&self.data))
    }

    /// Decodes the (rest of the) body as one value, giving it the frame's descriptors. A
    /// `bin` frame's payload is handed over as it is to a value that takes a byte buffer
    /// (a `serde_bytes::ByteBuf`, say).
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(mut self) -> Result<T> {
        let fds = std::mem::take(&mut self.fds);
        if self.bin {
            return codec::decode_bin(std::mem::take(&mut self.data), fds);
        }
        codec::decode(&self.data[self.offset..], fds)
    }

    /// Decodes the (rest of the) body through `seed`, giving it the frame's descriptors.
    pub(crate) fn decode_with<'a, S: serde::de::DeserializeSeed<'a>>(
        &'a mut self,
        seed: S,
    ) -> Result<S::Value> {
        let fds = std::mem::take(&mut self.fds);
        let this: &'a Frame = self;
        codec::decode_with(this.body(), fds, seed)
    }
}
