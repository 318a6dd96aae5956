//! Frames: a 5-byte header (`u32` big-endian body length, `u8` count of descriptors sent
//! beside the frame) and a MessagePack body.
//!
//! Descriptors ride on the `sendmsg` that carries the first byte of their frame, so by the
//! time a frame is complete in the receive buffer, its descriptors have arrived: they are
//! queued in arrival order and each frame takes as many as its header announces.
//!
//! - `header`: the header's layout and limits.
//! - `out`: frames built to be sent ([`FrameBuf`]), large parts sent without a copy.
//! - `received`: frames received ([`Frame`]) and the large buffers they leave behind.
//! - `recv`: the receive buffer ([`RecvBuf`]) that reads make frames of.
//! - `blocking`: frames on a descriptor without a runtime.
//!
//! The socket that carries frames is [`Framed`](crate::wire::Framed), beside this module.
//! Outside `wire`, these items are reached through the re-exports of `wire/mod.rs`.

mod blocking;
#[cfg(test)]
mod fuzz;
mod header;
mod out;
mod received;
mod recv;

pub(crate) use blocking::{send_blocking, send_early};
pub(crate) use out::{FrameBuf, SharedBytes};
pub(crate) use received::Frame;
pub(crate) use recv::RecvBuf;

/// Frames at least this large are handed over without a copy: sent from their own buffer,
/// and received into one that becomes the frame's.
const HAND_OVER: usize = 64 * 1024;
