//! Items spilled to a memfd: a packet carries up to [`INLINE_MAX`](super::INLINE_MAX)
//! bytes; a larger item is written to a memfd as it is encoded ([`Spilling`]) and its packet
//! carries the file's descriptor. The consumer maps the file read-only, decodes from the
//! mapping, and hands files of up to 2 MiB back through a second small socket pair, for a
//! producer to write its next large item into without allocating fresh pages; it keeps its
//! mapping of a few of them for when they come round again (see "Mechanism" in the queue's
//! docs).

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use serde::de::DeserializeOwned;

use super::INLINE_MAX;
use super::inner::Inner;
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::codec;

/// The send buffer of the socket that carries spill files back for reuse: a few of them.
pub(super) const RECYCLE_BUFFER: usize = 8 * 1024;

/// File offsets that the kernel copies into fastest: writing at an offset that is not a
/// multiple of this takes several times as long.
const ALIGN: usize = 64;

/// Where a large item's encoding goes as it is made: into the encoding buffer while the
/// whole fits a packet, then into a spill file, so that the bulk of a large item is copied
/// once, into the file, and never into a buffer first. Small writes are gathered in the
/// buffer and reach the file together; the bulk of a long one goes to the file at once.
/// The file is written at multiples of [`ALIGN`] only, but for the last bytes.
///
/// Past the largest frame allowed, bytes are only counted: [`finish`](Self::finish) fails
/// with the item's size, and nothing larger than the limit was kept.
pub(super) struct Spilling<'a> {
    /// The packet's kind byte, then the bytes not yet in the file.
    buf: &'a mut Vec<u8>,
    /// Gives a handed-back file to write into, if one waits.
    inner: &'a Inner,
    /// The file, once the encoding outgrew a packet.
    file: Option<OwnedFd>,
    /// A writable view of the file, if it is one handed back for reuse.
    writer: Option<sys::SpillWriter>,
    /// Bytes of the encoding in the file: a multiple of [`ALIGN`] until `finish`.
    in_file: usize,
    /// Bytes of the encoding so far.
    total: usize,
    /// The largest encoding allowed.
    max: usize,
}

/// Where [`Spilling`] left an item's encoding.
pub(super) enum Spilled {
    /// All of it in the buffer, after the kind byte.
    Inline,
    /// In this file, this many bytes from its start.
    File(OwnedFd, usize),
}

impl<'a> Spilling<'a> {
    /// Encodes into `buf`, which holds the kind byte only, and into a spill file of `inner`.
    pub(super) fn new(inner: &'a Inner, buf: &'a mut Vec<u8>, max: usize) -> Spilling<'a> {
        Spilling {
            buf,
            inner,
            file: None,
            writer: None,
            in_file: 0,
            total: 0,
            max,
        }
    }

    /// Appends `bytes` to the file: the buffer's bytes, then `bytes`, up to the last
    /// multiple of [`ALIGN`]; what is left stays in the buffer.
    fn spill(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let fill = (ALIGN - (self.buf.len() - 1) % ALIGN) % ALIGN;
        let (head, rest) = bytes.split_at(fill.min(bytes.len()));
        self.buf.extend_from_slice(head);
        let whole = (self.buf.len() - 1) / ALIGN * ALIGN;
        self.write_file(1, whole)?;
        if !rest.is_empty() {
            // The buffer is empty: the bulk goes to the file from where it lies.
            let (bulk, tail) = rest.split_at(rest.len() / ALIGN * ALIGN);
            self.append(bulk)?;
            self.buf.extend_from_slice(tail);
        }
        Ok(())
    }

    /// Moves `n` bytes of the buffer, from `at`, to the end of the file.
    fn write_file(&mut self, at: usize, n: usize) -> std::io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.open()?;
        Self::write_at(
            &self.file,
            &mut self.writer,
            &self.buf[at..at + n],
            self.in_file,
        )?;
        self.in_file += n;
        self.buf.drain(at..at + n);
        Ok(())
    }

    /// Writes `bytes` at the end of the file.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.open()?;
        Self::write_at(&self.file, &mut self.writer, bytes, self.in_file)?;
        self.in_file += bytes.len();
        Ok(())
    }

    /// Writes `bytes` at `offset` of `file`: through `writer` as far as it maps, the rest
    /// (growing the file) with a system call.
    fn write_at(
        file: &Option<OwnedFd>,
        writer: &mut Option<sys::SpillWriter>,
        bytes: &[u8],
        offset: usize,
    ) -> std::io::Result<()> {
        let mapped = match writer {
            Some(writer) => writer.write_at(bytes, offset),
            None => 0,
        };
        match file {
            Some(file) if mapped < bytes.len() => {
                sys::write_at(file.as_fd(), &bytes[mapped..], offset + mapped)
            }
            _ => Ok(()),
        }
    }

    /// Makes the spill file (or takes one of those handed back, with its writable view) on
    /// first need.
    fn open(&mut self) -> std::io::Result<()> {
        if self.file.is_none() {
            let reused = self.inner.recycled();
            if let Some(file) = &reused {
                // Without a view (no memory left to map, say), the file is written with
                // system calls.
                self.writer = self.inner.writers.writer(file.as_fd()).ok().flatten();
            }
            self.file = Some(sys::spill_file(reused)?);
        }
        Ok(())
    }

    /// Where the encoding is, once it is complete.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] if it is larger than the largest frame allowed; an I/O
    /// error if the file could not be written.
    pub(super) fn finish(mut self) -> Result<Spilled> {
        if self.total > self.max {
            return Err(Error::FrameTooLarge {
                size: self.total as u64,
                max: self.max,
            });
        }
        if self.file.is_none() {
            return Ok(Spilled::Inline);
        }
        let rest = self.buf.len() - 1;
        self.write_file(1, rest)?;
        if let Some(writer) = self.writer.take() {
            self.inner.writers.keep_writer(writer);
        }
        match self.file.take() {
            Some(file) => Ok(Spilled::File(file, self.in_file)),
            None => Ok(Spilled::Inline),
        }
    }
}

