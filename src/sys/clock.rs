//! A monotonic clock as one number, for timestamps kept in atomics.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds on a monotonic clock, counted from this process's first call (which returns
/// at least 1, so that 0 can mean "never").
pub(crate) fn monotonic_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let since = EPOCH.get_or_init(Instant::now).elapsed().as_nanos();
    u64::try_from(since).unwrap_or(u64::MAX).max(1)
}
