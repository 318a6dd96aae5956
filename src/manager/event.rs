//! [`EventProxy`]: an event held by a manager (Python's `manager.Event()`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::proto::{EventOp, Reply, Request, Wait};
use super::server::Step;
use super::{Handle, expect_bool, expect_done};
use crate::error::Result;

/// The server's side of an event.
#[derive(Default)]
pub(super) struct EventState {
    set: bool,
    changed: Arc<Notify>,
}

impl EventState {
    pub(super) fn handle(&mut self, op: EventOp) -> Reply {
        match op {
            EventOp::Set => {
                self.set = true;
                self.changed.notify_waiters();
                Reply::Done
            }
            EventOp::Clear => {
                self.set = false;
                Reply::Done
            }
            EventOp::IsSet => Reply::Bool(self.set),
            EventOp::Wait { .. } => Reply::message("this request waits"),
        }
    }

    pub(super) fn attempt(&mut self, _op: &EventOp, timed_out: bool) -> Step {
        match (self.set, timed_out) {
            (true, _) => Step::Done(Reply::Bool(true)),
            (false, true) => Step::Done(Reply::Bool(false)),
            (false, false) => Step::Wait(self.changed.clone()),
        }
    }
}

/// An event held by a [`Manager`](crate::Manager) (Python's `manager.Event()`): the methods
/// of the crate's [`Event`](crate::Event), each a request to the server.
pub struct EventProxy(pub(super) Handle<()>);
proxy_traits!(EventProxy);

impl EventProxy {
    async fn op(&self, op: EventOp) -> Result<Reply> {
        self.0.call(Request::Event(self.0.id, op)).await
    }

    /// Whether the flag is set (Python's `is_set()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn is_set(&self) -> Result<bool> {
        expect_bool(self.op(EventOp::IsSet).await?)
    }

    /// Sets the flag and wakes every waiter (Python's `set()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have set the flag.
    pub async fn set(&self) -> Result<()> {
        expect_done(self.op(EventOp::Set).await?)
    }

    /// Clears the flag (Python's `clear()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have cleared the flag.
    pub async fn clear(&self) -> Result<()> {
        expect_done(self.op(EventOp::Clear).await?)
    }

    /// Waits until the flag is set (Python's `wait()`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `wait` is withdrawn and changes nothing.
    pub async fn wait(&self) -> Result<()> {
        self.op(EventOp::Wait {
            wait: Wait::Forever,
        })
        .await
        .map(drop)
    }

    /// Waits until the flag is set or `timeout` has passed: whether it was set (Python's
    /// `wait(timeout)`).
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped `wait` is withdrawn and changes nothing.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool> {
        let wait = Wait::For(timeout);
        expect_bool(self.op(EventOp::Wait { wait }).await?)
    }
}
