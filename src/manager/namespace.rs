//! [`NamespaceProxy`]: attributes by name (Python's `manager.Namespace()`), each any serde
//! value, shown as Python shows a namespace: `Namespace(a=1, b='x')`.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::proto::{NamespaceOp, Reply, Request};
use super::{Handle, decode, encode, expect_done, unexpected};
use crate::error::{Error, Result};
use crate::shareable_list::ShareableItem;

/// A namespace held by a [`Manager`](crate::Manager) (Python's `manager.Namespace()`):
/// named attributes, each of its own type. Attributes keep the order they were first set
/// in. Cloning a proxy refers to the same namespace.
pub struct NamespaceProxy(pub(super) Handle<()>);
proxy_traits!(NamespaceProxy);

impl NamespaceProxy {
    async fn op(&self, op: NamespaceOp) -> Result<Reply> {
        self.0.call(Request::Namespace(self.0.id, op)).await
    }

    /// `ns.name`.
    ///
    /// # Errors
    /// [`Error::Manager`] if there is no such attribute (Python's `AttributeError`);
    /// [`Error::Decode`] if it is not a `T`; [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        match self.op(NamespaceOp::Get(name.to_string())).await? {
            Reply::Item(Some(v)) => decode(&self.0.link, v),
            Reply::Item(None) => Err(no_attribute(name)),
            r => Err(unexpected(r)),
        }
    }

    /// `ns.name = value`.
    ///
    /// # Errors
    /// [`Error::Encode`]; [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have set the attribute.
    pub async fn set<T: Serialize>(&self, name: &str, value: T) -> Result<()> {
        let op = NamespaceOp::Set(name.to_string(), encode(&self.0.link, &value)?);
        expect_done(self.op(op).await?)
    }

    /// `del ns.name`.
    ///
    /// # Errors
    /// [`Error::Manager`] if there is no such attribute; [`Error::ManagerLost`] if the server is
    /// gone.
    ///
    /// # Cancel safety
    /// Not cancel safe: a dropped call may or may not have removed the attribute.
    pub async fn remove(&self, name: &str) -> Result<()> {
        match self.op(NamespaceOp::Remove(name.to_string())).await? {
            Reply::Item(Some(_)) => Ok(()),
            Reply::Item(None) => Err(no_attribute(name)),
            r => Err(unexpected(r)),
        }
    }

    /// The attribute names, in the order they were first set.
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn names(&self) -> Result<Vec<String>> {
        match self.op(NamespaceOp::Items).await? {
            Reply::Named(items) => Ok(items.into_iter().map(|(k, _)| k).collect()),
            r => Err(unexpected(r)),
        }
    }

    /// Python's `repr(ns)`: `Namespace(a=1, b='x')`, each value as Python would print it
    /// (strings quoted, `True`, `None`, lists and dicts). As in Python, the attributes whose
    /// names start with `_` are not shown, and the others are shown as `name=value` sorted,
    /// whatever order they were set in.
    ///
    /// # Errors
    /// [`Error::ManagerLost`] if the server is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: it changes nothing.
    pub async fn repr(&self) -> Result<String> {
        match self.op(NamespaceOp::Items).await? {
            Reply::Named(items) => {
                let mut shown: Vec<String> = items
                    .iter()
                    .filter(|(k, _)| !k.starts_with('_'))
                    .map(|(k, v)| match rmp_serde::from_slice::<PyRepr>(v) {
                        Ok(r) => format!("{k}={}", r.0),
                        Err(_) => format!("{k}=<?>"),
                    })
                    .collect();
                shown.sort();
                Ok(format!("Namespace({})", shown.join(", ")))
            }
            r => Err(unexpected(r)),
        }
    }
}

fn no_attribute(name: &str) -> Error {
    Error::Manager(format!("'Namespace' object has no attribute '{name}'"))
}

/// Any encoded value, written as Python's `repr` writes the value it stands for.
pub(super) struct PyRepr(pub(super) String);

impl<'de> Deserialize<'de> for PyRepr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<PyRepr, D::Error> {
        d.deserialize_any(ReprVisitor).map(PyRepr)
    }
}

struct ReprVisitor;

impl<'de> Visitor<'de> for ReprVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<String, E> {
        Ok(if v { "True" } else { "False" }.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<String, E> {
        Ok(v.to_string())
    }
    // Floats, strings and bytes as a `ShareableItem` shows them, which is Python's `repr`.
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<String, E> {
        Ok(ShareableItem::Float(v).to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<String, E> {
        Ok(ShareableItem::Str(v.to_string()).to_string())
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> std::result::Result<String, E> {
        Ok(ShareableItem::Bytes(v.to_vec()).to_string())
    }
    fn visit_none<E: de::Error>(self) -> std::result::Result<String, E> {
        Ok("None".to_string())
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<String, E> {
        Ok("None".to_string())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<String, D::Error> {
        d.deserialize_any(ReprVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some(PyRepr(s)) = seq.next_element()? {
            items.push(s);
        }
        Ok(format!("[{}]", items.join(", ")))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some((PyRepr(k), PyRepr(v))) = map.next_entry()? {
            items.push(format!("{k}: {v}"));
        }
        Ok(format!("{{{}}}", items.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr<T: Serialize>(v: T) -> String {
        let bytes = rmp_serde::to_vec(&v).unwrap();
        rmp_serde::from_slice::<PyRepr>(&bytes).unwrap().0
    }

    #[test]
    fn values_are_shown_as_python_shows_them() {
        assert_eq!(repr(1), "1");
        assert_eq!(repr(-3i8), "-3");
        assert_eq!(repr(2.0), "2.0");
        assert_eq!(repr("x"), "'x'");
        assert_eq!(repr("it's"), "\"it's\"");
        assert_eq!(repr(true), "True");
        assert_eq!(repr(Option::<u8>::None), "None");
        assert_eq!(repr(vec![1, 2]), "[1, 2]");
        let mut m = std::collections::BTreeMap::new();
        m.insert("k", 1);
        assert_eq!(repr(m), "{'k': 1}");
    }

    /// Bytes encoded as bytes (serde's `serialize_bytes`), not as a list of numbers.
    struct Raw(&'static [u8]);

    impl Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[test]
    fn floats_strings_and_bytes_are_shown_as_python_shows_them() {
        assert_eq!(repr(1e16), "1e+16");
        assert_eq!(repr(1.5e-7), "1.5e-07");
        assert_eq!(repr(-0.0), "-0.0");
        assert_eq!(repr(f64::NAN), "nan");
        assert_eq!(repr(f64::NEG_INFINITY), "-inf");
        assert_eq!(repr(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(repr("a\rb\u{0}"), "'a\\rb\\x00'");
        assert_eq!(repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(repr(Raw(b"it's\t\xff")), "b\"it's\\t\\xff\"");
    }
}
