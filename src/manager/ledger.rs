//! [`Ledger`]: the names a `SharedMemoryManager`'s server makes segments under, written down
//! before each segment exists, where the process that started the server reads them if the
//! server dies without removing them (SIGKILL), as Python's resource tracker does for a
//! killed process's segments.
//!
//! The ledger is an anonymous file (a memfd) that the starting process makes and the server
//! writes: a line `+name` before a segment is made under `name`, a line `-name` if the name
//! turned out to be taken (by a segment the server did not make). A line cut short by a kill
//! is passed over, and so is a name that is not one the server makes (`psm_` and hex
//! digits), so that a broken ledger can remove nothing else.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use crate::error::Result;
use crate::sys;

/// The most of a ledger read back: far more than the names of any server (each is 13 bytes).
const MOST_READ: u64 = 64 << 20;

/// The names a server is about to make segments under, and those it did not make after all.
#[derive(Debug)]
pub(super) struct Ledger(File);

impl Ledger {
    /// A new, empty ledger, for a server about to start.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if no anonymous file can be made.
    pub(super) fn new() -> Result<Ledger> {
        Ok(Ledger(File::from(sys::anonymous_file(
            "tokio-multiprocessing-segments",
        )?)))
    }

    /// The server's end: the same file, to pass to it.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the descriptor cannot be duplicated.
    pub(super) fn for_server(&self) -> Result<crate::wire::Fd> {
        Ok(crate::wire::Fd::from(OwnedFd::from(self.0.try_clone()?)))
    }

    /// Writes down that a segment is about to be made under `name`.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the line cannot be written: the segment must not be
    /// made then.
    pub(super) fn note(&self, name: &str) -> Result<()> {
        Ok((&self.0).write_all(format!("+{name}\n").as_bytes())?)
    }

    /// Writes down that no segment was made under `name` (it was taken).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the line cannot be written.
    pub(super) fn retract(&self, name: &str) -> Result<()> {
        Ok((&self.0).write_all(format!("-{name}\n").as_bytes())?)
    }

    /// Another handle to the same ledger, for tests that read what a server wrote.
    #[cfg(test)]
    pub(super) fn try_clone(&self) -> Result<Ledger> {
        Ok(Ledger(self.0.try_clone()?))
    }

    /// The names written down and not retracted, in the order they were noted.
    pub(super) fn names(&self) -> Vec<String> {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < MOST_READ {
            match self.0.read_at(&mut chunk, at) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    at += n as u64;
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        // Only whole lines: the last one may have been cut short by a kill.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let mut noted = Vec::new();
        let mut retracted = HashSet::new();
        for line in whole.lines() {
            match line.split_at_checked(1) {
                Some(("+", name)) if crate::shared::is_generated_name(name) => {
                    noted.push(name.to_string())
                }
                Some(("-", name)) => {
                    retracted.insert(name.to_string());
                }
                _ => {}
            }
        }
        noted.retain(|n| !retracted.contains(n));
        noted
    }

    /// Removes every segment written down whose name is still there, once the server is
    /// gone; returns how many it removed. A server that stopped in its own time removed
    /// them all already, so this finds none; one killed by SIGKILL left them.
    pub(super) fn sweep(&self) -> usize {
        let mut removed = 0;
        for name in self.names() {
            match sys::shm_remove(&name) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!(name, "a segment could not be removed: {e}"),
            }
        }
        if removed > 0 {
            tracing::warn!(
                removed,
                "a SharedMemoryManager's server died without removing its shared memory \
                 segments (killed by SIGKILL?); they have been removed"
            );
        }
        removed
    }
}

impl From<OwnedFd> for Ledger {
    /// The server's end of a ledger, as [`for_server`](Ledger::for_server) passed it.
    fn from(fd: OwnedFd) -> Ledger {
        Ledger(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_noted_and_not_retracted_and_nothing_else() {
        let l = Ledger::new().unwrap();
        l.note("psm_0000000a").unwrap();
        l.note("psm_0000000b").unwrap();
        l.retract("psm_0000000b").unwrap();
        l.note("psm_0000000c").unwrap();
        // Not a name the server makes: never removed, whatever the ledger says.
        l.note("../etc/passwd").unwrap();
        l.note("psm_12").unwrap();
        // A line a kill cut short.
        (&l.0).write_all(b"+psm_0000000d").unwrap();
        assert_eq!(l.names(), ["psm_0000000a", "psm_0000000c"]);
    }
}
