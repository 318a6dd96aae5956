//! The tokio runtime that a wait needs: the one this thread runs in, or a panic that says
//! what to do.

/// The runtime this thread runs in, for a wait (a queue's `get`, an event's `wait`) to be
/// woken through its reactor.
///
/// # Panics
/// On a thread that runs none: a plain `fn` target that drives a wait with
/// `futures::executor::block_on`, say, which has no reactor. The message says what to do,
/// where tokio's own ("no reactor running") names neither this crate nor the way out.
pub(crate) fn current() -> tokio::runtime::Handle {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle,
        Err(_) => panic!(
            "tokio-multiprocessing: this call waits through a tokio runtime's reactor, and \
             this thread runs none: make the target an `async fn` (a child or a pool worker \
             then runs it on a runtime of its own), or call it inside `#[tokio::main]` or \
             `Runtime::block_on` (`futures::executor::block_on` has no reactor)"
        ),
    }
}

#[cfg(test)]
mod tests {
    /// A wait begun on a thread with no runtime panics saying what to do.
    #[test]
    fn outside_a_runtime_the_panic_says_to_make_the_target_async() {
        let panicked = std::panic::catch_unwind(super::current).expect_err("no runtime here");
        let message = panicked.downcast_ref::<&str>().copied().unwrap_or_default();
        assert!(
            message.contains("tokio-multiprocessing") && message.contains("`async fn`"),
            "{message:?}"
        );
    }
}
