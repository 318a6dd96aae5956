//! This process's pid and owner word, cached, so that the uncontended path of a lock makes no
//! system call.
//!
//! glibc no longer caches `getpid`, so each call is a system call. The cache is cleared in a
//! forked child by a `pthread_atfork` handler (registered once, the first time the cache is
//! filled), so a child made by the fork start method or the fork server reads its own.

use std::sync::Once;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

static PID: AtomicU32 = AtomicU32::new(0);
static OWNER: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_pid() {
    // Async-signal-safe: atomic stores.
    PID.store(0, Ordering::Relaxed);
    OWNER.store(0, Ordering::Relaxed);
}

/// Forgets the cached pid: for a child made without `fork()` (whose `pthread_atfork`
/// handlers do not run then), such as the fork server's.
pub(super) fn forget_cached_pid() {
    forget_pid()
}

/// This process's owner word (see [`owner`](super::owner)): its pid and start time, for
/// words in shared memory that name a process after it may have died.
pub(crate) fn cached_owner() -> u64 {
    let w = OWNER.load(Ordering::Relaxed);
    if w != 0 {
        return w;
    }
    let w = super::owner::owner_word(cached_pid());
    OWNER.store(w, Ordering::Relaxed);
    w
}

/// This process's pid (never 0).
pub(crate) fn cached_pid() -> u32 {
    let p = PID.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    ATFORK.call_once(|| {
        // SAFETY: registers a plain C-ABI function with no arguments as the child handler;
        // it makes one atomic store, which is async-signal-safe as a post-fork handler must be.
        unsafe {
            libc::pthread_atfork(None, None, Some(forget_pid));
        }
    });
    let p = std::process::id();
    PID.store(p, Ordering::Relaxed);
    p
}
