//! A client's way to a manager: where the server is ([`Route`]), and a connection to it
//! shared by every proxy that holds the same [`Link`], made on first use and made again
//! after it is lost.
//!
//! # One connection per runtime
//! A connection's reader and writer tasks run on the runtime that made it, so a call is
//! made on a connection of the runtime that awaits it, made for it on its first call there:
//! a runtime that sits idle (its thread blocked, or a current-thread runtime no one drives)
//! holds up no call of another, and a runtime dropped takes only its own connection with it
//! (the calls it was running went with it). Each connection holds the link's references,
//! so an object outlives the runtimes that used it; the connection of a dropped runtime is
//! closed once the next one made holds them (see [`Link::conn`]). The server sees one
//! client per connection: a lock's owner, say, is the connection that took it.
//!
//! # One connection, many calls
//! A connection carries many requests at once: a proxy's call sends its request and waits
//! for the reply that names it. So a `get` waiting on an empty queue holds up neither the
//! `put` of another task nor the `release` of a lock.
//!
//! A call alone on its connection writes its request from its own thread, over a Unix
//! socket or TCP, when nothing queued before it is still to be written (a part the socket
//! does not take at once is finished by a task, see [`Outbox`]), and, waiting
//! awake for its reply (see [`awake`](crate::awake)), takes it off the socket itself. Frames
//! are taken under one lock, by that caller or by the reader task, so that they are
//! handed over in the order they came. On a multi-thread runtime such a call wakes no other
//! thread on its way out or back. Calls in a crowd leave both to the connection's writer
//! and reader tasks, which batch them.
//!
//! A call dropped before its reply withdraws its request (the server stops its wait); the
//! connection stays usable, as a call writes only whole frames, in one step that cannot be
//! cancelled midway. What a withdrawn `get` or `acquire` was granted all the same
//! is given back ([`Undo`]): by the server, if the cancel reaches it before the reply goes
//! out; by this side, for a reply already on its way, until the server's `Withdrawn` says
//! none can follow. The calls made on the connection meanwhile wait for that `Withdrawn`
//! (one round trip), so that the server sees the give-back before them: a `get` after a
//! withdrawn one takes the item given back, not the one after it. A lock is given back by
//! the hold its grant names: a hold that has ended meanwhile (a plain lock, which anyone
//! may release, released by another client and taken by a third) is left alone.
//!
//! # Liveness
//! The server writes a heartbeat on an idle connection every [`HEARTBEAT`], and so does the
//! client; a side that hears nothing for [`HEARTBEAT_MISSES`] intervals takes the
//! connection for lost. Every call waiting on a lost connection fails with
//! [`Error::ManagerLost`], which names the server (its address and pid, as far as they are
//! known: the server tells its pid when a connection begins) and what ended the connection
//! (the server closed it, it broke, the server fell silent), or with [`Error::Protocol`]
//! saying what the server sent that could not be read.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::proto::{Failure, HEARTBEAT, HEARTBEAT_MISSES, PeerMax, QueueOp, Reply, Request, Undo};
use super::queue::{self, Ring};
use crate::address::Address;
use crate::awake::{self, Recent};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{FrameBuf, Framed, Outbox, written};

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

/// Who a link's server is, as [`Error::ManagerLost`] names it.
struct ServerName {
    address: Option<String>,
    /// Its pid, as the last connection that heard it was told (0: none was).
    pid: AtomicU32,
}

impl ServerName {
    fn of(route: &Route) -> ServerName {
        let address = match route {
            Route::Registration(_) => None,
            Route::Address { address, .. } => Some(address.to_string()),
        };
        ServerName {
            address,
            pid: AtomicU32::new(0),
        }
    }

    /// The error of a call that the server is gone for, for `cause`.
    fn lost(&self, cause: impl Into<String>) -> Error {
        Error::ManagerLost {
            address: self.address.clone(),
            pid: match self.pid.load(Ordering::Relaxed) {
                0 => None,
                pid => Some(pid),
            },
            cause: cause.into(),
        }
    }
}

/// A way to a manager, shared by the proxies made from one manager handle or received in
/// one value.
pub struct Link {
    pub(super) route: Route,
    /// Who the server is, shared with each connection.
    server: Arc<ServerName>,
    /// The connections made, at most one per runtime.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Taken while a connection is being made, so that one is made at a time on a runtime:
    /// by runtime, so that a runtime that sits idle midway holds up no other's.
    connecting: Mutex<Vec<(Option<tokio::runtime::Id>, Turn)>>,
    /// The attempts to connect that failed, and the last one's error: the calls that waited
    /// for an attempt take its failure rather than make one each in turn.
    failed: Mutex<(u64, Option<Error>)>,
    held: Mutex<Held>,
    /// The rings of queues this process reaches directly, by object id, while a proxy to
    /// them lives here (see `queue.rs`).
    rings: Mutex<HashMap<u64, Attached>>,
    /// Whether a lock was asked for through it since its last proxy before: if it is kept
    /// open past its last proxy, the server lets go of its locks then (see
    /// [`is_kept_open`]).
    took_a_lock: AtomicBool,
}

/// A runtime's turn to make a connection (see [`Link::conn`]).
type Turn = Arc<tokio::sync::Mutex<()>>;

/// How this process reaches a queue.
#[derive(Clone)]
enum Attached {
    Ring(Ring),
    /// Through the server, which could not hand out the ring when asked (it held an item
    /// too large to move into one, say); asked again after this time.
    Server(std::time::Instant),
}

