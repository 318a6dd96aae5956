//! `Pipe` and `Connection`: Python's `multiprocessing.Pipe`, awaited on tokio's reactor.
//!
//! A pipe is a Unix stream socket pair. Each end is a [`Connection`] that owns one socket;
//! messages are the crate's frames (`u32` length, descriptor count, MessagePack body), so a
//! message can carry pipe ends, queues and other objects that hold descriptors.
//!
//! # End of stream
//!
//! Every descriptor the crate makes is close-on-exec, and an end reaches another process only
//! when it is passed deliberately (as a `Process` argument, inside a message). So when every
//! process that held the other end has dropped it or exited (killed included: the kernel
//! closes a dead process's descriptors), the socket reports end of stream and `recv` returns
//! [`Error::Closed`]. Python's pitfall, where a child inherits both ends by `fork` and must
//! close the one it does not use before it can ever see `EOFError`, does not arise.
//!
//! # Readiness
//!
//! A socket is registered with the reactor of the tokio runtime that first uses it (not when
//! it is made or received, since a child decodes its arguments before its runtime exists).
//! `recv` waits for readability and reads without blocking: no thread is parked and nothing
//! is polled on a timer. Use an end from one runtime only.
//!
//! # Concurrency
//!
//! Within a process, an end may be shared between tasks (`&self` methods): each frame is
//! taken by one receiver, and senders take turns. Between processes, as in Python, two
//! processes should not write to (or read from) the same end at the same time: a large
//! frame is written in several pieces, and pieces of two writers could interleave. Use a
//! [`Queue`](crate::Queue) for many producers or consumers.
//!
//! # Sharing an end
//!
//! Several processes may hold the same end and take turns reading it (one polls, another
//! receives; one receives a message, another the next). So a process never takes from the
//! socket more than the message it receives: `poll` and [`wait`](crate::wait) peek
//! (`MSG_PEEK`) and take nothing, and `recv` peeks at the header, then reads exactly that
//! frame, header and body in one system call when it has arrived whole. The frames behind
//! it stay in the kernel for whichever process reads next. Only the part of a frame that a
//! cancelled `recv` had begun to read stays in this process, for its next `recv`.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::codec;
use crate::wire::frame::{Frame, HEADER_LEN, write_header};
use crate::wire::{Fd, FdRef, RecvBuf};

/// Makes pipes: Python's `multiprocessing.Pipe`.
///
/// `Pipe::<T>::new()` gives two connected, duplex [`Connection`]s that send and receive
/// values of type `T`; [`Pipe::simplex`] gives a receive-only end and a send-only end
/// (Python's `Pipe(duplex=False)`).
pub struct Pipe<T>(PhantomData<fn(T) -> T>);

impl<T> fmt::Debug for Pipe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pipe")
    }
}

impl<T: Serialize + DeserializeOwned> Pipe<T> {
    /// Two connected ends; each can send and receive (Python's `Pipe()`).
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a socket pair (descriptor limit).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use tokio_multiprocessing as mp;
    ///
    /// async fn f(conn: mp::Connection<String>) {
    ///     let _ = conn.send(&"hello world".to_string()).await;
    /// }
    ///
    /// # async fn demo() -> mp::Result<()> {
    /// let (parent, child) = mp::Pipe::<String>::new()?;
    /// let mut p = mp::Process::new(f, (child,)).start().await?;
    /// println!("{}", parent.recv().await?);
    /// p.join().await?;
    /// # Ok(()) }
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<(Connection<T>, Connection<T>)> {
        let (a, b) = sys::socketpair_stream()?;
        Ok((
            Connection::from_fd(a, true, true)?,
            Connection::from_fd(b, true, true)?,
        ))
    }

    /// A one-way pipe: `(receiver, sender)`, like Python's `Pipe(duplex=False)`, which
    /// returns `(r, w)`. The kernel enforces the direction: the receiver's socket is shut
    /// for writing.
    ///
    /// # Errors
    /// An I/O error if the kernel refuses a socket pair.
    pub fn simplex() -> Result<(Connection<T>, Connection<T>)> {
        let (r, w) = sys::socketpair_stream()?;
        sys::shutdown_socket(r.as_fd(), false, true)?;
        Ok((
            Connection::from_fd(r, true, false)?,
            Connection::from_fd(w, false, true)?,
        ))
    }
}

