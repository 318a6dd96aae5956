//! Managers reached by address: [`ManagerBuilder`] (Python's `BaseManager(address,
//! authkey)` with `start()` or `get_server().serve_forever()`) and [`Manager::connect`]
//! (Python's `BaseManager(...).connect()`).
//!
//! Every connection to an address starts with the authentication exchange of
//! [`Listener`](crate::Listener) (HMAC-SHA256 challenge both ways, as CPython 3.12+): a
//! client with the wrong key is refused before it can send a request, and a client that
//! stays silent is dropped after the builder's
//! [`handshake_timeout`](ManagerBuilder::handshake_timeout). Requests carry data only, so
//! a client need not run the same binary as the server; what must agree is checked per
//! object when it is fetched by name ([`Manager::get`]).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use super::ledger::Ledger;
use super::link::{Link, Route};
use super::managed::{Maker, Managed, maker};
use super::server::{self, Door, Shared};
use super::{Manager, Server};
use crate::address::{Address, SocketFile, ToAddress};
use crate::error::{Error, Result};
use crate::process::Process;
use crate::start::StartMethod;
use crate::sys;
use crate::task::{InitializerEntry, InitializerOutput, Target};
use crate::wire::{Encoded, Fd};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Builds a [`Manager`]: where it listens, the key its clients must hold, and whether it is
/// served by a process of its own ([`start`](Self::start)) or by this one
/// ([`serve`](Self::serve)).
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{Manager, QueueProxy};
///
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// // The server (Python's `QueueManager(address=('', 50000), authkey=b'abracadabra')`;
/// // port 0 picks a free port here).
/// let mut m = Manager::builder().address("127.0.0.1:0").authkey("abracadabra").serve().await?;
/// let jobs = m.queue::<String>().await?;
/// m.register("jobs", &jobs).await?;
/// // m.serve_forever().await?;
///
/// // Any client, in any process.
/// let address = m.address().cloned().expect("a served manager has an address");
/// let c = Manager::connect(address, "abracadabra").await?;
/// let remote: QueueProxy<String> = c.get("jobs").await?;
/// remote.put("hello".to_string()).await?;
/// assert_eq!(jobs.get().await?, "hello");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ManagerBuilder {
    /// The server process's initializer: its entry and its encoded arguments.
    init: Option<Result<(InitializerEntry, Arc<Encoded>)>>,
    address: Option<Result<Address>>,
    authkey: Option<Vec<u8>>,
    start_method: Option<StartMethod>,
    handshake_timeout: Duration,
    types: HashMap<String, Maker>,
    /// Whether the server keeps shared memory segments (a `SharedMemoryManager`'s).
    pub(super) segments: bool,
}

impl Default for ManagerBuilder {
    fn default() -> ManagerBuilder {
        ManagerBuilder {
            init: None,
            address: None,
            authkey: None,
            start_method: None,
            handshake_timeout: crate::AUTH_TIMEOUT,
            types: HashMap::new(),
            segments: false,
        }
    }
}

impl ManagerBuilder {
    /// Listens on `address` (TCP port 0 picks a free port: see [`Manager::address`]).
    pub fn address(mut self, address: impl ToAddress) -> ManagerBuilder {
        self.address = Some(address.to_address());
        self
    }

    /// The key every client must prove it holds (required with an address). Given without
    /// an address, the manager listens on a free one, as Python's does: a Unix socket in a
    /// directory of its own that only this user may enter, both removed with the manager;
    /// [`Manager::address`] tells its path.
    pub fn authkey(mut self, key: impl AsRef<[u8]>) -> ManagerBuilder {
        self.authkey = Some(key.as_ref().to_vec());
        self
    }

    /// How the server process is started by [`start`](Self::start).
    pub fn start_method(mut self, method: StartMethod) -> ManagerBuilder {
        self.start_method = Some(method);
        self
    }

    /// How long a client connecting by address has to pass the authentication exchange
    /// before it is dropped; [`AUTH_TIMEOUT`](crate::AUTH_TIMEOUT) by default.
    pub fn handshake_timeout(mut self, timeout: Duration) -> ManagerBuilder {
        self.handshake_timeout = timeout;
        self
    }

