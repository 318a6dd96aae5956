//! `Queue`, `SimpleQueue` and `JoinableQueue`: Python's process-safe queues, awaited on
//! tokio's reactor.
//!
//! # Mechanism
//!
//! A queue is a Unix `SOCK_SEQPACKET` socket pair: every holder sends on one end and
//! receives on the other. One item is one packet, and the kernel delivers each packet whole
//! to exactly one `recvmsg`, in the order packets were queued, however many processes send
//! and receive at once. So many producers and many consumers need no lock: every item is
//! delivered exactly once, and the items of one producer arrive in the order it put them.
//! (A stream socket would need a cross-process lock around every multi-part read and write,
//! since readers could split a frame between them and writers interleave pieces of large
//! frames.)
//!
//! An item's MessagePack encoding travels in its packet up to [`INLINE_MAX`] bytes. A larger
//! item is written to a memfd, sealed against change, and the packet carries only that
//! file's descriptor (`SCM_RIGHTS`) and length: a 16 MiB item takes one small packet, and
//! the receiver reads the file. Descriptors held by the item itself (a pipe end, another
//! queue) ride in the same packet.
//!
//! # No feeder thread
//!
//! Python's `Queue.put` hands the item to a feeder thread that writes it to a pipe later, so
//! a producer that exits at once may lose it, and a producer whose feeder cannot flush a big
//! item never exits, so joining it before draining the queue deadlocks (gh-73983,
//! bpo-30414). Here `put` returns only once the item is in the kernel: in the socket's queue,
//! or in a memfd whose descriptor is in that queue. The kernel keeps it after the producer
//! exits, and the producer has nothing left to flush, so it exits at once.
//!
//! `Queue::new()` is unbounded as far as the kernel lets it be: the send buffer is grown to
//! [`SEND_BUFFER`] (beyond `net.core.wmem_max` where the process may), which holds tens of
//! thousands of small items, or as many large ones (each costs one small packet). Past that,
//! `put` waits for a consumer rather than holding items in the producer's memory.
//!
//! # Bounded queues, counts, joins
//!
//! A queue made with a `maxsize` has a counting semaphore, an `EFD_SEMAPHORE` eventfd
//! starting at `maxsize`: `put` takes one unit (waiting for readability when there is none),
//! `get` gives one back. `qsize` reads a counter in a small shared memory page (a mapped
//! memfd) that `put` raises and `get` lowers; like Python's, it is approximate while others
//! work on the queue. A [`JoinableQueue`] keeps its count of unfinished items in the same
//! page; the `task_done` that brings it to zero writes to an eventfd, which wakes every
//! process awaiting [`join`](JoinableQueue::join).
//!
//! All waiting is readiness on tokio's reactor (the sockets and eventfds are registered with
//! the runtime that first uses the queue): no thread is parked, nothing is polled on a timer.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::codec::{self, deserialize_fd, serialize_fd};
use crate::wire::max_frame_size;

/// Items whose encoding is at most this many bytes travel inside their packet; larger ones
/// are spilled to a memfd.
pub const INLINE_MAX: usize = 64 * 1024;

/// The send buffer a queue asks for, in bytes.
pub const SEND_BUFFER: usize = 32 * 1024 * 1024;

const KIND_INLINE: u8 = 0;
const KIND_SPILLED: u8 = 1;
/// Words of shared state: item count, unfinished count.
const WORDS: usize = 2;
const W_ITEMS: usize = 0;
const W_UNFINISHED: usize = 1;

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

