//! `JoinHandle`: a process started by [`Process::call`], which hands back its target's
//! result (procspawn's `JoinHandle`, aiomultiprocess's `Worker`, pebble's `ProcessFuture`).

use std::future::{Future, IntoFuture};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::error::{Error, ExitCause, Result, TaskError, TaskFailure};
use crate::process::Process;
use crate::wire::{Frame, Framed};

/// Where the child's answer stands.
enum Outcome<R> {
    /// Not received yet.
    Waiting,
    /// Received (or known to be lost), not yet handed out.
    Received(std::result::Result<R, TaskError>),
    /// Handed out.
    Taken,
}

/// A child started by [`Process::call`]: joining it gives what its target returned.
///
/// The child answers with its target's result just before it exits; a task of the runtime
/// that started it takes the answer in as it comes, so the child ends whatever the size of its
/// result, and [`join`](Self::join) hands it out and waits for the exit. The
/// handle is also a [`Process`] ([`process`](Self::process)): its pid, `kill`, `terminate`,
/// `is_alive` and exit code.
///
/// Dropping a `JoinHandle` does not stop the child (as dropping a [`Process`] does not); its
/// result is discarded, and the child is reaped when it ends. For pebble's
/// `concurrent.process(timeout=...)`, which kills the process once the timeout expires, use
/// [`join_timeout`](Self::join_timeout) and [`kill`](Self::kill):
///
/// ```no_run
/// # async fn f() -> tokio_multiprocessing::Result<()> {
/// # use std::time::Duration;
/// fn slow(n: u64) -> u64 { std::thread::sleep(Duration::from_secs(n)); n }
/// let mut h = tokio_multiprocessing::Process::call(slow, (60,)).start().await?;
/// if h.join_timeout(Duration::from_secs(1)).await?.is_none() {
///     h.kill()?; // the next `join` gives `is_worker_lost()`, with the signal
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping a JoinHandle discards the result; the child runs on"]
pub struct JoinHandle<R> {
    process: Process,
    answer: Answer,
    outcome: Outcome<R>,
}

/// The socket the child answers on, and the task of the runtime that started the child that
/// reads the answer as soon as it comes: a child whose answer is larger than the socket's
/// buffer can then end before anything joins it, so that a join through
/// [`JoinHandle::process`] and [`wait`](crate::wait) see it end. (Left to a join, such a
/// child blocked in its write, and those waited for ever.)
struct Answer {
    link: Arc<Framed>,
    /// What the reader task received; `Err` once the task is gone without an answer (its
    /// runtime ended): the join then reads the socket itself.
    read: oneshot::Receiver<Result<Frame>>,
    reader: AbortHandle,
}

impl Answer {
    fn read_ahead(link: Framed) -> Answer {
        let link = Arc::new(link);
        let (tx, read) = oneshot::channel();
        let reader = tokio::spawn({
            let link = link.clone();
            async move {
                let _ = tx.send(link.recv_one().await);
            }
        })
        .abort_handle();
        Answer { link, read, reader }
    }

    /// The child's answer frame. Cancel safe: the reader task keeps what it read, and a
    /// frame begun here stays buffered in the link.
    async fn recv(&mut self) -> Result<Frame> {
        match (&mut self.read).await {
            Ok(r) => r,
            Err(_) => self.link.recv_one().await,
        }
    }
}

/// The reader task ends with the handle: the child's answer is discarded, and a child still
/// writing it sees its parent's end closed.
impl Drop for Answer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl<R> std::fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let outcome = match &self.outcome {
            Outcome::Waiting => "waiting",
            Outcome::Received(_) => "received",
            Outcome::Taken => "taken",
        };
        f.debug_struct("JoinHandle")
            .field("process", &self.process)
            .field("outcome", &outcome)
            .finish()
    }
}

