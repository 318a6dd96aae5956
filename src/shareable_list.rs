//! [`ShareableList`]: Python's `multiprocessing.shared_memory.ShareableList`, a list of a
//! fixed length whose items (integers, floats, booleans, strings, bytes, `None`) live in a
//! named [`SharedMemory`] segment, laid out exactly as CPython lays it out, so that a Rust
//! process and a Python one attach to the same list by name.
//!
//! # Layout (CPython 3.8+, native little-endian)
//! - 8 bytes: the number of items, `n`;
//! - `(n + 1) × 8` bytes: each item's offset in the data area, the first 0, the last its end;
//! - the data area: 8 bytes per number, boolean or `None`; a string or bytes gets its
//!   encoded length rounded up to the next multiple of 8 (always at least one byte more);
//! - `n × 8` bytes: each item's `struct` format, NUL-padded: `q`, `d`, `xxxxxxx?`,
//!   `xxxxxx?x` (`None`), `<size>s`;
//! - `n` bytes: how to read each item back: 0 as it is, 1 a UTF-8 string, 2 bytes, 3 `None`
//!   (strings and bytes lose trailing NULs, as in Python).
//!
//! Everything read from the segment is checked against its size before use: a segment that
//! is not a list, or that another process wrote garbage into, is an error, never a panic.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shared::SharedMemory;

/// One item of a [`ShareableList`]: the types Python's `ShareableList` stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ShareableItem {
    /// Python's `None`.
    None,
    /// A `bool`.
    Bool(bool),
    /// An `int` that fits in 64 bits.
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `str` (UTF-8).
    Str(String),
    /// A `bytes`.
    Bytes(Vec<u8>),
}

impl fmt::Display for ShareableItem {
    /// As Python's `repr`: `None`, `True`, `3`, `2.5`, `'text'`, `b'data'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareableItem::None => write!(f, "None"),
            ShareableItem::Bool(true) => write!(f, "True"),
            ShareableItem::Bool(false) => write!(f, "False"),
            ShareableItem::Int(i) => write!(f, "{i}"),
            ShareableItem::Float(x) => f.write_str(&python_float_repr(*x)),
            ShareableItem::Str(s) => f.write_str(&python_str_repr(s)),
            ShareableItem::Bytes(b) => write!(
                f,
                "b{}",
                python_quoted(b.iter().map(|&b| char::from(b)), true)
            ),
        }
    }
}

/// Python's `repr` of a `float`: the shortest digits that read back as `x`, in positional
/// notation (with `.0` if integral) for exponents -4 to 15, else in scientific notation
/// with a signed exponent of at least two digits (`1e+16`, `1.5e-07`); `nan`, `inf`.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits, as `1.5e-7`.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let fixed = format!("{x}");
        match fixed.contains('.') {
            true => fixed,
            false => fixed + ".0",
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
    }
}

/// Python's `repr` of a `str`: in single quotes, or in double quotes if it holds a single
/// quote and no double quote; a backslash, the quote, `\t`, `\n`, `\r` and characters
/// Python does not print escaped. Of those, this knows the controls, the separators other
/// than the space, and the formatting characters of the common ranges (soft hyphen,
/// zero-width and direction marks, the byte-order mark); any other character is printed.
fn python_str_repr(s: &str) -> String {
    python_quoted(s.chars(), false)
}