/// An encoded item, ready to send.
struct Packet {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// The queue's descriptors as registered with one runtime's reactor.
struct Reactor {
    tx: AsyncFd<Arc<OwnedFd>>,
    rx: AsyncFd<Arc<OwnedFd>>,
    slots: Option<AsyncFd<Arc<OwnedFd>>>,
    done: Option<AsyncFd<Arc<OwnedFd>>>,
}

struct Inner {
    tx: Arc<OwnedFd>,
    rx: Arc<OwnedFd>,
    words: sys::SharedWords,
    maxsize: usize,
    slots: Option<Arc<OwnedFd>>,
    done: Option<Arc<OwnedFd>>,
    closed: AtomicBool,
    reactor: Mutex<Option<Arc<Reactor>>>,
    rbuf: Mutex<Vec<u8>>,
}

/// A process-safe FIFO queue (Python's `multiprocessing.Queue`).
///
/// Clones share one queue within a process; passing it to another process (as a `Process`
/// argument, inside a message, as a `Pool` argument) gives that process its own handle on
/// the same queue. See the [module docs](self) for how it works.
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

impl<T> Queue<T> {
    fn make(maxsize: usize, joinable: bool) -> Result<Queue<T>> {
        let (tx, rx) = sys::socketpair_seqpacket()?;
        if let Err(e) = sys::grow_send_buffer(tx.as_fd(), SEND_BUFFER) {
            tracing::debug!("cannot grow a queue's send buffer: {e}");
        }
        let slots = if maxsize > 0 {
            let n = u32::try_from(maxsize).map_err(|_| {
                Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("maxsize {maxsize} is larger than {}", u32::MAX),
                ))
            })?;
            Some(Arc::new(sys::eventfd(n, true)?))
        } else {
            None
        };
        let done = if joinable {
            Some(Arc::new(sys::eventfd(0, false)?))
        } else {
            None
        };
        Ok(Queue::assemble(
            tx,
            rx,
            sys::SharedWords::new(WORDS)?,
            maxsize,
            slots,
            done,
        ))
    }

    fn assemble(
        tx: OwnedFd,
        rx: OwnedFd,
        words: sys::SharedWords,
        maxsize: usize,
        slots: Option<Arc<OwnedFd>>,
        done: Option<Arc<OwnedFd>>,
    ) -> Queue<T> {
        Queue {
            inner: Arc::new(Inner {
                tx: Arc::new(tx),
                rx: Arc::new(rx),
                words,
                maxsize,
                slots,
                done,
                closed: AtomicBool::new(false),
                reactor: Mutex::new(None),
                rbuf: Mutex::new(Vec::new()),
            }),
            _t: PhantomData,
        }
    }

    /// An unbounded queue (Python's `Queue()`).
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a socket pair or a memfd (descriptor limit).
    pub fn new() -> Result<Queue<T>> {
        Queue::make(0, false)
    }

    /// A queue holding at most `maxsize` items (Python's `Queue(maxsize)`): `put` waits
    /// while it is full. A `maxsize` of 0 means unbounded, as in Python.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor; `InvalidInput` if `maxsize` exceeds
    /// `u32::MAX`.
    pub fn with_maxsize(maxsize: usize) -> Result<Queue<T>> {
        Queue::make(maxsize, false)
    }

    /// The bound given at creation; 0 for an unbounded queue.
    pub fn maxsize(&self) -> usize {
        self.inner.maxsize
    }

    /// The number of items in the queue: approximate while other processes put and get.
    pub fn qsize(&self) -> usize {
        let n = self.inner.words.words()[W_ITEMS].load(Ordering::Acquire);
        usize::try_from(n as i64).unwrap_or(0)
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

    fn reactor(&self) -> Result<Arc<Reactor>> {
        let mut r = self.inner.reactor.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*r {
            return Ok(r.clone());
        }
        self.check_open()?;
        let reg = |fd: &Arc<OwnedFd>, i| sys::register_shared(fd.clone(), i);
        let new = Arc::new(Reactor {
            tx: reg(&self.inner.tx, Interest::WRITABLE)?,
            rx: reg(&self.inner.rx, Interest::READABLE)?,
            slots: self
                .inner
                .slots
                .as_ref()
                .map(|s| reg(s, Interest::READABLE))
                .transpose()?,
            done: self
                .inner
                .done
                .as_ref()
                .map(|s| reg(s, Interest::READABLE))
                .transpose()?,
        });
        *r = Some(new.clone());
        Ok(new)
    }

    /// Tries to send a packet now: counts it, sends it, uncounts it if it did not go.
    fn send_now(&self, p: &Packet, raw: &[RawFd]) -> io::Result<()> {
        let w = self.inner.words.words();
        w[W_ITEMS].fetch_add(1, Ordering::AcqRel);
        if self.inner.done.is_some() {
            w[W_UNFINISHED].fetch_add(1, Ordering::AcqRel);
        }
        match sys::send_with_fds(self.inner.tx.as_fd(), &p.bytes, raw) {
            Ok(_) => Ok(()),
            Err(e) => {
                w[W_ITEMS].fetch_sub(1, Ordering::AcqRel);
                if self.inner.done.is_some() {
                    w[W_UNFINISHED].fetch_sub(1, Ordering::AcqRel);
                }
                Err(e)
            }
        }
    }

    /// Takes one unit of room now (bounded queues); `WouldBlock` when full.
    fn take_slot_now(&self) -> io::Result<Slot<'_>> {
        match &self.inner.slots {
            None => Ok(Slot(None)),
            Some(s) => {
                sys::eventfd_take(s.as_fd())?;
                Ok(Slot(Some(s.as_fd())))
            }
        }
    }

    /// Puts an encoded packet, waiting for room. Cancel safe: the unit of room taken is
    /// given back if the packet did not go.
    async fn put_packet(&self, p: &Packet) -> Result<()> {
        self.check_open()?;
        let r = self.reactor()?;
        let slot = match (&self.inner.slots, &r.slots) {
            (Some(_), Some(afd)) => loop {
                let mut g = afd.readable().await?;
                match g.try_io(|_| self.take_slot_now()) {
                    Ok(s) => break s?,
                    Err(_would_block) => continue,
                }
            },
            _ => Slot(None),
        };
        let raw: Vec<RawFd> = p.fds.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut g = r.tx.writable().await?;
            match g.try_io(|_| self.send_now(p, &raw)) {
                Ok(Ok(())) => {
                    slot.keep();
                    return Ok(());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
    }

    /// Receives one packet now; `WouldBlock` if there is none.
    fn recv_now(&self) -> io::Result<Option<(Vec<u8>, std::collections::VecDeque<OwnedFd>)>> {
        let mut buf = self.inner.rbuf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() < INLINE_MAX + 16 {
            buf.resize(INLINE_MAX + 16, 0);
        }
        let mut fds = std::collections::VecDeque::new();
        let n = sys::recv_packet(self.inner.rx.as_fd(), &mut buf, &mut fds)?;
        if n == 0 {
            // Cannot happen while we hold the sending end; treat as nothing there.
            return Ok(None);
        }
        self.inner.words.words()[W_ITEMS].fetch_sub(1, Ordering::AcqRel);
        if let Some(s) = &self.inner.slots {
            sys::eventfd_add(s.as_fd(), 1)?;
        }
        Ok(Some((buf[..n].to_vec(), fds)))
    }
}

/// A unit of a bounded queue's room, given back on drop unless kept.
struct Slot<'a>(Option<BorrowedFd<'a>>);

