//! Seed 002: ten producers share a bounded `Queue(100)` with two daemon consumers; the main
//! process joins the producers and closes its handle on the queue. Closing only says that
//! this process is done with the queue: the consumers' handles stay open, so they would wait
//! for ever, which is why they are daemons (terminated when the main process ends).
//!
//! ```python
//! def putElement(name, qu: multiprocessing.Queue):
//!     try:
//!         for i in range(10):
//!             qu.put(f"{name}-{i + 1}")
//!             time.sleep(.1)
//!     except ValueError:
//!         print("queue closed")
//!     print(f"{name}: put complete")
//!
//! def getElement(name, qu: multiprocessing.Queue):
//!     try:
//!         while True:
//!             r = qu.get()
//!             print(f"{name} recv: {r}")
//!     except ValueError:
//!         print("queue closed")
//!     print(f"{name}: get complete")
//!
//! if __name__ == '__main__':
//!     qu = multiprocessing.Queue(100)
//!     puts = [multiprocessing.Process(target=putElement, args=(f"send{i}", qu)) for i in range(10)]
//!     gets = [multiprocessing.Process(target=getElement, args=(f"recv{i}", qu), daemon=True) for i in range(2)]
//!     list(map(lambda f: f.start(), puts))
//!     list(map(lambda f: f.start(), gets))
//!     for f in puts:
//!         f.join()
//!     print("To close")
//!     qu.close()
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

async fn put_element(name: String, qu: mp::Queue<String>) {
    for i in 0..10 {
        if let Err(e) = qu.put(format!("{name}-{}", i + 1)).await {
            if matches!(e.error(), mp::Error::HandleClosed { .. }) {
                println!("queue closed");
                break;
            }
            panic!("put failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{name}: put complete");
}

async fn get_element(name: String, qu: mp::Queue<String>) {
    loop {
        match qu.get().await {
            Ok(r) => println!("{name} recv: {r}"),
            Err(mp::Error::HandleClosed { .. }) => {
                println!("queue closed");
                break;
            }
            Err(e) => panic!("get failed: {e}"),
        }
    }
    println!("{name}: get complete");
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let qu = mp::Queue::with_maxsize(100)?;
    let mut puts = Vec::new();
    for i in 0..10 {
        let p = mp::Process::new(put_element, (format!("send{i}"), qu.clone()));
        puts.push(p.start().await?);
    }
    let mut gets = Vec::new();
    for i in 0..2 {
        let p = mp::Process::new(get_element, (format!("recv{i}"), qu.clone())).daemon(true);
        gets.push(p.start().await?);
    }
    for p in &mut puts {
        p.join().await?;
    }
    println!("To close");
    qu.close();
    Ok(())
}
