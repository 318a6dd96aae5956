//! MessagePack encoding with descriptors on the side.
//!
//! A value that owns descriptors (a pipe end, a queue, an event...) serialises each of them
//! with [`serialize_fd`]: the descriptor is duplicated into a side list that travels beside
//! the frame by `SCM_RIGHTS`, and the body holds its index in that list. [`deserialize_fd`]
//! takes it back out on the receiving side. Outside of [`encode_into`] / [`decode`] there is
//! no side list, so such a value refuses to serialise (to JSON, say) with a clear error.

use std::any::type_name;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rmp_serde::config::BytesMode;
use serde::de::DeserializeSeed;
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;

thread_local! {
    static OUTGOING: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
    static KEPT: OnKeptList = const { RefCell::new(None) };
    static HELD_BACK: OnKeptList = const { RefCell::new(None) };
    /// Why taking a duplicate of a descriptor being encoded failed (out of descriptors,
    /// say): the system's error, which the encoding reports as such, not as a value that
    /// cannot be encoded.
    static DUP_FAILED: RefCell<Option<std::io::Error>> = const { RefCell::new(None) };
    /// The descriptors of the encoding in progress that travel once however often they
    /// appear in it ([`serialize_shared_fd`]): each one's number, and its index in the side
    /// list.
    static SHARED: RefCell<Vec<(RawFd, u32)>> = const { RefCell::new(Vec::new()) };
}

/// What a value being encoded asked to be done once its encoding is kept ([`when_kept`]).
type OnKept = Box<dyn FnOnce()>;

/// A thread's list of [`OnKept`], there while an encoding (or a [`held_back`]) is under way.
type OnKeptList = RefCell<Option<Vec<OnKept>>>;

/// What encodings kept under [`held_back`] asked to be done, for its caller to do once what
/// it encoded is sure to go out ([`Kept::done`]); dropped, nothing is done.
#[must_use]
pub(crate) struct Kept(Vec<OnKept>);

impl Kept {
    /// Does what the encodings asked.
    pub(crate) fn done(self) {
        self.0.into_iter().for_each(|f| f());
    }
}

/// Runs `f`, holding back what the encodings it keeps ask to be done ([`when_kept`]), for a
/// caller that may still refuse to send what it encoded (too large, or descriptors on TCP).
pub(crate) fn held_back<R>(f: impl FnOnce() -> R) -> (R, Kept) {
    let scope = Scope::open(&HELD_BACK);
    let r = f();
    (r, Kept(scope.close()))
}

/// A list of [`OnKept`] on this thread for as long as it lives: [`close`](Self::close)
/// takes it and puts back the list before (none, outside an encoding); dropped unclosed (a
/// panic in a value's `Serialize`), it puts that back as well and what it held is not done.
struct Scope {
    key: &'static std::thread::LocalKey<OnKeptList>,
    previous: Option<Option<Vec<OnKept>>>,
}

impl Scope {
    fn open(key: &'static std::thread::LocalKey<OnKeptList>) -> Scope {
        let previous = key.with(|k| k.replace(Some(Vec::new())));
        Scope {
            key,
            previous: Some(previous),
        }
    }

    fn close(mut self) -> Vec<OnKept> {
        let previous = self.previous.take().flatten();
        self.key.with(|k| k.replace(previous)).unwrap_or_default()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            self.key.with(|k| k.replace(previous));
        }
    }
}

/// Runs `f` once the encoding under way on this thread is kept: when its [`encode_to`] (or
/// [`encode_into`], [`Encoded`]'s constructors) returns `Ok`, not when it fails, and not for
/// a pass that only measures the value; at once outside an encoding. A value whose encoding
/// must tell someone that a copy of it exists (a manager's proxy lends its object) says so
/// here, so that an encoding that is thrown away (failed, or measured and done again) tells
/// no one.
pub(crate) fn when_kept(f: impl FnOnce() + 'static) {
    let f = Box::new(f);
    let unscoped = KEPT.with(|k| match k.borrow_mut().as_mut() {
        Some(pending) => {
            pending.push(f);
            None
        }
        None => Some(f),
    });
    if let Some(f) = unscoped {
        f();
    }
}

