//! The bytes of slices of primitive numbers, read in place.

/// A primitive number type: no padding, so every byte of a value is initialised.
///
/// # Safety
/// Only for the primitive integer and float types (implemented here, for those only).
pub(crate) unsafe trait Number: Copy + 'static {}

/// Calls `$m!(type)` for each primitive number type: the one list of them.
macro_rules! for_each_number {
    ($m:ident) => {
        $m!(u8);
        $m!(u16);
        $m!(u32);
        $m!(u64);
        $m!(usize);
        $m!(i8);
        $m!(i16);
        $m!(i32);
        $m!(i64);
        $m!(isize);
        $m!(f32);
        $m!(f64);
    };
}
pub(crate) use for_each_number;

macro_rules! number {
    ($t:ty) => {
        // SAFETY: a primitive number: its size is its width, with no padding bytes.
        unsafe impl Number for $t {}
    };
}
for_each_number!(number);

/// The bytes of `items` as they lie in memory (in the machine's byte order).
pub(crate) fn number_bytes<T: Number>(items: &[T]) -> &[u8] {
    // SAFETY: the pointer and length cover exactly the memory of `items`, which stays
    // borrowed for the lifetime of the result; `T: Number` has no padding, so every one of
    // those bytes is initialised, and `u8` has no alignment requirement.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), std::mem::size_of_val(items)) }
}

/// Whether `T` is one of the primitive number types [`Number`] is implemented for.
pub(crate) fn is_number<T: 'static>() -> bool {
    use std::any::TypeId;
    let t = TypeId::of::<T>();
    macro_rules! check {
        ($n:ty) => {
            if t == TypeId::of::<$n>() {
                return true;
            }
        };
    }
    for_each_number!(check);
    false
}

/// `bytes` read as values of `T` (in the machine's byte order), if `T` is a primitive
/// number type and `bytes` holds a whole number of them.
pub(crate) fn read_numbers<T: 'static>(
    bytes: &[u8],
) -> Option<impl ExactSizeIterator<Item = T> + '_> {
    let width = std::mem::size_of::<T>();
    if !is_number::<T>() || !bytes.len().is_multiple_of(width) {
        return None;
    }
    Some(bytes.chunks_exact(width).map(|c| {
        // SAFETY: `T` is a primitive number type (checked above), for which every pattern
        // of its `width` bytes is a value; `c` holds exactly `width` bytes, and an
        // unaligned read needs no alignment.
        unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) }
    }))
}

/// The bytes of `value` as it lies in memory (in the machine's byte order), if `T` is a
/// primitive number type.
pub(crate) fn bytes_of_number<T: 'static>(value: &T) -> Option<&[u8]> {
    if !is_number::<T>() {
        return None;
    }
    // SAFETY: `T` is a primitive number type (checked above): no padding, so all its
    // `size_of::<T>()` bytes are initialised; they stay borrowed with `value`.
    Some(unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    })
}
