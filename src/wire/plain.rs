//! Sequences of plain numbers as one MessagePack `bin`.
//!
//! A `map` over a million integers sends a million items each way. As a MessagePack array,
//! every item is encoded and decoded on its own (a marker, a width, a visitor call); as a
//! `bin` of little-endian values it is one copy. [`Items`] chooses by the item type: a
//! sequence of `u8`–`u64`, `i8`–`i64`, `usize`, `isize`, `f32` or `f64` travels as `bin`,
//! any other as the usual array. Both ends know the item type (the task entry is compiled for
//! it), so nothing on the wire says which form was used.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use serde::de::{
    self, Deserialize, DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor,
};
use serde::ser::{Serialize, Serializer};

use super::frame::SharedBytes;
use crate::error::Error;
use crate::sys;

/// Whether a sequence of `T` travels as `bin`.
pub(crate) fn is_plain<T: 'static>() -> bool {
    sys::is_number::<T>()
}

/// The items of a sequence of plain numbers sent as [`Items`] (`body` is its encoding, a
/// `bin` and nothing after it), read where they lie: `None` unless `T` is a plain number
/// type, the machine little-endian (the wire's order) and `body` such a `bin`, whole.
pub(crate) fn items_in_place<T: 'static>(
    body: &[u8],
) -> Option<impl ExactSizeIterator<Item = T> + '_> {
    if !cfg!(target_endian = "little") {
        return None;
    }
    let (len, data) = match body {
        [0xc4, n, rest @ ..] => (usize::from(*n), rest),
        [0xc5, a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        [0xc6, a, b, c, d, rest @ ..] => (u32::from_be_bytes([*a, *b, *c, *d]) as usize, rest),
        _ => return None,
    };
    if data.len() != len {
        return None;
    }
    sys::read_numbers::<T>(data)
}

/// The little-endian bytes of `items[range]`, if `T` is a plain number type: the items'
/// own memory on a little-endian machine, a copy on another.
#[allow(clippy::ptr_arg)] // the `Vec` is what tells a plain item type
fn le_bytes<T: 'static>(items: &Vec<T>, range: Range<usize>) -> Option<Cow<'_, [u8]>> {
    macro_rules! encode {
        ($t:ty) => {
            if let Some(v) = (items as &dyn Any).downcast_ref::<Vec<$t>>() {
                let s = v.get(range)?;
                return Some(if cfg!(target_endian = "little") {
                    Cow::Borrowed(sys::number_bytes(s))
                } else {
                    Cow::Owned(s.iter().flat_map(|x| x.to_le_bytes()).collect())
                });
            }
        };
    }
    sys::for_each_number!(encode);
    None
}

/// A vector of plain numbers, read as the bytes it lies in.
struct Numbers<T>(Vec<T>);

impl<T: sys::Number> AsRef<[u8]> for Numbers<T> {
    fn as_ref(&self) -> &[u8] {
        sys::number_bytes(&self.0)
    }
}

/// Plain numbers shared by the chunks of a map, each chunk sent from where its items lie:
/// on a little-endian machine the memory of plain numbers is their encoding.
pub(crate) struct SharedItems {
    bytes: SharedBytes,
    width: usize,
}

