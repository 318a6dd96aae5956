//! Spill files: memfds that carry a message too large for a queue's shared ring, and a
//! read-only view of one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::fd::file_size;

use nix::sys::memfd::{MFdFlags, memfd_create};

/// The largest spill file worth handing back for reuse.
pub(crate) const RECYCLE_MAX: usize = 2 * 1024 * 1024;

/// A memfd holding `data` from offset 0: `reuse`, if it is given and large enough (its pages
/// already allocated), else a fresh one of exactly that size. The receiver is told the
/// length; a reused file may be longer.
pub(crate) fn spill_memfd(reuse: Option<OwnedFd>, data: &[u8]) -> io::Result<OwnedFd> {
    let fd = match reuse {
        Some(fd) if file_size(fd.as_fd())? >= data.len() => fd,
        _ => {
            let fd = memfd_create(c"tokio-mp-item", MFdFlags::MFD_CLOEXEC)?;
            nix::unistd::ftruncate(&fd, data.len() as libc::off_t)?;
            fd
        }
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
    /// Maps the first `len` bytes of a spill file; a shorter file is refused.
    ///
    /// The writer hands a spill file over and never touches it again until a reader has
    /// unmapped it and handed it back, so the bytes do not change under the view.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SpillView> {
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
