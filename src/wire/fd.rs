//! `Fd`: an operating-system descriptor that travels to another process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codec::{deserialize_fd, deserialize_shared_fd, serialize_fd, serialize_shared_fd};

/// A file descriptor (a file, a socket, a pipe end...) that can be passed to a child as an
/// argument, like Python's `multiprocessing.reduction.send_handle` / `DupFd`.
///
/// When encoded, a duplicate of the descriptor travels beside the message by `SCM_RIGHTS`;
/// the receiving process gets a descriptor of its own for the same open file. Encoding it
/// with any other serde format (JSON, say) is an error.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use tokio_multiprocessing::{Fd, Process};
///
/// fn write_hello(fd: Fd) {
///     let mut stream = UnixStream::from(fd.into_owned());
///     let _ = stream.write_all(b"hello from the child\n");
/// }
///
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// let (mut ours, theirs) = UnixStream::pair()?;
/// let fd = Fd::from(std::os::fd::OwnedFd::from(theirs));
/// let mut p = Process::new(write_hello, (fd,)).start().await?;
/// p.join().await?;
/// // The child's end went with the arguments: the read ends once the child has exited.
/// let mut got = String::new();
/// ours.read_to_string(&mut got)?;
/// assert_eq!(got, "hello from the child\n");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Fd(OwnedFd);

impl Fd {
    /// The descriptor, owned.
    pub fn into_owned(self) -> OwnedFd {
        self.0
    }
}

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Fd {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> OwnedFd {
        fd.0
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0.as_fd(), s)
    }
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fd, D::Error> {
        deserialize_fd(d).map(Fd)
    }
}

/// A borrowed descriptor, serialised into the side list of the frame being encoded (it
/// arrives as an [`Fd`]).
pub(crate) struct FdRef<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_fd(self.0, s)
    }
}

/// A borrowed descriptor that travels once however often it appears in the value being
/// encoded (see [`serialize_shared_fd`]); it arrives as a [`SharedFd`].
pub(crate) struct SharedFdRef<'a>(pub(crate) BorrowedFd<'a>);

impl Serialize for SharedFdRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_shared_fd(self.0, s)
    }
}

/// A descriptor sent as a [`SharedFdRef`]: each appearance in the value gets one of its own.
pub(crate) struct SharedFd(pub(crate) OwnedFd);

impl<'de> Deserialize<'de> for SharedFd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedFd, D::Error> {
        deserialize_shared_fd(d).map(SharedFd)
    }
}
