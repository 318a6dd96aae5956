//! `Manager`: a server holding shared objects, reached through proxies (Python's
//! `multiprocessing.Manager()` and `BaseManager`), from the processes it started or, by
//! address and key, from any process on any machine.
//!
//! - `proto.rs`: the protocol as plain data; `server.rs`: the server's state and loops.
//! - `link.rs`: a client's connection, shared by proxies, many calls at once.
//! - `remote.rs`: [`ManagerBuilder`]: managers with an address, served in this process or
//!   in a server process, and [`Manager::connect`].
//! - one file per shared type, server side and proxy together: `dict.rs`, `list.rs`,
//!   `value.rs`, `array.rs`, `namespace.rs`, `queue.rs`, `lock.rs`, `semaphore.rs`,
//!   `event.rs`, `condition.rs`, `barrier.rs`.
//! - `shared_memory.rs`: [`SharedMemoryManager`], whose server keeps the shared memory
//!   segments made through it and removes them when it stops; `ledger.rs`: the names it
//!   writes down for its starting process, which removes them if the server is killed.
//!
//! # Lifetimes
//! An object lives while a proxy to it exists somewhere, as in Python. A link counts its
//! live proxies and the server counts each connection's references: the first proxy on a
//! connection sends `Incref`, the last one's drop `Decref`, and a closed connection drops
//! all of its references. A proxy encoded for another process sends `Lend` once the encoding
//! is kept (one that fails, or that only measures a large value before it is encoded again,
//! lends nothing), which keeps the object until the receiver's first reference settles the
//! loan (`Incref` with `borrowed`); a proxy received and let go before its process made a
//! call settles the loan then, on a connection made for that (a local manager's; a proxy of
//! a manager reached by address makes none in a drop, and keeps its object until the
//! manager stops, as one encoded and never decoded does, which errs on the side of
//! keeping). A registered name keeps its object for good, and a condition made over a lock
//! keeps the lock while it lives.
//!
//! # Nested proxies
//! A proxy inside a value stored by its own manager (a dict of dicts) is encoded without its
//! way to the server, as its id alone; decoded from a value fetched through a link, it uses
//! that link. Such a stored proxy keeps its object until the manager stops.
//!
//! The server keeps every value as MessagePack bytes; a proxy encodes and decodes its own
//! types. A proxy is a serde value, so it can be passed to a `Process` or a pool task like
//! any argument: what travels is the object's id and the way to the server. For a local
//! manager that is the manager's *registration socket* (a `SOCK_SEQPACKET` socket, sent by
//! `SCM_RIGHTS`): reaching the server takes holding the descriptor, and no file-system path
//! or port exists that another user could connect to. For a manager reached by address, it
//! is the address and the authentication key: hand such a proxy only to a process you would
//! give the key to.

mod ledger;
mod link;
mod proto;
mod remote;
mod server;
mod shared_memory;

pub use array::ArrayProxy;
pub use barrier::BarrierProxy;
pub use condition::ConditionProxy;
pub use dict::DictProxy;
pub use event::EventProxy;
pub use list::ListProxy;
pub use lock::{ConditionLock, LockProxy, RLockProxy};
pub use managed::{Managed, Proxy};
pub use namespace::NamespaceProxy;
pub use queue::{JoinableQueueProxy, QueueProxy};
pub use remote::ManagerBuilder;
pub use semaphore::{BoundedSemaphoreProxy, SemaphoreProxy};
pub use shared_memory::{SegmentsProxy, SharedMemoryManager};
pub use value::ValueProxy;

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::process::Process;
use crate::start::StartMethod;
use crate::wire::codec;
use crate::wire::{Encoded, SharedFd, SharedFdRef};
pub(crate) use link::keep_links_open;
use link::{Link, Route};
use proto::{Bytes, Initial, Reply, Request, Tag};

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected reply from the manager: {reply:?}"))
}

fn expect_done(reply: Reply) -> Result<()> {
    match reply {
        Reply::Done => Ok(()),
        r => Err(unexpected(r)),
    }
}

