//! `Manager`: a server process holding shared objects, reached through proxies (Python's
//! `multiprocessing.Manager()` and its `DictProxy`, `ListProxy`, `ValueProxy`).
//!
//! The server keeps every object as MessagePack bytes; a proxy encodes and decodes its own
//! types. A proxy is a serde value, so it can be passed to a `Process` or a pool task like
//! any argument: what travels is the object's id and the manager's *registration socket*
//! (a `SOCK_SEQPACKET` socket, by `SCM_RIGHTS`). On its first call in a process, a proxy
//! makes a socket pair and sends one end to the server through the registration socket;
//! that pair is its connection from then on. Reaching the server thus takes holding the
//! descriptor: no file-system path, no port, nothing another user could connect to.

mod server;

pub use dict::DictProxy;
pub use list::ListProxy;
pub use value::ValueProxy;

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};
use crate::process::Process;
use crate::start::StartMethod;
use crate::sys;
use crate::wire::codec;
use crate::wire::{Encoded, Fd, FdRef, FrameBuf, Framed};
use server::{Bytes, Initial, Reply, Request};

/// A connection to the server, made on first use in each process.
struct Conn {
    link: Framed,
    next_id: u64,
    /// Set while a request is being written: a write dropped midway leaves the stream
    /// unusable, so the next call starts a new connection.
    writing: bool,
}

/// A proxy's way to the server: the registration socket, and a connection once made.
struct Link {
    registration: OwnedFd,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl Link {
    fn new(registration: OwnedFd) -> Arc<Link> {
        Arc::new(Link {
            registration,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    fn connect(&self) -> Result<Conn> {
        let (mine, theirs) = sys::socketpair_stream()?;
        match sys::send_with_fds(self.registration.as_fd(), &[1], &[theirs.as_raw_fd()]) {
            Ok(_) => {}
            Err(e) if is_gone(&e) => return Err(Error::Closed),
            Err(e) => return Err(e.into()),
        }
        drop(theirs);
        Ok(Conn {
            link: Framed::unix(mine)?,
            next_id: 1,
            writing: false,
        })
    }

    /// Sends `req` and waits for its reply. Replies to requests whose callers gave up
    /// (cancelled futures) are skipped by id. A server that is gone is [`Error::Closed`].
    async fn call(&self, req: Request) -> Result<Reply> {
        match self.exchange(req).await {
            Err(Error::Io(e)) if is_gone(&e) => Err(Error::Closed),
            r => r,
        }
    }

    async fn exchange(&self, req: Request) -> Result<Reply> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| c.writing) {
            *guard = None;
        }
        let conn = match guard.as_mut() {
            Some(c) => c,
            None => guard.insert(self.connect()?),
        };
        let id = conn.next_id;
        conn.next_id += 1;
        let mut frame = FrameBuf::of(&(id, req))?;
        conn.writing = true;
        conn.link.send(&mut frame).await?;
        conn.writing = false;
        loop {
            let (rid, reply) = conn.link.recv().await?.decode::<(u64, Reply)>()?;
            if rid == id {
                return match reply {
                    Reply::Failed(message) => Err(Error::Manager(message)),
                    r => Ok(r),
                };
            }
        }
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), BrokenPipe | ConnectionRefused | ConnectionReset)
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected reply from the manager: {reply:?}"))
}

/// Encodes a value to be stored by the manager (values holding descriptors cannot be).
fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    let e = Encoded::new(value)?;
    if !e.fds.is_empty() {
        return Err(Error::Encode {
            type_name: std::any::type_name::<T>(),
            message: "a manager stores plain data; this value holds descriptors".into(),
        });
    }
    Ok(ByteBuf::from(e.bytes))
}

fn decode<T: DeserializeOwned>(bytes: Bytes) -> Result<T> {
    codec::decode(&bytes, Vec::new())
}

/// A server process holding shared objects (Python's `multiprocessing.Manager()`).
///
/// Dropping the `Manager` stops the server, as leaving Python's `with Manager() as m:`
/// block does: proxies still held anywhere then fail with [`Error::Closed`].
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing::{DictProxy, Manager, Process};
///
/// async fn record(d: DictProxy<String, u32>) {
///     let _ = d.insert("age".to_string(), 38).await;
/// }
///
/// # async fn demo() -> tokio_multiprocessing::Result<()> {
/// let manager = Manager::start().await?;
/// let d = manager.dict::<String, u32>().await?;
/// let mut p = Process::new(record, (d.clone(),)).start().await?;
/// p.join().await?;
/// assert_eq!(d.get(&"age".to_string()).await?, Some(38));
/// # Ok(()) }
/// ```
pub struct Manager {
    server: Process,
    link: Arc<Link>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Starts the server process with the default start method.
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