/// One end of a [`Pipe`] (or a [`Listener`](crate::Listener)/[`Client`](crate::Client)
/// connection): sends and receives values of type `T`.
///
/// It can be passed to another process as a `Process` argument, inside a message, or as a
/// `Pool` argument; the receiving process gets its own descriptor for the same socket.
/// Dropping it (or [`close`](Self::close)) closes this process's descriptor.
///
/// When every process that held the other end has closed it or exited (killed included),
/// [`recv`](Self::recv) returns [`Error::Closed`], Python's `EOFError`. Descriptors are
/// close-on-exec and reach a child only when passed to it, so, unlike with Python's `fork`, a
/// child never holds the other end by accident.
///
/// Within a process an end may be shared between tasks (`&self` methods). As in Python, two
/// processes should not write to (or read from) the same end at once: pieces of two large
/// messages could interleave. Use a [`Queue`](crate::Queue) for many producers or consumers.
pub struct Connection<T> {
    fd: Arc<OwnedFd>,
    readable: bool,
    writable: bool,
    io: Mutex<Option<Arc<AsyncFd<Arc<OwnedFd>>>>>,
    rbuf: Mutex<RecvState>,
    send_turn: tokio::sync::Mutex<()>,
    _t: PhantomData<fn(T) -> T>,
}

/// The frame this process has begun to read (never more than one), and whether the socket
/// reported end of stream.
#[derive(Debug, Default)]
struct RecvState {
    buf: RecvBuf,
    eof: bool,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.fd.as_raw_fd())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

/// A frame ready to go: header, body, descriptors.
pub(crate) struct OutFrame {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl OutFrame {
    /// Encodes `value` as one frame.
    pub(crate) fn value<T: Serialize + ?Sized>(value: &T) -> Result<OutFrame> {
        let mut bytes = vec![0u8; HEADER_LEN];
        let mut fds = Vec::new();
        codec::encode_into(&mut bytes, &mut fds, value)?;
        OutFrame::seal(bytes, fds)
    }

    /// A frame whose body is `data` as it is (no MessagePack).
    pub(crate) fn raw(data: &[u8]) -> Result<OutFrame> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + data.len());
        bytes.extend_from_slice(&[0; HEADER_LEN]);
        bytes.extend_from_slice(data);
        OutFrame::seal(bytes, Vec::new())
    }

    fn seal(mut bytes: Vec<u8>, fds: Vec<OwnedFd>) -> Result<OutFrame> {
        let body = bytes.len() - HEADER_LEN;
        write_header(&mut bytes, body, fds.len())?;
        Ok(OutFrame { bytes, fds })
    }
}

impl<T> Connection<T> {
    pub(crate) fn from_fd(fd: OwnedFd, readable: bool, writable: bool) -> Result<Connection<T>> {
        sys::set_nonblocking(fd.as_fd(), true)?;
        Ok(Connection {
            fd: Arc::new(fd),
            readable,
            writable,
            io: Mutex::new(None),
            rbuf: Mutex::new(RecvState::default()),
            send_turn: tokio::sync::Mutex::new(()),
            _t: PhantomData,
        })
    }

    /// Whether this end can receive (false for the sending end of a simplex pipe).
    pub fn readable(&self) -> bool {
        self.readable
    }

    /// Whether this end can send (false for the receiving end of a simplex pipe).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Closes this end in this process (the same as dropping it). The peer sees end of stream
    /// once every process holding this end has closed it.
    pub fn close(self) {}

    /// The socket, registered with the current runtime's reactor on first use.
    fn io(&self) -> Result<Arc<AsyncFd<Arc<OwnedFd>>>> {
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = &*io {
            return Ok(a.clone());
        }
        let a = Arc::new(sys::register_shared(
            self.fd.clone(),
            Interest::READABLE | Interest::WRITABLE,
        )?);
        *io = Some(a.clone());
        Ok(a)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecvState> {
        self.rbuf.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_readable(&self) -> Result<()> {
        if self.readable {
            Ok(())
        } else {
            Err(Error::InvalidArgument(
                "this end of a simplex pipe only sends".into(),
            ))
        }
    }

    fn check_writable(&self) -> Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(Error::InvalidArgument(
                "this end of a simplex pipe only receives".into(),
            ))
        }
    }