/// The largest request a connection sends before it has heard the server's limit (see
/// [`Reply::Server`]); a larger one waits for it, so that the first requests of a new
/// connection are measured too, at no cost to small ones (only a server whose limit is
/// below this size could meet one over it).
const UNHEARD_MAX: usize = 64 << 10;

/// How long a queue whose ring was refused is reached through the server before the ring
/// is asked for again.
const ASK_AGAIN: std::time::Duration = std::time::Duration::from_millis(10);

/// The proxies alive on a link, which the server counts as references of its connection.
#[derive(Default)]
struct Held {
    /// Live proxies, by object id.
    counts: HashMap<u64, usize>,
    /// Objects received from another process, with how many of their loans (one per proxy
    /// received) wait for a connection to settle them.
    borrowed: HashMap<u64, u32>,
    /// Loans made before this link had a connection, told to the server once it has one.
    lends: Vec<u64>,
    /// Objects this link held when a connection of its was lost: the server let go of
    /// them with it, and may have freed them (see [`Link::call`]).
    across_loss: HashSet<u64>,
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
    server: Arc<ServerName>,
    waiting: Waiting,
    lost: AtomicBool,
    /// Whether the connection was lost with its runtime, dropped with the reader task: its
    /// socket is still open, and the server holds its references until it is closed.
    orphaned: AtomicBool,
    /// Wakes those waiting for the connection's loss (see [`Link::until_lost`]).
    lost_signal: tokio::sync::Notify,
    /// The largest frame the server reads, once its [`Reply::Server`] said.
    server_max: PeerMax,
    /// Wakes those waiting for the server's limit (see [`Calls::hear_server`]).
    heard: tokio::sync::Notify,
    /// Wakes the calls waiting for the withdrawn calls to be settled (see [`Conn::call`]).
    settled: tokio::sync::Notify,
    /// What ended the connection, and whether it was something the server sent that could
    /// not be read.
    ended: Mutex<Option<(String, bool)>>,
}

impl Calls {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes why the connection ends (the first reason told is kept): `unreadable`, for
    /// something the server sent that could not be read.
    fn ends(&self, why: &str, unreadable: bool) {
        let mut e = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        e.get_or_insert_with(|| (why.to_owned(), unreadable));
    }

    /// Returns once the server has said how large a frame it reads, or the connection is
    /// lost.
    async fn hear_server(&self) {
        let heard = self.heard.notified();
        let lost = self.lost_signal.notified();
        tokio::pin!(heard, lost);
        heard.as_mut().enable();
        lost.as_mut().enable();
        if self.server_max.said() || self.lost.load(Ordering::Acquire) {
            return;
        }
        tokio::select! {
            () = heard => {}
            () = lost => {}
        }
    }

    /// The error of a call on the ended connection: [`Error::Protocol`] saying what could
    /// not be read, if that ended it; else [`Error::ManagerLost`] saying what did.
    fn ended(&self) -> Error {
        match &*self.ended.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((why, true)) => Error::Protocol(why.clone()),
            Some((why, false)) => self.server.lost(why.as_str()),
            None => self.server.lost("the connection to it was lost"),
        }
    }
}

/// One connection: requests go to its writer task; replies come off the socket through
/// [`Replies`], taken by the reader task or by a caller waiting awake.
struct Conn {
    /// The runtime its tasks run on.
    runtime: tokio::runtime::Id,
    out: Arc<Outbox>,
    calls: Arc<Calls>,
    replies: Arc<Replies>,
    next: AtomicU64,
    /// When a call last had its reply: whether the next call's caller may wait awake.
    recent: Recent,
    /// The maximum frame size the server was last told (see [`Request::Hello`]).
    announced: AtomicUsize,
}

/// Who a server is, for proxies received by this process to share one link to it: its
/// registration socket (by the socket's identity: every copy of it, received in any number
/// of values, is the same socket), or its address and key.
#[derive(PartialEq, Eq)]
enum ServerKey {
    Socket(sys::FileId),
    Address(Address, Option<Arc<[u8]>>),
}

impl ServerKey {
    fn of(route: &Route) -> Option<ServerKey> {
        match route {
            Route::Registration(fd) => sys::file_id(fd.as_fd()).ok().map(ServerKey::Socket),
            Route::Address { address, authkey } => {
                Some(ServerKey::Address(address.clone(), authkey.clone()))
            }
        }
    }
}

/// The links of proxies received by this process, by server, while a proxy holds them.
/// Proxies to one server, received in one value or in many, share its connection (one per
/// runtime), as CPython's proxies share their thread's connection to a manager. Without
/// it each received proxy made a connection of its own, two descriptors, so that a child
/// given a few hundred proxies reached its limit of open descriptors.
static SHARED: Mutex<Vec<SharedLink>> = Mutex::new(Vec::new());

/// Whether this process keeps the links of the proxies it receives open once no proxy
/// holds them (see [`keep_links_open`]).
static KEEP_OPEN: AtomicBool = AtomicBool::new(false);

/// The links kept open in a process that [`keep_links_open`], with the pid of the process
/// that kept each, the most recently used last.
static KEPT_OPEN: Mutex<Vec<(u32, Arc<Link>)>> = Mutex::new(Vec::new());

/// The most links [`KEPT_OPEN`] holds: those to the servers the process used last.
const MOST_KEPT_OPEN: usize = 8;

