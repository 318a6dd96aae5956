//! The manager's server process: it holds the shared objects, as encoded bytes, and answers
//! requests from every connection, one request at a time per connection.
//!
//! Connections arrive on the registration socket: each message carries the server's end of a
//! fresh socket pair. When every holder of the registration socket (the manager and all
//! proxies, in every process) is gone, the server has no one left to serve and exits.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::Interest;

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::{Fd, FrameBuf, Framed};

/// An encoded value.
pub(super) type Bytes = ByteBuf;

/// What a connection asks, with the request id its reply carries.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    Create(Initial),
    Dict(u64, DictOp),
    List(u64, ListOp),
    Value(u64, ValueOp),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Initial {
    Dict(Vec<(Bytes, Bytes)>),
    List(Vec<Bytes>),
    Value(Bytes),
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum DictOp {
    Insert(Bytes, Bytes),
    Get(Bytes),
    Remove(Bytes),
    Contains(Bytes),
    Len,
    Items,
    Clear,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ListOp {
    Append(Bytes),
    Extend(Vec<Bytes>),
    Get(i64),
    Set(i64, Bytes),
    Insert(i64, Bytes),
    Pop(i64),
    Len,
    Reverse,
    Items,
    Clear,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ValueOp {
    Get,
    Set(Bytes),
}

/// The server's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Done,
    Id(u64),
    Bool(bool),
    Len(u64),
    Item(Option<Bytes>),
    Items(Vec<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    /// The request could not be carried out (an index out of range, an unknown object).
    Failed(String),
}

/// A dict that remembers insertion order, as Python's does.
#[derive(Default)]
struct Dict {
    pairs: Vec<(Bytes, Bytes)>,
    index: HashMap<Bytes, usize>,
}

impl Dict {
    fn insert(&mut self, k: Bytes, v: Bytes) -> Option<Bytes> {
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
}

enum Object {
    Dict(Dict),
    List(Vec<Bytes>),
    Value(Bytes),
}

#[derive(Default)]
struct State {
    objects: HashMap<u64, Object>,
    next: u64,
}

/// Python's index rules: negative counts from the end; `None` if out of range.
fn position(len: usize, i: i64) -> Option<usize> {
    let len = len as i64;
    let i = if i < 0 { i + len } else { i };
    (0..len).contains(&i).then_some(i as usize)
}

fn missing(id: u64) -> Reply {
    Reply::Failed(format!("the manager holds no such object (#{id})"))
}

impl State {
    fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Create(initial) => {
                let object = match initial {
                    Initial::Dict(pairs) => {
                        let mut d = Dict::default();
                        for (k, v) in pairs {
                            d.insert(k, v);
                        }
                        Object::Dict(d)
                    }
                    Initial::List(items) => Object::List(items),
                    Initial::Value(v) => Object::Value(v),
                };
                self.next += 1;
                self.objects.insert(self.next, object);
                Reply::Id(self.next)
            }
            Request::Dict(id, op) => match self.objects.get_mut(&id) {
                Some(Object::Dict(d)) => match op {
                    DictOp::Insert(k, v) => Reply::Item(d.insert(k, v)),
                    DictOp::Get(k) => Reply::Item(d.index.get(&k).map(|&i| d.pairs[i].1.clone())),
                    DictOp::Remove(k) => Reply::Item(d.remove(&k)),
                    DictOp::Contains(k) => Reply::Bool(d.index.contains_key(&k)),
                    DictOp::Len => Reply::Len(d.pairs.len() as u64),
                    DictOp::Items => Reply::Pairs(d.pairs.clone()),
                    DictOp::Clear => {
                        *d = Dict::default();
                        Reply::Done
                    }
                },
                _ => missing(id),
            },
            Request::List(id, op) => match self.objects.get_mut(&id) {
                Some(Object::List(l)) => match op {
                    ListOp::Append(v) => {
                        l.push(v);
                        Reply::Done
                    }
                    ListOp::Extend(vs) => {
                        l.extend(vs);
                        Reply::Done
                    }
                    ListOp::Get(i) => Reply::Item(position(l.len(), i).map(|i| l[i].clone())),
                    ListOp::Set(i, v) => match position(l.len(), i) {
                        Some(i) => {
                            l[i] = v;
                            Reply::Done
                        }
                        None => Reply::Failed(format!("list index {i} out of range")),
                    },
                    ListOp::Insert(i, v) => {
                        // Python clamps an insertion index into range.
                        let len = l.len() as i64;
                        let at = if i < 0 { (i + len).max(0) } else { i.min(len) };
                        l.insert(at as usize, v);
                        Reply::Done
                    }
                    ListOp::Pop(i) => Reply::Item(position(l.len(), i).map(|i| l.remove(i))),
                    ListOp::Len => Reply::Len(l.len() as u64),
                    ListOp::Reverse => {
                        l.reverse();
                        Reply::Done
                    }
                    ListOp::Items => Reply::Items(l.clone()),
                    ListOp::Clear => {
                        l.clear();
                        Reply::Done
                    }
                },
                _ => missing(id),
            },
            Request::Value(id, op) => match self.objects.get_mut(&id) {
                Some(Object::Value(v)) => match op {
                    ValueOp::Get => Reply::Item(Some(v.clone())),
                    ValueOp::Set(new) => {
                        *v = new;
                        Reply::Done
                    }
                },
                _ => missing(id),
            },
        }
    }
}

/// The server process's target.
pub(super) async fn serve(registration: Fd) {
    if let Err(e) = accept_loop(registration.into_owned()).await {
        eprintln!("tokio-multiprocessing manager: {e}");
        std::process::exit(1);
    }
}

async fn accept_loop(registration: OwnedFd) -> Result<()> {
    sys::set_nonblocking(registration.as_fd(), true)?;
    let reg = sys::register_owned(registration, Interest::READABLE)?;
    let state = Arc::new(Mutex::new(State::default()));
    let mut fds = std::collections::VecDeque::new();
    loop {
        let mut buf = [0u8; 16];
        let mut guard = reg.readable().await?;
        match guard.try_io(|r| sys::recv_with_fds(r.get_ref().as_fd(), &mut buf, &mut fds)) {
            Ok(Ok(0)) => return Ok(()), // every holder of the registration socket is gone
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_would_block) => continue,
        }
        for conn in fds.drain(..) {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_connection(conn, state).await {
                    tracing::debug!("manager connection ended: {e}");
                }
            });
        }
    }
}

async fn serve_connection(conn: OwnedFd, state: Arc<Mutex<State>>) -> Result<()> {
    let link = Framed::unix(conn)?;
    loop {
        let frame = match link.recv().await {
            Ok(f) => f,
            Err(Error::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let (id, reply) = match frame.decode::<(u64, Request)>() {
            Ok((id, req)) => (
                id,
                state.lock().unwrap_or_else(|p| p.into_inner()).handle(req),
            ),
            Err(e) => (0, Reply::Failed(format!("malformed request: {e}"))),
        };
        link.send(&mut FrameBuf::of(&(id, reply))?).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn python_index_rules() {
        assert_eq!(position(3, -1), Some(2));
        assert_eq!(position(3, 3), None);
        assert_eq!(position(3, -4), None);
        assert_eq!(position(0, 0), None);
    }
}
