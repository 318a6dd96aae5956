//! Shared memory: [`Value`] and [`Array`] of plain-old-data (with a [`Lock`] by default,
//! [`RawValue`] / [`RawArray`] without), and [`SharedMemory`], named or anonymous segments
//! of bytes.
//!
//! A value or array lives in an anonymous memfd mapped `MAP_SHARED`: it is passed to another
//! process as a descriptor (by `SCM_RIGHTS`) and freed by the kernel when the last process
//! that maps it exits, however it exits. Nothing is named, so nothing can leak. The segment
//! starts with a header (the element size, count and type) that a receiving process checks
//! against its own `T` and the segment's real size before it reads anything.
//!
//! Reads and writes are volatile copies of whole elements; they never hand out references
//! into the shared pages, which another process may write at any time. Without the lock (a
//! `RawValue`, or access that bypasses [`Value::lock`]), updates from several processes race
//! exactly as Python's `lock=False` values do: `+= 1` from two processes loses increments.
//!
//! Why one file of about 800 lines: the four typed handles (`Value`, `RawValue`, `Array`,
//! `RawArray`) are thin views of one private `Cells<T>` core and its serde impl, most of the
//! file being their documented one-line methods. `SharedMemory` shares only the mapping; it
//! is the part that would move out first (`shared/memory.rs`) if the file grows.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::start::tracker::{self, Tracked};
use crate::sync::{Lock, LockGuard, map_received};
use crate::sys::{self, Pod, SharedRegion};
use crate::wire::Fd;
use crate::wire::FdRef;

/// Header: element size (u32), element count (u64), element type (u64, see [`type_tag`]);
/// elements start at `DATA`.
const ELEM_SIZE: usize = 0;
const COUNT: usize = 8;
const TYPE: usize = 16;
const DATA: usize = 64;

/// The name the segment of shared cells is made with, which a receiver checks.
const CELLS_SEGMENT: &str = "tokio-multiprocessing-value";
/// The name an anonymous [`SharedMemory`] is made with, which a receiver checks.
const SHM_SEGMENT: &str = "tokio-multiprocessing-shm";