/// The size from which an encoding goes into a buffer sized for it beforehand: a growing
/// buffer copies itself at each doubling, and faults its fresh memory in 4 KiB at a time.
pub(crate) const LARGE: usize = 1 << 20;

/// A value already encoded: its MessagePack bytes and the descriptors it refers to.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Encoded {
    /// Encodes `value` on its own: in one pass if it takes at most [`LARGE`] bytes, else
    /// again as [`large`](Self::large).
    pub(crate) fn new<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
        match Encoded::within(value, LARGE)? {
            Some(e) => Ok(e),
            None => Encoded::large(value),
        }
    }

    /// Encodes `value`, known to be large, into a buffer of exactly its size whose memory
    /// the kernel is asked to back with huge pages: a first pass counts the bytes (writing
    /// none; descriptors it duplicates are closed again), so the buffer never grows, and it
    /// faults in 2 MiB at a time rather than 4 KiB.
    pub(crate) fn large<T: Serialize + ?Sized>(value: &T) -> Result<Encoded> {
        let (len, _) = measure(value)?;
        let mut e = Encoded {
            bytes: Vec::with_capacity(len),
            fds: Vec::new(),
        };
        sys::advise_huge_pages(&mut e.bytes);
        encode_into(&mut e.bytes, &mut e.fds, value)?;
        Ok(e)
    }

    /// Encodes `value` if its encoding takes at most `max` bytes; `None` if it takes more,
    /// found out after writing at most `max` bytes of it (the caller encodes it elsewhere).
    pub(crate) fn within<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Option<Encoded>> {
        let mut e = Encoded::default();
        let fits = encode_within(&mut e.bytes, &mut e.fds, value, max, usize::MAX)?;
        Ok(fits.then_some(e))
    }
}

/// The length of `value`'s encoding and the number of descriptors it holds, found by a pass
/// that writes nothing (the descriptors it duplicates are closed again, and what the value
/// asks to be done once its encoding is kept is not done).
pub(crate) fn measure<T: Serialize + ?Sized>(value: &T) -> Result<(usize, usize)> {
    let mut counted = Counted(0);
    let mut fds = Vec::new();
    encode_pass(&mut counted, &mut fds, value, false)?;
    Ok((counted.0, fds.len()))
}

/// The size from which a byte string of a value sent whole through a socket goes to the
/// socket straight from the value, where the socket takes it at once, rather than being
/// copied into the frame first (see `Framed::send_value`).
pub(crate) const DIRECT: usize = 64 * 1024;

/// [`encode_into`], unless `buf` would grow past `max` bytes or a single piece written (a
/// byte string, say) is `piece` bytes or more: `Ok(false)` then, found out on meeting it,
/// and `buf` and `fds` are left as they were (the caller encodes the value otherwise).
pub(crate) fn encode_within<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    value: &T,
    max: usize,
    piece: usize,
) -> Result<bool> {
    let len = buf.len();
    let mut capped = Capped {
        buf: &mut *buf,
        max,
        piece,
        over: false,
    };
    let res = encode_to(&mut capped, fds, value);
    let over = capped.over;
    if res.is_err() {
        buf.truncate(len);
    }
    match res {
        Ok(()) => Ok(true),
        Err(_) if over => Ok(false),
        Err(e) => Err(e),
    }
}

/// A writer that only counts the bytes written to it.
struct Counted(usize);

impl std::io::Write for Counted {
    // Inlined into the encoder, as `Capped::write`.
    #[inline]
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len();
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A buffer that refuses to grow past `max` bytes, or by a piece of `piece` bytes or more at
/// once, and remembers that it refused.
struct Capped<'a> {
    buf: &'a mut Vec<u8>,
    max: usize,
    piece: usize,
    over: bool,
}

