//! Seed 003's `map` example: which worker process handled each number.
//!
//! ```python
//! import multiprocessing
//! from os import getpid
//!
//! def worker(procnum):
//!     print('i am number %d in process %d' % (procnum, getpid()))
//!     return getpid()
//!
//! if __name__ == '__main__':
//!     pool = multiprocessing.Pool(processes = 3)
//!     print(pool.map(worker, range(5)))
//! ```
//!
//! Prints a line per number, then the list of the pids that handled them (with Python's
//! default chunk size, one worker may well take all five, as in the seed's output).

use tokio_multiprocessing as mp;

fn worker(procnum: u32) -> u32 {
    println!("i am number {procnum} in process {}", std::process::id());
    std::process::id()
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a worker takes its role before `main`
    let pool = mp::Pool::builder().processes(3).build().await?;
    println!("{:?}", pool.map(worker, 0..5).await?);
    Ok(())
}
