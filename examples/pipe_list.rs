//! Seed 003: a child sends a Python list of mixed values through a `Pipe`.
//!
//! ```python
//! def f(conn):
//!     conn.send([42, None, 'hello'])
//!     conn.close()
//!
//! if __name__ == '__main__':
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=f, args=(child_conn,))
//!     p.start()
//!     print(parent_conn.recv())   # prints "[42, None, 'hello']"
//!     p.join()
//! ```
//!
//! A Python list may mix types; in Rust the mix is an enum, and the message a `Vec` of it.

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

async fn f(conn: mp::Connection<Vec<Value>>) -> mp::Result<()> {
    let list = vec![Value::Int(42), Value::None, Value::Str("hello".into())];
    conn.send(&list).await?;
    conn.close();
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let (parent_conn, child_conn) = mp::Pipe::<Vec<Value>>::new()?;
    let mut p = mp::Process::new(f, (child_conn,)).start().await?;
    let list = parent_conn.recv().await?;
    let items: Vec<String> = list.iter().map(Value::to_string).collect();
    println!("[{}]", items.join(", "));
    p.join().await?;
    Ok(())
}