impl std::io::Write for Capped<'_> {
    // Inlined into the encoder: serde hands a `Vec<u8>` over one byte per call.
    #[inline]
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.max || b.len() >= self.piece {
            self.over = true;
            return Err(std::io::Error::other(
                "the encoding is larger than its budget",
            ));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Appends the MessagePack encoding of `value` to `buf`, and the descriptors it holds to
/// `fds`. On error `buf` and `fds` are left as they were.
///
/// Byte sequences (`Vec<u8>`, `&[u8]`, `serde_bytes`, `bytes::Bytes`) are written as
/// MessagePack `bin`, not as arrays of integers.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    value: &T,
) -> Result<()> {
    let len = buf.len();
    let res = encode_to(&mut *buf, fds, value);
    if res.is_err() {
        buf.truncate(len);
    }
    res
}

/// [`encode_into`] to any writer; on error `fds` is left as it was.
pub(crate) fn encode_to<W: std::io::Write, T: Serialize + ?Sized>(
    w: W,
    fds: &mut Vec<OwnedFd>,
    value: &T,
) -> Result<()> {
    encode_pass(w, fds, value, true)
}

/// [`encode_to`]; what the value asked to be done once its encoding is kept
/// ([`when_kept`]) is done if `keep` and the encoding succeeded, and never else.
fn encode_pass<W: std::io::Write, T: Serialize + ?Sized>(
    w: W,
    fds: &mut Vec<OwnedFd>,
    value: &T,
    keep: bool,
) -> Result<()> {
    let nfds = fds.len();
    let previous = OUTGOING.with(|o| o.replace(Some(std::mem::take(fds))));
    let shared = SHARED.with(|s| s.take());
    let kept = Scope::open(&KEPT);
    let mut ser = rmp_serde::Serializer::new(w).with_bytes(BytesMode::ForceIterables);
    let res = value.serialize(&mut ser);
    *fds = OUTGOING.with(|o| o.replace(previous)).unwrap_or_default();
    SHARED.with(|s| s.replace(shared));
    let kept = kept.close();
    let dup_failed = DUP_FAILED.with(|d| d.borrow_mut().take());
    match res {
        Ok(()) => {
            if keep {
                let now = HELD_BACK.with(|h| match h.borrow_mut().as_mut() {
                    Some(held) => {
                        held.extend(kept);
                        Vec::new()
                    }
                    None => kept,
                });
                now.into_iter().for_each(|f| f());
            }
            Ok(())
        }
        Err(e) => {
            fds.truncate(nfds);
            Err(match dup_failed {
                Some(io) => Error::from(std::io::Error::new(
                    io.kind(),
                    format!(
                        "cannot duplicate a descriptor of a `{}` to send it: {io}{}",
                        type_name::<T>(),
                        crate::sys::descriptor_limit_note(&io)
                    ),
                )),
                None => Error::Encode {
                    type_name: type_name::<T>(),
                    message: e.to_string(),
                },
            })
        }
    }
}

/// Decodes one `T` from the front of `bytes`, giving it the descriptors `fds` (in the order
/// they were sent). Returns the value and the number of bytes it took. Descriptors the value
/// did not claim are closed.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(T, usize)> {
    let used = value_len(bytes).ok_or_else(|| Error::Decode {
        type_name: type_name::<T>(),
        message: "truncated or malformed MessagePack".into(),
    })?;
    Ok((decode(&bytes[..used], fds)?, used))
}

/// Decodes one `T` from `bytes`, the whole body of a frame (or a part already measured).
///
/// Bytes after the value are not looked at: a frame's length prefix delimits it, so they
/// cannot put a stream out of step, and scanning every body twice would cost a pass over
/// each large message. Malformed or truncated MessagePack is an error, never a panic or an
/// allocation of a claimed length (rmp-serde checks every length against the bytes at hand).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T> {
    decode_with(bytes, fds, std::marker::PhantomData::<T>)
}

/// Like [`decode`], through a seed (which may, say, append the items it decodes to a
/// vector of the caller's).
pub(crate) fn decode_with<'de, S: DeserializeSeed<'de>>(
    bytes: &'de [u8],
    fds: Vec<OwnedFd>,
    seed: S,
) -> Result<S::Value> {
    let previous = INCOMING.with(|i| i.replace(Some(fds.into_iter().map(Some).collect())));
    let res = seed.deserialize(&mut rmp_serde::Deserializer::from_read_ref(bytes));
    INCOMING.with(|i| i.replace(previous));
    res.map_err(|e| Error::Decode {
        type_name: type_name::<S::Value>(),
        message: e.to_string(),
    })
}

