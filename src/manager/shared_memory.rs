//! [`SharedMemoryManager`]: a manager whose server keeps the names of the shared memory
//! segments made through it and removes them when it stops (Python's
//! `multiprocessing.managers.SharedMemoryManager`).
//!
//! # Who owns a name
//! The server makes each segment, under a fresh name, and keeps the name from the moment
//! the segment exists (`CreateSegment`: Python's `SharedMemory(create=True)` and
//! `track_segment` in one step, so that no process can die between them); the caller
//! attaches to it, with a handle that never removes the name. Dropping the handle, or the
//! end of the process that asked for the segment (a pool worker, a child killed by SIGKILL,
//! at any moment of the call), leaves the segment for any process to attach, until the
//! server stops.
//!
//! # When the names go
//! The server removes every name it keeps whenever it stops, short of being killed by
//! SIGKILL itself: at [`SharedMemoryManager::shutdown`], when the `SharedMemoryManager` is
//! dropped (both send SIGTERM, which this server catches), when this crate's exit handler
//! ends it, when the process that started it dies (the server asks for SIGTERM then, where
//! other children of this crate ask for SIGKILL), and when every holder of its registration
//! socket is gone. A terminal's Ctrl-C or hang-up, which reaches the server along with the
//! rest of its process group, does not stop it (Python's server ignores SIGINT too): the
//! program decides, and if it dies of the signal the server follows, removing the names.
//!
//! A server killed by SIGKILL cannot remove them: it writes each name down before it makes
//! the segment (see `ledger.rs`), and the process that started it removes what is left at
//! `shutdown`, or when it drops a `SharedMemoryManager` whose server is gone.
//!
//! # In other processes
//! A [`SegmentsProxy`] is the way to the server that travels: a serde value, passed to a
//! [`Process`](crate::Process) or a pool task like a proxy, so that the receiver makes
//! segments the same server keeps. What travels is the server's registration socket, as for
//! every proxy of a local manager.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::link::Link;
use super::proto::{Reply, Request};
use super::{Manager, RouteOwned, Way, unexpected};
use crate::error::Result;
use crate::shareable_list::{Plan, ShareableItem, ShareableList};
use crate::shared::SharedMemory;
use crate::start::StartMethod;

/// A manager whose server removes the shared memory segments made through it when it stops
/// (Python's `multiprocessing.managers.SharedMemoryManager`).
///
/// [`shared_memory`](Self::shared_memory) and [`shareable_list`](Self::shareable_list) make
/// named segments that outlive their handles and the processes that made them; the server
/// removes them all at [`shutdown`](Self::shutdown), or when this handle is dropped, as
/// leaving Python's `with SharedMemoryManager() as smm:` block does. The server also
/// serves every shared object a [`Manager`] does, through [`manager`](Self::manager).
///
/// To make segments in another process, hand it a [`SegmentsProxy`] ([`proxy`](Self::proxy)).
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing::{Pool, SegmentsProxy, SharedMemory, SharedMemoryManager};
///
/// // A worker makes a segment through the manager and returns its name; the segment
/// // outlives the handle the worker dropped.
/// async fn produce(smm: SegmentsProxy) -> tokio_multiprocessing::Result<String> {
///     let shm = smm.shared_memory(128).await?;
///     shm.write(0, b"from a worker")?;
///     Ok(shm.name().unwrap_or_default().to_string())
/// }
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let smm = SharedMemoryManager::start().await?;
/// let sl = smm.shareable_list(0..10).await?;
/// let pool = Pool::new(2).await?;
/// let name = pool.apply(produce, (smm.proxy(),)).await??;
/// let shm = SharedMemory::attach(&name)?;
/// let mut buf = [0u8; 13];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"from a worker");
/// assert_eq!(smm.segments().await?.len(), 2);
/// smm.shutdown().await?; // both names are gone from /dev/shm
/// # drop(sl);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SharedMemoryManager {
    manager: Manager,
    segments: SegmentsProxy,
}

impl SharedMemoryManager {
    /// Starts a server process with the default start method (Python's
    /// `SharedMemoryManager()` and `start()`).
    ///
    /// # Errors
    /// Those of [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start() -> Result<SharedMemoryManager> {
        SharedMemoryManager::start_with(crate::get_start_method()).await
    }

    /// Starts a server process with `method`.
    ///
    /// # Errors
    /// Those of [`ProcessBuilder::start`](crate::ProcessBuilder::start).
    ///
    /// # Cancel safety
    /// Not cancel safe: a start dropped midway may leave a server process that exits when it
    /// finds its parent gone.
    pub async fn start_with(method: StartMethod) -> Result<SharedMemoryManager> {
        let mut builder = Manager::builder().start_method(method);
        builder.segments = true;
        let manager = builder.start().await?;
        let segments = SegmentsProxy {
            link: manager.link.clone(),
        };
        Ok(SharedMemoryManager { manager, segments })
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.manager.pid()
    }

    /// The manager this server is, for the shared objects every manager serves (dicts,
    /// queues, locks...).
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// A way to this server for another process: it makes segments this server keeps.
    pub fn proxy(&self) -> SegmentsProxy {
        self.segments.clone()
    }

    /// A new named segment of `size` bytes, zero-filled, under a fresh name (`psm_` and 8 hex
    /// digits), which the server removes when it stops (Python's `smm.SharedMemory(size)`).
    /// The handle never removes the name (its [`unlink`](SharedMemory::unlink) still does).
    ///
    /// # Errors
    /// As [`SegmentsProxy::shared_memory`].
    ///
    /// # Cancel safety
    /// As [`SegmentsProxy::shared_memory`].
    pub async fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        self.segments.shared_memory(size).await
    }

    /// A new [`ShareableList`] holding `items`, under a fresh name, which the server removes
    /// when it stops (Python's `smm.ShareableList(sequence)`).
    ///
    /// # Errors
    /// As [`SegmentsProxy::shareable_list`].
    ///
    /// # Cancel safety
    /// As [`SegmentsProxy::shareable_list`].
    pub async fn shareable_list<I: Into<ShareableItem>>(
        &self,
        items: impl IntoIterator<Item = I>,
    ) -> Result<ShareableList> {
        self.segments.shareable_list(items).await
    }

    /// The names of the segments the server keeps, in the order they were made, from
    /// whichever process (Python's `list_segments`). A segment someone removed
    /// ([`SharedMemory::unlink`]) is no longer kept, and not listed (Python lists it until
    /// the manager stops); nor is its name kept in memory, here or in the ledger the
    /// starting process reads if the server is killed.
    ///
    /// # Errors
    /// As [`SegmentsProxy::segments`].
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing but what the server keeps of removed segments.
    pub async fn segments(&self) -> Result<Vec<String>> {
        self.segments.segments().await
    }

    /// Stops the server and waits for it (Python's `smm.shutdown()`): it removes every segment
    /// it keeps, then exits; if it was killed by SIGKILL before, this removes what it left.
    /// Handles to the segments stay usable where they are; the names are gone. Proxies,
    /// anywhere, then fail with [`Error::ManagerLost`](crate::Error::ManagerLost).
    ///
    /// # Errors
    /// An I/O error from signalling or waiting.
    ///
    /// # Cancel safety
    /// Cancel safe: the server has been told to stop before the wait begins; it removes the
    /// segments and is reaped even if the wait is dropped.
    pub async fn shutdown(self) -> Result<()> {
        self.manager.shutdown().await
    }
}