    /// Starts the server process with `method`.
    ///
    /// # Errors
    /// Those of [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start_with(method: StartMethod) -> Result<Manager> {
        let (ours, theirs) = sys::socketpair_seqpacket()?;
        let server = Process::new(server::serve, (Fd::from(theirs),))
            .name("Manager")
            .daemon(true)
            .start_method(method)
            .start()
            .await?;
        Ok(Manager {
            server,
            link: Link::new(ours),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    async fn create(&self, initial: Initial) -> Result<u64> {
        match self.link.call(Request::Create(initial)).await? {
            Reply::Id(id) => Ok(id),
            r => Err(unexpected(r)),
        }
    }

    fn handle(&self) -> Result<Arc<Link>> {
        Ok(Link::new(sys::dup_fd(self.link.registration.as_fd())?))
    }

    /// A new, empty shared dict (Python's `manager.dict()`).
    ///
    /// # Errors
    /// [`Error::Closed`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn dict<K, V>(&self) -> Result<DictProxy<K, V>> {
        let id = self.create(Initial::Dict(Vec::new())).await?;
        Ok(DictProxy(Proxy::new(self.handle()?, id)))
    }

    /// A new shared list holding `items` (Python's `manager.list(range(10))`).
    ///
    /// # Errors
    /// [`Error::Encode`] if an item cannot be encoded; [`Error::Closed`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn list<T: Serialize>(
        &self,
        items: impl IntoIterator<Item = T>,
    ) -> Result<ListProxy<T>> {
        let items = items
            .into_iter()
            .map(|i| encode(&i))
            .collect::<Result<Vec<_>>>()?;
        let id = self.create(Initial::List(items)).await?;
        Ok(ListProxy(Proxy::new(self.handle()?, id)))
    }

    /// A new shared value (Python's `manager.Value('i', 0)`).
    ///
    /// # Errors
    /// [`Error::Encode`] if the value cannot be encoded; [`Error::Closed`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call leaves at most an unused object in the server.
    pub async fn value<T: Serialize>(&self, value: T) -> Result<ValueProxy<T>> {
        let id = self.create(Initial::Value(encode(&value)?)).await?;
        Ok(ValueProxy(Proxy::new(self.handle()?, id)))
    }

    /// Stops the server and waits for it to exit (Python's `manager.shutdown()`).
    ///
    /// # Errors
    /// An I/O error from signalling or waiting.
    ///
    /// # Cancel safety
    /// Cancel safe: the server has been sent SIGTERM before the wait begins, and is reaped
    /// when it exits even if the wait is dropped.
    pub async fn shutdown(mut self) -> Result<()> {
        self.server.terminate()?;
        self.server.join().await?;
        Ok(())
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.server.terminate();
    }
}

/// What every proxy holds: its way to the server and the object's id.
struct Proxy<T> {
    link: Arc<Link>,
    id: u64,
    _types: PhantomData<fn() -> T>,
}

impl<T> Proxy<T> {
    fn new(link: Arc<Link>, id: u64) -> Proxy<T> {
        Proxy {
            link,
            id,
            _types: PhantomData,
        }
    }
}

impl<T> Clone for Proxy<T> {
    fn clone(&self) -> Self {
        Proxy::new(self.link.clone(), self.id)
    }
}

impl<T> Serialize for Proxy<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&FdRef(self.link.registration.as_fd()))?;
        t.serialize_element(&self.id)?;
        t.end()
    }
}

impl<'de, T> Deserialize<'de> for Proxy<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (reg, id) = <(Fd, u64)>::deserialize(d)?;
        Ok(Proxy::new(Link::new(reg.into_owned()), id))
    }
}

macro_rules! proxy_traits {
    ($name:ident < $($p:ident),+ >) => {
        impl<$($p),+> Clone for $name<$($p),+> {
            fn clone(&self) -> Self {
                $name(self.0.clone())
            }
        }
        impl<$($p),+> serde::Serialize for $name<$($p),+> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }
        impl<'de, $($p),+> serde::Deserialize<'de> for $name<$($p),+> {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                <Proxy<_> as serde::Deserialize>::deserialize(d).map($name)
            }
        }
        impl<$($p),+> std::fmt::Debug for $name<$($p),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "<{} object #{}>", stringify!($name), self.0.id)
            }
        }
    };
}

// After `proxy_traits!`, which they use.
mod dict;
mod list;
mod value;
