//! [`DictProxy`]: a shared dict (Python's `Manager().dict()`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::collections::HashMap;

use super::proto::{Bytes, DictOp, Reply, Request};
use super::{Handle, decode, encode, unexpected};
use crate::error::Result;

/// A dict held by a [`Manager`](crate::Manager) (Python's `DictProxy`). Keys are equal when
/// their encodings are; items keep their insertion order. Cloning a proxy refers to the
/// same dict.
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
///
/// A removal leaves a hole where its pair was, so that it costs the same whatever the size
/// of the dict, as Python's `del d[k]` does (closing the gap moved every later pair and
/// renumbered their keys: emptying a dict of n keys one by one took n² steps, and held
/// every other client of the server up meanwhile). The holes are squeezed out once they are
/// as many as the pairs, a cost that the removals that made them pay for.
#[derive(Default)]
pub(super) struct Dict {
    /// The pairs in insertion order; `None` where one was removed.
    pairs: Vec<Option<(Bytes, Bytes)>>,
    /// Each key's place in `pairs`.
    index: HashMap<Bytes, usize>,
}

impl Dict {
    pub(super) fn insert(&mut self, k: Bytes, v: Bytes) -> Option<Bytes> {
        if let Some(&i) = self.index.get(&k)
            && let Some((_, old)) = &mut self.pairs[i]
        {
            return Some(std::mem::replace(old, v));
        }
        self.index.insert(k.clone(), self.pairs.len());
        self.pairs.push(Some((k, v)));
        None
    }

    fn get(&self, k: &Bytes) -> Option<&Bytes> {
        let &i = self.index.get(k)?;
        self.pairs[i].as_ref().map(|(_, v)| v)
    }

    fn remove(&mut self, k: &Bytes) -> Option<Bytes> {
        let i = self.index.remove(k)?;
        let (_, v) = self.pairs[i].take()?;
        self.tidy();
        Some(v)
    }

    /// Drops the holes at the end (so that the last slot holds the latest pair), and
    /// squeezes out the others once they are as many as the pairs.
    fn tidy(&mut self) {
        while matches!(self.pairs.last(), Some(None)) {
            self.pairs.pop();
        }
        if self.pairs.len() - self.index.len() > self.index.len() {
            self.pairs.retain(Option::is_some);
            for (i, (k, _)) in self.pairs.iter().flatten().enumerate() {
                if let Some(at) = self.index.get_mut(k) {
                    *at = i;
                }
            }
        }
    }

    /// The pairs, in insertion order.
    fn items(&self) -> Vec<(Bytes, Bytes)> {
        self.pairs.iter().flatten().cloned().collect()
    }

    pub(super) fn handle(&mut self, op: DictOp) -> Reply {
        match op {
            DictOp::Insert(k, v) => Reply::Item(self.insert(k, v)),
            DictOp::Get(k) => Reply::Item(self.get(&k).cloned()),
            DictOp::Remove(k) => Reply::Item(self.remove(&k)),
            DictOp::Contains(k) => Reply::Bool(self.index.contains_key(&k)),
            DictOp::Len => Reply::Len(self.index.len() as u64),
            DictOp::Items => Reply::Pairs(self.items()),
            DictOp::Clear => {
                *self = Dict::default();
                Reply::Done
            }
            DictOp::SetDefault(k, v) => Reply::Item(Some(match self.get(&k) {
                Some(old) => old.clone(),
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
            DictOp::PopItem => match self.pairs.pop().flatten() {
                Some((k, v)) => {
                    self.index.remove(&k);
                    self.tidy();
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

    fn key(i: u32) -> Bytes {
        b(&i.to_be_bytes())
    }

    fn keys(d: &Dict) -> Vec<Bytes> {
        d.items().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn dict_keeps_insertion_order_across_removals() {
        let mut d = Dict::default();
        for k in [b"a", b"b", b"c", b"d"] {
            d.insert(b(k), b(k));
        }
        assert_eq!(d.remove(&b(b"b")), Some(b(b"b")));
        d.insert(b(b"b"), b(b"B"));
        assert_eq!(keys(&d), [b(b"a"), b(b"c"), b(b"d"), b(b"b")]);
        assert_eq!(d.get(&b(b"d")), Some(&b(b"d")));
    }

    #[test]
    fn a_removal_moves_no_other_pair() {
        // Closing the gap renumbered every later key: emptying a dict of n keys one by
        // one took n² steps.
        let mut d = Dict::default();
        for i in 0..100 {
            d.insert(key(i), key(i));
        }
        let places = |d: &Dict| (50..100).map(|i| d.index[&key(i)]).collect::<Vec<_>>();
        let before = places(&d);
        d.remove(&key(10));
        assert_eq!(places(&d), before);
    }

    #[test]
    fn order_and_popitem_hold_across_holes_and_their_squeezing() {
        let mut d = Dict::default();
        let mut model: Vec<(u32, u32)> = Vec::new();
        for step in 0..5000u32 {
            let k = step.wrapping_mul(7919) % 97;
            match step % 5 {
                0 | 1 => {
                    d.insert(key(k), key(step));
                    match model.iter_mut().find(|(mk, _)| *mk == k) {
                        Some(pair) => pair.1 = step,
                        None => model.push((k, step)),
                    }
                }
                2 | 3 => {
                    let had = model.iter().position(|(mk, _)| *mk == k);
                    let gone = had.map(|i| key(model.remove(i).1));
                    assert_eq!(d.remove(&key(k)), gone);
                }
                _ => {
                    let want = model.pop().map(|(k, v)| (key(k), key(v)));
                    let Reply::Pairs(got) = d.handle(DictOp::PopItem) else {
                        panic!("popitem gave no pairs");
                    };
                    assert_eq!(got.into_iter().next(), want);
                }
            }
            let want: Vec<_> = model.iter().map(|(k, _)| key(*k)).collect();
            assert_eq!(keys(&d), want, "step {step}");
            assert!(d.pairs.len() <= 2 * d.index.len(), "holes pile up");
        }
    }
}
