//! Spill files: memfds that carry a message too large for a queue's shared ring, and a
//! read-only view of one.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::shm::{sealed_memfd, size_sealed};

use nix::fcntl::SealFlag;

/// The largest spill file worth handing back for reuse.
pub(crate) const RECYCLE_MAX: usize = 2 * 1024 * 1024;

/// The seals every spill file carries: it can never shrink (a reader's mapping of it can
/// never lose its pages, which would kill the reader with `SIGBUS`), and no seal can be
/// added (none can make a writer's reuse of it fail).
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_SEAL);

/// A file for a spilled item to be written into: `reuse`, if one is given (its pages
/// already allocated; writing past its end grows it), else a fresh empty memfd sealed with
/// [`SEALS`]. The receiver is told the item's length; a reused file may be longer.
pub(crate) fn spill_file(reuse: Option<OwnedFd>) -> io::Result<OwnedFd> {
    match reuse {
        Some(fd) => Ok(fd),
        None => sealed_memfd(c"tokio-mp-item", 0, SEALS),
    }
}

/// Writes all of `data` to the spill file `fd` at `offset`, growing the file if need be.
pub(crate) fn write_at(fd: BorrowedFd<'_>, data: &[u8], offset: usize) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let at = libc::off_t::try_from(offset + done)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "spill offset too large"))?;
        match nix::sys::uio::pwrite(fd, &data[done..], at) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How many views of spill files a queue handle keeps mapped for their files' next items.
const KEPT: usize = 8;

/// Identifies a file while it lives: its device and inode numbers. A view keeps its file
/// alive, so no other file takes the same numbers while the view is kept.
type FileId = (u64, u64);

/// A read-only view of the first bytes of a spill file made by [`spill_file`].
///
/// The writer hands a spill file over and never touches it again until a reader is done
/// with it and has handed it back; a view kept after that ([`KeptViews`]) is read again only
/// once its file comes back in a later item. So the bytes do not change while they are read.
#[derive(Debug)]
pub(crate) struct SpillView {
    ptr: std::ptr::NonNull<u8>,
    /// Bytes mapped.
    mapped: usize,
    /// Bytes of the current item: the first `len` of those mapped.
    len: usize,
    file: FileId,
}

impl SpillView {
    /// Maps the first `mapped` bytes of a spill file, of which the current item is the
    /// first `len`.
    fn map(fd: BorrowedFd<'_>, file: FileId, mapped: usize, len: usize) -> io::Result<SpillView> {
        let Some(nz) = std::num::NonZeroUsize::new(mapped) else {
            return Ok(SpillView {
                ptr: std::ptr::NonNull::dangling(),
                mapped: 0,
                len: 0,
                file,
            });
        };
        // SAFETY: a fresh read-only private mapping of `mapped` bytes of a file at least that
        // long (checked by the caller) and sealed against shrinking, so its pages stay;
        // nobody writes them while they are read (see the type's docs); it aliases no Rust
        // object and is unmapped in `drop`.
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
            mapped,
            len,
            file,
        })
    }

    /// The current item's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `mapped >= len` readable bytes that nobody changes while the
        // current item is read (see the type's docs) for as long as `self` lives; for
        // `mapped == 0` it is a dangling, aligned, non-null pointer and `len` is 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Views of spill files kept mapped after their items were read: a file handed back for
/// reuse comes round again with a later item, and reading it through the view made the
/// first time costs no new mapping and no page faults. At most [`KEPT`] views, each of a
/// file no larger than [`RECYCLE_MAX`]; the least recently used goes first.
#[derive(Debug, Default)]
pub(crate) struct KeptViews {
    views: std::sync::Mutex<std::collections::VecDeque<SpillView>>,
}

