//! [`Inner`]: what every clone of a queue handle shares in one process. It holds the queue's
//! descriptors and its mapped ring, which other processes hold too, and this handle's own
//! state (closed, registrations, receive buffers). It is made fresh by `Queue::new` and
//! its kin, or from descriptors received from another process (its serde impl).

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::header::Header;
use super::reactor::Reactor;
use super::spill::RECYCLE_BUFFER;
use crate::awake::Recent;
use crate::error::{Error, Result};
use crate::sync::Lock;
use crate::sys;
use crate::wire::{Fd, FdRef};

/// The number of items an unbounded queue holds before `put` waits for a consumer.
pub(super) const UNBOUNDED_CAPACITY: usize = 32 * 1024;

/// The largest `maxsize` a queue may have.
pub(super) const MAX_MAXSIZE: usize = 1 << 22;

/// The send buffer a queue's socket asks for, in bytes.
const SEND_BUFFER: usize = 32 * 1024 * 1024;

/// See the module docs.
pub(super) struct Inner {
    /// The packet socket pair: producers send on `tx`, consumers receive on `rx`.
    pub(super) tx: Arc<OwnedFd>,
    pub(super) rx: Arc<OwnedFd>,
    /// Spill files handed back by consumers, for producers to write the next large item
    /// into without allocating fresh pages.
    pub(super) ret_tx: OwnedFd,
    pub(super) ret_rx: OwnedFd,
    pub(super) ring: sys::ShmRing,
    pub(super) maxsize: usize,
    /// Wakes consumers waiting for an item.
    pub(super) items: Arc<OwnedFd>,
    /// Wakes producers waiting for room.
    pub(super) space: Arc<OwnedFd>,
    /// The packet lock (see `packet.rs`): the crate's own [`Lock`], so that a holder's death
    /// is noticed.
    pub(super) lock: Lock,
    /// The take lock: held by a consumer from taking a marker to receiving its packet (see
    /// `packet.rs`).
    pub(super) take: Lock,
    /// Wakes joiners when no item is left unfinished; only in a joinable queue.
    pub(super) done: Option<Arc<OwnedFd>>,
    closed: AtomicBool,
    /// The registrations with the reactor of the runtime (by its id) that last needed them
    /// (see `reactor.rs`).
    pub(super) registrations: Mutex<Option<(tokio::runtime::Id, Arc<Reactor>)>>,
    /// Receives slots.
    pub(super) rbuf: Mutex<Vec<u8>>,
    /// Receives packets; kept at full size, so a large packet costs no fresh zeroed buffer.
    pub(super) pbuf: Mutex<Vec<u8>>,
    /// When this handle last put or took an item: whether a wait may spin first.
    pub(super) recent: Recent,
    /// Views of spill files kept for their files' next items.
    pub(super) views: sys::KeptViews,
    /// Writable views of spill files taken back for reuse, kept for their files' next items.
    pub(super) writers: sys::KeptViews,
    /// A spilled item this process took but could not map for want of memory: the next take
    /// of this handle (or a clone) returns it first.
    pub(super) kept_back: Mutex<Option<KeptBack>>,
}

/// A spilled item taken off the queue whose file could not be mapped yet: its length, its
/// file, and the descriptors it holds.
pub(super) type KeptBack = (usize, OwnedFd, VecDeque<OwnedFd>);

/// The ring's number of slots for a queue of `maxsize` (0: unbounded).
fn ring_capacity(maxsize: usize) -> usize {
    if maxsize == 0 {
        UNBOUNDED_CAPACITY
    } else {
        maxsize
    }
}