/// The marker of a MessagePack `bin` of `len` bytes (`bin 32`, the only one that holds
/// [`BIN_MIN`] bytes or more), if `len` fits it.
fn bin_marker(len: usize) -> Option<[u8; BIN_HEAD]> {
    let len = u32::try_from(len).ok()?.to_be_bytes();
    Some([0xc6, len[0], len[1], len[2], len[3]])
}

/// Bytes of a `bin 32` marker: its kind and its length.
pub(crate) const BIN_HEAD: usize = 5;

/// The smallest `bin` whose payload a receiver reads apart, to hand it over as it is.
pub(crate) const BIN_MIN: usize = 64 * 1024;

/// If `body` begins a MessagePack body that is one `bin` of [`BIN_MIN`] bytes or more and
/// nothing else, `body_len` bytes long in all, the length of that `bin`'s payload.
pub(crate) fn bin_body(body: &[u8], body_len: usize) -> Option<usize> {
    let payload = body_len.checked_sub(BIN_HEAD)?;
    (payload >= BIN_MIN && body.get(..BIN_HEAD)? == bin_marker(payload)?).then_some(payload)
}

/// The MessagePack `bin` that holds `payload`, whole.
pub(crate) fn bin_of(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BIN_HEAD + payload.len());
    out.extend_from_slice(&bin_marker(payload.len()).unwrap_or_default());
    out.extend_from_slice(payload);
    out
}

/// Decodes one `T` from a body that is one MessagePack `bin` holding `payload` (as
/// [`decode`] would from [`bin_of`]`(payload)`), handing `payload` over as it is to a value
/// that takes a byte buffer (`serde_bytes::ByteBuf`, `bytes::Bytes`...): no copy.
pub(crate) fn decode_bin<T: DeserializeOwned>(payload: Vec<u8>, fds: Vec<OwnedFd>) -> Result<T> {
    let previous = INCOMING.with(|i| i.replace(Some(fds.into_iter().map(Some).collect())));
    let res = T::deserialize(BinBody(payload));
    INCOMING.with(|i| i.replace(previous));
    res.map_err(|e| Error::Decode {
        type_name: type_name::<T>(),
        message: e.to_string(),
    })
}

/// A body that is one MessagePack `bin`, its payload held apart: handed over whole to a
/// value that takes a byte buffer (or any value), decoded as MessagePack otherwise.
struct BinBody(Vec<u8>);

/// Methods of [`BinBody`] that decode its MessagePack as rmp-serde does.
macro_rules! as_messagepack {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: serde::de::Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            let body = bin_of(&self.0);
            (&mut rmp_serde::Deserializer::new(&body[..])).$method($($arg,)* visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for BinBody {
    type Error = rmp_serde::decode::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_byte_buf(self.0)
    }

    fn deserialize_bytes<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_byte_buf(self.0)
    }

    fn deserialize_byte_buf<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_byte_buf(self.0)
    }

    fn is_human_readable(&self) -> bool {
        false
    }

    as_messagepack! {
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }
}

