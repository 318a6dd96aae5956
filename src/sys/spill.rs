//! Spill files: memfds that carry a message too large for a queue's shared ring, and a
//! read-only view of one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::fd::file_size;
use super::shm::{sealed_memfd, size_sealed};

use nix::fcntl::SealFlag;

/// The largest spill file worth handing back for reuse.
pub(crate) const RECYCLE_MAX: usize = 2 * 1024 * 1024;

/// The seals every spill file carries: it can never shrink (a reader's mapping of it can
/// never lose its pages, which would kill the reader with `SIGBUS`), and no seal can be
/// added (none can make a writer's reuse of it fail).
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_SEAL);

/// A memfd holding `data` from offset 0: `reuse`, if it is given and large enough (its pages
/// already allocated), else a fresh one of exactly that size, sealed with [`SEALS`]. The
/// receiver is told the length; a reused file may be longer.
pub(crate) fn spill_memfd(reuse: Option<OwnedFd>, data: &[u8]) -> io::Result<OwnedFd> {
    let fd = match reuse {
        Some(fd) if file_size(fd.as_fd())? >= data.len() => fd,
        _ => sealed_memfd(c"tokio-mp-item", data.len(), SEALS)?,
    };
    let mut done = 0;
    while done < data.len() {
        match nix::sys::uio::pwrite(&fd, &data[done..], done as libc::off_t) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(fd)
}

/// A read-only view of the first bytes of a spill file made by [`spill_memfd`].
#[derive(Debug)]
pub(crate) struct SpillView {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl SpillView {
    /// Maps the first `len` bytes of a spill file; a shorter file is refused, and so is
    /// one not sealed against shrinking (a file that could shrink under the mapping would
    /// kill this process with `SIGBUS` when it reads the lost pages).
    ///
    /// The writer hands a spill file over and never touches it again until a reader has
    /// unmapped it and handed it back, so the bytes do not change under the view.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SpillView> {
        if !size_sealed(fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a spilled item came in a file that is not sealed against shrinking",
            ));
        }
        let size = file_size(fd)?;
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a spilled item announces {len} bytes but its file holds {size}"),
            ));
        }
        let Some(nz) = std::num::NonZeroUsize::new(len) else {
            return Ok(SpillView {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
            });
        };
        // SAFETY: a fresh read-only private mapping of `len` bytes of a file at least that
        // long (checked above), whose writer no longer touches it (see above); it aliases no
        // Rust object and is unmapped in `drop`.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                nz,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_PRIVATE | nix::sys::mman::MapFlags::MAP_POPULATE,
                fd,
                0,
            )
        }?;
        Ok(SpillView {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The file's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes that nobody can change (see `map`) for as
        // long as `self` lives; for `len == 0` it is a dangling, aligned, non-null pointer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the view is read-only memory that no one writes while it lives (see `map`).
unsafe impl Send for SpillView {}
// SAFETY: as above.
unsafe impl Sync for SpillView {}

impl Drop for SpillView {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping was made in `map` with this address and length, and no
            // borrow of it outlives `self`.
            let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{MFdFlags, memfd_create};

    #[test]
    fn a_spill_file_reads_back_and_cannot_shrink() {
        let fd = spill_memfd(None, b"twelve bytes").unwrap();
        let view = SpillView::map(fd.as_fd(), 12).unwrap();
        assert_eq!(view.bytes(), b"twelve bytes");
        // Whoever holds the file (a peer, say) cannot take pages from under the mapping.
        let e = nix::unistd::ftruncate(&fd, 4).unwrap_err();
        assert_eq!(e, nix::errno::Errno::EPERM);
        assert_eq!(view.bytes(), b"twelve bytes");
        drop(view);
        // A file too small for the next item is replaced by a sealed one that holds it.
        let fd = spill_memfd(Some(fd), &[7u8; 5000]).unwrap();
        let view = SpillView::map(fd.as_fd(), 5000).unwrap();
        assert!(view.bytes().iter().all(|&b| b == 7));
    }

    #[test]
    fn a_file_not_sealed_against_shrinking_is_refused() {
        let fd = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let e = SpillView::map(fd.as_fd(), 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("sealed"), "{e}");
    }
}
