//! `Queue`, `SimpleQueue` and `JoinableQueue`: Python's process-safe queues, awaited on
//! tokio's reactor.
//!
//! # Mechanism
//!
//! A queue is a ring of slots in shared memory (a memfd mapped by every process that holds
//! the queue), managed as D. Vyukov's bounded many-producer many-consumer queue: a producer
//! claims the next position with one compare-and-swap, copies its item in and publishes it;
//! a consumer claims the oldest published position the same way. Positions only grow, so
//! every item is taken exactly once and the items of one producer come out in the order it
//! put them, however many processes put and get at once. A small item costs no system call.
//!
//! Items that do not fit a slot ([`SLOT_DATA`] bytes of MessagePack) or that hold
//! descriptors (a pipe end, another queue) travel through a Unix `SOCK_SEQPACKET` socket
//! pair instead, one packet per item, and the ring gets a *marker* in their place: whoever
//! takes a marker receives one packet. Producers send a packet and publish its marker while
//! holding the *packet lock*, a cross-process mutex (an `EFD_SEMAPHORE` eventfd holding 1 when
//! free, awaited on the reactor), so packets sit in the socket in the order of their markers
//! in the ring and the k-th marker taken gets the k-th packet: a consumer never meets an
//! item before an earlier item of the same producer. (Without the lock, a packet sent before
//! ours whose marker lands after ours would be taken in our place, and our later small items
//! could overtake our large one.) Consumers need no lock: the socket hands each packet to one
//! of them. Small items bypass the lock entirely. A packet carries up to 64 KiB; a larger
//! item is written to a memfd and the packet carries that file's descriptor (`SCM_RIGHTS`):
//! a 16 MiB item costs one small packet. The consumer maps the file read-only, decodes from
//! the mapping, unmaps it, and hands files of up to 2 MiB back through a second small socket
//! pair; a producer writes its next large item into a handed-back file when one waits, so
//! its pages are not allocated and freed again for every item (that allocation was most of
//! the cost of 1 MiB items). A producer never touches a file after sending it, and gets it
//! back only once a consumer is done with it. The recycling socket's buffer is kept small,
//! so only a few files wait there.
//!
//! # Waiting, without polling
//!
//! A consumer that finds the ring empty registers as a waiter in the ring's header and awaits
//! an eventfd on tokio's reactor; a producer that publishes while someone waits writes that
//! eventfd once (a flag keeps it to one write per wake-up, so a busy producer makes no system
//! calls). Producers waiting for room in a full ring do the same with a second eventfd. The
//! waiter count and the item are ordered by sequentially consistent atomics (each side
//! writes its own, then reads the other's), so no wake-up is lost. No thread is parked and
//! nothing is polled on a timer.
//!
//! # No feeder thread
//!
//! Python's `Queue.put` hands the item to a feeder thread that writes it to a pipe later, so
//! a producer that exits at once may lose it, and a producer whose feeder cannot flush a big
//! item never exits, so joining it before draining the queue deadlocks (gh-73983,
//! bpo-30414). Here `put` returns only once the item is in shared memory or in the kernel
//! (the socket's queue, or a memfd whose descriptor is in that queue): it outlives the
//! producer, and the producer has nothing left to flush, so it exits at once.
//!
//! `Queue::new()` holds [`UNBOUNDED_CAPACITY`] items before `put` waits for a consumer
//! (Python's is limited only by memory, at the price above). A queue made with a `maxsize`
//! has exactly that many slots, so `put` waits while it is full, across processes. `qsize`
//! is the distance between the two positions, approximate while others work on the queue.
//! A [`JoinableQueue`] keeps its count of unfinished items in the ring's header; the
//! `task_done` that brings it to zero writes an eventfd, which wakes every process awaiting
//! [`join`](JoinableQueue::join).
//!
//! # Processes killed midway
//!
//! A slot claimed in the ring names the process that claimed it. A consumer killed while
//! it takes an item (or a producer killed while it puts a small one) leaves its slot claimed;
//! the next process that needs the slot finds the claimer dead (a pidfd, as for a lock's
//! holder) and frees it, so the queue keeps working: the item is lost, as it would be with
//! the process that took it. A producer waiting for room at a slot that a live process still
//! holds watches that process too, so its death wakes the producer.
//!
//! Items that travel through the socket are not covered: a producer killed while it sends
//! one holds the packet lock for ever (later large puts wait), and a consumer killed between
//! taking a marker and receiving its packet leaves the packet in the socket, so each later
//! large item comes out one place late. A [`JoinableQueue`] still counts a lost item as
//! unfinished.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

