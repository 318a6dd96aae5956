//! [`AsyncResult`]: the handle on one task's result.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::off_thread::decode_later;
use super::scheduler::{Cmd, Outcome};
use crate::error::{Error, Result, TaskError};

enum State<R> {
    Waiting(oneshot::Receiver<Outcome>),
    /// A large result being decoded on a blocking thread.
    Decoding(tokio::task::JoinHandle<std::result::Result<R, TaskError>>),
    Done(std::result::Result<R, TaskError>),
    /// The result was handed out; whether it was a success.
    Taken(bool),
}

/// The result of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async)
/// (Python's `AsyncResult`): a future of the task's result.
///
/// The task is submitted when the `AsyncResult` is made, not when it is first polled. Await
/// it for the result, or use [`ready`](Self::ready), [`successful`](Self::successful),
/// [`wait`](Self::wait), [`get_timeout`](Self::get_timeout) and [`cancel`](Self::cancel) as
/// in Python.
///
/// # Errors
/// The future resolves to a [`TaskError`], shaped like tokio's `JoinError`, when the task
/// gives no result: it panicked ([`TaskError::is_panic`], with the panic's message and
/// location), its worker died ([`TaskError::is_worker_lost`], with its pid and the signal or
/// exit code), it ran past its timeout ([`TaskError::is_timeout`]), it was cancelled
/// ([`TaskError::is_cancelled`]), the pool was closed or terminated first
/// ([`TaskError::is_pool_closed`]); or its arguments or result could not cross (they could
/// not be encoded or decoded, or were larger than a frame may be). A handle awaited again
/// after it handed out its result gives one whose
/// [`caller_error`](TaskError::caller_error) is [`Error::InvalidArgument`].
///
/// # Panics
/// With the panic of the result's `Deserialize`, if it panics: the result is decoded for the
/// caller (a large one on a blocking thread), and its panic reaches the caller that awaits
/// it (or calls [`wait`](Self::wait), [`ready`](Self::ready)), as decoding it there would.
///
/// # Cancel safety
/// Dropping an `AsyncResult` (or losing a `select!` race with it) does not cancel the task:
/// like a detached tokio task, it runs to its end in its worker and its result is
/// discarded. Call [`cancel`](Self::cancel) to stop it. Awaiting `&mut AsyncResult` is cancel
/// safe: the result stays in the handle until it is taken.
#[must_use = "an AsyncResult does nothing unless awaited; the task runs either way"]
pub struct AsyncResult<R> {
    id: u64,
    state: State<R>,
    cmds: Option<tokio::sync::mpsc::UnboundedSender<Cmd>>,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting(_) | State::Decoding(_) => "waiting",
            State::Done(Ok(_)) => "done",
            State::Done(Err(_)) => "failed",
            State::Taken(_) => "taken",
        };
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .field("state", &state)
            .finish()
    }
}

// Nothing in the handle is ever pinned in place: the result is only moved out.
impl<R> Unpin for AsyncResult<R> {}

/// Turns a worker's answer into the task's typed result.
pub(super) fn decode_outcome<R: DeserializeOwned>(
    outcome: Outcome,
) -> std::result::Result<R, TaskError> {
    outcome?.decode::<R>().map_err(TaskError::local)
}

/// What [`AsyncResult::poll_answer`] gives.
pub(super) enum Answer<R> {
    /// The worker's answer, not decoded.
    Raw(Outcome),
    /// The result, decoded already (by [`AsyncResult::ready`]), or the pool's failure.
    Decoded(std::result::Result<R, TaskError>),
}

impl<R: DeserializeOwned> AsyncResult<R> {
    pub(super) fn waiting(
        id: u64,
        rx: oneshot::Receiver<Outcome>,
        cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    ) -> AsyncResult<R> {
        AsyncResult {
            id,
            state: State::Waiting(rx),
            cmds: Some(cmds),
            _result: PhantomData,
        }
    }

    pub(super) fn failed(e: TaskError) -> AsyncResult<R> {
        AsyncResult {
            id: 0,
            state: State::Done(Err(e)),
            cmds: None,
            _result: PhantomData,
        }
    }

