//! [`HandshakeGate`]: the connections a server has taken but not yet authenticated, at most a
//! fixed number at once.
//!
//! A server that waits, once its handshakes are full, until one of them ends lets a few
//! hundred silent sockets lock every client out until they time out; one that accepts
//! without a bound lets them pile up until the process runs out of descriptors; one that
//! always accepts and closes the oldest handshake for a newcomer closes honest clients of any
//! burst larger than its bound, which were answering all along. The gate does none of these.
//! While `limit` handshakes are under way, the server takes no more connections off its
//! socket (they wait in the kernel's backlog, as they would behind Python's `accept`) until
//! one ends, or until the oldest has gone [`STALE`] without its peer proving the key: that
//! one is closed (its future is dropped, and its socket with it) to make room.
//!
//! A client that holds the key proves it within about a millisecond, so a burst of them goes
//! through whole however large it is; once it has, the gate never closes its connection, so
//! a client is never dropped in the last step of its exchange (when its `connect` may have
//! returned already). Silent sockets cost the server at most `limit` descriptors however many
//! there are; to keep newcomers waiting a peer must open `limit` new ones every [`STALE`], and
//! the newcomers wait in the backlog rather than fail.
//!
//! Each handshake keeps its own time limit; the gate only decides which ones may go on.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

/// How long a handshake whose peer has not proved the key keeps its place while newcomers
/// wait: past it, the oldest such handshake is closed for the next connection.
pub(crate) const STALE: Duration = Duration::from_secs(1);

/// The pending handshakes of one listening socket (see the module docs).
pub(crate) struct HandshakeGate {
    pending: Arc<Mutex<Pending>>,
}

/// The handshakes under way, oldest first, and who waits for room among them.
struct Pending {
    limit: usize,
    next: u64,
    by_age: BTreeMap<u64, Handshake>,
    /// The task waiting in [`HandshakeGate::poll_room`], woken when a place is given up.
    waiting: Option<Waker>,
    /// Wakes that task when the oldest handshake not proven goes stale.
    stale: Option<Pin<Box<Sleep>>>,
}

/// One handshake under way.
struct Handshake {
    since: Instant,
    /// Whether its peer has proved the key: then it is never closed for a newcomer.
    proven: bool,
    /// Dropping it (with the entry) stops the handshake.
    _evict: oneshot::Sender<()>,
}

impl HandshakeGate {
    /// A gate that lets at most `limit` handshakes (at least one) be pending at once.
    pub(crate) fn new(limit: usize) -> HandshakeGate {
        HandshakeGate {
            pending: Arc::new(Mutex::new(Pending {
                limit: limit.max(1),
                next: 0,
                by_age: BTreeMap::new(),
                waiting: None,
                stale: None,
            })),
        }
    }

    /// Ready once another handshake may be admitted: at once while fewer than `limit` are
    /// pending; otherwise when one ends, or when the oldest whose peer has not proved the key
    /// has been pending for [`STALE`], which is then closed. The server takes its next
    /// connection only then. One task at a time waits here: the one that accepts.
    pub(crate) fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut p = lock(&self.pending);
        loop {
            let Err(stale_at) = p.make_room(Instant::now()) else {
                p.waiting = None;
                p.stale = None;
                return Poll::Ready(());
            };
            p.waiting = Some(cx.waker().clone());
            let Some(at) = stale_at else {
                // Every handshake is proven: only an end makes room.
                p.stale = None;
                return Poll::Pending;
            };
            let timer = p
                .stale
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// [`poll_room`](Self::poll_room) as a future.
    ///
    /// # Cancel safety
    /// Cancel safe: waiting takes nothing; a handshake it closed was stale.
    pub(crate) async fn room(&self) {
        std::future::poll_fn(|cx| self.poll_room(cx)).await
    }

    /// Counts the handshake `start` makes among the pending ones from now on. `start` is
    /// given the handshake's [`Vouch`], to tell the gate once its peer has proved the key.
    /// The future returned runs the handshake to its end (`Some`) unless the gate closes it
    /// for a newer connection first (`None`, and the handshake is dropped). Dropping the
    /// future frees its place.
    ///
    /// A server admits a connection once [`room`](Self::room) said there was room for it;
    /// one admitted while `limit` are pending closes the oldest not proven at once, so that
    /// the bound holds regardless.
    pub(crate) fn admit<F: Future, S: FnOnce(Vouch) -> F>(
        &self,
        start: S,
    ) -> impl Future<Output = Option<F::Output>> + use<F, S> {
        let (evict, evicted) = oneshot::channel::<()>();
        let id = {
            let mut p = lock(&self.pending);
            if p.by_age.len() >= p.limit {
                p.close_oldest_not_proven();
            }
            let id = p.next;
            p.next += 1;
            let since = Instant::now();
            p.by_age.insert(
                id,
                Handshake {
                    since,
                    proven: false,
                    _evict: evict,
                },
            );
            id
        };
        let place = Place {
            pending: self.pending.clone(),
            id,
        };
        let handshake = start(Vouch {
            pending: self.pending.clone(),
            id,
        });
        async move {
            let _place = place;
            tokio::select! {
                biased;
                out = handshake => Some(out),
                _ = evicted => None,
            }
        }
    }

    /// How many handshakes are pending.
    #[cfg(test)]
    fn pending(&self) -> usize {
        lock(&self.pending).by_age.len()
    }
}

impl Pending {
    /// Makes room for a newcomer at `now`, closing the oldest handshake not proven if
    /// `limit` are pending and it is stale. Otherwise `Err` with when it goes stale (`None`
    /// if every handshake pending is proven).
    fn make_room(&mut self, now: Instant) -> Result<(), Option<Instant>> {
        if self.by_age.len() < self.limit {
            return Ok(());
        }
        let Some((id, since)) = self.oldest_not_proven() else {
            return Err(None);
        };
        let stale_at = since + STALE;
        if stale_at > now {
            return Err(Some(stale_at));
        }
        // Dropping its sender wakes the handshake, which ends with `None`.
        self.by_age.remove(&id);
        Ok(())
    }

