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
//! takes a marker receives its packet. Producers send a packet and publish its marker while
//! holding the *packet lock*, a cross-process [`Lock`](crate::Lock) (its holder's pid in
//! shared memory, awaited on the reactor), so packets sit in the socket in the order of
//! their markers in the ring and the k-th marker taken gets the k-th packet: a consumer
//! never meets an item before an earlier item of the same producer. (Without the lock, a
//! packet sent before ours whose marker lands after ours would be taken in our place, and
//! our later small items could overtake our large one.) A packet and its marker carry the
//! same *tag*, the count of markers before it. A consumer takes a marker and receives its
//! packet while holding the *take lock*, a second such lock, so consumers receive packets
//! in the order they took the markers. Small items bypass both locks entirely: a consumer
//! looks at the ring without the take lock and takes it only when the oldest item is a
//! marker. A packet carries up to 64 KiB; a larger item is written to a memfd as it is
//! encoded (its bulk copied once, straight into the file, at offsets the kernel copies to
//! fastest) and the packet carries that file's descriptor (`SCM_RIGHTS`): a 16 MiB item
//! costs one small packet. The consumer maps the file read-only, decodes from the mapping,
//! and hands files of up to 2 MiB back through a second small socket pair; a producer
//! writes its next large item into a handed-back file when one waits, so its pages are not
//! allocated and freed again for every item (that allocation was most of the cost of 1 MiB
//! items), copying it into a writable mapping of the file rather than with `pwrite` (which
//! looks up and locks each page again). Producers and consumers alike keep their mappings of
//! a few such files for when they come round again, so they map and fault in their pages
//! once. A producer never touches a file (nor its mapping of it) after sending it, and gets
//! it back only once a consumer is done with it; a consumer reads a kept mapping only once
//! its file has come back to it in a packet. The recycling socket's buffer is kept small,
//! so only a few files wait there.
//!
//! # Waiting, without polling
//!
//! A consumer that finds the ring empty registers as a waiter in the ring's header and
//! awaits an eventfd on tokio's reactor; a producer that publishes while someone waits
//! writes that eventfd once per look the waiters took (a count of looks and the count last
//! woken for keep it to one write per wake-up, so a busy producer makes no system calls,
//! and a producer killed between the two leaves no waiter asleep). Producers waiting for
//! room in a full ring do the same with a second eventfd. The waiter count and the item are
//! ordered by sequentially consistent atomics (each side writes its own, then reads the
//! other's), so no wake-up is lost. No thread is parked and nothing is polled on a timer. A
//! `put` or `get` that needs no wait still spends a unit of its task's budget with tokio's
//! scheduler, as tokio's channels do, so a task that loops on a queue that never runs dry
//! yields now and then to the other tasks of its worker.
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
//! `Queue::new()` holds [`Queue::UNBOUNDED_CAPACITY`] items before `put` waits for a consumer
//! (Python's is limited only by memory, at the price above). Items that travel through the
//! socket are held in its buffer too, which bounds them first when they are large: the
//! queue asks for 32 MiB, and a process without `CAP_NET_ADMIN` gets at most
//! `net.core.wmem_max` (208 KiB by default); `put` waits for room there as for a slot. A
//! queue made with a `maxsize`
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
//! A producer killed while it puts an item that travels through the socket (waiting for
//! room, say) dies holding the packet lock; the next producer that needs the lock finds the
//! holder dead and takes it, as for any [`Lock`](crate::Lock). A producer records in the
//! ring's header that it is sending its packet, and clears that once the packet's marker is
//! in the ring; the next holder that finds the record publishes the marker, so an item that
//! was sent is not lost. A consumer about to sleep for want of items does the same if the
//! recorded sender is dead, and watches it (a pidfd) if it lives, so that its death wakes
//! the consumer to publish the marker: the item comes out without waiting for the next
//! large put. A sender wakes the consumers asleep already as it records its send, so they
//! look at the record too. If the producer died before its send went out, that marker
//! stands for no packet: the consumer that takes it finds none and takes the next item, or
//! finds the next packet and takes that, and the next packet's own marker is skipped when
//! its turn comes. Until then the marker holds a slot.
//!
//! A consumer killed between taking a marker and receiving its packet dies holding the take
//! lock, and leaves its packet in the socket. The next consumer takes the lock over, and
//! the first packet it meets is of an earlier tag than its marker's: the dead consumer's
//! item, which went with it as a small one would. It drops that packet and receives its
//! own, so no later item comes out a place late. A [`JoinableQueue`] still counts a lost
//! item as unfinished. It counts an item only once the item is in the ring (just before
//! its slot is published), so a producer killed while it waits for room leaves no count;
//! one that counted its large item before its marker found room records so beside its
//! packet, so that the process that publishes the marker for it does not count it again.
//!
//! # Layout
//!
//! - `mod.rs`: these docs and [`Queue`], the public handle; its methods encode or decode
//!   and hand the rest to [`Inner`].
//! - `inner.rs`: [`Inner`], what every clone of a handle shares: the queue's descriptors,
//!   its ring and this handle's state; how a queue is made and sent to another process.
//! - `header.rs`: the typed view of the queue's words in the ring's header.
//! - `signal.rs`: waiting and waking through those words and the eventfds.
//! - `reactor.rs`: the descriptors' registrations with tokio's reactor.
//! - `ring.rs`: the ring side: publishing a slot, waiting for room.
//! - `packet.rs`: the socket side: the packet lock, sending and receiving packets, markers.
//! - `shutdown.rs`: shutting the queue down for every process.
//! - `spill.rs`: items spilled to a memfd and the files handed back for reuse.
//! - `item.rs`: an item as the queue carries it: encoded, sent the way its size calls for,
//!   taken and decoded.
//! - `simple.rs`, `joinable.rs`: [`SimpleQueue`] and [`JoinableQueue`].
//! - `error.rs`: [`PutError`].