/// From now on, the links of the proxies this process receives stay open once no proxy
/// holds them, up to [`MOST_KEPT_OPEN`] of them, for the process's life or until their
/// connection is lost: a pool worker's next task given a proxy to the same server reuses
/// the connection, as a CPython worker thread keeps its connection to a manager, rather
/// than making one (and proving the key again) per task. With the last proxy of a link
/// through which a lock was taken, the server is told to let go of the locks the
/// connection holds, as it does when a connection closes (see [`is_kept_open`]).
pub(crate) fn keep_links_open() {
    KEEP_OPEN.store(true, Ordering::Relaxed);
}

/// Keeps `link` open (see [`keep_links_open`]), as the one used last. The proxies of one
/// value mostly lead to one server: for each after the first, the link is the last kept
/// already, and nothing is asked of the others' sockets.
fn keep_open(link: &Arc<Link>, me: u32) {
    let mut kept = KEPT_OPEN.lock().unwrap_or_else(|p| p.into_inner());
    if kept
        .last()
        .is_some_and(|(pid, l)| *pid == me && Arc::ptr_eq(l, link))
    {
        return;
    }
    if kept.first().is_some_and(|(pid, _)| *pid != me) {
        // A `fork` child's copies lead to its parent's connections, whose ways were closed
        // in it and whose tasks run in no runtime of its own: forgotten, not dropped.
        for (_, copy) in kept.drain(..) {
            std::mem::forget(copy);
        }
    }
    kept.retain(|(_, l)| !Arc::ptr_eq(l, link) && l.sound());
    kept.push((me, link.clone()));
    if kept.len() > MOST_KEPT_OPEN {
        kept.remove(0);
    }
}

/// Whether `link` is in [`KEPT_OPEN`]. Such a link, through which a lock was taken, asks
/// the server with its last proxy to let go of the locks its connection holds
/// ([`Request::LetGoLocks`]): a lock a task left held is then released as its holder's
/// death and the next taker told, as when the connection closes, and the connection stays
/// for the next task.
fn is_kept_open(link: &Link) -> bool {
    let kept = KEPT_OPEN.lock().unwrap_or_else(|p| p.into_inner());
    kept.iter().any(|(_, l)| std::ptr::eq(Arc::as_ptr(l), link))
}

/// A link proxies received by process `pid` share (see [`SHARED`]).
struct SharedLink {
    pid: u32,
    key: ServerKey,
    link: std::sync::Weak<Link>,
}

/// Takes one of the loans of `id` waiting in `held`: whether there was one.
fn take_loan(held: &mut Held, id: u64) -> bool {
    match held.borrowed.get_mut(&id) {
        Some(n) if *n > 1 => {
            *n -= 1;
            true
        }
        Some(_) => {
            held.borrowed.remove(&id);
            true
        }
        None => false,
    }
}

/// Settles one loan of `id` on `conn`, which holds a reference to it already: a reference
/// taken, settling the loan, and let go, in that order on the one connection, so the object
/// is never left without one.
fn settle_on(conn: &Conn, id: u64) {
    conn.post(Request::Incref { id, borrowed: true });
    conn.post(Request::Decref(id));
}

impl Link {
    /// The link to the server `route` leads to that proxies received by this process share
    /// (see [`SHARED`]), made if none is alive and sound.
    pub(super) fn shared(route: Route) -> Arc<Link> {
        let Some(key) = ServerKey::of(&route) else {
            return Link::new(route);
        };
        let me = sys::cached_pid();
        let link = Link::shared_as(route, key, me);
        if KEEP_OPEN.load(Ordering::Relaxed) {
            keep_open(&link, me);
        }
        link
    }

