//! The socket side: items that do not fit a slot, or that hold descriptors, travel as one
//! `SOCK_SEQPACKET` packet each, with a marker in the ring in their place (see "Mechanism"
//! in the queue's docs). Producers send a packet and publish its marker under the *packet
//! lock*, the crate's own [`Lock`](crate::Lock), so packets sit in the socket in the order of
//! their markers in the ring; a packet begins with its marker's tag ([`TAG_LEN`] bytes, the
//! count of markers published before it). Consumers take a marker and receive its packet
//! under the *take lock*, so every consumer but one that died receives the packet of the
//! marker it took before the next marker is taken.
//!
//! A producer may die holding the packet lock, most often while its put waits for room. The
//! lock notices (see its owner death) and the next producer takes it. A holder that died
//! after it began to send its packet and before it published the marker may have left a
//! packet with no marker; it recorded so in the ring's header ([`Header::packet_sent`]), and
//! the next holder publishes that marker before its own packet. Whether a packet went out
//! when its sender died in the send is not known: the marker is published anyway, and a
//! consumer that takes a marker and finds no packet, or one of a later tag, first in the
//! socket treats the marker as one too many, so a marker too many costs nothing, where a
//! marker too few would shift every later large item by one.
//!
//! A consumer may die holding the take lock, between taking a marker and receiving its
//! packet; the next consumer takes the lock over and drops the packets of earlier tags it
//! meets before its own (see [`Inner::recv_packet_for`]). The tag is checked after the
//! receive, which costs no system call more: a packet of a later tag (the marker's own was
//! never sent) is taken for the marker, and the later marker skipped.
//!
//! [`Header::packet_sent`]: super::header::Header::packet_sent

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::INLINE_MAX;
use super::header::{COUNTED, SENDING};
use super::inner::Inner;
use super::reactor::Reactor;
use super::shutdown::PutKind;
use crate::error::{Error, Result};
use crate::sync::{LockGuard, Watch, until};
use crate::sys::{self, Pushed};

/// The bytes of a packet's tag, before its item: the tag of its marker (see
/// [`Header::next_tag`](super::header::Header::next_tag)).
pub(super) const TAG_LEN: usize = 8;

/// The packet lock, taken by this process: released when dropped, wherever that is (a
/// task that publishes a marker for its put may hold it past the put's return).
pub(super) struct PacketGuard {
    queue: Arc<Inner>,
}

impl PacketGuard {
    /// Takes over the lock a [`LockGuard`] holds, without the borrow.
    fn of(queue: &Arc<Inner>, guard: LockGuard<'_>) -> PacketGuard {
        guard.forget();
        PacketGuard {
            queue: queue.clone(),
        }
    }
}

impl Drop for PacketGuard {
    /// Releases the lock; a put given up before it sent its packet (an error, a timeout, a
    /// dropped future, a shutdown) first says it sent nothing, and wakes the gets that wait
    /// to see what becomes of its packet.
    fn drop(&mut self) {
        let sending = u64::from(sys::cached_pid()) | SENDING;
        let word = self.queue.header().packet_sent();
        let given_up = word
            .compare_exchange(sending, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if let Err(e) = self.queue.lock.release() {
            tracing::debug!("cannot release a queue's packet lock: {e}");
        }
        if given_up {
            self.queue.notify_consumers();
        }
    }
}

/// The duty to publish the marker of a packet sent, held by the task that waits for room
/// for it, with the packet lock. If the task is dropped before it is done (its runtime shut
/// down while this process lives on), a thread takes the duty over: the packet is in the
/// socket, and consumers wait for its marker while they see this process alive.
struct MarkerDuty {
    queue: Arc<Inner>,
    lock: Option<PacketGuard>,
}

impl MarkerDuty {
    /// The marker is out, or left to the next holder: the lock goes.
    fn done(mut self) {
        self.lock.take();
    }
}

impl Drop for MarkerDuty {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.queue.push_marker_on_a_thread(lock);
        }
    }
}

