//! `wait`: Python's `multiprocessing.connection.wait`, on tokio's reactor.

use std::future::Future;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::join_handle::JoinHandle;
use crate::process::Process;
use crate::queue::{JoinableQueue, Queue, SimpleQueue};
use crate::sys;

/// The future a [`Waitable`] gives to [`wait`].
type ReadyFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Something [`wait`] can wait on: a [`Connection`] (ready when a message or end of stream
/// can be received), a [`Queue`] of any kind (ready when an item may be there, or once it
/// is shut down), a [`Process`] (ready when it has ended, Python's `sentinel`) or a
/// descriptor, a [`BorrowedFd`] (ready when readable: a socket, a pipe).
///
/// The trait is sealed: the crate's own types implement it, and its hooks are not API.
///
/// ```compile_fail
/// struct Mine;
/// impl tokio_multiprocessing::Waitable for Mine {}
/// ```
pub trait Waitable: Sync + sealed::Ready {}

mod sealed {
    use super::ReadyFuture;

    /// The hooks [`wait`](super::wait) uses; public in a private module, so that no one
    /// outside the crate can name, call or implement them.
    pub trait Ready {
        /// Whether the object is ready now.
        fn ready_now(&self) -> bool;

        /// Resolves once the object may be ready.
        fn ready(&self) -> ReadyFuture<'_>;
    }
}

use sealed::Ready;

impl<T: Serialize + DeserializeOwned> Waitable for Connection<T> {}

impl<T: Serialize + DeserializeOwned> Ready for Connection<T> {
    fn ready_now(&self) -> bool {
        Connection::ready_now(self)
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(Connection::ready(self))
    }
}

impl<T: Serialize + DeserializeOwned> Waitable for Queue<T> {}

impl<T: Serialize + DeserializeOwned> Ready for Queue<T> {
    fn ready_now(&self) -> bool {
        Queue::ready_now(self)
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(Queue::ready(self))
    }
}

impl<T: Serialize + DeserializeOwned> Waitable for JoinableQueue<T> {}

impl<T: Serialize + DeserializeOwned> Ready for JoinableQueue<T> {
    fn ready_now(&self) -> bool {
        Queue::ready_now(self)
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(Queue::ready(self))
    }
}

impl<T: Serialize + DeserializeOwned> Waitable for SimpleQueue<T> {}

impl<T: Serialize + DeserializeOwned> Ready for SimpleQueue<T> {
    fn ready_now(&self) -> bool {
        self.as_queue().ready_now()
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(self.as_queue().ready())
    }
}

/// Whether `fd` is readable now; an error counts as ready (the wait then reports it).
fn readable_now(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    sys::readable_now(fd).unwrap_or(true)
}

/// Resolves once `fd` is readable, through a copy of it on the reactor: when `poll` reports
/// anything for it, as [`readable_now`] reads it, so an error (the write end of a pipe
/// whose reader went) wakes the wait as it makes a new one return at once.
async fn readable(fd: BorrowedFd<'_>) -> Result<()> {
    let fd = sys::register_owned(sys::dup_fd(fd)?, Interest::READABLE)?;
    loop {
        let mut g = fd.ready(Interest::READABLE | Interest::ERROR).await?;
        if readable_now(fd.get_ref().as_fd()) {
            return Ok(());
        }
        g.clear_ready();
    }
}

impl Waitable for Process {}

impl Ready for Process {
    fn ready_now(&self) -> bool {
        readable_now(self.sentinel())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(readable(self.sentinel()))
    }
}

/// A [`Process::call`](crate::Process::call)'s child: ready once it has ended, its result
/// then waiting in the handle (the child answers just before it exits), so that a join
/// returns at once.
impl<R: Sync> Waitable for JoinHandle<R> {}

impl<R> Ready for JoinHandle<R> {
    fn ready_now(&self) -> bool {
        readable_now(self.sentinel())
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(readable(self.sentinel()))
    }
}

/// Any descriptor the reactor can watch (a socket, a pipe, an eventfd: Python's `wait`
/// takes sockets and file numbers): ready when it is readable, or at its end of stream.
/// Pass `&stream.as_fd()`.
impl Waitable for BorrowedFd<'_> {}

impl Ready for BorrowedFd<'_> {
    fn ready_now(&self) -> bool {
        readable_now(*self)
    }

    fn ready(&self) -> ReadyFuture<'_> {
        Box::pin(readable(*self))
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes (Python's
/// `multiprocessing.connection.wait(object_list, timeout)`), and returns the indices of the
/// ready ones, in order; an empty list after the timeout.
///
/// Objects that are ready already are reported at once, once the call has spent a unit of
/// its task's budget with tokio's scheduler ([`coop`](tokio::task::coop)), so that a loop of
/// waits lets the runtime's other tasks run. Readiness is a hint when several
/// processes read the same object: another may take the message or item first.
///
/// # Errors
/// An I/O error from the reactor (a descriptor it cannot watch); [`Error::InvalidArgument`]
/// for an empty list without a timeout (it would wait for ever).
///
/// # Panics
/// Outside a tokio runtime.
///
/// # Cancel safety
/// This function is cancel safe: it takes nothing from any object.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tokio_multiprocessing as mp;
///
/// async fn greet(conn: mp::Connection<String>) -> mp::Result<()> {
///     conn.send(&"hello".to_string()).await
/// }
///
/// # #[tokio::main]
/// # async fn main() -> mp::Result<()> {
/// let (conn, theirs) = mp::Pipe::new()?;
/// let q = mp::Queue::<u64>::new()?;
/// let mut p = mp::Process::new(greet, (theirs,)).start().await?;
/// let ready = mp::wait(&[&conn, &q, &p], Some(Duration::from_secs(10))).await?;
/// assert!(!ready.contains(&1), "nothing was put on the queue");
/// if ready.contains(&0) {
///     assert_eq!(conn.recv().await?, "hello");
/// }
/// p.join().await?;
/// # Ok(()) }
/// ```
pub async fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    // Objects ready at once are reported without the reactor: a loop of waits would never
    // hand its thread back to the scheduler (see `connection`'s module docs).
    tokio::task::coop::consume_budget().await;
    let now = |objects: &[&dyn Waitable]| -> Vec<usize> {
        objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.ready_now())
            .map(|(i, _)| i)
            .collect()
    };
    let ready = now(objects);
    if !ready.is_empty() {
        return Ok(ready);
    }
    if objects.is_empty() {
        return match timeout {
            Some(d) => {
                tokio::time::sleep(d).await;
                Ok(Vec::new())
            }
            None => Err(Error::InvalidArgument(
                "wait() on no objects without a timeout would wait for ever".into(),
            )),
        };
    }
    let any = futures::future::select_all(objects.iter().map(|o| o.ready()));
    let (res, first, _rest) = match timeout {
        Some(d) => match tokio::time::timeout(d, any).await {
            Ok(r) => r,
            Err(_) => return Ok(Vec::new()),
        },
        None => any.await,
    };
    res?;
    let mut ready = now(objects);
    if !ready.contains(&first) {
        ready.push(first);
        ready.sort_unstable();
    }
    Ok(ready)
}