impl std::io::Write for Spilling<'_> {
    // Inlined into the encoder: serde hands a `Vec<u8>` over one byte per call.
    #[inline]
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.total = self.total.saturating_add(b.len());
        if self.total > self.max {
            return Ok(b.len());
        }
        if self.buf.len() - 1 + b.len() <= INLINE_MAX {
            self.buf.extend_from_slice(b);
        } else {
            self.spill(b)?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Inner {
    /// Decodes a spilled item of `len` bytes from the file first among `fds`, then hands
    /// the file back.
    ///
    /// A file this process has not the memory to map (`ENOMEM`: a limit on its address space,
    /// or none left) fails the take, and the item is kept back for the next one (see
    /// [`take_kept_back`](Self::take_kept_back)), not lost.
    pub(super) fn unspill<T: DeserializeOwned>(
        &self,
        len: usize,
        mut fds: VecDeque<OwnedFd>,
    ) -> Result<T> {
        let file = fds.pop_front().ok_or_else(|| {
            Error::Protocol("a spilled queue item arrived without its file".into())
        })?;
        let view = match self.views.view(file.as_fd(), len) {
            Ok(view) => view,
            Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                let mut kept = self.kept_back.lock().unwrap_or_else(|p| p.into_inner());
                *kept = Some((len, file, fds));
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot map a queue item of {len} bytes ({e}): this process is out of \
                         memory or at its limit (RLIMIT_AS, `ulimit -v`, or its cgroup's); the \
                         item is kept for the next get of this process"
                    ),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let value = codec::decode(view.bytes(), fds.into());
        self.views.keep(view);
        self.recycle(file);
        value
    }

    /// The item an earlier take kept back for want of memory, if any, taken again.
    pub(super) fn take_kept_back<T: DeserializeOwned>(&self) -> Option<Result<T>> {
        let kept = self
            .kept_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        kept.map(|(len, file, mut fds)| {
            fds.push_front(file);
            self.unspill(len, fds)
        })
    }

    /// A spill file handed back by a consumer, if one waits.
    pub(super) fn recycled(&self) -> Option<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut fds = VecDeque::new();
        match sys::recv_with_fds(self.ret_rx.as_fd(), &mut byte, &mut fds) {
            Ok(_) => fds.pop_front(),
            Err(_) => None,
        }
    }

    /// Hands a spill file back for a producer to reuse, once it is read and unmapped; drops
    /// it if it is large or if enough wait already.
    fn recycle(&self, file: OwnedFd) {
        if sys::file_size(file.as_fd()).is_ok_and(|n| n <= sys::RECYCLE_MAX) {
            let _ = sys::send_with_fds(self.ret_tx.as_fd(), &[0], &[file.as_raw_fd()]);
        }
    }
}
