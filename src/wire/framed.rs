//! [`Framed`]: the one socket type that carries frames, for every link between our processes
//! (a pipe's ends, a pool worker's link, a child's bootstrap, a manager's connections, a
//! listener's connections) and over both transports.
//!
//! # Transports
//!
//! A Unix stream carries descriptors beside its frames (`SCM_RIGHTS`, on the first byte of
//! their frame). A TCP stream carries frames only: a frame that holds descriptors is refused
//! before anything is written, with [`Error::InvalidArgument`] naming them, and the
//! connection stays usable. Remote processes share state through a remote manager instead.
//!
//! # Readiness
//!
//! The socket is non-blocking from the start, and registered with the reactor of each tokio
//! runtime that awaits it, on its first use there (not when it is made: a child decodes its
//! arguments, and a worker reads its setup, before any runtime exists), so it serves
//! whichever runtime awaits it (see `Framed::io`). The
//! blocking variants ([`send_blocking`](Framed::send_blocking),
//! [`recv_blocking`](Framed::recv_blocking)) wait in `poll(2)` instead, for the few callers
//! without a runtime.
//!
//! # Two ways to read
//!
//! [`recv`](Framed::recv) reads all that is waiting, up to a read chunk, so that small frames
//! arrive many per system call: for a socket only this process reads (a pool worker's link).
//! [`recv_one`](Framed::recv_one) takes no byte past the end of the frame it receives: for an
//! end that other processes may read too (a `Connection`), whose next frame is theirs as much
//! as ours. Both are cancel safe: bytes read stay buffered here for the next call.
//!
//! # Sharing between tasks
//!
//! Every method takes `&self`. Each frame is taken by one receiver; senders take turns, so
//! frames from two tasks never interleave. A send dropped midway (a `select!`, a timeout)
//! leaves the part of its frame the socket has not taken for the next send to write first,
//! so that a frame is never followed by another's bytes before its end.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::codec;
use super::frame::{Frame, FrameBuf, RecvBuf, send_blocking};
use crate::awake::{self, Recent};
use crate::error::{Error, Result};
use crate::sys;

/// What carries a [`Framed`]'s bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A Unix stream socket: frames, with descriptors beside them.
    Unix,
    /// A TCP stream: frames only.
    Tcp,
}

impl Transport {
    /// The transport of a connected stream socket, asked of the kernel.
    pub(crate) fn of(fd: BorrowedFd<'_>) -> Result<Transport> {
        Ok(if sys::is_unix_socket(fd)? {
            Transport::Unix
        } else {
            Transport::Tcp
        })
    }
}

/// A socket registered with one runtime's reactor.
type Registration = AsyncFd<Arc<OwnedFd>>;

/// What [`Framed::try_send_now`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Now {
    /// Sent whole.
    Sent,
    /// Not sent at all.
    Not,
    /// Begun: the rest waits for the next send, or [`Framed::finish`].
    Begun,
}

/// A stream socket that sends and receives frames (see the module docs).
#[derive(Debug)]
pub(crate) struct Framed {
    fd: Arc<OwnedFd>,
    transport: Transport,
    /// The socket on the reactor of the runtime that used it last, and that runtime.
    io: Mutex<Option<(tokio::runtime::Id, Arc<Registration>)>>,
    recv: Mutex<RecvState>,
    send_turn: tokio::sync::Mutex<()>,
    /// The bytes of a frame that the socket did not take whole, begun by
    /// [`try_send_now`](Self::try_send_now) or by a send dropped midway: the next holder of
    /// the send turn writes them before anything else.
    rest: Mutex<Vec<u8>>,
    /// When this end last sent or received a frame: whether a wait may spin first.
    recent: Recent,
    /// The bytes the socket has taken so far: a peer that reads shows it by their growth.
    sent: AtomicU64,
}

/// Bytes read and not yet taken as frames, and whether the socket reported end of stream.
#[derive(Debug, Default)]
struct RecvState {
    buf: RecvBuf,
    eof: bool,
}

