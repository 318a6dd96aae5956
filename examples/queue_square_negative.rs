//! Seed 001: two children put squares and negatives of the same numbers into one `Queue`;
//! the parent joins both, then empties the queue.
//!
//! ```python
//! from multiprocessing import Process, Queue
//! import time
//!
//! def square(numbers, queue):
//!     for i in numbers:
//!         time.sleep(0.01)
//!         queue.put(i*i)
//!
//! def make_negative(numbers, queue):
//!     for i in numbers:
//!         time.sleep(0.01)
//!         queue.put(i*-1)
//!
//! if __name__ == "__main__":
//!     numbers = range(1, 6)
//!     q = Queue()
//!     p1 = Process(target=square, args=(numbers,q))
//!     p2 = Process(target=make_negative, args=(numbers,q))
//!     p1.start()
//!     p2.start()
//!     p1.join()
//!     p2.join()
//!     # order might not be sequential
//!     while not q.empty():
//!         print(q.get())
//!     print('end main')
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

async fn square(numbers: Vec<i64>, queue: mp::Queue<i64>) -> mp::Result<()> {
    for i in numbers {
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.put(i * i).await?;
    }
    Ok(())
}

async fn make_negative(numbers: Vec<i64>, queue: mp::Queue<i64>) -> mp::Result<()> {
    for i in numbers {
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.put(-i).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let numbers: Vec<i64> = (1..6).collect();
    let q = mp::Queue::new()?;
    let mut p1 = mp::Process::new(square, (numbers.clone(), q.clone()))
        .start()
        .await?;
    let mut p2 = mp::Process::new(make_negative, (numbers, q.clone()))
        .start()
        .await?;
    p1.join().await?;
    p2.join().await?;
    // Order might not be sequential. Every item put is in the queue once the children are
    // joined, so `empty` is exact here.
    while !q.empty() {
        println!("{}", q.get().await?);
    }
    println!("end main");
    Ok(())
}
