//! `Listener` and `Client`: connections between processes that did not start each other,
//! over a Unix socket path or TCP, with Python's authentication exchange.
//!
//! # Authentication
//!
//! With an authentication key, both sides prove they hold it before any message passes, as
//! CPython 3.12+ does (`deliver_challenge` / `answer_challenge` in
//! `multiprocessing/connection.py`):
//!
//! 1. the listener sends `#CHALLENGE#{sha256}` followed by 40 random bytes (from
//!    `getrandom(2)`);
//! 2. the client answers `{sha256}` followed by HMAC-SHA256(key, `{sha256}` + the random
//!    bytes), so the digest name is covered by the MAC and cannot be downgraded;
//! 3. the listener checks it in constant time and answers `#WELCOME#` or `#FAILURE#`;
//! 4. then the same exchange the other way round: the client challenges the listener.
//!
//! Each message is one of the crate's frames (header then raw bytes) of at most 256 bytes; a
//! larger or malformed one fails the exchange at once. A wrong key, garbage, or a peer that
//! stays silent for [`AUTH_TIMEOUT`] fails on each side with
//! [`Error::Authentication`], and the socket is closed. Only MD5-free SHA-256 is spoken (no
//! legacy HMAC-MD5 mode).
//!
//! # Many clients at once
//!
//! The listener runs the exchanges of all the connections it has taken concurrently, and
//! `accept` returns the first connection whose exchange ends. So a client that is slow or
//! silent costs only itself: it fails after [`AUTH_TIMEOUT`] while the clients behind it are
//! accepted as soon as they have answered. At most [`MAX_HANDSHAKES`] exchanges are under
//! way: while that many are, the listener leaves further connections in the kernel's backlog
//! until an exchange ends, or until the oldest whose client has not proved the key has taken
//! a second, which is then closed to make room. An honest client proves it in about a
//! millisecond, so a burst of any size gets through whole, and silent sockets neither lock
//! newcomers out nor pile up descriptors. Each exchange runs as a task of the runtime whose
//! `accept` took its connection, so it goes on between calls to `accept`: a program that
//! serves one connection at a time, as Python's examples do, finds the clients taken
//! meanwhile through their exchange at its next `accept`, rather than failed by its own
//! silence. Connections are taken off the kernel's backlog only in `accept`, though: a
//! client whose connection waits there for longer than [`AUTH_TIMEOUT`] fails.

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Sha256;
use tokio::task::JoinSet;

use crate::address::{Address, ToAddress};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{FrameBuf, Framed, HandshakeGate, Transport, Vouch};

/// How long either side of the authentication exchange waits for the other.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(20);

/// The most connections whose authentication exchange a [`Listener`], a [`Manager`]'s address
/// or a [`Cluster`]'s head runs at once. While this many are under way, connections wait in
/// the kernel's backlog until one ends, or until the oldest whose client has not proved the
/// key has taken a second: that one is closed to make room. So honest clients all get
/// through however many arrive at once, while silent sockets can neither lock newcomers out
/// nor hold more than this many descriptors.
///
/// [`Manager`]: crate::Manager
/// [`Cluster`]: crate::Cluster
pub const MAX_HANDSHAKES: usize = 256;

const MESSAGE_LENGTH: usize = 40;
const MAX_AUTH_MESSAGE: usize = 256;
const CHALLENGE: &[u8] = b"#CHALLENGE#";

/// Whether `body` is a listener's authentication challenge.
pub(crate) fn is_challenge(body: &[u8]) -> bool {
    body.starts_with(CHALLENGE)
}
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const DIGEST: &[u8] = b"{sha256}";

enum Inner {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}

