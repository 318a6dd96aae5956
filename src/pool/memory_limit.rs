//! A worker's watch on its resident memory, for
//! [`PoolBuilder::max_memory_per_child`](super::PoolBuilder::max_memory_per_child): each
//! answer says whether the worker's memory has reached the limit, and the pool retires a
//! worker whose answer says so once it has answered every task it was sent.
//!
//! The memory is the process's, so the watch is too: set once, at the worker's setup.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::ResidentMemory;

/// How often, at most, a worker reads its resident memory: a reading is a system call,
/// which tasks of a few microseconds each would feel; memory that grows task by task is
/// caught within this.
const READ_EVERY: Duration = Duration::from_millis(1);

static WATCH: OnceLock<Watch> = OnceLock::new();

struct Watch {
    limit: u64,
    resident: ResidentMemory,
    epoch: Instant,
    /// When the next reading is due, in nanoseconds after `epoch`.
    next: AtomicU64,
    reached: AtomicBool,
}

/// Watches this worker's memory against `limit` bytes from now on. A worker that cannot
/// read its memory is not watched, and says why in the log. One that starts at the limit
/// already, which is retired after each task, says so on its stderr (a worker's log goes
/// nowhere unless its program sets it up before [`init`](crate::init)).
pub(super) fn watch(limit: u64) {
    match ResidentMemory::open() {
        Ok(resident) => {
            if let Ok(bytes) = resident.bytes()
                && bytes >= limit
            {
                eprintln!(
                    "tokio-multiprocessing pool worker {}: it starts with {bytes} bytes \
                     resident, over its max_memory_per_child of {limit}, so it is retired after \
                     each task",
                    crate::sys::current_pid()
                );
            }
            let _ = WATCH.set(Watch {
                limit,
                resident,
                epoch: Instant::now(),
                next: AtomicU64::new(0),
                reached: AtomicBool::new(false),
            });
        }
        Err(e) => tracing::warn!("a pool worker cannot read its resident memory: {e}"),
    }
}

/// Whether this worker's resident memory has reached its limit: read at most once per
/// [`READ_EVERY`], and true for good once it has. False when there is no limit.
pub(super) fn reached() -> bool {
    let Some(w) = WATCH.get() else {
        return false;
    };
    if w.reached.load(Ordering::Relaxed) {
        return true;
    }
    let now = u64::try_from(w.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    if now < w.next.load(Ordering::Relaxed) {
        return false;
    }
    w.next.store(
        now.saturating_add(READ_EVERY.as_nanos() as u64),
        Ordering::Relaxed,
    );
    match w.resident.bytes() {
        Ok(bytes) if bytes >= w.limit => {
            tracing::debug!(
                bytes,
                limit = w.limit,
                "a pool worker's memory reached its limit"
            );
            w.reached.store(true, Ordering::Relaxed);
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!("a pool worker cannot read its resident memory: {e}");
            false
        }
    }
}
