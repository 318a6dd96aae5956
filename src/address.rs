//! [`Address`]: where a listener listens and a client connects, and [`ToAddress`], what
//! can name one (Python's string and `(host, port)` addresses among them).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a [`Listener`](crate::Listener) listens and a [`Client`](crate::Client) or a
/// [`Manager`](crate::Manager) connects: a Unix socket path, or a TCP address (Python's
/// string and `(host, port)` addresses, named with [`ToAddress`]).
///
/// A serde value, so that it can be passed to a child as Python passes `listener.address`
/// (a path as its bytes, whatever they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at this path; one that starts with a NUL byte (`"\0name"`) is in
    /// Linux's abstract namespace, as in Python: no file, gone with its last descriptor.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => match abstract_name(p) {
                Some(name) => write!(f, "\\0{}", String::from_utf8_lossy(name)),
                None => write!(f, "{}", p.display()),
            },
            Address::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An [`Address`] as it is encoded: a path as bytes, not as UTF-8 text, which a path need
/// not be (an abstract name, say).
#[derive(Serialize)]
enum AddressRef<'a> {
    Unix(&'a serde_bytes::Bytes),
    Tcp(SocketAddr),
}

#[derive(Deserialize)]
enum AddressOwned {
    Unix(serde_bytes::ByteBuf),
    Tcp(SocketAddr),
}

