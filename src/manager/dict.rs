//! [`DictProxy`]: a shared dict (Python's `Manager().dict()`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::HashMap;

use super::proto::{Bytes, DictOp, Reply, Request};
use super::{Handle, decode, encode, unexpected};
use crate::error::Result;

/// A dict held by a [`Manager`](crate::Manager) (Python's `DictProxy`). Keys are equal when their encodings
/// are; items keep their insertion order. Cloning a proxy refers to the same dict.
///
/// Every method is cancel safe in this sense: a dropped call may or may not have been carried
/// out by the server, and the proxy stays usable.
pub struct DictProxy<K, V>(pub(super) Handle<(K, V)>);
proxy_traits!(DictProxy<K, V>);

impl<K, V> DictProxy<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    async fn op(&self, op: DictOp) -> Result<Reply> {
        self.0.link.call(Request::Dict(self.0.id, op)).await
    }

    async fn item(&self, op: DictOp) -> Result<Option<V>> {
        match self.op(op).await? {
            Reply::Item(v) => v.map(|b| decode(&self.0.link, b)).transpose(),
            r => Err(unexpected(r)),
        }
    }

    /// `d[key] = value`; returns the value it replaced.
    ///
    /// # Errors
    /// [`Error::Encode`](crate::Error::Encode), [`Error::Decode`](crate::Error::Decode), or
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn insert(&self, key: K, value: V) -> Result<Option<V>> {
        self.item(DictOp::Insert(
            encode(&self.0.link, &key)?,
            encode(&self.0.link, &value)?,
        ))
        .await
    }

    /// `d.get(key)`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn get(&self, key: &K) -> Result<Option<V>> {
        self.item(DictOp::Get(encode(&self.0.link, key)?)).await
    }

    /// `d.pop(key, None)`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn remove(&self, key: &K) -> Result<Option<V>> {
        self.item(DictOp::Remove(encode(&self.0.link, key)?)).await
    }

    /// `key in d`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn contains_key(&self, key: &K) -> Result<bool> {
        match self
            .op(DictOp::Contains(encode(&self.0.link, key)?))
            .await?
        {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// `len(d)`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn len(&self) -> Result<usize> {
        match self.op(DictOp::Len).await? {
            Reply::Len(n) => Ok(n as usize),
            r => Err(unexpected(r)),
        }
    }

    /// `len(d) == 0`.
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

    /// `list(d.items())`, in insertion order.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn items(&self) -> Result<Vec<(K, V)>> {
        match self.op(DictOp::Items).await? {
            Reply::Pairs(pairs) => pairs
                .into_iter()
                .map(|(k, v)| Ok((decode(&self.0.link, k)?, decode(&self.0.link, v)?)))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    /// `list(d.keys())`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn keys(&self) -> Result<Vec<K>> {
        Ok(self.items().await?.into_iter().map(|(k, _)| k).collect())
    }

    /// `list(d.values())`.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn values(&self) -> Result<Vec<V>> {
        Ok(self.items().await?.into_iter().map(|(_, v)| v).collect())
    }

    /// `d.setdefault(key, default)`: the value under `key`, which is `default`, inserted now,
    /// if there was none.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn setdefault(&self, key: K, default: V) -> Result<V> {
        let op = DictOp::SetDefault(encode(&self.0.link, &key)?, encode(&self.0.link, &default)?);
        match self.item(op).await? {
            Some(v) => Ok(v),
            None => Err(unexpected(Reply::Item(None))),
        }
    }

    /// `d.update(pairs)`: inserts every pair, in one call to the server.
    ///
    /// # Errors
    /// As [`insert`](Self::insert); nothing is inserted if a pair cannot be encoded.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn update(&self, pairs: impl IntoIterator<Item = (K, V)>) -> Result<()> {
        let pairs = pairs
            .into_iter()
            .map(|(k, v)| Ok((encode(&self.0.link, &k)?, encode(&self.0.link, &v)?)))
            .collect::<Result<Vec<_>>>()?;
        match self.op(DictOp::Update(pairs)).await? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// `d.popitem()`: takes out the pair inserted last; `None` if the dict is empty
    /// (Python's `KeyError`).
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn popitem(&self) -> Result<Option<(K, V)>> {
        match self.op(DictOp::PopItem).await? {
            Reply::Pairs(pairs) => pairs
                .into_iter()
                .next()
                .map(|(k, v)| Ok((decode(&self.0.link, k)?, decode(&self.0.link, v)?)))
                .transpose(),
            r => Err(unexpected(r)),
        }
    }

    /// `d.clear()`.
    ///
    /// # Errors
    /// [`Error::ManagerLost`](crate::Error::ManagerLost) if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe in this sense: a dropped call may or may not have been carried out by the
    /// server, and the proxy stays usable (a late reply is recognised by its id and skipped).
    pub async fn clear(&self) -> Result<()> {
        self.op(DictOp::Clear).await.map(drop)
    }
}