impl KeptViews {
    /// A view of the first `len` bytes of a spill file: the one kept from the file's last
    /// item if it maps enough, else a new one. A shorter file is refused, and so is one not
    /// sealed against shrinking (a file that could shrink under the mapping would kill this
    /// process with `SIGBUS` when it reads the lost pages).
    pub(crate) fn view(&self, fd: BorrowedFd<'_>, len: usize) -> io::Result<SpillView> {
        if !size_sealed(fd)? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a spilled item came in a file that is not sealed against shrinking",
            ));
        }
        let stat = nix::sys::stat::fstat(fd)?;
        let size = usize::try_from(stat.st_size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))?;
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a spilled item announces {len} bytes but its file holds {size}"),
            ));
        }
        let file = (stat.st_dev as u64, stat.st_ino as u64);
        let kept = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            let at = views.iter().position(|v| v.file == file);
            at.and_then(|at| views.remove(at))
        };
        if let Some(mut view) = kept.filter(|v| v.mapped >= len) {
            view.len = len;
            return Ok(view);
        }
        // A file that may be kept is mapped whole, for its later, longer items.
        let mapped = if size <= RECYCLE_MAX { size } else { len };
        SpillView::map(fd, file, mapped, len)
    }

    /// Keeps `view` for its file's next item, if the file is small enough to come back.
    pub(crate) fn keep(&self, view: SpillView) {
        if view.mapped == 0 || view.mapped > RECYCLE_MAX {
            return;
        }
        let evicted = {
            let mut views = self.views.lock().unwrap_or_else(|p| p.into_inner());
            views.push_back(view);
            if views.len() > KEPT {
                views.pop_front()
            } else {
                None
            }
        };
        drop(evicted);
    }
}

// SAFETY: the view is read-only memory that no one writes while it lives (see `map`).
unsafe impl Send for SpillView {}
// SAFETY: as above.
unsafe impl Sync for SpillView {}

impl Drop for SpillView {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: the mapping was made in `map` with this address and length, and no
            // borrow of it outlives `self`.
            let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.mapped) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::os::fd::AsFd;

    #[test]
    fn a_spill_file_reads_back_and_cannot_shrink() {
        let views = KeptViews::default();
        let fd = spill_file(None).unwrap();
        write_at(fd.as_fd(), b"twelve bytes", 0).unwrap();
        let view = views.view(fd.as_fd(), 12).unwrap();
        assert_eq!(view.bytes(), b"twelve bytes");
        // Whoever holds the file (a peer, say) cannot take pages from under the mapping.
        let e = nix::unistd::ftruncate(&fd, 4).unwrap_err();
        assert_eq!(e, nix::errno::Errno::EPERM);
        assert_eq!(view.bytes(), b"twelve bytes");
        drop(view);
        // A file reused for a longer item grows to hold it.
        let fd = spill_file(Some(fd)).unwrap();
        write_at(fd.as_fd(), &[7u8; 5000], 0).unwrap();
        let view = views.view(fd.as_fd(), 5000).unwrap();
        assert!(view.bytes().iter().all(|&b| b == 7));
    }

    #[test]
    fn a_kept_view_reads_its_files_next_item() {
        let views = KeptViews::default();
        let fd = spill_file(None).unwrap();
        write_at(fd.as_fd(), &[1u8; 8192], 0).unwrap();
        let view = views.view(fd.as_fd(), 8192).unwrap();
        let at = view.bytes().as_ptr();
        views.keep(view);
        // The file comes back with a shorter item: read through the same mapping.
        write_at(fd.as_fd(), &[2u8; 100], 0).unwrap();
        let view = views.view(fd.as_fd(), 100).unwrap();
        assert_eq!(view.bytes(), &[2u8; 100][..]);
        assert_eq!(view.bytes().as_ptr(), at, "the kept mapping was not used");
        views.keep(view);
        // And with a longer one than was mapped: mapped again, whole.
        write_at(fd.as_fd(), &[3u8; 20_000], 0).unwrap();
        let view = views.view(fd.as_fd(), 20_000).unwrap();
        assert!(view.bytes().iter().all(|&b| b == 3));
        // Another file is never read through this file's view.
        views.keep(view);
        let other = spill_file(None).unwrap();
        write_at(other.as_fd(), &[4u8; 10], 0).unwrap();
        assert_eq!(
            views.view(other.as_fd(), 10).unwrap().bytes(),
            &[4u8; 10][..]
        );
    }

    #[test]
    fn views_beyond_the_kept_number_are_unmapped() {
        let views = KeptViews::default();
        let files: Vec<_> = (0..KEPT + 3)
            .map(|i| {
                let fd = spill_file(None).unwrap();
                write_at(fd.as_fd(), &[i as u8; 64], 0).unwrap();
                fd
            })
            .collect();
        for fd in &files {
            views.keep(views.view(fd.as_fd(), 64).unwrap());
        }
        let kept = views.views.lock().unwrap();
        assert_eq!(kept.len(), KEPT);
        // The latest are kept.
        let last = nix::sys::stat::fstat(files[KEPT + 2].as_fd()).unwrap();
        assert!(kept.iter().any(|v| v.file.1 == last.st_ino as u64));
    }

    #[test]
    fn a_file_not_sealed_against_shrinking_is_refused() {
        let fd = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let e = KeptViews::default().view(fd.as_fd(), 16).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("sealed"), "{e}");
    }
}
