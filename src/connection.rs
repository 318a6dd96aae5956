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
//! A socket is registered with the reactor of each tokio runtime that uses it, on its first
//! use there (not when it is made or received, since a child decodes its arguments before
//! its runtime exists), so an end serves whichever runtime awaits it: one after another, or
//! a second while the first sits idle. `recv` waits for readability and reads without
//! blocking: no thread is parked and nothing is polled on a timer.
//!
//! Each `recv`, `recv_bytes` and `poll` first spends a unit of its task's budget with tokio's
//! scheduler ([`coop`](tokio::task::coop)), as tokio's channels do: a message already waiting
//! is taken without touching the reactor, so a loop on an end whose peer keeps up would
//! otherwise never hand its thread back, and on a current-thread runtime no other task would
//! run, nor any timer fire, until the loop ended.
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
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{Fd, FdRef, FrameBuf, Framed, Transport, codec};

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
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// async fn f(conn: mp::Connection<String>) {
    ///     let _ = conn.send(&"hello world".to_string()).await;
    /// }
    ///
    /// # #[tokio::main]
    /// # async fn main() -> mp::Result<()> {
    /// let (parent, child) = mp::Pipe::<String>::new()?;
    /// let mut p = mp::Process::new(f, (child,)).start().await?;
    /// println!("{}", parent.recv().await?);
    /// p.join().await?;
    /// # Ok(()) }
    /// ```
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> Result<(Connection<T>, Connection<T>)> {
        let (a, b) = sys::socketpair_stream()?;
        grow_send_buffers(&[&a, &b]);
        Ok((
            Connection::unix(a, true, true)?,
            Connection::unix(b, true, true)?,
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
        grow_send_buffers(&[&w]);
        Ok((
            Connection::unix(r, true, false)?,
            Connection::unix(w, false, true)?,
        ))
    }
}

/// The send buffer a pipe's ends ask for: a message of a megabyte fits in the socket whole,
/// so that its byte strings go out straight from the value sent (see
/// [`Connection::send`]), and a sender does not wait for the reader's wake-ups a few hundred
/// kilobytes at a time. Memory is taken only for bytes in flight.
const SEND_BUFFER: usize = 2 * 1024 * 1024;

/// Grows the send buffer of each of `ends` to [`SEND_BUFFER`] (as far as the system allows;
/// a refusal leaves the default, which works, only slower for large messages).
fn grow_send_buffers(ends: &[&OwnedFd]) {
    for end in ends {
        if let Err(e) = sys::grow_send_buffer(end.as_fd(), SEND_BUFFER) {
            tracing::debug!("cannot grow a pipe's send buffer: {e}");
        }
    }
}

/// A send's outcome, with a peer that is gone (a broken pipe, a reset) as [`Error::Closed`].
fn closed_if_gone(r: Result<()>) -> Result<()> {
    match r {
        Err(Error::Io(e))
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            Err(Error::Closed)
        }
        r => r,
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
    link: Framed,
    readable: bool,
    writable: bool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.link.as_raw_fd())
            .field("transport", &self.link.transport())
            .field("readable", &self.readable)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl<T> Connection<T> {
    /// An end over a socket already framed (a listener's connection, once authenticated).
    pub(crate) fn from_framed(link: Framed, readable: bool, writable: bool) -> Connection<T> {
        Connection {
            link,
            readable,
            writable,
            _t: PhantomData,
        }
    }

    fn unix(fd: OwnedFd, readable: bool, writable: bool) -> Result<Connection<T>> {
        Ok(Connection::from_framed(
            Framed::unix(fd)?,
            readable,
            writable,
        ))
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

    /// Waits until a message (its first bytes at least) or end of stream waits, taking
    /// nothing from the socket.
    pub(crate) async fn ready(&self) -> Result<()> {
        self.check_readable()?;
        self.link.ready().await
    }

    /// Sends one frame. A peer that is gone is [`Error::Closed`].
    async fn send_frame(&self, mut frame: FrameBuf) -> Result<()> {
        self.check_writable()?;
        closed_if_gone(self.link.send(&mut frame).await)
    }

    /// Proves to the other end that it holds `authkey` (Python's
    /// `multiprocessing.connection.deliver_challenge`): sends a random challenge, checks the
    /// HMAC-SHA256 the other end computes of it with its key (in
    /// [`answer_challenge`](Self::answer_challenge)), and answers with a welcome or a
    /// failure. [`Listener`](crate::Listener) and [`Client`](crate::Client) run both halves
    /// both ways; these are for a connection made otherwise (a [`Pipe`], say).
    ///
    /// # Errors
    /// [`Error::Authentication`] if the other end's answer is wrong (its key differs), is
    /// not an answer, or does not come within [`AUTH_TIMEOUT`](crate::AUTH_TIMEOUT);
    /// [`Error::InvalidArgument`] on an end of a simplex pipe; an I/O error from the
    /// socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// Not cancel safe: an exchange dropped midway leaves its messages half read, after
    /// which the connection is of no use.
    pub async fn deliver_challenge(&self, authkey: &[u8]) -> Result<()> {
        self.check_readable()?;
        self.check_writable()?;
        crate::listener::challenge(&self.link, authkey, true).await
    }

    /// Answers the other end's [`deliver_challenge`](Self::deliver_challenge) with the
    /// HMAC-SHA256 of its challenge under `authkey` (Python's
    /// `multiprocessing.connection.answer_challenge`), and waits for its verdict.
    ///
    /// # Errors
    /// [`Error::Authentication`] if the other end finds the answer wrong (its key differs),
    /// sends something that is not a challenge, or does not within
    /// [`AUTH_TIMEOUT`](crate::AUTH_TIMEOUT); [`Error::InvalidArgument`] on an end of a
    /// simplex pipe; an I/O error from the socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`deliver_challenge`](Self::deliver_challenge).
    pub async fn answer_challenge(&self, authkey: &[u8]) -> Result<()> {
        self.check_readable()?;
        self.check_writable()?;
        crate::listener::challenge(&self.link, authkey, false).await
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
    /// The connection stays usable, but a dropped send may still deliver its message.
    /// Dropped (in a `select!`, a timeout) before the socket took any of the message, it
    /// sent nothing; dropped once the socket took part of it (a large message to a peer that
    /// is slow to read), the rest stays in this end, and the next send from this process
    /// writes it before its own message: the peer receives the whole message then, never a
    /// mix of two. Until then the peer's `recv` waits for the rest; if this end is dropped
    /// first, the peer's `recv` fails with [`Error::Protocol`].
    pub async fn send_bytes(&self, data: &[u8]) -> Result<()> {
        if data.len() < codec::DIRECT {
            // Small: copied into a frame, which a send may write at once from this thread.
            let mut frame = FrameBuf::raw(data);
            frame.check_size()?;
            return self.send_frame(frame).await;
        }
        self.check_writable()?;
        closed_if_gone(self.link.send_raw(data).await)
    }

    /// Receives one message sent by [`send_bytes`](Self::send_bytes) (Python's
    /// `recv_bytes`).
    ///
    /// # Errors
    /// [`Error::Closed`] once every holder of the other end has closed it or exited and all
    /// messages have been received; [`Error::Protocol`] if the stream ends inside a message,
    /// or if a message's header announces descriptors that did not arrive with it (the
    /// message is not taken: every later receive fails the same way, so the connection is of
    /// no further use); [`Error::FrameTooLarge`] for a message over the maximum frame size
    /// (see [`set_max_frame_size`](crate::set_max_frame_size)), which is not read: every
    /// later receive fails the same way too.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, no message was taken. A
    /// message it had not begun to read stays on the socket, for whichever process holding
    /// this end reads next; one it had begun to read (a message still arriving in pieces)
    /// stays in this process's end, so that only this process's next receive gets it.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>> {
        self.check_readable()?;
        tokio::task::coop::consume_budget().await;
        Ok(self.link.recv_one_awake().await?.into_body())
    }

    /// [`recv_bytes`](Self::recv_bytes) of a message of at most `maxlength` bytes (Python's
    /// `recv_bytes(maxlength)`). The message is received whole either way (up to the
    /// maximum frame size); a longer one comes back inside the error, and the connection
    /// stays usable (Python's `OSError` leaves it unreadable).
    ///
    /// # Errors
    /// [`Error::BufferTooShort`] with the message if it is longer than `maxlength`; as
    /// [`recv_bytes`](Self::recv_bytes) otherwise.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// As [`recv_bytes`](Self::recv_bytes).
    pub async fn recv_bytes_max(&self, maxlength: usize) -> Result<Vec<u8>> {
        let message = self.recv_bytes().await?;
        if message.len() > maxlength {
            return Err(Error::BufferTooShort {
                room: maxlength,
                message,
            });
        }
        Ok(message)
    }

    /// Receives one message sent by [`send_bytes`](Self::send_bytes) into `buf`, and
    /// returns its length (Python's `recv_bytes_into(buf)`; for its `offset`, pass
    /// `&mut buf[offset..]`).
    ///
    /// # Errors
    /// [`Error::BufferTooShort`] with the message if it is longer than `buf` (Python's
    /// `BufferTooShort`), which is left as it was; as [`recv_bytes`](Self::recv_bytes)
    /// otherwise.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// As [`recv_bytes`](Self::recv_bytes).
    pub async fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize> {
        let message = self.recv_bytes_max(buf.len()).await?;
        buf[..message.len()].copy_from_slice(&message);
        Ok(message.len())
    }

    /// Whether a message (or end of stream) waits to be received, waiting at most `timeout`
    /// for one (Python's `poll(timeout)`; `Duration::ZERO` checks and returns, as Python's
    /// `poll()`, and `Duration::MAX` waits for ever, as `poll(None)`).
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
        tokio::task::coop::consume_budget().await;
        if self.link.has_input() {
            return Ok(true);
        }
        match tokio::time::timeout(timeout, self.ready()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    pub(crate) fn ready_now(&self) -> bool {
        self.readable && self.link.has_input()
    }
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends a value (Python's `send`). Descriptors inside it (pipe ends, queues...) travel
    /// with it; the value itself stays with the caller.
    ///
    /// A large byte string inside the value (64 KiB or more that serde hands over whole: a
    /// `serde_bytes::ByteBuf` or `Bytes`, a `bytes::Bytes`; not a plain `Vec<u8>`) goes to
    /// the socket straight from the value, as far as the socket takes it at once, rather
    /// than being copied into the message first; the value is then encoded twice (once to
    /// measure it), so its `Serialize` should give the same bytes each time.
    ///
    /// # Errors
    /// [`Error::Closed`] if the other end is gone; [`Error::Encode`] if the value cannot be
    /// encoded (nothing is sent; but a value whose second encoding fails, or differs from
    /// the first, after part of it went out, reaches the peer as a message that fails to
    /// decode, and the connection stays usable); [`Error::FrameTooLarge`] above the maximum
    /// frame size;
    /// [`Error::InvalidArgument`] if the value owns descriptors and this end is a TCP
    /// connection (descriptors travel only over Unix sockets; nothing is sent, and the
    /// connection stays usable); [`Error::Io`] if this process is out of descriptors for the
    /// duplicates of those the value owns ("Too many open files"; nothing is sent).
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// The connection stays usable, but a dropped send may still deliver its message.
    /// Dropped (in a `select!`, a timeout) before the socket took any of the message, it
    /// sent nothing; dropped once the socket took part of it (a large message to a peer that
    /// is slow to read), the rest stays in this end, and the next send from this process
    /// writes it before its own message: the peer receives the whole message then, never a
    /// mix of two. Until then the peer's `recv` waits for the rest; if this end is dropped
    /// first, the peer's `recv` fails with [`Error::Protocol`].
    pub async fn send(&self, value: &T) -> Result<()> {
        // What the encoding would tell others (a manager proxy's loan) waits until the frame
        // is known to be one this end sends.
        let mut frame = FrameBuf::new();
        let fits = {
            let (fits, kept) = codec::held_back(|| frame.push_unless_piece(value, codec::DIRECT));
            let fits = fits?;
            if fits {
                frame.check_size()?;
                self.link.check_fds(&frame)?;
                kept.done();
            }
            fits
        };
        let direct = if fits {
            None
        } else {
            // A large byte string: the value is measured, then encoded as it goes out, the
            // string sent from where it lies, unless the value holds descriptors (which go
            // with the frame's first byte, so the frame is encoded whole first).
            match codec::measure(value)? {
                (len, 0) => Some(len),
                _ => {
                    let (frame, kept) = codec::held_back(|| FrameBuf::of(value));
                    let mut frame = frame?;
                    frame.check_size()?;
                    self.link.check_fds(&frame)?;
                    kept.done();
                    return self.send_frame(frame).await;
                }
            }
        };
        match direct {
            None => self.send_frame(frame).await,
            Some(len) => {
                self.check_writable()?;
                closed_if_gone(self.link.send_value(value, len).await)
            }
        }
    }

    /// Receives the next value (Python's `recv`).
    ///
    /// # Errors
    /// [`Error::Closed`] once every holder of the other end has closed it or exited (killed
    /// included) and all messages have been received; [`Error::Decode`] if the message is not
    /// a `T` (the message is consumed, the connection stays usable); [`Error::Protocol`] if
    /// the stream ends inside a message, or if a message's header announces descriptors that
    /// did not arrive with it (the message is not taken: every later `recv` fails the same
    /// way, so the connection is of no further use); [`Error::FrameTooLarge`] as
    /// [`recv_bytes`](Self::recv_bytes); [`Error::Authentication`] for a listener's
    /// authentication challenge, which a [`Client`](crate::Client) connected without a key
    /// receives from a listener that has one.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: if it loses a `select!` race, no message was taken. A
    /// message it had not begun to read stays on the socket, for whichever process holding
    /// this end reads next; one it had begun to read (a message still arriving in pieces)
    /// stays in this process's end, so that only this process's next `recv` gets it.
    pub async fn recv(&self) -> Result<T> {
        self.check_readable()?;
        tokio::task::coop::consume_budget().await;
        let frame = self.link.recv_one_awake().await?;
        // (A body held apart, one large `bin`, is not a challenge: not joined to look.)
        let challenge = !frame.is_bin() && crate::listener::is_challenge(frame.body());
        frame.decode().map_err(|e| match challenge {
            true => Error::Authentication {
                message: "the listener asks for an authentication key (it sent its challenge): \
                          connect with the listener's key"
                    .into(),
            },
            false => e,
        })
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

impl<T: Serialize + DeserializeOwned + Send + 'static> Connection<T> {
    /// What this end receives, as a [`futures::Stream`], each message taken by a
    /// [`recv`](Self::recv): for `while let Some(msg) = msgs.next().await`, stream
    /// combinators, or a pool's [`imap_stream`](crate::Pool::imap_stream). It ends when
    /// every holder of the other end has closed it ([`Error::Closed`], Python's `EOFError`);
    /// a message that is not a `T` yields its [`Error::Decode`] in its place, and any other
    /// error is the stream's last item. The stream owns the end: a duplex end sends no more.
    ///
    /// # Cancel safety
    /// `next()` is cancel safe: a receive it began goes on inside the stream, for the next
    /// call; dropping the stream loses nothing, as a dropped `recv` does.
    pub fn into_stream(self) -> futures::stream::BoxStream<'static, Result<T>> {
        crate::receive_stream::receives(self, |c| async move {
            let r = c.recv().await;
            (c, r)
        })
    }

    /// What this end sends, as a [`futures::Sink`], each value sent by a
    /// [`send`](Self::send), in order: for `values.map(Ok).forward(conn.into_sink())`. A
    /// failed send hands its value back in a [`PutError`](crate::PutError), and the sink goes
    /// on with the next (one value that cannot be encoded costs only itself).
    /// [`close`](futures::SinkExt::close) lets go of the end: the other end sees the end of
    /// stream once every other holder of this one has closed it too. The sink owns the end:
    /// a duplex end receives no more.
    ///
    /// # Cancel safety
    /// See [`PutSink`](crate::PutSink): dropping the sink with a send in progress may lose
    /// that value, as a dropped `send`; `close().await` first loses nothing.
    pub fn into_sink(self) -> crate::PutSink<T>
    where
        // The value is borrowed by the send, across its waits.
        T: Sync,
    {
        crate::PutSink::new(self, |c, value| async move {
            match c.send(&value).await {
                Ok(()) => Ok(()),
                Err(e) => Err(crate::PutError::new(e, value)),
            }
        })
    }
}

impl<T> AsFd for Connection<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.link.as_fd()
    }
}

impl<T> AsRawFd for Connection<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.link.as_raw_fd()
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        (FdRef(self.link.as_fd()), self.readable, self.writable).serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (fd, readable, writable) = <(Fd, bool, bool)>::deserialize(d)?;
        let fd = fd.into_owned();
        Transport::of(fd.as_fd())
            .and_then(|transport| Framed::new(fd, transport))
            .map(|link| Connection::from_framed(link, readable, writable))
            .map_err(serde::de::Error::custom)
    }
}