fn expect_bool(reply: Reply) -> Result<bool> {
    match reply {
        Reply::Bool(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}

fn expect_len(reply: Reply) -> Result<usize> {
    match reply {
        Reply::Len(n) => Ok(n as usize),
        r => Err(unexpected(r)),
    }
}

thread_local! {
    /// The link a value is being encoded for or decoded from, while it is: a proxy inside
    /// the value is then a nested one (see `Handle`'s `Serialize`).
    static NEST: std::cell::RefCell<Option<Arc<Link>>> = const { std::cell::RefCell::new(None) };
}

/// Sets [`NEST`] while it lives, and puts back what was there.
struct Nesting(Option<Arc<Link>>);

impl Nesting {
    fn enter(link: &Arc<Link>) -> Nesting {
        Nesting(NEST.with(|n| n.replace(Some(link.clone()))))
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        let previous = self.0.take();
        NEST.with(|n| *n.borrow_mut() = previous);
    }
}

/// Encodes a value to be stored by the manager `link` leads to; proxies to that manager's
/// objects inside it are stored as nested proxies.
fn encode<T: Serialize + ?Sized>(link: &Arc<Link>, value: &T) -> Result<Bytes> {
    let _nesting = Nesting::enter(link);
    encode_plain(value)
}

/// Decodes a value fetched through `link`; nested proxies inside it use `link`.
fn decode<T: DeserializeOwned>(link: &Arc<Link>, bytes: Bytes) -> Result<T> {
    let _nesting = Nesting::enter(link);
    codec::decode(&bytes, Vec::new())
}

/// Encodes a value to be stored by the manager (values holding descriptors cannot be).
fn encode_plain<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    let e = Encoded::new(value)?;
    if !e.fds.is_empty() {
        return Err(Error::Encode {
            type_name: std::any::type_name::<T>(),
            message: "a manager stores plain data; this value holds descriptors".into(),
        });
    }
    Ok(ByteBuf::from(e.bytes))
}

/// Who runs the server of a [`Manager`] handle.
enum Server {
    /// A server process this handle started.
    Process(Process),
    /// A server running as a task of this process's runtime.
    Task(tokio::task::JoinHandle<()>),
    /// A server someone else runs ([`Manager::connect`]).
    Elsewhere,
    /// A server task of this process that [`Manager::serve_forever`] saw end.
    Ended,
}

/// A server holding shared objects (Python's `multiprocessing.Manager()` and
/// `BaseManager`): dicts, lists, values, arrays, namespaces, queues, locks, semaphores,
/// events, conditions and barriers, each reached through a typed proxy.
///
/// [`Manager::start`] starts a local server process; [`Manager::builder`] gives it an
/// address and key that other processes reach it by, and can serve it in this process
/// instead; [`Manager::connect`] reaches one from anywhere. Objects can be named
/// ([`register`](Self::register)) and fetched by name ([`get`](Self::get)), with a check that
/// both sides agree on the proxy's type.
///
/// Dropping a `Manager` that started its server stops the server, as leaving Python's
/// `with Manager() as m:` block does: proxies still held anywhere then fail with
/// [`Error::ManagerLost`].
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{DictProxy, Manager, Process};
///
/// async fn record(d: DictProxy<String, u32>) {
///     let _ = d.insert("age".to_string(), 38).await;
/// }
///
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let manager = Manager::start().await?;
/// let d = manager.dict::<String, u32>().await?;
/// let mut p = Process::new(record, (d.clone(),)).start().await?;
/// p.join().await?;
/// assert_eq!(d.get(&"age".to_string()).await?, Some(38));
/// # Ok(()) }
/// ```
pub struct Manager {
    server: Server,
    link: Arc<Link>,
    address: Option<Address>,
    /// A Unix socket file this handle bound (and the directory made for it), removed when
    /// the handle goes.
    _socket_file: Option<crate::address::SocketFile>,
    /// For a `SharedMemoryManager`'s server process: the names of the segments it made,
    /// removed here once it is gone, if it could not remove them itself.
    ledger: Option<ledger::Ledger>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Manager");
        if let Server::Process(p) = &self.server {
            d.field("server", p);
        }
        d.field("address", &self.address).finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts a local server process with the default start method (Python's
    /// `Manager()`). Only the processes it hands proxies to can reach it.
    ///
    /// # Errors
    /// Those of [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start() -> Result<Manager> {
        Manager::start_with(crate::get_start_method()).await
    }

    /// Starts a local server process with `method`.
    ///
    /// # Errors
    /// Those of [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start_with(method: StartMethod) -> Result<Manager> {
        Manager::builder().start_method(method).start().await
    }

    /// A builder for a manager with an address and key, served in a process of its own or
    /// in this one (Python's `BaseManager(address, authkey)`).
    pub fn builder() -> ManagerBuilder {
        ManagerBuilder::default()
    }

    /// The server's process id, if this handle started a server process.
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::Process(p) => Some(p.pid()),
            _ => None,
        }
    }

    /// The address other processes reach the manager by, if it has one (with the port
    /// chosen, for TCP port 0).
    pub fn address(&self) -> Option<&Address> {
        self.address.as_ref()
    }

    fn proxy<P>(&self, id: u64) -> Handle<P> {
        Handle::new(self.link.clone(), id)
    }

    async fn create<P: ?Sized>(&self, initial: Initial) -> Result<u64> {
        match self
            .link
            .call(Request::Create(initial, Tag::of::<P>()))
            .await?
        {
            Reply::Id(id) => Ok(id),
            r => Err(unexpected(r)),
        }
    }

    /// A new, empty shared dict (Python's `manager.dict()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn dict<K, V>(&self) -> Result<DictProxy<K, V>> {
        let id = self
            .create::<DictProxy<K, V>>(Initial::Dict(Vec::new()))
            .await?;
        Ok(DictProxy(self.proxy(id)))
    }

    /// A new shared dict holding `pairs`, in their order, a later pair replacing the value
    /// of an earlier one of the same key (Python's `manager.dict(mapping)` or
    /// `manager.dict(pairs)`).
    ///
    /// # Errors
    /// [`Error::Encode`] if a key or value cannot be encoded; [`Error::ManagerLost`] if the
    /// server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn dict_from<K: Serialize, V: Serialize>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<DictProxy<K, V>> {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok((encode(&self.link, &k)?, encode(&self.link, &v)?)))
            .collect::<Result<Vec<_>>>()?;
        let id = self.create::<DictProxy<K, V>>(Initial::Dict(pairs)).await?;
        Ok(DictProxy(self.proxy(id)))
    }

    /// A new shared list holding `items` (Python's `manager.list(range(10))`).
    ///
    /// # Errors
    /// [`Error::Encode`] if an item cannot be encoded; [`Error::ManagerLost`] if the server is
    /// gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn list<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<ListProxy<T>> {
        let items = items
            .into_iter()
            .map(|i| encode(&self.link, &i))
            .collect::<Result<Vec<_>>>()?;
        let id = self.create::<ListProxy<T>>(Initial::List(items)).await?;
        Ok(ListProxy(self.proxy(id)))
    }

    /// A new shared value (Python's `manager.Value('i', 0)`).
    ///
    /// # Errors
    /// [`Error::Encode`] if the value cannot be encoded; [`Error::ManagerLost`] if the server is
    /// gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn value<T: Serialize>(&self, value: T) -> Result<ValueProxy<T>> {
        let id = self
            .create::<ValueProxy<T>>(Initial::Value(encode(&self.link, &value)?))
            .await?;
        Ok(ValueProxy(self.proxy(id)))
    }

    /// A new shared array of fixed length holding `items` (Python's
    /// `manager.Array('i', range(10))`).
    ///
    /// # Errors
    /// [`Error::Encode`] if an item cannot be encoded; [`Error::ManagerLost`] if the server is
    /// gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn array<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<ArrayProxy<T>> {
        let items = items
            .into_iter()
            .map(|i| encode(&self.link, &i))
            .collect::<Result<Vec<_>>>()?;
        let id = self.create::<ArrayProxy<T>>(Initial::Array(items)).await?;
        Ok(ArrayProxy(self.proxy(id)))
    }

    /// A new, empty namespace (Python's `manager.Namespace()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn namespace(&self) -> Result<NamespaceProxy> {
        let id = self.create::<NamespaceProxy>(Initial::Namespace).await?;
        Ok(NamespaceProxy(self.proxy(id)))
    }

    /// A new unbounded queue (Python's `manager.Queue()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn queue<T>(&self) -> Result<QueueProxy<T>> {
        self.queue_with_maxsize(0).await
    }

    /// A new queue of at most `maxsize` items, 0 for no bound (Python's
    /// `manager.Queue(maxsize)`). The process that started the manager, and those it
    /// passes the proxy to, put and get through a shared-memory ring, as a
    /// [`Queue`](crate::Queue)'s; a `maxsize` above
    /// [`Queue::MAX_MAXSIZE`](crate::Queue::MAX_MAXSIZE) keeps the items in the server,
    /// every call a round trip to it.
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn queue_with_maxsize<T>(&self, maxsize: usize) -> Result<QueueProxy<T>> {
        let initial = Initial::Queue {
            maxsize,
            joinable: false,
        };
        let id = self.create::<QueueProxy<T>>(initial).await?;
        Ok(QueueProxy(self.proxy(id)))
    }

    /// A new joinable queue of at most `maxsize` items, 0 for no bound (Python's
    /// `manager.JoinableQueue(maxsize)`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn joinable_queue<T>(&self, maxsize: usize) -> Result<JoinableQueueProxy<T>> {
        let initial = Initial::Queue {
            maxsize,
            joinable: true,
        };
        let id = self.create::<JoinableQueueProxy<T>>(initial).await?;
        Ok(JoinableQueueProxy(QueueProxy(self.proxy(id))))
    }

    /// A new lock (Python's `manager.Lock()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn lock(&self) -> Result<LockProxy> {
        let id = self
            .create::<LockProxy>(Initial::Lock { reentrant: false })
            .await?;
        Ok(LockProxy(self.proxy(id)))
    }

    /// A new re-entrant lock (Python's `manager.RLock()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn rlock(&self) -> Result<RLockProxy> {
        let id = self
            .create::<RLockProxy>(Initial::Lock { reentrant: true })
            .await?;
        Ok(RLockProxy(self.proxy(id)))
    }

    /// A new semaphore of `value` (Python's `manager.Semaphore(value)`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn semaphore(&self, value: u32) -> Result<SemaphoreProxy> {
        let initial = Initial::Semaphore {
            value,
            bounded: false,
        };
        let id = self.create::<SemaphoreProxy>(initial).await?;
        Ok(SemaphoreProxy(self.proxy(id)))
    }

    /// A new bounded semaphore of `value` (Python's `manager.BoundedSemaphore(value)`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn bounded_semaphore(&self, value: u32) -> Result<BoundedSemaphoreProxy> {
        let initial = Initial::Semaphore {
            value,
            bounded: true,
        };
        let id = self.create::<BoundedSemaphoreProxy>(initial).await?;
        Ok(BoundedSemaphoreProxy(self.proxy(id)))
    }

    /// A new event, not set (Python's `manager.Event()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn event(&self) -> Result<EventProxy> {
        let id = self.create::<EventProxy>(Initial::Event).await?;
        Ok(EventProxy(self.proxy(id)))
    }

    /// A new condition over a re-entrant lock of its own (Python's `manager.Condition()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn condition(&self) -> Result<ConditionProxy> {
        let initial = Initial::Condition { reentrant: true };
        let id = self.create::<ConditionProxy>(initial).await?;
        Ok(ConditionProxy(self.proxy(id)))
    }

    /// A new condition over `lock`, a [`LockProxy`] or [`RLockProxy`] of this manager,
    /// which the two share (Python's `manager.Condition(lock)`): while the lock is held
    /// through either proxy, a `lock` through the other waits; a [`wait`](ConditionProxy::wait)
    /// releases it and takes it back. The condition keeps the lock object while it lives.
    ///
    /// The condition's lock follows `lock`'s rules. A plain lock is held by a connection,
    /// may be released by anyone, and counts as held for `wait` and `notify` while anyone
    /// holds it, as Python's `Condition` over a `Lock`. A re-entrant one is owned by a task
    /// on a connection: proxies made by one [`Manager`] handle share its connection (one
    /// per runtime that calls them), but proxies passed to another process each have their
    /// own, so there take and wait through the same proxy.
    ///
    /// # Errors
    /// [`Error::Manager`] if `lock` is not an object of this manager (Python's proxy of
    /// another manager); [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> tokio_multiprocessing::Result<()> {
    /// let m = tokio_multiprocessing::Manager::start().await?;
    /// let lock = m.lock().await?;
    /// let cond = m.condition_with(&lock).await?;
    /// lock.lock().await?;
    /// // Held through the lock: the condition's lock is that lock.
    /// assert!(!cond.try_lock().await?);
    /// cond.notify_all().await?;
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn condition_with<L: ConditionLock>(&self, lock: &L) -> Result<ConditionProxy> {
        let initial = Initial::ConditionOver {
            lock: lock.object_id(),
        };
        let id = self.create::<ConditionProxy>(initial).await?;
        Ok(ConditionProxy(self.proxy(id)))
    }

    /// A new barrier for `parties` callers (Python's `manager.Barrier(parties)`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for 0 parties; [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn barrier(&self, parties: u32) -> Result<BarrierProxy> {
        if parties == 0 {
            return Err(Error::InvalidArgument(
                "a barrier needs at least one party".into(),
            ));
        }
        let id = self
            .create::<BarrierProxy>(Initial::Barrier { parties })
            .await?;
        Ok(BarrierProxy(self.proxy(id)))
    }

    /// A new value of your own type `M`, made by its `Default` in the server (Python's
    /// `m.Maths()` for a registered `Maths`). `M` must be registered on the builder
    /// ([`ManagerBuilder::register`]).
    ///
    /// # Errors
    /// [`Error::Manager`] if the server does not serve `M`, or `M`'s `Default` panicked there
    /// (the message says so); [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn managed<M: Managed>(&self) -> Result<Proxy<M>> {
        let initial = Initial::User(std::any::type_name::<M>().to_string());
        let id = self.create::<Proxy<M>>(initial).await?;
        Ok(Proxy(self.proxy(id)))
    }

    /// Names an object of this manager, so that any client can fetch a proxy to it with
    /// [`get`](Self::get) (Python's `BaseManager.register('get_queue', callable=...)`).
    ///
    /// The object is one the manager holds, made through it ([`queue`](Self::queue),
    /// [`dict`](Self::dict)...). Python's server may also serve a `multiprocessing.Queue`
    /// that local processes share (`callable=lambda: queue`); here the manager's own queue
    /// serves both: pass its proxy to the local processes as well.
    ///
    /// # Errors
    /// [`Error::Manager`] if the name is taken by another object, or the proxy is not of
    /// this manager's objects; [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call may or may not have named the object.
    ///
    /// # Examples
    ///
    /// A local [`Queue`](crate::Queue) is not a manager's object, and does not compile here:
    ///
    /// ```compile_fail,E0277
    /// # async fn f(m: tokio_multiprocessing::Manager) -> tokio_multiprocessing::Result<()> {
    /// let q = tokio_multiprocessing::Queue::<String>::new()?;
    /// m.register("get_queue", &q).await?;
    /// # Ok(()) }
    /// ```
    pub async fn register<P: SharedProxy>(&self, name: &str, proxy: &P) -> Result<()> {
        expect_done(
            self.link
                .call(Request::Register(name.to_string(), proxy.object_id()))
                .await?,
        )
    }

    /// A proxy to the object registered as `name`, whose type must be `P` on both sides
    /// (the same proxy type with the same value types: its type name and a fingerprint of
    /// it are compared by the server).
    ///
    /// # Errors
    /// [`Error::Manager`] if no object has that name, or it is of another type (the message
    /// names both types); [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn get<P: SharedProxy>(&self, name: &str) -> Result<P> {
        match self
            .link
            .call(Request::Lookup(name.to_string(), Tag::of::<P>()))
            .await?
        {
            Reply::Id(id) => Ok(P::from_link(self.link.clone(), id)),
            r => Err(unexpected(r)),
        }
    }

    /// The number of objects the server holds (Python's `_number_of_objects()`). An object
    /// lives while a proxy to it exists in some process (or is on its way to one), or while
    /// it has a name; then the server lets it go.
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn object_count(&self) -> Result<usize> {
        expect_len(self.link.call(Request::Count).await?)
    }

    /// Waits until the server ends (Python's `server.serve_forever()`): for a server in this
    /// process, until it fails or the runtime stops; for a server process, until it exits.
    ///
    /// # Errors
    /// An I/O error from waiting on the server process.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the wait leaves the server running, held by this handle.
    pub async fn serve_forever(&mut self) -> Result<()> {
        match &mut self.server {
            Server::Process(p) => p.join().await.map(drop),
            Server::Task(t) => {
                let _ = t.await;
                // A finished task's handle must not be awaited again (by a later
                // `serve_forever` or `shutdown`).
                self.server = Server::Ended;
                Ok(())
            }
            Server::Ended => Ok(()),
            Server::Elsewhere => std::future::pending().await,
        }
    }

    /// Stops the server this handle started and waits for it (Python's
    /// `manager.shutdown()`): every object ends, and every proxy, anywhere, then fails with
    /// [`Error::ManagerLost`]. On a handle from [`connect`](Self::connect), it drops this handle
    /// and leaves the server running; the connection, which the proxies fetched through the
    /// handle share, closes with the last of them.
    ///
    /// # Errors
    /// An I/O error from signalling or waiting.
    ///
    /// # Cancel safety
    /// Cancel safe: the server has been told to stop before the wait begins, and is reaped
    /// when it exits even if the wait is dropped.
    pub async fn shutdown(mut self) -> Result<()> {
        match std::mem::replace(&mut self.server, Server::Elsewhere) {
            Server::Process(mut p) => {
                p.terminate()?;
                p.join().await?;
                if let Some(l) = &self.ledger {
                    l.sweep();
                }
            }
            Server::Task(t) => {
                t.abort();
                let _ = t.await;
            }
            Server::Elsewhere | Server::Ended => {}
        }
        self.link.forget_rings();
        Ok(())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        match &mut self.server {
            Server::Process(p) => {
                if p.is_alive() {
                    // It removes its segments, if it keeps any, when SIGTERM reaches it.
                    let _ = p.terminate();
                } else if let Some(l) = &self.ledger {
                    // Gone already (killed): it left them.
                    l.sweep();
                }
            }
            Server::Task(t) => t.abort(),
            Server::Elsewhere | Server::Ended => {}
        }
    }
}

