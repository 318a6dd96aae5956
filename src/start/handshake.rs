//! The bootstrap conversation and the parent's side of it: the parent sends one frame
//! (handshake, name, target and arguments); the child (see `bootstrap.rs`) answers `Started`
//! once it has checked everything, or `Refused`. Every wait for the answer is raced against
//! the child's exit and the start deadline.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Child, Launch};
use crate::error::{Error, ExitCause, Result};
use crate::family::Lineage;
use crate::sys;
use crate::task::process_entry_offset;
use crate::wire::{Encoded, FrameBuf, Framed, Hello, RecvBuf, max_frame_size, send_blocking};

/// The bootstrap frame's head; the target's encoded arguments follow it in the same frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Boot {
    pub(crate) hello: Hello,
    /// The child's name and daemon flag, and its parent's pid and name.
    pub(crate) lineage: Lineage,
    pub(crate) entry: i64,
    pub(crate) max_frame: u64,
    /// The method that starts the child, which becomes its default start method.
    pub(crate) method: u8,
    /// Which of stdout and stderr the child points at the descriptors that follow its
    /// arguments' ([`Stdio::flags`](super::Stdio::flags)).
    pub(crate) stdio: u8,
    /// The child's environment variables and working directory, if the builder set any
    /// (left out of the frame otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) env: Option<super::Environment>,
}

/// The hello alone of a bootstrap frame's head, the rest skipped: the head of a parent of
/// another version or binary, which may lay out the rest otherwise, so that the child tells
/// it of the mismatch rather than of a malformed frame.
pub(crate) struct HelloFirst(pub(crate) Hello);

impl<'de> Deserialize<'de> for HelloFirst {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Head;
        impl<'de> serde::de::Visitor<'de> for Head {
            type Value = HelloFirst;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bootstrap frame's head, its hello first")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<HelloFirst, A::Error> {
                let hello = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(0, &self))?;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(HelloFirst(hello))
            }
        }
        d.deserialize_seq(Head)
    }
}

/// The child's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BootReply {
    /// Handshake passed; the target is about to run.
    Started,
    /// The child runs another binary (its fingerprint and the one it was sent, in hex).
    Mismatch { child: String, parent: String },
    /// The child will not run the target, and why.
    Refused(String),
}

/// The advice every "the child never got going" error carries.
pub(crate) const INIT_ADVICE: &str = "a child takes its role before `main`, from this crate's \
     constructor in the executable's `.init_array`; where no constructor runs, it runs `main` \
     again, so `main()` must call `tokio_multiprocessing::init()` before anything else";

fn start_error(launch: &Launch, pid: i32, message: String) -> Error {
    Error::Start {
        name: launch.name.clone(),
        pid: pid as u32,
        message,
    }
}

/// Builds the bootstrap frame for `launch` (taking its arguments), and checks its size
/// against the maximum frame size before any child exists.
pub(crate) fn boot_frame(launch: &mut Launch) -> Result<FrameBuf> {
    let mut frame = FrameBuf::of(&Boot {
        hello: launch.hello.clone(),
        lineage: Lineage::child_of_this(&launch.name, launch.daemon, &launch.identity),
        entry: process_entry_offset(launch.entry),
        max_frame: max_frame_size() as u64,
        method: launch.method.to_u8(),
        stdio: launch.stdio.flags(),
        env: (!launch.env.is_untouched()).then(|| launch.env.clone()),
    })?;
    frame.push_encoded(std::mem::take(&mut launch.args));
    let stdio = std::mem::take(&mut launch.stdio).into_targets();
    frame.push_encoded(Encoded {
        bytes: Vec::new(),
        fds: stdio.into_iter().map(|(fd, _)| fd).collect(),
    });
    frame.check_size()?;
    Ok(frame)
}