/// The repr of `chars`, quoted as Python quotes a `str` or, for `bytes`, a `bytes` (every
/// character below 256, and those from 128 escaped).
fn python_quoted(chars: impl Iterator<Item = char> + Clone, bytes: bool) -> String {
    let (single, double) = chars
        .clone()
        .fold((false, false), |(s, d), c| (s || c == '\'', d || c == '"'));
    let quote = if single && !double { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in chars {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (bytes && !c.is_ascii()) || !python_prints(c) => {
                let n = u32::from(c);
                out.push_str(&match n {
                    0..=0xff => format!("\\x{n:02x}"),
                    0x100..=0xffff => format!("\\u{n:04x}"),
                    _ => format!("\\U{n:08x}"),
                });
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Whether Python's `str.isprintable` holds for `c`, as far as [`python_str_repr`] says.
fn python_prints(c: char) -> bool {
    let formatting = matches!(
        c,
        '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}'
    );
    c == ' ' || !(c.is_control() || c.is_whitespace() || formatting)
}

/// Whether Python's `==` holds between `a` and `b`: booleans, integers and floats compare
/// by value across their types, exactly (`2**53 + 1` equals no float); a string, bytes or
/// `None` equals only an equal item of its own type.
fn python_eq(a: &ShareableItem, b: &ShareableItem) -> bool {
    use ShareableItem as I;
    /// 2⁶³, the first float past `i64`'s range.
    const PAST_I64: f64 = 9_223_372_036_854_775_808.0;
    let int = |i: &ShareableItem| match *i {
        I::Bool(b) => Some(i64::from(b)),
        I::Int(n) => Some(n),
        _ => None,
    };
    let int_is_float =
        |n: i64, x: f64| (-PAST_I64..PAST_I64).contains(&x) && x.fract() == 0.0 && x as i64 == n;
    match (a, b) {
        (I::Float(x), I::Float(y)) => x == y,
        (I::Float(x), other) | (other, I::Float(x)) => {
            int(other).is_some_and(|n| int_is_float(n, *x))
        }
        _ => match (int(a), int(b)) {
            (Some(m), Some(n)) => m == n,
            _ => a == b,
        },
    }
}

macro_rules! item_from {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for ShareableItem {
            fn from(v: $t) -> ShareableItem {
                ShareableItem::$variant(v.into())
            }
        }
    )*};
}
item_from!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, i16 => Int, u16 => Int,
    i8 => Int, u8 => Int, f64 => Float, f32 => Float, String => Str, &str => Str,
    Vec<u8> => Bytes, &[u8] => Bytes);

impl From<()> for ShareableItem {
    fn from((): ()) -> ShareableItem {
        ShareableItem::None
    }
}

impl<T: Into<ShareableItem>> From<Option<T>> for ShareableItem {
    fn from(v: Option<T>) -> ShareableItem {
        v.map_or(ShareableItem::None, Into::into)
    }
}

/// How an item is stored: its `struct` format and its read-back code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    None,
    Str,
    Bytes,
}

impl Kind {
    fn of(item: &ShareableItem) -> Kind {
        match item {
            ShareableItem::None => Kind::None,
            ShareableItem::Bool(_) => Kind::Bool,
            ShareableItem::Int(_) => Kind::Int,
            ShareableItem::Float(_) => Kind::Float,
            ShareableItem::Str(_) => Kind::Str,
            ShareableItem::Bytes(_) => Kind::Bytes,
        }
    }

    /// The `struct` format of an item of this kind in a slot of `room` bytes.
    fn format(self, room: usize) -> String {
        match self {
            Kind::Int => "q".into(),
            Kind::Float => "d".into(),
            Kind::Bool => "xxxxxxx?".into(),
            Kind::None => "xxxxxx?x".into(),
            Kind::Str | Kind::Bytes => format!("{room}s"),
        }
    }

    /// CPython's read-back code (`_back_transforms_mapping`).
    fn code(self) -> u8 {
        match self {
            Kind::Int | Kind::Float | Kind::Bool => 0,
            Kind::Str => 1,
            Kind::Bytes => 2,
            Kind::None => 3,
        }
    }
}

/// The largest slot whose format, `<size>s`, fits its 8 bytes.
const MAX_SLOT: usize = 9_999_999;

/// The bytes a new item's slot takes: 8, or a string's or bytes' length rounded up to the
/// next multiple of 8, as CPython allots them.
fn slot_size(item: &ShareableItem) -> usize {
    match item {
        ShareableItem::Str(s) => (s.len() / 8 + 1) * 8,
        ShareableItem::Bytes(b) => (b.len() / 8 + 1) * 8,
        _ => 8,
    }
}

