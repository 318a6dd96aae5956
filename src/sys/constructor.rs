//! The one function of the crate that runs before `main`: an entry in the executable's
//! `.init_array`, which the dynamic loader (or a static binary's start code) calls once the
//! C library is ready and before Rust's `main`. A re-executed child takes its role there
//! ([`crate::start::before_main`]), so it never runs any of the program's `main`: not a test
//! harness's, not code that a program runs before [`init`](crate::init).
//!
//! Rust's own start-up (`std::rt::init`) has not run yet at this point. What a child needs of
//! it is set up by `before_main` itself: SIGPIPE ignored and stack overflows reported, as
//! `std` does them. The allocator, threads, the environment, `std::env::args` (filled from
//! `std`'s own, earlier, `.init_array.00099` entry) and tokio all work.

/// The constructor's entry. The linker places plain `.init_array` entries after those with a
/// priority, so `std`'s argument capture has run before it.
#[used]
// SAFETY: `.init_array` holds pointers to functions the start code calls with no argument
// requirement beyond the C ABI (glibc passes argc, argv and envp, which a function taking
// none may ignore under the C calling convention); the static is exactly one such pointer.
#[unsafe(link_section = ".init_array")]
static BEFORE_MAIN: extern "C" fn() = before_main;

/// Names the constructor from code that every start of a child runs. A linker takes from a
/// library only the object files that something names; `#[used]` keeps the entry in its
/// object file but does not make the linker take that file. With this call, a program that
/// links the code that starts children links the constructor those children need.
pub(crate) fn keep_constructor() {
    std::hint::black_box(&BEFORE_MAIN);
}

extern "C" fn before_main() {
    crate::start::before_main()
}
