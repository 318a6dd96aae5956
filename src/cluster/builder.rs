//! [`ClusterBuilder`]: where the head listens, what agents dial, the key, the launcher and
//! the deadlines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::head::{Cluster, Inner, Table};
use super::key;
use super::session::accept_loop;
use crate::error::{Error, Result};
use crate::launch::Launcher;

/// Options for a [`Cluster`]; made by [`Cluster::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until it is built"]
pub struct ClusterBuilder {
    listen: Option<String>,
    listener: Option<std::net::TcpListener>,
    advertise: Option<String>,
    launcher: Option<Box<dyn Launcher>>,
    authkey: Option<Vec<u8>>,
    heartbeat_deadline: Duration,
    head_deadline: Duration,
}

impl ClusterBuilder {
    pub(super) fn new() -> ClusterBuilder {
        ClusterBuilder {
            listen: None,
            listener: None,
            advertise: None,
            launcher: None,
            authkey: None,
            heartbeat_deadline: Cluster::DEFAULT_HEARTBEAT_DEADLINE,
            head_deadline: Cluster::DEFAULT_HEAD_DEADLINE,
        }
    }

    /// The address to listen on, `ip:port` or `name:port` (port 0 picks one); the default
    /// is `127.0.0.1:0`, which only agents on this machine can reach.
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.listen = Some(address.into());
        self
    }

    /// A socket bound already to listen on (one made in another network namespace, say),
    /// instead of [`listen`](Self::listen).
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The host name or address agents dial (with the port listened on). The default is
    /// the address listened on, or `127.0.0.1` when that is a wildcard (`0.0.0.0`).
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        self.advertise = Some(host.into());
        self
    }

    /// What starts the hosts' agents when the cluster is built (and on
    /// [`Cluster::scale`]); without one, agents are started by hand or by an engine (see
    /// [`Cluster::worker_command`]).
    pub fn launcher(mut self, launcher: impl Launcher) -> Self {
        self.launcher = Some(Box::new(launcher));
        self
    }

    /// The key agents must prove they hold; the default is 32 random bytes.
    pub fn authkey(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.authkey = Some(key.into());
        self
    }

    /// How long an agent may stay silent before its host is declared lost and its
    /// workers' tasks fail; the default is [`Cluster::DEFAULT_HEARTBEAT_DEADLINE`], and
    /// anything under 20 ms counts as 20 ms. Any longer deadline is taken, up to
    /// `Duration::MAX`; a worker's link that goes silent fails after some 24.8 days at
    /// most, the longest the kernel waits for a TCP peer.
    pub fn heartbeat_deadline(mut self, deadline: Duration) -> Self {
        self.heartbeat_deadline = deadline.max(Duration::from_millis(20));
        self
    }

    /// How long an agent goes on without hearing from the head (the head's process died,
    /// or the network between them) before it kills its workers and exits; the default is
    /// [`Cluster::DEFAULT_HEAD_DEADLINE`], and anything under 20 ms counts as 20 ms. Any
    /// longer deadline is taken, up to `Duration::MAX`; a worker whose link to the head
    /// goes silent ends after some 24.8 days at most.
    pub fn head_deadline(mut self, deadline: Duration) -> Self {
        self.head_deadline = deadline.max(Duration::from_millis(20));
        self
    }

    /// Listens, and starts the launcher's hosts; it does not wait for them (a pool waits
    /// for its first worker, [`Cluster::wait_for_hosts`] for hosts).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an address that does not resolve or an empty key; an
    /// I/O error if the address cannot be listened on; the launcher's error.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: a build dropped midway ends at once the agents already launched, and
    /// each that a launch under way (on a blocking thread) starts as soon as it returns;
    /// nothing is left listening once those launches have returned.
    pub async fn build(self) -> Result<Cluster> {
        let key = match self.authkey {
            Some(k) if k.is_empty() => {
                return Err(Error::InvalidArgument("the cluster key is empty".into()));
            }
            Some(k) => k,
            None => key::random_key()?,
        };
        let std_listener = match self.listener {
            Some(l) => l,
            None => {
                let listen = self.listen.as_deref().unwrap_or("127.0.0.1:0");
                let addrs: Vec<SocketAddr> = listen
                    .to_socket_addrs()
                    .map_err(|e| Error::InvalidArgument(format!("cannot resolve {listen:?}: {e}")))?
                    .collect();
                let l = std::net::TcpListener::bind(&addrs[..])?;
                crate::sys::set_listen_backlog(l.as_fd(), None)?;
                l
            }
        };
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let host = match self.advertise {
            Some(h) => h,
            None if local.ip().is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
            None => local.ip().to_string(),
        };
        let address = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", local.port())
        } else {
            format!("{host}:{}", local.port())
        };
        let table = Arc::new(Table::new(key, self.heartbeat_deadline, self.head_deadline));
        let (shutdown, stop) = watch::channel(());
        tokio::spawn(accept_loop(listener, table.clone(), stop));
        let cluster = Cluster {
            inner: Arc::new(Inner {
                table,
                address,
                local,
                launcher: self.launcher,
                launched: Mutex::new(Vec::new()),
                scaling: Mutex::new(()),
                shutdowns: std::sync::atomic::AtomicU64::new(0),
                job_states: tokio::sync::Mutex::new(None),
                abandoned: std::sync::atomic::AtomicBool::new(false),
                _shutdown: shutdown,
            }),
        };
        // A build that fails, or is dropped, while launches are under way (an ssh probe of
        // a frozen host takes its probe timeout) ends at once the agents started already,
        // and each that a launch under way starts as soon as it has: nobody will ever hold
        // this cluster.
        let started = crate::on_drop::OnDrop::new({
            let inner = cluster.inner.clone();
            move || inner.abandon()
        });
        if let Some(hosts) = cluster.inner.launcher.as_ref().map(|l| l.hosts()) {
            cluster.scale(hosts).await?;
        }
        started.defuse();
        tracing::debug!(address = %cluster.address(), "cluster listening");
        Ok(cluster)
    }
}
