//! The socket side: items that do not fit a slot, or that hold descriptors, travel as one
//! `SOCK_SEQPACKET` packet each, with a marker in the ring in their place (see "Mechanism"
//! in the queue's docs). Producers send a packet and publish its marker under the *packet
//! lock*, a cross-process mutex (an `EFD_SEMAPHORE` eventfd holding 1 when free, awaited on
//! the reactor), so packets sit in the socket in the order of their markers in the ring.
//! Consumers need no lock: whoever takes a marker receives one packet.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::INLINE_MAX;
use super::inner::Inner;
use super::reactor::Reactor;
use crate::error::{Error, Result};
use crate::on_drop::OnDrop;
use crate::sync::until;
use crate::sys::{self, Pushed};

/// The packet lock, just taken: released when the guard drops.
fn held(lock: &Arc<OwnedFd>) -> OnDrop<impl FnOnce() + Send + 'static> {
    let lock = lock.clone();
    OnDrop::new(move || {
        if let Err(e) = sys::eventfd_add(lock.as_fd(), 1) {
            tracing::debug!("cannot release a queue's packet lock: {e}");
        }
    })
}

impl Inner {
    /// Takes the packet lock now, if it is free.
    fn try_lock(&self) -> Result<Option<OnDrop<impl FnOnce() + Send + 'static>>> {
        match sys::eventfd_take(self.lock.as_fd()) {
            Ok(_) => Ok(Some(held(&self.lock))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the packet lock, waiting for it on the reactor.
    async fn lock(&self, r: &Reactor) -> Result<OnDrop<impl FnOnce() + Send + 'static>> {
        loop {
            let mut g = r.lock.readable().await?;
            match g.try_io(|_| sys::eventfd_take(self.lock.as_fd())) {
                Ok(Ok(_)) => return Ok(held(&self.lock)),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// Sends a packet on the socket, waiting for room in its buffer.
    async fn send_packet(&self, r: &Reactor, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut g = r.tx.writable().await?;
            match g.try_io(|a| sys::send_with_fds(a.get_ref().as_fd(), bytes, &raw)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// Puts a packet, waiting for the packet lock and for room until `deadline`, if any
    /// ([`Error::Timeout`] after it, with nothing put). Cancel safe: once the packet is sent
    /// its marker always follows, and the put succeeds, deadline or not.
    pub(super) async fn put_packet(
        self: &Arc<Self>,
        r: &Reactor,
        bytes: &[u8],
        fds: &[OwnedFd],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<()> {
        let lock = until(deadline, self.lock(r)).await?;
        let cap = self.ring.capacity();
        if self.ring.len() >= cap {
            let room = self.wait_until(&r.space, self.header().producers(), || {
                Ok(self.ring.len() < cap)
            });
            until(deadline, room).await?;
        }
        until(deadline, self.send_packet(r, bytes, fds)).await?;
        match self.push_marker(lock) {
            None => Ok(()),
            Some(task) => task.await.map_err(|e| Error::from(io::Error::other(e)))?,
        }
    }

    /// Puts a packet if the packet lock is free and there is room now, else fails with
    /// [`Error::Full`].
    pub(super) fn put_packet_now(self: &Arc<Self>, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
        // A producer holding the packet lock may be waiting for room: full.
        let Some(lock) = self.try_lock()? else {
            return Err(Error::Full);
        };
        if self.ring.len() >= self.ring.capacity() {
            return Err(Error::Full);
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            match sys::send_with_fds(self.tx.as_fd(), bytes, &raw) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::Full);
                }
                Err(e) => return Err(e.into()),
            }
        }
        // If the ring filled up since we looked, the marker goes in as soon as there is
        // room, from a task of its own.
        let _ = self.push_marker(lock);
        Ok(())
    }

    /// Publishes the marker of a packet just sent, still under the packet lock. It must
    /// happen whatever becomes of the caller, so if small items filled the ring meanwhile,
    /// a task (or, outside a runtime, a thread) of its own finishes it, holding the lock.
    fn push_marker(
        self: &Arc<Self>,
        lock: OnDrop<impl FnOnce() + Send + 'static>,
    ) -> Option<tokio::task::JoinHandle<Result<()>>> {
        if self.try_push(None) == Pushed::Done {
            drop(lock);
            return None;
        }
        let q = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Some(h.spawn(async move {
                let r = q.registered()?;
                let res = q.push_waiting(&r, None).await;
                drop(lock);
                res
            })),
            Err(_) => {
                std::thread::spawn(move || {
                    let producers = q.header().producers();
                    let _counted = producers.count_waiter();
                    loop {
                        producers.rearm();
                        // A blocking wait on the eventfd (and on a live holder of the slot,
                        // as in `push_waiting`): this thread has nothing else to do.
                        let holder = match q.try_push(None) {
                            Pushed::Done => break,
                            Pushed::Full => None,
                            Pushed::Held(pid) => match sys::pidfd_of(pid) {
                                Ok(Some(fd)) => Some(fd),
                                // Gone: the next try frees its slot.
                                Ok(None) => continue,
                                Err(_) => None,
                            },
                        };
                        let space = q.space.as_fd();
                        let _ = match &holder {
                            Some(fd) => sys::poll_readable(&[space, fd.as_fd()], None),
                            None => sys::poll_readable(&[space], None),
                        };
                    }
                    drop(lock);
                });
                None
            }
        }
    }

    /// Takes one packet from the socket now, for a marker just taken from the ring.
    pub(super) fn recv_packet_now(&self, buf: &mut Vec<u8>) -> Result<(usize, VecDeque<OwnedFd>)> {
        if buf.len() < INLINE_MAX + 16 {
            buf.resize(INLINE_MAX + 16, 0);
        }
        let mut fds = VecDeque::new();
        loop {
            match sys::recv_with_fds(self.rx.as_fd(), buf, &mut fds) {
                Ok(n) => return Ok((n, fds)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(Error::Protocol(
                        "a queue marker was taken but its packet is missing".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