impl Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use std::os::unix::ffi::OsStrExt;
        match self {
            Address::Unix(p) => AddressRef::Unix(serde_bytes::Bytes::new(p.as_os_str().as_bytes())),
            Address::Tcp(a) => AddressRef::Tcp(*a),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use std::os::unix::ffi::OsStringExt;
        Ok(match AddressOwned::deserialize(d)? {
            AddressOwned::Unix(b) => {
                Address::Unix(PathBuf::from(std::ffi::OsString::from_vec(b.into_vec())))
            }
            AddressOwned::Tcp(a) => Address::Tcp(a),
        })
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
/// socket, `"\0name"` for an abstract one), or Python's `(host, port)` pair,
/// `("localhost", 50000)`, or `("", 50000)` for every interface, as Python's `''` (the
/// address of the CPython docs' remote manager). A host name stands for
/// its first IPv4 address, as in Python's `multiprocessing.connection`. A string is read
/// as an [`Address`] prints itself, so an address printed (`\0name`, with a backslash and
/// a zero for an abstract one) and handed to another program names the same socket.
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
        // An abstract name as `Address` prints it: a backslash and a zero before the name.
        if let Some(name) = self.strip_prefix("\\0") {
            return Ok(Address::Unix(PathBuf::from(format!("\0{name}"))));
        }
        if self.contains('/') || self.starts_with('\0') {
            return Ok(Address::Unix(PathBuf::from(self)));
        }
        if let Ok(a) = self.parse::<SocketAddr>() {
            return Ok(Address::Tcp(a));
        }
        let host_port = self
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        resolve(self, |failure| match host_port {
            Some((host, _)) => format!("{self:?}: cannot resolve the host {host:?}{failure}"),
            None => format!(
                "{self:?} is neither a socket path nor a host:port (a string is a socket path \
                 when it holds a '/': write one in the current directory as \"./{self}\")"
            ),
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
        // Python's `''`: every IPv4 interface to bind, this machine to connect to.
        if self.0.is_empty() {
            return Ok(Address::Tcp(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                self.1,
            ))));
        }
        resolve(self, |failure| {
            format!(
                "({:?}, {}): cannot resolve the host{failure}",
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

/// The name of an abstract Unix socket address (the bytes after its leading NUL), `None`
/// for a path in the file system.
pub(crate) fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"\0")
}

/// Turns the system's error about `address` into one that names it ("cannot bind
/// 127.0.0.1:5000: Address already in use"), of the same kind: what the caller was `doing`
/// ("bind", "connect to").
pub(crate) fn naming(
    doing: &'static str,
    address: &Address,
) -> impl Fn(std::io::Error) -> std::io::Error + use<> {
    let shown = address.to_string();
    move |e| std::io::Error::new(e.kind(), format!("cannot {doing} {shown}: {e}"))
}

/// A Unix socket listening at `path`: a file, or a name in the abstract namespace.
///
/// # Errors
/// The kernel's: the path is taken, its directory is missing, the name is too long.
pub(crate) fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
    match abstract_name(path) {
        Some(name) => UnixListener::bind_addr(&UnixAddr::from_abstract_name(name)?),
        None => UnixListener::bind(path),
    }
}

/// The TCP address `host` resolves to: its first IPv4 address, as Python's
/// `multiprocessing.connection` takes (its sockets for `(host, port)` are `AF_INET`), else
/// its first; `InvalidArgument` with `why(failure)` if none, where `failure` is the
/// resolver's own words after a colon (`": Name or service not known"`).
fn resolve(host: impl ToSocketAddrs, why: impl FnOnce(String) -> String) -> Result<Address> {
    let all: Vec<SocketAddr> = match host.to_socket_addrs() {
        Ok(all) => all.collect(),
        Err(e) => return Err(Error::InvalidArgument(why(format!(": {e}")))),
    };
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .map(Address::Tcp)
        .ok_or_else(|| Error::InvalidArgument(why(": it has no address".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_stands_for_its_ipv4_address_as_in_python() {
        // `localhost` resolves to 127.0.0.1 (and often ::1, sometimes first) on Linux.
        for a in [
            ("localhost", 6000).to_address(),
            "localhost:6000".to_address(),
        ] {
            match a {
                Ok(Address::Tcp(a)) => assert!(a.is_ipv4() && a.port() == 6000, "{a}"),
                other => panic!("localhost: {other:?}"),
            }
        }
        assert_eq!(
            "/tmp/x.sock".to_address().ok(),
            Some(Address::Unix("/tmp/x.sock".into()))
        );
        assert!(matches!(
            "no port here".to_address(),
            Err(Error::InvalidArgument(_))
        ));
    }

    /// A `host:port` whose host does not resolve (a typo in a name) is told as that, with
    /// the resolver's words; before, it was told "neither a socket path nor a host:port" and
    /// advised to write `"./host:port"`, a socket path. (A NUL byte fails the lookup before
    /// any query leaves the machine.)
    #[test]
    fn an_unresolvable_host_is_named_as_a_host() {
        let e = "no\0such:5000"
            .to_address()
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot resolve the host \"no\\0such\": "), "{e}");
        assert!(!e.contains("./"), "{e}");
        let e = ("no\0such", 5000)
            .to_address()
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot resolve the host: "), "{e}");
        let e = "app.sock".to_address().map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("write one in the current directory as \"./app.sock\""),
            "{e}"
        );
    }

    /// Python's `('', 50000)`, the address of the CPython docs' remote manager, is every
    /// IPv4 interface; before, it was refused as a host that does not resolve.
    #[test]
    fn an_empty_host_is_every_interface_as_in_python() {
        let any = Some(Address::Tcp("0.0.0.0:50000".parse().unwrap()));
        assert_eq!(("", 50000).to_address().ok(), any);
        assert_eq!((String::new(), 50000).to_address().ok(), any);
    }

    /// An address printed and read back is the same address: before, an abstract one
    /// printed as `\0name` (a backslash and a zero) was read back as a host name that does
    /// not resolve.
    #[test]
    fn an_address_printed_is_read_back_as_itself() {
        for a in [
            Address::Unix("\0tkmp-abstract".into()),
            Address::Unix("/tmp/x.sock".into()),
            Address::Tcp("127.0.0.1:50000".parse().unwrap()),
        ] {
            assert_eq!(a.to_string().to_address().ok(), Some(a.clone()), "{a}");
        }
    }
}

/// Makes a directory of a fresh random name in the system's temporary directory, readable
/// by this user only, for a socket bound without an address given (Python's
/// `util.get_temp_dir()`): [`Listener::new`](crate::Listener::new)'s, a keyed manager's.
pub(crate) fn private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    loop {
        let mut random = [0u8; 8];
        crate::sys::fill_random(&mut random)?;
        let dir = base.join(format!("tkmp-{}", crate::error::hex(&random)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A Unix socket's file, removed when this is dropped, with the private directory made for
/// it (see [`private_dir`]), if any.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dir: Option<PathBuf>,
}

impl SocketFile {
    /// The file at `path`, and `dir`, the private directory that holds it, if one was made.
    pub(crate) fn new(path: PathBuf, dir: Option<PathBuf>) -> SocketFile {
        SocketFile { path, dir }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