    /// Reads the socket once, no further than the end of the frame in progress (see
    /// "Sharing an end" in the module docs). `Ok(None)` if it had nothing (would block),
    /// else whether the read left the socket empty.
    fn read_some(&self) -> Result<Option<bool>> {
        let mut st = self.state();
        let (n, drained) = loop {
            match st.buf.read_frame_once(self.fd.as_fd()) {
                Ok(r) => break r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            st.eof = true;
        }
        Ok(Some(drained))
    }

    /// Takes the next frame if one is at hand; `Err(Closed)` at end of stream.
    fn take_frame(&self) -> Result<Option<Frame>> {
        let mut st = self.state();
        if let Some(f) = st.buf.next_frame()? {
            return Ok(Some(f));
        }
        if st.eof {
            return st.buf.at_eof().map(Some);
        }
        Ok(None)
    }

    /// Whether a message (its first bytes at least) or end of stream waits, checked without
    /// taking anything from the socket.
    fn input_now(&self) -> bool {
        self.state().eof || sys::has_input(self.fd.as_fd())
    }

    /// Waits until a message (its first bytes at least) or end of stream waits, taking
    /// nothing from the socket.
    pub(crate) async fn ready(&self) -> Result<()> {
        self.check_readable()?;
        if self.input_now() {
            return Ok(());
        }
        let io = self.io()?;
        loop {
            let mut guard = io.readable().await?;
            if self.input_now() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Receives one frame, reading the socket only up to its end. A read that drains the
    /// socket clears the reactor's readiness at once, so the next wait costs no failed read.
    async fn recv_frame(&self) -> Result<Frame> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            let io = self.io()?;
            let mut guard = io.readable().await?;
            match self.read_some()? {
                Some(true) | None => guard.clear_ready(),
                Some(false) => {}
            }
        }
    }

    async fn send_frame(&self, frame: OutFrame) -> Result<()> {
        self.check_writable()?;
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        let raw: Vec<RawFd> = frame.fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut off = 0;
        while off < frame.bytes.len() {
            let fds: &[RawFd] = if off == 0 { &raw } else { &[] };
            let data = &frame.bytes[off..];
            let mut guard = io.writable().await?;
            match guard.try_io(|a| sys::send_with_fds(a.get_ref().as_fd(), data, fds)) {
                Ok(Ok(n)) => off += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(Error::Closed);
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// Sends `data` as one message, as it is (Python's `send_bytes`): no serde, received by
    /// [`recv_bytes`](Self::recv_bytes).
    ///
    /// # Errors
    /// [`Error::Closed`] if the other end is gone; [`Error::FrameTooLarge`] above the
    /// maximum frame size; an I/O error otherwise.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// Not cancel safe: a large message dropped midway leaves part of a frame on the socket,
    /// after which the stream is unusable. Send from a task that is not cancelled.
    pub async fn send_bytes(&self, data: &[u8]) -> Result<()> {
        self.send_frame(OutFrame::raw(data)?).await
    }

    /// Receives one message sent by [`send_bytes`](Self::send_bytes) (Python's
    /// `recv_bytes`).
    ///
    /// # Errors
    /// [`Error::Closed`] once every holder of the other end has closed it or exited and all
    /// messages have been received; [`Error::Protocol`] if the stream ends inside a message.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, no message was taken.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.check_readable()?;
        Ok(self.recv_frame().await?.into_body())
    }

    /// Whether a message (or end of stream) waits to be received, waiting at most `timeout`
    /// for one (Python's `poll(timeout)`; `Duration::ZERO` checks and returns).
    ///
    /// It looks without taking: nothing is read off the socket, so when another process
    /// holds the same end, the message is still there for whichever of the two receives
    /// first. `true` means that a message has begun to arrive: [`recv`](Self::recv) may
    /// still wait for the rest of a large one.
    ///
    /// # Errors
    /// An I/O or protocol error from the socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: it takes no message.
    pub async fn poll(&self, timeout: Duration) -> Result<bool> {
        self.check_readable()?;
        if self.input_now() {
            return Ok(true);
        }
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    pub(crate) fn ready_now(&self) -> bool {
        self.readable && self.input_now()
    }
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends a value (Python's `send`). Descriptors inside it (pipe ends, queues...) travel
    /// with it; the value itself stays with the caller.
    ///
    /// # Errors
    /// [`Error::Closed`] if the other end is gone; [`Error::Encode`] if the value cannot be
    /// encoded (nothing is sent); [`Error::FrameTooLarge`] above the maximum frame size.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// Not cancel safe: a large message dropped midway leaves part of a frame on the socket,
    /// after which the stream is unusable. Send from a task that is not cancelled.
    pub async fn send(&self, value: &T) -> Result<()> {
        self.send_frame(OutFrame::value(value)?).await
    }

    /// Receives the next value (Python's `recv`).
    ///
    /// # Errors
    /// [`Error::Closed`] once every holder of the other end has closed it or exited (killed
    /// included) and all messages have been received; [`Error::Decode`] if the message is not
    /// a `T` (the message is consumed, the connection stays usable); [`Error::Protocol`] if
    /// the stream ends inside a message.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, no message was taken.
    pub async fn recv(&self) -> Result<T> {
        self.check_readable()?;
        let f = self.recv_frame().await?;
        f.decode()
    }

    /// [`recv`](Self::recv), giving up after `timeout` with [`Error::Timeout`] (nothing is
    /// taken then).
    ///
    /// # Errors
    /// As [`recv`](Self::recv), and [`Error::Timeout`].
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe, like [`recv`](Self::recv).
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl<T> AsFd for Connection<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<T> AsRawFd for Connection<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (FdRef(self.fd.as_fd()), self.readable, self.writable).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (fd, readable, writable) = <(Fd, bool, bool)>::deserialize(d)?;
        Connection::from_fd(fd.into_owned(), readable, writable).map_err(serde::de::Error::custom)
    }
}
