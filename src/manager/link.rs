//! A client's way to a manager: where the server is ([`Route`]), and one connection to it
//! shared by every proxy that holds the same [`Link`], made on first use and made again
//! after it is lost.
//!
//! # One connection, many calls
//! A connection carries many requests at once: a proxy's call sends its request through
//! the connection's writer task and waits for the reply that names it, which the reader
//! task hands over. So a `get` waiting on an empty queue holds up neither the `put` of
//! another task nor the `release` of a lock. A call dropped before its reply withdraws its
//! request (the server stops its wait); the connection stays usable, as no call ever
//! writes to the socket itself. What a withdrawn `get` or `acquire` was granted all the same
//! is given back ([`Undo`]): by the server, if the cancel reaches it before the reply goes
//! out; by this side, for a reply already on its way, until the server's `Withdrawn` says
//! none can follow.
//!
//! # Liveness
//! The server writes a heartbeat on an idle connection every [`HEARTBEAT`], and so does the
//! client; a side that hears nothing for [`HEARTBEAT_MISSES`] intervals takes the
//! connection for lost. Every call waiting on a lost connection, for whatever reason (the
//! server died, the network went, the connection broke), fails with [`Error::Closed`].

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::proto::{HEARTBEAT, HEARTBEAT_MISSES, Reply, Request, Undo};
use crate::awake::{self, Recent};
use crate::error::{Error, Result};
use crate::listener::Address;
use crate::sys;
use crate::wire::{FrameBuf, Framed, Transport};

/// Where the server is.
pub enum Route {
    /// A local manager's registration socket: a connection is a socket pair whose other end
    /// is sent to the server through it.
    Registration(OwnedFd),
    /// A manager with an address, and the key its clients must prove they hold.
    Address {
        address: Address,
        authkey: Option<Arc<[u8]>>,
    },
}

/// A way to a manager, shared by the proxies made from one manager handle or received in
/// one value.
pub struct Link {
    pub(super) route: Route,
    conn: Mutex<Option<Arc<Conn>>>,
    /// Taken while a connection is being made, so that one is made at a time.
    connecting: tokio::sync::Mutex<()>,
    held: Mutex<Held>,
}

/// The proxies alive on a link, which the server counts as references of its connection.
#[derive(Default)]
struct Held {
    /// Live proxies, by object id.
    counts: HashMap<u64, usize>,
    /// Objects received from another process whose loan the first reference settles.
    borrowed: HashSet<u64>,
    /// Loans made before this link had a connection, told to the server once it has one.
    lends: Vec<u64>,
}

/// The calls of a connection still to be answered, under one lock.
#[derive(Default)]
struct Pending {
    /// Calls waiting for their reply, with what to give back if the reply finds its
    /// caller gone.
    waiting: HashMap<u64, (oneshot::Sender<Result<Reply>>, Option<Undo>)>,
    /// Calls withdrawn that may still be carried out, until the server's `Withdrawn`: a
    /// reply that comes meanwhile is undone.
    withdrawn: HashMap<u64, Undo>,
}

type Waiting = Mutex<Pending>;

/// What the reader task shares with the callers: the calls waiting for replies.
struct Calls {
    waiting: Waiting,
    lost: AtomicBool,
}

impl Calls {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection: requests go to its writer task; replies come from its reader task.
struct Conn {
    out: mpsc::UnboundedSender<FrameBuf>,
    calls: Arc<Calls>,
    next: AtomicU64,
    /// When a call last had its reply: whether the next call's caller may wait awake.
    recent: Recent,
}

impl Link {
    pub(super) fn new(route: Route) -> Arc<Link> {
        Arc::new(Link {
            route,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            held: Mutex::default(),
        })
    }

    /// Whether `other` leads to the same server: the same link, or the same address.
    pub(super) fn same_server(&self, other: &Link) -> bool {
        std::ptr::eq(self, other)
            || matches!(
                (&self.route, &other.route),
                (Route::Address { address: a, .. }, Route::Address { address: b, .. }) if a == b
            )
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_conn(&self) -> Option<Arc<Conn>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.as_ref()
            .filter(|c| !c.calls.lost.load(Ordering::Acquire))
            .cloned()
    }

    /// A proxy to `id` now lives on this link (`borrowed`: received from another process).
    /// The first one is a reference of the connection, told to the server now or when the
    /// connection is made.
    pub(super) fn hold(&self, id: u64, borrowed: bool) {
        let mut held = self.held();
        if borrowed {
            held.borrowed.insert(id);
        }
        let n = held.counts.entry(id).or_default();
        *n += 1;
        if *n == 1 {
            if let Some(conn) = self.live_conn() {
                let borrowed = held.borrowed.remove(&id);
                conn.post(Request::Incref { id, borrowed });
            }
        }
    }

