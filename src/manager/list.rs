//! [`ListProxy`]: a shared list (Python's `Manager().list()`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::proto::{ListOp, Reply, Request};
use super::{Handle, decode, encode, unexpected};
use crate::error::Result;

/// A list held by a [`Manager`](crate::Manager) (Python's `ListProxy`). Indices follow
/// Python's rules: negative ones count from the end. Cloning a proxy refers to the same
/// list.
///
/// Every method is cancel safe in this sense: a dropped call may or may not have been carried
/// out by the server, and the proxy stays usable.
pub struct ListProxy<T>(pub(super) Handle<T>);
proxy_traits!(ListProxy<T>);

impl<T: Serialize + DeserializeOwned> ListProxy<T> {
    async fn op(&self, op: ListOp) -> Result<Reply> {
        self.0.link.call(Request::List(self.0.id, op)).await
    }

    async fn done(&self, op: ListOp) -> Result<()> {
        match self.op(op).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn item(&self, op: ListOp) -> Result<Option<T>> {
        match self.op(op).await? {
            Reply::Item(v) => v.map(|b| decode(&self.0.link, b)).transpose(),
            r => Err(unexpected(r)),
        }
    }

    /// `l.append(value)`.
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), or
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn append(&self, value: T) -> Result<()> {
        self.done(ListOp::Append(encode(&self.0.link, &value)?))
            .await
    }

    /// `l.extend(values)`.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn extend(&self, values: impl IntoIterator<Item = T>) -> Result<()> {
        let values = values
            .into_iter()
            .map(|v| encode(&self.0.link, &v))
            .collect::<Result<_>>()?;
        self.done(ListOp::Extend(values)).await
    }

    /// `l[index]`, or `None` out of range.
    ///
    /// # Errors
    /// [`Error::Decode`](crate::Error::Decode), or
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn get(&self, index: i64) -> Result<Option<T>> {
        self.item(ListOp::Get(index)).await
    }

    /// `l[index] = value`.
    ///
    /// # Errors
    /// [`Error::Manager`](crate::Error::Manager) if `index` is out of range (Python's
    /// `IndexError`); as [`append`](Self::append) otherwise.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn set(&self, index: i64, value: T) -> Result<()> {
        self.done(ListOp::Set(index, encode(&self.0.link, &value)?))
            .await
    }

    /// `l.insert(index, value)` (an index out of range inserts at that end, as in Python).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn insert(&self, index: i64, value: T) -> Result<()> {
        self.done(ListOp::Insert(index, encode(&self.0.link, &value)?))
            .await
    }

    /// `l.pop(index)`, or `None` out of range; `-1` is the last item.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn pop(&self, index: i64) -> Result<Option<T>> {
        self.item(ListOp::Pop(index)).await
    }

    /// `len(l)`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn len(&self) -> Result<usize> {
        match self.op(ListOp::Len).await? {
            Reply::Len(n) => Ok(n as usize),
            r => Err(unexpected(r)),
        }
    }

    /// `len(l) == 0`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }

    /// `l.index(value)`: the position of the first item equal to `value` (items are equal
    /// when their encodings are); `None` if there is none (Python's `ValueError`).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn index(&self, value: &T) -> Result<Option<usize>> {
        match self.op(ListOp::Index(encode(&self.0.link, value)?)).await? {
            Reply::Position(i) => Ok(i.map(|i| i as usize)),
            r => Err(unexpected(r)),
        }
    }

    /// `value in l`.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn contains(&self, value: &T) -> Result<bool> {
        Ok(self.index(value).await?.is_some())
    }

    /// `l.count(value)`: how many items equal `value`.
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn count(&self, value: &T) -> Result<usize> {
        match self.op(ListOp::Count(encode(&self.0.link, value)?)).await? {
            Reply::Len(n) => Ok(n as usize),
            r => Err(unexpected(r)),
        }
    }

    /// `l.remove(value)`: takes out the first item equal to `value`; whether there was one
    /// (Python raises `ValueError` when there is not).
    ///
    /// # Errors
    /// As [`append`](Self::append).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn remove(&self, value: &T) -> Result<bool> {
        match self
            .op(ListOp::Remove(encode(&self.0.link, value)?))
            .await?
        {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// `l.reverse()`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn reverse(&self) -> Result<()> {
        self.done(ListOp::Reverse).await
    }

    /// `l.clear()`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn clear(&self) -> Result<()> {
        self.done(ListOp::Clear).await
    }

    /// `l[:]`: a copy of the whole list.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn to_vec(&self) -> Result<Vec<T>> {
        match self.op(ListOp::Items).await? {
            Reply::Items(items) => items.into_iter().map(|b| decode(&self.0.link, b)).collect(),
            r => Err(unexpected(r)),
        }
    }
}