impl Framed {
    /// Frames over `fd`, a connected stream socket carried by `transport` (switched to
    /// non-blocking here).
    ///
    /// # Errors
    /// An I/O error if the descriptor's flags cannot be set.
    pub(crate) fn new(fd: OwnedFd, transport: Transport) -> Result<Framed> {
        sys::set_nonblocking(fd.as_fd(), true)?;
        Ok(Framed {
            fd: Arc::new(fd),
            transport,
            io: Mutex::new(None),
            recv: Mutex::new(RecvState::default()),
            send_turn: tokio::sync::Mutex::new(()),
            rest: Mutex::new(Vec::new()),
            recent: Recent::default(),
            sent: AtomicU64::new(0),
        })
    }

    /// Frames over a Unix stream socket.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub(crate) fn unix(fd: OwnedFd) -> Result<Framed> {
        Framed::new(fd, Transport::Unix)
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// Accepts bodies of at most `limit` bytes, and no descriptors, from now on (`None`: up to
    /// the maximum frame size, with descriptors): a longer frame fails [`recv`](Self::recv)
    /// with [`Error::FrameTooLarge`] as soon as its header is in, before its body arrives,
    /// and a descriptor fails it as soon as it arrives.
    pub(crate) fn set_recv_limit(&self, limit: Option<usize>) {
        self.state().buf.set_limit(limit);
    }