impl<R: DeserializeOwned + Send + 'static> JoinHandle<R> {
    pub(crate) fn new(process: Process, answer: OwnedFd) -> Result<JoinHandle<R>> {
        Ok(JoinHandle {
            process,
            answer: Answer::read_ahead(Framed::unix(answer)?),
            outcome: Outcome::Waiting,
        })
    }

    /// Waits for the child to answer and exit, and gives what its target returned.
    ///
    /// # Errors
    /// A [`TaskError`], as a pool task's: the target panicked ([`TaskError::is_panic`], with
    /// the panic's message and location); the child died before it answered, or midway
    /// through its answer ([`TaskError::is_worker_lost`], with its pid and the signal or
    /// exit code, as after [`kill`](Self::kill)); its result could not be encoded in the
    /// child, or was over the maximum frame size ([`TaskError::frame_too_large`]), or could
    /// not be decoded here ([`TaskError::caller_error`] is [`Error::Decode`]). A join after
    /// the result was handed out gives one whose `caller_error` is
    /// [`Error::InvalidArgument`].
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: a join dropped before it returned (a `select!`, a
    /// timeout) leaves the result, if it had arrived, in the handle for the next join.
    pub async fn join(&mut self) -> std::result::Result<R, TaskError> {
        if let Outcome::Waiting = self.outcome {
            let received = match self.answer.recv().await {
                Ok(frame) => match frame.decode::<std::result::Result<R, TaskFailure>>() {
                    Ok(r) => r.map_err(TaskError::failed),
                    Err(e) => Err(TaskError::local(e.naming::<R>())),
                },
                // No answer, or part of one: the child ended without answering.
                Err(Error::Closed | Error::Protocol(_)) => {
                    let code = self.process.join().await.map_err(TaskError::local)?;
                    let cause = ExitCause::from_exitcode(code);
                    Err(TaskError::called_process_lost(self.process.pid(), cause))
                }
                Err(e) => Err(TaskError::local(e)),
            };
            self.outcome = Outcome::Received(received);
        }
        if let Outcome::Received(_) = self.outcome {
            self.process.join().await.map_err(TaskError::local)?;
        }
        match std::mem::replace(&mut self.outcome, Outcome::Taken) {
            Outcome::Received(r) => r,
            _ => Err(TaskError::local(Error::InvalidArgument(
                "the result of this process was already taken: a handle hands it out once".into(),
            ))),
        }
    }

    /// [`join`](Self::join), giving up after `timeout` with `Ok(None)`: the child runs on,
    /// and a later join still gives its result (Python's `join(timeout)`; pebble's timeout
    /// also kills the process: call [`kill`](Self::kill) then).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe, like [`join`](Self::join).
    pub async fn join_timeout(
        &mut self,
        timeout: Duration,
    ) -> std::result::Result<Option<R>, TaskError> {
        tokio::time::timeout(timeout, self.join())
            .await
            .ok()
            .transpose()
    }
}

impl<R> JoinHandle<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGKILL (procspawn's `kill`, pebble's `cancel` of a running call): a join then
    /// fails with [`TaskError::is_worker_lost`], unless the child had answered already.
    ///
    /// # Errors
    /// An I/O error from the kernel.
    pub fn kill(&self) -> Result<()> {
        self.process.kill()
    }

    /// Sends SIGTERM, as [`Process::terminate`].
    ///
    /// # Errors
    /// An I/O error from the kernel.
    pub fn terminate(&self) -> Result<()> {
        self.process.terminate()
    }

    /// The child's sentinel, as [`Process::sentinel`]: readable once the child has ended.
    pub fn sentinel(&self) -> BorrowedFd<'_> {
        self.process.sentinel()
    }

    /// The child as a [`Process`]: its name, `is_alive`, `exitcode` and sentinel. Joining
    /// it through this reference waits for the exit but leaves the result in the handle.
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Awaiting a handle joins it, as a tokio `JoinHandle` is awaited:
/// `Process::call(f, args).start().await?.await?` gives what `f` returned.
///
/// # Errors
/// As [`JoinHandle::join`].
///
/// # Cancel safety
/// The future owns the handle: dropped before it resolves, it drops the handle, and the
/// child runs on, its result discarded. To keep the result for later, await
/// [`join`](JoinHandle::join) on a handle of your own instead.
///
/// # Examples
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// fn add(a: u64, b: u64) -> u64 {
///     a + b
/// }
/// let sum = tokio_multiprocessing::Process::call(add, (2, 3)).start().await?.await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
impl<R: DeserializeOwned + Send + 'static> IntoFuture for JoinHandle<R> {
    type Output = std::result::Result<R, TaskError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move { self.join().await })
    }
}