/// The element type `T` as a word in the header (an FNV-1a hash of its name), which a
/// receiver checks against its own `T`: a `Pod` is valid for the bit patterns that *its own*
/// writes leave, so cells of `u8` read as `bool`, or of a `u32` as a struct with a `bool`
/// field, would make values that cannot exist. The same type in the same binary always has
/// the same name.
fn type_tag<T>() -> u64 {
    std::any::type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The segment of `len` elements of `T`, shared by the value and array types.
#[derive(Debug, Clone)]
struct Cells<T> {
    region: Arc<SharedRegion>,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: Pod> Cells<T> {
    fn new(items: &[T]) -> Result<Cells<T>> {
        Cells::with_len(items.len(), |i| items[i])
    }

    /// `len` cells in a new segment, cell `i` holding `item(i)`, with no copy of them made
    /// on the heap first.
    fn with_len(len: usize, item: impl Fn(usize) -> T) -> Result<Cells<T>> {
        if align_of::<T>() > DATA {
            return Err(Error::InvalidArgument(format!(
                "{} is aligned to {} bytes; shared values allow at most {DATA}",
                std::any::type_name::<T>(),
                align_of::<T>()
            )));
        }
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_add(DATA))
            .ok_or_else(|| Error::InvalidArgument("shared array too large".into()))?;
        let region = SharedRegion::anonymous(CELLS_SEGMENT, bytes)?;
        region
            .u32_at(ELEM_SIZE)
            .store(size_of::<T>() as u32, SeqCst);
        region.u64_at(COUNT).store(len as u64, SeqCst);
        region.u64_at(TYPE).store(type_tag::<T>(), SeqCst);
        let cells = Cells {
            region: Arc::new(region),
            len,
            _t: PhantomData,
        };
        for i in 0..len {
            cells.put(i, item(i));
        }
        Ok(cells)
    }

    fn offset(i: usize) -> usize {
        DATA + i * size_of::<T>()
    }

    /// Element `i`, which the caller has checked is `< len`.
    fn at(&self, i: usize) -> T {
        self.region.read::<T>(Cells::<T>::offset(i))
    }

    fn put(&self, i: usize, v: T) {
        self.region.write::<T>(Cells::<T>::offset(i), v);
    }

    fn get(&self, i: usize) -> Option<T> {
        (i < self.len).then(|| self.at(i))
    }

    fn set(&self, i: usize, v: T) -> Result<()> {
        if i >= self.len {
            return Err(Error::IndexOutOfRange {
                index: i,
                len: self.len,
            });
        }
        self.put(i, v);
        Ok(())
    }

    fn to_vec(&self) -> Vec<T> {
        (0..self.len).map(|i| self.at(i)).collect()
    }

    fn copy_from_slice(&self, items: &[T]) -> Result<()> {
        if items.len() != self.len {
            return Err(Error::InvalidArgument(format!(
                "a slice of {} elements copied into a shared array of {}",
                items.len(),
                self.len
            )));
        }
        for (i, v) in items.iter().enumerate() {
            self.put(i, *v);
        }
        Ok(())
    }
}

impl<T: Pod> Serialize for Cells<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        FdRef(self.region.fd()).serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Cells<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let fd = Fd::deserialize(d)?;
        // Another anonymous segment is sealed too; a `SharedMemory`'s bytes, written freely by
        // whoever holds it, would be read as values their type cannot hold (2 as a `bool`).
        if let Some(name) = sys::segment_name(fd.as_fd())
            && name != CELLS_SEGMENT
        {
            return Err(D::Error::custom(format!(
                "a shared value was received with the segment of something else ({name})"
            )));
        }
        let region = map_received::<D::Error>(fd, DATA, "shared value", false)?;
        let size = region.u32_at(ELEM_SIZE).load(SeqCst) as usize;
        let len = region.u64_at(COUNT).load(SeqCst);
        if size != size_of::<T>() {
            return Err(D::Error::custom(format!(
                "a shared value of {size}-byte elements received as {} ({} bytes)",
                std::any::type_name::<T>(),
                size_of::<T>()
            )));
        }
        if region.u64_at(TYPE).load(SeqCst) != type_tag::<T>() {
            return Err(D::Error::custom(format!(
                "a shared value of another element type received as {}",
                std::any::type_name::<T>()
            )));
        }
        let fits = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(size).and_then(|b| b.checked_add(DATA)))
            .is_some_and(|need| need <= region.len());
        if !fits {
            return Err(D::Error::custom(format!(
                "a shared array of {len} elements does not fit its {}-byte segment",
                region.len()
            )));
        }
        Ok(Cells {
            region: Arc::new(region),
            len: len as usize,
            _t: PhantomData,
        })
    }
}

/// A `T` in shared memory, without a lock (Python's `RawValue`, or `Value(..., lock=False)`).
///
/// `get` and `set` are single volatile copies: safe, but a read-modify-write from several
/// processes races. Use [`Value`] for that. Clones share the same memory, and so does a
/// `RawValue` sent to another process.
///
/// # Examples
///
/// ```
/// let v = tokio_multiprocessing::RawValue::new(1.5f64)?;
/// v.set(v.get() * 2.0);
/// # Ok::<(), tokio_multiprocessing::Error>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RawValue<T: Pod> {
    cells: Cells<T>,
}

impl<T: Pod> RawValue<T> {
    /// A shared `T` holding `value`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `T` is aligned to more than 64 bytes;
    /// [`Error::Io`] if the segment cannot be made.
    pub fn new(value: T) -> Result<RawValue<T>> {
        Ok(RawValue {
            cells: Cells::new(&[value])?,
        })
    }

    /// The value now (Python's `.value`).
    pub fn get(&self) -> T {
        self.cells.at(0)
    }

    /// Stores `value` (Python's `.value = ...`).
    pub fn set(&self, value: T) {
        self.cells.put(0, value);
    }
}

/// A `T` in shared memory guarded by a [`Lock`] (Python's `multiprocessing.Value`).
///
/// [`get`](Self::get) and [`set`](Self::set) each take the lock, as Python's `.value` does;
/// a read-modify-write needs the lock held across it: [`lock`](Self::lock) returns a guard
/// with `get`, `set` and `update`. Clones share the same memory and lock, and so does a
/// `Value` sent to another process (a serde type: its segment and the lock travel as
/// descriptors).
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let counter = tokio_multiprocessing::Value::new(0i64)?;
/// counter.lock().await?.update(|n| n + 1);
/// assert_eq!(counter.get().await?, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Value<T: Pod> {
    raw: RawValue<T>,
    lock: Lock,
}