/// Sends the bootstrap frame for `launch` over `sock`, unless it is `None` (a small one goes
/// before the child starts, with [`send_early`](crate::wire::send_early), so the child
/// need not wait for this side), and waits for the child's answer, racing its exit and the
/// start deadline. On success returns a handle on the socket for the
/// parent to keep: the child sees EOF on it when the parent is gone.
///
/// On failure the child is killed if it still runs, and reaped.
pub(crate) async fn handshake(
    sock: OwnedFd,
    child: &mut Child,
    launch: &Launch,
    frame: Option<FrameBuf>,
) -> Result<OwnedFd> {
    let err = match converse(sock, child, launch, frame).await {
        Ok(keepalive) => return Ok(keepalive),
        Err(e) => e,
    };
    // Whatever failed, the child (which may hold its bootstrap frame already) must not run.
    let _ = child.signal(sys::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Err(err)
}

/// [`handshake`]'s exchange; the caller kills the child on `Err`.
async fn converse(
    sock: OwnedFd,
    child: &mut Child,
    launch: &Launch,
    frame: Option<FrameBuf>,
) -> Result<OwnedFd> {
    let pid = child.pid();
    let keepalive = sys::dup_fd(sock.as_fd())?;
    let link = Framed::unix(sock)?;
    let exchange = async {
        if let Some(mut frame) = frame {
            link.send(&mut frame).await?;
        }
        link.recv().await?.decode::<BootReply>()
    };
    let deadline = launch.start_timeout;
    let first = tokio::select! {
        // Biased: a child that answered and then exited at once has its answer read first.
        biased;
        r = tokio::time::timeout(deadline, exchange) => Ok(r),
        code = child.wait() => Err(code),
    };
    let outcome = match first {
        Ok(r) => r,
        // Its answer may be in the socket still, unseen by the reactor: a child sent the
        // bootstrap frame before it started can answer and end before this side looks.
        Err(code) => match link.try_recv() {
            Some(r) => Ok(r.and_then(|f| f.decode::<BootReply>())),
            None => {
                return Err(match code {
                    Ok(code) => exited_early(launch, pid, code),
                    Err(e) => start_error(launch, pid, format!("waiting for it failed: {e}")),
                });
            }
        },
    };
    let err = match outcome {
        Ok(Ok(BootReply::Started)) => return Ok(keepalive),
        Ok(Ok(BootReply::Refused(reason))) => start_error(launch, pid, reason),
        Ok(Ok(BootReply::Mismatch { child, parent })) => Error::BinaryMismatch {
            ours: parent,
            theirs: child,
        },
        Ok(Err(Error::Closed | Error::Io(_))) => {
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(code)) => return Err(exited_early(launch, pid, code)),
                _ => start_error(
                    launch,
                    pid,
                    format!("it closed its bootstrap socket without answering: {INIT_ADVICE}"),
                ),
            }
        }
        Ok(Err(e)) => start_error(launch, pid, format!("its bootstrap failed: {e}")),
        Err(_elapsed) => start_error(
            launch,
            pid,
            format!("it did not complete its bootstrap within {deadline:?}: {INIT_ADVICE}"),
        ),
    };
    Err(err)
}

/// [`handshake`] for the launcher thread, which has no runtime: blocking I/O, with the
/// child's exit and the deadline watched by `poll`. Kills and reaps the child on failure.
pub(crate) fn handshake_blocking(
    sock: &OwnedFd,
    pid: i32,
    pidfd: &OwnedFd,
    launch: &Launch,
    mut frame: FrameBuf,
) -> Result<()> {
    let fail = |message: String| {
        sys::kill_and_reap(pid);
        start_error(launch, pid, message)
    };
    if let Err(e) = send_blocking(sock.as_fd(), &mut frame) {
        return Err(fail(format!("cannot send the bootstrap frame: {e}")));
    }
    let ready = sys::poll_readable(&[sock.as_fd(), pidfd.as_fd()], Some(launch.start_timeout))
        .map_err(|e| fail(format!("cannot wait for its answer: {e}")))?;
    if !ready[0] {
        return Err(fail(match ready[1] {
            true => format!("it exited before completing its bootstrap: {INIT_ADVICE}"),
            false => format!(
                "it did not complete its bootstrap within {:?}: {INIT_ADVICE}",
                launch.start_timeout
            ),
        }));
    }
    match RecvBuf::new()
        .recv_blocking(sock.as_fd())
        .and_then(|f| f.decode::<BootReply>())
    {
        Ok(BootReply::Started) => Ok(()),
        Ok(BootReply::Refused(reason)) => Err(fail(reason)),
        Ok(BootReply::Mismatch { child, parent }) => {
            let _ = fail(String::new());
            Err(Error::BinaryMismatch {
                ours: parent,
                theirs: child,
            })
        }
        Err(e) => Err(fail(format!("its bootstrap failed: {e}: {INIT_ADVICE}"))),
    }
}

fn exited_early(launch: &Launch, pid: i32, code: i32) -> Error {
    start_error(launch, pid, early_exit_message(code))
}

/// Why a child that ended with `code` before its bootstrap was done never got going: one
/// that exited may have run `main` instead of its role (hence the advice); one killed by a
/// signal was most likely killed from outside, and the advice would mislead.
fn early_exit_message(code: i32) -> String {
    let cause = ExitCause::from_exitcode(code);
    match cause {
        ExitCause::Signal(_) => format!("it was killed by {cause} before completing its bootstrap"),
        _ => format!("it exited ({cause}) before completing its bootstrap: {INIT_ADVICE}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_killed_by_a_signal_during_its_bootstrap_gets_no_advice_about_init() {
        let killed = early_exit_message(-9);
        assert!(killed.contains("signal 9 (SIGKILL)"), "{killed}");
        assert!(!killed.contains("init()"), "{killed}");
        let exited = early_exit_message(2);
        assert!(exited.contains("exit code 2"), "{exited}");
        assert!(exited.contains("init()"), "{exited}");
    }
}
