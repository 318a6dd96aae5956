//! Seed 004's first example: a child says hello to bob.
//!
//! ```python
//! from multiprocessing import Process
//!
//! def f(name):
//!     print('hello', name)
//!
//! if __name__ == '__main__':
//!     p = Process(target=f, args=('bob',))
//!     p.start()
//!     p.join()
//! ```

use tokio_multiprocessing as mp;

fn f(name: String) {
    println!("hello {name}");
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let mut p = mp::Process::new(f, ("bob".to_string(),)).start().await?;
    p.join().await?;
    Ok(())
}
