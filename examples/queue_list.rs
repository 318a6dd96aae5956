//! Seed 004: a child puts a Python list of mixed values on a `Queue`.
//!
//! ```python
//! from multiprocessing import Process, Queue
//!
//! def f(q):
//!     q.put([42, None, 'hello'])
//!
//! if __name__ == '__main__':
//!     q = Queue()
//!     p = Process(target=f, args=(q,))
//!     p.start()
//!     print(q.get())    # prints "[42, None, 'hello']"
//!     p.join()
//! ```
//!
//! A Python list may mix types; in Rust the mix is an enum, and the item a `Vec` of it.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

/// One element of the list: an integer, `None` or a string.
#[derive(Debug, Serialize, Deserialize)]
enum Value {
    Int(i64),
    None,
    Str(String),
}

/// Prints like Python's `repr`.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::None => f.write_str("None"),
            Value::Str(s) => write!(f, "'{s}'"),
        }
    }
}

async fn f(q: mp::Queue<Vec<Value>>) -> mp::Result<()> {
    q.put(vec![
        Value::Int(42),
        Value::None,
        Value::Str("hello".into()),
    ])
    .await
    .map_err(mp::Error::from)?;
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let q = mp::Queue::<Vec<Value>>::new()?;
    let mut p = mp::Process::new(f, (q.clone(),)).start().await?;
    let list = q.get().await?;
    let items: Vec<String> = list.iter().map(Value::to_string).collect();
    println!("[{}]", items.join(", "));
    p.join().await?;
    Ok(())
}
