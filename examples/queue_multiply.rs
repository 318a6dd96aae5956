//! Seed 003: a child returns two values through a `Queue`.
//!
//! ```python
//! def multiply(a, b, que):
//!     que.put(a * b)
//!     que.put(a * (b - 1))
//!
//! if __name__ == '__main__':
//!     queue1 = Queue()
//!     p = Process(target=multiply, args=(4, 5, queue1))
//!     p.start()
//!     p.join()
//!     print(queue1.get())   # 20
//!     print(queue1.get())   # 16
//!     print('ok')
//! ```

use tokio_multiprocessing as mp;

async fn multiply(a: i64, b: i64, que: mp::Queue<i64>) -> mp::Result<()> {
    que.put(a * b).await?;
    que.put(a * (b - 1)).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let queue1 = mp::Queue::new()?;
    let mut p = mp::Process::new(multiply, (4, 5, queue1.clone()))
        .start()
        .await?;
    p.join().await?;
    println!("{}", queue1.get().await?);
    println!("{}", queue1.get().await?);
    println!("ok");
    Ok(())
}
