//! [`Address`]: where a listener listens and a client connects, and [`ToAddress`], what
//! can name one (Python's string and `(host, port)` addresses among them).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client) or a
/// [`Manager`](crate::Manager) connects: a Unix socket path, or a TCP address (Python's
/// string and `(host, port)` addresses, named with [`ToAddress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Address {
        Address::Unix(p)
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_path_buf())
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Tcp(a)
    }
}

/// What can name an [`Address`]: a [`SocketAddr`], an [`Address`], a path, a string
/// (`"127.0.0.1:50000"` or `"localhost:50000"` for TCP, a path containing a `/` for a Unix
/// socket), or Python's `(host, port)` pair, `("localhost", 50000)`.
pub trait ToAddress {
    /// The address.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a string that is neither a path nor a host and port
    /// that resolves.
    fn to_address(&self) -> Result<Address>;
}

impl ToAddress for Address {
    fn to_address(&self) -> Result<Address> {
        Ok(self.clone())
    }
}

impl ToAddress for SocketAddr {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Tcp(*self))
    }
}

impl ToAddress for Path {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Unix(self.to_path_buf()))
    }
}

impl ToAddress for PathBuf {
    fn to_address(&self) -> Result<Address> {
        Ok(Address::Unix(self.clone()))
    }
}

impl ToAddress for str {
    fn to_address(&self) -> Result<Address> {
        if self.contains('/') {
            return Ok(Address::Unix(PathBuf::from(self)));
        }
        if let Ok(a) = self.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        resolve(self, || {
            format!("{self:?} is neither a socket path nor a host:port that resolves")
        })
    }
}

impl ToAddress for String {
    fn to_address(&self) -> Result<Address> {
        self.as_str().to_address()
    }
}

impl<A: ToAddress + ?Sized> ToAddress for &A {
    fn to_address(&self) -> Result<Address> {
        (**self).to_address()
    }
}

impl ToAddress for (&str, u16) {
    fn to_address(&self) -> Result<Address> {
        resolve(self, || {
            format!(
                "({:?}, {}) is not a host and port that resolves",
                self.0, self.1
            )
        })
    }
}

impl ToAddress for (String, u16) {
    fn to_address(&self) -> Result<Address> {
        (self.0.as_str(), self.1).to_address()
    }
}

/// The first TCP address `host` resolves to; `InvalidArgument` with `why()` if none.
fn resolve(host: impl ToSocketAddrs, why: impl FnOnce() -> String) -> Result<Address> {
    host.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Address::Tcp)
        .ok_or_else(|| Error::InvalidArgument(why()))
}
