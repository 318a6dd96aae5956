//! Spill files: memfds that carry a message too large for a queue's shared ring, and views
//! of them: read-only for a reader, writable for a writer that reuses one.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::fd::FileId;
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

/// A mapping of the first bytes of a spill file made by [`spill_file`], unmapped when
/// dropped: read-only and private for a reader, shared and writable for a writer.
///
/// The writer hands a spill file over and never touches it again until a reader is done
/// with it and has handed it back; a mapping kept after that ([`KeptViews`]) is used again
/// only once its file comes back, to its process, in a later item. So the bytes do not
/// change while they are read, and nobody reads them while they are written.
#[derive(Debug)]
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    /// Bytes mapped.
    mapped: usize,
    writable: bool,
    /// The file's identity: the view keeps the file alive, so no other file takes the same
    /// numbers while the view is kept.
    file: FileId,
}

impl Mapping {
    /// Maps the first `mapped` bytes of the spill file `fd`, identified by `file`.
    fn new(fd: BorrowedFd<'_>, file: FileId, mapped: usize, writable: bool) -> io::Result<Mapping> {
        use nix::sys::mman::{MapFlags, ProtFlags};
        let Some(nz) = std::num::NonZeroUsize::new(mapped) else {
            return Ok(Mapping {
                ptr: std::ptr::NonNull::dangling(),
                mapped: 0,
                writable,
                file,
            });
        };
        let (prot, share) = if writable {
            (
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        } else {
            (ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE)
        };
        // SAFETY: a fresh mapping of `mapped` bytes of a file at least that long (checked by
        // the callers) and sealed against shrinking, so its pages stay; it aliases no Rust
        // object, is read or written only as the type's docs say, and is unmapped in `drop`.
        let ptr =
            unsafe { nix::sys::mman::mmap(None, nz, prot, share | MapFlags::MAP_POPULATE, fd, 0) }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            mapped,
            writable,
            file,
        })
    }
}

// SAFETY: the mapping is memory that only its holder reads or writes while it holds it (see
// the type's docs).
unsafe impl Send for Mapping {}
// SAFETY: as above; a shared reference only reads.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.mapped > 0 {
            // SAFETY: the mapping was made in `new` with this address and length, and no
            // borrow of it outlives `self`.
            let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.mapped) };
        }
    }
}

/// A read-only view of the first bytes of a spill file: its current item.
#[derive(Debug)]
pub(crate) struct SpillView {
    map: Mapping,
    /// Bytes of the current item: the first `len` of those mapped.
    len: usize,
}

impl SpillView {
    /// The current item's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `mapped >= len` readable bytes that nobody changes while the
        // current item is read (see `Mapping`) for as long as `self` lives; for
        // `mapped == 0` it is a dangling, aligned, non-null pointer and `len` is 0.
        unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr(), self.len) }
    }
}

/// A writable view of the whole of a spill file taken back for reuse: the next item is
/// copied into the file's pages without a system call, and, once kept, without a page
/// fault either.
#[derive(Debug)]
pub(crate) struct SpillWriter {
    map: Mapping,
}

impl SpillWriter {
    /// Copies as much of `data` as the mapping holds from `offset` on: the bytes copied.
    pub(crate) fn write_at(&mut self, data: &[u8], offset: usize) -> usize {
        let n = data.len().min(self.map.mapped.saturating_sub(offset));
        if n > 0 {
            // SAFETY: `offset + n <= mapped` bytes are mapped writable and shared; while this
            // process holds the file, nobody else reads or writes them (see `Mapping`), and
            // no Rust reference points into them; `data` is not in the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.ptr.as_ptr().add(offset), n)
            };
        }
        n
    }
}

/// Mappings of spill files kept after their items were read or written: a file handed back
/// for reuse comes round again with a later item, and going through the mapping made the
/// first time costs no new mapping and no page faults. At most [`KEPT`] of them, each of a
/// file no larger than [`RECYCLE_MAX`]; the least recently used goes first.
#[derive(Debug, Default)]
pub(crate) struct KeptViews {
    kept: std::sync::Mutex<std::collections::VecDeque<Mapping>>,
}

