//! A worker's watch on its resident memory, for
//! [`PoolBuilder::max_memory_per_child`](super::PoolBuilder::max_memory_per_child): each
//! answer says whether the worker's memory has reached the limit, and the pool retires a
//! worker whose answer says so once it has answered every task it was sent.
//!
//! The memory is the process's, so the watch is too: set at the worker's setup, and for
//! that process only. A process forked from a worker (a worker of a pool that a task of it
//! builds) does not inherit it: its memory is its own, its limit its pool's, and the
//! descriptor the watch reads through was closed in it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sys::ResidentMemory;

/// How often, at most, a worker reads its resident memory: a reading is a system call,
/// which tasks of a few microseconds each would feel; memory that grows task by task is
/// caught within this.
const READ_EVERY: Duration = Duration::from_millis(1);

static WATCH: Mutex<Option<Watch>> = Mutex::new(None);

struct Watch {
    /// The process it watches.
    pid: u32,
    limit: u64,
    resident: ResidentMemory,
    /// When the next reading is due.
    next: Instant,
    reached: bool,
}

/// The watch of this process, if it has one: one inherited from the parent that forked it
/// is dropped, without closing its descriptor (in a forked child the number is no longer
/// the watch's, and may be another file's).
fn this_process(watch: &mut Option<Watch>) -> Option<&mut Watch> {
    if watch
        .as_ref()
        .is_some_and(|w| w.pid != crate::sys::cached_pid())
    {
        std::mem::forget(watch.take());
    }
    watch.as_mut()
}

/// Watches this worker's memory against `limit` bytes from now on. A worker that cannot
/// read its memory is not watched, and says why in the log. One that starts at the limit
/// already, which is retired after each task, says so on its stderr (a worker's log goes
/// nowhere unless its program sets it up before [`init`](crate::init)).
pub(super) fn watch(limit: u64) {
    let resident = match ResidentMemory::open() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("a pool worker cannot read its resident memory: {e}");
            return;
        }
    };
    if let Ok(bytes) = resident.bytes()
        && bytes >= limit
    {
        eprintln!(
            "tokio-multiprocessing pool worker {}: it starts with {bytes} bytes resident, over \
             its max_memory_per_child of {limit}, so it is retired after each task",
            crate::sys::current_pid()
        );
    }
    let mut watch = WATCH.lock().unwrap_or_else(|p| p.into_inner());
    this_process(&mut watch);
    *watch = Some(Watch {
        pid: crate::sys::cached_pid(),
        limit,
        resident,
        next: Instant::now(),
        reached: false,
    });
}

/// Whether this worker's resident memory has reached its limit: read at most once per
/// [`READ_EVERY`], and true for good once it has. False when this process has no limit.
pub(super) fn reached() -> bool {
    let mut watch = WATCH.lock().unwrap_or_else(|p| p.into_inner());
    let Some(w) = this_process(&mut watch) else {
        return false;
    };
    if w.reached {
        return true;
    }
    let now = Instant::now();
    if now < w.next {
        return false;
    }
    w.next = now + READ_EVERY;
    match w.resident.bytes() {
        Ok(bytes) if bytes >= w.limit => {
            tracing::debug!(
                bytes,
                limit = w.limit,
                "a pool worker's memory reached its limit"
            );
            w.reached = true;
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::debug!("a pool worker cannot read its resident memory: {e}");
            false
        }
    }
}
