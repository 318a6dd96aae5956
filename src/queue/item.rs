//! An item as the queue carries it: encoded once, put the way its size calls for (in a
//! ring slot, in a packet, or spilled to a memfd), and taken and decoded on the other side.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::SLOT_DATA;
use super::inner::Inner;
use super::spill::{Spilled, Spilling};
use crate::error::{Error, Result};
use crate::sync::until;
use crate::sys::{self, Popped, Pushed};
use crate::wire::codec;
use crate::wire::max_frame_size;

/// The first byte of a packet: the item's encoding follows.
const KIND_INLINE: u8 = 0;
/// The first byte of a packet: the item's length follows, its encoding is in a memfd.
const KIND_SPILLED: u8 = 1;

/// An item encoded for the queue.
pub(super) enum Item {
    /// Fits a ring slot.
    Small(Vec<u8>),
    /// Goes through the socket: packet bytes and descriptors.
    Packet(Vec<u8>, Vec<OwnedFd>),
}

impl Inner {
    pub(super) fn encode<T: Serialize>(&self, item: &T) -> Result<Item> {
        thread_local! {
            /// Reused for encoding: an item's bytes up to a packet's worth, and a large
            /// item's small pieces on their way to its spill file.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => self.encode_with(&mut buf, item),
            Err(_) => self.encode_with(&mut Vec::new(), item),
        })
    }

    fn encode_with<T: Serialize>(&self, bytes: &mut Vec<u8>, item: &T) -> Result<Item> {
        bytes.clear();
        bytes.push(KIND_INLINE);
        let mut fds = Vec::new();
        let mut out = Spilling::new(self, bytes, max_frame_size());
        codec::encode_to(&mut out, &mut fds, item)?;
        let spilled = out.finish()?;
        if fds.len() >= sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "a queue item may hold at most {} descriptors, this one holds {}",
                sys::MAX_FDS_PER_MESSAGE - 1,
                fds.len()
            )));
        }
        match spilled {
            Spilled::Inline if fds.is_empty() && bytes.len() - 1 <= SLOT_DATA => {
                Ok(Item::Small(bytes[1..].to_vec()))
            }
            Spilled::Inline => Ok(Item::Packet(bytes.clone(), fds)),
            Spilled::File(file, len) => {
                let mut head = vec![KIND_SPILLED];
                head.extend_from_slice(&(len as u64).to_be_bytes());
                let mut all = Vec::with_capacity(fds.len() + 1);
                all.push(file);
                all.extend(fds);
                Ok(Item::Packet(head, all))
            }
        }
    }

    /// Puts an encoded item, waiting for room. Cancel safe: a small item is published in one
    /// step; a packet is sent and its marker published under the packet lock, and once the
    /// packet is sent its marker always follows.
    pub(super) async fn put_item(
        self: &Arc<Self>,
        item: &Item,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<()> {
        self.check_open()?;
        let r = self.reactor()?;
        match item {
            Item::Small(b) => until(deadline, self.push_waiting(&r, Some(b))).await,
            Item::Packet(bytes, fds) => self.put_packet(&r, bytes, fds, deadline).await,
        }
    }

    /// Puts an encoded item if there is room now, else fails with [`Error::Full`].
    pub(super) fn put_item_now(self: &Arc<Self>, item: Item) -> Result<()> {
        match item {
            Item::Small(b) => {
                if self.try_push(Some(&b)) == Pushed::Done {
                    Ok(())
                } else {
                    Err(Error::Full)
                }
            }
            Item::Packet(bytes, fds) => self.put_packet_now(&bytes, &fds),
        }
    }

    /// Takes the oldest item now, if there is one. Once a slot is taken the item is consumed,
    /// even if it then fails to decode. A marker whose packet is not in the socket is one
    /// published for a producer that died before it could send its packet (see
    /// `packet.rs`): it stands for no item, and the next slot is taken instead.
    pub(super) fn try_take<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        loop {
            let mut buf = self.rbuf.lock().unwrap_or_else(|p| p.into_inner());
            let popped = self.ring.try_pop(&mut buf);
            if matches!(popped, Ok(Some(_))) {
                self.recent.mark();
                self.notify_producers();
            }
            match popped? {
                None => return Ok(None),
                Some(Popped::Data(n)) => return codec::decode(&buf[..n], Vec::new()).map(Some),
                Some(Popped::Marker) => {
                    drop(buf);
                    let mut pbuf = self.pbuf.lock().unwrap_or_else(|p| p.into_inner());
                    match self.recv_packet_now(&mut pbuf)? {
                        Some((n, fds)) => return self.decode_packet(&pbuf[..n], fds).map(Some),
                        None => self.forget_marker(),
                    }
                }
            }
        }
    }

    fn decode_packet<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        fds: VecDeque<OwnedFd>,
    ) -> Result<T> {
        match bytes.first() {
            Some(&KIND_INLINE) => codec::decode(&bytes[1..], fds.into()),
            Some(&KIND_SPILLED) if bytes.len() == 9 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&bytes[1..9]);
                let len = u64::from_be_bytes(len);
                let max = max_frame_size();
                if len > max as u64 {
                    return Err(Error::FrameTooLarge { size: len, max });
                }
                self.unspill(len as usize, fds)
            }
            _ => Err(Error::Protocol(
                "a queue packet of an unknown kind arrived".into(),
            )),
        }
    }
}
