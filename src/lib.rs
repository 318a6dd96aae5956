//! Python's `multiprocessing`, for async Rust.
//!
//! A tokio program hands CPU-heavy or crash-prone work to other OS processes and awaits it:
//! [`Process`] handles joined without blocking a thread, and (as the crate grows) pools,
//! queues, pipes, locks and shared memory that work between real processes, awaited on
//! tokio's reactor.
//!
//! Children run the same executable, so `main` must call [`init`] before anything else:
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn f(name: String) {
//!     println!("hello {name} from process {}", std::process::id());
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     mp::init(); // a child never gets past this line
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

mod error;
mod pool;
mod process;
mod start;
mod sys;
mod task;
mod wire;

pub use error::{Error, ExitCause, Result};
pub use pool::{AsyncResult, IMap, Map, MapResult, Pool, PoolBuilder};
pub use process::{DEFAULT_START_TIMEOUT, Process, ProcessBuilder};
pub use start::{StartMethod, get_start_method, init, set_start_method};
pub use task::Target;
pub use wire::{DEFAULT_MAX_FRAME_SIZE, max_frame_size, set_max_frame_size};