    /// [`shared`](Self::shared), for the server `key` names, in process `me`.
    fn shared_as(route: Route, key: ServerKey, me: u32) -> Arc<Link> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        // A `fork` child's copy of its parent's entries leads to links whose ways were
        // closed in it.
        shared.retain(|s| s.pid == me && s.link.strong_count() > 0);
        let found = shared.iter().position(|s| s.key == key);
        if let Some(link) = found.and_then(|i| shared[i].link.upgrade())
            && link.sound()
        {
            // The way received is dropped: the link has its own.
            return link;
        }
        let link = Link::new(route);
        let entry = SharedLink {
            pid: me,
            key,
            link: Arc::downgrade(&link),
        };
        match found {
            Some(i) => shared[i] = entry,
            None => shared.push(entry),
        }
        link
    }

    /// Whether the link may take new proxies: it never lost a connection, nor failed to
    /// make one. A link that did takes what it held for lost with its server (see
    /// [`install`](Self::install)), a new proxy among them, where the server that sent it
    /// may be another, started since at the same address. A connection whose server has
    /// closed it counts as lost before its runtime reads so: a pool worker's connection
    /// kept open (see [`keep_links_open`]) while a synchronous task holds the runtime.
    fn sound(&self) -> bool {
        self.failures().0 == 0
            && !self.conns().iter().any(|c| {
                c.calls.lost.load(Ordering::Acquire)
                    || sys::peer_hung_up(c.replies.link.as_fd()).unwrap_or(true)
            })
    }

    pub(super) fn new(route: Route) -> Arc<Link> {
        Arc::new(Link {
            server: Arc::new(ServerName::of(&route)),
            route,
            conns: Mutex::default(),
            connecting: Mutex::default(),
            failed: Mutex::new((0, None)),
            held: Mutex::default(),
            rings: Mutex::default(),
            took_a_lock: AtomicBool::new(false),
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

    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection of the current runtime, if it has one not lost.
    fn live_conn(&self) -> Option<Arc<Conn>> {
        let here = tokio::runtime::Handle::try_current().ok()?.id();
        self.conns()
            .iter()
            .find(|c| c.runtime == here && !c.calls.lost.load(Ordering::Acquire))
            .cloned()
    }

    /// Every connection not lost, whatever its runtime.
    fn live_conns(&self) -> Vec<Arc<Conn>> {
        self.conns()
            .iter()
            .filter(|c| !c.calls.lost.load(Ordering::Acquire))
            .cloned()
            .collect()
    }

    /// A proxy to `id` now lives on this link (`borrowed`: received from another process).
    /// The first one is a reference of each connection, told to the server now or when the
    /// connection is made.
    ///
    /// A proxy received while the link holds `id` already (one process given the same
    /// object twice) adds no reference: its loan is settled on its own, by a reference
    /// taken and let go at once, in order on one connection.
    pub(super) fn hold(&self, id: u64, borrowed: bool) {
        let mut held = self.held();
        if borrowed {
            *held.borrowed.entry(id).or_default() += 1;
        }
        let n = held.counts.entry(id).or_default();
        *n += 1;
        if *n == 1 {
            for conn in self.live_conns() {
                // The first reference settles the loan; the others are plain.
                let borrowed = take_loan(&mut held, id);
                conn.post(Request::Incref { id, borrowed });
            }
        } else if borrowed && let Some(conn) = self.live_conn().or_else(|| self.live_conns().pop())
        {
            take_loan(&mut held, id);
            settle_on(&conn, id);
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
            self.rings().remove(&id);
            held.counts.remove(&id);
            let unsettled = held.borrowed.remove(&id).unwrap_or(0);
            held.across_loss.remove(&id);
            let conns = self.live_conns();
            for conn in &conns {
                conn.post(Request::Decref(id));
            }
            if conns.is_empty() {
                for _ in 0..unsettled {
                    self.settle(id);
                }
            }
            // Posted while `held` is taken, so that a proxy arriving meanwhile, and any lock
            // taken through it, come after it on the connection. (Nothing takes `held` while
            // it holds `KEPT_OPEN`.)
            if held.counts.is_empty()
                && self.took_a_lock.load(Ordering::Relaxed)
                && is_kept_open(self)
            {
                self.took_a_lock.store(false, Ordering::Relaxed);
                for conn in &conns {
                    conn.post(Request::LetGoLocks);
                }
            }
        }
    }

    /// Settles the loan of `id`, received from another process and let go here before
    /// this link ever connected: the server, told on a connection of its own that this
    /// process took the object and let it go, may then end it, where the loan would keep it
    /// until the manager stops. Done here and now, without a runtime (a plain target's
    /// arguments are dropped outside one), for a local manager; a manager reached by address
    /// keeps the object (a connection to it is not made in a drop).
    fn settle(&self, id: u64) {
        let Route::Registration(reg) = &self.route else {
            return;
        };
        let settled = || -> Result<()> {
            let (mine, theirs) = sys::socketpair_stream()?;
            sys::send_with_fds(reg.as_fd(), &[1], &[theirs.as_raw_fd()])?;
            for req in [Request::Incref { id, borrowed: true }, Request::Decref(id)] {
                crate::wire::send_blocking(mine.as_fd(), &mut FrameBuf::of(&(0u64, req))?)?;
            }
            Ok(())
        };
        if let Err(e) = settled() {
            tracing::debug!("the loan of a manager's object #{id} could not be settled: {e}");
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Attached>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring of queue `id`, if this process reaches it directly: asked for on a local
    /// manager's link (a ring's descriptors cross only a Unix socket). `None` while the
    /// connection is lost, so that the call goes to the server and reports it.
    pub(super) async fn ring(&self, id: u64) -> Option<Ring> {
        if !matches!(self.route, Route::Registration(_)) {
            return None;
        }
        match self.rings().get(&id) {
            Some(Attached::Ring(r)) => return self.live_conn().map(|_| r.clone()),
            Some(Attached::Server(until)) if std::time::Instant::now() < *until => return None,
            _ => {}
        }
        let later = || Attached::Server(std::time::Instant::now() + ASK_AGAIN);
        let attached = if !queue::room_for_a_ring() {
            // This process is short of descriptors: the server keeps the queue a while.
            later()
        } else {
            match self.call(Request::Queue(id, QueueOp::Attach)).await {
                Ok(Reply::Ring(r)) => Attached::Ring(r),
                // The server cannot now: it keeps the queue a while.
                Ok(_) | Err(Error::Manager(_)) => later(),
                // Lost: the server's path says so.
                Err(_) => return None,
            }
        };
        // Only while a proxy to it lives here (`release` forgets it with the last one).
        let held = self.held();
        if held.counts.contains_key(&id) {
            self.rings().insert(id, attached.clone());
        }
        match attached {
            Attached::Ring(r) => Some(r),
            Attached::Server(_) => None,
        }
    }

    /// Returns when the connection there is now is lost (at once if there is none), with
    /// the error of the calls it failed: a wait on a ring, which the server does not see,
    /// then ends with the calls the server would have answered.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(super) async fn until_lost(&self) -> Error {
        let Some(conn) = self.live_conn() else {
            return self.server.lost("the connection to it was lost");
        };
        let calls = &conn.calls;
        let lost = calls.lost_signal.notified();
        tokio::pin!(lost);
        lost.as_mut().enable();
        if !calls.lost.load(Ordering::Acquire) {
            lost.await;
        }
        calls.ended()
    }

    /// Forgets every ring: calls go to the server (which is stopping), and fail as it says.
    pub(super) fn forget_rings(&self) {
        self.rings().clear();
    }

    /// A proxy to `id` is on its way to another process (it is being encoded): the server
    /// keeps the object until that process holds it.
    pub(super) fn lend(&self, id: u64) {
        let mut held = self.held();
        match self.live_conn().or_else(|| self.live_conns().pop()) {
            Some(conn) => conn.post(Request::Lend(id)),
            None => held.lends.push(id),
        }
    }

    /// Puts a new connection in place and tells the server what this link holds. Returns
    /// the lost connections it takes the place of: those lost with their runtime still hold
    /// their references at the server, until they are dropped.
    fn install(&self, conn: Arc<Conn>) -> Vec<Arc<Conn>> {
        let mut held = self.held();
        let ids: Vec<u64> = held.counts.keys().copied().collect();
        let mut conns = self.conns();
        let (lost, live): (Vec<_>, Vec<_>) = std::mem::take(&mut *conns)
            .into_iter()
            .partition(|c| c.calls.lost.load(Ordering::Acquire));
        let really_lost = |c: &Arc<Conn>| !c.calls.orphaned.load(Ordering::Acquire);
        if live.is_empty() && lost.iter().any(really_lost) {
            // The connections before this one were lost, and what they held with them.
            held.across_loss.extend(ids.iter().copied());
        }
        for id in ids {
            let loans = held.borrowed.remove(&id).unwrap_or(0);
            conn.post(Request::Incref {
                id,
                borrowed: loans > 0,
            });
            for _ in 1..loans {
                settle_on(&conn, id);
            }
        }
        for id in std::mem::take(&mut held.lends) {
            conn.post(Request::Lend(id));
        }
        *conns = live;
        conns.push(conn);
        lost
    }

    /// Puts `conn` in place; the connections it takes the place of are closed once the
    /// server has read what it holds (a round trip on it), so that an object they held is
    /// held throughout.
    async fn take_over(&self, conn: &Arc<Conn>) {
        let retired = self.install(conn.clone());
        if retired
            .iter()
            .any(|c| c.calls.orphaned.load(Ordering::Acquire))
        {
            let _ = conn.call(&Request::Count).await;
        }
        drop(retired);
    }

    /// Sends `req` and waits for its reply; a failure the server reports is its error.
    ///
    /// # Errors
    /// The server's failure; for an object the server no longer holds that this link held
    /// when a connection of its was lost, an [`Error::Manager`] that says so.
    ///
    /// # Cancel safety
    /// Dropping the call withdraws the request (see the module notes).
    pub(super) async fn call(&self, req: Request) -> Result<Reply> {
        // A reply that comes while its caller spins for it (see `Conn::call`) is taken
        // without touching the reactor: the call spends a unit of the task's budget first,
        // so that a task that loops on calls lets the others of its runtime run.
        tokio::task::coop::consume_budget().await;
        if req.takes_a_lock() {
            self.took_a_lock.store(true, Ordering::Relaxed);
        }
        let conn = self.conn().await?;
        match conn.call(&req).await? {
            Reply::Failed(Failure::Missing(id)) if self.held().across_loss.contains(&id) => {
                Err(Error::Manager(format!(
                    "the manager holds no such object (#{id}): it was let go when this \
                     process's connection to the manager was lost, as the manager keeps an \
                     object only while a connection holds it"
                )))
            }
            Reply::Failed(f) => Err(f.into()),
            r => Ok(r),
        }
    }

    /// The current runtime's turn to make a connection. The turns of runtimes that have no
    /// connection and that no one takes are forgotten.
    fn turn(&self) -> Turn {
        let here = tokio::runtime::Handle::try_current().ok().map(|h| h.id());
        let with_conn: Vec<_> = self.conns().iter().map(|c| Some(c.runtime)).collect();
        let mut turns = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        turns.retain(|(rt, t)| *rt == here || with_conn.contains(rt) || Arc::strong_count(t) > 1);
        if let Some((_, t)) = turns.iter().find(|(rt, _)| *rt == here) {
            return t.clone();
        }
        let t = Arc::new(tokio::sync::Mutex::new(()));
        turns.push((here, t.clone()));
        t
    }

    /// Makes the connection now, so that its errors (nothing listens, a wrong key) are the
    /// caller's.
    pub(super) async fn open(&self) -> Result<()> {
        let _turn = self.turn().lock_owned().await;
        let link = self.connect().await?;
        self.take_over(&Arc::new(Conn::start(link, &self.server)?))
            .await;
        Ok(())
    }

    /// The connection of the current runtime, made now if there is none or it was lost. A
    /// connection made holds this link's references (the server let them go with a lost
    /// one).
    ///
    /// One attempt is made at a time on a runtime, and the calls that waited for it (or for
    /// one on another runtime) share its outcome: a server that does not answer costs every
    /// call one attempt's time, not one each in turn. A server gone or not answering within
    /// [`AUTH_TIMEOUT`](crate::AUTH_TIMEOUT) (hung, or cut off by the network) is
    /// [`Error::ManagerLost`], as for a connection lost.
    async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        let seen = self.failures().0;
        let _turn = self.turn().lock_owned().await;
        if let Some(c) = self.live_conn() {
            return Ok(c);
        }
        if let (n, Some(e)) = &*self.failures()
            && *n != seen
        {
            // An attempt made while this call waited for its turn failed.
            return Err(e.clone());
        }
        let made = self.connect().await;
        let made = made.and_then(|link| Conn::start(link, &self.server).map(Arc::new));
        let conn = match made {
            Ok(conn) => conn,
            Err(e) => {
                let e = match e {
                    Error::Io(io) if is_gone(&io) => {
                        self.server.lost(format!("it cannot be reached: {io}"))
                    }
                    Error::Timeout => self.server.lost(format!(
                        "it did not answer a new connection within {:?}",
                        crate::AUTH_TIMEOUT
                    )),
                    e => e,
                };
                let mut failures = self.failures();
                *failures = (failures.0 + 1, Some(e.clone()));
                return Err(e);
            }
        };
        self.take_over(&conn).await;
        Ok(conn)
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, (u64, Option<Error>)> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a connection: a socket pair through the registration socket, or a connection
    /// to the address followed by the authentication exchange.
    async fn connect(&self) -> Result<Framed> {
        match &self.route {
            Route::Registration(reg) => {
                let (mine, theirs) = sys::socketpair_stream()?;
                match sys::send_with_fds(reg.as_fd(), &[1], &[theirs.as_raw_fd()]) {
                    Ok(_) => {}
                    Err(e) if is_gone(&e) => {
                        let why = format!("its registration socket is closed: {e}");
                        return Err(self.server.lost(why));
                    }
                    Err(e) => return Err(e.into()),
                }
                Framed::unix(mine)
            }
            Route::Address { address, authkey } => {
                let limit = crate::AUTH_TIMEOUT;
                let reach = async {
                    let link = crate::listener::dial(address).await?;
                    if let Some(key) = authkey {
                        // Bounded by the whole attempt's limit, which ends first.
                        crate::listener::authenticate_within(&link, key, limit * 2).await?;
                    }
                    Ok(link)
                };
                // A server that does not answer in time (hung, or out of the network's
                // reach): the connection is not made, whichever step it waits in.
                tokio::time::timeout(limit, reach)
                    .await
                    .map_err(|_| Error::Timeout)?
            }
        }
    }
}

/// Whether a failure to connect says that the server is gone or out of reach: nothing
/// listens, the socket file or the registration socket is gone, or no route leads to its
/// host.
fn is_gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{
        BrokenPipe, ConnectionAborted, ConnectionRefused, ConnectionReset, HostUnreachable,
        NetworkUnreachable, NotFound,
    };
    matches!(
        e.kind(),
        BrokenPipe
            | ConnectionAborted
            | ConnectionRefused
            | ConnectionReset
            | HostUnreachable
            | NetworkUnreachable
            | NotFound
    )
}

impl Conn {
    fn start(link: Framed, server: &Arc<ServerName>) -> Result<Conn> {
        let link = Arc::new(link);
        let calls = Arc::new(Calls {
            server: server.clone(),
            waiting: Mutex::default(),
            lost: AtomicBool::new(false),
            orphaned: AtomicBool::new(false),
            lost_signal: tokio::sync::Notify::new(),
            server_max: PeerMax::default(),
            heard: tokio::sync::Notify::new(),
            settled: tokio::sync::Notify::new(),
            ended: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let out = Arc::new(Outbox::new(tx, link.clone()));
        let announced = crate::max_frame_size();
        let hello = Request::Hello {
            pid: std::process::id(),
            max_frame: Some(announced as u64),
        };
        let _ = out.queue(FrameBuf::of(&(0u64, hello))?);
        tokio::spawn(write_requests(link.clone(), rx, out.counter()));
        let replies = Arc::new(Replies {
            link,
            calls: calls.clone(),
            out: Arc::downgrade(&out),
            taking: Mutex::new(()),
            heard: AtomicU64::new(sys::monotonic_nanos()),
        });
        tokio::spawn(read_replies(replies.clone()));
        Ok(Conn {
            runtime: crate::runtime::current().id(),
            out,
            calls,
            replies,
            next: AtomicU64::new(1),
            recent: Recent::default(),
            announced: AtomicUsize::new(announced),
        })
    }

    /// Sends the request frame of a call: written here and now when the call is `alone`
    /// (the only one waiting), nothing queued before it waits to be written and the socket
    /// takes it at once (no hop to the writer task, which may sleep on another thread);
    /// else handed to the writer task, which writes the requests of many calls together.
    fn send(&self, frame: FrameBuf, alone: bool) -> Result<()> {
        match alone {
            true => self.out.send(frame),
            false => self.out.queue(frame),
        }
    }

    /// Sends a request that has no reply, if the connection is still there.
    fn post(&self, req: Request) {
        if let Ok(f) = FrameBuf::of(&(0u64, req)) {
            let _ = self.out.queue(f);
        }
    }

    async fn call(self: &Arc<Conn>, req: &Request) -> Result<Reply> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut frame = FrameBuf::of(&(id, req))?;
        // Refused here, not by the writer, which would have to give up the connection.
        frame.check_size()?;
        // And by the server's limit, which may be lower: the server ends a connection that
        // sends it a frame over it. A large request on a connection that has not heard it
        // yet (it comes in answer to the connection's Hello) waits for it.
        if frame.body_len() > UNHEARD_MAX && !self.calls.server_max.said() {
            self.calls.hear_server().await;
        }
        self.calls.server_max.check(&frame)?;
        let max = crate::max_frame_size();
        // Read first: a call writes the shared word only when the limit changed.
        if self.announced.load(Ordering::Relaxed) != max
            && self.announced.swap(max, Ordering::Relaxed) != max
        {
            // This process's limit changed since the server was told: it is told first, so
            // that it measures this call's reply by the new one (a reply over it would end
            // the connection).
            self.post(Request::Hello {
                pid: std::process::id(),
                max_frame: Some(max as u64),
            });
        }
        let (tx, rx) = oneshot::channel();
        let undo = Undo::of(req);
        // A call withdrawn whose reply may still come gives back what that reply granted
        // when it comes (see `Withdraw`), after the calls sent since: a `get` sent then
        // would take the item after the one given back, a `lock` of the task whose `wait`
        // was withdrawn would find the lock its own. So a call waits until the server has
        // said that nothing of the withdrawn calls is still to come; then what they
        // granted is given back (queued) before its request.
        let mut entry = Some((tx, undo));
        // A call alone on the connection writes its request and takes its reply itself; calls
        // in a crowd leave both to the writer and reader tasks, which batch them.
        let alone = loop {
            let settled = self.calls.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut pending = self.calls.waiting();
                if pending.withdrawn.is_empty() || self.calls.lost.load(Ordering::Acquire) {
                    if let Some(entry) = entry.take() {
                        pending.waiting.insert(id, entry);
                    }
                    break pending.waiting.len() == 1;
                }
            }
            settled.await;
        };
        // Registered before the lost flag is read: the reader drains what it finds after
        // setting the flag, so a call is failed by it or sees the flag here.
        if self.calls.lost.load(Ordering::Acquire) || self.send(frame, alone).is_err() {
            self.calls.waiting().waiting.remove(&id);
            return Err(self.calls.ended());
        }
        let mut withdraw = Withdraw {
            conn: self,
            id,
            rx,
            undo,
            answered: false,
        };
        // The caller waits awake for a reply due shortly, taking what has come off the
        // socket itself when the reader is not at it: no wake-up of another thread stands
        // between the reply and its caller.
        let look = || {
            let taken = |rx: &mut oneshot::Receiver<Result<Reply>>| match rx.try_recv() {
                Ok(r) => Some(r),
                Err(oneshot::error::TryRecvError::Empty) => None,
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(self.calls.ended())),
            };
            if let Some(r) = taken(&mut withdraw.rx) {
                return Ok(Some(r));
            }
            if !alone {
                return Ok(None);
            }
            self.replies.take_if_free();
            Ok(taken(&mut withdraw.rx))
        };
        let r = match awake::spin_first(&self.recent, look).await? {
            Some(r) => r,
            None => {
                let r = (&mut withdraw.rx)
                    .await
                    .unwrap_or_else(|_| Err(self.calls.ended()));
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
                let _ = self.conn.out.queue(f);
            }
            return;
        }
        drop(pending);
        // The reader has taken the call's reply. Closed now, the receiver either holds it
        // (undone here) or refuses it (undone by the reader).
        self.rx.close();
        if let Ok(Ok(reply)) = self.rx.try_recv()
            && let Some(req) = self.undo.and_then(|u| u.request(reply))
        {
            self.conn.post(req);
        }
    }
}

/// Writes requests in order, those ready together in one batch, and a ping when idle for
/// [`HEARTBEAT`]. When every handle of the connection is gone, shuts the socket's writing
/// side: the server then ends the connection, and the reader sees the end.
async fn write_requests(
    link: Arc<Framed>,
    mut rx: mpsc::UnboundedReceiver<FrameBuf>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::new();
    loop {
        let (first, heartbeat) = match tokio::time::timeout(HEARTBEAT, rx.recv()).await {
            Ok(Some(f)) => (f, false),
            Ok(None) => {
                let _ = sys::shutdown_socket(link.as_fd(), false, true);
                return;
            }
            Err(_) => match FrameBuf::of(&(0u64, Request::Ping)) {
                Ok(f) => (f, true),
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
        let sent = link.send_batch(&mut batch).await;
        // A ping was never counted in.
        let counted = batch.len() - usize::from(heartbeat);
        written(&queued, counted);
        if sent.is_err() {
            let _ = sys::shutdown_socket(link.as_fd(), true, true);
            return;
        }
    }
}

/// Replies as they come off the socket, each handed to its call: by the reader task, or by
/// a caller waiting awake for its own, whichever looks first.
struct Replies {
    link: Arc<Framed>,
    calls: Arc<Calls>,
    /// Where a reply that finds its caller gone is undone (see [`Undo`]).
    out: std::sync::Weak<Outbox>,
    /// Held while frames are taken and handed over, so that they are handed over in the
    /// order they came (a call's `Withdrawn` after its reply).
    taking: Mutex<()>,
    /// When a frame last came ([`sys::monotonic_nanos`]): how long the server has been
    /// silent.
    heard: AtomicU64,
}

impl Replies {
    /// Takes every frame that has arrived and hands each to its call, with the turn held;
    /// `Err` names why the connection ended.
    fn take_arrived(
        &self,
        _turn: &std::sync::MutexGuard<'_, ()>,
    ) -> std::result::Result<(), String> {
        while let Some(r) = self.link.try_recv() {
            let frame = match r {
                Ok(frame) => frame,
                Err(Error::Closed) => {
                    let why = "it closed the connection (it stopped, or its process ended)";
                    self.calls.ends(why, false);
                    return Err(why.into());
                }
                // The connection broke (a server that died with requests unread resets
                // it): the server is gone, as at a clean end.
                Err(Error::Io(e)) => {
                    let why = format!("the connection to it broke: {e}");
                    self.calls.ends(&why, false);
                    return Err(why);
                }
                Err(e) => {
                    let why = format!("the manager sent what cannot be read: {e}");
                    self.calls.ends(&why, true);
                    return Err(why);
                }
            };
            self.heard.store(sys::monotonic_nanos(), Ordering::Relaxed);
            if let Err(why) = self.hand_over(frame) {
                self.calls.ends(&why, true);
                return Err(why);
            }
        }
        Ok(())
    }

    /// [`take_arrived`](Self::take_arrived) for a caller waiting awake, if the reader is not
    /// at it. A connection found ended is shut, so that the reader sees the end too and
    /// fails every call.
    fn take_if_free(&self) {
        let turn = match self.taking.try_lock() {
            Ok(t) => t,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if let Err(why) = self.take_arrived(&turn) {
            tracing::debug!("{why}");
            let _ = sys::shutdown_socket(self.link.as_fd(), true, true);
        }
    }

    /// Hands one frame to its call; `Err` for a frame that is not a reply.
    fn hand_over(&self, frame: crate::wire::Frame) -> std::result::Result<(), String> {
        match frame.decode::<(u64, Reply)>() {
            Ok((0, Reply::Failed(f))) => tracing::debug!("the manager refused a frame: {f:?}"),
            Ok((0, Reply::Server { pid, max_frame })) => {
                self.calls.server.pid.store(pid, Ordering::Relaxed);
                self.calls.server_max.set(max_frame);
                self.calls.heard.notify_waiters();
            }
            Ok((0, _)) => {}
            Ok((id, Reply::Withdrawn)) => {
                let mut pending = self.calls.waiting();
                pending.withdrawn.remove(&id);
                if pending.withdrawn.is_empty() {
                    drop(pending);
                    self.calls.settled.notify_waiters();
                }
            }
            Ok((id, reply)) => {
                let mut pending = self.calls.waiting();
                if let Some((tx, u)) = pending.waiting.remove(&id) {
                    drop(pending);
                    if let Err(Ok(reply)) = tx.send(Ok(reply)) {
                        self.undo(u, reply);
                    }
                } else if let Some(&u) = pending.withdrawn.get(&id) {
                    drop(pending);
                    self.undo(Some(u), reply);
                }
            }
            Err(e) => {
                return Err(format!(
                    "the manager sent a reply that does not decode: {e}"
                ));
            }
        }
        Ok(())
    }

    /// Gives back what a reply granted to a caller that is gone.
    fn undo(&self, undo: Option<Undo>, reply: Reply) {
        let (Some(req), Some(out)) = (undo.and_then(|u| u.request(reply)), self.out.upgrade())
        else {
            return;
        };
        if let Ok(f) = FrameBuf::of(&(0u64, req)) {
            let _ = out.queue(f);
        }
    }
}

/// Takes the replies as they arrive (unless a caller waiting awake took them first); when
/// the connection ends or stays silent too long, fails every call still waiting with
/// [`Error::ManagerLost`], or with [`Error::Protocol`] if the server sent what cannot be
/// read.
async fn read_replies(r: Arc<Replies>) {
    let mut end = End {
        r: r.clone(),
        orphaned: true,
    };
    let silence = HEARTBEAT * HEARTBEAT_MISSES;
    loop {
        // Everything that had arrived is taken (here or by a caller): the socket is
        // drained, and its readiness cleared.
        let taken = r.link.when_readable(|| {
            let turn = r.taking.lock().unwrap_or_else(|p| p.into_inner());
            r.take_arrived(&turn)
        });
        match tokio::time::timeout(silence, taken).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(why))) => {
                tracing::debug!("{why}");
                break;
            }
            Ok(Err(e)) => {
                tracing::debug!("manager connection ended: {e}");
                r.calls
                    .ends(&format!("the connection to it broke: {e}"), false);
                break;
            }
            Err(_) => {
                let heard = r.heard.load(Ordering::Relaxed);
                if sys::monotonic_nanos().saturating_sub(heard) < silence.as_nanos() as u64 {
                    continue;
                }
                let why = format!("it was silent for {silence:?}");
                tracing::debug!("{why}: connection lost");
                r.calls.ends(&why, false);
                break;
            }
        }
    }
    end.orphaned = false;
}

/// Ends the connection when the reader task ends: at the end of its loop, or when it is
/// dropped with its runtime (`orphaned`), where the socket is left open, its references
/// held at the server until the link closes it (see [`Link::take_over`]).
struct End {
    r: Arc<Replies>,
    orphaned: bool,
}

impl Drop for End {
    fn drop(&mut self) {
        let calls = &self.r.calls;
        calls.orphaned.store(self.orphaned, Ordering::Release);
        calls.lost.store(true, Ordering::Release);
        calls.lost_signal.notify_waiters();
        if !self.orphaned {
            let _ = sys::shutdown_socket(self.r.link.as_fd(), true, true);
        }
        let mut pending = calls.waiting();
        pending.withdrawn.clear();
        for (_, (tx, _)) in pending.waiting.drain() {
            let _ = tx.send(Err(calls.ended()));
        }
        drop(pending);
        calls.settled.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose host no route leads to is out of reach, as one that refuses: a call
    /// fails with `ManagerLost`, naming it. (It failed with a bare I/O error.)
    #[test]
    fn a_host_out_of_reach_is_a_server_gone() {
        use std::io::{Error as IoError, ErrorKind};
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::HostUnreachable,
            ErrorKind::NetworkUnreachable,
        ] {
            assert!(is_gone(&IoError::from(kind)), "{kind:?}");
        }
        assert!(!is_gone(&IoError::from(ErrorKind::PermissionDenied)));
    }
}