use crate::error::{Error, Result};
use crate::sync::Watch;
use crate::sys::{self, Popped, Pushed, RING_USER_WORDS as USER};
use crate::wire::codec;
use crate::wire::max_frame_size;
use crate::wire::{Fd, FdRef};

/// The most bytes of MessagePack an item may take to travel in a ring slot; larger items,
/// and items holding descriptors, travel through the queue's socket.
pub const SLOT_DATA: usize = sys::SLOT_DATA;

/// Items whose encoding is at most this many bytes travel inside their socket packet;
/// larger ones are spilled to a memfd.
pub const INLINE_MAX: usize = 64 * 1024;

/// The number of items `Queue::new()` holds before `put` waits for a consumer.
pub const UNBOUNDED_CAPACITY: usize = 32 * 1024;

/// The largest `maxsize` a queue may have.
pub const MAX_MAXSIZE: usize = 1 << 22;

/// Encoding buffers up to this size are kept for the next item.
const KEEP_ENCODE_BUFFER: usize = 64 * 1024 * 1024;

/// The send buffer of the socket that carries spill files back for reuse: a few of them.
const RECYCLE_BUFFER: usize = 8 * 1024;

/// The send buffer a queue's socket asks for, in bytes.
const SEND_BUFFER: usize = 32 * 1024 * 1024;

const KIND_INLINE: u8 = 0;
const KIND_SPILLED: u8 = 1;

const W_CONS_WAITERS: usize = USER;
const W_CONS_NOTIFY: usize = USER + 1;
const W_PROD_WAITERS: usize = USER + 8;
const W_PROD_NOTIFY: usize = USER + 9;
const W_UNFINISHED: usize = USER + 16;

/// A `put` that failed, with the item handed back.
pub struct PutError<T> {
    error: Error,
    item: T,
}

impl<T> PutError<T> {
    /// Why the put failed: [`Error::Full`], [`Error::HandleClosed`], [`Error::Encode`],
    /// [`Error::FrameTooLarge`] or an I/O error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The item that was not put.
    pub fn into_inner(self) -> T {
        self.item
    }

    /// The error and the item.
    pub fn into_parts(self) -> (Error, T) {
        (self.error, self.item)
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot put the item: {}", self.error)
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        e.error
    }
}

/// An item encoded for the queue.
enum Item {
    /// Fits a ring slot.
    Small(Vec<u8>),
    /// Goes through the socket: packet bytes and descriptors.
    Packet(Vec<u8>, Vec<OwnedFd>),
}

/// The queue's descriptors as registered with one runtime's reactor.
struct Reactor {
    tx: AsyncFd<Arc<OwnedFd>>,
    lock: AsyncFd<Arc<OwnedFd>>,
    items: AsyncFd<Arc<OwnedFd>>,
    space: AsyncFd<Arc<OwnedFd>>,
    done: Option<AsyncFd<Arc<OwnedFd>>>,
}

struct Inner {
    tx: Arc<OwnedFd>,
    rx: Arc<OwnedFd>,
    /// Spill files handed back by consumers, for producers to write the next large item
    /// into without allocating fresh pages.
    ret_tx: OwnedFd,
    ret_rx: OwnedFd,
    ring: sys::ShmRing,
    maxsize: usize,
    items: Arc<OwnedFd>,
    space: Arc<OwnedFd>,
    lock: Arc<OwnedFd>,
    done: Option<Arc<OwnedFd>>,
    closed: AtomicBool,
    reactor: Mutex<Option<Arc<Reactor>>>,
    rbuf: Mutex<Vec<u8>>,
    /// Receives packets; kept at full size, so a large packet costs no fresh zeroed buffer.
    pbuf: Mutex<Vec<u8>>,
}

/// What a queue is made of, new or received.
struct Parts {
    tx: OwnedFd,
    rx: OwnedFd,
    ret_tx: OwnedFd,
    ret_rx: OwnedFd,
    ring: sys::ShmRing,
    maxsize: usize,
    items: OwnedFd,
    space: OwnedFd,
    lock: OwnedFd,
    done: Option<Arc<OwnedFd>>,
}