    /// Whether the task has finished (successfully or not), without waiting (Python's
    /// `ready()`).
    pub fn ready(&mut self) -> bool {
        if let State::Waiting(rx) = &mut self.state {
            match rx.try_recv() {
                Ok(o) => self.state = State::Done(decode_outcome(o)),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.state = State::Done(Err(TaskError::pool_closed()))
                }
            }
        }
        true
    }

    /// Whether the task finished without error; `None` while it runs (Python's
    /// `successful()`, which raises in that case).
    pub fn successful(&mut self) -> Option<bool> {
        if !self.ready() {
            return None;
        }
        match &self.state {
            State::Done(r) => Some(r.is_ok()),
            State::Taken(ok) => Some(*ok),
            State::Waiting(_) | State::Decoding(_) => None,
        }
    }

    /// The result in the handle, if it has arrived and was not handed out.
    pub(super) fn peek(&self) -> Option<&std::result::Result<R, TaskError>> {
        match &self.state {
            State::Done(r) => Some(r),
            _ => None,
        }
    }

    /// Cancels the task: a task still queued is removed (it never runs); a running task's
    /// worker is killed and replaced (other `async fn` tasks running on that worker then
    /// fail as their worker lost). The handle then resolves to a cancelled [`TaskError`],
    /// unless the task had finished already. A task sent ahead to a worker on this machine
    /// is taken back if the worker has not claimed it: the pool and the worker settle which
    /// of them has it in one atomic step on memory they share, so the task either never
    /// starts or counts as running, and the handle resolves at once.
    ///
    /// On a worker on another host of a [`Cluster`](crate::Cluster), whose started tasks
    /// the pool does not see while it lives, the worker is killed only for a task that may
    /// be the one it runs (none sent before it is unanswered); a task behind another is
    /// taken back by the worker, which answers that it dropped it, or, had it started it,
    /// with its result. The worker reads the cancel between tasks, so the handle resolves
    /// once the task it runs ends.
    pub fn cancel(&self) {
        self.send_cancel(true);
    }

    /// Cancels the task only if it has not started: a task still queued (or sent ahead to a
    /// worker that has not started it) never runs, and the handle resolves to a cancelled
    /// [`TaskError`]; a task already running is left to finish, no worker is killed, and the
    /// handle resolves to its result. A task sent ahead to a worker is settled as
    /// [`cancel`](Self::cancel) says; where the worker is asked to drop it, the worker
    /// answers whether it dropped the task, and the handle resolves to the task's result if
    /// it had started it.
    pub fn cancel_if_queued(&self) {
        self.send_cancel(false);
    }

    /// Makes dropping the handle cancel the task (with [`cancel`](Self::cancel)), like
    /// tokio-util's `AbortOnDropHandle`: for a task whose result nobody will want once its
    /// caller is gone (a request handler that was cancelled, say).
    pub fn abort_on_drop(self) -> AbortOnDrop<R> {
        AbortOnDrop(self)
    }

    fn send_cancel(&self, running: bool) {
        if let (State::Waiting(_), Some(cmds)) = (&self.state, &self.cmds) {
            let _ = cmds.send(Cmd::Cancel {
                id: self.id,
                running,
            });
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> AsyncResult<R> {
    /// Waits until the task has finished, without taking its result (Python's `wait()`):
    /// then [`ready`](Self::ready) holds, [`successful`](Self::successful) tells how it
    /// went, and awaiting the handle gives the result at once.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the task runs on and its
    /// result will be in the handle.
    pub async fn wait(&mut self) {
        std::future::poll_fn(|cx| self.poll_settled(cx)).await
    }

    /// [`wait`](Self::wait) for at most `timeout` (Python's `wait(timeout)`): whether the
    /// task has finished. On timeout the task keeps running.
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// Cancel safe, like [`wait`](Self::wait).
    pub async fn wait_timeout(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait()).await.is_ok()
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`). On timeout the task
    /// keeps running and this handle stays usable: await it, or call this again.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the task has not finished in time; otherwise the task's
    /// [`TaskError`], as [`Error::Task`].
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the result stays in the
    /// handle.
    pub async fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        match tokio::time::timeout(timeout, &mut *self).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl<R> AsyncResult<R> {
    /// Like polling the future, but hands over the worker's answer undecoded when it has not
    /// been decoded yet, for a caller that decodes it its own way.
    pub(super) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer<R>> {
        if let State::Waiting(rx) = &mut self.state {
            return match Pin::new(rx).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(o)) => {
                    self.state = State::Taken(o.is_ok());
                    Poll::Ready(Answer::Raw(o))
                }
                Poll::Ready(Err(_)) => {
                    self.state = State::Taken(false);
                    Poll::Ready(Answer::Decoded(Err(TaskError::pool_closed())))
                }
            };
        }
        Poll::Ready(Answer::Decoded(self.take_done()))
    }

    /// The result held in the handle, handed out once.
    fn take_done(&mut self) -> std::result::Result<R, TaskError> {
        // Taken again, it stays as successful as it was.
        let ok = match self.state {
            State::Done(ref r) => r.is_ok(),
            State::Taken(ok) => ok,
            _ => false,
        };
        match std::mem::replace(&mut self.state, State::Taken(ok)) {
            State::Done(r) => r,
            _ => Err(TaskError::local(Error::InvalidArgument(
                "the result of this task was already taken: a handle hands it out once".into(),
            ))),
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> AsyncResult<R> {
    /// Ready once the result is in the handle (or was handed out): received and decoded,
    /// not taken. A large result is decoded on a blocking thread (see `off_thread`), not
    /// here.
    fn poll_settled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let this = self;
        if matches!(this.state, State::Done(_) | State::Taken(_)) {
            // Settled already: a loop of waits spends tokio's budget, as one on a tokio
            // channel does, so that it lets the runtime's other tasks run.
            std::task::ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
            return Poll::Ready(());
        }
        if let State::Waiting(rx) = &mut this.state {
            this.state = match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(o)) => match decode_later(o) {
                    Ok(decoding) => State::Decoding(decoding),
                    Err(o) => State::Done(decode_outcome(o)),
                },
                Poll::Ready(Err(_)) => State::Done(Err(TaskError::pool_closed())),
            };
        }
        if let State::Decoding(h) = &mut this.state {
            let decoded = match Pin::new(h).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                // The result's `Deserialize` panicked: the panic is the caller's, as when a
                // small result is decoded in place.
                Poll::Ready(Err(e)) if e.is_panic() => {
                    this.state = State::Taken(false);
                    std::panic::resume_unwind(e.into_panic())
                }
                Poll::Ready(Err(e)) => Err(TaskError::local(Error::Protocol(format!(
                    "decoding the result failed: {e}"
                )))),
            };
            this.state = State::Done(decoded);
        }
        Poll::Ready(())
    }
}

impl<R: DeserializeOwned + Send + 'static> Future for AsyncResult<R> {
    type Output = std::result::Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.poll_settled(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(this.take_done()),
        }
    }
}

/// An [`AsyncResult`] that cancels its task when dropped unfinished, from
/// [`AsyncResult::abort_on_drop`]. Await it as the `AsyncResult` itself.
///
/// # Cancel safety
/// Dropping it (or losing a `select!` race with it) cancels the task: a queued task never
/// runs, a running one's worker is killed and replaced. Awaiting `&mut AbortOnDrop` is
/// cancel safe until the guard itself is dropped.
#[must_use = "dropping an AbortOnDrop cancels its task"]
#[derive(Debug)]
pub struct AbortOnDrop<R>(AsyncResult<R>);

impl<R: DeserializeOwned + Send + 'static> AbortOnDrop<R> {
    /// The handle inside, which no longer cancels on drop.
    pub fn detach(mut self) -> AsyncResult<R> {
        let state = std::mem::replace(&mut self.0.state, State::Taken(false));
        AsyncResult {
            id: self.0.id,
            state,
            cmds: self.0.cmds.take(),
            _result: PhantomData,
        }
    }
}

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        if let (State::Waiting(_), Some(cmds)) = (&self.0.state, &self.0.cmds) {
            let _ = cmds.send(Cmd::Cancel {
                id: self.0.id,
                running: true,
            });
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> Future for AbortOnDrop<R> {
    type Output = std::result::Result<R, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}
