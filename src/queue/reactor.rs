//! [`Reactor`]: a queue's descriptors as registered with one runtime's reactor, made on a
//! handle's first wait in that runtime and kept until it is closed or another runtime
//! needs its own.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::inner::Inner;
use crate::error::Result;
use crate::sync::Watch;
use crate::sys;

/// See the module docs.
pub(super) struct Reactor {
    pub(super) tx: AsyncFd<Arc<OwnedFd>>,
    pub(super) items: AsyncFd<Arc<OwnedFd>>,
    pub(super) space: AsyncFd<Arc<OwnedFd>>,
    pub(super) done: Option<AsyncFd<Arc<OwnedFd>>>,
    /// The last sender of a packet whose marker a consumer went to sleep without, watched
    /// (see `Inner::sender_to_watch`): kept while the same process sends.
    pub(super) sender: Mutex<Option<Arc<Watch>>>,
}

impl Inner {
    /// The registrations of an open handle.
    pub(super) fn reactor(&self) -> Result<Arc<Reactor>> {
        self.check_open()?;
        self.registered()
    }

    /// The queue's registrations with the reactor of the runtime this runs on, made on
    /// first need there, and kept until another runtime needs its own: a registration
    /// wakes only a task of its runtime, whose reactor must run (and live) to deliver its
    /// events. A closed handle gets fresh ones, not kept: a packet sent before the close
    /// still gets its marker.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub(super) fn registered(&self) -> Result<Arc<Reactor>> {
        let runtime = crate::runtime::current().id();
        let mut r = self.registrations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, r)) = &*r
            && *id == runtime
        {
            return Ok(r.clone());
        }
        let new = Arc::new(self.register()?);
        if !self.is_closed() {
            *r = Some((runtime, new.clone()));
        }
        Ok(new)
    }

    /// Fresh registrations with the reactor of the runtime this runs on, kept by no one.
    pub(super) fn register(&self) -> Result<Reactor> {
        let reg = |fd: &Arc<OwnedFd>, i| sys::register_shared(fd.clone(), i);
        Ok(Reactor {
            tx: reg(&self.tx, Interest::WRITABLE)?,
            items: reg(&self.items, Interest::READABLE)?,
            space: reg(&self.space, Interest::READABLE)?,
            done: self
                .done
                .as_ref()
                .map(|s| reg(s, Interest::READABLE))
                .transpose()?,
            sender: Mutex::new(None),
        })
    }
}
