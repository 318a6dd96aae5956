//! Seed 000's `Event` example: ten processes share an event; a process that finds it set
//! waits on it (returning at once), prints, and clears it; one that finds it clear sets it.
//! Which processes print depends on how they interleave, as in Python.
//!
//! ```python
//! from multiprocessing import Process, Event
//!
//! def f(e, i):
//!     if e.is_set():
//!         e.wait()
//!         print('hello world', i)
//!         e.clear()
//!     else :
//!         e.set()
//!
//! if __name__ == '__main__':
//!     e = Event()
//!     for num in range(10):
//!         Process(target = f, args = (e, num)).start()
//! ```

use tokio_multiprocessing as mp;

async fn f(e: mp::Event, i: u32) {
    if e.is_set() {
        if let Err(err) = e.wait().await {
            eprintln!("process {i}: {err}");
            return;
        }
        println!("hello world {i}");
        e.clear();
    } else {
        e.set();
    }
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let e = mp::Event::new()?;
    let mut children = Vec::new();
    for num in 0..10 {
        children.push(mp::Process::new(f, (e.clone(), num)).start().await?);
    }
    for mut p in children {
        p.join().await?;
    }
    Ok(())
}