impl<T: Pod> Value<T> {
    /// A shared `T` holding `value`, with a lock of its own.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `T` is aligned to more than 64 bytes;
    /// [`Error::Io`] if a segment or the lock cannot be made.
    pub fn new(value: T) -> Result<Value<T>> {
        Value::with_lock(value, Lock::new()?)
    }

    /// A shared `T` guarded by an existing `lock` (Python's `Value(..., lock=lock)`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_lock(value: T, lock: Lock) -> Result<Value<T>> {
        Ok(Value {
            raw: RawValue::new(value)?,
            lock,
        })
    }

    /// The value of `raw` itself (the same memory, not a copy), guarded from now on by
    /// `lock` (Python's `sharedctypes.synchronized(raw, lock)`; pass `Lock::new()?` for a
    /// lock of its own). Writes through `raw` and its clones still take no lock.
    pub fn from_raw(raw: RawValue<T>, lock: Lock) -> Value<T> {
        Value { raw, lock }
    }

    /// The lock that guards the value (Python's `get_lock()`).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// The value without its lock (Python's `get_obj()`).
    pub fn get_obj(&self) -> &RawValue<T> {
        &self.raw
    }

    /// Takes the lock and returns a guard through which the value is read and written.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the lock was not taken.
    pub async fn lock(&self) -> Result<ValueGuard<'_, T>> {
        Ok(ValueGuard {
            raw: &self.raw,
            _guard: self.lock.lock().await?,
        })
    }

    /// Reads the value under the lock (Python's `.value`).
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe.
    pub async fn get(&self) -> Result<T> {
        Ok(self.lock().await?.get())
    }

    /// Writes the value under the lock (Python's `.value = ...`).
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, nothing was written.
    pub async fn set(&self, value: T) -> Result<()> {
        self.lock().await?.set(value);
        Ok(())
    }
}

/// A [`Value`] with its lock held.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ValueGuard<'a, T: Pod> {
    raw: &'a RawValue<T>,
    _guard: LockGuard<'a>,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// The value.
    pub fn get(&self) -> T {
        self.raw.get()
    }

    /// Stores `value`.
    pub fn set(&mut self, value: T) {
        self.raw.set(value);
    }

    /// Replaces the value with `f(value)`, and returns the new value.
    pub fn update(&mut self, f: impl FnOnce(T) -> T) -> T {
        let v = f(self.raw.get());
        self.raw.set(v);
        v
    }
}

/// A fixed-length array of `T` in shared memory, without a lock (Python's `RawArray`, or
/// `Array(..., lock=False)`).
///
/// Element reads and writes are volatile copies; read-modify-writes from several processes
/// race. Clones share the same memory, and so does a `RawArray` sent to another process.
///
/// # Examples
///
/// ```
/// let a = tokio_multiprocessing::RawArray::from_slice(&[1i32, 2, 3])?;
/// a.set(0, 10)?;
/// assert_eq!(a.to_vec(), vec![10, 2, 3]);
/// # Ok::<(), tokio_multiprocessing::Error>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct RawArray<T: Pod> {
    cells: Cells<T>,
}

impl<T: Pod> RawArray<T> {
    /// An array holding a copy of `items`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `T` is aligned to more than 64 bytes;
    /// [`Error::Io`] if the segment cannot be made.
    pub fn from_slice(items: &[T]) -> Result<RawArray<T>> {
        Ok(RawArray {
            cells: Cells::new(items)?,
        })
    }

