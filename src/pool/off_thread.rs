//! Large arguments and results are encoded and decoded on tokio's blocking threads, so that a
//! 64 MiB argument does not stall the caller's runtime thread (and every other task on a
//! current-thread runtime) for the tens of milliseconds its copy takes.
//!
//! Arguments are first encoded in place with a budget of [`OFF_THREAD_MIN`] bytes: small
//! ones, nearly all, cost one pass as before. An encoding that outgrows the budget is
//! dropped and redone on a blocking thread; the task counts as queued from the moment it was
//! submitted ([`Cmd::Expect`]), so a `close()` right after it still waits for it. A result
//! larger than [`OFF_THREAD_MIN`] is decoded on a blocking thread when its handle is awaited.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::payload::Payload;
use super::scheduler::{Cmd, Outcome};
use super::{AsyncResult, Entry, Shared, checked_job};
use crate::error::{Error, TaskError};
use crate::task::panic_message;
use crate::wire::Encoded;

/// Encodings larger than this are made and read on a blocking thread. Below it, copying
/// takes well under a millisecond, less than the hop to another thread and back is worth.
pub(super) const OFF_THREAD_MIN: usize = 1 << 20;

impl Shared {
    /// Queues `f(args)` (or a chunk) and returns the handle on its answer, encoding `args`
    /// on a blocking thread if they are large and a runtime is at hand.
    pub(super) fn submit_args<A, R>(
        &self,
        entry: Entry,
        args: A,
        timeout: Option<Duration>,
    ) -> AsyncResult<R>
    where
        A: Serialize + Send + 'static,
        R: DeserializeOwned,
    {
        let runtime = match Encoded::within(&args, OFF_THREAD_MIN) {
            Ok(Some(e)) => return self.submit(entry, Ok(e), timeout),
            Err(e) => return self.submit::<R>(entry, Err::<Encoded, _>(e), timeout),
            Ok(None) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => rt,
                Err(_) => return self.submit(entry, Encoded::new(&args), timeout),
            },
        };
        if self.closed.load(Ordering::Acquire) {
            return AsyncResult::failed(TaskError::pool_closed());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if self.cmds.send(Cmd::Expect(id)).is_err() {
            return AsyncResult::failed(TaskError::pool_closed());
        }
        let (tx, rx) = oneshot::channel();
        let (cmds, timeout, remote) = (
            self.cmds.clone(),
            timeout.or(self.task_timeout),
            self.remote,
        );
        runtime.spawn_blocking(move || {
            // A `Serialize` that panics here fails the call as one that errs, and the task
            // is still accounted for: a close waits for the expected task until it arrives.
            let payload = std::panic::catch_unwind(AssertUnwindSafe(|| Encoded::large(&args)))
                .unwrap_or_else(|p| {
                    Err(Error::Encode {
                        type_name: std::any::type_name::<A>(),
                        message: format!("its Serialize panicked: {}", panic_message(&*p)),
                    })
                })
                .map(Payload::from);
            let job = match checked_job(id, entry, payload, timeout, tx, remote) {
                Ok(job) => Some(job),
                Err((tx, e)) => {
                    let _ = tx.send(Err(e));
                    None
                }
            };
            // A failed send means the pool is gone: dropping the job's reply fails the
            // handle as the pool's closing does.
            let _ = cmds.send(Cmd::Expected { id, job });
        });
        AsyncResult::waiting(id, rx, self.cmds.clone())
    }
}

/// Decodes a worker's answer on a blocking thread if it is large and a runtime is at hand;
/// otherwise `Err` gives it back, to be decoded in place.
pub(super) fn decode_later<R>(
    outcome: Outcome,
) -> Result<tokio::task::JoinHandle<Result<R, TaskError>>, Outcome>
where
    R: DeserializeOwned + Send + 'static,
{
    let large = matches!(&outcome, Ok(frame) if frame.body().len() > OFF_THREAD_MIN);
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if large => {
            Ok(rt.spawn_blocking(move || super::async_result::decode_outcome(outcome)))
        }
        _ => Err(outcome),
    }
}