/// A proxy type that a [`Manager`] can hand out by name ([`Manager::get`]): every proxy
/// type of this crate. Sealed: the manager must know how to serve the type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an object of a manager",
    label = "not a proxy to an object a manager holds",
    note = "a manager names and serves its own objects: make one with it (`m.queue()`, \
            `m.dict()`, `m.lock()`...) and register or get that proxy; a `Queue`, `Lock` or \
            other object of this crate that is not a proxy reaches only the processes of \
            this machine it is passed to"
)]
pub trait SharedProxy: sealed::Sealed + Sized {}

mod sealed {
    pub trait Sealed {
        fn from_link(link: std::sync::Arc<super::Link>, id: u64) -> Self;
        fn object_id(&self) -> u64;
    }
}
use sealed::Sealed;

/// What every proxy holds: its way to the server and the object's id.
struct Handle<T> {
    link: Arc<Link>,
    id: u64,
    _types: PhantomData<fn() -> T>,
}

impl<T> Handle<T> {
    fn new(link: Arc<Link>, id: u64) -> Handle<T> {
        Handle::holding(link, id, false)
    }

    /// A handle, counted by its link (see `Link::hold`).
    fn holding(link: Arc<Link>, id: u64, borrowed: bool) -> Handle<T> {
        link.hold(id, borrowed);
        Handle {
            link,
            id,
            _types: PhantomData,
        }
    }

