//! The wire: frames over Unix sockets and TCP, MessagePack bodies with descriptors on the
//! side, and the handshake every connection between our processes starts with.
//!
//! - `frame/`: the frame format, frames going out and coming in, receive buffers.
//! - `framed.rs`: [`Framed`], the one socket type that carries frames, over either transport.
//! - `codec.rs`: MessagePack with descriptors on the side; `plain.rs`: plain numbers as bytes.
//! - `fd.rs`: [`Fd`], a descriptor as a value; `handshake.rs`: [`Hello`].
//! - `gate.rs`: [`HandshakeGate`], the bound on a server's connections still in their
//!   authentication exchange.
//!
//! The rest of the crate reaches frames and sockets through the re-exports below; `codec`
//! and `plain` are named by their path where their functions are called (the encoders of
//! queue items, task arguments and manager requests, and serde's `with` attributes).

mod accept_retry;
pub(crate) mod codec;
mod fd;
mod frame;
mod framed;
mod gate;
mod handshake;
mod outbox;
pub(crate) mod plain;

use std::sync::atomic::{AtomicUsize, Ordering};

pub(crate) use accept_retry::AcceptRetry;
pub(crate) use codec::Encoded;
pub use fd::Fd;
pub(crate) use fd::{FdRef, SharedFd, SharedFdRef};
pub(crate) use frame::{Frame, FrameBuf, RecvBuf, SharedBytes, send_blocking, send_early};
pub(crate) use framed::{Framed, Now, Transport};
pub(crate) use gate::{HandshakeGate, Vouch};
pub(crate) use handshake::Hello;
pub(crate) use outbox::{Outbox, written};

/// The default maximum frame size: 1 GiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 1 << 30;

static MAX_FRAME: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_FRAME_SIZE);

/// Sets the largest message body (in bytes) this process will send or accept, and that the
/// children it starts from now on will use. A larger message fails with
/// [`Error::FrameTooLarge`](crate::Error::FrameTooLarge) on the side that meets it: the sender
/// before anything is written, the receiver as soon as the header arrives (nothing of the
/// announced size is allocated). The default is [`DEFAULT_MAX_FRAME_SIZE`]; the hard ceiling is
/// `u32::MAX` bytes.
///
/// Set it before starting pools: a running worker keeps the limit it started with, so a
/// result between a lowered limit and the worker's own reaches a pool that cannot read it,
/// and the pool kills that worker (its tasks fail with the cause). A manager's server is
/// told its clients' limits, and measures its replies by them; its clients are told the
/// limit it started with, and measure their requests by it. A [`Queue`](crate::Queue)'s
/// item is measured by its producer's limit alone: when a consumer takes it, it exists
/// already, and refusing it would lose it.
pub fn set_max_frame_size(bytes: usize) {
    MAX_FRAME.store(bytes.min(u32::MAX as usize), Ordering::Relaxed);
}

/// The largest message body this process sends or accepts; see [`set_max_frame_size`].
pub fn max_frame_size() -> usize {
    MAX_FRAME.load(Ordering::Relaxed)
}
