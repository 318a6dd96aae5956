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