impl SharedItems {
    /// `items` shared, if `T` is a plain number type and the machine little-endian;
    /// otherwise `items` back.
    pub(crate) fn new<T: 'static>(mut items: Vec<T>) -> Result<SharedItems, Vec<T>> {
        if cfg!(target_endian = "little") {
            macro_rules! share {
                ($t:ty) => {
                    if let Some(v) = (&mut items as &mut dyn Any).downcast_mut::<Vec<$t>>() {
                        return Ok(SharedItems {
                            bytes: SharedBytes::new(Arc::new(Numbers(std::mem::take(v)))),
                            width: std::mem::size_of::<$t>(),
                        });
                    }
                };
            }
            sys::for_each_number!(share);
        }
        Err(items)
    }

    /// `items[range]` encoded as [`Items`] encodes it: the head of a `bin`, and the items'
    /// bytes to send after it.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] for a chunk over 4 GiB (no `bin` holds it), and
    /// [`Error::Protocol`] for a range out of bounds.
    pub(crate) fn chunk(&self, range: Range<usize>) -> crate::Result<(Vec<u8>, SharedBytes)> {
        let bytes = range.start.saturating_mul(self.width)..range.end.saturating_mul(self.width);
        let shared = self
            .bytes
            .slice(bytes)
            .ok_or_else(|| Error::Protocol(format!("items {range:?} out of range")))?;
        let len = shared.as_slice().len();
        let head = match (u8::try_from(len), u16::try_from(len), u32::try_from(len)) {
            (Ok(n), _, _) => vec![0xc4, n],
            (_, Ok(n), _) => [&[0xc5][..], &n.to_be_bytes()].concat(),
            (_, _, Ok(n)) => [&[0xc6][..], &n.to_be_bytes()].concat(),
            _ => {
                return Err(Error::FrameTooLarge {
                    size: len as u64,
                    max: crate::max_frame_size(),
                });
            }
        };
        Ok((head, shared))
    }
}

/// Items to encode, `items[range]`: as `bin` if they are plain numbers, as an array
/// otherwise.
pub(crate) struct Items<'a, T> {
    items: &'a Vec<T>,
    range: Range<usize>,
}

impl<'a, T> Items<'a, T> {
    /// `items[range]`.
    pub(crate) fn new(items: &'a Vec<T>, range: Range<usize>) -> Items<'a, T> {
        Items { items, range }
    }

    /// All of `items`.
    pub(crate) fn all(items: &'a Vec<T>) -> Items<'a, T> {
        Items::new(items, 0..items.len())
    }
}

impl<T: Serialize + 'static> Items<'_, T> {
    /// The items encoded; an error names the item type, not this wrapper.
    pub(crate) fn encode(&self) -> crate::Result<super::Encoded> {
        super::Encoded::new(self).map_err(|e| match e {
            Error::Encode { message, .. } => Error::Encode {
                type_name: std::any::type_name::<T>(),
                message,
            },
            e => e,
        })
    }
}

impl<T: Serialize + 'static> Serialize for Items<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(b) = le_bytes(self.items, self.range.clone()) {
            return s.serialize_bytes(&b);
        }
        match self.items.get(self.range.clone()) {
            Some(slice) => s.collect_seq(slice),
            None => Err(serde::ser::Error::custom("items out of range")),
        }
    }
}

/// A decoded sequence, sent as [`Items`].
pub(crate) struct ItemsOwned<T>(pub(crate) Vec<T>);

impl<'de, T: DeserializeOwned + 'static> Deserialize<'de> for ItemsOwned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut v = Vec::new();
        AppendItems(&mut v).deserialize(d)?;
        Ok(ItemsOwned(v))
    }
}

/// Decodes a sequence sent as [`Items`] onto the end of a vector, with no vector of its own
/// in between.
pub(crate) struct AppendItems<'a, T>(pub(crate) &'a mut Vec<T>);

impl<'de, T: DeserializeOwned + 'static> DeserializeSeed<'de> for AppendItems<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if is_plain::<T>() {
            d.deserialize_bytes(self)
        } else {
            d.deserialize_seq(self)
        }
    }
}