/// A list of a fixed length in shared memory (Python's `ShareableList`): items can be read
/// and replaced, not added or removed. Named, so that any process, Rust or Python, attaches
/// to it by name; sent to a child, it carries its segment.
///
/// Like Python's, it has no lock: a reader racing a writer of the same item may see a mix
/// of the two. Guard it with a [`Lock`](crate::Lock) where processes write while others read.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{ShareableItem, ShareableList};
/// let a = ShareableList::create(
///     Some("demo-list"),
///     [ShareableItem::from("howdy"), b"HoWdY".as_slice().into(), (-273.154).into(), 100.into(),
///      ().into(), true.into(), 42.into()],
/// )?;
/// let b = ShareableList::attach("demo-list")?;
/// b.set(2, 3.0)?;
/// assert_eq!(a.get(2)?, ShareableItem::Float(3.0));
/// assert_eq!(a.get(-1)?, ShareableItem::Int(42));
/// assert!(b.set(0, "far too long for the slot").is_err());
/// # Ok::<(), tokio_multiprocessing::Error>(())
/// ```
pub struct ShareableList {
    shm: SharedMemory,
    /// Read once: a list's length and slots never change after it is made.
    layout: Layout,
}

impl Serialize for ShareableList {
    /// The segment; the receiver reads the layout from it.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.shm.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ShareableList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let shm = SharedMemory::deserialize(d)?;
        let layout = Layout::read(&shm).map_err(serde::de::Error::custom)?;
        Ok(ShareableList { shm, layout })
    }
}

/// Where the parts of a list lie, read from (and checked against) its segment.
#[derive(Clone)]
struct Layout {
    len: usize,
    /// `len + 1` offsets into the data area.
    offsets: Vec<usize>,
}

impl Layout {
    fn data(&self) -> usize {
        (self.len + 2) * 8
    }

    fn formats(&self) -> usize {
        self.data() + self.offsets[self.len]
    }

    fn codes(&self) -> usize {
        self.formats() + self.len * 8
    }

    fn end(&self) -> usize {
        self.codes() + self.len
    }

    /// Reads the list's length and offsets, checking them against the segment's size.
    fn read(shm: &SharedMemory) -> Result<Layout> {
        let size = shm.size();
        let not_a_list = |why: &str| {
            Error::InvalidArgument(format!(
                "shared memory segment {:?} does not hold a list: {why}",
                shm.name().unwrap_or("(anonymous)")
            ))
        };
        // The smallest list, an empty one: its length and its one offset.
        if size < 16 {
            return Err(not_a_list("it is smaller than an empty list"));
        }
        let len = usize::try_from({
            let mut b = [0u8; 8];
            shm.read(0, &mut b)?;
            i64::from_le_bytes(b)
        })
        .ok()
        // The smallest list of n items: its length and offsets, 8 bytes of data, a format
        // and a code per item.
        .filter(|&n| {
            n.checked_mul(25)
                .and_then(|m| m.checked_add(16))
                .is_some_and(|m| m <= size)
        })
        .ok_or_else(|| not_a_list("its length does not fit it"))?;
        let mut raw = vec![0u8; (len + 1) * 8];
        shm.read(8, &mut raw)?;
        let mut offsets = Vec::with_capacity(len + 1);
        for chunk in raw.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let o = usize::try_from(i64::from_le_bytes(b))
                .map_err(|_| not_a_list("a negative offset"))?;
            if offsets.last().is_some_and(|&last| o < last) {
                return Err(not_a_list("its offsets go backwards"));
            }
            offsets.push(o);
        }
        if offsets.first() != Some(&0) {
            return Err(not_a_list("its first offset is not 0"));
        }
        let layout = Layout { len, offsets };
        // The last offset is checked with the rest of the layout against the size.
        let end = layout.offsets[len]
            .checked_add((len + 2) * 8 + len * 9)
            .ok_or_else(|| not_a_list("its offsets pass its end"))?;
        if end > size {
            return Err(not_a_list("its offsets pass its end"));
        }
        Ok(layout)
    }
}

/// A list about to be made: its items, checked, and its layout, which sets the size of the
/// segment it needs.
pub(crate) struct Plan {
    items: Vec<ShareableItem>,
    layout: Layout,
}

