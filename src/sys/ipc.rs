//! Descriptors for messaging between processes: packet sockets, eventfd counters, memfd
//! spill files, and random bytes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt};

use super::cvt;

/// Asks for a send buffer of `bytes`: beyond the administrator's limit when the process may
/// (`SO_SNDBUFFORCE`, root), else up to it (`SO_SNDBUF`, capped by `net.core.wmem_max`).
pub(crate) fn grow_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    if setsockopt(&fd, sockopt::SndBufForce, &bytes).is_ok() {
        return Ok(());
    }
    let max = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(bytes);
    Ok(setsockopt(&fd, sockopt::SndBuf, &bytes.min(max))?)
}

/// Shuts one direction of a socket down for every holder of it.
pub(crate) fn shutdown_socket(fd: BorrowedFd<'_>, read: bool, write: bool) -> io::Result<()> {
    let how = match (read, write) {
        (true, true) => Shutdown::Both,
        (true, false) => Shutdown::Read,
        (false, true) => Shutdown::Write,
        (false, false) => return Ok(()),
    };
    Ok(shutdown(fd.as_raw_fd(), how)?)
}

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

/// The size of a file.
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let size = nix::sys::stat::fstat(fd)?.st_size;
    usize::try_from(size).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))
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

/// Fills `buf` with random bytes from the kernel (`getrandom(2)`).
pub(crate) fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we borrow
        // mutably for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match cvt(n) {
            Ok(n) => done += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
