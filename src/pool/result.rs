//! What a submission gives back: [`AsyncResult`] for one task, [`MapResult`] for a map,
//! [`IMap`] for a lazy map.

use std::any::type_name;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::Shared;
use super::proto::Status;
use super::scheduler::{Cmd, Outcome};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::Encoded;

use crate::task::ChunkInto;
/// A chunk's answer.
pub(super) use crate::task::ChunkOut;
use crate::wire::frame::Frame;

enum State<R> {
    Waiting(oneshot::Receiver<Outcome>),
    Done(Result<R>),
    /// The result was handed out; whether it was a success.
    Taken(bool),
}

/// The result of a task submitted with [`Pool::apply_async`](crate::Pool::apply_async)
/// (Python's `AsyncResult`): a future of the task's result.
///
/// The task is submitted when the `AsyncResult` is made, not when it is first polled. Await
/// it for the result, or use [`ready`](Self::ready), [`successful`](Self::successful),
/// [`get_timeout`](Self::get_timeout) and [`cancel`](Self::cancel) as in Python.
///
/// # Errors
/// The future resolves to the task's failure, shaped like tokio's `JoinError`:
/// [`Error::TaskPanicked`] (with the panic message), [`Error::WorkerLost`] (the worker died,
/// with its pid and the signal or exit code), [`Error::TaskTimedOut`], [`Error::Cancelled`];
/// or [`Error::Decode`] when the result (or, in the worker, the arguments) did not decode,
/// [`Error::Encode`] for an argument that could not be encoded (nothing was sent) or a
/// result the worker could not encode, [`Error::PoolClosed`] when the pool was closed or
/// terminated first.
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
    arg_type: &'static str,
    _result: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting(_) => "waiting",
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

// Nothing in these handles is ever pinned in place: the result is only moved out.
impl<R> Unpin for AsyncResult<R> {}
impl<R> Unpin for MapResult<R> {}
impl<R: DeserializeOwned + 'static> Unpin for IMap<R> {}

/// Turns a worker's answer into the task's typed result.
fn decode_outcome<R: DeserializeOwned>(outcome: Outcome, arg_type: &'static str) -> Result<R> {
    let (status, frame) = outcome?;
    if status == Status::Done {
        return frame.decode::<R>();
    }
    Err(failure(status, frame, arg_type, type_name::<R>()))
}

/// The error a worker's answer other than [`Status::Done`] stands for.
fn failure(
    status: Status,
    frame: Frame,
    arg_type: &'static str,
    result_type: &'static str,
) -> Error {
    if status == Status::TooLarge {
        return match frame.decode::<(u64, u64)>() {
            Ok((size, max)) => Error::FrameTooLarge {
                size,
                max: usize::try_from(max).unwrap_or(usize::MAX),
            },
            Err(e) => e,
        };
    }
    let message: String = match frame.decode() {
        Ok(m) => m,
        Err(e) => return e,
    };
    match status {
        Status::Panicked => Error::TaskPanicked { message },
        Status::BadArgs => Error::Decode {
            type_name: arg_type,
            message,
        },
        Status::BadResult => Error::Encode {
            type_name: result_type,
            message,
        },
        Status::Cancelled => Error::Cancelled,
        Status::Done | Status::Refused | Status::TooLarge => Error::Protocol(message),
    }
}

/// A chunk's answer appended to `out`; the first failure among its items is the error.
fn chunk_into<R: DeserializeOwned + 'static>(
    outcome: Outcome,
    out: &mut Vec<R>,
    arg_type: &'static str,
) -> Result<()> {
    let (status, mut frame) = outcome?;
    if status != Status::Done {
        return Err(failure(status, frame, arg_type, type_name::<ChunkOut<R>>()));
    }
    let failed = frame.decode_with(ChunkInto(out))?;
    match failed.into_iter().next() {
        Some((_, message)) => Err(Error::TaskPanicked { message }),
        None => Ok(()),
    }
}

/// What [`AsyncResult::poll_answer`] gives.
pub(super) enum Answer<R> {
    /// The worker's answer, not decoded.
    Raw(Outcome),
    /// The result, decoded already (by [`AsyncResult::ready`]), or the pool's failure.
    Decoded(Result<R>),
}

impl<R: DeserializeOwned> AsyncResult<R> {
    pub(super) fn waiting(
        id: u64,
        rx: oneshot::Receiver<Outcome>,
        cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
        arg_type: &'static str,
    ) -> AsyncResult<R> {
        AsyncResult {
            id,
            state: State::Waiting(rx),
            cmds: Some(cmds),
            arg_type,
            _result: PhantomData,
        }
    }

    pub(super) fn failed(e: Error) -> AsyncResult<R> {
        AsyncResult {
            id: 0,
            state: State::Done(Err(e)),
            cmds: None,
            arg_type: "",
            _result: PhantomData,
        }
    }

