//! Shutting a queue down (Python 3.13's `Queue.shutdown`), for every process that holds it:
//! a word in the ring's header says whether it was, and how (see
//! [`Header::shut_down`](super::header::Header::shut_down)); it only ever grows, so a queue
//! shut down stays so.
//!
//! - After `shutdown()` ([`DRAINING`](super::header::DRAINING)), puts fail and gets take
//!   what is left, then fail.
//! - After `shutdown_immediate()` ([`STOPPED`]), gets fail at once too, and the caller takes
//!   out and drops every item left, counting each done in a joinable queue, so that `join`
//!   returns once the items that consumers hold are done.
//!
//! Either way every waiter, in every process, is woken to look again: both sides' eventfds
//! are written whether anyone waits or not. The word is read where a put or a get looks at
//! the ring, never under a lock of its own, so a put that read it just before the shutdown
//! may still land its item after it: that item stays in the queue for a `get`, and is
//! dropped by a `shutdown_immediate()` that comes after it.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::IgnoredAny;

use super::header::{OPEN, STOPPED};
use super::inner::Inner;
use super::item::Taken;
use crate::error::{Error, Result};
use crate::sys;

impl Inner {
    /// How the queue was shut down: [`OPEN`], [`DRAINING`](super::header::DRAINING) or
    /// [`STOPPED`].
    fn shut_down_state(&self) -> u64 {
        self.header().shut_down().load(Ordering::SeqCst)
    }

    /// Whether `shutdown()` or `shutdown_immediate()` was called, in any process.
    pub(super) fn is_shut_down(&self) -> bool {
        self.shut_down_state() != OPEN
    }

    /// [`Error::ShutDown`] once the queue was shut down: no put may start.
    pub(super) fn check_puts_allowed(&self) -> Result<()> {
        match self.shut_down_state() {
            OPEN => Ok(()),
            _ => Err(Error::ShutDown),
        }
    }

    /// [`Error::ShutDown`] once the queue was shut down immediately: no get may take.
    pub(super) fn check_gets_allowed(&self) -> Result<()> {
        match self.shut_down_state() {
            STOPPED => Err(Error::ShutDown),
            _ => Ok(()),
        }
    }

    /// What a get that found the queue empty answers: [`Taken::Empty`] to wait for an item,
    /// or [`Error::ShutDown`] if none will come.
    pub(super) fn empty_or_shut_down<T>(&self) -> Result<Taken<T>> {
        match self.shut_down_state() {
            OPEN => Ok(Taken::Empty),
            _ => Err(Error::ShutDown),
        }
    }

    /// Shuts the queue down to `state` ([`DRAINING`](super::header::DRAINING) or
    /// [`STOPPED`]), unless it was shut down further already, and wakes every waiter on both
    /// sides.
    pub(super) fn shut_down(&self, state: u64) {
        self.header().shut_down().fetch_max(state, Ordering::SeqCst);
        for fd in [&self.items, &self.space] {
            if let Err(e) = sys::eventfd_add(fd.as_fd(), 1) {
                tracing::debug!("cannot wake a queue's waiters for its shutdown: {e}");
            }
        }
    }

    /// Takes out and drops every item left, counting each done in a joinable queue; the
    /// number dropped. An item that cannot be decoded is dropped too.
    pub(super) async fn drain(self: &Arc<Self>) -> Result<usize> {
        let mut dropped = 0;
        loop {
            let taken = match self.try_take_any::<IgnoredAny>() {
                Ok(Taken::Busy) => match self.take.lock().await {
                    Ok(guard) => self.take_locked(guard),
                    Err(Error::LockOwnerDied { pid }) => {
                        tracing::debug!(pid, "a queue's take lock was freed from its dead holder");
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                other => other,
            };
            match taken {
                Ok(Taken::Empty) => return Ok(dropped),
                Ok(Taken::Item(_)) | Err(Error::Decode { .. }) => {
                    dropped += 1;
                    self.uncount();
                }
                Ok(Taken::Busy) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
