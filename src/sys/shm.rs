//! Shared memory: memfd and POSIX (`/dev/shm`) segments mapped `MAP_SHARED`, with the typed
//! accessors the synchronisation primitives and shared values are built on.
//!
//! A [`SharedRegion`] owns a descriptor and its mapping. Everything above this module sees
//! only safe views of it: atomics at checked, aligned offsets, and copies of plain-old-data
//! values in and out. Other processes map the same pages, so a plain (non-atomic) access may
//! race with a write in another process; such accesses are volatile copies of [`Pod`] values,
//! for which every bit pattern another process of the same binary can store is a valid value.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::{align_of, size_of};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;

/// Plain old data that may live in memory shared between processes.
///
/// Implemented for the integer and floating-point types and `bool`. Implement it for your own
/// `#[repr(C)]` type to put it in a [`Value`](crate::Value) or an [`Array`](crate::Array).
///
/// ```
/// #[derive(Clone, Copy)]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
/// // SAFETY: two f64s: no pointers, every bit pattern is a valid Point.
/// unsafe impl tokio_multiprocessing::Pod for Point {}
/// let p = tokio_multiprocessing::RawValue::new(Point { x: 1.0, y: 2.0 })?;
/// assert_eq!(p.get().y, 2.0);
/// # Ok::<(), tokio_multiprocessing::Error>(())
/// ```
///
/// Types that own memory elsewhere are refused:
///
/// ```compile_fail
/// let s = tokio_multiprocessing::RawValue::new(String::from("a pointer into one process"));
/// ```
///
/// # Safety
/// The implementer promises that `T`:
/// - holds no pointers, references, descriptors or anything else that means something only
///   inside one process (the bytes are copied to other processes as they are);
/// - is valid for every bit pattern that a value of `T` written by the same binary can leave
///   in memory (no niches that a torn or foreign write could violate, no `Drop`);
/// - has an alignment of at most 64 bytes.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive number or bool: no pointers, no drop glue, alignment <= 16, and
        // every value the binary writes is read back as a valid value.
        unsafe impl Pod for $t {}
    )*};
}
pod!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool
);

/// The seals of an anonymous segment: its size can change no more, nor its seals.
const SIZE_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// A memfd of `len` bytes (zero-filled), close-on-exec, sealed with `seals`.
pub(super) fn sealed_memfd(name: &CStr, len: usize, seals: SealFlag) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, to_off(len)?)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// Whether `fd` is a memfd whose size cannot shrink.
pub(super) fn size_sealed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_SHRINK)),
        // Not a memfd at all (a file, a named segment).
        Err(nix::errno::Errno::EINVAL) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A memory segment mapped shared, read-write, together with the descriptor that names it.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is a block of shared memory that every access reaches through atomics or