    /// Whether the task has finished (successfully or not), without waiting (Python's
    /// `ready()`).
    pub fn ready(&mut self) -> bool {
        if let State::Waiting(rx) = &mut self.state {
            match rx.try_recv() {
                Ok(o) => self.state = State::Done(decode_outcome(o, self.arg_type)),
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.state = State::Done(Err(Error::PoolClosed))
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
            State::Waiting(_) => None,
        }
    }

    /// Waits at most `timeout` for the result (Python's `get(timeout)`). On timeout the task
    /// keeps running and this handle stays usable: await it, or call this again.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the task has not finished in time; otherwise as awaiting the
    /// handle.
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the result stays in the
    /// handle.
    pub async fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        match tokio::time::timeout(timeout, &mut *self).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Cancels the task: a task still queued is removed (it never runs); a running task's
    /// worker is killed and replaced (other `async fn` tasks running on that worker then fail
    /// with [`Error::WorkerLost`]). The handle then resolves to [`Error::Cancelled`],
    /// unless the task had finished already. A task that had been sent ahead to a worker
    /// but not started is taken back; in the rare race where the worker starts it at that
    /// moment, it runs to its end and its result is discarded.
    pub fn cancel(&self) {
        if let (State::Waiting(_), Some(cmds)) = (&self.state, &self.cmds) {
            let _ = cmds.send(Cmd::Cancel(self.id));
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
                    self.state = State::Taken(matches!(o, Ok((Status::Done, _))));
                    Poll::Ready(Answer::Raw(o))
                }
                Poll::Ready(Err(_)) => {
                    self.state = State::Taken(false);
                    Poll::Ready(Answer::Decoded(Err(Error::PoolClosed)))
                }
            };
        }
        let ok = matches!(self.state, State::Done(Ok(_)));
        match std::mem::replace(&mut self.state, State::Taken(ok)) {
            State::Done(r) => Poll::Ready(Answer::Decoded(r)),
            _ => Poll::Ready(Answer::Decoded(Err(Error::Protocol(
                "the result of this task was already taken".into(),
            )))),
        }
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = &mut *self;
        if let State::Waiting(rx) = &mut this.state {
            let outcome = match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(o)) => decode_outcome(o, this.arg_type),
                Poll::Ready(Err(_)) => Err(Error::PoolClosed),
            };
            this.state = State::Done(outcome);
        }
        let ok = matches!(this.state, State::Done(Ok(_)));
        match std::mem::replace(&mut this.state, State::Taken(ok)) {
            State::Done(r) => Poll::Ready(r),
            _ => Poll::Ready(Err(Error::Protocol(
                "the result of this task was already taken".into(),
            ))),
        }
    }
}

/// Turns a chunk's answer into one result per item, in order; a panic into
/// [`Error::TaskPanicked`].
fn items<R>(c: ChunkOut<R>) -> impl Iterator<Item = Result<R>> {
    let total = c.ok.len() + c.failed.len();
    let mut ok = c.ok.into_iter();
    let mut failed = c.failed.into_iter().peekable();
    (0..total).filter_map(move |i| match failed.peek() {
        Some((at, _)) if *at as usize == i => failed
            .next()
            .map(|(_, message)| Err(Error::TaskPanicked { message })),
        _ => ok.next().map(Ok),
    })
}

/// The result of [`Pool::map_async`](crate::Pool::map_async) and
/// [`Pool::starmap_async`](crate::Pool::starmap_async) (Python's `MapResult`): a future of
/// every result, in input order.
///
/// # Errors
/// The first failure in input order (see [`AsyncResult`]'s errors); other chunks still run.
///
/// # Cancel safety
/// Dropping a `MapResult` does not cancel its chunks: they run to their end and their results
/// are discarded. Call [`cancel`](Self::cancel) to stop them. Awaiting `&mut MapResult` is
/// cancel safe.
#[must_use = "a MapResult does nothing unless awaited; the tasks run either way"]
pub struct MapResult<R> {
    chunks: Vec<AsyncResult<ChunkOut<R>>>,
    next: usize,
    out: Vec<R>,
    failed: Option<Error>,
}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapResult")
            .field("chunks", &self.chunks.len())
            .field("done", &self.next)
            .finish()
    }
}