    /// An array of `len` copies of `value`.
    ///
    /// # Errors
    /// As [`from_slice`](Self::from_slice), and [`Error::InvalidArgument`] if `len` elements
    /// are more bytes than an address can count.
    pub fn from_elem(value: T, len: usize) -> Result<RawArray<T>> {
        Ok(RawArray {
            cells: Cells::with_len(len, |_| value)?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        self.cells.get(i)
    }

    /// Stores `value` at `i`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end (Python's `IndexError`).
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        self.cells.set(i, value)
    }

    /// A copy of every element (Python's `arr[:]`).
    pub fn to_vec(&self) -> Vec<T> {
        self.cells.to_vec()
    }

    /// Overwrites every element (Python's `arr[:] = items`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `items` has another length (Python's `ValueError`).
    pub fn copy_from_slice(&self, items: &[T]) -> Result<()> {
        self.cells.copy_from_slice(items)
    }
}

/// A fixed-length array of `T` in shared memory guarded by a [`Lock`] (Python's
/// `multiprocessing.Array`).
///
/// [`to_vec`](Self::to_vec), [`get`](Self::get) and [`set`](Self::set) each take the lock;
/// [`lock`](Self::lock) holds it across several operations. Clones share the same memory and
/// lock, and so does an `Array` sent to another process.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let a = tokio_multiprocessing::Array::from_slice(&[0.0f64, 100.0, 200.0])?;
/// {
///     let g = a.lock().await?;
///     for i in 0..g.len() {
///         g.update(i, |x| x + 1.0)?;
///     }
/// }
/// assert_eq!(a.to_vec().await?, vec![1.0, 101.0, 201.0]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Array<T: Pod> {
    raw: RawArray<T>,
    lock: Lock,
}

impl<T: Pod> Array<T> {
    /// An array holding a copy of `items`, with a lock of its own.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `T` is aligned to more than 64 bytes or the array
    /// would pass the address space; [`Error::Io`] if a segment or the lock cannot be made.
    pub fn from_slice(items: &[T]) -> Result<Array<T>> {
        Array::with_lock(items, Lock::new()?)
    }

    /// An array of `len` copies of `value`, with a lock of its own.
    ///
    /// # Errors
    /// As [`from_slice`](Self::from_slice).
    pub fn from_elem(value: T, len: usize) -> Result<Array<T>> {
        Ok(Array {
            raw: RawArray::from_elem(value, len)?,
            lock: Lock::new()?,
        })
    }

    /// An array holding a copy of `items`, guarded by an existing `lock`.
    ///
    /// # Errors
    /// As [`from_slice`](Self::from_slice).
    pub fn with_lock(items: &[T], lock: Lock) -> Result<Array<T>> {
        Ok(Array {
            raw: RawArray::from_slice(items)?,
            lock,
        })
    }

    /// The array of `raw` itself (the same memory, not a copy), guarded from now on by
    /// `lock` (Python's `sharedctypes.synchronized(raw, lock)`; pass `Lock::new()?` for a
    /// lock of its own). Writes through `raw` and its clones still take no lock.
    pub fn from_raw(raw: RawArray<T>, lock: Lock) -> Array<T> {
        Array { raw, lock }
    }

    /// The lock that guards the array (Python's `get_lock()`).
    pub fn get_lock(&self) -> &Lock {
        &self.lock
    }

    /// The array without its lock (Python's `get_obj()`).
    pub fn get_obj(&self) -> &RawArray<T> {
        &self.raw
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Takes the lock and returns a guard through which elements are read and written.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the lock was not taken.
    pub async fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        Ok(ArrayGuard {
            raw: &self.raw,
            _guard: self.lock.lock().await?,
        })
    }

    /// Element `i` under the lock; `None` past the end.
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe.
    pub async fn get(&self, i: usize) -> Result<Option<T>> {
        Ok(self.lock().await?.get(i))
    }

    /// Stores `value` at `i` under the lock.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end; otherwise as [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, nothing was written.
    pub async fn set(&self, i: usize, value: T) -> Result<()> {
        self.lock().await?.set(i, value)
    }

    /// A copy of every element, taken under the lock (Python's `arr[:]`).
    ///
    /// # Errors
    /// As [`Lock::lock`].
    ///
    /// # Panics
    /// When it has to sleep outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe.
    pub async fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock().await?.to_vec())
    }
}