/// Accepts connections (Python's `multiprocessing.connection.Listener`).
///
/// With an authentication key, both sides prove they hold it before any message passes, as
/// CPython 3.12+ does: the listener sends `#CHALLENGE#{sha256}` and 40 random bytes, the
/// client answers `{sha256}` and the HMAC-SHA256 of that whole message under the key, the
/// listener answers `#WELCOME#` or `#FAILURE#`; then the client challenges the listener the
/// same way. A wrong key, garbage, or a peer silent for [`AUTH_TIMEOUT`] fails on both sides
/// with [`Error::Authentication`].
///
/// The exchanges run concurrently (see [`MAX_HANDSHAKES`]): a slow or silent client delays
/// no other, and [`accept`](Self::accept) returns the first connection that is through.
///
/// Dropping it stops listening, closes the connections still in their exchange and removes a
/// Unix socket's file (and, for [`Listener::new`], the directory made for it).
///
/// The listening socket is registered with the reactor of the runtime it was bound in, so
/// `accept` is awaited on that runtime (on another it waits for that one to be driven, and
/// fails once it is gone); the connections it returns serve any runtime, as every
/// [`Connection`] does.
pub struct Listener {
    inner: Inner,
    address: Address,
    authkey: Option<Arc<[u8]>>,
    /// The private directory [`Listener::new`] made for the socket, removed with it.
    own_dir: Option<PathBuf>,
    /// The peer address of the connection `accept` returned last.
    last_accepted: Mutex<Option<Address>>,
    /// The exchanges of the connections taken from the socket and not yet returned by
    /// `accept`, each a task of its own, so that it goes on while no `accept` is awaited;
    /// dropped with the listener, which aborts them.
    handshakes: tokio::sync::Mutex<JoinSet<Option<Result<Accepted>>>>,
    /// Bounds `handshakes` (see [`HandshakeGate`]).
    gate: HandshakeGate,
}