impl Plan {
    /// The plan of a list holding `items`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a string or bytes of 10 MB or more (its slot's size
    /// would not fit its format, as in CPython).
    pub(crate) fn of<I: Into<ShareableItem>>(items: impl IntoIterator<Item = I>) -> Result<Plan> {
        let items: Vec<ShareableItem> = items.into_iter().map(Into::into).collect();
        // A slot's format (`<size>s`) has 8 bytes, as in CPython, which refuses the same.
        if let Some(big) = items.iter().find(|i| slot_size(i) > MAX_SLOT) {
            return Err(Error::InvalidArgument(format!(
                "a str or bytes item needs a slot of {} bytes, more than a ShareableList's \
                 format can name ({MAX_SLOT})",
                slot_size(big)
            )));
        }
        let mut offsets = vec![0usize];
        for item in &items {
            let end = offsets[offsets.len() - 1] + slot_size(item);
            offsets.push(end);
        }
        let layout = Layout {
            len: items.len(),
            offsets,
        };
        Ok(Plan { items, layout })
    }

    /// The size of the segment the list needs, in bytes.
    pub(crate) fn size(&self) -> usize {
        self.layout.end()
    }

    /// Writes the list into `shm`, a new segment of [`size`](Self::size) bytes.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] if the segment is smaller.
    pub(crate) fn fill(self, shm: SharedMemory) -> Result<ShareableList> {
        let Plan { items, layout } = self;
        let mut head = Vec::with_capacity(layout.data());
        head.extend_from_slice(&(layout.len as i64).to_le_bytes());
        for &o in &layout.offsets {
            head.extend_from_slice(&(o as i64).to_le_bytes());
        }
        shm.write(0, &head)?;
        let list = ShareableList { shm, layout };
        for (i, item) in items.iter().enumerate() {
            list.store(&list.layout, i, item)?;
        }
        Ok(list)
    }
}

impl ShareableList {
    /// Creates a list holding `items` in a new segment named `name`, or a generated name
    /// (`psm_` and 8 hex digits, as CPython's) for `None` (Python's
    /// `ShareableList(sequence, name=name)`). As with [`SharedMemory::create`], this handle
    /// removes the name when dropped.
    ///
    /// # Errors
    /// As [`SharedMemory::create`]: [`Error::Io`] `AlreadyExists` if the name is taken;
    /// [`Error::InvalidArgument`] for a string or bytes of 10 MB or more (its slot's size
    /// would not fit its format, as in CPython).
    pub fn create<I>(
        name: Option<&str>,
        items: impl IntoIterator<Item = I>,
    ) -> Result<ShareableList>
    where
        I: Into<ShareableItem>,
    {
        let plan = Plan::of(items)?;
        let shm = match name {
            Some(n) => SharedMemory::create(n, plan.size())?,
            None => SharedMemory::create_with_a_generated_name(plan.size())?,
        };
        plan.fill(shm)
    }

    /// Attaches to the list in the segment named `name` (Python's
    /// `ShareableList(name=name)`), made by this crate or by CPython.
    ///
    /// # Errors
    /// [`Error::Io`] `NotFound` if there is no such segment; [`Error::InvalidArgument`] if
    /// the segment does not hold a list.
    pub fn attach(name: &str) -> Result<ShareableList> {
        let shm = SharedMemory::attach(name)?;
        let layout = Layout::read(&shm)?;
        Ok(ShareableList { shm, layout })
    }

    /// Another handle to the same list, which never removes the name (an attacher): for
    /// example to pass the list to a child process.
    ///
    /// # Errors
    /// As [`SharedMemory::try_clone`].
    pub fn try_clone(&self) -> Result<ShareableList> {
        Ok(ShareableList {
            shm: self.shm.try_clone()?,
            layout: self.layout.clone(),
        })
    }

    /// The segment the list lives in (Python's `shm`).
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// Removes the segment's name (Python's `sl.shm.unlink()`): for a list attached by name
    /// whose maker (a Python process, say) leaves the removal to others. The list stays
    /// usable here.
    ///
    /// # Errors
    /// As [`SharedMemory::unlink`].
    pub fn unlink(&mut self) -> Result<()> {
        self.shm.unlink()
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.layout.len
    }

    /// Whether the list has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item at `i`; negative counts from the end, as in Python.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] (Python's `IndexError`); [`Error::InvalidArgument`] if the
    /// item's bytes are not what its format says (a string that is not UTF-8, a format this
    /// list does not know).
    pub fn get(&self, i: i64) -> Result<ShareableItem> {
        let layout = &self.layout;
        let at = self.position(layout, i)?;
        self.load(layout, at)
    }

