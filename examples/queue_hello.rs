//! Seed 000: a child puts a greeting on a `Queue`; the parent joins it, then gets the
//! greeting. Twice: once after choosing the `spawn` start method for the program, once with
//! `spawn` chosen for one process only (Python's context object).
//!
//! ```python
//! import multiprocessing as mp
//!
//! def foo(q):
//!     q.put('hello world!')
//!
//! if __name__ == '__main__':
//!     mp.set_start_method('spawn')
//!     q = mp.Queue()
//!     p = mp.Process(target=foo, args=(q,))
//!     p.start()
//!     p.join()
//!     print(q.get())
//! ```
//!
//! ```python
//! import multiprocessing as mp
//!
//! def foo(q):
//!     q.put('hello world')
//!
//! if __name__ == '__main__':
//!     ctx = mp.get_context('spawn')
//!     q = ctx.Queue()
//!     p = ctx.Process(target=foo, args=(q,))
//!     p.start()
//!     p.join()
//!     print(q.get())
//! ```
//!
//! Joining the child before taking its item is safe here: `put` returns once the item is in
//! the kernel, so the child has nothing left to flush when it exits.

use tokio_multiprocessing as mp;

async fn foo(q: mp::Queue<String>) -> mp::Result<()> {
    q.put("hello world!".to_string()).await?;
    Ok(())
}

async fn foo_ctx(q: mp::Queue<String>) -> mp::Result<()> {
    q.put("hello world".to_string()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`

    mp::set_start_method(mp::StartMethod::Spawn);
    let q = mp::Queue::new()?;
    let mut p = mp::Process::new(foo, (q.clone(),)).start().await?;
    p.join().await?;
    println!("{}", q.get().await?);

    // Python's `get_context('spawn')`: the start method of this one process.
    let q = mp::Queue::new()?;
    let mut p = mp::Process::new(foo_ctx, (q.clone(),))
        .start_method(mp::StartMethod::Spawn)
        .start()
        .await?;
    p.join().await?;
    println!("{}", q.get().await?);
    Ok(())
}
