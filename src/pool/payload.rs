//! [`Payload`]: a task's arguments as they are sent to a worker.

use std::os::fd::AsFd;

use crate::error::Result;
use crate::sys;
use crate::wire::SharedBytes;
use crate::wire::{Encoded, FrameBuf};

/// A task's arguments as they are sent: their encoding, then, for a chunk of plain numbers,
/// the chunk's bytes, shared with the rest of the map's input.
pub(super) struct Payload {
    head: Encoded,
    shared: Option<SharedBytes>,
}

impl From<Encoded> for Payload {
    fn from(head: Encoded) -> Payload {
        Payload { head, shared: None }
    }
}

impl Payload {
    /// A chunk of plain numbers: the head of its encoding, then its bytes, shared with the
    /// rest of the map's input.
    pub(super) fn plain_chunk(head: Vec<u8>, bytes: SharedBytes) -> Payload {
        Payload {
            head: Encoded {
                bytes: head,
                fds: Vec::new(),
            },
            shared: Some(bytes),
        }
    }

    /// A copy for one more worker: the encoding copied, descriptors duplicated, shared
    /// bytes shared.
    pub(super) fn try_clone(&self) -> Result<Payload> {
        Ok(Payload {
            head: clone_encoded(&self.head)?,
            shared: self.shared.clone(),
        })
    }

    /// Whether the arguments hold descriptors.
    pub(super) fn has_fds(&self) -> bool {
        !self.head.fds.is_empty()
    }

    /// The size of the arguments in a frame, in bytes.
    pub(super) fn len(&self) -> usize {
        self.head.bytes.len() + self.shared.as_ref().map_or(0, |s| s.as_slice().len())
    }

    /// Appends the arguments to a task's frame.
    pub(super) fn push_to(self, frame: &mut FrameBuf) {
        frame.push_encoded(self.head);
        if let Some(s) = self.shared {
            frame.push_shared(s);
        }
    }
}

/// A copy of encoded arguments, descriptors duplicated, for one more worker.
pub(super) fn clone_encoded(e: &Encoded) -> Result<Encoded> {
    let fds = e
        .fds
        .iter()
        .map(|f| sys::dup_fd(f.as_fd()))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Encoded {
        bytes: e.bytes.clone(),
        fds,
    })
}