    async fn call(&self, req: Request) -> Result<Reply> {
        self.link.call(req).await
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle::new(self.link.clone(), self.id)
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.link.release(self.id);
    }
}

/// The way to the server, as a proxy carries it to another process.
#[derive(Serialize)]
enum RouteRef<'a> {
    /// Stored inside an object of the same manager: the way is that of whoever fetches it.
    Nested,
    /// The registration socket: one descriptor for every proxy of the manager in a message.
    Local(SharedFdRef<'a>),
    Remote {
        address: &'a Address,
        #[serde(with = "serde_bytes")]
        authkey: Option<&'a [u8]>,
    },
}

#[derive(Deserialize)]
enum RouteOwned {
    Nested,
    Local(SharedFd),
    Remote {
        address: Address,
        #[serde(with = "serde_bytes")]
        authkey: Option<Vec<u8>>,
    },
}

impl RouteOwned {
    /// The way to the server; `None` for a nested proxy's, which is that of whoever fetched
    /// the value it came in.
    fn into_route(self) -> Option<Route> {
        match self {
            RouteOwned::Nested => None,
            RouteOwned::Local(fd) => Some(Route::Registration(fd.0)),
            RouteOwned::Remote { address, authkey } => Some(Route::Address {
                address,
                authkey: authkey.map(Arc::from),
            }),
        }
    }
}

