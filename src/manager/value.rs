//! [`ValueProxy`]: a shared value (Python's `Manager().Value(typecode, value)`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proto::{Reply, Request, ValueOp};
use super::{Handle, decode, encode, unexpected};
use crate::error::Result;

/// A value held by a [`Manager`](crate::Manager) (Python's `ValueProxy`, from
/// `manager.Value(...)`).
///
/// Every method is cancel safe in this sense: a dropped call may or may not have been carried
/// out by the server, and the proxy stays usable.
pub struct ValueProxy<T>(pub(super) Handle<T>);
proxy_traits!(ValueProxy<T>);

impl<T: Serialize + DeserializeOwned> ValueProxy<T> {
    /// `v.value`.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode), or
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn get(&self) -> Result<T> {
        match self
            .0
            .link
            .call(Request::Value(self.0.id, ValueOp::Get))
            .await?
        {
            Reply::Item(Some(v)) => decode(&self.0.link, v),
            r => Err(unexpected(r)),
        }
    }

    /// `v.value = value`.
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), or
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn set(&self, value: T) -> Result<()> {
        let op = ValueOp::Set(encode(&self.0.link, &value)?);
        match self.0.link.call(Request::Value(self.0.id, op)).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }
}