/// A process-safe FIFO queue (Python's `multiprocessing.Queue`).
///
/// Clones share one queue within a process; passing it to another process (as a `Process`
/// argument, inside a message, as a `Pool` argument) gives that process its own handle on
/// the same queue.
///
/// # How it works
///
/// Small items (up to [`SLOT_DATA`] bytes of MessagePack, holding no descriptors) go through
/// a ring of slots in shared memory, a many-producer many-consumer queue claimed with one
/// compare-and-swap per item: no system call. Larger items, and items holding descriptors,
/// go through a Unix `SOCK_SEQPACKET` socket (spilled to a memfd above [`INLINE_MAX`],
/// which consumers hand back for reuse) with a marker in the ring, sent under a cross-process lock so that each
/// producer's order holds. Each item is delivered exactly once, and the items of one producer
/// arrive in the order it put them. Waiting is readiness of an eventfd on tokio's reactor.
///
/// There is no feeder thread: `put` returns once the item is in shared memory or in the
/// kernel, so a producer that exits right after `put` loses nothing, and joining a producer
/// before draining the queue never deadlocks. `Queue::new()` holds [`UNBOUNDED_CAPACITY`]
/// items before `put` waits for a consumer.
///
/// Unlike Python's, the queue survives a consumer killed while it gets, or a producer killed
/// while it puts an item that fits a slot: that item is lost and the queue keeps working. A
/// producer killed while it puts a larger item (or one holding descriptors) can still make
/// later such puts wait for ever.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// async fn foo(q: mp::Queue<String>) {
///     let _ = q.put("hello world!".to_string()).await;
/// }
///
/// # async fn demo() -> mp::Result<()> {
/// let q = mp::Queue::<String>::new()?;
/// let mut p = mp::Process::new(foo, (q.clone(),)).start().await?;
/// p.join().await?;
/// println!("{}", q.get().await?);
/// # Ok(()) }
/// ```
pub struct Queue<T> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("maxsize", &self.inner.maxsize)
            .field("qsize", &self.qsize())
            .finish_non_exhaustive()
    }
}

/// Counts this task among the waiters of one side while it lives.
struct Waiter<'a>(&'a AtomicU64);