/// An [`Array`] with its lock held.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct ArrayGuard<'a, T: Pod> {
    raw: &'a RawArray<T>,
    _guard: LockGuard<'a>,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Element `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<T> {
        self.raw.get(i)
    }

    /// Stores `value` at `i`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end.
    pub fn set(&self, i: usize, value: T) -> Result<()> {
        self.raw.set(i, value)
    }

    /// Replaces element `i` with `f(element)` and returns the new element.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] past the end.
    pub fn update(&self, i: usize, f: impl FnOnce(T) -> T) -> Result<T> {
        let old = self.raw.get(i).ok_or(Error::IndexOutOfRange {
            index: i,
            len: self.raw.len(),
        })?;
        let new = f(old);
        self.raw.set(i, new)?;
        Ok(new)
    }

    /// A copy of every element.
    pub fn to_vec(&self) -> Vec<T> {
        self.raw.to_vec()
    }

    /// Overwrites every element.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `items` has another length (Python's `ValueError`).
    pub fn copy_from_slice(&self, items: &[T]) -> Result<()> {
        self.raw.copy_from_slice(items)
    }
}

/// A segment of shared bytes (Python's `multiprocessing.shared_memory.SharedMemory`).
///
/// Either *named* (`/dev/shm/NAME`, so unrelated processes can [`attach`](Self::attach) by
/// name) or *anonymous* (a memfd, reachable only by passing the `SharedMemory` itself to
/// another process, and freed by the kernel with its last user whatever happens).
///
/// The creator owns the name: its handle removes the name when dropped (or at
/// [`unlink`](Self::unlink)), unless told to [`keep_name`](Self::keep_name). An attacher,
/// including a copy received by another process, never removes it. A segment made by a
/// [`SharedMemoryManager`](crate::SharedMemoryManager) is owned by the manager's server,
/// which removes it when it stops. Mappings stay valid after the name is gone.
///
/// A creator killed by a signal (SIGTERM from [`Process::terminate`](crate::Process::terminate),
/// SIGKILL), or that ends without dropping the handle, runs no drop: its *tracker* removes
/// the name once it has ended, and says so on standard error, as Python's resource tracker
/// does. A process's first named segment starts its tracker (this program re-executed, in a
/// session of its own, about a millisecond once per process); it ends once its creator has,
/// and removes a name only while it still names the creator's segment. A segment is given
/// its name only once the tracker holds it (where `/dev/shm` can make a file without a name,
/// as Linux's tmpfs can), so a creator killed at any moment leaves no name behind. Where no
/// name is needed, an anonymous segment cannot leak even if every process is killed.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::SharedMemory;
/// let shm = SharedMemory::create("demo-segment", 4096)?;
/// shm.write(0, b"hello")?;
/// let other = SharedMemory::attach("demo-segment")?;
/// let mut buf = [0u8; 5];
/// other.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), tokio_multiprocessing::Error>(())
/// ```
#[derive(Debug)]
pub struct SharedMemory {
    region: SharedRegion,
    name: Option<String>,
    owns_name: bool,
    /// The creator's segment as this process's tracker holds it (see `owns_name`).
    tracked: Option<Tracked>,
}

/// A segment needs at least one byte, as Python's `SharedMemory(create=True, size=0)` does.
pub(crate) fn check_size(size: usize) -> Result<()> {
    match size {
        0 => Err(Error::InvalidArgument(
            "a shared memory segment needs a size of at least 1 byte".into(),
        )),
        _ => Ok(()),
    }
}

/// What [`SharedMemory::create`] runs once it has made a segment and before it tells the
/// tracker of it: a test hook only (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub(crate) static SEGMENT_MADE: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

fn segment_made() {
    #[cfg(feature = "test-hooks")]
    if let Some(hook) = SEGMENT_MADE.get() {
        hook();
    }
}

/// A segment's name is 1 to 255 bytes (Linux's longest file name, as CPython allows) after
/// an optional leading `/`, with no other `/` and no NUL, as POSIX's `shm_open` takes it;
/// returns it without the `/`; `.` and `..` name `/dev/shm` and its parent, no segment.
fn check_name(name: &str) -> Result<&str> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let wrong = if bare.contains('/') {
        "may hold `/` only as its first character"
    } else if bare.contains('\0') {
        "may not hold NUL"
    } else if bare.is_empty() || bare.len() > sys::SHM_NAME_MAX {
        "needs 1 to 255 bytes after its leading `/`, if any"
    } else if bare == "." || bare == ".." {
        "may not be `.` or `..`, which name directories"
    } else {
        return Ok(bare);
    };
    Err(Error::InvalidArgument(format!(
        "a shared memory name {wrong}: {name:?}"
    )))
}

