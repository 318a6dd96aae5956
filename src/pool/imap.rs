//! [`IMap`]: the stream of a lazy map's results, one per input.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;

use super::Shared;
use super::async_result::{Answer, AsyncResult, decode_outcome};
use super::imap_input::Input;
use super::map_result::items;
use super::scheduler::Cmd;
use crate::error::TaskError;
use crate::task::ChunkOut;

/// A chunk of an [`IMap`] in flight: where its inputs start, how many they are, and the
/// handle on its answer.
struct ChunkAt<R> {
    start: usize,
    len: usize,
    sent: Instant,
    result: AsyncResult<ChunkOut<R>>,
}

/// A chunk's answer, with where its inputs start, how many they are, and how long it took
/// from submission to answer.
type Answered<R> = (
    usize,
    usize,
    Duration,
    std::result::Result<ChunkOut<R>, TaskError>,
);

impl<R: DeserializeOwned + 'static> Future for ChunkAt<R> {
    type Output = Answered<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A chunk is decoded in place: it is one of many, each of a bounded size.
        this.result.poll_answer(cx).map(|answer| {
            let r = match answer {
                Answer::Raw(o) => decode_outcome(o),
                Answer::Decoded(r) => r,
            };
            (this.start, this.len, this.sent.elapsed(), r)
        })
    }
}

/// How long a chunk should take when the chunk size is chosen by the stream: long enough
/// that the round trip to a worker is a small part of it, short enough that results flow.
const CHUNK_TARGET: Duration = Duration::from_millis(1);

/// The largest chunk size the stream chooses by itself.
const MAX_AUTO_CHUNK: usize = 4096;

/// The next chunk size, from the last chunk's `len` inputs answered `took` after they were
/// sent: as many inputs as fill [`CHUNK_TARGET`] at that pace, moving by at most a factor
/// of 4 from `current`. The time includes the round trip and the wait behind the chunks
/// sent before it, so it errs towards small chunks.
fn next_chunksize(current: usize, len: usize, took: Duration) -> usize {
    let per_input = took.as_secs_f64() / len.max(1) as f64;
    let fit = (CHUNK_TARGET.as_secs_f64() / per_input.max(1e-9)) as usize;
    fit.clamp((current / 4).max(1), current.saturating_mul(4))
        .clamp(1, MAX_AUTO_CHUNK)
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

/// The stream of results of [`Pool::imap`](crate::Pool::imap) and
/// [`Pool::imap_stream`](crate::Pool::imap_stream) (input order), and of
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) and
/// [`Pool::imap_unordered_stream`](crate::Pool::imap_unordered_stream) (completion order).
///
/// It is a [`futures::Stream`]: read it with `futures::StreamExt::next` (the `futures`
/// crate as a dependency of your own), `while let Some(r) = stream.next().await`, or with
/// any stream combinator.
///
/// It reads its input lazily, when polled, and keeps at most a bounded window of chunks
/// submitted and not yet yielded (four per worker), so an endless iterator is fine and
/// memory stays flat; an asynchronous input is polled only while the window has room. Its
/// inputs count as submitted when the stream is made: a [`close`](crate::Pool::close)
/// after that lets it read and submit them all, and [`join`](crate::Pool::join) waits
/// until it has (so read it to its end, or drop it, before awaiting `join`).
///
/// It yields exactly one item per input, unless the pool refuses its tasks: a stream made
/// after the pool was closed reads no input and yields the error
/// ([`TaskError::is_pool_closed`]) once, even for an empty input (Python's `imap` raises at
/// the call); one whose pool is terminated (or dropped) while it runs yields that error for
/// each input it had read, then ends without reading more (one waiting for an asynchronous
/// input, with no input read and unanswered, yields it once). An input whose task failed
/// yields its [`TaskError`], which names the input's index ([`TaskError::input_index`], so
/// that failures can be placed in [`imap_unordered`](crate::Pool::imap_unordered)'s stream
/// too); a
/// chunk that failed as a whole (its worker died, it timed out or was cancelled) yields
/// that error for each of its inputs.
///
/// A chunk's results arrive together and wait in the stream; taking one spends a unit of the
/// task's budget with tokio's scheduler, as a receive from a tokio channel does, so that a
/// loop over them lets the runtime's other tasks run.
///
/// # Panics
/// If reading the input panics (the iterator or stream, or an input's `Serialize`), the
/// stream reads no more and submits nothing more; it yields the results of the chunks read
/// before, then the poll that would have yielded the failing chunk's results resumes the
/// panic (Python raises the iterator's exception at the same place; the failing chunk's
/// inputs read before the panic are lost in both).
///
/// # Cancel safety
/// `next()` is cancel safe: results that arrived stay in the stream. Dropping the stream
/// stops reading input; chunks already submitted run to their end and their results are
/// discarded.
#[must_use = "streams do nothing unless polled"]
pub struct IMap<R: DeserializeOwned + 'static> {
    shared: Arc<Shared>,
    /// Its id for the scheduler, which lets it submit after a close if it was made before
    /// (see [`Cmd::StreamOpened`]).
    id: u64,
    input: Box<dyn Input>,
    entry: super::Entry,
    chunksize: usize,
    /// Whether the stream chooses the chunk size (none was given).
    auto_chunksize: bool,
    window: usize,
    exhausted: bool,
    /// The index of the next input to be read.
    next_index: usize,
    pending: Pending<R>,
    ready: VecDeque<std::result::Result<R, TaskError>>,
    /// The panic of the input (its iterator, or an input's `Serialize`), caught when the
    /// stream read it and resumed once the results of the chunks before have been yielded.
    input_panic: Option<Box<dyn std::any::Any + Send>>,
    /// Ready once the pool's scheduler is gone (the pool terminated or dropped): what ends
    /// a stream that waits for its input with nothing in flight, which no answer would.
    pool_gone: Pin<Box<dyn Future<Output = ()> + Send>>,
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

