//! [`Ledger`]: the names a `SharedMemoryManager`'s server makes segments under, written down
//! before each segment exists, where the process that started the server reads them if the
//! server dies without removing them (SIGKILL), as Python's resource tracker does for a
//! killed process's segments.
//!
//! The ledger is an anonymous file (a memfd) that the starting process makes and the server
//! writes, as a row of records of one width: a tag (`+` for a name the server is about to
//! make or keeps, `-` for a free record), a name the server makes (`psm_` and 8 hex digits)
//! and a newline. A name is written into a free record (or a new one at the end) under the
//! `-` tag, and then its tag alone is set to `+`, a write of one byte; a name the server no
//! longer keeps (taken by another's segment, or removed by someone) has its tag set back to
//! `-`, and its record is used again. So the ledger holds as many records as the server ever
//! kept names at once, not one for each name it ever made, and a kill at any moment leaves
//! no record that holds `+` before a whole name: a record cut short, or anything but a name
//! the server makes, is passed over, so that a broken ledger can remove nothing else.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;

use crate::error::Result;
use crate::sys;

/// The most of a ledger read back: far more than the records of any server.
const MOST_READ: u64 = 64 << 20;

/// The length of a name the server makes: `psm_` and 8 hex digits.
const NAME: usize = 12;

/// One record: the tag, the name, a newline.
const RECORD_LEN: usize = 1 + NAME + 1;

/// The tag of a record that holds a name the server keeps.
const KEPT: u8 = b'+';

/// The tag of a free record.
const FREE: u8 = b'-';

/// Where a name is written down in a [`Ledger`], to take it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record(u64);

/// The names a server is about to make segments under or keeps.
#[derive(Debug)]
pub(super) struct Ledger {
    file: File,
    /// The records whose tag is `-`, to use again (the server's end only).
    free: Vec<u64>,
    /// Where the next new record goes (the server's end only).
    end: u64,
}

impl Ledger {
    /// A new, empty ledger, for a server about to start.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if no anonymous file can be made.
    pub(super) fn new() -> Result<Ledger> {
        Ok(Ledger::from(sys::anonymous_file(
            "tokio-multiprocessing-segments",
        )?))
    }

    /// The server's end: the same file, to pass to it.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the descriptor cannot be duplicated.
    pub(super) fn for_server(&self) -> Result<crate::wire::Fd> {
        Ok(crate::wire::Fd::from(OwnedFd::from(self.file.try_clone()?)))
    }

    /// Writes down that a segment is about to be made under `name`, a name
    /// [`generated_name`](crate::shared::generated_name) gave.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the record cannot be written, and
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a name of another form:
    /// the segment must not be made then.
    pub(super) fn note(&mut self, name: &str) -> Result<Record> {
        if !crate::shared::is_generated_name(name) {
            return Err(crate::Error::InvalidArgument(format!(
                "{name:?} is not a name a SharedMemoryManager makes"
            )));
        }
        let at = self.free.pop().unwrap_or_else(|| {
            self.end += RECORD_LEN as u64;
            self.end - RECORD_LEN as u64
        });
        let mut record = [0u8; RECORD_LEN];
        record[0] = FREE;
        record[1..=NAME].copy_from_slice(name.as_bytes());
        record[RECORD_LEN - 1] = b'\n';
        let written = self
            .file
            .write_all_at(&record, at)
            .and_then(|()| self.file.write_all_at(&[KEPT], at));
        if let Err(e) = written {
            self.free.push(at);
            return Err(e.into());
        }
        Ok(Record(at))
    }

    /// Takes out a name written down: no segment was made under it after all (it was
    /// taken), or the server no longer keeps it (someone removed it).
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the record cannot be written.
    pub(super) fn forget(&mut self, record: Record) -> Result<()> {
        self.file.write_all_at(&[FREE], record.0)?;
        self.free.push(record.0);
        Ok(())
    }

    /// Another handle to the same ledger, for tests that read what a server wrote.
    #[cfg(test)]
    pub(super) fn try_clone(&self) -> Result<Ledger> {
        Ok(Ledger::from(OwnedFd::from(self.file.try_clone()?)))
    }

    /// The bytes the ledger holds, for tests that check it does not grow.
    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }

    /// The names written down and not taken out, in the order of their records.
    pub(super) fn names(&self) -> Vec<String> {
        let mut bytes = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        while at < MOST_READ {
            match self.file.read_at(&mut chunk, at) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    bytes.extend_from_slice(&chunk[..n]);
                    at += n as u64;
                }
            }
        }
        bytes
            .chunks_exact(RECORD_LEN)
            .filter(|r| r[0] == KEPT && r[RECORD_LEN - 1] == b'\n')
            .filter_map(|r| std::str::from_utf8(&r[1..=NAME]).ok())
            .filter(|name| crate::shared::is_generated_name(name))
            .map(str::to_string)
            .collect()
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
        Ledger {
            file: File::from(fd),
            free: Vec::new(),
            end: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_noted_and_not_taken_out_and_nothing_else() {
        let mut l = Ledger::new().unwrap();
        let a = l.note("psm_0000000a").unwrap();
        let b = l.note("psm_0000000b").unwrap();
        l.forget(b).unwrap();
        l.note("psm_0000000c").unwrap();
        // Not a name the server makes: never written down.
        assert!(l.note("../etc/passwd").is_err());
        assert!(l.note("psm_12").is_err());
        assert_eq!(l.names(), ["psm_0000000a", "psm_0000000c"]);
        // The record taken out is used again: the ledger holds as many as were kept at once.
        assert_eq!(l.len(), 2 * RECORD_LEN as u64);
        l.forget(a).unwrap();
        l.note("psm_0000000d").unwrap();
        assert_eq!(l.len(), 2 * RECORD_LEN as u64);
        assert_eq!(l.names(), ["psm_0000000d", "psm_0000000c"]);
        // A record a kill cut short, or one whose name was being written when its tag was
        // still `-`, or garbage of the record's width: passed over.
        l.file
            .write_all_at(b"+psm_0000", 2 * RECORD_LEN as u64)
            .unwrap();
        assert_eq!(l.names(), ["psm_0000000d", "psm_0000000c"]);
        l.file
            .write_all_at(b"+../etc/pass\n-psm_0000000e\n", 2 * RECORD_LEN as u64)
            .unwrap();
        assert_eq!(l.names(), ["psm_0000000d", "psm_0000000c"]);
    }
}