    /// A function the server process runs once, before it serves (Python's
    /// `BaseManager.start(initializer, initargs)`): to set up logging, resources or signal
    /// handling there. Like a [`Process`](crate::Process) target, `f` is a `fn` item or a
    /// closure that captures nothing, and `args` a tuple of serde values; it returns what
    /// `main` may return ([`InitializerOutput`]): `()`, or a `Result` whose `Err` counts as a
    /// failure, its `Debug` text carried in [`Error::InitializerFailed`]. A plain `f`
    /// runs as plain code, on a thread outside the server's runtime (so it may block on a
    /// runtime of its own; what it sets for its thread only, rather than for the process,
    /// stays there); an `async fn` runs on the server's runtime. The server
    /// runs it after setting itself to ignore a terminal's Ctrl-C, as Python's does, so it
    /// may change that. [`start`](Self::start) returns once it has returned, and fails if it
    /// failed; [`serve`](Self::serve), which runs no process, refuses it.
    pub fn initializer<F, A, M>(mut self, f: F, args: A) -> ManagerBuilder
    where
        F: Target<A, M>,
        F::Output: InitializerOutput,
        A: Serialize + DeserializeOwned,
    {
        let _ = f;
        self.init =
            Some(crate::task::initializer::<F, A, M>(&args).map(|(entry, a)| (entry, Arc::new(a))));
        self
    }

    /// Lets the server make values of `M` ([`Manager::managed`]), as Python's
    /// `BaseManager.register('Maths', Maths)` does; `M` is known by its type name.
    pub fn register<M: Managed>(mut self) -> ManagerBuilder {
        let make: Maker = maker::<M>;
        self.types
            .insert(std::any::type_name::<M>().to_string(), make);
        self
    }

    /// Binds the address, if any, here, so that an error (address in use) is this call's.
    fn bind(&self) -> Result<Option<(OwnedFd, Address, Option<SocketFile>)>> {
        let address = match (&self.address, &self.authkey) {
            (Some(address), _) => address.clone()?,
            // A key without an address: a free address of the default family, as Python's
            // manager listens on when given none.
            (None, Some(_)) => {
                let dir = crate::address::private_dir()?;
                let path = dir.join("manager");
                let bound = crate::address::bind_unix(&path);
                let file = SocketFile::new(path.clone(), Some(dir));
                let l =
                    bound.map_err(crate::address::naming("bind", &Address::Unix(path.clone())))?;
                return Ok(Some((l.into(), Address::Unix(path), Some(file))));
            }
            (None, None) => return Ok(None),
        };
        if self.authkey.is_none() {
            return Err(Error::InvalidArgument(
                "a manager with an address needs an authentication key".into(),
            ));
        }
        let named = crate::address::naming("bind", &address);
        Ok(Some(match address {
            Address::Tcp(a) => {
                let l = std::net::TcpListener::bind(a).map_err(named)?;
                sys::set_listen_backlog(l.as_fd(), None)?;
                let bound = l.local_addr()?;
                (l.into(), Address::Tcp(bound), None)
            }
            Address::Unix(p) => {
                let l = crate::address::bind_unix(&p).map_err(named)?;
                // An abstract name has no file to remove.
                let file = crate::address::abstract_name(&p)
                    .is_none()
                    .then(|| SocketFile::new(p.clone(), None));
                (l.into(), Address::Unix(p), file)
            }
        }))
    }

