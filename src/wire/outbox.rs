//! [`Outbox`]: the sending side of a connection whose frames a writer task writes in
//! batches, where a frame sent while nothing waits for that task is written at once from
//! the sender's own thread instead (no wake-up of another thread stands before it).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::UnboundedSender;

use super::{FrameBuf, Framed, Now};
use crate::error::{Error, Result};

/// See the module docs. The writer task takes the frames from the channel's other end and
/// reports each batch it wrote with [`written`] on the [`counter`](Outbox::counter).
pub(crate) struct Outbox {
    tx: UnboundedSender<FrameBuf>,
    link: Arc<Framed>,
    /// Frames handed to the writer task and not yet written: while there are any, a frame
    /// is not written at once (it would pass them).
    queued: Arc<AtomicUsize>,
}

impl Outbox {
    pub(crate) fn new(tx: UnboundedSender<FrameBuf>, link: Arc<Framed>) -> Outbox {
        Outbox {
            tx,
            link,
            queued: Arc::default(),
        }
    }

    /// The count of frames waiting for the writer task, which it lowers with [`written`]
    /// after each batch.
    pub(crate) fn counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }

    /// Hands `frame` to the writer task.
    ///
    /// # Errors
    /// [`Error::Closed`] if the writer task is gone.
    pub(crate) fn queue(&self, frame: FrameBuf) -> Result<()> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(frame).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Error::Closed
        })
    }

    /// Writes `frame` here and now if nothing waits for the writer task and the socket
    /// takes it at once (see [`Framed::try_send_now`]); else hands it to the writer task.
    /// A frame the socket took only part of is finished by a task of its own (the peer is
    /// slow to read: the sender does not wait for it).
    ///
    /// # Errors
    /// [`Error::Closed`] if the writer task is gone; the error of a write that failed.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(crate) fn send(&self, mut frame: FrameBuf) -> Result<()> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return self.queue(frame);
        }
        match self.link.try_send_now(&mut frame)? {
            Now::Sent => Ok(()),
            Now::Not => self.queue(frame),
            Now::Begun => {
                let link = self.link.clone();
                tokio::spawn(async move {
                    if let Err(e) = link.finish().await {
                        // The reader notices the broken socket too, and ends the connection.
                        tracing::debug!("a frame could not be finished: {e}");
                        let _ = crate::sys::shutdown_socket(link.as_fd(), true, true);
                    }
                });
                Ok(())
            }
        }
    }
}

/// What a writer task calls after writing (or dropping) `n` frames it took.
pub(crate) fn written(queued: &AtomicUsize, n: usize) {
    queued.fetch_sub(n, Ordering::AcqRel);
}