/// A link's way to its server, as it travels to another process (never nested).
struct Way<'a>(&'a Link);

impl Serialize for Way<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0.route {
            Route::Registration(fd) => {
                RouteRef::Local(SharedFdRef(std::os::fd::AsFd::as_fd(fd))).serialize(s)
            }
            Route::Address { address, authkey } => RouteRef::Remote {
                address,
                authkey: authkey.as_deref(),
            }
            .serialize(s),
        }
    }
}

impl<T> Serialize for Handle<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeTuple};
        let nest = NEST.with(|n| n.borrow().clone());
        let nested = match &nest {
            Some(into) if self.link.same_server(into) => true,
            Some(_) => {
                return Err(S::Error::custom(
                    "a proxy stored in a manager's object must be to an object of that \
                     manager, reached through the same handle",
                ));
            }
            None => false,
        };
        let mut t = s.serialize_tuple(2)?;
        match nested {
            true => t.serialize_element(&RouteRef::Nested)?,
            false => t.serialize_element(&Way(&self.link))?,
        }
        t.serialize_element(&self.id)?;
        let done = t.end()?;
        // A nested proxy's loan is never settled: its object stays while the manager runs.
        // Lent once the encoding is kept: one that fails, or that only measures the value
        // before it is encoded again (a large one), lends nothing. And only once this
        // serializer took the proxy: the encoder tries the first item of a sequence as a
        // byte (a serializer that refuses anything else) before it writes it for real.
        let (link, id) = (self.link.clone(), self.id);
        crate::wire::codec::when_kept(move || link.lend(id));
        Ok(done)
    }
}

