//! Seed 000's `Manager` example: a child fills a shared dict, reverses a shared list and sets
//! a shared value; the parent prints them.
//!
//! ```python
//! def f(d, l, t):
//!     d['name'] = 'dfg'
//!     d['age'] = 38
//!     d['sex'] = 'Male'
//!     d['affiliation'] = 'SDIBT'
//!     l.reverse()
//!     t.value = 3
//!
//! if __name__ == '__main__':
//!     with Manager() as manager:
//!         d = manager.dict()
//!         l = manager.list(range(10))
//!         t = manager.Value('i', 0)
//!         p = Process(target=f, args=(d, l, t))
//!         p.start()
//!         p.join()
//!         for item in d.items():
//!             print(item)
//!         print(l)
//!         print(t.value)
//! ```

use serde::{Deserialize, Serialize};
use tokio_multiprocessing::{self as mp, DictProxy, ListProxy, Manager, Process, ValueProxy};

/// Python's dict held strings and numbers side by side; in Rust, an enum says so.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Field {
    Text(String),
    Number(i64),
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Text(s) => write!(f, "{s:?}"),
            Field::Number(n) => write!(f, "{n}"),
        }
    }
}

async fn f(d: DictProxy<String, Field>, l: ListProxy<i32>, t: ValueProxy<i32>) -> mp::Result<()> {
    d.insert("name".into(), Field::Text("dfg".into())).await?;
    d.insert("age".into(), Field::Number(38)).await?;
    d.insert("sex".into(), Field::Text("Male".into())).await?;
    d.insert("affiliation".into(), Field::Text("SDIBT".into()))
        .await?;
    l.reverse().await?;
    t.set(3).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let manager = Manager::start().await?;
    let d = manager.dict::<String, Field>().await?;
    let l = manager.list(0..10).await?;
    let t = manager.value(0).await?;
    let mut p = Process::new(f, (d.clone(), l.clone(), t.clone()))
        .start()
        .await?;
    p.join().await?;
    for (k, v) in d.items().await? {
        println!("({k:?}, {v})");
    }
    println!("{:?}", l.to_vec().await?);
    println!("{}", t.get().await?);
    manager.shutdown().await
}
