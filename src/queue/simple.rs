//! [`SimpleQueue`]: Python's `multiprocessing.SimpleQueue`, a thin handle on an unbounded
//! [`Queue`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{PutError, Queue};
use crate::error::Result;

/// A simpler queue (Python's `multiprocessing.SimpleQueue`): unbounded, with `put`, `get`,
/// `empty` and `close`.
///
/// It works exactly as an unbounded [`Queue`] (there is no feeder thread to do without).
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// An empty queue.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a descriptor.
    pub fn new() -> Result<SimpleQueue<T>> {
        Queue::new().map(SimpleQueue)
    }

    /// Puts an item; see [`Queue::put`].
    ///
    /// # Errors
    /// As [`Queue::put`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`Queue::put`]: if it loses a `select!` race, the item was not put, unless it was a
    /// large item whose packet was already sent, which is always delivered.
    pub async fn put(&self, item: T) -> std::result::Result<(), PutError<T>> {
        self.0.put(item).await
    }

    /// Removes and returns the next item, waiting for one; see [`Queue::get`].
    ///
    /// # Errors
    /// As [`Queue::get`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if `get` loses a `select!` race, no item was taken.
    pub async fn get(&self) -> Result<T> {
        self.0.get().await
    }

    /// Whether the queue is empty (approximate).
    pub fn empty(&self) -> bool {
        self.0.empty()
    }

    /// Says this process will use the queue no more; see [`Queue::close`].
    pub fn close(&self) {
        self.0.close()
    }

    pub(crate) fn as_queue(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T: Serialize + DeserializeOwned + Send + 'static> SimpleQueue<T> {
    /// The queue's items as a [`futures::Stream`]; see [`Queue::into_stream`].
    ///
    /// # Cancel safety
    /// `next()` is cancel safe: a receive it began goes on inside the stream, for the next
    /// call; dropping the stream loses nothing, as a dropped `get` does.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        self.0.into_stream()
    }

    /// The queue's sending side as a [`futures::Sink`]; see [`Queue::into_sink`].
    ///
    /// # Cancel safety
    /// As [`Queue::into_sink`].
    pub fn into_sink(self) -> crate::PutSink<T> {
        self.0.into_sink()
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(SimpleQueue)
    }
}
