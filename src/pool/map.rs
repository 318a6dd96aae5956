//! [`Map`]: a map not yet submitted, and how its input is collected and cut into chunks.

use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::map_result::MapResult;
use super::payload::Payload;
use super::{Entry, Pool};
use crate::error::{Result, TaskError};
use crate::sys;
use crate::task::ChunkOut;
use crate::wire::plain::{Items, SharedItems};

/// Encodes the chunk of a map's input from one index to another.
pub(super) type ChunkEncoder = Box<dyn Fn(usize, usize) -> Result<Payload> + Send>;

/// A map's input, in a vector whose memory is faulted in by huge pages when it is large.
pub(super) fn collect_items<I: IntoIterator>(iterable: I) -> Vec<I::Item> {
    let it = iterable.into_iter();
    let mut items = Vec::with_capacity(it.size_hint().0);
    sys::advise_huge_pages(&mut items);
    items.extend(it);
    items
}

/// Python's default chunk size for `map`: `ceil(len / (4 × workers))`, at least 1.
pub(crate) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes.max(1)).max(1)
}

/// A [`Pool::map`] or [`Pool::starmap`] not yet submitted: set [`chunksize`](Self::chunksize)
/// if needed, then await it (or [`submit`](Self::submit) it for a [`MapResult`]).
#[must_use = "a map does nothing until awaited or submitted"]
pub struct Map<'p, R> {
    pool: &'p Pool,
    _result: std::marker::PhantomData<fn() -> R>,
    len: usize,
    encode: ChunkEncoder,
    entry: Entry,
    chunksize: Option<usize>,
}

impl<R> std::fmt::Debug for Map<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("len", &self.len)
            .field("chunksize", &self.chunksize)
            .finish_non_exhaustive()
    }
}

impl<'p, R: DeserializeOwned + 'static> Map<'p, R> {
    /// A map over `items`, each chunk of which is encoded (a slice of `items`) when it is
    /// sent and run by `entry` in a worker of `pool`.
    pub(super) fn new<T>(pool: &'p Pool, items: Vec<T>, entry: Entry) -> Map<'p, R>
    where
        T: Serialize + Send + 'static,
    {
        let len = items.len();
        let encode: ChunkEncoder = match SharedItems::new(items) {
            Ok(shared) => Box::new(move |from, to| {
                let (head, bytes) = shared.chunk(from..to)?;
                Ok(Payload::plain_chunk(head, bytes))
            }),
            Err(items) => {
                Box::new(move |from, to| Items::new(&items, from..to).encode().map(Payload::from))
            }
        };
        Map {
            pool,
            _result: std::marker::PhantomData,
            len,
            encode,
            entry,
            chunksize: None,
        }
    }

    /// Sends the items to the workers `n` at a time (Python's `chunksize`). The default is
    /// Python's: `ceil(len / (4 × processes))`. 0 counts as 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Submits every chunk now and returns the handle on the results (Python's
    /// `map_async`). A pool that was closed or terminated refuses the map whatever its
    /// input, an empty one too, as Python's `map_async` raises at the call: the handle
    /// fails with [`TaskError::is_pool_closed`].
    pub fn submit(self) -> MapResult<R> {
        if self.pool.shared.closed.load(Ordering::Acquire) {
            return MapResult::refused(TaskError::pool_closed());
        }
        let size = self
            .chunksize
            .unwrap_or_else(|| default_chunksize(self.len, self.pool.processes()));
        let mut chunks = Vec::with_capacity(self.len.div_ceil(size));
        let mut from = 0;
        while from < self.len {
            let to = (from + size).min(self.len);
            chunks.push(self.pool.shared.submit::<ChunkOut<R>>(
                self.entry,
                (self.encode)(from, to),
                None,
            ));
            from = to;
        }
        MapResult::new(chunks, self.len, size)
    }
}

impl<'p, R: DeserializeOwned + 'static> std::future::IntoFuture for Map<'p, R> {
    type Output = std::result::Result<Vec<R>, TaskError>;
    type IntoFuture = MapResult<R>;

    /// Submits the map; see [`MapResult`] for what dropping it does.
    fn into_future(self) -> MapResult<R> {
        self.submit()
    }
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn default_chunksize_is_pythons() {
        // divmod(len, 4 * workers), plus one if there is a remainder.
        assert_eq!(default_chunksize(1_000_000, 2), 125_000);
        assert_eq!(default_chunksize(10, 2), 2);
        assert_eq!(default_chunksize(9, 2), 2);
        assert_eq!(default_chunksize(8, 2), 1);
        assert_eq!(default_chunksize(1, 8), 1);
        assert_eq!(default_chunksize(0, 8), 1);
    }
}
