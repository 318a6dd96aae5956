//! [`PutSink`]: a sending end as a [`futures::Sink`] of what it sends, the `into_sink` of
//! [`Queue`](crate::Queue), [`Connection`](crate::Connection) and the manager's
//! [`QueueProxy`](crate::QueueProxy) (tokio-util's `PollSender` for ends that cross
//! processes).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Sink};

use crate::error::Error;
use crate::queue::PutError;

/// One put of an item through the end, as a future that owns what it needs.
type Put<T> = Box<dyn Fn(T) -> BoxFuture<'static, Result<(), PutError<T>>> + Send>;

/// A sending end as a [`futures::Sink`]: each item sent is put (or sent) by the end's own
/// `put`, one at a time and in order, so that `stream.map(Ok).forward(sink)` or
/// `sink.send(item).await` waits as the end's `put` does (for room in a full queue, say).
/// Made by `into_sink` on [`Queue`](crate::Queue), [`SimpleQueue`](crate::SimpleQueue),
/// [`JoinableQueue`](crate::JoinableQueue), [`Connection`](crate::Connection),
/// [`QueueProxy`](crate::QueueProxy) and [`JoinableQueueProxy`](crate::JoinableQueueProxy).
///
/// A failed put hands its item back in the [`PutError`], from the `poll_ready`,
/// `poll_flush` or `poll_close` that saw it; the sink goes on with the next item, so that
/// one item that cannot be encoded, or is over the maximum frame size, costs only itself.
/// [`poll_close`](Sink::poll_close) puts what was sent, then lets go of the end (the peer
/// of a [`Connection`](crate::Connection) sees the end of stream once every other holder
/// of this end has closed it too); an item sent after it comes back with
/// [`Error::HandleClosed`].
///
/// # Cancel safety
/// Dropping the sink with a put in progress drops that put, as a dropped `put` does: the
/// item may not have been put. [`close`](futures::SinkExt::close) (or
/// [`flush`](futures::SinkExt::flush)) before dropping it loses nothing.
pub struct PutSink<T> {
    put: Option<Put<T>>,
    /// Items sent and not yet put: one at most, unless a caller sends without waiting for
    /// `poll_ready`, which the [`Sink`] contract asks for; such items wait their turn.
    waiting: VecDeque<T>,
    putting: Option<BoxFuture<'static, Result<(), PutError<T>>>>,
}

// Nothing in it is pinned: its items wait in a queue, and its puts are boxed.
impl<T> Unpin for PutSink<T> {}

impl<T> PutSink<T> {
    /// A sink putting through `end` by `put(end, item)`; the end is shared by the puts, each
    /// of which holds it for its time.
    pub(crate) fn new<E, F, Fut>(end: E, put: F) -> PutSink<T>
    where
        E: Send + Sync + 'static,
        F: Fn(std::sync::Arc<E>, T) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), PutError<T>>> + Send + 'static,
    {
        let end = std::sync::Arc::new(end);
        PutSink {
            put: Some(Box::new(move |item| put(end.clone(), item).boxed())),
            waiting: VecDeque::new(),
            putting: None,
        }
    }

    /// Drives the puts until every item sent is put, or one fails.
    fn poll_puts(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        loop {
            if let Some(putting) = &mut self.putting {
                let r = std::task::ready!(putting.as_mut().poll(cx));
                self.putting = None;
                r?;
            }
            let Some(item) = self.waiting.pop_front() else {
                return Poll::Ready(Ok(()));
            };
            match &self.put {
                Some(put) => self.putting = Some(put(item)),
                None => return Poll::Ready(Err(closed(item))),
            }
        }
    }
}

fn closed<T>(item: T) -> PutError<T> {
    PutError::new(Error::HandleClosed { object: "sink" }, item)
}

impl<T> Sink<T> for PutSink<T> {
    type Error = PutError<T>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        self.get_mut().poll_puts(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), PutError<T>> {
        let this = self.get_mut();
        match this.put {
            Some(_) => {
                this.waiting.push_back(item);
                Ok(())
            }
            None => Err(closed(item)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        self.get_mut().poll_puts(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), PutError<T>>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_puts(cx))?;
        this.put = None;
        Poll::Ready(Ok(()))
    }
}

impl<T> std::fmt::Debug for PutSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSink")
            .field("closed", &self.put.is_none())
            .field("waiting", &self.waiting.len())
            .field("putting", &self.putting.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::SinkExt;

    use super::*;

    /// A sink whose end records what it is given, refusing odd numbers.
    fn recording() -> (PutSink<u32>, std::sync::Arc<Mutex<Vec<u32>>>) {
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = PutSink::new(got.clone(), |got, item: u32| async move {
            tokio::task::yield_now().await;
            if item % 2 == 1 {
                return Err(PutError::new(Error::Full, item));
            }
            got.lock().unwrap_or_else(|p| p.into_inner()).push(item);
            Ok(())
        });
        (sink, got)
    }

    #[tokio::test]
    async fn a_failed_put_hands_its_item_back_and_the_sink_goes_on() {
        let (mut sink, got) = recording();
        sink.send(2).await.map_err(|e| e.into_parts().0).unwrap();
        let e = sink.send(3).await.err().map(PutError::into_parts);
        assert!(matches!(e, Some((Error::Full, 3))), "{e:?}");
        sink.send(4).await.map_err(|e| e.into_parts().0).unwrap();
        sink.close().await.map_err(|e| e.into_parts().0).unwrap();
        let after = sink.send(6).await.err().map(PutError::into_parts);
        assert!(
            matches!(after, Some((Error::HandleClosed { .. }, 6))),
            "{after:?}"
        );
        assert_eq!(*got.lock().unwrap_or_else(|p| p.into_inner()), [2, 4]);
    }

    #[tokio::test]
    async fn items_sent_without_waiting_for_ready_are_put_in_order() {
        let (mut sink, got) = recording();
        for i in [10, 12, 14] {
            Pin::new(&mut sink).start_send(i).map_err(|_| ()).unwrap();
        }
        sink.flush().await.map_err(|_| ()).unwrap();
        assert_eq!(*got.lock().unwrap_or_else(|p| p.into_inner()), [10, 12, 14]);
    }
}
