//! "Hosts" for the cluster tests: network namespaces this test makes itself, each linked
//! to a head namespace by a veth pair, with addresses only inside those namespaces.
//!
//! The head namespace holds `10.77.0.1` on its loopback; host `i` holds `10.77.{i+1}.2` on
//! its end of a veth pair whose other end, in the head namespace, is `10.77.{i+1}.1`, and
//! routes `10.77.0.1` through it. The test process itself stays in its own namespace: it
//! listens in the head namespace through a socket made by a thread that entered it. Names
//! carry this process's pid and a counter, so runs and tests never share one; everything
//! is deleted (and every process left in the namespaces killed) when the [`Net`] is dropped.

use std::os::fd::AsFd;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The address of the head inside the head namespace.
pub const HEAD_IP: &str = "10.77.0.1";

/// A head namespace and `n` host namespaces.
pub struct Net {
    prefix: String,
    hosts: usize,
    /// Whether this value made the namespaces (and deletes them when dropped).
    owner: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Makes the namespaces; `None` (with the reason printed) where this machine cannot:
    /// not root, or no `ip netns`.
    pub fn new(hosts: usize) -> Option<Net> {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            println!("skipped: the cluster tests make network namespaces, which needs root");
            return None;
        }
        let prefix = format!(
            "tk{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            prefix,
            hosts: 0,
            owner: true,
        };
        match net.make(hosts) {
            Ok(()) => Some(net),
            Err(e) => {
                println!("skipped: cannot make network namespaces here ({e})");
                None
            }
        }
    }

    fn make(&mut self, hosts: usize) -> Result<(), String> {
        let head = self.head_ns();
        ip(&["netns", "add", &head])?;
        ip(&["-n", &head, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &head,
            "addr",
            "add",
            &format!("{HEAD_IP}/32"),
            "dev",
            "lo",
        ])?;
        for i in 0..hosts {
            let ns = self.host_ns(i);
            ip(&["netns", "add", &ns])?;
            self.hosts = i + 1;
            let (a, b) = (self.head_end(i), format!("{}b{i}", self.prefix));
            ip(&[
                "link", "add", &a, "netns", &head, "type", "veth", "peer", "name", &b, "netns", &ns,
            ])?;
            let net = i + 1;
            ip(&[
                "-n",
                &head,
                "addr",
                "add",
                &format!("10.77.{net}.1/24"),
                "dev",
                &a,
            ])?;
            ip(&["-n", &head, "link", "set", &a, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.{net}.2/24"),
                "dev",
                &b,
            ])?;
            ip(&["-n", &ns, "link", "set", &b, "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &format!("{HEAD_IP}/32"),
                "via",
                &format!("10.77.{net}.1"),
            ])?;
        }
        Ok(())
    }

    /// The name that [`attach`](Self::attach) takes, for a helper process.
    pub fn name(&self) -> String {
        format!("{} {}", self.prefix, self.hosts)
    }

    /// The namespaces another process made, by their [`name`](Self::name); this value
    /// deletes nothing.
    pub fn attach(name: &str) -> Option<Net> {
        let (prefix, hosts) = name.split_once(' ')?;
        Some(Net {
            prefix: prefix.to_string(),
            hosts: hosts.parse().ok()?,
            owner: false,
        })
    }

    /// The name of the head's namespace.
    pub fn head_ns(&self) -> String {
        format!("{}h", self.prefix)
    }

    fn head_end(&self, i: usize) -> String {
        format!("{}a{i}", self.prefix)
    }

    /// The name of host `i`'s namespace.
    pub fn host_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// A command template that runs `{agent}` in host `{id}`'s namespace.
    pub fn template(&self) -> String {
        format!("ip netns exec {}n{{id}} {{agent}}", self.prefix)
    }

    /// A socket listening on the head's address (port chosen), made in the head namespace.
    pub fn listen(&self) -> Result<std::net::TcpListener, String> {
        let path = format!("/run/netns/{}", self.head_ns());
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            std::net::TcpListener::bind((HEAD_IP, 0)).map_err(|e| format!("bind: {e}"))
        })
        .join()
        .map_err(|_| "the thread that listens panicked".to_string())?
    }

    /// A TCP connection to `port` on the head made from host `i`'s namespace.
    pub fn connect_from(&self, i: usize, port: u16) -> Result<std::net::TcpStream, String> {
        let path = format!("/run/netns/{}", self.host_ns(i));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns: {e}"))?;
            std::net::TcpStream::connect((HEAD_IP, port)).map_err(|e| format!("connect: {e}"))
        })
        .join()
        .map_err(|_| "the thread that connects panicked".to_string())?
    }

    /// The pids of the processes in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        pids_in(&self.host_ns(i))
    }

    /// Sends `signal` to every process in host `i`'s namespace.
    pub fn signal_host(&self, i: usize, signal: Signal) {
        for pid in self.pids(i) {
            let _ = kill(Pid::from_raw(pid as i32), signal);
        }
    }

    /// Pulls host `i`'s cable: deletes its veth pair. Nothing tells either side.
    pub fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.head_ns(), "link", "del", &self.head_end(i)])
    }
}

impl Net {
    /// The local port of process `pid`'s TCP connection to the head's `port`, in host `i`.
    pub fn port_of(&self, i: usize, pid: u32, port: u16) -> Option<u16> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.host_ns(i),
                "ss",
                "-Htnp",
                "state",
                "established",
            ])
            .output()
            .ok()?;
        let (peer, owner) = (format!(" {HEAD_IP}:{port} "), format!("pid={pid},"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains(&peer) && l.contains(&owner))?
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("10.77.{}.2:", i + 1))?.parse().ok())
    }

    /// Drops every packet of host `i`'s TCP connections on its local `port`, both ways,
    /// with no word to either side (`iptables` in the host's namespace; its rules go with
    /// it). An error where `iptables` is missing.
    pub fn drop_port(&self, i: usize, port: u16) -> Result<(), String> {
        let port = port.to_string();
        for (chain, dir) in [("INPUT", "--dport"), ("OUTPUT", "--sport")] {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.host_ns(i), "iptables", "-A", chain])
                .args(["-p", "tcp", dir, &port, "-j", "DROP"])
                .output()
                .map_err(|e| format!("iptables: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "iptables: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }
}

fn pids_in(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Net {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        for i in 0..self.hosts {
            self.signal_host(i, Signal::SIGCONT);
            self.signal_host(i, Signal::SIGKILL);
        }
        for pid in pids_in(&self.head_ns()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        for i in 0..self.hosts {
            let _ = ip(&["netns", "del", &self.host_ns(i)]);
        }
        let _ = ip(&["netns", "del", &self.head_ns()]);
    }
}
