//! [`ArrayProxy`]: an array held by a manager (Python's `manager.Array(typecode, seq)`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proto::{ArrayOp, Reply, Request};
use super::{Handle, decode, encode, expect_done, expect_len, unexpected};
use crate::error::Result;

/// An array of fixed length held by a [`Manager`](crate::Manager) (Python's `ArrayProxy`,
/// from `manager.Array(...)`). An index past the end is
/// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange), as with the crate's
/// [`Array`](crate::Array).
pub struct ArrayProxy<T>(pub(super) Handle<T>);
proxy_traits!(ArrayProxy<T>);

impl<T: Serialize + DeserializeOwned> ArrayProxy<T> {
    async fn op(&self, op: ArrayOp) -> Result<Reply> {
        self.0.call(Request::Array(self.0.id, op)).await
    }

    /// `a[index]`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange);
    /// [`Error::Decode`](crate::Error::Decode); [`Error::ManagerLost`](crate::Error::ManagerLost)
    /// if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn get(&self, index: usize) -> Result<T> {
        match self.op(ArrayOp::Get(index)).await? {
            Reply::Item(Some(v)) => decode(&self.0.link, v),
            r => Err(unexpected(r)),
        }
    }

    /// `a[index] = value`.
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange);
    /// [`Error::Encode`](crate::Error::Encode); [`Error::ManagerLost`](crate::Error::ManagerLost)
    /// if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have stored the value.
    pub async fn set(&self, index: usize, value: T) -> Result<()> {
        expect_done(
            self.op(ArrayOp::Set(index, encode(&self.0.link, &value)?))
                .await?,
        )
    }

    /// `len(a)`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn len(&self) -> Result<usize> {
        expect_len(self.op(ArrayOp::Len).await?)
    }

    /// `len(a) == 0`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// `a[:]`: every item.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode); [`Error::ManagerLost`](crate::Error::ManagerLost)
    /// if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn to_vec(&self) -> Result<Vec<T>> {
        match self.op(ArrayOp::Items).await? {
            Reply::Items(items) => items.into_iter().map(|b| decode(&self.0.link, b)).collect(),
            r => Err(unexpected(r)),
        }
    }
}
