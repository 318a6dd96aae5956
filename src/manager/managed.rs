//! Your own types, served by a manager: [`Managed`] and [`Proxy`] (Python's
//! `BaseManager.register('Maths', Maths)` and the proxy `m.Maths()` returns).
//!
//! A type is registered on the [`ManagerBuilder`](crate::ManagerBuilder) by its Rust type
//! name; only registered types can be made, so a client cannot make the server run code its
//! owner did not offer. The server runs each call on its blocking pool, one call at a time
//! per object (calls to one object are serialised, calls to different objects run side by
//! side); a call that panics is an error for that call, the object stays as the panic left
//! it and the server serves on.
//!
//! A server process runs the same binary as the builder that started it, so the type's
//! constructor travels to it as an offset into that binary (checked against the binary's
//! fingerprint), as a process target does.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proto::{Bytes, Failure, Reply, Request};
use super::{Handle, decode, encode, unexpected};
use crate::error::Result;

/// A type whose values a manager holds and whose method the server runs for every client
/// (Python's registered class): requests in, replies out, both serde values.
///
/// The server makes each value with `Default`; a panic there fails only the
/// [`Manager::managed`](crate::Manager::managed) call that asked for it. A value ends when
/// its last proxy anywhere goes; its `Drop` then runs on a thread of the server's blocking
/// pool, so a slow one holds up no call, and a panic there is logged and goes no further.
/// `shutdown` stops the server without running the `Drop` of the values left.
///
/// # Examples
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tokio_multiprocessing::Managed;
///
/// #[derive(Default)]
/// struct Maths { calls: u64 }
///
/// #[derive(Serialize, Deserialize)]
/// enum Op { Add(i64, i64), Mul(i64, i64), Calls }
///
/// impl Managed for Maths {
///     type Request = Op;
///     type Reply = i64;
///     fn call(&mut self, op: Op) -> i64 {
///         self.calls += 1;
///         match op {
///             Op::Add(a, b) => a + b,
///             Op::Mul(a, b) => a * b,
///             Op::Calls => self.calls as i64,
///         }
///     }
/// }
/// ```
pub trait Managed: Default + Send + 'static {
    /// What a client asks.
    type Request: Serialize + DeserializeOwned;
    /// What the server answers.
    type Reply: Serialize + DeserializeOwned;
    /// Carries out one request, in the server. A panic here fails this call only.
    fn call(&mut self, request: Self::Request) -> Self::Reply;
}

/// A [`Managed`] value as the server holds it: bytes in, bytes out.
pub(super) trait Erased: Send {
    fn call(&mut self, request: &[u8]) -> std::result::Result<Bytes, String>;
}

impl<M: Managed> Erased for M {
    fn call(&mut self, request: &[u8]) -> std::result::Result<Bytes, String> {
        let req: M::Request =
            crate::wire::codec::decode(request, Vec::new()).map_err(|e| e.to_string())?;
        let reply = Managed::call(self, req);
        super::encode_plain(&reply).map_err(|e| e.to_string())
    }
}

/// Makes a new value of a registered type.
pub(super) type Maker = fn() -> Box<dyn Erased>;

/// A new user object made by `make`; a panic in the type's `Default` fails this request
/// only, as one in its `call` does (it ran in the connection's loop, which it ended without
/// letting go of what the connection held).
pub(super) fn make(make: Maker) -> std::result::Result<UserObject, Failure> {
    match catch_unwind(make) {
        Ok(value) => Ok(Arc::new(tokio::sync::Mutex::new(Value(Some(value))))),
        Err(panic) => Err(Failure::Message(format!(
            "making the value panicked: {}",
            crate::task::panic_message(&*panic)
        ))),
    }
}

pub(super) fn maker<M: Managed>() -> Box<dyn Erased> {
    Box::new(M::default())
}

/// The server's side of a user object: the value, behind a lock that serialises its calls.
/// A call waits for its turn on the runtime, holding no thread, and runs on the blocking
/// pool once it has the value: calls queued behind a slow or hung call to one object take
/// none of the threads that the calls to other objects need, and one withdrawn while it
/// waits never runs.
pub(super) type UserObject = Arc<tokio::sync::Mutex<Value>>;

/// A user value as the server holds it. Its `Drop` runs on the server's blocking pool, not
/// where its last holder lets it go (the server's state, under the lock every request takes,
/// or a connection's loop): a slow or stuck `Drop` holds up no other call. A panic there is
/// caught and logged, as one in its `call` is answered.
pub(super) struct Value(Option<Box<dyn Erased>>);

impl Drop for Value {
    fn drop(&mut self) {
        let value = Dropped(self.0.take());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // A runtime shutting down drops the closure unrun, which drops the value here.
            runtime.spawn_blocking(move || drop(value));
        }
    }
}

/// A user value on its way out, whose `Drop` panicking is caught and logged.
struct Dropped(Option<Box<dyn Erased>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let value = self.0.take();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
            tracing::debug!(
                "a user value's drop panicked: {}",
                crate::task::panic_message(&*panic)
            );
        }
    }
}

/// Runs one call on the server's blocking pool; a panic is this call's error.
pub(super) async fn run(object: UserObject, request: Bytes) -> Reply {
    let mut value = object.lock_owned().await;
    let r = tokio::task::spawn_blocking(move || {
        catch_unwind(AssertUnwindSafe(|| match value.0.as_mut() {
            Some(v) => v.call(&request),
            None => Err("the value is gone".to_string()),
        }))
    })
    .await;
    match r {
        Ok(Ok(Ok(bytes))) => Reply::Item(Some(bytes)),
        Ok(Ok(Err(message))) => Reply::Failed(Failure::Message(message)),
        Ok(Err(panic)) => Reply::Failed(Failure::Message(format!(
            "the method panicked: {}",
            crate::task::panic_message(&*panic)
        ))),
        Err(e) => Reply::Failed(Failure::Message(format!("the call did not run: {e}"))),
    }
}

/// A proxy to a value of your own type held by a [`Manager`](crate::Manager): made with
/// [`Manager::managed`](crate::Manager::managed) for a type registered with
/// [`ManagerBuilder::register`](crate::ManagerBuilder::register), or fetched by name. Cloning
/// a proxy refers to the same value.
pub struct Proxy<M>(pub(super) Handle<M>);
proxy_traits!(Proxy<M>);

impl<M: Managed> Proxy<M> {
    /// Sends `request` to the server, which runs [`Managed::call`] on the value, and returns
    /// its reply.
    ///
    /// # Errors
    /// [`Error::Manager`](crate::Error::Manager) if the method panicked (the message says so) or
    /// the request could not be decoded by the server; [`Error::Encode`](crate::Error::Encode) /
    /// [`Error::Decode`](crate::Error::Decode); [`Error::ManagerLost`](crate::Error::ManagerLost)
    /// if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have run.
    pub async fn call(&self, request: M::Request) -> Result<M::Reply> {
        let req = Request::User(self.0.id, encode(&self.0.link, &request)?);
        match self.0.call(req).await? {
            Reply::Item(Some(bytes)) => decode(&self.0.link, bytes),
            r => Err(unexpected(r)),
        }
    }
}