impl<R: DeserializeOwned + 'static> MapResult<R> {
    pub(super) fn new(chunks: Vec<AsyncResult<ChunkOut<R>>>, len: usize) -> MapResult<R> {
        let mut out = Vec::with_capacity(len);
        sys::advise_huge_pages(&mut out);
        MapResult {
            chunks,
            next: 0,
            out,
            failed: None,
        }
    }

    /// Whether every chunk has finished (Python's `ready()`).
    pub fn ready(&mut self) -> bool {
        self.chunks.iter_mut().all(|c| c.ready())
    }

    /// Whether every task finished without error; `None` while some run.
    pub fn successful(&mut self) -> Option<bool> {
        let mut ok = true;
        for c in &mut self.chunks[self.next..] {
            match c.successful() {
                None => return None,
                Some(s) => ok &= s,
            }
        }
        Some(ok && self.failed.is_none())
    }

    /// Waits at most `timeout` for every result (Python's `get(timeout)`); on timeout the
    /// tasks keep running and the handle stays usable.
    ///
    /// # Errors
    /// [`Error::Timeout`] if some task has not finished in time; otherwise as awaiting it.
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// This method is cancel safe: results that arrived stay in the handle.
    pub async fn get_timeout(&mut self, timeout: Duration) -> Result<Vec<R>> {
        match tokio::time::timeout(timeout, &mut *self).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Cancels every chunk not finished yet (see [`AsyncResult::cancel`]).
    pub fn cancel(&self) {
        for c in &self.chunks[self.next..] {
            c.cancel();
        }
    }
}

impl<R: DeserializeOwned + 'static> Future for MapResult<R> {
    type Output = Result<Vec<R>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Vec<R>>> {
        let this = &mut *self;
        if let Some(e) = this.failed.take() {
            return Poll::Ready(Err(e));
        }
        while this.next < this.chunks.len() {
            let chunk = &mut this.chunks[this.next];
            let arg_type = chunk.arg_type;
            match chunk.poll_answer(cx) {
                Poll::Pending => return Poll::Pending,
                // Decoded straight onto the results so far.
                Poll::Ready(Answer::Raw(o)) => {
                    this.next += 1;
                    if let Err(e) = chunk_into(o, &mut this.out, arg_type) {
                        this.next = this.chunks.len();
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Ready(Answer::Decoded(Err(e))) => {
                    this.next = this.chunks.len();
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Answer::Decoded(Ok(v))) => {
                    this.next += 1;
                    if v.failed.is_empty() {
                        this.out.extend(v.ok);
                        continue;
                    }
                    for r in items(v) {
                        match r {
                            Ok(r) => this.out.push(r),
                            Err(e) => {
                                this.next = this.chunks.len();
                                return Poll::Ready(Err(e));
                            }
                        }
                    }
                }
            }
        }
        Poll::Ready(Ok(std::mem::take(&mut this.out)))
    }
}

/// Pulls the next chunk of inputs (at most the given number) and encodes it: how many
/// inputs it holds, and their encoding; `None` when the input is exhausted.
pub(super) type NextChunk = Box<dyn FnMut(usize) -> Option<(usize, Result<Encoded>)> + Send>;

/// A chunk of an [`IMap`] in flight: where its inputs start, how many they are, and the
/// handle on its answer.
struct ChunkAt<R> {
    start: usize,
    len: usize,
    result: AsyncResult<ChunkOut<R>>,
}

impl<R: DeserializeOwned + 'static> Future for ChunkAt<R> {
    type Output = (usize, usize, Result<ChunkOut<R>>);

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

/// The results of a chunk of an [`IMap`] whose inputs start at `start`: one per input, an
/// error wrapped in [`Error::Input`] with the index of its input.
fn indexed_items<R>(
    start: usize,
    len: usize,
    chunk: Result<ChunkOut<R>>,
) -> Box<dyn Iterator<Item = Result<R>> + Send>
where
    R: Send + 'static,
{
    let at = move |i: usize, error: Error| Error::Input {
        index: start + i,
        error: Box::new(error),
    };
    match chunk {
        Ok(c) => Box::new(
            items(c)
                .enumerate()
                .map(move |(i, r)| r.map_err(|e| at(i, e))),
        ),
        // A chunk that failed as a whole: its error for each of its inputs.
        Err(e) => Box::new((0..len).map(move |i| Err(at(i, e.clone())))),
    }
}

/// The stream of results of [`Pool::imap`](crate::Pool::imap) (input order) and
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered) (completion order).
///
/// It reads its input lazily, when polled, and keeps at most a bounded window of chunks
/// submitted and not yet yielded (four per worker), so an endless iterator is fine and
/// memory stays flat. It yields exactly one item per input. An input whose task failed
/// yields [`Error::Input`], which names the input's index (so that failures can be placed in
/// [`imap_unordered`](crate::Pool::imap_unordered)'s stream too) and wraps the cause; a
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
    entry: super::ChunkEntry,
    chunksize: usize,
    window: usize,
    exhausted: bool,
    /// The index of the next input to be read.
    next_index: usize,
    pending: Pending<R>,
    ready: VecDeque<Result<R>>,
}

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
        entry: super::ChunkEntry,
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
    type Item = Result<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<R>>> {
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
                    result: this.shared.submit::<ChunkOut<R>>(
                        this.entry.0,
                        this.entry.1,
                        enc,
                        None,
                        this.entry.2,
                    ),
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
                    if matches!(chunk, Err(Error::PoolClosed)) {
                        this.exhausted = true;
                    }
                    this.ready.extend(indexed_items(start, len, chunk));
                }
            }
        }
    }
}
