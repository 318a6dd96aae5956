//! How busy the machine is: whether a core is spare for a process to wait on awake.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long one look at the machine's load stands for.
const LOOK_EVERY: Duration = Duration::from_millis(1);

/// How many of the latest looks are weighed: a core is spare if any of them found one.
const LOOKS_WEIGHED: u32 = 4;

/// Whether a core is spare now: in one of the latest [`LOOKS_WEIGHED`] looks, the machine's
/// runnable threads (the caller among them, since it runs) were no more than the cores this
/// process may run on, so a thread that keeps running takes no time from another at work.
///
/// One look is a snapshot, and a snapshot catches threads that run for a moment only: the
/// runtime thread that the reactor wakes for the very message a wait spins for, a kernel
/// worker. A machine whose cores are all at work finds no spare core in every look; one
/// that is idle but for a moment finds one in the next. Looks at `/proc/loadavg` at most
/// once per [`LOOK_EVERY`] (a few microseconds) and answers from the latest looks in
/// between; `false` on a single core, and where the file cannot be read.
pub(crate) fn core_spare() -> bool {
    static CORES: OnceLock<usize> = OnceLock::new();
    /// When the last look was taken, in nanoseconds after `EPOCH` (0: never).
    static LOOKED: AtomicU64 = AtomicU64::new(0);
    /// What the latest looks found, the latest in the lowest bit: 1 for a spare core. Looks
    /// taken longer ago than [`LOOKS_WEIGHED`] × [`LOOK_EVERY`] before the latest are dropped.
    static FOUND: AtomicU32 = AtomicU32::new(0);
    let cores = *CORES.get_or_init(super::cpus_allowed);
    if cores <= 1 {
        return false;
    }
    let now = super::monotonic_nanos();
    let looked = LOOKED.load(Ordering::Relaxed);
    let weighed = |found: u32| found & ((1 << LOOKS_WEIGHED) - 1) != 0;
    if looked != 0 && now.saturating_sub(looked) < LOOK_EVERY.as_nanos() as u64 {
        return weighed(FOUND.load(Ordering::Relaxed));
    }
    // One thread looks; the others answer from the previous looks meanwhile.
    if LOOKED
        .compare_exchange(looked, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return weighed(FOUND.load(Ordering::Relaxed));
    }
    let spare = runnable_threads().is_some_and(|n| n <= cores);
    // Looks older than the window no longer say anything about now.
    let window = u64::from(LOOKS_WEIGHED) * LOOK_EVERY.as_nanos() as u64;
    let earlier = match now.saturating_sub(looked) <= window {
        true => FOUND.load(Ordering::Relaxed),
        false => 0,
    };
    let found = (earlier << 1) | u32::from(spare);
    FOUND.store(found, Ordering::Relaxed);
    weighed(found)
}

/// The machine's runnable threads now (the fourth field of `/proc/loadavg`,
/// `running/total`), the caller included. The file is kept open and read from its start each
/// time: one system call, where opening it again would take five. A forked child opens its
/// own (the parent's descriptor was closed in it, and its number may name another file).
fn runnable_threads() -> Option<usize> {
    use std::os::unix::fs::FileExt;
    static LOADAVG: Mutex<Option<(u32, std::fs::File)>> = Mutex::new(None);
    let mut open = LOADAVG.lock().unwrap_or_else(|p| p.into_inner());
    let pid = super::cached_pid();
    if open.as_ref().is_none_or(|(p, _)| *p != pid) {
        if let Some((_, inherited)) = open.take() {
            // Not closed: in a forked child its number is no longer ours.
            std::mem::forget(inherited);
        }
        *open = std::fs::File::open("/proc/loadavg").ok().map(|f| (pid, f));
    }
    let (_, file) = open.as_ref()?;
    let mut buf = [0u8; 128];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..n)?).ok()?;
    let field = text.split_whitespace().nth(3)?;
    field.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn runnable_threads_counts_the_caller() {
        // The calling thread runs while it reads the file, so it is counted.
        assert!(runnable_threads().is_some_and(|n| n >= 1));
    }

    #[test]
    fn a_core_is_not_spare_when_every_core_is_kept_busy() {
        let cores = crate::sys::cpus_allowed();
        if cores <= 1 {
            assert!(!core_spare(), "a single core is never spare");
            return;
        }
        // Keep more threads running than there are cores, then look.
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let spinners: Vec<_> = (0..cores * 2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let busy = runnable_threads();
        // Enough looks for every one weighed to have been taken while all cores were busy.
        let until = std::time::Instant::now() + LOOK_EVERY * (LOOKS_WEIGHED * 8);
        while std::time::Instant::now() < until {
            core_spare();
            std::thread::sleep(LOOK_EVERY / 2);
        }
        let spare = core_spare();
        stop.store(true, Ordering::Relaxed);
        for s in spinners {
            let _ = s.join();
        }
        assert!(
            busy.is_some_and(|n| n > cores),
            "{busy:?} runnable with {} spinning threads on {cores} cores",
            cores * 2
        );
        assert!(
            !spare,
            "a core was found spare with {} spinning threads on {cores} cores",
            cores * 2
        );
    }
}