/// The length in bytes of the one MessagePack value at the front of `b`, or `None` if `b`
/// does not start with a whole, well-formed value. Linear in the number of items; never
/// allocates, whatever lengths the bytes claim.
pub(crate) fn value_len(b: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    let mut pending: u64 = 1;
    let be = |at: usize, n: usize| -> Option<u64> {
        let s = b.get(at..at.checked_add(n)?)?;
        Some(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    while pending > 0 {
        pending -= 1;
        let m = *b.get(pos)?;
        pos += 1;
        // (bytes of length field, extra fixed bytes, kind): kind 0 = skip `extra` bytes,
        // 1 = payload of `len` bytes, 2 = `len` items, 3 = `len` pairs.
        let (lenb, extra, kind): (usize, usize, u8) = match m {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0, 0),
            0x80..=0x8f => {
                pending += 2 * u64::from(m & 0x0f);
                continue;
            }
            0x90..=0x9f => {
                pending += u64::from(m & 0x0f);
                continue;
            }
            0xa0..=0xbf => {
                pos = pos.checked_add(usize::from(m & 0x1f))?;
                continue;
            }
            0xc1 => return None,
            0xc4 | 0xd9 => (1, 0, 1),
            0xc5 | 0xda => (2, 0, 1),
            0xc6 | 0xdb => (4, 0, 1),
            0xc7 => (1, 1, 1),
            0xc8 => (2, 1, 1),
            0xc9 => (4, 1, 1),
            0xca => (0, 4, 0),
            0xcb => (0, 8, 0),
            0xcc | 0xd0 => (0, 1, 0),
            0xcd | 0xd1 => (0, 2, 0),
            0xce | 0xd2 => (0, 4, 0),
            0xcf | 0xd3 => (0, 8, 0),
            0xd4 => (0, 2, 0),
            0xd5 => (0, 3, 0),
            0xd6 => (0, 5, 0),
            0xd7 => (0, 9, 0),
            0xd8 => (0, 17, 0),
            0xdc => (2, 0, 2),
            0xdd => (4, 0, 2),
            0xde => (2, 0, 3),
            0xdf => (4, 0, 3),
        };
        let len = if lenb > 0 { be(pos, lenb)? } else { 0 };
        pos = pos.checked_add(lenb)?.checked_add(extra)?;
        match kind {
            1 => pos = pos.checked_add(usize::try_from(len).ok()?)?,
            2 => pending += len,
            3 => pending += 2 * len,
            _ => {}
        }
        if pos > b.len() {
            return None;
        }
    }
    (pos <= b.len()).then_some(pos)
}

/// Serialises a descriptor into the side list of the encoding in progress (a duplicate is
/// taken; `fd` stays with its owner).
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    let i = side_index(fd).map_err(S::Error::custom)?;
    // A serializer that refuses the index takes nothing: rmp-serde tries the first item of
    // a sequence as a byte before it writes it for real, which would send its descriptor
    // twice.
    s.serialize_u32(i).inspect_err(|_| take_back(i))
}

/// Closes the duplicate at `index` of the side list again, if it is the last one there.
fn take_back(index: u32) {
    OUTGOING.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut()
            && list.len() == index as usize + 1
        {
            list.pop();
        }
    });
}

/// Serialises a descriptor that the receiver shares out ([`deserialize_shared_fd`]): one that
/// appears many times in a value (a manager's way to its server, in each of its proxies)
/// travels once, where each appearance would take a place of its own among the few that
/// one message carries.
///
/// A descriptor is known again by its number: what is being encoded is borrowed for the
/// whole encoding, so a descriptor it holds stays open, and its number stays its own.
pub(crate) fn serialize_shared_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let raw = fd.as_raw_fd();
    let seen = SHARED.with(|sh| {
        sh.borrow()
            .iter()
            .find(|&&(r, _)| r == raw)
            .map(|&(_, i)| i)
    });
    let index = match seen {
        Some(i) => i,
        None => {
            let i = side_index(fd).map_err(S::Error::custom)?;
            SHARED.with(|sh| sh.borrow_mut().push((raw, i)));
            i
        }
    };
    s.serialize_u32(index)
}

/// Puts a duplicate of `fd` in the side list of the encoding in progress; its index.
fn side_index(fd: BorrowedFd<'_>) -> std::result::Result<u32, String> {
    OUTGOING.with(|o| {
        let mut o = o.borrow_mut();
        let list = o.as_mut().ok_or_else(|| {
            "this value holds an operating-system resource and can only be sent to another \
             process by tokio-multiprocessing (as a Process, Pool or Queue argument)"
                .to_string()
        })?;
        if list.len() >= sys::MAX_FDS_PER_MESSAGE {
            return Err(format!(
                "one message may carry at most {} descriptors",
                sys::MAX_FDS_PER_MESSAGE
            ));
        }
        let dup = sys::dup_fd(fd).map_err(|e| {
            let message = format!("cannot duplicate a descriptor: {e}");
            DUP_FAILED.with(|d| *d.borrow_mut() = Some(e));
            message
        })?;
        list.push(dup);
        Ok((list.len() - 1) as u32)
    })
}

