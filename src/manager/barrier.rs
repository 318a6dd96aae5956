//! [`BarrierProxy`]: a barrier held by a manager (Python's `manager.Barrier(parties)`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::proto::{BarrierOp, Failure, Reply, Request, Wait};
use super::server::{Shared, Step, deadline, object};
use super::{Handle, expect_bool, expect_done, expect_len};
use crate::error::Result;
use crate::on_drop::OnDrop;

/// The server's side of a barrier.
pub(super) struct BarrierState {
    parties: u32,
    /// Arrived in this round.
    count: u32,
    /// Rounds completed.
    round: u64,
    /// Resets so far: a waiter of an earlier one was broken by it.
    resets: u64,
    broken: bool,
    changed: Arc<Notify>,
}

impl BarrierState {
    pub(super) fn new(parties: u32) -> BarrierState {
        BarrierState {
            parties: parties.max(1),
            count: 0,
            round: 0,
            resets: 0,
            broken: false,
            changed: Arc::default(),
        }
    }

    fn break_it(&mut self) {
        self.broken = true;
        self.count = 0;
        self.changed.notify_waiters();
    }

    pub(super) fn handle(&mut self, op: BarrierOp) -> Reply {
        match op {
            BarrierOp::Abort => {
                self.break_it();
                Reply::Done
            }
            BarrierOp::Reset => {
                self.resets += 1;
                self.count = 0;
                self.broken = false;
                self.changed.notify_waiters();
                Reply::Done
            }
            BarrierOp::Parties => Reply::Len(u64::from(self.parties)),
            BarrierOp::NWaiting => Reply::Len(u64::from(self.count)),
            BarrierOp::Broken => Reply::Bool(self.broken),
            BarrierOp::Wait { .. } => Reply::message("this request waits"),
        }
    }
}

/// A barrier's `wait`, in the server: arrive, then wait for the round to complete.
pub(super) async fn wait(shared: &Shared, id: u64, wait: Wait) -> Reply {
    let arrival = {
        let mut state = shared.state();
        let b = match object!(state, id, Barrier) {
            Ok(b) => b,
            Err(f) => return Reply::Failed(f),
        };
        if b.broken {
            return Reply::Failed(Failure::BrokenBarrier);
        }
        let index = b.count;
        b.count += 1;
        if b.count == b.parties {
            b.count = 0;
            b.round += 1;
            b.changed.notify_waiters();
            return Reply::Len(u64::from(index));
        }
        (index, b.round, b.resets)
    };
    let (index, round, resets) = arrival;
    // A wait withdrawn (or whose connection closed) after it arrived breaks the barrier, as
    // the crate's `Barrier` does: the other parties would otherwise go on with one gone.
    let left = OnDrop::new(|| {
        if let Ok(b) = object!(shared.state(), id, Barrier)
            && b.round == round
            && b.resets == resets
            && !b.broken
        {
            b.break_it();
        }
    });
    let reply = shared
        .wait_on(deadline(wait), |state, timed_out| {
            let b = match object!(state, id, Barrier) {
                Ok(b) => b,
                Err(f) => return Step::Done(Reply::Failed(f)),
            };
            if b.round != round {
                return Step::Done(Reply::Len(u64::from(index)));
            }
            if b.broken || b.resets != resets {
                return Step::Done(Reply::Failed(Failure::BrokenBarrier));
            }
            if timed_out {
                // Python's rule: a wait that times out breaks the barrier for everyone.
                b.break_it();
                return Step::Done(Reply::Failed(Failure::BrokenBarrier));
            }
            Step::Wait(b.changed.clone())
        })
        .await;
    left.defuse();
    reply
}

/// A barrier held by a [`Manager`](crate::Manager) (Python's `manager.Barrier(parties)`):
/// the methods and errors of the crate's [`Barrier`](crate::Barrier).
pub struct BarrierProxy(pub(super) Handle<()>);
proxy_traits!(BarrierProxy);

impl BarrierProxy {
    async fn op(&self, op: BarrierOp) -> Result<Reply> {
        self.0.call(Request::Barrier(self.0.id, op)).await
    }

    /// Waits until `parties` callers are waiting, then lets them all go; returns this
    /// caller's arrival index, from 0 to `parties - 1` (Python's `wait()`).
    ///
    /// # Errors
    /// [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) if the barrier is or becomes broken
    /// (aborted, reset, or another wait timed out);
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a `wait` dropped after it arrived is withdrawn and breaks the barrier,
    /// as the crate's [`Barrier`](crate::Barrier) does (the other parties would otherwise
    /// wait for a party that left); so does the end of the connection of a waiting process.
    pub async fn wait(&self) -> Result<u32> {
        Ok(expect_len(
            self.op(BarrierOp::Wait {
                wait: Wait::Forever,
            })
            .await?,
        )? as u32)
    }

    /// [`wait`](Self::wait) for at most `timeout`; running out breaks the barrier
    /// (Python's `wait(timeout)`).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<u32> {
        let wait = Wait::For(timeout);
        Ok(expect_len(self.op(BarrierOp::Wait { wait }).await?)? as u32)
    }

    /// Breaks the barrier: every waiter, now and later, gets
    /// [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) (Python's `abort()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have aborted.
    pub async fn abort(&self) -> Result<()> {
        expect_done(self.op(BarrierOp::Abort).await?)
    }

    /// Returns the barrier to its first state; those waiting get
    /// [`Error::BrokenBarrier`](crate::Error::BrokenBarrier) (Python's `reset()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have reset.
    pub async fn reset(&self) -> Result<()> {
        expect_done(self.op(BarrierOp::Reset).await?)
    }

    /// The number of parties (Python's `parties`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn parties(&self) -> Result<u32> {
        Ok(expect_len(self.op(BarrierOp::Parties).await?)? as u32)
    }

    /// The number waiting now (Python's `n_waiting`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn n_waiting(&self) -> Result<u32> {
        Ok(expect_len(self.op(BarrierOp::NWaiting).await?)? as u32)
    }

    /// Whether the barrier is broken (Python's `broken`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn broken(&self) -> Result<bool> {
        expect_bool(self.op(BarrierOp::Broken).await?)
    }
}