    /// Replaces the item at `i` (negative counts from the end). A number, boolean or `None`
    /// fits any slot; a string or bytes must fit the slot the list was made with.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`]; [`Error::InvalidArgument`] for a string or bytes longer
    /// than its slot (Python's `ValueError: bytes/str item exceeds available storage`).
    pub fn set(&self, i: i64, item: impl Into<ShareableItem>) -> Result<()> {
        let layout = &self.layout;
        let at = self.position(layout, i)?;
        self.store(layout, at, &item.into())
    }

    /// Every item, in order (Python's `list(sl)`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn to_vec(&self) -> Result<Vec<ShareableItem>> {
        let layout = &self.layout;
        (0..layout.len).map(|i| self.load(layout, i)).collect()
    }

    /// How many items equal `item` (Python's `count`), as Python's `==` compares them: a
    /// number equals a number of another type of the same value (`1`, `1.0` and `True`), a
    /// NaN equals nothing.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn count(&self, item: &ShareableItem) -> Result<usize> {
        Ok(self.to_vec()?.iter().filter(|i| python_eq(i, item)).count())
    }

    /// The position of the first item equal to `item` (Python's `index`), as
    /// [`count`](Self::count) compares them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there is none (Python's `ValueError`); as
    /// [`get`](Self::get).
    pub fn index(&self, item: &ShareableItem) -> Result<usize> {
        self.to_vec()?
            .iter()
            .position(|i| python_eq(i, item))
            .ok_or_else(|| Error::InvalidArgument(format!("{item} not in this container")))
    }

    /// The `struct` formats of the items, joined (Python's `format`).
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn format(&self) -> Result<String> {
        let layout = &self.layout;
        (0..layout.len)
            .map(|i| self.kind(layout, i).map(|(f, _)| f))
            .collect()
    }

    fn position(&self, layout: &Layout, i: i64) -> Result<usize> {
        let len = layout.len as i64;
        let at = if i < 0 { i + len } else { i };
        match (0..len).contains(&at) {
            true => Ok(at as usize),
            false => Err(Error::IndexOutOfRange {
                index: i.unsigned_abs() as usize,
                len: layout.len,
            }),
        }
    }

    /// ShareableItem `i`'s format string and kind, as its format and read-back code say.
    fn kind(&self, layout: &Layout, i: usize) -> Result<(String, Kind)> {
        let mut raw = [0u8; 8];
        self.shm.read(layout.formats() + i * 8, &mut raw)?;
        let mut code = [0u8; 1];
        self.shm.read(layout.codes() + i, &mut code)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(8);
        let format = String::from_utf8_lossy(&raw[..end]).into_owned();
        let kind = match (format.as_str(), code[0]) {
            ("q", 0) => Kind::Int,
            ("d", 0) => Kind::Float,
            ("xxxxxxx?", 0) => Kind::Bool,
            (_, 3) => Kind::None,
            (f, 1 | 2) if f.ends_with('s') && f[..f.len() - 1].parse::<usize>().is_ok() => {
                match code[0] {
                    1 => Kind::Str,
                    _ => Kind::Bytes,
                }
            }
            (f, c) => {
                return Err(Error::InvalidArgument(format!(
                    "item {i} has the format {f:?} and read-back code {c}, which a list does not use"
                )));
            }
        };
        Ok((format, kind))
    }

    fn load(&self, layout: &Layout, i: usize) -> Result<ShareableItem> {
        let (_, kind) = self.kind(layout, i)?;
        let start = layout.data() + layout.offsets[i];
        let room = layout.offsets[i + 1] - layout.offsets[i];
        let mut bytes = vec![0u8; room];
        self.shm.read(start, &mut bytes)?;
        let word = || -> Result<[u8; 8]> {
            bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| Error::InvalidArgument(format!("item {i}'s slot is too small")))
        };
        Ok(match kind {
            Kind::Int => ShareableItem::Int(i64::from_le_bytes(word()?)),
            Kind::Float => ShareableItem::Float(f64::from_le_bytes(word()?)),
            Kind::Bool => ShareableItem::Bool(word()?[7] != 0),
            Kind::None => ShareableItem::None,
            Kind::Str | Kind::Bytes => {
                let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                bytes.truncate(used);
                match kind {
                    Kind::Bytes => ShareableItem::Bytes(bytes),
                    _ => ShareableItem::Str(String::from_utf8(bytes).map_err(|e| {
                        Error::InvalidArgument(format!("item {i} is not UTF-8: {e}"))
                    })?),
                }
            }
        })
    }

    fn store(&self, layout: &Layout, i: usize, item: &ShareableItem) -> Result<()> {
        let start = layout.data() + layout.offsets[i];
        let room = layout.offsets[i + 1] - layout.offsets[i];
        let mut bytes = vec![0u8; room];
        let value: &[u8] = match item {
            ShareableItem::Str(s) => s.as_bytes(),
            ShareableItem::Bytes(b) => b,
            _ => &[],
        };
        match item {
            ShareableItem::Str(_) | ShareableItem::Bytes(_) if value.len() > room => {
                return Err(Error::InvalidArgument(format!(
                    "bytes/str item exceeds available storage: {} bytes in a slot of {room}",
                    value.len()
                )));
            }
            ShareableItem::Str(_) | ShareableItem::Bytes(_) => {
                bytes[..value.len()].copy_from_slice(value)
            }
            _ if room < 8 => {
                return Err(Error::InvalidArgument(format!(
                    "item {i}'s slot of {room} bytes is too small for a number"
                )));
            }
            ShareableItem::Int(v) => bytes[..8].copy_from_slice(&v.to_le_bytes()),
            ShareableItem::Float(v) => bytes[..8].copy_from_slice(&v.to_le_bytes()),
            ShareableItem::Bool(b) => bytes[7] = u8::from(*b),
            ShareableItem::None => {}
        }
        let kind = Kind::of(item);
        let mut format = [0u8; 8];
        let f = kind.format(room);
        format[..f.len().min(8)].copy_from_slice(&f.as_bytes()[..f.len().min(8)]);
        // A number is 8 bytes at the slot's start; a string or bytes fills its slot.
        let written = match kind {
            Kind::Str | Kind::Bytes => room,
            _ => 8,
        };
        self.shm.write(start, &bytes[..written])?;
        self.shm.write(layout.formats() + i * 8, &format)?;
        self.shm.write(layout.codes() + i, &[kind.code()])
    }
}