/// The system's error about segment `name`, naming it (Python's `FileNotFoundError: [Errno
/// 2] No such file or directory: '/name'`), of the same kind.
fn about_segment(name: &str, e: std::io::Error) -> Error {
    Error::from(std::io::Error::new(
        e.kind(),
        format!("shared memory segment {name:?}: {e}"),
    ))
}

impl SharedMemory {
    /// Creates the named segment `name` of `size` bytes, zero-filled (Python's
    /// `SharedMemory(name, create=True, size=size)`). The first in a process starts its
    /// tracker (see the type's docs); if the tracker cannot start, a `tracing` warning says
    /// so once, and the segment is made untracked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a size of 0 or a name that cannot be a segment's (empty,
    /// longer than 255 bytes, `.` or `..`, with `/` after its first character or NUL; Python's
    /// `ValueError`); [`Error::Io`]: `AlreadyExists` if the name is taken. An I/O error's
    /// message names the segment.
    pub fn create(name: &str, size: usize) -> Result<SharedMemory> {
        check_size(size)?;
        let bare = check_name(name)?;
        tracker::start_before_a_segment();
        let named = |region, tracked| SharedMemory {
            region,
            name: Some(bare.to_string()),
            owns_name: true,
            tracked,
        };
        // Made without a name, told to the tracker, then named: a creator killed at any
        // point between leaves no name that no tracker holds.
        if let Some(made) = sys::shm_create_unnamed(size) {
            let region = made.map_err(|e| about_segment(bare, e))?;
            segment_made();
            let tracked = tracker::track(bare, region.fd());
            match sys::shm_name_segment(region.fd(), name) {
                Ok(()) => return Ok(named(region, tracked)),
                // The tracker forgets it as `tracked` goes.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(about_segment(bare, e));
                }
                // Not to be named so (no `/proc`, and no right to name a descriptor):
                // made with its name, as `shm_open` makes it.
                Err(_) => {}
            }
        }
        let region = sys::shm_create(name, size).map_err(|e| about_segment(bare, e))?;
        segment_made();
        let tracked = tracker::track(bare, region.fd());
        Ok(named(region, tracked))
    }

    /// Creates an anonymous segment of `size` bytes, zero-filled (a memfd: it has no name
    /// and can never leak).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a size of 0 (Python's `ValueError`); [`Error::Io`] if
    /// the segment cannot be made.
    pub fn create_anonymous(size: usize) -> Result<SharedMemory> {
        check_size(size)?;
        Ok(SharedMemory {
            region: SharedRegion::anonymous(SHM_SEGMENT, size)?,
            name: None,
            owns_name: false,
            tracked: None,
        })
    }

    /// Creates a named segment of `size` bytes, zero-filled, under a fresh name like
    /// CPython's (`psm_` and 8 random hex digits), tried again with another name while one
    /// is taken (Python's `SharedMemory(create=True, size=size)`). This handle owns the name.
    pub(crate) fn create_with_a_generated_name(size: usize) -> Result<SharedMemory> {
        loop {
            let name = generated_name()?;
            match SharedMemory::create(&name, size) {
                Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                r => return r,
            }
        }
    }

    /// Attaches to the existing named segment `name` (Python's `SharedMemory(name)`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a name that cannot be a segment's (see
    /// [`create`](Self::create)); [`Error::Io`]: `NotFound` if there is no such segment. An
    /// I/O error's message names the segment.
    pub fn attach(name: &str) -> Result<SharedMemory> {
        let bare = check_name(name)?;
        Ok(SharedMemory {
            region: sys::shm_attach(name).map_err(|e| about_segment(bare, e))?,
            name: Some(bare.to_string()),
            owns_name: false,
            tracked: None,
        })
    }

    /// Another handle to the same memory, which never removes the name (an attacher): for
    /// example to pass the segment to a child process.
    ///
    /// # Errors
    /// [`Error::Io`] if the descriptor cannot be duplicated or mapped.
    pub fn try_clone(&self) -> Result<SharedMemory> {
        let fd = sys::dup_fd(self.region.fd())?;
        Ok(SharedMemory {
            region: SharedRegion::from_fd_named(fd, self.name.is_some())?,
            name: self.name.clone(),
            owns_name: false,
            tracked: None,
        })
    }

    /// The segment's name (without the leading `/`), `None` for an anonymous one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] if the range passes the end, naming its first byte past
    /// the end; nothing is copied.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        if self.region.read_bytes(offset, buf) {
            Ok(())
        } else {
            Err(self.out_of_range(offset, buf.len()))
        }
    }

    /// Copies `data` into the segment at `offset`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] if the range passes the end, naming its first byte past
    /// the end; nothing is written.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        if self.region.write_bytes(offset, data) {
            Ok(())
        } else {
            Err(self.out_of_range(offset, data.len()))
        }
    }

    /// A copy of the whole segment (Python's `bytes(shm.buf)`).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.region.len()];
        self.region.read_bytes(0, &mut v);
        v
    }

    /// The error for the `len` bytes at `offset`, a range that passes the end: it names the
    /// range's first byte past the end (the end of the segment, or `offset` beyond it).
    fn out_of_range(&self, offset: usize, len: usize) -> Error {
        let size = self.region.len();
        debug_assert!(offset.saturating_add(len) > size);
        Error::IndexOutOfRange {
            index: offset.max(size),
            len: size,
        }
    }

    /// Keeps the name when this handle goes (Python 3.13's `SharedMemory(..., track=False)`):
    /// neither the creator's handle, when dropped, nor its tracker removes it, so the segment
    /// outlives this handle and this process, for processes that attach to it later, until
    /// someone calls [`unlink`](Self::unlink). Nothing changes for an attacher, which never
    /// removes the name, or an anonymous segment, which has none.
    pub fn keep_name(&mut self) {
        self.owns_name = false;
        self.tracked = None;
    }

    /// Removes the segment's name, so no one else can attach; the memory stays valid for
    /// every process that has it (Python's `unlink()`). An anonymous segment has no name:
    /// nothing to do.
    ///
    /// # Errors
    /// [`Error::Io`]: `NotFound` if the name is already gone.
    pub fn unlink(&mut self) -> Result<()> {
        self.owns_name = false;
        let removed = match &self.name {
            Some(n) => sys::shm_remove(n),
            None => Ok(()),
        };
        self.tracked = None;
        Ok(removed?)
    }
}

