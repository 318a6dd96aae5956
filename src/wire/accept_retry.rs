//! [`AcceptRetry`]: how a server's accept loop waits after a failed `accept` (out of
//! descriptors, say), so that a failure that lasts neither spins nor floods the log.

use std::time::Duration;

/// The first wait after a failed `accept`.
const FIRST: Duration = Duration::from_millis(10);

/// The longest wait between tries while `accept` keeps failing.
const LONGEST: Duration = Duration::from_secs(1);

/// The wait before the next `accept` after failures in a row: it doubles with each, from
/// [`FIRST`] to [`LONGEST`], and starts again after a success.
#[derive(Debug, Default)]
pub(crate) struct AcceptRetry {
    wait: Duration,
}

impl AcceptRetry {
    /// An `accept` succeeded: the next failure waits [`FIRST`] again.
    pub(crate) fn succeeded(&mut self) {
        self.wait = Duration::ZERO;
    }

    /// `server`'s `accept` failed with `e`: logs it (at `warn` the first of a run, then at
    /// `debug`) and returns how long to wait before the next try.
    pub(crate) fn failed(&mut self, server: &str, e: &std::io::Error) -> Duration {
        let (wait, first) = self.next_wait();
        if first {
            tracing::warn!("{server}: cannot accept a connection (trying again): {e}");
        } else {
            tracing::debug!("{server}: cannot accept a connection: {e}");
        }
        wait
    }

    /// The wait before the next try, and whether this failure is the first of a run.
    fn next_wait(&mut self) -> (Duration, bool) {
        let first = self.wait.is_zero();
        self.wait = (self.wait * 2).clamp(FIRST, LONGEST);
        (self.wait, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_the_longest_and_start_again_after_a_success() {
        let mut r = AcceptRetry::default();
        assert_eq!(r.next_wait(), (FIRST, true));
        assert_eq!(r.next_wait(), (FIRST * 2, false));
        for _ in 0..20 {
            r.next_wait();
        }
        assert_eq!(r.next_wait(), (LONGEST, false));
        r.succeeded();
        assert_eq!(r.next_wait(), (FIRST, true));
    }
}
