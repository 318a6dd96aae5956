//! [`HandshakeGate`]: the connections a server has taken but not yet authenticated, at most a
//! fixed number at once, the oldest dropped to make room for a newcomer.
//!
//! A server that stops accepting while its handshakes are full lets a few hundred silent
//! sockets lock every client out until they time out; one that accepts without a bound lets
//! them pile up until the process runs out of descriptors. The gate does neither: the server
//! always accepts, and a connection that arrives while `limit` handshakes are pending drops
//! the oldest of them (its future is dropped, so its socket is closed). A client that holds
//! the key ends its exchange in about a millisecond, so a peer would have to open `limit`
//! connections within that millisecond to crowd it out; silent sockets cost the server at
//! most `limit` descriptors however many there are.
//!
//! Each handshake keeps its own time limit; the gate only decides which ones may go on.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The pending handshakes of one listening socket (see the module docs).
pub(crate) struct HandshakeGate {
    pending: Arc<Mutex<Pending>>,
}

/// The handshakes under way, oldest first, each with the sender whose drop stops it.
struct Pending {
    limit: usize,
    next: u64,
    by_age: BTreeMap<u64, oneshot::Sender<()>>,
}

impl HandshakeGate {
    /// A gate that lets at most `limit` handshakes (at least one) be pending at once.
    pub(crate) fn new(limit: usize) -> HandshakeGate {
        HandshakeGate {
            pending: Arc::new(Mutex::new(Pending {
                limit: limit.max(1),
                next: 0,
                by_age: BTreeMap::new(),
            })),
        }
    }

    /// Counts `handshake` among the pending ones from now on, dropping the oldest if `limit`
    /// are pending already. The future returned runs `handshake` to its end (`Some`) unless a
    /// newer connection evicts it first (`None`, and `handshake` is dropped). Dropping the
    /// future frees its place.
    pub(crate) fn admit<F: Future>(
        &self,
        handshake: F,
    ) -> impl Future<Output = Option<F::Output>> + use<F> {
        let (evict, evicted) = oneshot::channel::<()>();
        let id = {
            let mut p = lock(&self.pending);
            if p.by_age.len() >= p.limit {
                // Dropping its sender wakes the oldest handshake, which ends with `None`.
                p.by_age.pop_first();
            }
            let id = p.next;
            p.next += 1;
            p.by_age.insert(id, evict);
            id
        };
        let place = Place {
            pending: self.pending.clone(),
            id,
        };
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

fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handshake's place in the gate, given up when the handshake ends or is dropped.
struct Place {
    pending: Arc<Mutex<Pending>>,
    id: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        lock(&self.pending).by_age.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    #[test]
    fn a_newcomer_evicts_the_oldest_pending_handshake() {
        let gate = HandshakeGate::new(2);
        let mut first = Box::pin(gate.admit(std::future::pending::<()>()));
        let mut second = Box::pin(gate.admit(std::future::pending::<()>()));
        assert_eq!(first.as_mut().now_or_never(), None, "not evicted yet");
        let mut third = Box::pin(gate.admit(std::future::pending::<()>()));
        assert_eq!(
            first.as_mut().now_or_never(),
            Some(None),
            "the oldest is evicted"
        );
        assert_eq!(second.as_mut().now_or_never(), None);
        assert_eq!(third.as_mut().now_or_never(), None);
        assert_eq!(gate.pending(), 2);
    }

    #[test]
    fn a_finished_or_dropped_handshake_frees_its_place() {
        let gate = HandshakeGate::new(2);
        let done = gate.admit(async { 7 });
        let dropped = gate.admit(std::future::pending::<()>());
        assert_eq!(done.now_or_never(), Some(Some(7)));
        drop(dropped);
        assert_eq!(gate.pending(), 0);
        let mut a = Box::pin(gate.admit(std::future::pending::<()>()));
        let mut b = Box::pin(gate.admit(std::future::pending::<()>()));
        assert_eq!(a.as_mut().now_or_never(), None, "two places were free");
        assert_eq!(b.as_mut().now_or_never(), None);
    }
}
