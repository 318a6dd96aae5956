//! Seed 001's pool example: `cube` over `range(10)` on a pool of one worker per core.
//!
//! ```python
//! from multiprocessing import Pool
//! import random
//! import time
//!
//! def cube(number):
//!     print("Hi")
//!     time.sleep(random.randint(1,2))
//!     return number * number * number
//!
//! if __name__ == "__main__":
//!     numbers = range(10)
//!     p = Pool()
//!     # by default this allocates the maximum number of available
//!     # processors for this task --> os.cpu_count()
//!     result = p.map(cube,  numbers)
//!     # or
//!     # result = [p.apply(cube, args=(i,)) for i in numbers]
//!     p.close()
//!     p.join()
//!     print(result)
//! ```
//!
//! The sleep is 10 to 20 ms here rather than 1 to 2 s. Prints `Hi` ten times, then
//! `[0, 1, 8, 27, 64, 125, 216, 343, 512, 729]`.

use std::time::Duration;

use tokio_multiprocessing as mp;

fn cube(number: i64) -> i64 {
    println!("Hi");
    let jitter = u64::from(std::process::id() % 2) * 10; // stands in for random.randint
    std::thread::sleep(Duration::from_millis(10 + jitter));
    number * number * number
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a worker takes its role before `main`
    let numbers = 0..10;
    // By default one worker per available core, like os.cpu_count().
    let p = mp::Pool::builder().build().await?;
    let result = p.map(cube, numbers).await?;
    // or
    // let mut result = Vec::new();
    // for i in 0..10 { result.push(p.apply(cube, (i,)).await?); }
    p.close();
    p.join().await?;
    println!("{result:?}");
    Ok(())
}
