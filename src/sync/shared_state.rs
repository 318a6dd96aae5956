//! [`SharedState`]: what every primitive is made of. A shared-memory segment that holds the
//! primitive's words, and the eventfd ([`Wake`]) that wakes its waiters; both descriptors, so
//! the pair is a serde type that crosses to another process by `SCM_RIGHTS`.
//!
//! Each primitive names its segment's layout with a zero-sized [`Layout`] type: the size the
//! receiver checks before it touches any fixed offset, and any further check of a received
//! segment. The receiver maps the same pages and adopts the eventfd
//! (refusing a segment of another kind, by the name it was made with, and a descriptor that
//! is not an eventfd), so the two processes share one primitive.

use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::wake::Wake;
use crate::awake::Recent;
use crate::error::Result;
use crate::sys::{self, SharedRegion};
use crate::wire::{Fd, FdRef};

/// The segment layout of one primitive.
pub(crate) trait Layout {
    /// The primitive's name in error messages ("lock", "barrier", ...).
    const WHAT: &'static str;
    /// The segment's size in bytes: every offset the primitive uses is below it.
    const SIZE: usize;

    /// Checks a received segment beyond its size (a barrier's party count, say).
    fn check(_region: &SharedRegion) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// A primitive's segment and eventfd.
#[derive(Debug)]
pub(crate) struct SharedState<L> {
    pub(crate) region: SharedRegion,
    pub(crate) wake: Wake,
    /// When this process last handed the primitive over or was handed it after a wait:
    /// whether a wait may spin first (see [`awake`](crate::awake)).
    pub(crate) recent: Recent,
    layout: PhantomData<fn() -> L>,
}

/// The name of a primitive's segment: what a receiver checks that it is of its kind.
fn segment_name<L: Layout>() -> String {
    format!("tokio-multiprocessing-{}", L::WHAT)
}

impl<L: Layout> SharedState<L> {
    /// A fresh, zeroed segment and a fresh eventfd.
    pub(crate) fn new() -> Result<SharedState<L>> {
        Ok(SharedState {
            region: SharedRegion::anonymous(&segment_name::<L>(), L::SIZE)?,
            wake: Wake::new()?,
            recent: Recent::default(),
            layout: PhantomData,
        })
    }
}

impl<L> Serialize for SharedState<L> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (FdRef(self.region.fd()), FdRef(self.wake.fd())).serialize(s)
    }
}

impl<'de, L: Layout> Deserialize<'de> for SharedState<L> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (region, wake) = <(Fd, Fd)>::deserialize(d)?;
        // Another kind's segment of the same size would be taken for this one's words: a
        // lock's owner word read as a semaphore's count, its events as tokens.
        if let Some(name) = sys::segment_name(region.as_fd())
            && name != segment_name::<L>()
        {
            return Err(serde::de::Error::custom(format!(
                "a {} was received with the segment of something else ({name})",
                L::WHAT
            )));
        }
        let region = map_received(region, L::SIZE, L::WHAT, false)?;
        L::check(&region).map_err(serde::de::Error::custom)?;
        // Any other descriptor would be written and read as one: a socket's peer would get
        // the wake-ups' bytes, and the waits would lose its data.
        if !sys::is_eventfd(wake.as_fd()) {
            return Err(serde::de::Error::custom(format!(
                "the wake-up descriptor of a {} is not an eventfd",
                L::WHAT
            )));
        }
        Ok(SharedState {
            region,
            wake: Wake::from_fd(wake.into_owned()),
            recent: Recent::default(),
            layout: PhantomData,
        })
    }
}

/// The segment of a primitive received from another process as a `{ raw }` struct (the shape
/// its derived `Serialize` gives), for one of two types of a kind that share a layout (`Lock`
/// and `RLock`, say): `sibling` names the other type if the segment says it is that type's.
pub(crate) fn received_as<'de, L: Layout, D: Deserializer<'de>>(
    d: D,
    what: &str,
    sibling: impl FnOnce(&SharedState<L>) -> Option<&'static str>,
) -> std::result::Result<Arc<SharedState<L>>, D::Error> {
    /// The shape of the types as they cross.
    #[derive(Deserialize)]
    #[serde(bound = "L: Layout")]
    struct Sent<L> {
        raw: SharedState<L>,
    }
    let raw = Sent::<L>::deserialize(d)?.raw;
    if let Some(other) = sibling(&raw) {
        return Err(serde::de::Error::custom(format!(
            "{other} was received as {what}"
        )));
    }
    Ok(Arc::new(raw))
}

/// Maps a segment received from another process, checking that it holds at least `need`
/// bytes, so that every fixed offset the primitive uses is inside it.
///
/// `named`: the segment may be a named POSIX one, whose size is not sealed; otherwise it must
/// be an anonymous segment of this crate's, sealed (see [`SharedRegion::anonymous`]).
pub(crate) fn map_received<E: serde::de::Error>(
    fd: Fd,
    need: usize,
    what: &str,
    named: bool,
) -> std::result::Result<SharedRegion, E> {
    let region = SharedRegion::from_fd_named(fd.into_owned(), named)
        .map_err(|e| E::custom(format!("cannot map the segment of a {what}: {e}")))?;
    if region.len() < need {
        return Err(E::custom(format!(
            "the segment of a {what} holds {} bytes, at least {need} are needed",
            region.len()
        )));
    }
    Ok(region)
}