/// The server's side: a dict that remembers insertion order, as Python's does.
#[derive(Default)]
pub(super) struct Dict {
    pairs: Vec<(Bytes, Bytes)>,
    index: HashMap<Bytes, usize>,
}

impl Dict {
    pub(super) fn insert(&mut self, k: Bytes, v: Bytes) -> Option<Bytes> {
        match self.index.get(&k) {
            Some(&i) => Some(std::mem::replace(&mut self.pairs[i].1, v)),
            None => {
                self.index.insert(k.clone(), self.pairs.len());
                self.pairs.push((k, v));
                None
            }
        }
    }

    fn remove(&mut self, k: &Bytes) -> Option<Bytes> {
        let i = self.index.remove(k)?;
        let (_, v) = self.pairs.remove(i);
        for (_, j) in self.index.iter_mut().filter(|(_, j)| **j > i) {
            *j -= 1;
        }
        Some(v)
    }

    pub(super) fn handle(&mut self, op: DictOp) -> Reply {
        match op {
            DictOp::Insert(k, v) => Reply::Item(self.insert(k, v)),
            DictOp::Get(k) => Reply::Item(self.index.get(&k).map(|&i| self.pairs[i].1.clone())),
            DictOp::Remove(k) => Reply::Item(self.remove(&k)),
            DictOp::Contains(k) => Reply::Bool(self.index.contains_key(&k)),
            DictOp::Len => Reply::Len(self.pairs.len() as u64),
            DictOp::Items => Reply::Pairs(self.pairs.clone()),
            DictOp::Clear => {
                *self = Dict::default();
                Reply::Done
            }
            DictOp::SetDefault(k, v) => Reply::Item(Some(match self.index.get(&k) {
                Some(&i) => self.pairs[i].1.clone(),
                None => {
                    self.insert(k, v.clone());
                    v
                }
            })),
            DictOp::Update(pairs) => {
                for (k, v) in pairs {
                    self.insert(k, v);
                }
                Reply::Done
            }
            DictOp::PopItem => match self.pairs.pop() {
                Some((k, v)) => {
                    self.index.remove(&k);
                    Reply::Pairs(vec![(k, v)])
                }
                None => Reply::Pairs(Vec::new()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    fn b(x: &[u8]) -> Bytes {
        ByteBuf::from(x.to_vec())
    }

    #[test]
    fn dict_keeps_insertion_order_across_removals() {
        let mut d = Dict::default();
        for k in [b"a", b"b", b"c", b"d"] {
            d.insert(b(k), b(k));
        }
        assert_eq!(d.remove(&b(b"b")), Some(b(b"b")));
        d.insert(b(b"b"), b(b"B"));
        let keys: Vec<_> = d.pairs.iter().map(|(k, _)| k.to_vec()).collect();
        assert_eq!(keys, [b"a", b"c", b"d", b"b"]);
        assert_eq!(d.index[&b(b"d")], 2);
    }
}
