//! [`MapResult`]: the handle on a map's results, and how a chunk's answer becomes one result
//! per input.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::async_result::{Answer, AsyncResult};
use super::scheduler::Outcome;
use crate::error::{Error, Result, TaskError};
use crate::sys;
use crate::task::{ChunkInto, ChunkOut};

/// A chunk's answer appended to `out`; its first failure, if any, is the error. `start` is
/// the index of the chunk's first input.
fn chunk_into<R: DeserializeOwned + 'static>(
    outcome: Outcome,
    out: &mut Vec<R>,
    start: usize,
) -> std::result::Result<(), TaskError> {
    let mut frame = outcome.map_err(|e| e.at_input(start))?;
    let failed = frame
        .decode_with(ChunkInto(out))
        .map_err(|e| TaskError::local(e).at_input(start))?;
    match failed.into_iter().next() {
        Some((i, f)) => Err(TaskError::failed(f).at_input(start + i as usize)),
        None => Ok(()),
    }
}

/// Turns a chunk's answer into one result per item, in order; `start` is the index of the
/// chunk's first input, which the errors name.
pub(super) fn items<R>(
    c: ChunkOut<R>,
    start: usize,
) -> impl Iterator<Item = std::result::Result<R, TaskError>> {
    let total = c.ok.len() + c.failed.len();
    let mut ok = c.ok.into_iter();
    let mut failed = c.failed.into_iter().peekable();
    (0..total).filter_map(move |i| match failed.peek() {
        Some((at, _)) if *at as usize == i => failed
            .next()
            .map(|(_, f)| Err(TaskError::failed(f).at_input(start + i))),
        _ => ok.next().map(Ok),
    })
}

/// The result of [`Pool::map_async`](crate::Pool::map_async) and
/// [`Pool::starmap_async`](crate::Pool::starmap_async) (Python's `MapResult`): a future of
/// every result, in input order.
///
/// # Errors
/// The first failure in input order, a [`TaskError`] (see [`AsyncResult`]'s errors) naming
/// the input it belongs to ([`TaskError::input_index`]); other chunks still run. A worker's
/// death fails the chunk it was running and also those it had finished and not answered
/// yet ([`TaskError::is_answer_lost`]): the map then fails with the running chunk's error,
/// which names the input that was running when the worker died. A failed
/// map awaited again fails the same way; one that handed out its results gives an error
/// whose [`caller_error`](TaskError::caller_error) is [`Error::InvalidArgument`].
///
/// # Cancel safety
/// Dropping a `MapResult` does not cancel its chunks: they run to their end and their results
/// are discarded. Call [`cancel`](Self::cancel) to stop them. Awaiting `&mut MapResult` is
/// cancel safe.
#[must_use = "a MapResult does nothing unless awaited; the tasks run either way"]
pub struct MapResult<R> {
    chunks: Vec<AsyncResult<ChunkOut<R>>>,
    /// The number of inputs in each chunk but the last.
    chunksize: usize,
    next: usize,
    out: Vec<R>,
    failed: Option<TaskError>,
    /// Whether the results were handed out: a handle hands them out once.
    taken: bool,
}

// Nothing in the handle is ever pinned in place: the results are only moved out.
impl<R> Unpin for MapResult<R> {}

impl<R> std::fmt::Debug for MapResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapResult")
            .field("chunks", &self.chunks.len())
            .field("done", &self.next)
            .finish()
    }
}