impl Slot<'_> {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.0 {
            let _ = sys::eventfd_add(fd, 1);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    fn encode(item: &T) -> Result<Packet> {
        let mut bytes = vec![KIND_INLINE];
        let mut fds = Vec::new();
        codec::encode_into(&mut bytes, &mut fds, item)?;
        let body = bytes.len() - 1;
        let max = max_frame_size();
        if body > max {
            return Err(Error::FrameTooLarge {
                size: body as u64,
                max,
            });
        }
        if fds.len() >= sys::MAX_FDS_PER_MESSAGE {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a queue item may hold at most {} descriptors, this one holds {}",
                    sys::MAX_FDS_PER_MESSAGE - 1,
                    fds.len()
                ),
            )));
        }
        if body <= INLINE_MAX {
            return Ok(Packet { bytes, fds });
        }
        let file = sys::sealed_memfd(&[&bytes[1..]])?;
        let mut head = vec![KIND_SPILLED];
        head.extend_from_slice(&(body as u64).to_be_bytes());
        let mut all = Vec::with_capacity(fds.len() + 1);
        all.push(file);
        all.extend(fds);
        Ok(Packet {
            bytes: head,
            fds: all,
        })
    }

    fn decode(bytes: Vec<u8>, mut fds: std::collections::VecDeque<OwnedFd>) -> Result<T> {
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
                let body = sys::read_memfd(file.as_fd(), len as usize)?;
                codec::decode(&body, fds.into())
            }
            _ => Err(Error::Protocol(
                "a queue packet of an unknown kind arrived".into(),
            )),
        }
    }

    /// Puts an item, waiting while a bounded queue is full (Python's `put(obj)`).
    ///
    /// Returns once the item is in the kernel's keeping: it survives this process's exit.
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
    /// is dropped with the future).
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        let p = match Queue::encode(&item) {
            Ok(p) => p,
            Err(error) => return Err(PutError { error, item }),
        };
        match self.put_packet(&p).await {
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
        let p = match Queue::encode(&item) {
            Ok(p) => p,
            Err(error) => return Err(PutError { error, item }),
        };
        match tokio::time::timeout(timeout, self.put_packet(&p)).await {
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
            let p = Queue::encode(&item)?;
            let slot = match self.take_slot_now() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Error::Full),
                Err(e) => return Err(e.into()),
            };
            let raw: Vec<RawFd> = p.fds.iter().map(|f| f.as_raw_fd()).collect();
            loop {
                match self.send_now(&p, &raw) {
                    Ok(()) => {
                        slot.keep();
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Error::Full),
                    Err(e) => return Err(e.into()),
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
        let r = self.reactor()?;
        loop {
            let mut g = r.rx.readable().await?;
            match g.try_io(|_| match self.recv_now() {
                Ok(Some(p)) => Ok(p),
                Ok(None) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e),
            }) {
                Ok(Ok((bytes, fds))) => return Queue::decode(bytes, fds),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
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
        loop {
            match self.recv_now() {
                Ok(Some((bytes, fds))) => return Queue::decode(bytes, fds),
                Ok(None) => return Err(Error::Empty),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Error::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) fn ready_now(&self) -> bool {
        sys::poll_readable(&[self.inner.rx.as_fd()], Some(Duration::ZERO))
            .map(|v| v.first().copied().unwrap_or(false))
            .unwrap_or(true)
    }

    pub(crate) async fn ready(&self) -> Result<()> {
        self.check_open()?;
        let r = self.reactor()?;
        loop {
            let mut g = r.rx.readable().await?;
            if self.ready_now() {
                return Ok(());
            }
            g.clear_ready();
        }
    }
}

impl<T> Queue<T> {
    fn joinable_parts(&self) -> Result<&Arc<OwnedFd>> {
        self.inner.done.as_ref().ok_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "not a JoinableQueue",
            ))
        })
    }
}

