//! The kernel's floor for a wake-up in another process and back, the baseline of every
//! wake-up figure: two eventfds and a forked child, each side blocking in `read`.

use std::os::fd::{AsFd, OwnedFd};

/// Two eventfds and a forked child, each side blocking in `read`: the kernel's floor for a
/// wake-up in another process and back.
pub struct EventfdPingPong {
    ping: OwnedFd,
    pong: OwnedFd,
    /// Until reaped by [`finish`](Self::finish); killed and reaped on drop otherwise (a
    /// figure that failed midway), since a child blocked in `read` would wait for ever.
    child: Option<nix::unistd::Pid>,
}

impl EventfdPingPong {
    /// Forks a child that answers `n` round trips, then exits.
    pub fn start(n: u32) -> std::io::Result<EventfdPingPong> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let ping: OwnedFd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?.into();
        let pong: OwnedFd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)?.into();
        let one = 1u64.to_ne_bytes();
        // The fork happens on a thread of our own; the child touches only its two
        // descriptors and `_exit`s.
        let child = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: the child calls only read, write and _exit, all async-signal-safe,
                // and allocates nothing, as a child of a multi-threaded process must.
                match unsafe { nix::unistd::fork() }? {
                    nix::unistd::ForkResult::Child => {
                        let mut b = [0u8; 8];
                        for _ in 0..n {
                            if nix::unistd::read(ping.as_fd(), &mut b).is_err()
                                || nix::unistd::write(pong.as_fd(), &one).is_err()
                            {
                                break;
                            }
                        }
                        // SAFETY: ends the forked child at once, running none of the
                        // parent's exit handlers.
                        unsafe { nix::libc::_exit(0) }
                    }
                    nix::unistd::ForkResult::Parent { child } => Ok::<_, std::io::Error>(child),
                }
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("fork thread panicked")))
        })?;
        Ok(EventfdPingPong {
            ping,
            pong,
            child: Some(child),
        })
    }

    /// One round trip: wakes the child and sleeps until it wakes us back.
    pub fn round_trip(&self) -> std::io::Result<()> {
        let mut b = [0u8; 8];
        nix::unistd::write(self.ping.as_fd(), &1u64.to_ne_bytes())?;
        nix::unistd::read(self.pong.as_fd(), &mut b)?;
        Ok(())
    }

    /// Reaps the child, once it has answered its round trips.
    pub fn finish(mut self) -> std::io::Result<()> {
        if let Some(child) = self.child.take() {
            nix::sys::wait::waitpid(child, None)?;
        }
        Ok(())
    }
}

impl Drop for EventfdPingPong {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
}
