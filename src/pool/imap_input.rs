//! What an [`IMap`](super::IMap) reads its inputs from: an iterator, pulled when the stream
//! is polled, or an asynchronous stream, polled with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use serde::Serialize;

use crate::wire::Encoded;
use crate::wire::plain::Items;

/// A chunk read from an input: how many inputs it holds, and their encoding.
pub(super) type Chunk = (usize, crate::Result<Encoded>);

/// The inputs of an [`IMap`](super::IMap), read a chunk at a time.
pub(super) trait Input: Send {
    /// The next chunk of at most `n` inputs: `Ready(None)` once the input has ended;
    /// `Pending` when it has none ready now, and then `cx` is woken when it has.
    fn next_chunk(&mut self, n: usize, cx: &mut Context<'_>) -> Poll<Option<Chunk>>;
}

/// The inputs of an iterator: a chunk is the next `n` items, or those left.
pub(super) struct FromIter<I: Iterator> {
    iter: I,
    buf: Vec<I::Item>,
}

impl<I: Iterator> FromIter<I> {
    pub(super) fn new(iter: I) -> FromIter<I> {
        FromIter {
            iter,
            buf: Vec::new(),
        }
    }
}

impl<I> Input for FromIter<I>
where
    I: Iterator + Send,
    I::Item: Serialize + Send + 'static,
{
    fn next_chunk(&mut self, n: usize, _: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.buf.clear();
        self.buf.extend(self.iter.by_ref().take(n));
        Poll::Ready(chunk_of(&self.buf))
    }
}

/// The inputs of a [`Stream`]: a chunk is the items it has ready, up to `n`, so that an
/// input that comes slowly is sent as it comes, not held back to fill a chunk.
pub(super) struct FromStream<S: Stream> {
    stream: Pin<Box<S>>,
    buf: Vec<S::Item>,
    /// The stream has ended: it is not polled again.
    ended: bool,
}

impl<S: Stream> FromStream<S> {
    pub(super) fn new(stream: S) -> FromStream<S> {
        FromStream {
            stream: Box::pin(stream),
            buf: Vec::new(),
            ended: false,
        }
    }
}

impl<S> Input for FromStream<S>
where
    S: Stream + Send,
    S::Item: Serialize + Send + 'static,
{
    fn next_chunk(&mut self, n: usize, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.buf.clear();
        while self.buf.len() < n && !self.ended {
            match self.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => self.buf.push(item),
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => break,
            }
        }
        match chunk_of(&self.buf) {
            None if !self.ended => Poll::Pending,
            chunk => Poll::Ready(chunk),
        }
    }
}

/// The chunk of `items`; `None` if there are none.
fn chunk_of<T: Serialize + 'static>(items: &Vec<T>) -> Option<Chunk> {
    match items.is_empty() {
        true => None,
        false => Some((items.len(), Items::all(items).encode())),
    }
}