impl KeptViews {
    /// A view of the first `len` bytes of a spill file: the one kept from the file's last
    /// item if it maps enough, else a new one. A shorter file is refused, and so is one not
    /// sealed against shrinking (a file that could shrink under the mapping would kill this
    /// process with `SIGBUS` when it reads the lost pages).
    pub(crate) fn view(&self, fd: BorrowedFd<'_>, len: usize) -> io::Result<SpillView> {
        let Some((file, size)) = sealed_size(fd)? else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a spilled item came in a file that is not sealed against shrinking",
            ));
        };
        if size < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a spilled item announces {len} bytes but its file holds {size}"),
            ));
        }
        if let Some(map) = self.take(file, false, len) {
            return Ok(SpillView { map, len });
        }
        // A file that may be kept is mapped whole, for its later, longer items.
        let mapped = if size <= RECYCLE_MAX { size } else { len };
        let map = Mapping::new(fd, file, mapped, false)?;
        Ok(SpillView { map, len })
    }

    /// A writable view of the whole of a spill file handed back for reuse: the one kept
    /// from the file's last item if it maps the whole file, else a new one. `None` for a
    /// file that is empty, larger than [`RECYCLE_MAX`] or not sealed against shrinking: it
    /// is written with system calls instead.
    pub(crate) fn writer(&self, fd: BorrowedFd<'_>) -> io::Result<Option<SpillWriter>> {
        let Some((file, size)) = sealed_size(fd)? else {
            return Ok(None);
        };
        if size == 0 || size > RECYCLE_MAX {
            return Ok(None);
        }
        let map = match self.take(file, true, size) {
            Some(map) => map,
            None => Mapping::new(fd, file, size, true)?,
        };
        Ok(Some(SpillWriter { map }))
    }

    /// Keeps `view` for its file's next item, if the file is small enough to come back.
    pub(crate) fn keep(&self, view: SpillView) {
        self.put(view.map);
    }

    /// Keeps `writer` for its file's next item.
    pub(crate) fn keep_writer(&self, writer: SpillWriter) {
        self.put(writer.map);
    }

    /// The kept mapping of `file`, if there is one: `None` (and the mapping dropped) unless
    /// it is of the kind asked for and maps at least `len` bytes.
    fn take(&self, file: FileId, writable: bool, len: usize) -> Option<Mapping> {
        let kept = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let at = kept.iter().position(|m| m.file == file);
            at.and_then(|at| kept.remove(at))
        };
        kept.filter(|m| m.writable == writable && m.mapped >= len)
    }

    /// Keeps `map`, if it maps a file small enough to come back.
    fn put(&self, map: Mapping) {
        if map.mapped == 0 || map.mapped > RECYCLE_MAX {
            return;
        }
        let evicted = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.push_back(map);
            if kept.len() > KEPT {
                kept.pop_front()
            } else {
                None
            }
        };
        drop(evicted);
    }
}

/// A spill file's identity and size, if it is sealed against shrinking.
fn sealed_size(fd: BorrowedFd<'_>) -> io::Result<Option<(FileId, usize)>> {
    if !size_sealed(fd)? {
        return Ok(None);
    }
    let stat = nix::sys::stat::fstat(fd)?;
    let size = usize::try_from(stat.st_size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative size"))?;
    Ok(Some(((stat.st_dev as u64, stat.st_ino as u64), size)))
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
        let kept = views.kept.lock().unwrap();
        assert_eq!(kept.len(), KEPT);
        // The latest are kept.
        let last = nix::sys::stat::fstat(files[KEPT + 2].as_fd()).unwrap();
        assert!(kept.iter().any(|v| v.file.1 == last.st_ino as u64));
    }

    #[test]
    fn a_writer_fills_a_reused_file_through_its_view_and_grows_it_past_it() {
        let (views, writers) = (KeptViews::default(), KeptViews::default());
        let fd = spill_file(None).unwrap();
        write_at(fd.as_fd(), &[1u8; 8192], 0).unwrap();
        let mut writer = writers.writer(fd.as_fd()).unwrap().unwrap();
        // The view holds the file's 8192 bytes; the rest is the caller's to write.
        assert_eq!(writer.write_at(&[2u8; 10_000], 0), 8192);
        assert_eq!(writer.write_at(&[2u8; 10], 8192), 0);
        write_at(fd.as_fd(), &[2u8; 10_000 - 8192], 8192).unwrap();
        let view = views.view(fd.as_fd(), 10_000).unwrap();
        assert!(view.bytes().iter().all(|&b| b == 2));
        views.keep(view);
        writers.keep_writer(writer);
        // The file grew past the kept view: it is mapped whole again.
        let mut writer = writers.writer(fd.as_fd()).unwrap().unwrap();
        assert_eq!(writer.write_at(&[3u8; 10_000], 0), 10_000);
        writers.keep_writer(writer);
        // And a kept view that holds the whole file is used again.
        let mut writer = writers.writer(fd.as_fd()).unwrap().unwrap();
        assert_eq!(writer.write_at(&[4u8; 100], 50), 100);
        let view = views.view(fd.as_fd(), 10_000).unwrap();
        let bytes = view.bytes();
        assert!(bytes[..50].iter().chain(&bytes[150..]).all(|&b| b == 3));
        assert!(bytes[50..150].iter().all(|&b| b == 4));
    }

    #[test]
    fn no_writer_for_a_file_empty_unsealed_or_too_large_to_reuse() {
        let writers = KeptViews::default();
        let empty = spill_file(None).unwrap();
        assert!(writers.writer(empty.as_fd()).unwrap().is_none());
        let large = spill_file(None).unwrap();
        nix::unistd::ftruncate(&large, (RECYCLE_MAX + 1) as i64).unwrap();
        assert!(writers.writer(large.as_fd()).unwrap().is_none());
        let plain = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&plain, 4096).unwrap();
        assert!(writers.writer(plain.as_fd()).unwrap().is_none());
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
