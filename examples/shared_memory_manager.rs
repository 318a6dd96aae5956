//! Python's `SharedMemoryManager` example: two processes work on halves of one
//! `ShareableList` that the manager made, and the manager removes it when it stops.
//!
//! ```python
//! with SharedMemoryManager() as smm:
//!     sl = smm.ShareableList(range(2000))
//!     # Divide the work among two processes, storing partial results in sl
//!     p1 = Process(target=do_work, args=(sl, 0, 1000))
//!     p2 = Process(target=do_work, args=(sl, 1000, 2000))
//!     p1.start()
//!     p2.start()  # A multiprocessing.Pool might be more efficient
//!     p1.join()
//!     p2.join()   # Wait for all work to complete in both processes
//!     total_result = sum(sl)  # Consolidate the partial results now in sl
//! ```

use tokio_multiprocessing::{
    self as mp, Process, ShareableItem, ShareableList, SharedMemoryManager,
};

/// Squares the items of `sl` in `start..stop`, in place.
fn do_work(sl: ShareableList, start: i64, stop: i64) -> mp::Result<()> {
    for i in start..stop {
        if let ShareableItem::Int(x) = sl.get(i)? {
            sl.set(i, x * x)?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let smm = SharedMemoryManager::start().await?;
    let sl = smm.shareable_list(0..2000).await?;
    let mut p1 = Process::new(do_work, (sl.try_clone()?, 0, 1000))
        .start()
        .await?;
    let mut p2 = Process::new(do_work, (sl.try_clone()?, 1000, 2000))
        .start()
        .await?;
    p1.join().await?;
    p2.join().await?;
    let mut total_result = 0;
    for item in sl.to_vec()? {
        if let ShareableItem::Int(x) = item {
            total_result += x;
        }
    }
    println!("total_result = {total_result}");
    println!(
        "segments kept by the manager: {}",
        smm.segments().await?.len()
    );
    smm.shutdown().await?; // the list's name is gone from /dev/shm
    Ok(())
}