impl<'de, T: DeserializeOwned + 'static> Visitor<'de> for AppendItems<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of items")
    }

    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<(), E> {
        macro_rules! append {
            ($t:ty) => {
                if let Some(out) = (&mut *self.0 as &mut dyn Any).downcast_mut::<Vec<$t>>() {
                    const W: usize = std::mem::size_of::<$t>();
                    #[allow(clippy::modulo_one)] // W is 1 for bytes
                    if b.len() % W != 0 {
                        return Err(E::custom(format!(
                            "{} bytes are not a whole number of {}",
                            b.len(),
                            stringify!($t)
                        )));
                    }
                    out.extend(b.chunks_exact(W).map(|c| {
                        let mut a = [0u8; W];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    }));
                    return Ok(());
                }
            };
        }
        sys::for_each_number!(append);
        Err(E::custom("not a plain number type"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.reserve(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(x) = seq.next_element()? {
            self.0.push(x);
        }
        Ok(())
    }
}

/// `#[serde(with = "plain::vec")]` for a `Vec<T>` field sent as [`Items`].
pub(crate) mod vec {
    use super::*;

    #[allow(clippy::ptr_arg)] // the `Vec` is what tells a plain item type
    pub(crate) fn serialize<T: Serialize + 'static, S: Serializer>(
        v: &Vec<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        Items::all(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, T: DeserializeOwned + 'static, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        ItemsOwned::<T>::deserialize(d).map(|i| i.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::{Encoded, decode};

    fn round_trip<T>(items: Vec<T>) -> Vec<T>
    where
        T: Serialize + DeserializeOwned + 'static,
    {
        let enc = Encoded::new(&Items::all(&items)).expect("encodes");
        decode::<ItemsOwned<T>>(&enc.bytes, Vec::new())
            .expect("decodes")
            .0
    }

    #[test]
    fn plain_numbers_round_trip_as_bin() {
        let v: Vec<u64> = vec![0, 1, u64::MAX, 1 << 40];
        let enc = Encoded::new(&Items::all(&v)).expect("encodes");
        // bin 8 with a one-byte length (0xc4), then 32 bytes.
        assert_eq!(&&enc.bytes[..2], &[0xc4, 32]);
        assert_eq!(round_trip(v.clone()), v);
        assert_eq!(round_trip(vec![-1i8, 0, 127]), vec![-1i8, 0, 127]);
        assert_eq!(round_trip(vec![-1.5f64, f64::MAX]), vec![-1.5f64, f64::MAX]);
        assert_eq!(round_trip(vec![1.25f32]), vec![1.25f32]);
        assert_eq!(round_trip(Vec::<i32>::new()), Vec::<i32>::new());
    }

    #[test]
    fn shared_chunks_encode_as_items_do() {
        // Sizes that need each `bin` length width: 1, 2 and 4 bytes.
        for n in [3usize, 40, 9_000] {
            let v: Vec<u64> = (0..n as u64).map(|x| x.wrapping_mul(0x9e37_79b9)).collect();
            let Ok(shared) = SharedItems::new(v.clone()) else {
                panic!("u64 is plain");
            };
            for range in [0..n, 1..n - 1, 2..2, n - 1..n] {
                let (head, bytes) = shared.chunk(range.clone()).expect("in range");
                let sent = [&head[..], bytes.as_slice()].concat();
                let want = Encoded::new(&Items::new(&v, range.clone())).expect("encodes");
                assert_eq!(sent, want.bytes, "{n} items, chunk {range:?}");
            }
            assert!(shared.chunk(n - 1..n + 1).is_err(), "past the end");
        }
        let strings = vec!["a".to_string()];
        assert_eq!(
            SharedItems::new(strings.clone()).err(),
            Some(strings),
            "other types come back whole"
        );
    }

    #[test]
    fn other_items_round_trip_as_arrays() {
        let v = vec![(1u8, "a".to_string()), (2, "b".to_string())];
        let enc = Encoded::new(&Items::all(&v)).expect("encodes");
        assert_eq!(enc.bytes[0], 0x92); // fixarray of 2
        assert_eq!(round_trip(v.clone()), v);
        assert_eq!(round_trip(vec![true, false]), vec![true, false]);
    }

    #[test]
    fn a_ragged_bin_is_an_error() {
        let enc = Encoded::new(&serde_bytes::Bytes::new(&[1, 2, 3])).expect("encodes");
        let r = decode::<ItemsOwned<u16>>(&enc.bytes, Vec::new());
        assert!(r.is_err(), "3 bytes are not u16s");
        // An array of the same numbers is read too.
        let enc = Encoded::new(&vec![1u16, 2]).expect("encodes");
        let r = decode::<ItemsOwned<u16>>(&enc.bytes, Vec::new()).expect("decodes");
        assert_eq!(r.0, vec![1, 2]);
    }
}