    /// The socket on the current runtime's reactor, registered on the first use by each
    /// runtime in turn: an end serves whichever runtime awaits it, as a process's handles
    /// may be used by one runtime after another (a registration lives on the reactor that
    /// made it, which another runtime does not drive, and which may be gone). A wait that
    /// holds the registration it began with keeps it.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    fn io(&self) -> Result<Arc<Registration>> {
        let runtime = crate::runtime::current().id();
        let mut io = self.io.lock().unwrap_or_else(|p| p.into_inner());
        match &*io {
            Some((id, reg)) if *id == runtime => Ok(reg.clone()),
            _ => {
                let reg = Arc::new(sys::register_shared(
                    self.fd.clone(),
                    Interest::READABLE | Interest::WRITABLE,
                )?);
                *io = Some((runtime, reg.clone()));
                Ok(reg)
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, RecvState> {
        self.recv.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next frame if one is buffered; at end of stream, the error that says how
    /// the stream ended.
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

    /// Reads once into the buffer (`exact`: no further than the end of the frame in
    /// progress). `Ok(None)` if the socket had nothing; else whether it is empty now, as far
    /// as the read can tell.
    fn read_some(&self, exact: bool) -> Result<Option<bool>> {
        let mut st = self.state();
        loop {
            let r = if exact {
                st.buf.read_frame_once(self.fd.as_fd())
            } else {
                st.buf.read_once(self.fd.as_fd()).map(|n| (n, false))
            };
            match r {
                Ok((0, _)) => {
                    st.eof = true;
                    return Ok(Some(true));
                }
                Ok((_, drained)) => return Ok(Some(drained)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives the next frame, reading all that waits (up to a read chunk) at each read:
    /// for a socket that no other process reads.
    ///
    /// # Errors
    /// [`Error::Closed`] at a clean end of stream, or a reset (a peer gone with bytes it had
    /// not read); [`Error::Protocol`] if the stream ends inside a frame or a frame is
    /// malformed; [`Error::FrameTooLarge`] for a header that announces more than the maximum
    /// frame size; an I/O error from the socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: bytes already read stay buffered for the next call.
    pub(crate) async fn recv(&self) -> Result<Frame> {
        let mut turn = Turn::default();
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            let io = self.io()?;
            let r = io
                .async_io(Interest::READABLE, |fd| {
                    let mut st = self.state();
                    let n = st.buf.read_once(fd.as_fd())?;
                    st.eof |= n == 0;
                    Ok(n)
                })
                .await;
            match r {
                Ok(n) => turn.moved(n).await,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one frame, reading the socket no further than its end: the frames behind
    /// it stay in the kernel for whichever process reads next. With nothing buffered, the
    /// header is peeked and a frame that has arrived whole is taken by one system call. A
    /// read that drains the socket clears the reactor's readiness at once, so the next wait
    /// costs no failed read.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: only the part of a frame it had begun to read stays
    /// buffered here, for the next call.
    pub(crate) async fn recv_one(&self) -> Result<Frame> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(f);
            }
            let io = self.io()?;
            let mut guard = io.readable().await?;
            match self.read_some(true)? {
                Some(true) | None => guard.clear_ready(),
                Some(false) => {}
            }
        }
    }

    /// [`recv`](Self::recv), waiting awake first when a frame is due shortly (see
    /// [`awake`](crate::awake)): for an end that sends requests and awaits their answers.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Cancel safety
    /// This method is cancel safe, as [`recv`](Self::recv).
    pub(crate) async fn recv_awake(&self) -> Result<Frame> {
        awake::wait(&self.recent, || self.try_recv().transpose(), self.recv()).await
    }

    /// [`recv_one`](Self::recv_one), waiting awake first when a frame is due shortly (see
    /// [`awake`](crate::awake)).
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    ///
    /// # Cancel safety
    /// This method is cancel safe, as [`recv_one`](Self::recv_one).
    pub(crate) async fn recv_one_awake(&self) -> Result<Frame> {
        awake::wait(&self.recent, || self.try_recv_one(), self.recv_one()).await
    }

    /// Takes one frame if it is buffered or has arrived, reading no further than its end
    /// (as [`recv_one`](Self::recv_one)), without waiting and without the reactor.
    fn try_recv_one(&self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.take_frame()? {
                return Ok(Some(f));
            }
            if self.read_some(true)?.is_none() {
                return Ok(None);
            }
        }
    }

    /// Receives the next frame if it is buffered or can be read at once, without waiting and
    /// without the reactor: `None` when the socket has no complete frame now (bytes of a
    /// partial one stay buffered for the next call). Reads as [`recv`](Self::recv) does.
    pub(crate) fn try_recv(&self) -> Option<Result<Frame>> {
        loop {
            match self.take_frame() {
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            match self.read_some(false) {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// The bytes of a frame still arriving that are read already: a peer whose frame takes
    /// long to arrive shows it is there by their growth.
    pub(crate) fn partial_len(&self) -> usize {
        self.state().buf.pending()
    }

    /// The bytes the socket has taken so far: a send that waits while this stays still
    /// waits for a peer that reads nothing.
    pub(crate) fn sent_bytes(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether a frame (its first bytes at least) or end of stream waits, checked without
    /// taking anything from the socket.
    pub(crate) fn has_input(&self) -> bool {
        self.state().eof || sys::has_input(self.fd.as_fd())
    }

    /// Waits actively, for at most `limit`, until the socket has input; returns whether it
    /// has. A process that sleeps in the reactor pays a wake-up when input arrives (tens of
    /// microseconds on a virtual machine); one that is still spinning here does not.
    pub(crate) fn spin_for_input(&self, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if sys::has_input(self.fd.as_fd()) {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Waits until a frame (its first bytes at least) or end of stream waits, taking nothing
    /// from the socket.
    ///
    /// # Errors
    /// An I/O error from the reactor.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: it takes nothing.
    pub(crate) async fn ready(&self) -> Result<()> {
        if self.has_input() {
            return Ok(());
        }
        let io = self.io()?;
        loop {
            let mut guard = io.readable().await?;
            if self.has_input() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Waits until the reactor reports the socket readable, then runs `take`, which takes
    /// what arrived with [`try_recv`](Self::try_recv) until it returns `None` (the socket
    /// drained), and clears the readiness; returns what `take` returned.
    ///
    /// # Errors
    /// An I/O error from the reactor.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// This method is cancel safe: dropped while it waits, it took nothing; `take` runs
    /// whole once the wait ended.
    pub(crate) async fn when_readable<R>(&self, take: impl FnOnce() -> R) -> Result<R> {
        let io = self.io()?;
        let mut guard = io.readable().await?;
        let taken = take();
        guard.clear_ready();
        Ok(taken)
    }

    /// Fails for a frame that holds descriptors on a transport that cannot carry them.
    pub(crate) fn check_fds(&self, frame: &FrameBuf) -> Result<()> {
        let n = frame.fd_count();
        if n > 0 && self.transport == Transport::Tcp {
            return Err(Error::InvalidArgument(format!(
                "a value that owns descriptors ({n} of them: a pipe end, a queue, a lock, an \
                 `Fd`...) cannot be sent over TCP; descriptors travel only over Unix sockets, \
                 between processes on one machine"
            )));
        }
        Ok(())
    }

    /// Sends a frame, descriptors included.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] above the maximum frame size and [`Error::InvalidArgument`]
    /// for descriptors the transport cannot carry (nothing is sent either way); an I/O error
    /// from the socket (a closed peer is `BrokenPipe`).
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// The stream stays whole, but the frame's fate is the peer's to see: dropped before the
    /// socket took any of it, nothing was sent; dropped midway, the part the socket has not
    /// taken stays here and the next send (or [`finish`](Self::finish)) writes it first, so
    /// the frame arrives whole once another send follows.
    pub(crate) async fn send(&self, frame: &mut FrameBuf) -> Result<()> {
        self.check_fds(frame)?;
        frame.seal()?;
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        self.write_rest(&io).await?;
        self.write_frame(&io, frame).await?;
        self.recent.mark();
        Ok(())
    }

    /// Sends `value`, whose encoding takes `len` bytes and holds no descriptors (as
    /// [`codec::measure`] found), as one frame, encoding it once the send turn is held: each
    /// byte string of [`codec::DIRECT`] bytes or more goes to the socket straight from the
    /// value, as far as the socket takes it at once, rather than being copied into the frame
    /// first (the rest is copied, and written as [`send`](Self::send) writes).
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] above the maximum frame size (nothing is sent);
    /// [`Error::Encode`] if the value fails to encode, or its encoding is not the `len`
    /// bytes measured: nothing is sent if the socket took none of the frame yet, else the
    /// rest of the frame is filled with bytes that make the peer's decoding fail (the stream
    /// stays in step); an I/O error from the socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// As [`send`](Self::send).
    pub(crate) async fn send_value<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        len: usize,
    ) -> Result<()> {
        let head = FrameBuf::header(len)?;
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        self.write_rest(&io).await?;
        let mut w = Direct::new(self.fd.as_fd(), &head, head.len() + len);
        let mut fds = Vec::new();
        let res = codec::encode_to(&mut w, &mut fds, value);
        self.sent.fetch_add(w.sent as u64, Ordering::Relaxed);
        if let Some(e) = w.broken.take() {
            return Err(e.into());
        }
        let res = match res {
            Ok(()) if w.encoded < head.len() + len || !fds.is_empty() => Err(Error::Encode {
                type_name: std::any::type_name::<T>(),
                message: "the value's encoding changed between its measure and its encoding".into(),
            }),
            r => r,
        };
        if let Err(e) = res {
            if w.sent == 0 {
                return Err(e);
            }
            w.spoil();
            self.write_all(&io, [&w.pending, &[]], &[], true).await?;
            return Err(e);
        }
        self.write_all(&io, [&w.pending, &[]], &[], w.sent > 0)
            .await?;
        self.recent.mark();
        Ok(())
    }

    /// Sends `body` as one frame as it is (not MessagePack), without copying it.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] above the maximum frame size (nothing is sent); an I/O error
    /// from the socket.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// As [`send`](Self::send).
    pub(crate) async fn send_raw(&self, body: &[u8]) -> Result<()> {
        let head = FrameBuf::header(body.len())?;
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        self.write_rest(&io).await?;
        self.write_all(&io, [&head, body], &[], false).await?;
        self.recent.mark();
        Ok(())
    }

    /// Sends a small frame ([`NOW_MAX`]) at once, from the caller's thread, when no other
    /// send is under way: `Ok(Now::Not)` when the socket took none of it (nothing was
    /// sent), for the caller to send it with [`send`](Self::send). A socket that takes only
    /// part of it (its buffer is all but full) keeps the rest for the next holder of the
    /// send turn, which writes it before anything else: `Ok(Now::Begun)`, and the caller
    /// sees to it that a send follows ([`finish`](Self::finish)). So the caller's thread never
    /// waits for the peer.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub(crate) fn try_send_now(&self, frame: &mut FrameBuf) -> Result<Now> {
        if frame.fd_count() > 0 || frame.wire_len() > NOW_MAX {
            return Ok(Now::Not);
        }
        frame.seal()?;
        let Ok(_turn) = self.send_turn.try_lock() else {
            return Ok(Now::Not);
        };
        let mut rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        let [head, tail] = frame.parts();
        if !rest.is_empty() || !tail.is_empty() {
            return Ok(Now::Not);
        }
        let sent = loop {
            match sys::send_with_fds(self.fd.as_fd(), head, &[]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Now::Not),
                Err(e) => return Err(e.into()),
            }
        };
        self.recent.mark();
        self.sent.fetch_add(sent as u64, Ordering::Relaxed);
        if sent == head.len() {
            return Ok(Now::Sent);
        }
        rest.extend_from_slice(&head[sent..]);
        Ok(Now::Begun)
    }

    /// Writes what [`try_send_now`](Self::try_send_now) left over, if a send has not already.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    ///
    /// # Cancel safety
    /// As [`send`](Self::send): dropped midway, what it did not write stays for the next
    /// send.
    pub(crate) async fn finish(&self) -> Result<()> {
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        self.write_rest(&io).await
    }

    /// Writes the rest of a frame begun by [`try_send_now`](Self::try_send_now); the send
    /// turn is held.
    async fn write_rest(&self, io: &Registration) -> Result<()> {
        let rest = std::mem::take(&mut *self.rest.lock().unwrap_or_else(|p| p.into_inner()));
        self.write_all(io, [&rest, &[]], &[], true).await
    }

    /// Sends several frames in order, frames without descriptors written together in as few
    /// system calls as the socket allows.
    ///
    /// # Errors
    /// As [`send`](Self::send); a frame refused before anything was sent refuses the batch.
    ///
    /// # Panics
    /// Outside a tokio runtime (the socket is registered with the runtime's reactor).
    ///
    /// # Cancel safety
    /// As [`send`](Self::send): dropped midway, the frames before the write under way were
    /// sent, those of the write under way (one frame, or several small ones joined) go out
    /// whole with the next send, and the others were not sent.
    pub(crate) async fn send_batch(&self, frames: &mut [FrameBuf]) -> Result<()> {
        for f in frames.iter_mut() {
            self.check_fds(f)?;
            f.seal()?;
        }
        let io = self.io()?;
        let _turn = self.send_turn.lock().await;
        self.write_rest(&io).await?;
        let mut joined: Vec<u8> = Vec::new();
        for f in frames.iter_mut() {
            // A frame with descriptors goes alone, and so does a large one (copying it into
            // the joined bytes would cost more than a system call saves).
            if f.fd_count() > 0 || f.parts()[0].len() >= JOIN_MAX {
                self.write_all(&io, [&joined, &[]], &[], false).await?;
                joined.clear();
                self.write_frame(&io, f).await?;
                continue;
            }
            if joined.is_empty() {
                joined = f.take_head();
            } else {
                joined.extend_from_slice(f.parts()[0]);
            }
            let tail = f.parts()[1];
            if !tail.is_empty() {
                // One write for the frame's head and tail, so that a drop between them
                // keeps the tail (see `write_all`).
                self.write_all(&io, [&joined, tail], &[], false).await?;
                joined.clear();
            }
        }
        self.write_all(&io, [&joined, &[]], &[], false).await?;
        self.recent.mark();
        Ok(())
    }

    /// Writes a sealed frame: its head with its descriptors, then its tail.
    async fn write_frame(&self, io: &Registration, frame: &FrameBuf) -> Result<()> {
        let raw = frame.raw_fds();
        let [head, tail] = frame.parts();
        self.write_all(io, [head, tail], &raw, false).await
    }

    /// Writes all of `parts`, one after the other, with `fds` on the first byte; `begun` if
    /// the socket has part of their frame already (the rest of a frame).
    ///
    /// A write dropped once the socket has part of the frame (a `select!`, a timeout) keeps
    /// what it did not write as the frame's rest, which the next holder of the send turn
    /// writes before anything else: the peer never reads another frame's bytes as this
    /// one's, and the stream stays whole.
    async fn write_all(
        &self,
        io: &Registration,
        parts: [&[u8]; 2],
        mut fds: &[RawFd],
        begun: bool,
    ) -> Result<()> {
        let mut unsent = Unsent::new(&self.rest, parts, begun);
        let mut turn = Turn::default();
        while let Some(data) = unsent.next() {
            let r = io
                .async_io(Interest::WRITABLE, |fd| {
                    // At most a turn's bytes per call: a socket with a large buffer would
                    // otherwise take tens of megabytes in one copy.
                    let part = &data[..data.len().min(TURN_BYTES)];
                    sys::send_with_fds(fd.as_fd(), part, fds)
                })
                .await;
            match r {
                Ok(n) => {
                    unsent.written(n);
                    fds = &[];
                    self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    turn.moved(n).await;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The socket is broken: nothing more goes through it.
                    unsent.forget();
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Sends a frame without a runtime, waiting in `poll(2)` while the socket is full. Not
    /// to be mixed with an async send in flight on the same socket.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub(crate) fn send_blocking(&self, frame: &mut FrameBuf) -> Result<()> {
        self.check_fds(frame)?;
        send_blocking(self.fd.as_fd(), frame)
    }

    /// Receives the next frame without a runtime, waiting in `poll(2)` until it has arrived.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub(crate) fn recv_blocking(&self) -> Result<Frame> {
        if let Some(f) = self.take_frame()? {
            return Ok(f);
        }
        self.state().buf.recv_blocking(self.fd.as_fd())
    }
}

impl AsFd for Framed {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Framed {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

mod direct;
#[cfg(test)]
mod tests;

use direct::Direct;

/// The largest frame [`Framed::try_send_now`] sends.
const NOW_MAX: usize = 4 * 1024;

/// The largest frame head [`Framed::send_batch`] copies to join it with others.
const JOIN_MAX: usize = 64 * 1024;

/// How many bytes a send or a receive moves before it lets the other tasks of its thread
/// run: a 64 MiB frame over a socket its peer drains as fast as it fills would otherwise
/// hold a current-thread runtime for the whole copy.
const TURN_BYTES: usize = 1 << 20;

/// The bytes of a write under way that the socket has not taken yet: dropped while the
/// socket has part of their frame, they become the frame's rest (see [`Framed::write_all`]).
struct Unsent<'a> {
    rest: &'a Mutex<Vec<u8>>,
    /// What is left to write, the first part empty only once both are.
    parts: [&'a [u8]; 2],
    /// Whether the socket has part of the frame.
    begun: bool,
}

impl<'a> Unsent<'a> {
    fn new(rest: &'a Mutex<Vec<u8>>, parts: [&'a [u8]; 2], begun: bool) -> Unsent<'a> {
        let mut unsent = Unsent { rest, parts, begun };
        unsent.written(0);
        unsent
    }

    /// The bytes to write next, if any are left.
    fn next(&self) -> Option<&'a [u8]> {
        Some(self.parts[0]).filter(|p| !p.is_empty())
    }

    /// The socket took `n` bytes of [`next`](Self::next).
    fn written(&mut self, n: usize) {
        self.parts[0] = &self.parts[0][n..];
        if self.parts[0].is_empty() {
            self.parts = [self.parts[1], &[]];
        }
        self.begun |= n > 0;
    }

    /// Keeps nothing when dropped.
    fn forget(&mut self) {
        self.begun = false;
    }
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.begun && self.next().is_some() {
            let mut rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
            rest.extend_from_slice(self.parts[0]);
            rest.extend_from_slice(self.parts[1]);
        }
    }
}

/// Counts the bytes a loop moved, and yields to the runtime every [`TURN_BYTES`].
#[derive(Default)]
struct Turn(usize);

impl Turn {
    async fn moved(&mut self, n: usize) {
        self.0 += n;
        if self.0 >= TURN_BYTES {
            self.0 = 0;
            tokio::task::yield_now().await;
        }
    }
}
