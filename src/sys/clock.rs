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

/// Nanoseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`, from boot): the same
/// clock in every process of the machine, for timestamps that processes compare in shared
/// memory.
pub(crate) fn machine_monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; CLOCK_MONOTONIC
    // is always supported on Linux, and on an error `ts` keeps its zeroes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}
