//! The pool's link to one worker: a writer task that sends it the frames the scheduler
//! does not write at once itself (see [`Slot::flush`](super::slot::Slot::flush)), and a
//! reader task that hands its answers straight to the callers, logs them for the scheduler
//! (see [`Answered`]), and reports the worker's exit (seen at once on its pidfd). While the
//! pool's tasks are short and a core is spare, the reader spins for the next answer instead
//! of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::answered::{Answer, Answered};
use super::proto::Reply;
use super::remote::{Ended, Killer, Life};
use super::scheduler::{Event, Replies, take_reply};
use crate::error::{Error, ExitCause, TaskError};
use crate::wire::{Frame, FrameBuf, Framed, written};

/// Sends a worker its frames, all those queued at once in one batch. If a send fails, the
/// worker cannot be reached any more: the writer kills it, so that its exit is reported, its
/// tasks answered and the worker replaced, and drops the frames that still come.
pub(super) async fn write_worker(
    writer: Arc<Framed>,
    mut rx: UnboundedReceiver<FrameBuf>,
    queued: Arc<AtomicUsize>,
    killer: Killer,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        let sent = writer.send_batch(&mut batch).await;
        written(&queued, batch.len());
        if let Err(e) = sent {
            tracing::debug!("cannot send to a pool worker, killing it: {e}");
            killer.kill();
            // The frames the scheduler sends until it hears of the death are dropped here
            // unsent: it counts them as held by the worker, and as the worker's started
            // mark shows they never started, it sends them to another worker.
            while rx.recv().await.is_some() {
                written(&queued, 1);
            }
            return;
        }
        // Unmapping the pages of a large frame takes milliseconds: not on this thread.
        if batch.iter().any(|f| f.wire_len() >= LARGE_FRAME) {
            let sent = std::mem::take(&mut batch);
            tokio::task::spawn_blocking(move || drop(sent));
        }
        batch.clear();
    }
}

/// A sent frame this large is dropped on a blocking thread.
const LARGE_FRAME: usize = 1 << 20;

/// Forwards a worker's answers, then its exit (seen at once on its pidfd, or reported by
/// its host's agent). While `spin` allows, it waits actively, up to `limit` after each
/// answer, for the next one. Nothing from a worker whose host was declared lost is taken
/// after that: its tasks are failed by then, and a late answer is dropped.
///
/// An answer that says the worker's memory reached the pool's limit sets `over_memory`
/// before its caller has it, so that the pool sends the worker nothing the caller submits
/// next.
///
/// The exit is reported once the worker's descriptors held here (its pidfd, its link) are
/// closed, so that a pool that hears of its last worker's exit holds none of them any more.
pub(super) async fn read_worker(
    wid: u64,
    over_memory: Arc<AtomicBool>,
    rd: Arc<Framed>,
    life: (Life, Killer),
    (events, answers): (UnboundedSender<Event>, Arc<Answered>),
    replies: Replies,
    spin: (Arc<AtomicBool>, Duration),
) {
    let (cause, killed_because) = watch_worker(
        wid,
        over_memory,
        rd,
        life,
        (&events, answers),
        replies,
        spin,
    )
    .await;
    let _ = events.send(Event::Exited {
        wid,
        cause,
        killed_because,
    });
}

/// The body of [`read_worker`], which owns the worker's descriptors held here and drops them
/// as it returns how the worker ended, and why the pool killed it if it did.
async fn watch_worker(
    wid: u64,
    over_memory: Arc<AtomicBool>,
    rd: Arc<Framed>,
    (mut life, killer): (Life, Killer),
    (events, answers): (&UnboundedSender<Event>, Arc<Answered>),
    replies: Replies,
    (spin, limit): (Arc<AtomicBool>, Duration),
) -> (ExitCause, Option<Arc<str>>) {
    // `at`: when the answer arrived, for the scheduler's measure of the round trip.
    // `Ok(false)`: the scheduler is gone; `Err`: the answer cannot be read, and why.
    let forward = |mut frame: Frame, at: Instant| -> Result<bool, String> {
        match frame.decode_head::<Reply>() {
            Ok(Reply {
                id,
                nanos,
                failure,
                over_memory: over,
            }) => {
                if over {
                    over_memory.store(true, Ordering::Release);
                }
                let ok = failure.is_none();
                let answered = take_reply(&replies, id, Some(wid)).map(|tx| {
                    let _ = tx.send(match failure {
                        None => Ok(frame),
                        Some(f) => Err(TaskError::failed(f)),
                    });
                    ok
                });
                let answer = Answer {
                    wid,
                    id,
                    nanos,
                    answered,
                    at,
                };
                // After an answer, the reader spins for the next one if `spin` allows.
                let wake = answers.add(answer, spin.load(Ordering::Relaxed));
                Ok(!wake || events.send(Event::Answered).is_ok())
            }
            Err(e) => Err(format!("it sent an answer that does not decode: {e}")),
        }
    };
    let spinning = |last: Option<Instant>| {
        last.is_some_and(|t| t.elapsed() < limit) && spin.load(Ordering::Relaxed)
    };
    let mut last_answer: Option<Instant> = None;
    loop {
        // What the reactor has seen first; while spinning, the socket itself (the reactor
        // has not seen what arrived since).
        let r = match rd.recv().now_or_never() {
            Some(r) => r,
            None if spinning(last_answer) => match rd.try_recv() {
                Some(r) => r,
                None => {
                    tokio::task::yield_now().await;
                    continue;
                }
            },
            None => {
                // About to sleep: the scheduler takes in the answers that waited for it.
                if answers.unseen() && events.send(Event::Answered).is_err() {
                    life.kill(&killer);
                    break;
                }
                tokio::select! {
                    biased;
                    r = rd.recv() => r,
                    ended = life.join() => {
                        if matches!(ended, Ended::HostLost(_)) {
                            return (ended.cause(), None);
                        }
                        // Dead: take in what it sent before dying, then report.
                        while let Ok(Ok(frame)) =
                            tokio::time::timeout(Duration::from_secs(1), rd.recv()).await
                        {
                            if !matches!(forward(frame, Instant::now()), Ok(true)) {
                                break;
                            }
                        }
                        return (ended.cause(), None);
                    }
                }
            }
        };
        let why = match r {
            Ok(frame) => {
                let at = Instant::now();
                match forward(frame, at) {
                    Ok(true) => {
                        last_answer = Some(at);
                        continue;
                    }
                    Ok(false) => {
                        life.kill(&killer);
                        break;
                    }
                    Err(why) => why,
                }
            }
            // A remote worker's link whose other end stopped answering (see
            // `sys::fail_when_silent`): the worker may live on, cut off; it is killed.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                format!("its link to the pool went silent ({e})")
            }
            // An answer too large for the memory this process may have: the worker lives,
            // but what it sends after it cannot be read either.
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::OutOfMemory => {
                format!("what it sent could not be read: {e}")
            }
            // A worker that died with frames unread resets its socket: an end, as a close.
            Err(Error::Closed | Error::Io(_)) => break,
            Err(e) => format!("what it sent could not be read: {e}"),
        };
        // What it sends cannot be read, so neither can anything after it: the worker is of
        // no use any more, and its tasks fail saying why.
        tracing::debug!("killing a pool worker: {why}");
        life.kill(&killer);
        return (life.join().await.cause(), Some(why.into()));
    }
    let ended = match tokio::time::timeout(Duration::from_secs(5), life.join()).await {
        Ok(r) => r,
        Err(_) => {
            // It closed its socket but lives on: it is of no use any more.
            life.kill(&killer);
            life.join().await
        }
    };
    (ended.cause(), None)
}