impl Inner {
    /// A new queue of `maxsize` items (0: unbounded), joinable or not.
    pub(super) fn create(maxsize: usize, joinable: bool) -> Result<Inner> {
        if maxsize > MAX_MAXSIZE {
            return Err(Error::InvalidArgument(format!(
                "maxsize {maxsize} is larger than {MAX_MAXSIZE}"
            )));
        }
        let capacity = ring_capacity(maxsize);
        // Each `sendmsg` is one packet and each `recvmsg` takes one whole packet, whatever
        // the number of processes on either end.
        let (tx, rx) = sys::socketpair_seqpacket()?;
        sys::set_nonblocking(tx.as_fd(), true)?;
        sys::set_nonblocking(rx.as_fd(), true)?;
        let (ret_tx, ret_rx) = sys::socketpair_seqpacket()?;
        sys::set_nonblocking(ret_tx.as_fd(), true)?;
        sys::set_nonblocking(ret_rx.as_fd(), true)?;
        // A small buffer bounds how many spill files wait there for reuse.
        if let Err(e) = sys::grow_send_buffer(ret_tx.as_fd(), RECYCLE_BUFFER) {
            tracing::debug!("cannot size a queue's recycling socket: {e}");
        }
        if let Err(e) = sys::grow_send_buffer(tx.as_fd(), SEND_BUFFER) {
            tracing::debug!("cannot grow a queue's send buffer: {e}");
        }
        let done = if joinable {
            Some(Arc::new(sys::eventfd(false)?))
        } else {
            None
        };
        Ok(Inner {
            tx: Arc::new(tx),
            rx: Arc::new(rx),
            ret_tx,
            ret_rx,
            ring: sys::ShmRing::new(capacity as u64)?,
            maxsize,
            items: Arc::new(sys::eventfd(false)?),
            space: Arc::new(sys::eventfd(false)?),
            lock: Lock::new()?,
            take: Lock::new()?,
            done,
            closed: AtomicBool::new(false),
            registrations: Mutex::new(None),
            rbuf: Mutex::new(Vec::new()),
            pbuf: Mutex::new(Vec::new()),
            recent: Recent::default(),
            views: sys::KeptViews::default(),
            writers: sys::KeptViews::default(),
            kept_back: Mutex::new(None),
        })
    }

    /// The queue's words in the ring's header.
    pub(super) fn header(&self) -> Header<'_> {
        Header::of(&self.ring)
    }

    /// Marks this handle (and its clones) closed and drops its registrations.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        *self.registrations.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::HandleClosed { object: "queue" })
        } else {
            Ok(())
        }
    }

    /// The joinable queue's eventfd, or an error for a plain queue.
    pub(super) fn done_fd(&self) -> Result<&Arc<OwnedFd>> {
        self.done
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("not a JoinableQueue".into()))
    }
}

impl Serialize for Inner {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.is_closed() {
            return Err(serde::ser::Error::custom(
                "a queue closed by close() cannot be sent to another process",
            ));
        }
        (
            self.maxsize as u64,
            FdRef(self.tx.as_fd()),
            FdRef(self.rx.as_fd()),
            (FdRef(self.ret_tx.as_fd()), FdRef(self.ret_rx.as_fd())),
            FdRef(self.ring.fd()),
            FdRef(self.items.as_fd()),
            FdRef(self.space.as_fd()),
            (&self.lock, &self.take),
            self.done.as_ref().map(|f| FdRef(f.as_fd())),
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        type Wire = (u64, Fd, Fd, (Fd, Fd), Fd, Fd, Fd, (Lock, Lock), Option<Fd>);
        let (maxsize, tx, rx, (ret_tx, ret_rx), ring, items, space, (lock, take), done) =
            Wire::deserialize(d)?;
        let ring = sys::ShmRing::open(ring.into_owned()).map_err(serde::de::Error::custom)?;
        let maxsize = usize::try_from(maxsize).map_err(serde::de::Error::custom)?;
        if ring.capacity() != ring_capacity(maxsize) as u64 {
            return Err(serde::de::Error::custom(
                "a queue arrived whose ring does not match its maxsize",
            ));
        }
        Ok(Inner {
            tx: Arc::new(tx.into_owned()),
            rx: Arc::new(rx.into_owned()),
            ret_tx: ret_tx.into_owned(),
            ret_rx: ret_rx.into_owned(),
            ring,
            maxsize,
            items: Arc::new(items.into_owned()),
            space: Arc::new(space.into_owned()),
            lock,
            take,
            done: done.map(|f| Arc::new(f.into_owned())),
            closed: AtomicBool::new(false),
            registrations: Mutex::new(None),
            rbuf: Mutex::new(Vec::new()),
            pbuf: Mutex::new(Vec::new()),
            recent: Recent::default(),
            views: sys::KeptViews::default(),
            writers: sys::KeptViews::default(),
            kept_back: Mutex::new(None),
        })
    }
}
