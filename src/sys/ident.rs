//! Identity of code across processes: the binary's build-id, function addresses relative to
//! an anchor, and zero-sized function values.

use std::ffi::c_void;

/// A fixed symbol that every trampoline address is measured from.
///
/// Both parent and child are the same executable (checked by fingerprint in every
/// handshake), so the distance from this function to any other function is the same in both,
/// whatever address the loader chose.
#[inline(never)]
pub(crate) fn anchor() -> u64 {
    0x746b_6d70
}

/// The address of [`anchor`] in this process.
fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// Zero-sized function values (`fn` items and closures that capture nothing), which the
/// receiving process can produce out of nothing.
///
/// Implemented for every `Fn` of up to six arguments; a type that is not zero-sized fails to
/// compile when [`FnZst::conjure`] is instantiated for it. On stable Rust only `fn` items,
/// closures and `fn` pointers implement `Fn`, and only the first two (capturing nothing, or
/// only zero-sized values) can be zero-sized.
pub(crate) trait FnZst<Args, R>: 'static {
    /// The one value of this type.
    fn conjure() -> Self;
}

macro_rules! fn_zst {
    ($($a:ident),*) => {
        impl<F, R, $($a),*> FnZst<($($a,)*), R> for F
        where
            F: Fn($($a),*) -> R + 'static,
        {
            fn conjure() -> Self {
                const {
                    assert!(
                        std::mem::size_of::<F>() == 0,
                        "a target must be a `fn` item or a closure that captures nothing: \
                         it crosses to the other process by address, and captured values \
                         (or a `fn` pointer's address) cannot travel that way; pass them as \
                         arguments instead"
                    );
                }
                // SAFETY: `F` is zero-sized (asserted above) and implements `Fn`, so it is a
                // `fn` item or a closure whose captures are all zero-sized: there are no bytes
                // to initialise. The value is made in another process than the one that held
                // the original, so it duplicates nothing within a process.
                unsafe { std::mem::MaybeUninit::<F>::uninit().assume_init() }
            }
        }
    };
}
fn_zst!();
fn_zst!(A);
fn_zst!(A, B);
fn_zst!(A, B, C);
fn_zst!(A, B, C, D);
fn_zst!(A, B, C, D, E);
fn_zst!(A, B, C, D, E, G);

/// Proof that a peer runs the very same executable as this process: only
/// [`SameBinary::check`] makes one, by comparing fingerprints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SameBinary(());

impl SameBinary {
    /// Compares `theirs` with this binary's [`fingerprint`].
    pub(crate) fn check(theirs: &[u8]) -> Option<SameBinary> {
        (theirs == fingerprint()).then_some(SameBinary(()))
    }
}

/// The path this executable was started from. The kernel names a file replaced or removed
/// since (a rebuild while the program runs) with ` (deleted)` after the path; that mark is
/// left out, so that the path names whatever is there now (another build, after a rebuild).
pub(crate) fn executable_path() -> std::io::Result<std::path::PathBuf> {
    let path = std::env::current_exe()?;
    Ok(
        match path.to_str().and_then(|p| p.strip_suffix(" (deleted)")) {
            Some(started_from) if !path.exists() => started_from.into(),
            _ => path,
        },
    )
}

/// This very executable, to read: the file the process runs, even if its path was since
/// replaced or removed.
pub(crate) fn open_executable() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/self/exe")
}

/// This executable's fingerprint: its GNU build-id, or else a hash of its bytes.
pub(crate) fn fingerprint() -> &'static [u8] {
    static FP: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FP.get_or_init(|| {
        main_image()
            .build_id
            .clone()
            .unwrap_or_else(hash_of_executable)
    })
}

fn hash_of_executable() -> Vec<u8> {
    use std::hash::{DefaultHasher, Hasher};
    let bytes = std::fs::read("/proc/self/exe").unwrap_or_default();
    let mut out = Vec::with_capacity(17);
    out.push(b'h');
    for seed in [0u8, 1] {
        let mut h = DefaultHasher::new();
        h.write_u8(seed);
        h.write(&bytes);
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// The distance of `addr` (a function's address in this process) from the anchor.
pub(crate) fn offset_from_anchor(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(anchor_addr() as i64)
}

/// Turns an offset made by [`offset_from_anchor`] in a process running the same binary back
/// into an entry point of type `E`, a `fn` pointer type.
///
/// The offset must have been made from a function of type `E`: every entry kind has its own
/// message field, so the protocol keeps types apart. As a guard against a corrupt offset, the
/// address must lie in an executable segment of this program.
pub(crate) fn resolve_entry<E: Copy>(offset: i64, _same: SameBinary) -> std::io::Result<E> {
    const {
        assert!(std::mem::size_of::<E>() == std::mem::size_of::<usize>());
    }
    let addr = (anchor_addr() as i64).wrapping_add(offset) as usize;
    if !main_image().text.iter().any(|r| r.contains(&addr)) {
        return Err(std::io::Error::other(format!(
            "entry offset {offset:#x} does not point into this program's code"
        )));
    }
    // SAFETY: `E` is a fn pointer type of pointer size (asserted above). `SameBinary` proves
    // the peer runs this very executable, where the offset was taken from a function of type
    // `E` by `offset_from_anchor`; the distance between two functions of one binary does not
    // depend on where the loader put it, so `addr` is that function here.
    Ok(unsafe { std::mem::transmute_copy::<usize, E>(&addr) })
}

/// What this crate needs to know of the main executable's loaded image.
#[derive(Default)]
struct MainImage {
    /// The GNU build-id note, if the linker wrote one.
    build_id: Option<Vec<u8>>,
    /// Address ranges of the executable segments.
    text: Vec<std::ops::Range<usize>>,
}

fn main_image() -> &'static MainImage {
    static IMAGE: std::sync::OnceLock<MainImage> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut image = MainImage::default();
        // SAFETY: dl_iterate_phdr calls `image_callback` synchronously, once per loaded
        // object; `data` points at `image`, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(
                Some(image_callback),
                (&mut image as *mut MainImage).cast::<c_void>(),
            );
        }
        image
    })
}

unsafe extern "C" fn image_callback(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `&mut MainImage` passed by `main_image`; `info`, its program
    // headers and the segments they describe are mapped for the duration of this call. The
    // first object reported is the main executable, so we stop after it (by returning 1).
    unsafe {
        let image = &mut *data.cast::<MainImage>();
        let info = &*info;
        let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
        for ph in headers {
            let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
                image.text.push(start..start + ph.p_memsz as usize);
            }
            if ph.p_type == libc::PT_NOTE && image.build_id.is_none() {
                let notes = std::slice::from_raw_parts(start as *const u8, ph.p_memsz as usize);
                image.build_id = find_gnu_build_id(notes).map(<[u8]>::to_vec);
            }
        }
        1
    }
}

/// Walks an ELF note segment for the `NT_GNU_BUILD_ID` note.
fn find_gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| n.div_ceil(4) * 4;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12 + align4(namesz);
        let desc_end = name_end + align4(descsz);
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}