impl<R: DeserializeOwned + 'static> MapResult<R> {
    /// A map of `len` inputs sent as `chunks` of `chunksize` inputs (the last may be
    /// shorter).
    pub(super) fn new(
        chunks: Vec<AsyncResult<ChunkOut<R>>>,
        len: usize,
        chunksize: usize,
    ) -> MapResult<R> {
        let mut out = Vec::with_capacity(len);
        sys::advise_huge_pages(&mut out);
        MapResult {
            chunks,
            chunksize,
            next: 0,
            out,
            failed: None,
            taken: false,
        }
    }

    /// A map the pool refused: it fails with `e` however many inputs it had, none included.
    pub(super) fn refused(e: TaskError) -> MapResult<R> {
        MapResult {
            failed: Some(e),
            ..MapResult::new(Vec::new(), 0, 1)
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
            if !c.ready() {
                return None;
            }
            // A chunk that ran answers for each of its inputs: some may have failed.
            match c.peek() {
                Some(Ok(out)) => ok &= out.failed.is_empty(),
                Some(Err(_)) => ok = false,
                None => return None,
            }
        }
        Some(ok && self.failed.is_none())
    }

    /// Waits at most `timeout` for every result (Python's `get(timeout)`); on timeout the
    /// tasks keep running and the handle stays usable.
    ///
    /// # Errors
    /// [`Error::Timeout`] if some task has not finished in time; otherwise the first
    /// failure, as [`Error::Task`].
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// This method is cancel safe: results that arrived stay in the handle.
    pub async fn get_timeout(&mut self, timeout: Duration) -> Result<Vec<R>> {
        match tokio::time::timeout(timeout, &mut *self).await {
            Ok(r) => Ok(r?),
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

impl<R: DeserializeOwned + Send + 'static> MapResult<R> {
    /// Waits until every task has finished, without taking the results (Python's
    /// `wait()`): then [`ready`](Self::ready) holds, [`successful`](Self::successful) tells
    /// how they went, and awaiting the handle gives the results at once.
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, the tasks run on and
    /// their results will be in the handle.
    pub async fn wait(&mut self) {
        for c in &mut self.chunks[self.next..] {
            c.wait().await;
        }
    }

    /// [`wait`](Self::wait) for at most `timeout` (Python's `wait(timeout)`): whether every
    /// task has finished. On timeout the tasks keep running.
    ///
    /// # Panics
    /// Outside a tokio runtime with its time driver enabled.
    ///
    /// # Cancel safety
    /// Cancel safe, like [`wait`](Self::wait).
    pub async fn wait_timeout(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.wait()).await.is_ok()
    }
}

impl<R: DeserializeOwned + 'static> MapResult<R> {
    /// The error to fail with, given the first failure in input order, `e`: if `e` is only
    /// an answer lost with its worker ([`TaskError::is_answer_lost`]), the error of the
    /// later chunk that was running when that worker died, if there is one (it is answered
    /// first, so it is there already), since that names the input that killed the worker.
    fn cause_of(&mut self, e: TaskError) -> TaskError {
        if !e.is_answer_lost() {
            return e;
        }
        for (i, c) in self.chunks.iter_mut().enumerate().skip(self.next) {
            if !c.ready() {
                continue;
            }
            if let Some(Err(cause)) = c.peek()
                && cause.is_worker_lost()
                && !cause.is_answer_lost()
                && cause.worker_pid() == e.worker_pid()
            {
                return cause.clone().at_input(i * self.chunksize);
            }
        }
        e
    }
}

impl<R: DeserializeOwned + 'static> Future for MapResult<R> {
    type Output = std::result::Result<Vec<R>, TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // A failure stays: awaited again, the map fails the same way.
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(e.clone()));
        }
        if this.taken {
            return Poll::Ready(Err(TaskError::local(Error::InvalidArgument(
                "the results of this map were already taken: a handle hands them out once".into(),
            ))));
        }
        while this.next < this.chunks.len() {
            let start = this.next * this.chunksize;
            let answer = match this.chunks[this.next].poll_answer(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(a) => a,
            };
            this.next += 1;
            let done = match answer {
                // Decoded straight onto the results so far.
                Answer::Raw(o) => chunk_into(o, &mut this.out, start),
                Answer::Decoded(Err(e)) => Err(e.at_input(start)),
                Answer::Decoded(Ok(v)) => items(v, start).try_for_each(|r| {
                    this.out.push(r?);
                    Ok(())
                }),
            };
            if let Err(e) = done {
                let e = this.cause_of(e);
                this.next = this.chunks.len();
                this.failed = Some(e.clone());
                return Poll::Ready(Err(e));
            }
        }
        this.taken = true;
        Poll::Ready(Ok(std::mem::take(&mut this.out)))
    }
}