    /// A proxy to `id` on this link is gone; with the last one, the connection's reference.
    pub(super) fn release(&self, id: u64) {
        let mut held = self.held();
        let Some(n) = held.counts.get_mut(&id) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            held.counts.remove(&id);
            held.borrowed.remove(&id);
            if let Some(conn) = self.live_conn() {
                conn.post(Request::Decref(id));
            }
        }
    }

    /// A proxy to `id` is on its way to another process (it is being encoded): the server
    /// keeps the object until that process holds it.
    pub(super) fn lend(&self, id: u64) {
        let mut held = self.held();
        match self.live_conn() {
            Some(conn) => conn.post(Request::Lend(id)),
            None => held.lends.push(id),
        }
    }

    /// Puts a new connection in place and tells the server what this link holds.
    fn install(&self, conn: Arc<Conn>) {
        let mut held = self.held();
        let ids: Vec<u64> = held.counts.keys().copied().collect();
        for id in ids {
            let borrowed = held.borrowed.remove(&id);
            conn.post(Request::Incref { id, borrowed });
        }
        for id in std::mem::take(&mut held.lends) {
            conn.post(Request::Lend(id));
        }
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }

    /// Sends `req` and waits for its reply; a failure the server reports is its error.
    ///
    /// # Cancel safety
    /// Dropping the call withdraws the request (see the module notes).
    pub(super) async fn call(&self, req: Request) -> Result<Reply> {
        let conn = self.conn().await?;
        match conn.call(&req).await? {
            Reply::Failed(f) => Err(f.into()),
            r => Ok(r),
        }
    }

    /// Makes the connection now, so that its errors (nothing listens, a wrong key) are the
    /// caller's.
    pub(super) async fn open(&self) -> Result<()> {
        let _turn = self.connecting.lock().await;
        let link = self.connect().await?;
        self.install(Arc::new(Conn::start(link)?));
        Ok(())
    }

    /// The connection, made now if there is none or it was lost. A connection made again
    /// after a loss holds this link's references again (the server let them go with the
    /// lost one).
    async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        let link = self.connect().await.map_err(|e| match e {
            Error::Io(io) if is_gone(&io) => Error::Closed,
            e => e,
        })?;
        let conn = Arc::new(Conn::start(link)?);
        self.install(conn.clone());
        Ok(conn)
    }

    /// Makes a connection: a socket pair through the registration socket, or a connection
    /// to the address followed by the authentication exchange.
    async fn connect(&self) -> Result<Framed> {
        match &self.route {
            Route::Registration(reg) => {
                let (mine, theirs) = sys::socketpair_stream()?;
                match sys::send_with_fds(reg.as_fd(), &[1], &[theirs.as_raw_fd()]) {
                    Ok(_) => {}
                    Err(e) if is_gone(&e) => return Err(Error::Closed),
                    Err(e) => return Err(e.into()),
                }
                Framed::unix(mine)
            }
            Route::Address { address, authkey } => {
                let limit = crate::AUTH_TIMEOUT;
                let (fd, transport): (OwnedFd, _) = match address {
                    Address::Unix(path) => {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        (s.into_std()?.into(), Transport::Unix)
                    }
                    Address::Tcp(addr) => {
                        let s = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
                            .await
                            .map_err(|_| Error::Timeout)??;
                        s.set_nodelay(true)?;
                        (s.into_std()?.into(), Transport::Tcp)
                    }
                };
                let link = Framed::new(fd, transport)?;
                if let Some(key) = authkey {
                    crate::listener::authenticate_within(&link, key, false, limit).await?;
                }
                Ok(link)
            }
        }
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionRefused, ConnectionReset, NotFound};
    matches!(
        e.kind(),
        BrokenPipe | ConnectionRefused | ConnectionReset | NotFound
    )
}

impl Conn {
    fn start(link: Framed) -> Result<Conn> {
        let link = Arc::new(link);
        let calls = Arc::new(Calls {
            waiting: Mutex::default(),
            lost: AtomicBool::new(false),
        });
        let (out, rx) = mpsc::unbounded_channel();
        let hello = Request::Hello {
            pid: std::process::id(),
        };
        let _ = out.send(FrameBuf::of(&(0u64, hello))?);
        tokio::spawn(write_requests(link.clone(), rx));
        tokio::spawn(read_replies(link, calls.clone(), out.downgrade()));
        Ok(Conn {
            out,
            calls,
            next: AtomicU64::new(1),
            recent: Recent::default(),
        })
    }

    /// Sends a request that has no reply, if the connection is still there.
    fn post(&self, req: Request) {
        if let Ok(f) = FrameBuf::of(&(0u64, req)) {
            let _ = self.out.send(f);
        }
    }

