//! The wire across a real process boundary: a child fed garbage on its bootstrap socket
//! fails with a clear message and exit code 1 — never a panic, a hang, or a huge allocation —
//! and a child sent a wrong magic, version or entry refuses before running anything.

#[macro_use]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use support::{TestResult, test};

fn main() {
    tokio_multiprocessing::init();
    support::run(vec![
        test("random_bytes", || {
            garbage(Feed::Bytes(noise(4000)), "bootstrap")
        }),
        test("absurd_length", || {
            garbage(
                Feed::Bytes(vec![0xff, 0xff, 0xff, 0xff, 0, 1, 2]),
                "maximum frame size",
            )
        }),
        test("truncated_frame", || {
            garbage(
                Feed::Bytes(vec![0, 0, 0, 100, 0, 0x94, 1, 2]),
                "middle of a frame",
            )
        }),
        test("fds_announced_but_missing", || {
            garbage(Feed::Bytes(vec![0, 0, 0, 1, 3, 0xc0]), "descriptors")
        }),
        test("not_messagepack", || {
            garbage(
                Feed::Frame(vec![0xc1, 0xc1, 0xc1]),
                "malformed bootstrap frame",
            )
        }),
        test("wrong_magic", || {
            garbage(Feed::Boot(0xdead_beef, 1, None, 0), "wrong magic")
        }),
        test("wrong_version", || {
            garbage(Feed::Boot(MAGIC, 999, None, 0), "protocol version")
        }),
        test("wrong_fingerprint", || {
            garbage(
                Feed::Boot(MAGIC, 1, Some(vec![9; 20]), 0),
                "binary mismatch",
            )
        }),
        test("another_layout_with_a_wrong_fingerprint", || {
            garbage(Feed::OtherLayout(vec![9; 20]), "binary mismatch")
        }),
        test("entry_outside_the_program", || {
            garbage(
                Feed::Boot(MAGIC, 1, None, i64::MIN / 2),
                "does not point into",
            )
        }),
        test("silence_then_close", silence_then_close),
    ])
}

const MAGIC: u32 = 0x544b_4d50;

enum Feed {
    /// Raw bytes on the socket.
    Bytes(Vec<u8>),
    /// A well-framed body that is not a bootstrap message.
    Frame(Vec<u8>),
    /// A bootstrap message with this magic, version, fingerprint (None: the real one, read
    /// from a child's refusal) and entry offset.
    Boot(u32, u16, Option<Vec<u8>>, i64),
    /// A bootstrap message of another binary, with this fingerprint, whose head after the
    /// hello is laid out otherwise than this binary's.
    OtherLayout(Vec<u8>),
}

fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.push(0);
    f.extend_from_slice(body);
    f
}

/// The fingerprint of this binary, learned the way a stranger would: send a wrong one and
/// read the child's refusal, which names both.
fn real_fingerprint() -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let (status, out, _) = run_child(Feed::Boot(MAGIC, 1, Some(vec![0]), 0))?;
    ensure!(status.code() == Some(1), "refusal exit status {status}");
    let text = String::from_utf8_lossy(&out);
    let hex = text
        .split("Mismatch")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_hexdigit())
                .find(|w| w.len() >= 16)
        })
        .ok_or_else(|| format!("no fingerprint in the refusal: {text:?}"))?;
    Ok((0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect())
}

type Outcome = (std::process::ExitStatus, Vec<u8>, String);

/// Starts this binary as a child whose bootstrap socket is ours, feeds it, and collects its
/// exit status, what it wrote back on the socket and its stderr.
fn run_child(feed: Feed) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(
            "TOKIO_MULTIPROCESSING_BOOT",
            format!("0,{}", std::process::id()),
        )
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let bytes = match feed {
        Feed::Bytes(b) => b,
        Feed::Frame(body) => frame(&body),
        Feed::Boot(magic, version, fingerprint, entry) => {
            let fingerprint = match fingerprint {
                Some(f) => f,
                None => real_fingerprint()?,
            };
            let hello = (magic, version, serde_bytes::ByteBuf::from(fingerprint));
            frame(&rmp_serde::to_vec(&(
                hello,
                // The child's lineage: its name and daemon flag, its parent's pid and name,
                // and its number among its parent's children.
                (
                    "garbage-test",
                    false,
                    std::process::id(),
                    "MainProcess",
                    [1usize],
                ),
                entry,
                1u64 << 20,
                0u8, // the start method: spawn
                0u8, // stdout and stderr as the parent's
            ))?)
        }
        Feed::OtherLayout(fingerprint) => {
            let hello = (MAGIC, 1u16, serde_bytes::ByteBuf::from(fingerprint));
            frame(&rmp_serde::to_vec(&(
                hello,
                "a head of another shape",
                7u8,
            ))?)
        }
    };
    let mut w = ours.try_clone()?;
    let _ = w.write_all(&bytes);
    let _ = w.shutdown(std::net::Shutdown::Write);
    ours.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reply = Vec::new();
    let _ = (&ours).read_to_end(&mut reply);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return Err("the child hung on garbage".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err)?;
    }
    Ok((status, reply, err))
}

/// A parent that closes the socket without a word gave up on the start: the child leaves
/// quietly.
async fn silence_then_close() -> TestResult {
    let (status, _reply, err) =
        tokio::task::spawn_blocking(|| run_child(Feed::Bytes(vec![]))).await??;
    ensure!(
        status.code() == Some(1),
        "exit status {status}, stderr: {err}"
    );
    ensure!(err.is_empty(), "stderr: {err}");
    Ok(())
}

async fn garbage(feed: Feed, expect: &'static str) -> TestResult {
    let (status, _reply, err) = tokio::task::spawn_blocking(move || run_child(feed)).await??;
    ensure!(
        status.code() == Some(1),
        "exit status {status}, stderr: {err}"
    );
    ensure!(!err.contains("panicked"), "the child panicked: {err}");
    ensure!(
        err.to_lowercase().contains(&expect.to_lowercase()),
        "stderr does not mention {expect:?}: {err}"
    );
    Ok(())
}