    /// Starts the server in a process of its own (Python's `BaseManager.start()`). It
    /// stops when the returned [`Manager`] is shut down or dropped.
    ///
    /// # Errors
    /// An I/O error if the address cannot be bound; [`Error::InvalidArgument`] for an
    /// address without a key or that does not resolve; [`Error::Encode`] if the
    /// initializer's arguments could not be encoded; [`Error::InitializerFailed`] if the
    /// initializer failed, with its panic message or the text of the error it returned;
    /// those of
    /// [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start(self) -> Result<Manager> {
        let init = self.init.clone().transpose()?;
        let types = server::UserTypes::new(
            &self.types,
            init.as_ref().map(|(entry, args)| (*entry, &**args)),
        )?;
        let bound = self.bind()?;
        let (ours, theirs) = sys::socketpair_seqpacket()?;
        let (door, address, socket_file) = match bound {
            Some((fd, address, file)) => (
                Some((Fd::from(fd), self.authkey.clone(), self.handshake_timeout)),
                Some(address),
                file,
            ),
            None => (None, None, None),
        };
        let ledger = self.segments.then(Ledger::new).transpose()?;
        let segments = ledger.as_ref().map(Ledger::for_server).transpose()?;
        let args = (Fd::from(theirs), door, types, segments);
        let server = Process::new(server::serve_process, args)
            .name("Manager")
            .daemon(true)
            .start_method(self.start_method.unwrap_or_else(crate::get_start_method))
            .start()
            .await;
        // A start that fails drops the socket file with the rest.
        let server = server?;
        let mut manager = Manager {
            server: Server::Process(server),
            link: Link::new(Route::Registration(ours)),
            address,
            _socket_file: socket_file,
            ledger,
        };
        if init.is_some() {
            // The server reads its first request once the initializer has returned.
            if let Err(e) = manager.object_count().await {
                return Err(manager.initializer_failed(e).await);
            }
        }
        Ok(manager)
    }

    /// Serves the manager from this process, as tasks of the current tokio runtime
    /// (Python's `manager.get_server().serve_forever()`, without blocking: await
    /// [`Manager::serve_forever`] for that). It stops when the returned [`Manager`] is shut
    /// down or dropped, or the runtime stops.
    ///
    /// # Errors
    /// As [`start`](Self::start), but for starting a process.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is served until it returns.
    pub async fn serve(self) -> Result<Manager> {
        if self.init.is_some() {
            return Err(Error::InvalidArgument(
                "an initializer runs in a server process of its own: use start(), not serve()"
                    .into(),
            ));
        }
        let bound = self.bind()?;
        let (ours, theirs) = sys::socketpair_seqpacket()?;
        let shared = Shared::new(self.types.clone(), None);
        let (door, address, socket_file) = match bound {
            Some((listener, address, file)) => (
                Some(Door {
                    listener,
                    authkey: self.authkey.clone().map(Arc::from),
                    handshake_timeout: self.handshake_timeout,
                }),
                Some(address),
                file,
            ),
            None => (None, None, None),
        };
        let local = server::serve_registration(theirs, shared.clone());
        let task = tokio::spawn(async move {
            let r = match door {
                None => local.await,
                Some(door) => tokio::select! {
                    r = local => r,
                    r = server::serve_door(door, shared) => r,
                },
            };
            if let Err(e) = r {
                tracing::debug!("the manager's server ended: {e}");
            }
        });
        Ok(Manager {
            server: Server::Task(task),
            link: Link::new(Route::Registration(ours)),
            address,
            _socket_file: socket_file,
            ledger: None,
        })
    }
}

impl Manager {
    /// The error of a start whose server ended before it served (`e`, the error of the
    /// first call): its initializer failed, as the server answered, or it exited before it
    /// could answer (and said why on its stderr, if it could).
    async fn initializer_failed(&mut self, e: Error) -> Error {
        let Server::Process(p) = &mut self.server else {
            return e;
        };
        let pid = p.pid();
        let joined = p.join_timeout(crate::process::DEFAULT_START_TIMEOUT).await;
        if matches!(e, Error::InitializerFailed { .. }) {
            return e;
        }
        match joined {
            Ok(Some(code)) => Error::InitializerFailed {
                pid,
                message: format!(
                    "the manager's server ended ({}) before it served; the initializer's \
                     error is on its stderr",
                    crate::ExitCause::from_exitcode(code)
                ),
            },
            _ => e,
        }
    }

    /// Connects to the manager at `address` with `authkey` (Python's
    /// `BaseManager(address, authkey).connect()`), from any process. The connection is
    /// made and authenticated now; objects are fetched with [`get`](Self::get).
    ///
    /// # Errors
    /// An I/O error if nothing listens there; [`Error::Authentication`] if the keys differ;
    /// [`Error::InvalidArgument`] for an address that does not resolve;
    /// [`Error::Timeout`] if the connection is not made and authenticated within
    /// [`AUTH_TIMEOUT`](crate::AUTH_TIMEOUT) (a server that takes it and never answers, or
    /// out of the network's reach).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection dropped midway is closed.
    pub async fn connect(address: impl ToAddress, authkey: impl AsRef<[u8]>) -> Result<Manager> {
        let address = address.to_address()?;
        let link = Link::new(Route::Address {
            address: address.clone(),
            authkey: Some(Arc::from(authkey.as_ref())),
        });
        link.open().await?;
        Ok(Manager {
            server: Server::Elsewhere,
            link,
            address: Some(address),
            _socket_file: None,
            ledger: None,
        })
    }
}
