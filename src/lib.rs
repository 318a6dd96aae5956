//! Python's `multiprocessing`, for async Rust.
//!
//! A tokio program hands CPU-heavy or crash-prone work to other OS processes and awaits it:
//! a [`Pool`] whose `apply_async` and `map_async` are futures and whose `imap` is a stream,
//! [`Process`] handles joined without blocking a thread, and locks ([`Lock`], [`RLock`],
//! [`Semaphore`], [`Condition`], [`Event`], [`Barrier`]), shared memory ([`Value`],
//! [`Array`], [`SharedMemory`], and a [`SharedMemoryManager`] that removes the segments made
//! through it) and a [`Manager`] that work between real processes and are awaited on tokio's
//! reactor. A `Manager` serves every shared type of Python's (dicts, lists, namespaces,
//! queues, locks, events, barriers...) and your own ([`Managed`]), to the processes it starts
//! or, by address and key, to any process on any machine ([`Manager::builder`],
//! [`Manager::connect`]).
//! A [`Cluster`] gives a pool workers on other machines, started by ssh, Slurm or any
//! engine (see [`launch`]) and dialling back over TCP.
//!
//! Children run the same executable; each takes its role before `main` (see [`init`]), so
//! neither a program nor its tests need any set-up line:
//!
//! ```
//! use tokio_multiprocessing as mp;
//!
//! fn f(name: String) {
//!     println!("hello {name} from process {}", std::process::id());
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     mp::init(); // optional: a child takes its role before `main`
//!     let mut p = mp::Process::new(f, ("bob".to_string(),)).start().await?;
//!     p.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! A function crosses to the child as the address of a trampoline, measured from an anchor
//! symbol; the handshake checks that both sides run the very same binary. Arguments and
//! results are MessagePack (rmp-serde) in length-prefixed frames over Unix sockets, with file
//! descriptors passed beside the frames (`SCM_RIGHTS`). A child's exit is a pidfd on tokio's
//! reactor.
//!
//! Linux only (pidfd, `SCM_RIGHTS`, `posix_spawn`, `prctl`).

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod address;
mod awake;
pub mod cluster;
mod connection;
mod error;
mod family;
mod join_handle;
pub mod launch;
mod listener;
mod manager;
mod on_drop;
mod pool;
mod process;
mod put_sink;
mod queue;
mod receive_stream;
mod runtime;
mod shareable_list;
mod shared;
mod start;
mod sync;
mod sys;
mod task;
mod wait;
mod wire;

pub use address::{Address, ToAddress};
pub use cluster::{Cluster, ClusterBuilder};
pub use connection::{Connection, Pipe};
pub use error::{Error, ExitCause, Result, TaskError};
pub use family::{
    ActiveChild, MAIN_PROCESS_NAME, ParentProcess, ProcessInfo, active_children, current_process,
    parent_process,
};
pub use join_handle::JoinHandle;
pub use listener::{AUTH_TIMEOUT, Client, Listener, MAX_HANDSHAKES};
pub use manager::{
    ArrayProxy, BarrierProxy, BoundedSemaphoreProxy, ConditionLock, ConditionProxy, DictProxy,
    EventProxy, JoinableQueueProxy, ListProxy, LockProxy, Managed, Manager, ManagerBuilder,
    NamespaceProxy, Proxy, QueueProxy, RLockProxy, SegmentsProxy, SemaphoreProxy,
    SharedMemoryManager, SharedProxy, ValueProxy,
};
pub use pool::{
    AbortOnDrop, AsyncResult, IMap, Map, MapResult, Pool, PoolBuilder, PoolStats, WorkerLoss,
};
pub use process::{CloseError, Process, ProcessBuilder};
pub use put_sink::PutSink;
pub use queue::{JoinableQueue, PutError, Queue, SimpleQueue};
pub use shareable_list::{ShareableItem, ShareableList};
pub use shared::{Array, ArrayGuard, RawArray, RawValue, SharedMemory, Value, ValueGuard};
pub use start::{
    StartMethod, get_all_start_methods, get_start_method, init, set_start_method,
    try_set_start_method,
};
pub use sync::{
    Barrier, BoundedSemaphore, Condition, ConditionGuard, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphoreGuard,
};
pub use sys::Pod;
pub use task::{InitializerOutput, Target};
pub use wait::{Waitable, wait};
pub use wire::{DEFAULT_MAX_FRAME_SIZE, Fd, max_frame_size, set_max_frame_size};

/// The README's examples, compiled (and the runnable ones run) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Hooks for the benchmarks' baselines; not part of the API. Built only with the
/// `test-hooks` feature, which the crate's own tests and benches turn on.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod __private {
    /// Forks a child that exits at once and reaps it (refused unless single-threaded).
    pub fn fork_and_reap() -> std::io::Result<()> {
        crate::sys::fork_and_reap()
    }

    /// Runs `hook` in each `SharedMemory::create` of this process once the segment is made
    /// and before its tracker is told of it (set once).
    pub fn on_segment_made(hook: fn()) {
        let _ = crate::shared::SEGMENT_MADE.set(hook);
    }

    /// Encodes `value` as it would cross to another process and decodes it back.
    pub fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(
        value: &T,
    ) -> crate::Result<T> {
        let e = crate::wire::Encoded::new(value)?;
        crate::wire::codec::decode(&e.bytes, e.fds)
    }
}
