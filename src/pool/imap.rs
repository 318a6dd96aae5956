//! [`IMap`]: the stream of a lazy map's results, one per input.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;

use super::Shared;
use super::async_result::AsyncResult;
use super::map_result::items;
use crate::error::TaskError;
use crate::task::ChunkOut;
use crate::wire::Encoded;

/// Pulls the next chunk of inputs (at most the given number) and encodes it: how many
/// inputs it holds, and their encoding; `None` when the input is exhausted.
pub(super) type NextChunk = Box<dyn FnMut(usize) -> Option<(usize, crate::Result<Encoded>)> + Send>;

/// A chunk of an [`IMap`] in flight: where its inputs start, how many they are, and the
/// handle on its answer.
struct ChunkAt<R> {
    start: usize,
    len: usize,
    result: AsyncResult<ChunkOut<R>>,
}

impl<R: DeserializeOwned + 'static> Future for ChunkAt<R> {
    type Output = (usize, usize, std::result::Result<ChunkOut<R>, TaskError>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        Pin::new(&mut this.result)
            .poll(cx)
            .map(|r| (this.start, this.len, r))
    }
}

enum Pending<R: DeserializeOwned + 'static> {
    Ordered(FuturesOrdered<ChunkAt<R>>),
    Unordered(FuturesUnordered<ChunkAt<R>>),
}

/// The results of a chunk of an [`IMap`] whose inputs start at `start`: one per input, each
/// error naming its input.
fn indexed_items<R: Send + 'static>(
    start: usize,
    len: usize,
    chunk: std::result::Result<ChunkOut<R>, TaskError>,
) -> Box<dyn Iterator<Item = std::result::Result<R, TaskError>> + Send> {
    match chunk {
        Ok(c) => Box::new(items(c, start)),
        // A chunk that failed as a whole: its error for each of its inputs.
        Err(e) => Box::new((0..len).map(move |i| Err(e.clone().at_input(start + i)))),
    }
}

/// The stream of results of [`Pool::imap`](crate::Pool::imap) (input order) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (completion order).
///
/// It reads its input lazily, when polled, and keeps at most a bounded window of chunks
/// submitted and not yet yielded (four per worker), so an endless iterator is fine and
/// memory stays flat. It yields exactly one item per input. An input whose task failed
/// yields its [`TaskError`], which names the input's index ([`TaskError::input_index`], so
/// that failures can be placed in [`imap_unordered`](crate::Pool::imap_unordered)'s stream
/// too); a
/// chunk that failed as a whole (its worker died, it timed out or was cancelled) yields
/// that error for each of its inputs.
///
/// # Cancel safety
/// `next()` is cancel safe: results that arrived stay in the stream. Dropping the stream
/// stops reading input; chunks already submitted run to their end and their results are
/// discarded.
#[must_use = "streams do nothing unless polled"]
pub struct IMap<R: DeserializeOwned + 'static> {
    shared: Arc<Shared>,
    next_chunk: NextChunk,
    entry: super::Entry,
    chunksize: usize,
    window: usize,
    exhausted: bool,
    /// The index of the next input to be read.
    next_index: usize,
    pending: Pending<R>,
    ready: VecDeque<std::result::Result<R, TaskError>>,
}

// Nothing in the stream is ever pinned in place.
impl<R: DeserializeOwned + 'static> Unpin for IMap<R> {}

impl<R: DeserializeOwned + 'static> std::fmt::Debug for IMap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("chunksize", &self.chunksize)
            .field("window", &self.window)
            .field("exhausted", &self.exhausted)
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + Send + 'static> IMap<R> {
    pub(super) fn new(
        shared: Arc<Shared>,
        next_chunk: NextChunk,
        entry: super::Entry,
        ordered: bool,
    ) -> IMap<R> {
        let window = 4 * shared.processes.max(1);
        IMap {
            shared,
            next_chunk,
            entry,
            chunksize: 1,
            window,
            exhausted: false,
            next_index: 0,
            pending: if ordered {
                Pending::Ordered(FuturesOrdered::new())
            } else {
                Pending::Unordered(FuturesUnordered::new())
            },
            ready: VecDeque::new(),
        }
    }

    /// Sends inputs to the workers `n` at a time (Python's `chunksize`; the default is 1).
    /// Set it before polling the stream. 0 counts as 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self
    }

    fn in_flight(&self) -> usize {
        match &self.pending {
            Pending::Ordered(p) => p.len(),
            Pending::Unordered(p) => p.len(),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> Stream for IMap<R> {
    type Item = std::result::Result<R, TaskError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(r) = this.ready.pop_front() {
                return Poll::Ready(Some(r));
            }
            while !this.exhausted && this.in_flight() < this.window {
                let Some((len, enc)) = (this.next_chunk)(this.chunksize) else {
                    this.exhausted = true;
                    break;
                };
                // A chunk that cannot be encoded fails in the submission, in its place.
                let chunk = ChunkAt {
                    start: this.next_index,
                    len,
                    result: this.shared.submit::<ChunkOut<R>>(this.entry, enc, None),
                };
                this.next_index += len;
                match &mut this.pending {
                    Pending::Ordered(p) => p.push_back(chunk),
                    Pending::Unordered(p) => p.push(chunk),
                }
            }
            if !this.ready.is_empty() {
                continue;
            }
            let next = match &mut this.pending {
                Pending::Ordered(p) => p.poll_next_unpin(cx),
                Pending::Unordered(p) => p.poll_next_unpin(cx),
            };
            match next {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    if this.exhausted {
                        return Poll::Ready(None);
                    }
                }
                Poll::Ready(Some((start, len, chunk))) => {
                    if chunk.as_ref().is_err_and(|e| e.is_pool_closed()) {
                        this.exhausted = true;
                    }
                    this.ready.extend(indexed_items(start, len, chunk));
                }
            }
        }
    }
}