/// A way to a [`SharedMemoryManager`]'s server, to make segments it keeps from any process
/// the proxy is passed to (a serde value, like every proxy).
///
/// Clones share one connection. A proxy that outlives the server fails with
/// [`Error::ManagerLost`](crate::Error::ManagerLost).
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing::{Process, SegmentsProxy, SharedMemoryManager};
///
/// async fn child(smm: SegmentsProxy) -> tokio_multiprocessing::Result<()> {
///     let sl = smm.shareable_list(["made", "in", "a", "child"]).await?;
///     drop(sl); // the list stays, kept by the server
///     Ok(())
/// }
///
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let smm = SharedMemoryManager::start().await?;
/// let mut p = Process::new(child, (smm.proxy(),)).start().await?;
/// p.join().await?;
/// let name = &smm.segments().await?[0];
/// let sl = tokio_multiprocessing::ShareableList::attach(name)?;
/// assert_eq!(sl.len(), 4);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SegmentsProxy {
    link: Arc<Link>,
}

impl std::fmt::Debug for SegmentsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentsProxy").finish_non_exhaustive()
    }
}

impl SegmentsProxy {
    /// A new named segment of `size` bytes, zero-filled, under a fresh name (`psm_` and 8 hex
    /// digits), which the server makes and removes when it stops (Python's
    /// `smm.SharedMemory(size)`). The handle never removes the name (its
    /// [`unlink`](SharedMemory::unlink) still does, and the server then passes over it).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a size of 0;
    /// [`Error::Manager`](crate::Error::Manager) if the server cannot make the segment;
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// A dropped call may leave a segment the server made: it keeps it, lists it, and
    /// removes it when it stops, as every other.
    pub async fn shared_memory(&self, size: usize) -> Result<SharedMemory> {
        let name = self.create(size).await?;
        SharedMemory::attach(&name)
    }

    /// A new [`ShareableList`] holding `items`, under a fresh name, which the server makes
    /// and removes when it stops (Python's `smm.ShareableList(sequence)`). The list never
    /// removes the name (its [`unlink`](ShareableList::unlink) still does).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a string or bytes of
    /// 10 MB or more, as [`ShareableList::create`]; those of
    /// [`shared_memory`](Self::shared_memory).
    ///
    /// # Cancel safety
    /// As [`shared_memory`](Self::shared_memory); a list dropped before it is filled holds
    /// zeros.
    pub async fn shareable_list<I: Into<ShareableItem>>(
        &self,
        items: impl IntoIterator<Item = I>,
    ) -> Result<ShareableList> {
        let plan = Plan::of(items)?;
        let name = self.create(plan.size()).await?;
        plan.fill(SharedMemory::attach(&name)?)
    }

    /// The names of the segments the server keeps, in the order they were made, from
    /// whichever process (Python's `list_segments`). A segment someone removed
    /// ([`SharedMemory::unlink`]) is no longer kept, and not listed (Python lists it until
    /// the manager stops); nor is its name kept in memory, here or in the ledger the
    /// starting process reads if the server is killed.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing but what the server keeps of removed segments.
    pub async fn segments(&self) -> Result<Vec<String>> {
        match self.link.call(Request::Segments).await? {
            Reply::Names(names) => Ok(names),
            r => Err(unexpected(r)),
        }
    }

    /// Has the server make a segment of `size` bytes, which it keeps; its name.
    async fn create(&self, size: usize) -> Result<String> {
        crate::shared::check_size(size)?;
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        match self.link.call(Request::CreateSegment(size)).await? {
            Reply::Names(mut names) if names.len() == 1 => Ok(names.remove(0)),
            r => Err(unexpected(r)),
        }
    }
}

impl Serialize for SegmentsProxy {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Way(&self.link).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SegmentsProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let route = RouteOwned::deserialize(d)?.into_route().ok_or_else(|| {
            D::Error::custom("a SegmentsProxy travels with its way to the server, never nested")
        })?;
        Ok(SegmentsProxy {
            link: Link::new(route),
        })
    }
}