mod error;
mod header;
mod inner;
mod item;
mod joinable;
mod packet;
mod reactor;
mod ring;
mod shutdown;
mod signal;
mod simple;
mod spill;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;

pub use error::PutError;
pub use joinable::JoinableQueue;
pub use simple::SimpleQueue;

use inner::Inner;
use item::Taken;
use shutdown::PutKind;

/// The most bytes of MessagePack an item may take to travel in a ring slot; larger items,
/// and items holding descriptors, travel through the queue's socket.
pub(crate) const SLOT_DATA: usize = sys::SLOT_DATA;

/// Items whose encoding is at most this many bytes travel inside their socket packet;
/// larger ones are spilled to a memfd.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

// The docs of `Queue` and the README give these figures in prose.
const _: () = assert!(SLOT_DATA == 112 && INLINE_MAX == 64 * 1024);
const _: () = assert!(inner::UNBOUNDED_CAPACITY == 32_768 && inner::MAX_MAXSIZE == 1 << 22);

/// A process-safe FIFO queue (Python's `multiprocessing.Queue`).
///
/// Clones share one queue within a process; passing it to another process (as a `Process`
/// argument, inside a message, as a `Pool` argument) gives that process its own handle on
/// the same queue.
///
/// # How it works
///
/// Small items (up to 112 bytes of MessagePack, holding no descriptors) go through a ring of
/// slots in shared memory, a many-producer many-consumer queue claimed with one
/// compare-and-swap per item: no system call. Larger items, and items holding descriptors,
/// go through a Unix `SOCK_SEQPACKET` socket with a marker in the ring, sent under a
/// cross-process lock so that each producer's order holds; items above 64 KiB of MessagePack
/// are written to a memfd whose descriptor crosses instead, and consumers hand such files
/// back for reuse. Each item is delivered exactly once, and the items of one producer arrive
/// in the order it put them. Waiting is readiness of an eventfd on tokio's reactor.
///
/// There is no feeder thread: `put` returns once the item is in shared memory or in the
/// kernel, so a producer that exits right after `put` loses nothing, and joining a producer
/// before draining the queue never deadlocks. `Queue::new()` holds
/// [`UNBOUNDED_CAPACITY`](Self::UNBOUNDED_CAPACITY) items before `put` waits for a consumer,
/// and fewer large ones: see there.
///
/// Unlike Python's, the queue survives a consumer killed while it gets, or a producer killed
/// while it puts an item that fits a slot: that item is lost and the queue keeps working. A
/// producer killed while it puts a larger item (or one holding descriptors) frees the lock
/// that orders such items for the next producer of one, which also publishes the dead
/// one's item if it had been sent.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// async fn foo(q: mp::Queue<String>) {
///     let _ = q.put("hello world!".to_string()).await;
/// }
///
/// # #[tokio::main]
/// # async fn main() -> mp::Result<()> {
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
        Queue::from_inner(self.inner.clone())
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
    /// The number of items `Queue::new()` (a `maxsize` of 0) holds before `put` waits for a
    /// consumer: 32,768. Python's unbounded queue is limited only by memory.
    ///
    /// Items over 112 bytes of MessagePack, or holding descriptors, travel through the
    /// queue's socket, whose buffer holds them until consumers take them, and is bounded:
    /// the queue asks for 32 MiB, which the kernel counts twice and grants a process
    /// without `CAP_NET_ADMIN` only up to `net.core.wmem_max` (208 KiB on most systems). An
    /// item of up to 64 KiB takes about its size in it, rounded up to a power of two or to
    /// pages, and one over 64 KiB (spilled to a memfd) some hundreds of bytes. So such items
    /// fill a queue before this many: measured with the 32 MiB, items of 1 KB at 29,128,
    /// of 4 KB at 7,944 and of 60 KB at 1,088; with 208 KiB, about 180 items of 1 KB. A
    /// `put` then waits for a consumer as in a full queue: a program that puts more large
    /// items than that before it takes any waits for ever, where Python's `put` returns
    /// (its feeder thread waits instead). Take them from another task or process, or use
    /// [`put_timeout`](Self::put_timeout), which gives the item back with
    /// [`Error::Full`]. [`full`](Self::full) counts slots only.
    pub const UNBOUNDED_CAPACITY: usize = inner::UNBOUNDED_CAPACITY;

    /// The largest `maxsize` a queue may have: 4,194,304 (2^22).
    pub const MAX_MAXSIZE: usize = inner::MAX_MAXSIZE;

    fn from_inner(inner: Arc<Inner>) -> Queue<T> {
        Queue {
            inner,
            _t: PhantomData,
        }
    }

    fn make(maxsize: usize, joinable: bool) -> Result<Queue<T>> {
        Inner::create(maxsize, joinable).map(|i| Queue::from_inner(Arc::new(i)))
    }

    /// An unbounded queue (Python's `Queue()`): see
    /// [`UNBOUNDED_CAPACITY`](Self::UNBOUNDED_CAPACITY).
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
    /// [`MAX_MAXSIZE`](Self::MAX_MAXSIZE).
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

    /// Whether the queue is full, so that a `put` would wait (approximate, like
    /// [`qsize`](Self::qsize)): it holds `maxsize` items, or for an unbounded queue
    /// [`UNBOUNDED_CAPACITY`](Self::UNBOUNDED_CAPACITY). A large item's `put` may also wait
    /// for room in the queue's socket, which this does not see (see
    /// [`UNBOUNDED_CAPACITY`](Self::UNBOUNDED_CAPACITY)).
    pub fn full(&self) -> bool {
        let limit = match self.inner.maxsize {
            0 => inner::UNBOUNDED_CAPACITY,
            m => m,
        };
        self.qsize() >= limit
    }

    /// Says this process will use the queue no more (Python's `close()`): later puts and
    /// gets through this handle (and its clones) fail with [`Error::HandleClosed`]; `qsize`,
    /// `empty` and `full` still read the queue's count. Items already put stay in the queue
    /// for others; other processes' handles are unaffected.
    pub fn close(&self) {
        self.inner.close()
    }

    /// Whether [`close`](Self::close) was called on this handle.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Shuts the queue down for every process that holds it (Python 3.13's
    /// `Queue.shutdown()`): puts fail with [`Error::ShutDown`], the items left are still
    /// taken by gets, and a get that finds the queue empty fails with [`Error::ShutDown`]
    /// instead of waiting. Every put and get waiting now, in any process, wakes to that. So
    /// a producer ends its consumers without a sentinel per consumer, as dropping the last
    /// sender of a tokio channel does: `while let Ok(item) = q.get().await { .. }` takes
    /// every item, then stops. A shutdown cannot be undone.
    ///
    /// A put under way in another process as the queue is shut down either fails with
    /// [`Error::ShutDown`], its item handed back, or returns `Ok` with its item taken by a
    /// get: a get ends on [`Error::ShutDown`] only once no put that returns `Ok` can still
    /// land an item, so every item a put was told is in the queue reaches a consumer that
    /// loops until the shutdown. A handle closed by [`close`](Self::close) may still shut
    /// the queue down.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// async fn consumer(q: mp::Queue<u32>) -> mp::Result<u32> {
    ///     let mut sum = 0;
    ///     loop {
    ///         match q.get().await {
    ///             Ok(v) => sum += v,
    ///             Err(mp::Error::ShutDown) => return Ok(sum),
    ///             Err(e) => return Err(e),
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> mp::Result<()> {
    /// let q = mp::Queue::new()?;
    /// let consumer = mp::Process::call(consumer, (q.clone(),)).start().await?;
    /// for i in 1..=10 {
    ///     q.put(i).await?;
    /// }
    /// q.shutdown();
    /// assert_eq!(consumer.await??, 55);
    /// # Ok(()) }
    /// ```
    pub fn shutdown(&self) {
        self.inner.shut_down(header::DRAINING);
    }

    /// Whether the queue was shut down, by [`shutdown`](Self::shutdown) or
    /// [`shutdown_immediate`](Self::shutdown_immediate), in any process.
    pub fn is_shut_down(&self) -> bool {
        self.inner.is_shut_down()
    }

    /// Shuts the queue down at once (Python 3.13's `Queue.shutdown(immediate=True)`): as
    /// [`shutdown`](Self::shutdown), and gets fail with [`Error::ShutDown`] too, in every
    /// process, whether items are left or not. This call then takes out and drops the
    /// items left, and returns how many it dropped; in a [`JoinableQueue`] each counts as
    /// done, so `join` returns once the items that consumers took are done. Items that do
    /// not decode as what was put are dropped too, and so is the item of a put that was under
    /// way as the queue was shut down, should it land after this call took out the rest.
    ///
    /// # Errors
    /// [`Error::HandleClosed`] after [`close`](Self::close) (the queue is not shut down); an
    /// I/O error if an item could not be taken out (the queue is shut down, and the items
    /// from that one on are left in it).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// The queue is shut down at the first poll. Dropped midway, this call leaves the items
    /// it has not taken out yet in the queue, where no get reaches them; another call takes
    /// them out. The same holds for a process killed during the call, and in a
    /// [`JoinableQueue`] the item it had taken and not yet counted as done stays unfinished,
    /// as a consumer's killed before its `task_done` does: `join` waits for it.
    pub async fn shutdown_immediate(&self) -> Result<usize> {
        self.inner.check_open()?;
        self.inner.shut_down(header::STOPPED);
        self.inner.drain().await
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Puts an item, waiting while the queue is full (Python's `put(obj)`).
    ///
    /// Returns once the item is in shared memory or in the kernel's keeping: it survives
    /// this process's exit.
    ///
    /// # Errors
    /// The item comes back in a [`PutError`] with [`Error::HandleClosed`] after
    /// [`close`](Self::close), [`Error::ShutDown`] once the queue is shut down (see
    /// [`shutdown`](Self::shutdown)), [`Error::Encode`] if it cannot be encoded,
    /// [`Error::FrameTooLarge`] above the maximum frame size, or an I/O error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the item was not put (and
    /// is dropped with the future), except a large item whose packet was already sent, which
    /// is always delivered. [`put_timeout`](Self::put_timeout) never loses the item that way.
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_as(item, PutKind::New).await
    }

    /// [`put`](Self::put) of a new item, or of one put back.
    async fn put_as(&self, item: T, kind: PutKind) -> std::result::Result<(), PutError<T>> {
        let e = match self.inner.encode(&item) {
            Ok(e) => e,
            Err(error) => return Err(PutError::new(error, item)),
        };
        match self.inner.put_item(&e, None, kind).await {
            Ok(()) => Ok(()),
            Err(error) => Err(PutError::new(error, item)),
        }
    }

    /// [`put`](Self::put), giving up after `timeout` with [`Error::Full`] (Python's
    /// `put(obj, timeout=...)`). It gives up only while nothing of the item is out: a large
    /// item whose packet went out just as other producers' small items filled the queue
    /// waits, past the timeout if need be, for the slot that keeps it in order, so that an
    /// item handed back is never in the queue too.
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
        let e = match self.inner.encode(&item) {
            Ok(e) => e,
            Err(error) => return Err(PutError::new(error, item)),
        };
        // The deadline bounds the waits before the item goes out, never the rest of a
        // large item's put once its packet is sent: a put that gives up hands back an item
        // that is not in the queue.
        let deadline = crate::sync::deadline(timeout);
        match self.inner.put_item(&e, deadline, PutKind::New).await {
            Ok(()) => Ok(()),
            Err(Error::Timeout) => Err(PutError::new(Error::Full, item)),
            Err(error) => Err(PutError::new(error, item)),
        }
    }

    /// Puts an item if there is room now, else fails at once with [`Error::Full`] (Python's
    /// `put_nowait`). Needs no runtime.
    ///
    /// # Errors
    /// As [`put`](Self::put), and [`Error::Full`], each with the item handed back.
    pub fn put_nowait(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.put_nowait_as(item, PutKind::New)
    }

    /// [`put_nowait`](Self::put_nowait) of a new item, or of one put back.
    fn put_nowait_as(&self, item: T, kind: PutKind) -> std::result::Result<(), PutError<T>> {
        let res = self
            .inner
            .check_open()
            .and_then(|()| self.inner.encode(&item))
            .and_then(|e| self.inner.put_item_now(e, kind));
        res.map_err(|error| PutError::new(error, item))
    }

    /// [`put`](Self::put) of an item a joinable queue already counts as unfinished (one
    /// handed back after the get that took it was withdrawn): it is not counted again, and
    /// a [`shutdown`](Self::shutdown) does not refuse it (see [`PutKind::PutBack`]). One
    /// refused by a [`shutdown_immediate`](Self::shutdown_immediate) is dropped, as that
    /// call drops the items left, and counts as done, since no consumer holds it.
    pub(crate) async fn put_back(&self, item: T) -> std::result::Result<(), PutError<T>> {
        let put = self.put_as(item, PutKind::PutBack).await;
        self.after_put_back(put)
    }

    /// [`put_back`](Self::put_back) if there is room now, else [`Error::Full`].
    pub(crate) fn put_back_nowait(&self, item: T) -> std::result::Result<(), PutError<T>> {
        let put = self.put_nowait_as(item, PutKind::PutBack);
        self.after_put_back(put)
    }

    /// Settles a joinable queue's count after a put back: the item put back was counted
    /// twice, and one refused by a shutdown is done.
    fn after_put_back(
        &self,
        put: std::result::Result<(), PutError<T>>,
    ) -> std::result::Result<(), PutError<T>> {
        match put {
            Ok(()) => {
                self.uncount_one();
                Ok(())
            }
            Err(e) => {
                if matches!(e.error(), Error::ShutDown) {
                    self.inner.uncount();
                }
                Err(e)
            }
        }
    }

    /// A joinable queue's count of unfinished items less one (never to zero: the item just
    /// put back counts).
    fn uncount_one(&self) {
        if self.inner.done.is_some() {
            self.inner
                .header()
                .unfinished()
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Sends `item`, which must travel through the socket, then leaves its marker
    /// unpublished and the packet lock held, as a producer killed between the two does; the
    /// caller exits next. A test hook only (feature `test-hooks`).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn __send_without_marker(&self, item: T) -> Result<()> {
        let r = self.inner.reactor()?;
        match self.inner.encode(&item)? {
            item::Item::Packet(bytes, fds) => self.inner.send_unmarked(&r, &bytes, &fds).await,
            item::Item::Small(_) => Err(Error::InvalidArgument(
                "the item fits a slot: it has no marker to leave out".into(),
            )),
        }
    }

    /// Removes and returns the next item, waiting until one is available (Python's `get()`).
    ///
    /// # Errors
    /// [`Error::HandleClosed`] after [`close`](Self::close); [`Error::ShutDown`] once the
    /// queue is shut down and empty (at once after
    /// [`shutdown_immediate`](Self::shutdown_immediate)); [`Error::Decode`] if the item
    /// is not a `T` (it is consumed); an I/O error, among them one that names the limit
    /// when this process has no descriptor free to receive an item that travels through
    /// the socket (the item stays in the queue).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if `get` loses a `select!` race, no item was taken.
    pub async fn get(&self) -> Result<T> {
        self.inner.check_open()?;
        self.inner.take_waiting().await
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
    /// [`Error::Empty`] (Python's `get_nowait`). Needs no runtime. Also [`Error::Empty`]
    /// while another consumer receives an item that travels through the socket and the
    /// next item does too, as Python's fails when its read lock is held; and after
    /// [`shutdown`](Self::shutdown), while the oldest item is still being written by its put.
    /// A large item whose producer died after sending it and before its marker was in the
    /// ring is taken as a waiting get takes it.
    ///
    /// # Errors
    /// As [`get`](Self::get), and [`Error::Empty`].
    pub fn get_nowait(&self) -> Result<T> {
        self.inner.check_open()?;
        match self.inner.try_take_now()? {
            Taken::Item(v) => Ok(v),
            Taken::Empty | Taken::Busy => Err(Error::Empty),
        }
    }

    /// Whether a get would not wait: an item is there, or the queue was shut down.
    pub(crate) fn ready_now(&self) -> bool {
        !self.empty() || self.is_shut_down()
    }

    pub(crate) async fn ready(&self) -> Result<()> {
        self.inner.check_open()?;
        if self.ready_now() {
            return Ok(());
        }
        let r = self.inner.reactor()?;
        self.inner
            .wait_until(&r.items, self.inner.header().consumers(), || {
                Ok(self.ready_now())
            })
            .await
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> Queue<T> {
    /// The queue's items as a [`futures::Stream`], each taken by a [`get`](Self::get), for
    /// `while let Some(item) = items.next().await`, stream combinators, or a pool's
    /// [`imap_stream`](crate::Pool::imap_stream). It ends once the queue is shut down and
    /// empty ([`Error::ShutDown`], Python 3.13's `ShutDown`) or the handle is closed; an item
    /// that is not a `T` yields its [`Error::Decode`] in its place, and any other error is the
    /// stream's last item. Call it on a clone to go on putting through this handle.
    ///
    /// # Cancel safety
    /// `next()` is cancel safe: a receive it began goes on inside the stream, for the next
    /// call; dropping the stream loses nothing, as a dropped `get` does.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        crate::receive_stream::receives(self, |q| async move {
            let r = q.get().await;
            (q, r)
        })
    }

    /// The queue's sending side as a [`futures::Sink`], each item sent put by a
    /// [`put`](Self::put), in order: for `items.map(Ok).forward(q.into_sink())` or
    /// `sink.send(item).await`, which wait for room as `put` does. A failed put hands its
    /// item back in its [`PutError`], and the sink goes on with the next. Call it on a clone
    /// to go on getting through this handle.
    ///
    /// # Cancel safety
    /// See [`PutSink`](crate::PutSink): dropping the sink with a put in progress may lose
    /// that item, as a dropped `put`; `close().await` first loses nothing.
    pub fn into_sink(self) -> crate::PutSink<T> {
        crate::PutSink::new(self, |q, item| async move { q.put(item).await })
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
        self.inner.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Inner::deserialize(d).map(|i| Queue::from_inner(Arc::new(i)))
    }
}