// volatile copies (the accessors below); it is owned by no thread, so handing it to another
// thread or sharing it between threads is as sound as sharing it between processes.
unsafe impl Send for SharedRegion {}
// SAFETY: see `Send`: `&SharedRegion` gives only atomics and volatile copies.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// A new anonymous segment of `len` bytes (zero-filled), from `memfd_create`. It lives as
    /// long as some process holds its descriptor or mapping, and never leaks a name. Its
    /// size is sealed: no holder of the descriptor can shrink it under another's mapping
    /// (whose next access to a lost page would be a `SIGBUS`).
    pub(crate) fn anonymous(name: &str, len: usize) -> io::Result<SharedRegion> {
        let cname = CString::new(name).map_err(|_| invalid("a segment name holds a NUL byte"))?;
        SharedRegion::map(sealed_memfd(&cname, len, SIZE_SEALS)?, len)
    }

    /// Maps an anonymous segment received from another process; its size comes from
    /// `fstat`. One whose size is not sealed (see [`anonymous`](Self::anonymous)) is
    /// refused: it could shrink under the mapping.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<SharedRegion> {
        if !size_sealed(fd.as_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a shared segment whose size is not sealed (not made by this crate): it could \
                 shrink under the mapping",
            ));
        }
        SharedRegion::from_named_fd(fd)
    }

    /// [`from_named_fd`](Self::from_named_fd) for a segment that is `named`, else
    /// [`from_fd`](Self::from_fd).
    pub(crate) fn from_fd_named(fd: OwnedFd, named: bool) -> io::Result<SharedRegion> {
        match named {
            true => SharedRegion::from_named_fd(fd),
            false => SharedRegion::from_fd(fd),
        }
    }

    /// Maps a segment received from another process or opened by name, which may be a
    /// named POSIX segment (whose size anyone who can open it may change, as in Python).
    pub(crate) fn from_named_fd(fd: OwnedFd) -> io::Result<SharedRegion> {
        let len = super::fd::file_size(fd.as_fd())?;
        SharedRegion::map(fd, len)
    }

    /// Maps `len` bytes of `fd`, which the caller made (or measured) to be that long.
    pub(super) fn map(fd: OwnedFd, len: usize) -> io::Result<SharedRegion> {
        let nz = NonZeroUsize::new(len).ok_or_else(|| invalid("a shared segment of 0 bytes"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, so nothing of ours
        // is replaced), shared, of a descriptor we own; the pointer is kept with its length
        // and unmapped exactly once, in `Drop`.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }?;
        Ok(SharedRegion {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    /// The segment's size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The descriptor behind the mapping (to pass the segment to another process).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The start of the mapping, page-aligned, valid for [`len`](Self::len) bytes as long as
    /// `self` lives; for layouts in `sys` that manage their own access protocol.
    pub(super) fn base(&self) -> NonNull<u8> {
        self.ptr
    }

    fn check<T>(&self, offset: usize) {
        let end = offset.checked_add(size_of::<T>());
        assert!(
            end.is_some_and(|e| e <= self.len) && offset.is_multiple_of(align_of::<T>()),
            "shared-memory access of {} bytes at offset {offset} outside a {}-byte segment \
             or misaligned",
            size_of::<T>(),
            self.len
        );
    }

    /// The `AtomicU32` at `offset`.
    ///
    /// # Panics
    /// If `offset` is misaligned or out of the segment (a layout bug of the caller: callers
    /// check the segment's size when they receive it).
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.check::<AtomicU32>(offset);
        // SAFETY: in bounds and aligned (checked just above; the mapping is page-aligned);
        // the memory is initialised (zero-filled by the kernel, then written only through
        // atomics and volatile copies) and stays mapped as long as `&self` lives.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The `AtomicU64` at `offset`.
    ///
    /// # Panics
    /// As [`u32_at`](Self::u32_at).
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.check::<AtomicU64>(offset);
        // SAFETY: as in `u32_at`.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// A volatile copy of the `T` at `offset`.
    ///
    /// # Panics
    /// As [`u32_at`](Self::u32_at).
    pub(crate) fn read<T: Pod>(&self, offset: usize) -> T {
        self.check::<T>(offset);
        // SAFETY: in bounds and aligned (checked above), initialised memory that stays mapped
        // while `&self` lives; `T: Pod` is valid for every pattern the binary writes. The
        // read is volatile because other processes write the same pages.
        unsafe { self.ptr.as_ptr().add(offset).cast::<T>().read_volatile() }
    }

    /// A volatile store of `value` at `offset`.
    ///
    /// # Panics
    /// As [`u32_at`](Self::u32_at).
    pub(crate) fn write<T: Pod>(&self, offset: usize, value: T) {
        self.check::<T>(offset);
        // SAFETY: in bounds and aligned (checked above), writable shared memory that stays
        // mapped while `&self` lives; no Rust reference to these bytes exists (accessors hand
        // out copies only), so the store aliases nothing.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<T>()
                .write_volatile(value)
        }
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`; `false` if out of range.
    pub(crate) fn read_bytes(&self, offset: usize, buf: &mut [u8]) -> bool {
        if offset.checked_add(buf.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        let mut i = 0;
        while i < buf.len() {
            let at = offset + i;
            if at.is_multiple_of(8) && buf.len() - i >= 8 {
                // Eight bytes per volatile access where the segment is aligned for it.
                let word = self.read::<u64>(at).to_ne_bytes();
                buf[i..i + 8].copy_from_slice(&word);
                i += 8;
            } else {
                buf[i] = self.read::<u8>(at);
                i += 1;
            }
        }
        true
    }

    /// Copies `data` to `offset`; `false` if out of range.
    pub(crate) fn write_bytes(&self, offset: usize, data: &[u8]) -> bool {
        if offset.checked_add(data.len()).is_none_or(|e| e > self.len) {
            return false;
        }
        let mut i = 0;
        while i < data.len() {
            let at = offset + i;
            if at.is_multiple_of(8) && data.len() - i >= 8 {
                let mut word = [0u8; 8];
                word.copy_from_slice(&data[i..i + 8]);
                self.write::<u64>(at, u64::from_ne_bytes(word));
                i += 8;
            } else {
                self.write::<u8>(at, data[i]);
                i += 1;
            }
        }
        true
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `map`, unmapped only here; every
        // reference handed out borrowed `self`, so none outlives this call.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

fn to_off(len: usize) -> io::Result<libc::off_t> {
    libc::off_t::try_from(len).map_err(|_| {
        invalid(&format!(
            "a segment of {len} bytes is larger than a file can be ({} bytes at most)",
            libc::off_t::MAX
        ))
    })
}

/// The longest name a segment can have, after its leading `/`: a file name's longest on
/// Linux (`NAME_MAX`), as `/dev/shm` holds the segments.
pub(crate) const SHM_NAME_MAX: usize = 255;

fn shm_name(name: &str) -> io::Result<CString> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    if bare.is_empty() || bare.len() > SHM_NAME_MAX || bare.contains('/') || bare.contains('\0') {
        return Err(invalid(
            "a shared-memory name is 1 to 255 bytes, without '/' (a leading '/' is allowed) or NUL",
        ));
    }
    CString::new(format!("/{bare}")).map_err(|_| invalid("NUL in a shared-memory name"))
}

/// Creates the named POSIX segment `name` (`/dev/shm/name`) of `len` bytes; fails if it
/// exists. The segment is removed again if it cannot be sized.
pub(crate) fn shm_create(name: &str, len: usize) -> io::Result<SharedRegion> {
    let cname = shm_name(name)?;
    let fd = shm_open(
        cname.as_c_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )?;
    let region = to_off(len)
        .and_then(|off| Ok(nix::unistd::ftruncate(&fd, off)?))
        .and_then(|()| SharedRegion::map(fd, len));
    if region.is_err() {
        let _ = shm_unlink(cname.as_c_str());
    }
    region
}

/// Where glibc's `shm_open` keeps the named segments.
const SHM_DIR: &str = "/dev/shm";

/// Makes a segment of `len` bytes that has no name yet (an `O_TMPFILE` in `/dev/shm`):
/// [`shm_name_segment`] gives it one. `None` if the system cannot make one (no `O_TMPFILE` on
/// that file system, or no `/dev/shm`).
pub(crate) fn shm_create_unnamed(len: usize) -> Option<io::Result<SharedRegion>> {
    let fd = match nix::fcntl::open(
        SHM_DIR,
        OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    ) {
        Ok(fd) => fd,
        Err(_) => return None,
    };
    Some(
        to_off(len)
            .and_then(|off| Ok(nix::unistd::ftruncate(&fd, off)?))
            .and_then(|()| SharedRegion::map(fd, len)),
    )
}

/// Gives `segment`, made by [`shm_create_unnamed`], the name `name`, as `shm_open` would find
/// it; fails with `AlreadyExists` if the name is taken.
pub(crate) fn shm_name_segment(segment: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let cname = shm_name(name)?;
    let path = shm_path(&cname);
    let by_proc = format!("/proc/self/fd/{}", segment.as_raw_fd());
    let linked = nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        by_proc.as_str(),
        nix::fcntl::AT_FDCWD,
        path.as_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    );
    match linked {
        // No `/proc`: linking the descriptor itself needs the capability to read any file.
        Err(nix::errno::Errno::ENOENT) => Ok(nix::unistd::linkat(
            segment,
            "",
            nix::fcntl::AT_FDCWD,
            path.as_str(),
            nix::fcntl::AtFlags::AT_EMPTY_PATH,
        )?),
        r => Ok(r?),
    }
}

/// Opens and maps the existing named segment `name`.
pub(crate) fn shm_attach(name: &str) -> io::Result<SharedRegion> {
    let cname = shm_name(name)?;
    let fd = shm_open(
        cname.as_c_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    SharedRegion::from_named_fd(fd)
}

/// An anonymous file in memory (a memfd), close-on-exec, that grows as it is written.
pub(crate) fn anonymous_file(name: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| invalid("a file name holds a NUL byte"))?;
    Ok(memfd_create(cname.as_c_str(), MFdFlags::MFD_CLOEXEC)?)
}

/// The name a segment received from another process was made with, as `/proc/self/fd`
/// tells it: an anonymous segment's ([`SharedRegion::anonymous`]), or what else the
/// descriptor is; `None` if that cannot be read (no `/proc`).
pub(crate) fn segment_name(fd: BorrowedFd<'_>) -> Option<String> {
    Some(name_in_link(&super::fd_target(fd)?).1)
}

/// The name an anonymous segment (a memfd) was made with, as `/proc/self/fd` tells it;
/// `None` for any other file (a named POSIX segment), or if that cannot be read (no `/proc`).
pub(crate) fn memfd_name(fd: BorrowedFd<'_>) -> Option<String> {
    match name_in_link(&super::fd_target(fd)?) {
        (true, name) => Some(name),
        (false, _) => None,
    }
}

/// Whether a `/proc/self/fd` link names a memfd, and the name it gives, without the memfd
/// prefix and the mark of a removed file.
fn name_in_link(target: &str) -> (bool, String) {
    let (memfd, name) = match target.strip_prefix("/memfd:") {
        Some(name) => (true, name),
        None => (false, target),
    };
    (
        memfd,
        name.strip_suffix(" (deleted)").unwrap_or(name).to_string(),
    )
}

/// Removes the name `name` from `/dev/shm` if it still names the segment behind `ours` (the
/// same file): once another process has removed it and made a segment of that name, the
/// name is that segment's. `Ok(false)` if the name is gone or names another segment.
pub(crate) fn shm_remove_own(name: &str, ours: BorrowedFd<'_>) -> io::Result<bool> {
    let cname = shm_name(name)?;
    // By its path, not a descriptor: a process at its limit of open descriptors (or a
    // tracker holding many) removes its names all the same.
    let Some(named) = shm_stat(&cname)? else {
        return Ok(false);
    };
    let ours = nix::sys::stat::fstat(ours)?;
    if (named.st_dev, named.st_ino) != (ours.st_dev, ours.st_ino) {
        return Ok(false);
    }
    shm_unlink(cname.as_c_str())?;
    Ok(true)
}

/// Whether the name `name` is in `/dev/shm` (names a segment).
pub(crate) fn shm_exists(name: &str) -> io::Result<bool> {
    Ok(shm_stat(&shm_name(name)?)?.is_some())
}

/// The file in `/dev/shm` of the segment named `cname` (as [`shm_name`] gives it).
fn shm_path(cname: &std::ffi::CStr) -> String {
    format!("{SHM_DIR}{}", cname.to_string_lossy())
}

/// The status of the segment named `cname`, read by its path (no descriptor taken); `None`
/// if there is none.
fn shm_stat(cname: &std::ffi::CStr) -> io::Result<Option<nix::sys::stat::FileStat>> {
    match nix::sys::stat::stat(shm_path(cname).as_str()) {
        Ok(st) => Ok(Some(st)),
        Err(nix::errno::Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the name `name` from `/dev/shm`; mappings and descriptors stay valid.
pub(crate) fn shm_remove(name: &str) -> io::Result<()> {
    let cname = shm_name(name)?;
    Ok(shm_unlink(cname.as_c_str())?)
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn an_anonymous_segment_keeps_its_size_whoever_holds_it() {
        let r = SharedRegion::anonymous("seal-test", 4096).unwrap();
        r.write::<u64>(0, 42);
        let held = super::super::fd::dup_fd(r.fd()).unwrap();
        assert_eq!(
            nix::unistd::ftruncate(&held, 0).unwrap_err(),
            nix::errno::Errno::EPERM
        );
        // Another process's view of it (here: a second mapping) is accepted and sees it.
        let other = SharedRegion::from_fd(held).unwrap();
        assert_eq!(other.read::<u64>(0), 42);
    }

    #[test]
    fn a_segment_whose_size_is_not_sealed_is_refused() {
        let fd = memfd_create(c"unsealed", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 4096).unwrap();
        let e = SharedRegion::from_fd(fd).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("sealed"), "{e}");
    }
}