/// A stream dropped before its end submits nothing more: a close need not wait for it.
impl<R: DeserializeOwned + 'static> Drop for IMap<R> {
    fn drop(&mut self) {
        self.end();
    }
}

impl<R: DeserializeOwned + 'static> IMap<R> {
    /// Reads no more input, and tells the scheduler so (once).
    fn end(&mut self) {
        if !self.exhausted {
            self.exhausted = true;
            let _ = self.shared.cmds.send(Cmd::StreamEnded(self.id));
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> IMap<R> {
    pub(super) fn new(
        shared: Arc<Shared>,
        input: Box<dyn Input>,
        entry: super::Entry,
        ordered: bool,
    ) -> IMap<R> {
        let window = 4 * shared.processes.max(1);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Made after a close: it reads no input and yields the refusal once, as Python's
        // `imap` raises at the call.
        let refused = shared.closed.load(Ordering::Acquire);
        if !refused {
            let _ = shared.cmds.send(Cmd::StreamOpened(id));
        }
        let pool_gone = Box::pin({
            let cmds = shared.cmds.clone();
            async move { cmds.closed().await }
        });
        let mut ready = VecDeque::new();
        if refused {
            ready.push_back(Err(TaskError::pool_closed()));
        }
        IMap {
            shared,
            id,
            input,
            entry,
            chunksize: 1,
            auto_chunksize: true,
            window,
            exhausted: refused,
            next_index: 0,
            pending: if ordered {
                Pending::Ordered(FuturesOrdered::new())
            } else {
                Pending::Unordered(FuturesUnordered::new())
            },
            ready,
            input_panic: None,
            pool_gone,
        }
    }

    /// Sends inputs to the workers `n` at a time (Python's `chunksize`). Set it before
    /// polling the stream. 0 counts as 1.
    ///
    /// Without it, the stream chooses: it starts with one input per chunk (Python's
    /// default) and sizes each next chunk by how fast the last ones came back, so that a
    /// chunk takes about a millisecond (at most 4,096 inputs): tiny tasks travel many to a
    /// message, long ones one at a time.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.chunksize = n.max(1);
        self.auto_chunksize = false;
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
        if !this.ready.is_empty() {
            // A result already here spends a unit of the task's budget, as a receive from a
            // tokio channel does: a loop over a chunk's many results lets the runtime's other
            // tasks run. (A result that comes with its chunk spends the unit the chunk's
            // answer spent.)
            std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
            return Poll::Ready(this.ready.pop_front());
        }
        loop {
            if let Some(r) = this.ready.pop_front() {
                return Poll::Ready(Some(r));
            }
            // Whether the input has nothing ready now (it wakes this task when it has).
            let mut input_waits = false;
            while !this.exhausted && this.in_flight() < this.window {
                let (chunksize, input) = (this.chunksize, &mut this.input);
                let pulled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    input.next_chunk(chunksize, cx)
                }));
                let (len, enc) = match pulled {
                    Ok(Poll::Ready(Some(chunk))) => chunk,
                    Ok(Poll::Pending) => {
                        input_waits = true;
                        break;
                    }
                    Ok(Poll::Ready(None)) => {
                        this.end();
                        break;
                    }
                    // The chunk the input panicked in is lost, as in Python, where the
                    // results before the failing chunk come first, then its exception.
                    Err(panic) => {
                        this.input_panic = Some(panic);
                        this.end();
                        break;
                    }
                };
                // A chunk that cannot be encoded fails in the submission, in its place.
                let chunk = ChunkAt {
                    start: this.next_index,
                    len,
                    sent: Instant::now(),
                    result: this
                        .shared
                        .submit_from(Some(this.id), this.entry, enc, None),
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
                    if let Some(panic) = this.input_panic.take() {
                        std::panic::resume_unwind(panic);
                    }
                    if this.exhausted {
                        return Poll::Ready(None);
                    }
                    if input_waits {
                        // Nothing in flight: a pool gone meanwhile would not be heard of
                        // until the input gave an item, which it may never do.
                        if this.pool_gone.as_mut().poll(cx).is_ready() {
                            this.end();
                            return Poll::Ready(Some(Err(TaskError::pool_closed())));
                        }
                        return Poll::Pending;
                    }
                }
                Poll::Ready(Some((start, len, took, chunk))) => {
                    if this.auto_chunksize && chunk.is_ok() {
                        this.chunksize = next_chunksize(this.chunksize, len, took);
                    }
                    if chunk.as_ref().is_err_and(|e| e.is_pool_closed()) {
                        this.end();
                    }
                    this.ready.extend(indexed_items(start, len, chunk));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_grow_for_tiny_tasks_and_shrink_for_long_ones() {
        // 1 input in 50 µs (a round trip): about 20 fit in a millisecond, 4 at most now.
        assert_eq!(next_chunksize(1, 1, Duration::from_micros(50)), 4);
        assert_eq!(next_chunksize(4, 4, Duration::from_micros(60)), 16);
        assert_eq!(next_chunksize(1024, 1024, Duration::from_micros(100)), 4096);
        assert_eq!(
            next_chunksize(4096, 4096, Duration::from_micros(100)),
            MAX_AUTO_CHUNK
        );
        // 64 inputs of 10 ms each: back to a quarter, then to one.
        assert_eq!(next_chunksize(64, 64, Duration::from_millis(640)), 16);
        assert_eq!(next_chunksize(1, 1, Duration::from_millis(10)), 1);
        // Steady at the right size.
        assert_eq!(next_chunksize(100, 100, Duration::from_millis(1)), 100);
    }
}