    async fn call(self: &Arc<Conn>, req: &Request) -> Result<Reply> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let frame = FrameBuf::of(&(id, req))?;
        let (tx, rx) = oneshot::channel();
        let undo = Undo::of(req);
        self.calls.waiting().waiting.insert(id, (tx, undo));
        // Registered before the lost flag is read: the reader drains what it finds after
        // setting the flag, so a call is failed by it or sees the flag here.
        if self.calls.lost.load(Ordering::Acquire) || self.out.send(frame).is_err() {
            self.calls.waiting().waiting.remove(&id);
            return Err(Error::Closed);
        }
        let mut withdraw = Withdraw {
            conn: self,
            id,
            rx,
            undo,
            answered: false,
        };
        // The caller waits awake for a reply due shortly: the reader hands it over without
        // a wake-up across threads.
        let look = || {
            Ok(match withdraw.rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Closed)),
            })
        };
        let r = match awake::spin_first(&self.recent, look).await? {
            Some(r) => r,
            None => {
                let r = (&mut withdraw.rx).await.unwrap_or(Err(Error::Closed));
                self.recent.mark();
                r
            }
        };
        withdraw.answered = true;
        r
    }
}

/// Withdraws a call whose caller gave up before its reply, and gives back what a reply
/// that reached it meanwhile granted.
struct Withdraw<'a> {
    conn: &'a Arc<Conn>,
    id: u64,
    rx: oneshot::Receiver<Result<Reply>>,
    undo: Option<Undo>,
    answered: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut pending = self.conn.calls.waiting();
        if let Some((_, undo)) = pending.waiting.remove(&self.id) {
            if let Some(undo) = undo {
                pending.withdrawn.insert(self.id, undo);
            }
            drop(pending);
            if let Ok(f) = FrameBuf::of(&(0u64, Request::Cancel(self.id))) {
                let _ = self.conn.out.send(f);
            }
            return;
        }
        drop(pending);
        // The reader has taken the call's reply. Closed now, the receiver either holds it
        // (undone here) or refuses it (undone by the reader).
        self.rx.close();
        if let Ok(Ok(reply)) = self.rx.try_recv() {
            if let Some(req) = self.undo.and_then(|u| u.request(reply)) {
                self.conn.post(req);
            }
        }
    }
}

/// Writes requests in order, those ready together in one batch, and a ping when idle for
/// [`HEARTBEAT`]. When every handle of the connection is gone, shuts the socket's writing
/// side: the server then ends the connection, and the reader sees the end.
async fn write_requests(link: Arc<Framed>, mut rx: mpsc::UnboundedReceiver<FrameBuf>) {
    let mut batch = Vec::new();
    loop {
        let first = match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                let _ = sys::shutdown_socket(link.as_fd(), false, true);
                return;
            }
            Err(_) => match FrameBuf::of(&(0u64, Request::Ping)) {
                Ok(f) => f,
                Err(_) => continue,
            },
        };
        batch.clear();
        batch.push(first);
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        if link.send_batch(&mut batch).await.is_err() {
            let _ = sys::shutdown_socket(link.as_fd(), true, true);
            return;
        }
    }
}

/// Hands each reply to its call; when the connection ends or stays silent too long, fails
/// every call still waiting with [`Error::Closed`].
async fn read_replies(
    link: Arc<Framed>,
    calls: Arc<Calls>,
    out: mpsc::WeakUnboundedSender<FrameBuf>,
) {
    // Gives back what a reply granted to a caller that is gone.
    let undo = |undo: Option<Undo>, reply: Reply| {
        let (Some(req), Some(out)) = (undo.and_then(|u| u.request(reply)), out.upgrade()) else {
            return;
        };
        if let Ok(f) = FrameBuf::of(&(0u64, req)) {
            let _ = out.send(f);
        }
    };
    let silence = HEARTBEAT * HEARTBEAT_MISSES;
    loop {
        let frame = match tokio::time::timeout(silence, link.recv()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!("manager connection ended: {e}");
                break;
            }
            Err(_) => {
                tracing::debug!("the manager was silent for {silence:?}: connection lost");
                break;
            }
        };
        match frame.decode::<(u64, Reply)>() {
            Ok((0, Reply::Failed(f))) => tracing::debug!("the manager refused a frame: {f:?}"),
            Ok((0, _)) => {}
            Ok((id, Reply::Withdrawn)) => {
                calls.waiting().withdrawn.remove(&id);
            }
            Ok((id, reply)) => {
                let mut pending = calls.waiting();
                if let Some((tx, u)) = pending.waiting.remove(&id) {
                    drop(pending);
                    if let Err(Ok(reply)) = tx.send(Ok(reply)) {
                        undo(u, reply);
                    }
                } else if let Some(&u) = pending.withdrawn.get(&id) {
                    drop(pending);
                    undo(Some(u), reply);
                }
            }
            Err(e) => {
                tracing::debug!("a manager reply could not be decoded: {e}");
                break;
            }
        }
    }
    calls.lost.store(true, Ordering::Release);
    let _ = sys::shutdown_socket(link.as_fd(), true, true);
    let mut pending = calls.waiting();
    pending.withdrawn.clear();
    for (_, (tx, _)) in pending.waiting.drain() {
        let _ = tx.send(Err(Error::Closed));
    }
}
