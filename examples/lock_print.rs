//! Seed 000's `Lock` example: ten processes print one line each, one at a time.
//!
//! ```python
//! from multiprocessing import Process, Lock
//!
//! def f(l, i):
//!     l.acquire()
//!     try:
//!         print('hello world', i)
//!     finally:
//!         l.release()
//!
//! if __name__ == '__main__':
//!     lock = Lock()
//!     for num in range(10):
//!         Process(target = f, args = (lock, num)).start()
//! ```
//!
//! The guard is Python's `try: ... finally: l.release()`: the lock is released when it goes
//! out of scope, even if the body panics. Python joins non-daemon children at exit; here
//! `main` joins them explicitly.

use tokio_multiprocessing as mp;

async fn f(l: mp::Lock, i: u32) {
    match l.lock().await {
        Ok(_guard) => println!("hello world {i}"),
        Err(e) => eprintln!("process {i}: {e}"),
    }
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let lock = mp::Lock::new()?;
    let mut children = Vec::new();
    for num in 0..10 {
        children.push(mp::Process::new(f, (lock.clone(), num)).start().await?);
    }
    for mut p in children {
        p.join().await?;
    }
    Ok(())
}