/// The marker of a dead holder's packet, published by whoever took the lock after it: the
/// task that still waits for room to publish it, if it could not at once.
type Adopted = Option<tokio::task::JoinHandle<Result<()>>>;

impl Inner {
    /// Takes the packet lock now, if it is free or its holder died; `None` if a live process
    /// holds it, or if a dead holder's marker still waits for room.
    fn try_lock(self: &Arc<Self>) -> Result<Option<PacketGuard>> {
        loop {
            let guard = match self.lock.try_lock() {
                Ok(Some(g)) => PacketGuard::of(self, g),
                Ok(None) => return Ok(None),
                Err(Error::LockOwnerDied { pid }) => {
                    tracing::debug!(pid, "a queue's packet lock was freed from its dead holder");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.adopt(guard) {
                Ok(g) => return Ok(Some(g)),
                Err(None) => continue,
                Err(Some(_waiting)) => return Ok(None),
            }
        }
    }

    /// Takes the packet lock, waiting for it; a holder that dies frees it (see
    /// [`Lock`](crate::Lock)'s owner death).
    async fn lock(self: &Arc<Self>) -> Result<PacketGuard> {
        loop {
            let guard = match self.lock.lock().await {
                Ok(g) => PacketGuard::of(self, g),
                Err(Error::LockOwnerDied { pid }) => {
                    tracing::debug!(pid, "a queue's packet lock was freed from its dead holder");
                    continue;
                }
                Err(e) => return Err(e),
            };
            match self.adopt(guard) {
                Ok(g) => return Ok(g),
                Err(None) => {}
                Err(Some(waiting)) => {
                    waiting
                        .await
                        .map_err(|e| Error::from(io::Error::other(e)))??;
                }
            }
        }
    }

    /// The packet lock just taken, unless the holder before died while it sent its packet
    /// or before it published the packet's marker: then that marker is published first, and
    /// the lock is released with it (`Err`, with the task still publishing it, if any).
    /// Without it, each later packet would be taken for the marker of the one before. A
    /// holder that died while sending may have sent nothing: its marker then stands for no
    /// packet, and the consumer that takes it skips it (see `take_locked`).
    fn adopt(self: &Arc<Self>, guard: PacketGuard) -> std::result::Result<PacketGuard, Adopted> {
        let dead = self.header().packet_sent().load(Ordering::SeqCst);
        if dead == 0 {
            return Ok(guard);
        }
        tracing::debug!(
            pid = dead & u64::from(u32::MAX),
            sending = dead & SENDING != 0,
            "a queue's producer died holding its packet lock after it began to send; \
             publishing its marker"
        );
        Err(self.push_marker(guard, dead & COUNTED != 0))
    }

    /// Before a consumer sleeps for want of items: a producer that sent its packet and has
    /// not published its marker yet ([`Header::packet_sent`]) either publishes it soon or
    /// has died. If it died, this publishes the marker (taking the packet lock over from
    /// it, see [`adopt`](Self::adopt)), so that its item does not wait for the next large
    /// put; if it lives, this returns a watch on it, for the consumer to wake and look
    /// again should it die first. The watch is kept in `r` while the same process sends.
    ///
    /// [`Header::packet_sent`]: super::header::Header::packet_sent
    pub(super) fn sender_to_watch(self: &Arc<Self>, r: &Reactor) -> Result<Option<Arc<Watch>>> {
        let Some(owner) = self.other_sender() else {
            return Ok(None);
        };
        let mut kept = r.sender.lock().unwrap_or_else(|p| p.into_inner());
        let watch = match kept.take().filter(|w| w.owner == owner) {
            Some(w) => Some(w),
            None => Watch::open(owner)?.map(Arc::new),
        };
        match watch {
            Some(w) if !w.has_exited()? => {
                *kept = Some(w.clone());
                Ok(Some(w))
            }
            _ => {
                drop(kept);
                // Taking the lock publishes the dead holder's marker first.
                if let Some(guard) = self.try_lock()? {
                    drop(guard);
                }
                Ok(None)
            }
        }
    }

    /// For a get that does not wait: whether no packet awaits its marker now. If the
    /// producer that sent one has died, its marker is published first, as
    /// [`sender_to_watch`](Self::sender_to_watch) does for a get that waits; a live one (or
    /// this process) publishes its own.
    pub(super) fn no_packet_awaits_its_marker(self: &Arc<Self>) -> Result<bool> {
        if let Some(owner) = self.other_sender() {
            if !sys::owner_gone(owner)? {
                return Ok(false);
            }
            // Taking the lock publishes the dead holder's marker first.
            if let Some(guard) = self.try_lock()? {
                drop(guard);
            }
        }
        Ok(self.header().packet_sent().load(Ordering::SeqCst) == 0)
    }

    /// The owner word of another process recorded as having sent a packet whose marker is
    /// not out yet ([`Header::packet_sent`]); `None` if there is none, if the record names
    /// no process, or if it is this process's own put, which ends with its marker or with
    /// us.
    ///
    /// [`Header::packet_sent`]: super::header::Header::packet_sent
    fn other_sender(&self) -> Option<u64> {
        let sent = self.header().packet_sent().load(Ordering::SeqCst);
        let pid = (sent & u64::from(u32::MAX)) as u32;
        if pid == 0 || pid == sys::cached_pid() {
            return None;
        }
        // The packet lock's word names the sender with its start time, while it holds the
        // lock or lies dead holding it.
        let held = self.lock.holder_word();
        Some(if sys::owner_pid(held) == pid {
            held
        } else {
            u64::from(pid)
        })
    }

    /// The tag the packet sent now carries: the packet lock's holder's.
    fn tag(&self) -> [u8; TAG_LEN] {
        self.header()
            .next_tag()
            .load(Ordering::SeqCst)
            .to_le_bytes()
    }

    /// Sends a packet on the socket, tagged, waiting for room in its buffer, and, for a
    /// packet holding descriptors, for room among the descriptors its user may have in
    /// flight (see [`sys::too_many_in_flight`]): the packets before it hold theirs until
    /// consumers take them, as a full buffer holds its bytes.
    async fn send_packet(&self, r: &Reactor, bytes: &[u8], fds: &[OwnedFd]) -> Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let tag = self.tag();
        loop {
            let mut g = r.tx.writable().await?;
            match g.try_io(|a| sys::send_headed_with_fds(a.get_ref().as_fd(), &tag, bytes, &raw)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // A consumer's receive makes the socket writable anew.
                Ok(Err(e)) if sys::too_many_in_flight(&e) => g.clear_ready(),
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
        kind: PutKind,
    ) -> Result<()> {
        let lock = until(deadline, self.lock()).await?;
        self.check_put(kind)?;
        let cap = self.ring.capacity();
        if self.ring.len() >= cap {
            let room = self.wait_until(&r.space, self.header().producers(), || {
                self.check_put(kind)?;
                Ok(self.ring.len() < cap)
            });
            until(deadline, room).await?;
        }
        self.record_sent(SENDING);
        // Looked at again once the send is recorded: a get that sees the shutdown, then no
        // send recorded, is sure no packet comes after it (see `shutdown.rs`).
        self.check_put(kind)?;
        until(deadline, self.send_packet(r, bytes, fds)).await?;
        self.record_sent(0);
        match self.push_marker(lock, false) {
            None => Ok(()),
            Some(task) => task.await.map_err(|e| Error::from(io::Error::other(e)))?,
        }
    }

    /// Sends a packet as [`put_packet`](Self::put_packet) does, then leaves the packet lock
    /// held and the marker unpublished, as a producer killed between the two does. A test
    /// hook (feature `test-hooks`): the caller exits next.
    #[cfg(feature = "test-hooks")]
    pub(super) async fn send_unmarked(
        self: &Arc<Self>,
        r: &Reactor,
        bytes: &[u8],
        fds: &[OwnedFd],
    ) -> Result<()> {
        let lock = self.lock().await?;
        self.record_sent(SENDING);
        self.send_packet(r, bytes, fds).await?;
        self.record_sent(0);
        std::mem::forget(lock);
        Ok(())
    }

    /// Puts a packet if the packet lock is free and there is room now, else fails with
    /// [`Error::Full`].
    pub(super) fn put_packet_now(
        self: &Arc<Self>,
        bytes: &[u8],
        fds: &[OwnedFd],
        kind: PutKind,
    ) -> Result<()> {
        // A producer holding the packet lock may be waiting for room: full.
        let Some(lock) = self.try_lock()? else {
            return Err(Error::Full);
        };
        if self.ring.len() >= self.ring.capacity() {
            return Err(Error::Full);
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let tag = self.tag();
        self.record_sent(SENDING);
        self.check_put(kind)?;
        loop {
            match sys::send_headed_with_fds(self.tx.as_fd(), &tag, bytes, &raw) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || sys::too_many_in_flight(&e) => {
                    return Err(Error::Full);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.record_sent(0);
        // If the ring filled up since we looked, the marker goes in as soon as there is
        // room, from a task of its own.
        let _ = self.push_marker(lock, false);
        Ok(())
    }

    /// Records what the packet lock's holder (this process) has sent: a packet it is about to
    /// send, or one in the socket whose marker is not in the ring yet, until the marker is
    /// published (see [`Header::packet_sent`](super::header::Header::packet_sent)).
    /// `flag` [`SENDING`] just before the send, 0 once it is done.
    ///
    /// Before a send, consumers asleep for want of items are woken, to watch this process
    /// until its marker is out (see [`sender_to_watch`](Self::sender_to_watch)): if it dies
    /// in between, its item does not wait for the next large put. A consumer that falls
    /// asleep later reads the record before it sleeps.
    fn record_sent(&self, flag: u64) {
        let me = u64::from(sys::cached_pid());
        self.header()
            .packet_sent()
            .store(me | flag, Ordering::SeqCst);
        if flag == SENDING {
            self.notify_consumers();
        }
    }

    /// Publishes the marker of a packet just sent, still under the packet lock. It must
    /// happen whatever becomes of the caller, so if small items filled the ring meanwhile,
    /// a task (or, outside a runtime, a thread) of its own finishes it, holding the lock.
    /// The item is put then, for a joinable queue too, which counts it as unfinished at
    /// once: a `join` after a put that returned waits for it (and a marker that cannot be
    /// published, for an error, is not counted). It records so ([`COUNTED`]), so that a
    /// holder that takes the lock over from it, should it die first, publishes the marker
    /// without counting the item again (`counted`), which would leave `join` waiting for
    /// ever.
    fn push_marker(
        self: &Arc<Self>,
        lock: PacketGuard,
        counted: bool,
    ) -> Option<tokio::task::JoinHandle<Result<()>>> {
        if self.try_push_counted(None, counted) == Pushed::Done {
            drop(lock);
            return None;
        }
        if !counted {
            self.count();
            self.header()
                .packet_sent()
                .fetch_or(COUNTED, Ordering::SeqCst);
        }
        let q = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                let duty = MarkerDuty {
                    queue: q.clone(),
                    lock: Some(lock),
                };
                Some(h.spawn(async move {
                    let res = match q.registered() {
                        Ok(r) => q.push_waiting(&r, None, true).await,
                        Err(e) => Err(e),
                    };
                    if res.is_err() {
                        // The next holder publishes the marker, and counts the item then.
                        q.header()
                            .packet_sent()
                            .fetch_and(!COUNTED, Ordering::SeqCst);
                        q.uncount();
                    }
                    duty.done();
                    res
                }))
            }
            Err(_) => {
                q.push_marker_on_a_thread(lock);
                None
            }
        }
    }

    /// Publishes the marker on a thread of its own, holding `lock` until it is out (see
    /// [`push_marker_blocking`](Self::push_marker_blocking)). Should no thread be had, the
    /// lock goes, and the next holder publishes the marker.
    fn push_marker_on_a_thread(self: &Arc<Self>, lock: PacketGuard) {
        let q = self.clone();
        let spawned = std::thread::Builder::new()
            .name("queue-marker".into())
            .spawn(move || {
                q.push_marker_blocking();
                drop(lock);
            });
        if let Err(e) = spawned {
            tracing::debug!("no thread to publish a queue marker: {e}");
        }
    }

    /// Publishes a marker, waiting for room, on a thread outside any runtime (see
    /// [`push_marker`](Self::push_marker)): on a runtime of the thread's own, since the
    /// eventfd that wakes producers is never drained (a read would take a wake-up from a
    /// waiter in another process), so only an edge-triggered wait, the reactor's, sleeps on
    /// it; a `poll` would find it readable at once, for ever. Should no runtime be had (no
    /// descriptor left), it looks again every few milliseconds.
    fn push_marker_blocking(&self) {
        let waited = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    let r = self.register()?;
                    self.push_waiting(&r, None, true).await
                })
            });
        if let Err(e) = waited {
            tracing::debug!("a queue marker waits for room without a reactor: {e}");
            while self.try_push_counted(None, true) != Pushed::Done {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// Takes the packet for the marker tagged `tag`, just taken from the ring under the take
    /// lock, from the socket now: the item's bytes are `buf[TAG_LEN..n]`. `None` if the
    /// marker stands for no packet.
    ///
    /// The packet first in the socket is usually the marker's own. One of an earlier tag was
    /// taken for a marker by a consumer that died before it received it (every other
    /// consumer received its packet before it let the take lock go): its item went with
    /// that consumer, and it is dropped. One of a later tag means this marker's packet was
    /// never sent (its producer died first, see [`adopt`](Self::adopt)): that packet is
    /// taken for this marker all the same, and its own marker, with any before it, is
    /// skipped when its turn comes ([`Header::skip_through`]). No packet at all: the
    /// marker's producer died before it sent it. A packet of a tag no producer has reached
    /// was written by something else: an error, and nothing is skipped for it.
    ///
    /// [`Header::skip_through`]: super::header::Header::skip_through
    pub(super) fn recv_packet_for(
        &self,
        tag: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Option<(usize, VecDeque<OwnedFd>)>> {
        let skip = self.header().skip_through();
        let through = skip.load(Ordering::SeqCst);
        if tag < through {
            if tag + 1 == through {
                skip.store(0, Ordering::SeqCst);
            }
            return Ok(None);
        }
        if buf.len() < INLINE_MAX + 16 {
            buf.resize(INLINE_MAX + 16, 0);
        }
        loop {
            let mut fds = VecDeque::new();
            let n = match sys::recv_with_fds(self.rx.as_fd(), buf, &mut fds) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let found = match buf.get(..TAG_LEN) {
                Some(head) if n >= TAG_LEN => {
                    let mut t = [0u8; TAG_LEN];
                    t.copy_from_slice(head);
                    u64::from_le_bytes(t)
                }
                _ if n == 0 => return Ok(None),
                _ => {
                    return Err(Error::Protocol(
                        "a queue packet shorter than its tag arrived".into(),
                    ));
                }
            };
            if found < tag {
                tracing::debug!(
                    tag = found,
                    "dropping a queue packet whose consumer died before it received it"
                );
                continue;
            }
            if found > tag {
                // Read only here: the producers' cache line stays theirs on the usual path.
                if found > self.header().next_tag().load(Ordering::SeqCst) {
                    // No producer has sent it: written by something else. Skipping up to it
                    // would drop the markers of items yet to come.
                    return Err(Error::Protocol(format!(
                        "a queue packet tagged {found} arrived, a tag no producer has reached"
                    )));
                }
                tracing::debug!(
                    tag,
                    found,
                    "a queue marker's producer died before it sent its packet; the next \
                     packet is taken for it, and its own marker will be skipped"
                );
                skip.store(found + 1, Ordering::SeqCst);
            }
            return Ok(Some((n, fds)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Queue;
    use crate::error::Error;
    use crate::sys::{Message, Popped, Pushed};

    fn large(byte: u8) -> Vec<u8> {
        vec![byte; 1000]
    }

    /// Sends `large(2)`'s packet under the packet lock, which it hands back with the marker
    /// still to publish.
    fn send_large(inner: &std::sync::Arc<super::super::inner::Inner>) -> super::PacketGuard {
        use super::super::item::Item;
        use crate::sys;
        use std::os::fd::AsFd;

        let Item::Packet(bytes, _fds) = inner.encode(&large(2)).unwrap() else {
            panic!("a large item travels in a packet");
        };
        let guard = inner.try_lock().unwrap().expect("the packet lock is free");
        sys::send_headed_with_fds(inner.tx.as_fd(), &inner.tag(), &bytes, &[]).unwrap();
        guard
    }

    /// Sends `large(2)`'s packet and hands its marker to a thread, outside a runtime, in a
    /// queue whose one slot is taken: the marker waits for room.
    fn a_large_item_whose_marker_waits(inner: &std::sync::Arc<super::super::inner::Inner>) {
        let guard = send_large(inner);
        assert!(
            inner.push_marker(guard, false).is_none(),
            "outside a runtime"
        );
    }

    /// The next item of `q`, looked for every 10 ms for up to 5 s.
    fn next_item_soon(q: &Queue<Vec<u8>>) -> Option<Vec<u8>> {
        for _ in 0..500 {
            match q.get_nowait() {
                Ok(v) => return Some(v),
                Err(Error::Empty) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        }
        None
    }

    /// A consumer that took a marker and died before it received its packet left that
    /// packet first in the socket: the next consumer drops it and takes its own, so no later
    /// item comes out a place late.
    #[test]
    fn a_packet_left_by_a_dead_consumer_is_dropped() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        q.put_nowait(large(1)).unwrap();
        q.put_nowait(large(2)).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            q.inner.ring.try_pop(&mut buf, true).unwrap(),
            Some(Popped::Marker(0)),
            "the dead consumer's marker"
        );
        assert_eq!(q.get_nowait().unwrap(), large(2));
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
        q.put_nowait(large(3)).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(3));
    }

    /// A marker published for a producer that died before it sent its packet takes the next
    /// packet, whose own marker is then skipped.
    #[test]
    fn a_marker_without_its_packet_takes_the_next_and_skips_that_ones_marker() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        assert_eq!(
            q.inner.try_push(None),
            Pushed::Done,
            "the dead producer's marker"
        );
        q.put_nowait(large(1)).unwrap();
        q.put_nowait(vec![2]).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(1));
        assert_eq!(q.get_nowait().unwrap(), vec![2]);
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
        q.put_nowait(large(3)).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(3));
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
    }

    /// A marker that finds the ring full outside a runtime (a `put_nowait` whose item's
    /// packet went out as small items took the last slot) waits for room asleep, though the
    /// eventfd that wakes producers stays readable once any wake-up was written to it (it is
    /// never drained): the waiting thread looks again only when woken, and publishes the
    /// marker once a slot is free.
    #[test]
    fn a_marker_waiting_for_room_outside_a_runtime_sleeps() {
        use crate::sys;
        use std::os::fd::AsFd;
        use std::sync::atomic::Ordering;
        use std::time::Duration;

        let q = Queue::<Vec<u8>>::with_maxsize(1).unwrap();
        q.put_nowait(vec![1]).unwrap();
        // A wake-up written to producers before: the eventfd stays readable.
        sys::eventfd_add(q.inner.space.as_fd(), 1).unwrap();
        a_large_item_whose_marker_waits(&q.inner);
        let looks = || q.inner.header().producers().looks.load(Ordering::SeqCst);
        let start = looks();
        std::thread::sleep(Duration::from_millis(500));
        let taken = looks() - start;
        assert!(
            taken < 10,
            "the waiting thread looked at the full ring {taken} times with nothing changed"
        );
        assert_eq!(q.get_nowait().unwrap(), vec![1]);
        assert_eq!(
            next_item_soon(&q),
            Some(large(2)),
            "the marker was published once there was room"
        );
    }

    /// A marker left waiting for room by a task whose runtime then shut down, while the
    /// process lives on, is published by a thread once there is room: its item comes out
    /// (consumers, seeing its producer alive, waited for the next large put).
    #[test]
    fn a_marker_whose_runtime_shut_down_is_still_published() {
        let q = Queue::<Vec<u8>>::with_maxsize(1).unwrap();
        q.put_nowait(vec![1]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Sent as small items took the last slot, its marker handed to a task of `rt`,
        // which never runs.
        let marker = rt.block_on(async { q.inner.push_marker(send_large(&q.inner), false) });
        assert!(marker.is_some(), "a task waits for room");
        drop(rt);
        assert_eq!(q.get_nowait().unwrap(), vec![1]);
        assert_eq!(
            next_item_soon(&q),
            Some(large(2)),
            "the marker was not published"
        );
    }

    /// A joinable queue counts an item as unfinished once its put returns, also when its
    /// marker still waits for room (a `put_nowait` whose packet went out as small items took
    /// the last slot): a `join` after the put waits for the item's `task_done`.
    #[test]
    fn a_joinable_queue_counts_an_item_whose_marker_waits_for_room() {
        use super::super::JoinableQueue;
        use std::time::Duration;

        let q = JoinableQueue::<Vec<u8>>::with_maxsize(1).unwrap();
        q.put_nowait(vec![1]).unwrap();
        a_large_item_whose_marker_waits(&q.inner);
        assert_eq!(
            q.unfinished(),
            2,
            "the large item counts once its put returns"
        );
        assert_eq!(q.get_nowait().unwrap(), vec![1]);
        q.task_done().unwrap();
        assert_eq!(q.unfinished(), 1, "a join still waits for the large item");
        let mut got = None;
        for _ in 0..1000 {
            match q.get_nowait() {
                Ok(v) => {
                    got = Some(v);
                    break;
                }
                Err(Error::Empty) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, Some(large(2)));
        q.task_done().unwrap();
        assert_eq!(q.unfinished(), 0);
        assert!(matches!(q.task_done(), Err(Error::TaskDoneTooManyTimes)));
    }

    /// A packet no producer sent (its tag is past every producer's) fails the get that
    /// meets it, and later markers are not skipped for it.
    #[test]
    fn a_packet_with_a_tag_no_producer_reached_is_refused() {
        use std::os::fd::AsFd;
        let q = Queue::<Vec<u8>>::new().unwrap();
        crate::sys::send_with_fds(q.inner.tx.as_fd(), &[0xff; 16], &[]).unwrap();
        assert_eq!(q.inner.try_push(None), Pushed::Done, "a marker for it");
        assert!(matches!(q.get_nowait(), Err(Error::Protocol(_))));
        q.put_nowait(large(1)).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(1));
    }

    /// A producer that died after it published its marker and before the tag moved on left
    /// the next producer to publish the same marker again: the second finds no packet of
    /// its own and stands for none.
    #[test]
    fn a_marker_published_twice_stands_for_one_packet() {
        let q = Queue::<Vec<u8>>::new().unwrap();
        q.put_nowait(large(1)).unwrap();
        assert_eq!(q.inner.ring.try_push(Message::Marker(0)), Pushed::Done);
        q.put_nowait(large(2)).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(1));
        assert_eq!(q.get_nowait().unwrap(), large(2));
        assert!(matches!(q.get_nowait(), Err(Error::Empty)));
        q.put_nowait(large(3)).unwrap();
        assert_eq!(q.get_nowait().unwrap(), large(3));
    }
}