impl<T> AsFd for Queue<T> {
    /// The receiving socket: readable when an item may be there.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.rx.as_fd()
    }
}

struct FdRef<'a>(BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        serialize_fd(self.0, s)
    }
}

struct FdOwned(OwnedFd);

impl<'de> Deserialize<'de> for FdOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        deserialize_fd(d).map(FdOwned)
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
            FdRef(i.words.fd()),
            i.slots.as_ref().map(|f| FdRef(f.as_fd())),
            i.done.as_ref().map(|f| FdRef(f.as_fd())),
        )
            .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        type Parts = (
            u64,
            FdOwned,
            FdOwned,
            FdOwned,
            Option<FdOwned>,
            Option<FdOwned>,
        );
        let (maxsize, tx, rx, words, slots, done) = Parts::deserialize(d)?;
        let words = sys::SharedWords::map(words.0, WORDS).map_err(serde::de::Error::custom)?;
        let maxsize = usize::try_from(maxsize).map_err(serde::de::Error::custom)?;
        if (maxsize > 0) != slots.is_some() {
            return Err(serde::de::Error::custom(
                "a bounded queue arrived without its semaphore (or the reverse)",
            ));
        }
        Ok(Queue::assemble(
            tx.0,
            rx.0,
            words,
            maxsize,
            slots.map(|f| Arc::new(f.0)),
            done.map(|f| Arc::new(f.0)),
        ))
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
        let w = &self.0.inner.words.words()[W_UNFINISHED];
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
        let n = self.0.inner.words.words()[W_UNFINISHED].load(Ordering::Acquire);
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
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "not a JoinableQueue",
            )));
        };
        loop {
            // The eventfd is never drained: every `task_done` that reaches zero writes to
            // it, which is a new readiness edge for every process waiting.
            let mut g = done.readable().await.map_err(Error::Io)?;
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
