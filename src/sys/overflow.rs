//! Stack overflows told in a child, as Rust's start-up tells them in a program.
//!
//! Before `main`, `std` gives the main thread an alternate signal stack and catches SIGSEGV
//! and SIGBUS: a fault in a thread's guard page prints "thread 'main' has overflowed its
//! stack" and aborts; any other fault puts the default action back and faults again, so
//! the process dies of it as it would have. A child takes its role before that start-up
//! (see `constructor`), so a task that recursed too deep died of a bare SIGSEGV with
//! nothing printed, which reads as memory corruption. [`report_stack_overflows`] does what
//! `std` does, for the child's main thread, and [`AltStack::for_this_thread`] for the
//! threads the crate starts in a child. A thread that the user's own code starts there has
//! no alternate stack, and its overflow stays a bare SIGSEGV.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// This thread's guard range (start, end) and the name its report gives; empty where
    /// no range is known.
    static GUARD: Cell<(usize, usize, &'static str)> = const { Cell::new((0, 0, "")) };
}

/// Whether the handler is installed in this process (so threads need alternate stacks).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Catches SIGSEGV and SIGBUS where they have their default action, and gives the calling
/// thread, the main thread of a child, an alternate stack that lives as long as the process.
pub(crate) fn report_stack_overflows() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a zeroed `sigaction` is a valid value of the plain C struct; the first
        // call only reads the disposition into it, and the second installs `on_fault`, an
        // `extern "C"` handler of the `SA_SIGINFO` shape that makes only async-signal-safe
        // calls (`write`, `abort`, `sigaction`) and reads a const-initialised thread local.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL
            {
                continue;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Relaxed);
            }
        }
    }
    if let Some(stack) = AltStack::new("main") {
        // The main thread's alternate stack is needed until the process ends.
        std::mem::forget(stack);
    }
}

/// An alternate signal stack for the thread that made it, on which the fault handler runs
/// when the thread's own stack is exhausted; dropping it (on that thread) takes it away.
pub(crate) struct AltStack {
    base: *mut libc::c_void,
    len: usize,
}

impl AltStack {
    /// Gives the calling thread, one the crate starts in a child, an alternate stack and a
    /// known guard range, so that its overflow is told as `name`'s; `None` where the
    /// handler is not installed (not in a child) or the stack cannot be made.
    pub(crate) fn for_this_thread(name: &'static str) -> Option<AltStack> {
        if !INSTALLED.load(Ordering::Relaxed) {
            return None;
        }
        AltStack::new(name)
    }

    fn new(name: &'static str) -> Option<AltStack> {
        let page = page_size();
        if let Some((start, end)) = guard_range(page) {
            GUARD.with(|g| g.set((start, end, name)));
        }
        // SAFETY: `getauxval` reads the auxiliary vector and touches none of our memory.
        let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) } as usize;
        let size = min.max(libc::SIGSTKSZ).max(64 << 10).next_multiple_of(page);
        let len = size + page;
        // SAFETY: an anonymous private mapping of fresh pages, at an address the kernel
        // picks, aliases nothing.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let alt = libc::stack_t {
            // SAFETY: `page` is within the mapping of `len = size + page` bytes.
            ss_sp: unsafe { base.cast::<u8>().add(page) }.cast(),
            ss_flags: 0,
            ss_size: size,
        };
        // SAFETY: the lowest page of our own mapping becomes a guard page, and the rest the
        // thread's alternate stack; the mapping outlives its use, as `Drop` takes the
        // alternate stack away before unmapping it.
        let ok = unsafe {
            libc::mprotect(base, page, libc::PROT_NONE) == 0
                && libc::sigaltstack(&alt, ptr::null_mut()) == 0
        };
        if !ok {
            // SAFETY: the mapping is ours, and no alternate stack was set in it.
            unsafe { libc::munmap(base, len) };
            return None;
        }
        Some(AltStack { base, len })
    }
}

impl Drop for AltStack {
    fn drop(&mut self) {
        let off = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: this thread stops using the alternate stack before its mapping, which
        // this value owns and nothing else refers to, is unmapped.
        unsafe {
            libc::sigaltstack(&off, ptr::null_mut());
            libc::munmap(self.base, self.len);
        }
        GUARD.with(|g| g.set((0, 0, "")));
    }
}

pub(super) fn page_size() -> usize {
    // SAFETY: `sysconf` reads a system value and touches none of our memory.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

/// Where a fault means the calling thread's stack is exhausted, as `std` reckons it on
/// Linux: the page below the lowest address the main thread's stack may grow to, or the
/// guard pages around the low end of a thread's stack (glibc counts them in the stack).
fn guard_range(page: usize) -> Option<(usize, usize)> {
    // SAFETY: `gettid` takes nothing and touches none of our memory. `attr` is initialised
    // by `pthread_getattr_np` before it is read, and destroyed once; the out-pointers are
    // to locals of the right types.
    unsafe {
        let main = libc::gettid() == libc::getpid();
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = ptr::null_mut();
        let mut size = 0usize;
        let mut guard = 0usize;
        let got = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0
            && libc::pthread_attr_getguardsize(&attr, &mut guard) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if !got {
            return None;
        }
        let low = (addr as usize).next_multiple_of(page);
        if main {
            Some((low - page, low))
        } else {
            Some((low - guard, low + guard))
        }
    }
}

/// The fault handler: a fault in this thread's guard range is told as `std` tells a stack
/// overflow, then aborts; any other puts the default action back and returns, so that the
/// fault, met again, kills the process as it would have (and a signal sent from outside is
/// caught this once, as by `std`).
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, end, name) = GUARD.try_with(Cell::get).unwrap_or((0, 0, ""));
    if start <= addr && addr < end {
        for part in [
            "\nthread '",
            name,
            "' has overflowed its stack\nfatal runtime error: stack overflow, aborting\n",
        ] {
            // SAFETY: `write` is async-signal-safe and reads only the bytes of `part`.
            unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
        }
        // SAFETY: `abort` is async-signal-safe.
        unsafe { libc::abort() };
    }
    // SAFETY: a zeroed `sigaction` is `SIG_DFL` with no flags, a valid disposition.
    unsafe {
        let action: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, &action, ptr::null_mut());
    }
}