impl Drop for SharedMemory {
    /// Removes the name it created, unless the name now belongs to another segment (someone
    /// unlinked this one and made another of the same name).
    fn drop(&mut self) {
        if self.owns_name
            && let Some(n) = &self.name
        {
            let _ = sys::shm_remove_own(n, self.region.fd());
        }
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (FdRef(self.region.fd()), &self.name).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    /// A received segment is an attacher: it never removes the name.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (fd, name) = <(Fd, Option<String>)>::deserialize(d)?;
        // Any bytes may be written through a `SharedMemory`: the segment of shared cells or of
        // a primitive, written so, would hold values their types cannot (2 as a `bool`).
        if let Some(made) = sys::memfd_name(fd.as_fd())
            && made != SHM_SEGMENT
        {
            return Err(serde::de::Error::custom(format!(
                "a shared memory segment was received with the segment of something else \
                 ({made})"
            )));
        }
        Ok(SharedMemory {
            region: map_received(fd, 1, "shared memory segment", name.is_some())?,
            name,
            owns_name: false,
            tracked: None,
        })
    }
}

/// A fresh name for a segment, like CPython's: `psm_` and 8 random hex digits.
///
/// # Errors
/// [`Error::Io`] if the system's random source fails.
pub(crate) fn generated_name() -> Result<String> {
    let mut random = [0u8; 4];
    sys::fill_random(&mut random)?;
    Ok(format!(
        "psm_{}",
        random.map(|b| format!("{b:02x}")).concat()
    ))
}

/// Whether `name` is of the form [`generated_name`] gives.
pub(crate) fn is_generated_name(name: &str) -> bool {
    name.strip_prefix("psm_")
        .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