/// Takes a descriptor sent with [`serialize_shared_fd`] out of the decoding in progress: a
/// duplicate of it, for it may be claimed again (the one that arrived is closed with the
/// message's unclaimed descriptors).
pub(crate) fn deserialize_shared_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    let dup = INCOMING.with(|i| {
        let i = i.borrow();
        let fd = i.as_ref()?.get(index)?.as_ref()?;
        Some(sys::dup_fd(std::os::fd::AsFd::as_fd(fd)))
    });
    match dup {
        Some(Ok(fd)) => Ok(fd),
        Some(Err(e)) => Err(D::Error::custom(format!(
            "cannot duplicate descriptor #{index}: {e}"
        ))),
        None => Err(D::Error::custom(format!(
            "descriptor #{index} did not arrive with the message"
        ))),
    }
}

/// Takes a descriptor, sent with [`serialize_fd`], out of the side list of the decoding in
/// progress.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    INCOMING
        .with(|i| {
            let mut i = i.borrow_mut();
            let list = i.as_mut()?;
            list.get_mut(index)?.take()
        })
        .ok_or_else(|| {
            D::Error::custom(format!(
                "descriptor #{index} did not arrive with the message (or was claimed twice)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    /// Asks, while encoded, for a count to go up once the encoding is kept; panics after
    /// asking if told to.
    struct Asks(std::rc::Rc<std::cell::Cell<u32>>, bool);

    impl Serialize for Asks {
        fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            let count = self.0.clone();
            when_kept(move || count.set(count.get() + 1));
            assert!(!self.1, "asked to panic");
            s.serialize_unit()
        }
    }

    #[test]
    fn what_an_encoding_asks_is_done_once_it_is_kept() {
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let asks = |panics| Asks(count.clone(), panics);
        // A large value: measured, then encoded; kept once.
        Encoded::new(&(asks(false), vec![0u8; 2 * LARGE])).expect("encodes");
        assert_eq!(count.get(), 1);
        // Failed, or held back and dropped: not done.
        let refused = Encoded::new(&(
            asks(false),
            std::path::Path::new(OsStr::from_bytes(b"\xff")),
        ));
        assert!(refused.is_err());
        let (held, kept) = held_back(|| Encoded::new(&asks(false)));
        held.expect("encodes");
        drop(kept);
        assert_eq!(count.get(), 1);
        let (_, kept) = held_back(|| Encoded::new(&asks(false)));
        kept.done();
        assert_eq!(count.get(), 2);
        // A panic in an encoding leaves no scope behind: outside one, it is done at once.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            held_back(|| Encoded::new(&asks(true)))
        }));
        assert!(panicked.is_err());
        asks(false)
            .serialize(&mut rmp_serde::Serializer::new(Vec::new()))
            .expect("encodes");
        assert_eq!(count.get(), 3);
    }

    #[test]
    fn a_large_value_is_encoded_into_a_buffer_of_its_exact_size() {
        let value = (vec![7u32; 1 << 21], "tail".to_string());
        let e = Encoded::new(&value).expect("encodes");
        assert!(e.bytes.len() > LARGE);
        assert_eq!(e.bytes.capacity(), e.bytes.len(), "the buffer never grew");
        let back: (Vec<u32>, String) = decode(&e.bytes, e.fds).expect("decodes");
        assert_eq!(back, value);
    }

    #[test]
    fn a_large_value_carries_each_descriptor_once() {
        use std::os::fd::AsFd;
        let (a, _b) = sys::socketpair_stream().expect("a socket pair");
        let value = (
            crate::wire::FdRef(a.as_fd()),
            serde_bytes::ByteBuf::from(vec![1u8; 2 * LARGE]),
        );
        let e = Encoded::new(&value).expect("encodes");
        assert_eq!(e.fds.len(), 1);
    }

    #[test]
    fn value_len_agrees_with_the_encoder() {
        let e = Encoded::new(&(
            1u8,
            -70000i64,
            1.5f64,
            "s",
            vec![0u8; 70000],
            vec![(1u16, 'x')],
            Some(()),
        ))
        .unwrap();
        assert_eq!(value_len(&e.bytes), Some(e.bytes.len()));
        for cut in [1, 10, e.bytes.len() - 1] {
            assert_eq!(value_len(&e.bytes[..cut]), None);
        }
    }

    #[test]
    fn bytes_cross_as_bin() {
        let e = Encoded::new(&vec![7u8; 300]).unwrap();
        assert_eq!(e.bytes[0], 0xc5, "bin16 marker");
        assert_eq!(e.bytes.len(), 3 + 300);
        let back: Vec<u8> = decode(&e.bytes, vec![]).unwrap();
        assert_eq!(back, vec![7u8; 300]);
    }

    #[test]
    fn descriptors_go_to_the_side_list() {
        let (a, _b) = sys::socketpair_stream().unwrap();
        let e = Encoded::new(&(1u8, crate::wire::Fd::from(a), "x")).unwrap();
        assert_eq!(e.fds.len(), 1);
        let (_, fd, s): (u8, crate::wire::Fd, String) = decode(&e.bytes, e.fds).unwrap();
        assert_eq!(s, "x");
        drop(fd);
    }

    #[test]
    fn each_descriptor_of_a_sequence_travels_once() {
        use std::os::fd::AsFd;
        let (a, _b) = sys::socketpair_stream().unwrap();
        let (c, _d) = sys::socketpair_stream().unwrap();
        let fds = vec![crate::wire::FdRef(a.as_fd()), crate::wire::FdRef(c.as_fd())];
        let e = Encoded::new(&fds).unwrap();
        // (The first went twice: once for the encoder's try of it as a byte.)
        assert_eq!(e.fds.len(), 2);
        let got: Vec<crate::wire::Fd> = decode(&e.bytes, e.fds).unwrap();
        let ino = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(ino(got[0].as_fd()), ino(a.as_fd()));
        assert_eq!(ino(got[1].as_fd()), ino(c.as_fd()));
    }

    #[test]
    fn a_shared_descriptor_travels_once_and_arrives_for_each_appearance() {
        use crate::wire::{SharedFd, SharedFdRef};
        use std::os::fd::AsFd;
        let (a, _b) = sys::socketpair_stream().unwrap();
        let (c, _d) = sys::socketpair_stream().unwrap();
        // More appearances than one message carries descriptors, and a second descriptor.
        let mut refs: Vec<SharedFdRef<'_>> = (0..300).map(|_| SharedFdRef(a.as_fd())).collect();
        refs.push(SharedFdRef(c.as_fd()));
        let e = Encoded::new(&refs).unwrap();
        assert_eq!(e.fds.len(), 2);
        let got: Vec<SharedFd> = decode(&e.bytes, e.fds).unwrap();
        assert_eq!(got.len(), 301);
        let ino = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert!(
            got[..300]
                .iter()
                .all(|f| ino(f.0.as_fd()) == ino(a.as_fd()))
        );
        assert_eq!(ino(got[300].0.as_fd()), ino(c.as_fd()));
        let numbers: std::collections::HashSet<_> = got.iter().map(|f| f.0.as_raw_fd()).collect();
        assert_eq!(
            numbers.len(),
            301,
            "each appearance has a descriptor of its own"
        );
    }

    #[test]
    fn a_missing_descriptor_is_an_error() {
        let (a, _b) = sys::socketpair_stream().unwrap();
        let e = Encoded::new(&crate::wire::Fd::from(a)).unwrap();
        let err = decode::<crate::wire::Fd>(&e.bytes, vec![]).unwrap_err();
        assert!(err.to_string().contains("did not arrive"), "{err}");
    }

    #[test]
    fn descriptors_refuse_foreign_serializers() {
        let (a, _b) = sys::socketpair_stream().unwrap();
        let mut buf = Vec::new();
        let err = crate::wire::Fd::from(a)
            .serialize(&mut rmp_serde::Serializer::new(&mut buf))
            .unwrap_err();
        assert!(err.to_string().contains("tokio-multiprocessing"), "{err}");
    }
}
