//! Items spilled to a memfd: a packet carries up to [`INLINE_MAX`](super::INLINE_MAX)
//! bytes; a larger item is written to a memfd and its packet carries the file's descriptor.
//! The consumer maps the file read-only, decodes from the mapping, unmaps it, and hands
//! files of up to 2 MiB back through a second small socket pair, for a producer to write its
//! next large item into without allocating fresh pages (see "Mechanism" in the queue's docs).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use serde::de::DeserializeOwned;

use super::inner::Inner;
use super::item::{Item, KIND_SPILLED};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::codec;

/// The send buffer of the socket that carries spill files back for reuse: a few of them.
pub(super) const RECYCLE_BUFFER: usize = 8 * 1024;

impl Inner {
    /// Writes `body` (an item's encoding) to a spill file, into a handed-back one if one
    /// waits: the packet holds the kind and length, and the file goes first among `fds`.
    pub(super) fn spill(&self, body: &[u8], fds: Vec<OwnedFd>) -> Result<Item> {
        let file = sys::spill_memfd(self.recycled(), body)?;
        let mut head = vec![KIND_SPILLED];
        head.extend_from_slice(&(body.len() as u64).to_be_bytes());
        let mut all = Vec::with_capacity(fds.len() + 1);
        all.push(file);
        all.extend(fds);
        Ok(Item::Packet(head, all))
    }

    /// Decodes a spilled item of `len` bytes from the file first among `fds`, then hands
    /// the file back.
    pub(super) fn unspill<T: DeserializeOwned>(
        &self,
        len: usize,
        mut fds: VecDeque<OwnedFd>,
    ) -> Result<T> {
        let file = fds.pop_front().ok_or_else(|| {
            Error::Protocol("a spilled queue item arrived without its file".into())
        })?;
        let view = sys::SpillView::map(file.as_fd(), len)?;
        let value = codec::decode(view.bytes(), fds.into());
        drop(view);
        self.recycle(file);
        value
    }

    /// A spill file handed back by a consumer, if one waits.
    fn recycled(&self) -> Option<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut fds = VecDeque::new();
        match sys::recv_with_fds(self.ret_rx.as_fd(), &mut byte, &mut fds) {
            Ok(_) => fds.pop_front(),
            Err(_) => None,
        }
    }

    /// Hands a spill file back for a producer to reuse, once it is read and unmapped; drops
    /// it if it is large or if enough wait already.
    fn recycle(&self, file: OwnedFd) {
        if sys::file_size(file.as_fd()).is_ok_and(|n| n <= sys::RECYCLE_MAX) {
            let _ = sys::send_with_fds(self.ret_tx.as_fd(), &[0], &[file.as_raw_fd()]);
        }
    }
}