impl<'a> Waiter<'a> {
    fn new(w: &'a AtomicU64) -> Waiter<'a> {
        w.fetch_add(1, Ordering::SeqCst);
        Waiter(w)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The packet lock: a cross-process mutex (an `EFD_SEMAPHORE` eventfd holding 1 when free)
/// that keeps packets in the socket in the order of their markers in the ring. Released on
/// drop.
struct PacketLock(Arc<OwnedFd>);

impl Drop for PacketLock {
    fn drop(&mut self) {
        if let Err(e) = sys::eventfd_add(self.0.as_fd(), 1) {
            tracing::debug!("cannot release a queue's packet lock: {e}");
        }
    }
}

/// The ring's number of slots for a queue of `maxsize` (0: unbounded).
fn ring_capacity(maxsize: usize) -> usize {
    if maxsize == 0 {
        UNBOUNDED_CAPACITY
    } else {
        maxsize
    }
}

impl<T> Queue<T> {
    fn make(maxsize: usize, joinable: bool) -> Result<Queue<T>> {
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
        Ok(Queue::assemble(Parts {
            tx,
            rx,
            ret_tx,
            ret_rx,
            ring: sys::ShmRing::new(capacity as u64)?,
            maxsize,
            items: sys::eventfd(false)?,
            space: sys::eventfd(false)?,
            lock: {
                let lock = sys::eventfd(true)?;
                sys::eventfd_add(lock.as_fd(), 1)?;
                lock
            },
            done,
        }))
    }

    fn assemble(p: Parts) -> Queue<T> {
        let Parts {
            tx,
            rx,
            ret_tx,
            ret_rx,
            ring,
            maxsize,
            items,
            space,
            lock,
            done,
        } = p;
        Queue {
            inner: Arc::new(Inner {
                tx: Arc::new(tx),
                rx: Arc::new(rx),
                ret_tx,
                ret_rx,
                ring,
                maxsize,
                items: Arc::new(items),
                space: Arc::new(space),
                lock: Arc::new(lock),
                done,
                closed: AtomicBool::new(false),
                reactor: Mutex::new(None),
                rbuf: Mutex::new(Vec::new()),
                pbuf: Mutex::new(Vec::new()),
            }),
            _t: PhantomData,
        }
    }

    /// An unbounded queue (Python's `Queue()`): see [`UNBOUNDED_CAPACITY`].
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a socket pair, a memfd or an eventfd (descriptor
    /// limit).
    pub fn new() -> Result<Queue<T>> {
        Queue::make(0, false)
    }

    /// A queue holding at most `maxsize` items (Python's `Queue(maxsize)`): `put` waits
    /// while it is full. A `maxsize` of 0 means unbounded, as in Python.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor; [`Error::InvalidArgument`] above
    /// [`MAX_MAXSIZE`].
    pub fn with_maxsize(maxsize: usize) -> Result<Queue<T>> {
        Queue::make(maxsize, false)
    }

    /// The bound given at creation; 0 for an unbounded queue.
    pub fn maxsize(&self) -> usize {
        self.inner.maxsize
    }

    /// The number of items in the queue: approximate while other processes put and get.
    pub fn qsize(&self) -> usize {
        self.inner.ring.len() as usize
    }

    /// Whether the queue is empty (approximate, like [`qsize`](Self::qsize)).
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether a bounded queue is full (approximate); always `false` when unbounded.
    pub fn full(&self) -> bool {
        self.inner.maxsize > 0 && self.qsize() >= self.inner.maxsize
    }

    /// Says this process will use the queue no more (Python's `close()`): later calls on
    /// this handle (and its clones) fail with [`Error::HandleClosed`]. Items already put
    /// stay in the queue for others; other processes' handles are unaffected.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        *self.inner.reactor.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether [`close`](Self::close) was called on this handle.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::HandleClosed { object: "queue" })
        } else {
            Ok(())
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        self.inner.ring.word(i)
    }

    fn reactor(&self) -> Result<Arc<Reactor>> {
        self.check_open()?;
        self.registered()
    }

    /// The queue's registrations with the reactor, made on first need. A closed handle gets
    /// fresh ones, not kept: a packet sent before the close still gets its marker.
    fn registered(&self) -> Result<Arc<Reactor>> {
        let mut r = self.inner.reactor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*r {
            return Ok(r.clone());
        }
        let reg = |fd: &Arc<OwnedFd>, i| sys::register_shared(fd.clone(), i);
        let new = Arc::new(Reactor {
            tx: reg(&self.inner.tx, Interest::WRITABLE)?,
            lock: reg(&self.inner.lock, Interest::READABLE)?,
            items: reg(&self.inner.items, Interest::READABLE)?,
            space: reg(&self.inner.space, Interest::READABLE)?,
            done: self
                .inner
                .done
                .as_ref()
                .map(|s| reg(s, Interest::READABLE))
                .transpose()?,
        });
        if !self.is_closed() {
            *r = Some(new.clone());
        }
        Ok(new)
    }

    /// Wakes the other side if someone waits there and no wake-up is pending.
    fn notify(&self, waiters: usize, flag: usize, fd: &OwnedFd) {
        if self.word(waiters).load(Ordering::SeqCst) > 0
            && self.word(flag).swap(1, Ordering::SeqCst) == 0
        {
            if let Err(e) = sys::eventfd_add(fd.as_fd(), 1) {
                tracing::debug!("cannot wake a queue's waiters: {e}");
            }
        }
    }

    fn notify_consumers(&self) {
        self.notify(W_CONS_WAITERS, W_CONS_NOTIFY, &self.inner.items);
    }

    fn notify_producers(&self) {
        self.notify(W_PROD_WAITERS, W_PROD_NOTIFY, &self.inner.space);
    }

    /// Publishes a slot (data or marker) now, counting it as unfinished for a joinable
    /// queue. If the ring is full, says whether a live process holds the slot needed (see
    /// [`Pushed::Held`]).
    fn try_push(&self, data: Option<&[u8]>) -> Pushed {
        let joinable = self.inner.done.is_some();
        if joinable {
            self.word(W_UNFINISHED).fetch_add(1, Ordering::SeqCst);
        }
        let pushed = self.inner.ring.try_push(data);
        if pushed == Pushed::Done {
            self.notify_consumers();
            return pushed;
        }
        if joinable && self.word(W_UNFINISHED).fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake_joiners();
        }
        match pushed {
            // Our own process (another thread) frees it and wakes us as any consumer does.
            Pushed::Held(pid) if pid == sys::cached_pid() => Pushed::Full,
            other => other,
        }
    }

    fn wake_joiners(&self) {
        if let Some(done) = &self.inner.done {
            if let Err(e) = sys::eventfd_add(done.as_fd(), 1) {
                tracing::debug!("cannot wake a queue's joiners: {e}");
            }
        }
    }

    /// Waits until `ready` holds, as a waiter of one side (see the module docs).
    async fn wait_until(
        &self,
        fd: &AsyncFd<Arc<OwnedFd>>,
        waiters: usize,
        flag: usize,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let _w = Waiter::new(self.word(waiters));
        let mut guard: Option<AsyncFdReadyGuard<'_, Arc<OwnedFd>>> = None;
        loop {
            self.word(flag).store(0, Ordering::SeqCst);
            if ready()? {
                return Ok(());
            }
            if let Some(mut g) = guard.take() {
                g.clear_ready();
            }
            guard = Some(fd.readable().await?);
        }
    }

    /// Publishes a slot, waiting for room. While the slot it needs is held by a live
    /// process, it also watches that process: should it die there, its slot is freed by the
    /// next try (see "Owner death" in the ring's docs), and no consumer would wake us.
    async fn push_waiting(&self, r: &Reactor, data: Option<&[u8]>) -> Result<()> {
        if self.try_push(data) == Pushed::Done {
            return Ok(());
        }
        let _w = Waiter::new(self.word(W_PROD_WAITERS));
        let mut guard: Option<AsyncFdReadyGuard<'_, Arc<OwnedFd>>> = None;
        let mut watch: Option<Watch> = None;
        loop {
            self.word(W_PROD_NOTIFY).store(0, Ordering::SeqCst);
            match self.try_push(data) {
                Pushed::Done => return Ok(()),
                Pushed::Full => watch = None,
                Pushed::Held(pid) => {
                    if watch.as_ref().is_none_or(|w| w.pid != pid) {
                        watch = Watch::open(pid)?;
                        if watch.is_none() {
                            // Gone already: the next try frees its slot.
                            continue;
                        }
                    }
                }
            }
            if let Some(mut g) = guard.take() {
                g.clear_ready();
            }
            match &watch {
                Some(w) => tokio::select! {
                    g = r.space.readable() => guard = Some(g?),
                    died = w.exited() => {
                        died?;
                        watch = None;
                    }
                },
                None => guard = Some(r.space.readable().await?),
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

    /// Takes the packet lock now, if it is free.
    fn try_lock(&self) -> Result<Option<PacketLock>> {
        match sys::eventfd_take(self.inner.lock.as_fd()) {
            Ok(_) => Ok(Some(PacketLock(self.inner.lock.clone()))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the packet lock, waiting for it on the reactor.
    async fn lock(&self, r: &Reactor) -> Result<PacketLock> {
        loop {
            let mut g = r.lock.readable().await?;
            match g.try_io(|_| sys::eventfd_take(self.inner.lock.as_fd())) {
                Ok(Ok(_)) => return Ok(PacketLock(self.inner.lock.clone())),
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// Publishes the marker of a packet just sent, still under the packet lock. It must
    /// happen whatever becomes of the caller, so if small items filled the ring meanwhile,
    /// a task (or, outside a runtime, a thread) of its own finishes it, holding the lock.
    fn push_marker(&self, lock: PacketLock) -> Option<tokio::task::JoinHandle<Result<()>>> {
        if self.try_push(None) == Pushed::Done {
            drop(lock);
            return None;
        }
        let q: Queue<()> = Queue {
            inner: self.inner.clone(),
            _t: PhantomData,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => Some(h.spawn(async move {
                let r = q.registered()?;
                let res = q.push_waiting(&r, None).await;
                drop(lock);
                res
            })),
            Err(_) => {
                std::thread::spawn(move || {
                    let _w = Waiter::new(q.word(W_PROD_WAITERS));
                    loop {
                        q.word(W_PROD_NOTIFY).store(0, Ordering::SeqCst);
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
                        let space = q.inner.space.as_fd();
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

    /// Puts an encoded item, waiting for room. Cancel safe: a small item is published in one
    /// step; a packet is sent and its marker published under the packet lock, and once the
    /// packet is sent its marker always follows.
    async fn put_item(&self, item: &Item) -> Result<()> {
        self.check_open()?;
        let r = self.reactor()?;
        match item {
            Item::Small(b) => self.push_waiting(&r, Some(b)).await,
            Item::Packet(bytes, fds) => {
                let lock = self.lock(&r).await?;
                let cap = self.inner.ring.capacity();
                if self.inner.ring.len() >= cap {
                    self.wait_until(&r.space, W_PROD_WAITERS, W_PROD_NOTIFY, || {
                        Ok(self.inner.ring.len() < cap)
                    })
                    .await?;
                }
                self.send_packet(&r, bytes, fds).await?;
                match self.push_marker(lock) {
                    None => Ok(()),
                    Some(task) => task.await.map_err(|e| Error::from(io::Error::other(e)))?,
                }
            }
        }
    }

    /// A spill file handed back by a consumer, if one waits.
    fn recycled(&self) -> Option<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut fds = VecDeque::new();
        match sys::recv_with_fds(self.inner.ret_rx.as_fd(), &mut byte, &mut fds) {
            Ok(_) => fds.pop_front(),
            Err(_) => None,
        }
    }

    /// Hands a spill file back for a producer to reuse, once it is read and unmapped; drops
    /// it if it is large or if enough wait already.
    fn recycle(&self, file: OwnedFd) {
        if sys::file_size(file.as_fd()).is_ok_and(|n| n <= sys::RECYCLE_MAX) {
            let _ = sys::send_with_fds(self.inner.ret_tx.as_fd(), &[0], &[file.as_raw_fd()]);
        }
    }

    fn joinable_parts(&self) -> Result<&Arc<OwnedFd>> {
        self.inner
            .done
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("not a JoinableQueue".into()))
    }

    /// Takes one packet from the socket now.
    fn recv_packet_now(&self, buf: &mut Vec<u8>) -> Result<(usize, VecDeque<OwnedFd>)> {
        if buf.len() < INLINE_MAX + 16 {
            buf.resize(INLINE_MAX + 16, 0);
        }
        let mut fds = VecDeque::new();
        loop {
            match sys::recv_with_fds(self.inner.rx.as_fd(), buf, &mut fds) {
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

impl<T: Serialize + DeserializeOwned> Queue<T> {
    fn encode(&self, item: &T) -> Result<Item> {
        thread_local! {
            /// Reused for encoding, so that large items do not fault in fresh pages each time.
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|b| match b.try_borrow_mut() {
            Ok(mut buf) => {
                let r = self.encode_with(&mut buf, item);
                if buf.capacity() > KEEP_ENCODE_BUFFER {
                    *buf = Vec::new();
                }
                r
            }
            Err(_) => self.encode_with(&mut Vec::new(), item),
        })
    }

    fn encode_with(&self, bytes: &mut Vec<u8>, item: &T) -> Result<Item> {
        bytes.clear();
        bytes.push(KIND_INLINE);
        let mut fds = Vec::new();
        codec::encode_into(bytes, &mut fds, item)?;
        let body = bytes.len() - 1;
        if fds.is_empty() && body <= SLOT_DATA {
            return Ok(Item::Small(bytes[1..].to_vec()));
        }
        let max = max_frame_size();
        if body > max {
            return Err(Error::FrameTooLarge {
                size: body as u64,
                max,
            });
        }
        if fds.len() >= sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "a queue item may hold at most {} descriptors, this one holds {}",
                sys::MAX_FDS_PER_MESSAGE - 1,
                fds.len()
            )));
        }
        if body <= INLINE_MAX {
            return Ok(Item::Packet(bytes.clone(), fds));
        }
        let file = sys::spill_memfd(self.recycled(), &bytes[1..])?;
        let mut head = vec![KIND_SPILLED];
        head.extend_from_slice(&(body as u64).to_be_bytes());
        let mut all = Vec::with_capacity(fds.len() + 1);
        all.push(file);
        all.extend(fds);
        Ok(Item::Packet(head, all))
    }

    fn decode_packet(&self, bytes: &[u8], mut fds: VecDeque<OwnedFd>) -> Result<T> {
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
                let file = fds.pop_front().ok_or_else(|| {
                    Error::Protocol("a spilled queue item arrived without its file".into())
                })?;
                let view = sys::SpillView::map(file.as_fd(), len as usize)?;
                let value = codec::decode(view.bytes(), fds.into());
                drop(view);
                self.recycle(file);
                value
            }
            _ => Err(Error::Protocol(
                "a queue packet of an unknown kind arrived".into(),
            )),
        }
    }

    /// Takes the oldest item now, if there is one. Once a slot is taken the item is consumed,
    /// even if it then fails to decode.
    fn try_take(&self) -> Result<Option<T>> {
        let mut buf = self.inner.rbuf.lock().unwrap_or_else(|p| p.into_inner());
        let popped = self.inner.ring.try_pop(&mut buf);
        if matches!(popped, Ok(Some(_))) {
            self.notify_producers();
        }
        match popped? {
            None => Ok(None),
            Some(Popped::Data(n)) => codec::decode(&buf[..n], Vec::new()).map(Some),
            Some(Popped::Marker) => {
                drop(buf);
                let mut pbuf = self.inner.pbuf.lock().unwrap_or_else(|p| p.into_inner());
                let (n, fds) = self.recv_packet_now(&mut pbuf)?;
                self.decode_packet(&pbuf[..n], fds).map(Some)
            }
        }
    }

    /// Puts an item, waiting while the queue is full (Python's `put(obj)`).
    ///
    /// Returns once the item is in shared memory or in the kernel's keeping: it survives
    /// this process's exit.
    ///
    /// # Errors
    /// The item comes back in a [`PutError`] with [`Error::HandleClosed`] after
    /// [`close`](Self::close), [`Error::Encode`] if it cannot be encoded,
    /// [`Error::FrameTooLarge`] above the maximum frame size, or an I/O error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the item was not put (and
    /// is dropped with the future). A large item whose packet was already sent is always
    /// delivered.
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        let e = match self.encode(&item) {
            Ok(e) => e,
            Err(error) => return Err(PutError { error, item }),
        };
        match self.put_item(&e).await {
            Ok(()) => Ok(()),
            Err(error) => Err(PutError { error, item }),
        }
    }

    /// [`put`](Self::put), giving up after `timeout` with [`Error::Full`] (Python's
    /// `put(obj, timeout=...)`).
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`Error::Full`], each with the item handed back.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe, like [`put`](Self::put).
    pub async fn put_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> std::result::Result<(), PutError<T>> {
        let e = match self.encode(&item) {
            Ok(e) => e,
            Err(error) => return Err(PutError { error, item }),
        };
        match tokio::time::timeout(timeout, self.put_item(&e)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(PutError { error, item }),
            Err(_) => Err(PutError {
                error: Error::Full,
                item,
            }),
        }
    }

    /// Puts an item if there is room now, else fails at once with [`Error::Full`] (Python's
    /// `put_nowait`). Needs no runtime.
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`Error::Full`], each with the item handed back.
    pub fn put_nowait(&self, item: T) -> std::result::Result<(), PutError<T>> {
        let res = (|| {
            self.check_open()?;
            match self.encode(&item)? {
                Item::Small(b) => {
                    if self.try_push(Some(&b)) == Pushed::Done {
                        Ok(())
                    } else {
                        Err(Error::Full)
                    }
                }
                Item::Packet(bytes, fds) => {
                    // A producer holding the packet lock may be waiting for room: full.
                    let Some(lock) = self.try_lock()? else {
                        return Err(Error::Full);
                    };
                    if self.inner.ring.len() >= self.inner.ring.capacity() {
                        return Err(Error::Full);
                    }
                    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    loop {
                        match sys::send_with_fds(self.inner.tx.as_fd(), &bytes, &raw) {
                            Ok(_) => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Err(Error::Full);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    // If the ring filled up since we looked, the marker goes in as soon as
                    // there is room, from a task of its own.
                    let _ = self.push_marker(lock);
                    Ok(())
                }
            }
        })();
        res.map_err(|error| PutError { error, item })
    }

    /// Removes and returns the next item, waiting until one is available (Python's `get()`).
    ///
    /// # Errors
    /// [`Error::HandleClosed`] after [`close`](Self::close); [`Error::Decode`] if the item
    /// is not a `T` (it is consumed); an I/O error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if `get` loses a `select!` race, no item was taken.
    pub async fn get(&self) -> Result<T> {
        self.check_open()?;
        if let Some(v) = self.try_take()? {
            return Ok(v);
        }
        let r = self.reactor()?;
        let mut got = None;
        self.wait_until(&r.items, W_CONS_WAITERS, W_CONS_NOTIFY, || {
            got = self.try_take()?;
            Ok(got.is_some())
        })
        .await?;
        got.ok_or_else(|| Error::Protocol("a queue wait ended without an item".into()))
    }

    /// [`get`](Self::get), giving up after `timeout` with [`Error::Empty`] (Python's
    /// `get(timeout=...)`).
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe, like [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T> {
        match tokio::time::timeout(timeout, self.get()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Empty),
        }
    }

    /// Removes and returns an item if one is there now, else fails at once with
    /// [`Error::Empty`] (Python's `get_nowait`). Needs no runtime.
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`].
    pub fn get_nowait(&self) -> Result<T> {
        self.check_open()?;
        self.try_take()?.ok_or(Error::Empty)
    }

    pub(crate) fn ready_now(&self) -> bool {
        !self.empty()
    }

    pub(crate) async fn ready(&self) -> Result<()> {
        self.check_open()?;
        if self.ready_now() {
            return Ok(());
        }
        let r = self.reactor()?;
        self.wait_until(&r.items, W_CONS_WAITERS, W_CONS_NOTIFY, || {
            Ok(self.ready_now())
        })
        .await
    }
}

impl<T> AsFd for Queue<T> {
    /// The eventfd that wakes consumers waiting for an item.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.items.as_fd()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if self.is_closed() {
            return Err(serde::ser::Error::custom(
                "a queue closed by close() cannot be sent to another process",
            ));
        }
        let i = &self.inner;
        (
            i.maxsize as u64,
            FdRef(i.tx.as_fd()),
            FdRef(i.rx.as_fd()),
            (FdRef(i.ret_tx.as_fd()), FdRef(i.ret_rx.as_fd())),
            FdRef(i.ring.fd()),
            FdRef(i.items.as_fd()),
            FdRef(i.space.as_fd()),
            FdRef(i.lock.as_fd()),
            i.done.as_ref().map(|f| FdRef(f.as_fd())),
        )
            .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        type Wire = (u64, Fd, Fd, (Fd, Fd), Fd, Fd, Fd, Fd, Option<Fd>);
        let (maxsize, tx, rx, (ret_tx, ret_rx), ring, items, space, lock, done) =
            Wire::deserialize(d)?;
        let ring = sys::ShmRing::open(ring.into_owned()).map_err(serde::de::Error::custom)?;
        let maxsize = usize::try_from(maxsize).map_err(serde::de::Error::custom)?;
        if ring.capacity() != ring_capacity(maxsize) as u64 {
            return Err(serde::de::Error::custom(
                "a queue arrived whose ring does not match its maxsize",
            ));
        }
        Ok(Queue::assemble(Parts {
            tx: tx.into_owned(),
            rx: rx.into_owned(),
            ret_tx: ret_tx.into_owned(),
            ret_rx: ret_rx.into_owned(),
            ring,
            maxsize,
            items: items.into_owned(),
            space: space.into_owned(),
            lock: lock.into_owned(),
            done: done.map(|f| Arc::new(f.into_owned())),
        }))
    }
}

/// A simpler queue (Python's `multiprocessing.SimpleQueue`): unbounded, with `put`, `get`,
/// `empty` and `close`.
///
/// It works exactly as an unbounded [`Queue`] (there is no feeder thread to do without).
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// An empty queue.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor.
    pub fn new() -> Result<SimpleQueue<T>> {
        Queue::new().map(SimpleQueue)
    }

    /// Puts an item; see [`Queue::put`].
    ///
    /// # Errors
    /// As [`Queue::put`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the item was not put.
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.0.put(item).await
    }

    /// Removes and returns the next item, waiting for one; see [`Queue::get`].
    ///
    /// # Errors
    /// As [`Queue::get`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if `get` loses a `select!` race, no item was taken.
    pub async fn get(&self) -> Result<T> {
        self.0.get().await
    }

    /// Whether the queue is empty (approximate).
    pub fn empty(&self) -> bool {
        self.0.empty()
    }

    /// Says this process will use the queue no more; see [`Queue::close`].
    pub fn close(&self) {
        self.0.close()
    }

    pub(crate) fn as_queue(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(SimpleQueue)
    }
}

/// A [`Queue`] that counts unfinished items (Python's `multiprocessing.JoinableQueue`):
/// every `put` adds one, every [`task_done`](Self::task_done) takes one away, and
/// [`join`](Self::join) waits until none is left. It derefs to [`Queue`] for everything
/// else.
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor.
    pub fn new() -> Result<JoinableQueue<T>> {
        Queue::make(0, true).map(JoinableQueue)
    }

    /// A joinable queue holding at most `maxsize` items (0: unbounded).
    ///
    /// # Errors
    /// As [`Queue::with_maxsize`].
    pub fn with_maxsize(maxsize: usize) -> Result<JoinableQueue<T>> {
        Queue::make(maxsize, true).map(JoinableQueue)
    }

    /// Says that an item taken by `get` has been processed (Python's `task_done()`).
    ///
    /// # Errors
    /// [`Error::TaskDoneTooManyTimes`] if every item put is already done (nothing changes
    /// then); [`Error::HandleClosed`] after `close`.
    pub fn task_done(&self) -> Result<()> {
        self.0.check_open()?;
        let done = self.0.joinable_parts()?;
        let w = self.0.word(W_UNFINISHED);
        let mut cur = w.load(Ordering::Acquire);
        loop {
            if cur == 0 || (cur as i64) < 0 {
                return Err(Error::TaskDoneTooManyTimes);
            }
            match w.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            sys::eventfd_add(done.as_fd(), 1)?;
        }
        Ok(())
    }

    /// The number of items put and not yet marked done.
    pub fn unfinished(&self) -> usize {
        let n = self.0.word(W_UNFINISHED).load(Ordering::Acquire);
        usize::try_from(n as i64).unwrap_or(0)
    }

    /// Waits until every item put has been marked done (Python's `join()`), in whichever
    /// process.
    ///
    /// # Errors
    /// [`Error::HandleClosed`] after `close`; an I/O error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: it only waits.
    pub async fn join(&self) -> Result<()> {
        if self.unfinished() == 0 {
            return Ok(());
        }
        let r = self.0.reactor()?;
        let Some(done) = &r.done else {
            return Err(Error::InvalidArgument("not a JoinableQueue".into()));
        };
        loop {
            // The eventfd is never drained: every `task_done` that reaches zero writes to
            // it, which is a new readiness edge for every process waiting.
            let mut g = done.readable().await.map_err(Error::from)?;
            if self.unfinished() == 0 {
                return Ok(());
            }
            g.clear_ready();
        }
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let q = Queue::deserialize(d)?;
        if q.inner.done.is_none() {
            return Err(serde::de::Error::custom(
                "a plain Queue arrived where a JoinableQueue was expected",
            ));
        }
        Ok(JoinableQueue(q))
    }
}