impl<'de, T> Deserialize<'de> for Handle<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let (route, id) = <(RouteOwned, u64)>::deserialize(d)?;
        let Some(route) = route.into_route() else {
            let link = NEST.with(|n| n.borrow().clone()).ok_or_else(|| {
                D::Error::custom("a nested proxy outside a value fetched from a manager")
            })?;
            return Ok(Handle::holding(link, id, false));
        };
        Ok(Handle::holding(Link::shared(route), id, true))
    }
}

macro_rules! proxy_traits {
    ($name:ident $(< $($p:ident),+ >)?) => {
        impl $(<$($p),+>)? Clone for $name $(<$($p),+>)? {
            fn clone(&self) -> Self {
                $name(self.0.clone())
            }
        }
        impl $(<$($p),+>)? serde::Serialize for $name $(<$($p),+>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        impl<'de $($(, $p)+)?> serde::Deserialize<'de> for $name $(<$($p),+>)? {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                <super::Handle<_> as serde::Deserialize>::deserialize(d).map($name)
            }
        }
        impl $(<$($p),+>)? std::fmt::Debug for $name $(<$($p),+>)? {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "<{} object #{}>", stringify!($name), self.0.id)
            }
        }
        impl $(<$($p),+>)? super::Sealed for $name $(<$($p),+>)? {
            fn from_link(link: std::sync::Arc<super::Link>, id: u64) -> Self {
                $name(super::Handle::new(link, id))
            }
            fn object_id(&self) -> u64 {
                self.0.id
            }
        }
        impl $(<$($p),+>)? super::SharedProxy for $name $(<$($p),+>)? {}
    };
}

// After `proxy_traits!`, which they use.
mod array;
mod barrier;
mod condition;
mod dict;
mod event;
mod list;
mod lock;
mod managed;
mod namespace;
mod queue;
mod semaphore;
mod value;

impl<T> Sealed for JoinableQueueProxy<T> {
    fn from_link(link: Arc<Link>, id: u64) -> Self {
        JoinableQueueProxy(QueueProxy(Handle::new(link, id)))
    }
    fn object_id(&self) -> u64 {
        self.0.0.id
    }
}
impl<T> SharedProxy for JoinableQueueProxy<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_task_that_ended_can_be_waited_for_again_and_shut_down() {
        let (ours, _theirs) = crate::sys::socketpair_seqpacket().unwrap();
        let mut m = Manager {
            server: Server::Task(tokio::spawn(async {})),
            link: Link::new(Route::Registration(ours)),
            address: None,
            _socket_file: None,
            ledger: None,
        };
        m.serve_forever().await.unwrap();
        m.serve_forever().await.unwrap();
        m.shutdown().await.unwrap();
    }
}