    /// Closes the oldest handshake whose peer has not proved the key, if any.
    fn close_oldest_not_proven(&mut self) {
        if let Some((id, _)) = self.oldest_not_proven() {
            self.by_age.remove(&id);
        }
    }

    /// The oldest handshake whose peer has not proved the key, and since when it is pending.
    fn oldest_not_proven(&self) -> Option<(u64, Instant)> {
        self.by_age
            .iter()
            .find(|(_, h)| !h.proven)
            .map(|(&id, h)| (id, h.since))
    }
}

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a handshake tells its gate: that its peer has proved the key.
pub(crate) struct Vouch {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl Vouch {
    /// The peer has proved it holds the key: the gate no longer closes this handshake for a
    /// newcomer.
    pub(crate) fn key_proven(&self) {
        if let Some(h) = lock(&self.pending).by_age.get_mut(&self.id) {
            h.proven = true;
        }
    }
}

/// A handshake's place in the gate, given up when the handshake ends or is dropped.
struct Place {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let waiting = {
            let mut p = lock(&self.pending);
            p.by_age.remove(&self.id);
            p.waiting.take()
        };
        if let Some(w) = waiting {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    fn pending_forever(_: Vouch) -> std::future::Pending<()> {
        std::future::pending()
    }

    #[test]
    fn a_full_gate_closes_only_the_oldest_stale_handshake_not_proven() {
        let gate = HandshakeGate::new(2);
        let (vouch, vouched) = std::sync::mpsc::channel();
        let mut first = Box::pin(gate.admit(move |v| {
            let _ = vouch.send(v);
            std::future::pending::<()>()
        }));
        let mut second = Box::pin(gate.admit(pending_forever));
        let (start, second_since) = {
            let p = lock(&gate.pending);
            (p.by_age[&0].since, p.by_age[&1].since)
        };
        assert_eq!(
            lock(&gate.pending).make_room(start),
            Err(Some(start + STALE)),
            "full, and nothing is stale yet"
        );
        vouched.try_iter().for_each(|v| v.key_proven());
        let mut p = lock(&gate.pending);
        assert_eq!(
            p.make_room(start),
            Err(Some(second_since + STALE)),
            "the proven one is passed over"
        );
        assert_eq!(p.make_room(second_since + STALE), Ok(()));
        drop(p);
        assert_eq!(
            first.as_mut().now_or_never(),
            None,
            "the proven one goes on"
        );
        assert_eq!(
            second.as_mut().now_or_never(),
            Some(None),
            "the stale one is closed"
        );
        assert_eq!(gate.pending(), 1);
        let mut third = Box::pin(gate.admit(|v| {
            v.key_proven();
            std::future::pending::<()>()
        }));
        let mut p = lock(&gate.pending);
        assert_eq!(
            p.make_room(second_since + STALE * 100),
            Err(None),
            "all proven: only an end makes room"
        );
        drop(p);
        assert_eq!(third.as_mut().now_or_never(), None);
    }

    #[test]
    fn a_finished_or_dropped_handshake_frees_its_place() {
        let gate = HandshakeGate::new(2);
        let done = gate.admit(|_| async { 7 });
        let dropped = gate.admit(pending_forever);
        assert_eq!(done.now_or_never(), Some(Some(7)));
        drop(dropped);
        assert_eq!(gate.pending(), 0);
        let mut a = Box::pin(gate.admit(pending_forever));
        let mut b = Box::pin(gate.admit(pending_forever));
        assert_eq!(a.as_mut().now_or_never(), None, "two places were free");
        assert_eq!(b.as_mut().now_or_never(), None);
    }

    #[tokio::test]
    async fn room_waits_for_a_handshake_to_end() {
        let gate = HandshakeGate::new(1);
        assert_eq!(gate.room().now_or_never(), Some(()), "empty: room at once");
        let (end, ended) = oneshot::channel::<()>();
        let handshake = tokio::spawn(gate.admit(|_| ended));
        let mut room = Box::pin(gate.room());
        assert_eq!(room.as_mut().now_or_never(), None, "full: no room");
        end.send(())
            .unwrap_or_else(|()| unreachable!("the handshake waits"));
        assert!(matches!(handshake.await, Ok(Some(Ok(())))));
        assert_eq!(room.now_or_never(), Some(()), "room once it ended");
    }
}