impl fmt::Debug for ShareableList {
    /// As Python's `repr`: `ShareableList([1, 'a'], name='psm_…')`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items = match self.to_vec() {
            Ok(items) => items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => format!("<{e}>"),
        };
        write!(
            f,
            "ShareableList([{items}], name={})",
            python_str_repr(self.shm.name().unwrap_or(""))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_print_as_python_prints_them() {
        // Each beside CPython 3.11's `repr` of the same value.
        let strs = [
            ("xy", "'xy'"),
            ("it's", "\"it's\""),
            ("say \"hi\"", "'say \"hi\"'"),
            ("both ' and \"", "'both \\' and \"'"),
            ("tab\there\nnl\\", "'tab\\there\\nnl\\\\'"),
            ("\u{0}\u{7f}\u{80}\u{9f}", "'\\x00\\x7f\\x80\\x9f'"),
            ("é ñ 日本", "'é ñ 日本'"),
            (
                "\u{a0}\u{200b}\u{2028}\u{feff}",
                "'\\xa0\\u200b\\u2028\\ufeff'",
            ),
            ("😀", "'😀'"),
        ];
        for (s, python) in strs {
            assert_eq!(ShareableItem::Str(s.into()).to_string(), python);
        }
        let bytes: [(&[u8], &str); 5] = [
            (b"\x00\x01", "b'\\x00\\x01'"),
            (b"it's", "b\"it's\""),
            (b"q\"", "b'q\"'"),
            (b"\\\t\n\r\x7f\xff abc", "b'\\\\\\t\\n\\r\\x7f\\xff abc'"),
            (b"both ' and \"", "b'both \\' and \"'"),
        ];
        for (b, python) in bytes {
            assert_eq!(ShareableItem::Bytes(b.to_vec()).to_string(), python);
        }
        let floats = [
            (f64::NAN, "nan"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (100.0, "100.0"),
            (-273.154, "-273.154"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123_456_789_012_345_678.0, "1.2345678901234568e+17"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (1e100, "1e+100"),
        ];
        for (x, python) in floats {
            assert_eq!(ShareableItem::Float(x).to_string(), python);
        }
    }
}