/// A connection through its exchange, and where it came from.
struct Accepted {
    link: Framed,
    peer: Address,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("authenticated", &self.authkey.is_some())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Listens on a free address of the default family, a Unix socket, as Python's
    /// `Listener()` with no address: the socket is `listener` in a directory of its own,
    /// made for it in the system's temporary directory (`$TMPDIR` or `/tmp`) and readable by
    /// this user only; [`address`](Self::address) tells the path, to pass to the
    /// processes that will connect. Dropping the listener removes the socket and the
    /// directory. For a free TCP address (Python's `Listener(family='AF_INET')`), bind
    /// `"127.0.0.1:0"`.
    ///
    /// # Errors
    /// An I/O error if the directory cannot be made or the socket bound.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// async fn client(address: mp::Address) -> mp::Result<()> {
    ///     let conn = mp::Client::connect::<String>(address, Some(b"secret")).await?;
    ///     conn.send(&"hello".to_string()).await
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> mp::Result<()> {
    /// let l = mp::Listener::new(Some(b"secret"))?;
    /// let mut p = mp::Process::new(client, (l.address().clone(),)).start().await?;
    /// let conn: mp::Connection<String> = l.accept().await?;
    /// assert_eq!(conn.recv().await?, "hello");
    /// assert_eq!(p.join().await?, 0);
    /// # Ok(()) }
    /// ```
    pub fn new(authkey: Option<&[u8]>) -> Result<Listener> {
        // Outside a runtime `bind` panics: do so before the directory exists.
        crate::runtime::current();
        let dir = crate::address::private_dir()?;
        match Listener::bind(dir.join("listener"), authkey) {
            Ok(mut l) => {
                l.own_dir = Some(dir);
                Ok(l)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Listens on `address`; with `authkey`, every connection must pass the mutual challenge
    /// (see [`Listener`]) before [`accept`](Self::accept) returns it. A TCP port
    /// of 0 picks a free port: [`address`](Self::address) tells which.
    ///
    /// # Errors
    /// An I/O error if the address cannot be bound (in use, no permission, bad path), whose
    /// message names the address.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// async fn client(address: std::net::SocketAddr) -> mp::Result<()> {
    ///     let conn = mp::Client::connect::<String>(address, Some(b"secret")).await?;
    ///     assert_eq!(conn.recv().await?, "welcome");
    ///     Ok(())
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> mp::Result<()> {
    /// let l = mp::Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// let mp::Address::Tcp(address) = l.address().clone() else { unreachable!() };
    /// let mut p = mp::Process::new(client, (address,)).start().await?;
    /// let conn: mp::Connection<String> = l.accept().await?;
    /// conn.send(&"welcome".to_string()).await?;
    /// assert_eq!(p.join().await?, 0);
    /// # Ok(()) }
    /// ```
    pub fn bind(address: impl ToAddress, authkey: Option<&[u8]>) -> Result<Listener> {
        Listener::bind_as(address, authkey, None)
    }

    /// [`bind`](Self::bind), queueing at most about `backlog` connections that are not
    /// accepted yet (Python's `Listener(address, backlog=backlog)`); the kernel caps it at
    /// `net.core.somaxconn`.
    ///
    /// [`bind`](Self::bind) asks for the kernel's most, `net.core.somaxconn` (where Python's
    /// default is 1), for a Unix socket and TCP alike: a client that connects while the queue is
    /// full waits for room ([`Client::connect`] for up to [`AUTH_TIMEOUT`]; over a Unix socket
    /// another program's non-blocking connect fails at once with `WouldBlock`, and over TCP
    /// the kernel drops or refuses its handshake). The listener takes connections off the
    /// queue only in [`accept`](Self::accept).
    ///
    /// # Errors
    /// As [`bind`](Self::bind), and an I/O error if the backlog cannot be set.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn bind_with_backlog(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
        backlog: u32,
    ) -> Result<Listener> {
        Listener::bind_as(address, authkey, Some(backlog))
    }

    /// [`bind`](Self::bind), with the listen backlog `backlog`, or the kernel's most.
    fn bind_as(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
        backlog: Option<u32>,
    ) -> Result<Listener> {
        let address = address.to_address()?;
        let queued = |fd: BorrowedFd<'_>| sys::set_listen_backlog(fd, backlog);
        let named = crate::address::naming("bind", &address);
        let (inner, address) = match address {
            Address::Unix(path) => {
                // Outside a runtime `from_std` panics: do so before the socket file exists.
                crate::runtime::current();
                let l = crate::address::bind_unix(&path).map_err(named)?;
                let listener = queued(l.as_fd())
                    .and_then(|()| l.set_nonblocking(true))
                    .and_then(|()| tokio::net::UnixListener::from_std(l));
                match listener {
                    Ok(l) => (Inner::Unix(l), Address::Unix(path)),
                    Err(e) => {
                        // No `Listener` will remove the file it bound.
                        let _ = std::fs::remove_file(&path);
                        return Err(e.into());
                    }
                }
            }
            Address::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(named)?;
                queued(l.as_fd())?;
                l.set_nonblocking(true)?;
                let bound = l.local_addr()?;
                (
                    Inner::Tcp(tokio::net::TcpListener::from_std(l)?),
                    Address::Tcp(bound),
                )
            }
        };
        Ok(Listener {
            inner,
            address,
            authkey: authkey.map(Arc::from),
            own_dir: None,
            last_accepted: Mutex::new(None),
            handshakes: tokio::sync::Mutex::new(JoinSet::new()),
            gate: HandshakeGate::new(MAX_HANDSHAKES),
        })
    }

    /// The address listened on (with the port chosen, for TCP port 0).
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Where the connection [`accept`](Self::accept) returned last came from (Python's
    /// `last_accepted`): the client's IP address and port over TCP; over a Unix socket the
    /// client's path, or an empty path for a client that did not bind one (the usual case,
    /// Python's `''`). `None` before the first connection is accepted.
    pub fn last_accepted(&self) -> Option<Address> {
        self.last_accepted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Accepts the next connection and, with an authentication key, runs the challenge both
    /// ways (Python's `accept()`).
    ///
    /// Every connection waiting is taken from the socket and its exchange started; the first
    /// whose exchange ends is returned, so a slow or silent client holds up no other. The
    /// others go on with their exchanges meanwhile (each is a task of this runtime), and wait
    /// in the listener for the next call. With [`MAX_HANDSHAKES`] exchanges
    /// under way, the next connection is taken once one ends, or once the oldest whose client
    /// has not proved the key has taken a second (it is closed). Calls from several tasks take
    /// turns.
    ///
    /// # Errors
    /// [`Error::Authentication`] if the connection whose exchange ended first failed it (a
    /// wrong key, garbage, or silence for [`AUTH_TIMEOUT`]; that connection is closed: call
    /// `accept` again for the next one); an I/O error from the socket (such as "Too many open
    /// files" at the descriptor limit) when no connection held is through its exchange.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, no connection was lost; those
    /// in their exchange stay in the listener for the next `accept`.
    pub async fn accept<T: Serialize + DeserializeOwned>(&self) -> Result<Connection<T>> {
        let mut pending = self.handshakes.lock().await;
        let link = std::future::poll_fn(|cx| {
            loop {
                // Every connection waiting is taken before an ended exchange is returned, so
                // that none that waited is left in the backlog, its client's time running,
                // by an exchange that ended while this task was not running (a thread
                // preempted, a budget spent). A socket that fails to hand one out (no
                // descriptor free, say) fails the call only when no exchange has ended: a
                // server at its descriptor limit gets the connections that are through,
                // which it can serve and close.
                let mut failed = None;
                while self.gate.poll_room(cx).is_ready() {
                    match self.poll_take(cx) {
                        Poll::Ready(Ok((fd, transport, peer))) => {
                            let key = self.authkey.clone();
                            pending.spawn(self.gate.admit(move |vouch| async move {
                                let link = Framed::new(fd, transport)?;
                                if let Some(key) = key {
                                    authenticate_peer(&link, &key, AUTH_TIMEOUT, vouch).await?;
                                }
                                Ok(Accepted { link, peer })
                            }));
                        }
                        Poll::Ready(Err(e)) => {
                            failed = Some(e);
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                match pending.poll_join_next(cx) {
                    Poll::Ready(Some(Ok(Some(done)))) => return Poll::Ready(done),
                    Poll::Ready(Some(Ok(None))) => {
                        tracing::debug!("a listener closed a connection still in its exchange");
                    }
                    Poll::Ready(Some(Err(e))) => {
                        // Its runtime was shut down: the connection went with it.
                        tracing::debug!("a listener's exchange ended: {e}");
                    }
                    // None under way, or none ended: the socket or the gate wakes this task.
                    Poll::Ready(None) | Poll::Pending => {
                        return failed.map_or(Poll::Pending, |e| Poll::Ready(Err(e)));
                    }
                }
            }
        })
        .await?;
        *self.last_accepted.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.peer);
        Ok(Connection::from_framed(link.link, true, true))
    }

    /// Takes a connection from the socket: its descriptor, transport and peer.
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<(OwnedFd, Transport, Address)>> {
        let taken = match &self.inner {
            Inner::Unix(l) => {
                let (s, peer) = match l.poll_accept(cx) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Pending,
                };
                let peer = peer.as_pathname().map(Path::to_path_buf);
                (
                    s.into_std()?.into(),
                    Transport::Unix,
                    Address::Unix(peer.unwrap_or_default()),
                )
            }
            Inner::Tcp(l) => {
                let (s, peer) = match l.poll_accept(cx) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Pending,
                };
                s.set_nodelay(true)?;
                (s.into_std()?.into(), Transport::Tcp, Address::Tcp(peer))
            }
        };
        Poll::Ready(Ok(taken))
    }

    /// Stops listening (the same as dropping it).
    pub fn close(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Address::Unix(path) = &self.address
            && crate::address::abstract_name(path).is_none()
        {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`).
#[derive(Debug)]
pub struct Client;

impl Client {
    /// Connects to `address` and, with `authkey`, answers the listener's challenge and
    /// challenges it in turn.
    ///
    /// # Errors
    /// [`Error::Authentication`] if the keys differ, the listener sends garbage or no
    /// challenge (a listener bound without a key sends none; the error says so), or the
    /// exchange takes longer than [`AUTH_TIMEOUT`] (which counts the time the connection
    /// waits in the listener's backlog: a listener that is in no `accept` for that long, busy
    /// with an earlier client, fails it too; accept in a loop and serve each connection in a
    /// task of its own); an I/O error if nothing listens there, whose message names the
    /// address, or if a Unix socket's backlog stays full for [`AUTH_TIMEOUT`] (the connect
    /// waits for room until then, as Python's does).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: a connection dropped midway is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> mp::Result<()> {
    /// // A listener with the same key, in this process here; in any process, on any
    /// // machine that can reach its address, over TCP.
    /// let listener = mp::Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// let addr = listener.address().clone();
    /// tokio::spawn(async move {
    ///     let conn: mp::Connection<String> = listener.accept().await?;
    ///     conn.send(&"welcome".to_string()).await
    /// });
    ///
    /// let conn = mp::Client::connect::<String>(addr, Some(b"secret")).await?;
    /// assert_eq!(conn.recv().await?, "welcome");
    /// # Ok(()) }
    /// ```
    pub async fn connect<T: Serialize + DeserializeOwned>(
        address: impl ToAddress,
        authkey: Option<&[u8]>,
    ) -> Result<Connection<T>> {
        let link = dial(&address.to_address()?).await?;
        if let Some(key) = authkey {
            authenticate(&link, key).await?;
        }
        Ok(Connection::from_framed(link, true, true))
    }
}

fn auth_err(message: impl Into<String>) -> Error {
    Error::Authentication {
        message: message.into(),
    }
}

/// Runs the client's side of the exchange: it answers the listener's challenge, then
/// challenges it. Messages longer than [`MAX_AUTH_MESSAGE`] are refused as soon as their
/// header is in.
pub(crate) async fn authenticate(s: &Framed, key: &[u8]) -> Result<()> {
    authenticate_within(s, key, AUTH_TIMEOUT).await
}

/// A connection to `address` (TCP with `TCP_NODELAY`), framed; an error names the address
/// and keeps the kind of the system's (refused, not found...). A Unix socket whose
/// listener's backlog is full is waited for (see [`connect_unix`]).
///
/// # Errors
/// An I/O error if the connection cannot be made.
pub(crate) async fn dial(address: &Address) -> Result<Framed> {
    let named = crate::address::naming("connect to", address);
    let (fd, transport): (OwnedFd, _) = match address {
        Address::Unix(path) => {
            let s = connect_unix(path).await.map_err(named)?;
            (s.into_std()?.into(), Transport::Unix)
        }
        Address::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await.map_err(named)?;
            s.set_nodelay(true)?;
            (s.into_std()?.into(), Transport::Tcp)
        }
    };
    Framed::new(fd, transport)
}

/// Connects to the Unix socket at `path`, waiting while its listener's queue of connections
/// not yet accepted (its backlog) is full, for up to [`AUTH_TIMEOUT`], as a blocking connect
/// (Python's `Client`) waits for room: a non-blocking connect fails at once with
/// `WouldBlock` then, and the kernel tells no one when room is made, so the connect is tried
/// again after a pause that grows from 1 ms to 100 ms.
async fn connect_unix(path: &Path) -> io::Result<tokio::net::UnixStream> {
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "the listener's backlog (its connections not yet accepted) stayed \
                             full for {AUTH_TIMEOUT:?}: {e}"
                        ),
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            r => return r,
        }
    }
}

/// [`authenticate`] with a time limit of the caller's (a manager's handshake timeout).
///
/// A peer that asks for no key (a listener bound without one) sends no challenge: its first
/// message, or its silence until `limit`, fails the exchange with an error that says so.
pub(crate) async fn authenticate_within(s: &Framed, key: &[u8], limit: Duration) -> Result<()> {
    const KEYLESS: &str = "(a listener without a key sends none: connect with the key it was \
                           bound with, or with None if it has none)";
    let challenged = AtomicBool::new(false);
    let run = async {
        let challenge = read_message(s).await?;
        if !is_challenge(&challenge) {
            return Err(auth_err(format!(
                "the peer's first message is not an authentication challenge {KEYLESS}"
            )));
        }
        challenged.store(true, Ordering::Relaxed);
        answer(s, key, &challenge).await?;
        deliver_challenge(s, key).await
    };
    bounded(s, limit, run, || match challenged.load(Ordering::Relaxed) {
        true => silent(limit),
        false => format!("the peer sent no authentication challenge within {limit:?} {KEYLESS}"),
    })
    .await
}

/// Runs the listener's side of the exchange, within `limit`: it challenges the peer, then
/// answers the peer's challenge. Once the peer has proved it holds the key, `vouch` tells
/// the server's [`HandshakeGate`], which then never closes the connection for a newer one.
pub(crate) async fn authenticate_peer(
    s: &Framed,
    key: &[u8],
    limit: Duration,
    vouch: Vouch,
) -> Result<()> {
    let run = async {
        deliver_challenge(s, key).await?;
        vouch.key_proven();
        answer_challenge(s, key).await
    };
    bounded(s, limit, run, || silent(limit)).await
}

/// One half of the exchange on its own, within [`AUTH_TIMEOUT`]: the challenge delivered
/// (Python's `deliver_challenge`) or answered (`answer_challenge`).
pub(crate) async fn challenge(s: &Framed, key: &[u8], deliver: bool) -> Result<()> {
    let run = async {
        match deliver {
            true => deliver_challenge(s, key).await,
            false => answer_challenge(s, key).await,
        }
    };
    bounded(s, AUTH_TIMEOUT, run, || silent(AUTH_TIMEOUT)).await
}

/// Runs `exchange` on `s` with messages of at most [`MAX_AUTH_MESSAGE`] bytes, failing it
/// after `limit` with the message `late` makes.
async fn bounded(
    s: &Framed,
    limit: Duration,
    exchange: impl Future<Output = Result<()>>,
    late: impl FnOnce() -> String,
) -> Result<()> {
    s.set_recv_limit(Some(MAX_AUTH_MESSAGE));
    let outcome = match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err(auth_err(late())),
    };
    s.set_recv_limit(None);
    outcome
}

fn mac(key: &[u8], message: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    m.update(message);
    m
}

async fn deliver_challenge(s: &Framed, key: &[u8]) -> Result<()> {
    let mut random = [0u8; MESSAGE_LENGTH];
    sys::fill_random(&mut random)?;
    let mut message = DIGEST.to_vec();
    message.extend_from_slice(&random);
    let mut challenge = CHALLENGE.to_vec();
    challenge.extend_from_slice(&message);
    write_message(s, &challenge).await?;
    let response = read_message(s).await?;
    let verdict = response
        .strip_prefix(DIGEST)
        .ok_or_else(|| auth_err("the answer does not name the sha256 digest"))
        .and_then(|tag| {
            mac(key, &message)
                .verify_slice(tag)
                .map_err(|_| auth_err("the peer's digest was wrong: its authkey is not ours"))
        });
    match verdict {
        Ok(()) => write_message(s, WELCOME).await,
        Err(e) => {
            let _ = write_message(s, FAILURE).await;
            Err(e)
        }
    }
}

/// What an exchange that ran out of time fails with.
fn silent(limit: Duration) -> String {
    format!("the peer did not complete the exchange within {limit:?}")
}

async fn answer_challenge(s: &Framed, key: &[u8]) -> Result<()> {
    let message = read_message(s).await?;
    answer(s, key, &message).await
}

/// Answers the challenge `message`, and waits for the peer's verdict.
async fn answer(s: &Framed, key: &[u8], message: &[u8]) -> Result<()> {
    let message = message
        .strip_prefix(CHALLENGE)
        .ok_or_else(|| auth_err("protocol error: expected a challenge"))?;
    if !message.starts_with(DIGEST) || message.len() < DIGEST.len() + 20 {
        return Err(auth_err(
            "the challenge is too short or does not ask for sha256",
        ));
    }
    let mut answer = DIGEST.to_vec();
    answer.extend_from_slice(&mac(key, message).finalize().into_bytes());
    write_message(s, &answer).await?;
    if read_message(s).await? != WELCOME {
        return Err(auth_err(
            "the peer rejected our digest: its authkey is not ours",
        ));
    }
    Ok(())
}

async fn write_message(s: &Framed, body: &[u8]) -> Result<()> {
    s.send(&mut FrameBuf::raw(body))
        .await
        .map_err(closed_is_auth)
}

/// Reads one exchange message: a frame of raw bytes, no descriptors, at most
/// [`MAX_AUTH_MESSAGE`] bytes (the socket's receive limit during the exchange). Reads stop
/// at its end: what follows the exchange is the connection's.
async fn read_message(s: &Framed) -> Result<Vec<u8>> {
    let frame = match s.recv_one().await {
        Ok(f) => f,
        Err(Error::FrameTooLarge { size, .. }) => {
            return Err(auth_err(format!(
                "protocol error: a {size}-byte message where a short challenge message was \
                 expected{}",
                foreign_speech(size)
            )));
        }
        Err(e) => return Err(closed_is_auth(e)),
    };
    if !frame.fds.is_empty() {
        return Err(auth_err(format!(
            "protocol error: a message with {} descriptors where a short challenge message \
             was expected",
            frame.fds.len()
        )));
    }
    Ok(frame.into_body())
}

/// What a message's length says of its sender when its four bytes read as text: a peer
/// that speaks another protocol (an HTTP server answers "HTTP/1.1 ...", an SSH server
/// "SSH-2.0-..."), whose first bytes were read as a length.
fn foreign_speech(size: u64) -> String {
    let Ok(size) = u32::try_from(size) else {
        return String::new();
    };
    let bytes = size.to_be_bytes();
    match bytes.iter().all(|b| b.is_ascii_graphic()) {
        true => format!(
            " (the peer's first bytes are {:?}: it speaks another protocol, it is no manager \
             or listener of this crate)",
            String::from_utf8_lossy(&bytes)
        ),
        false => String::new(),
    }
}

/// An end of stream or a broken connection during the exchange is an authentication
/// failure; so is a malformed frame.
fn closed_is_auth(e: Error) -> Error {
    match e {
        Error::Closed | Error::Protocol(_) => {
            auth_err("the peer closed the connection during the exchange")
        }
        Error::Io(io)
            if matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            auth_err("the peer closed the connection during the exchange")
        }
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let tag = mac(b"Jefe", b"what do ya want for nothing?").finalize();
        let hex: String = tag
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
