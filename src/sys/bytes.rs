//! The bytes of slices of primitive numbers, read in place.

/// A primitive number type: no padding, so every byte of a value is initialised.
///
/// # Safety
/// Only for the primitive integer and float types (implemented here, for those only).
pub(crate) unsafe trait Number: Copy + 'static {}

macro_rules! number {
    ($($t:ty),*) => {$(
        // SAFETY: a primitive number: its size is its width, with no padding bytes.
        unsafe impl Number for $t {}
    )*};
}
number!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64);

/// The bytes of `items` as they lie in memory (in the machine's byte order).
pub(crate) fn number_bytes<T: Number>(items: &[T]) -> &[u8] {
    // SAFETY: the pointer and length cover exactly the memory of `items`, which stays
    // borrowed for the lifetime of the result; `T: Number` has no padding, so every one of
    // those bytes is initialised, and `u8` has no alignment requirement.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items)) }
}

/// The size of a transparent huge page on the machines we run on.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the spare capacity of `v` with huge pages where it covers whole
/// ones: a vector about to be filled with megabytes faults its memory in 2 MiB at a time,
/// not 4 KiB. Only a hint: nothing changes where the kernel declines it (or on other
/// systems), and the vector's contents and validity are untouched either way.
pub(crate) fn advise_huge_pages<T>(v: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        let spare = v.spare_capacity_mut();
        let start = spare.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(spare);
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = end - end % HUGE_PAGE;
        if last > first
            && let Some(ptr) = std::ptr::NonNull::new(first as *mut libc::c_void)
        {
            // SAFETY: `first..last` lies within the vector's allocation, which we hold
            // mutably; MADV_HUGEPAGE changes only how the kernel backs those pages later,
            // not their contents or whether they are mapped.
            let _ = unsafe {
                nix::sys::mman::madvise(
                    ptr,
                    last - first,
                    nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
                )
            };
        }
    }
}
