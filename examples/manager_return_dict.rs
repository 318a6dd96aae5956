//! Seed 003's `Manager` example: five processes each record their number in a shared dict.
//!
//! ```python
//! def worker(procnum, return_dict):
//!     '''worker function'''
//!     print(str(procnum) + ' represent!')
//!     return_dict[procnum] = procnum
//!
//! if __name__ == '__main__':
//!     manager = multiprocessing.Manager()
//!     return_dict = manager.dict()
//!     jobs = []
//!     for i in range(5):
//!         p = multiprocessing.Process(target=worker, args=(i, return_dict))
//!         jobs.append(p)
//!         p.start()
//!     for proc in jobs:
//!         proc.join()
//!     print(return_dict.values())
//! ```

use tokio_multiprocessing::{self as mp, DictProxy, Manager, Process};

async fn worker(procnum: u32, return_dict: DictProxy<u32, u32>) -> mp::Result<()> {
    println!("{procnum} represent!");
    return_dict.insert(procnum, procnum).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let manager = Manager::start().await?;
    let return_dict = manager.dict::<u32, u32>().await?;
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(
            Process::new(worker, (i, return_dict.clone()))
                .start()
                .await?,
        );
    }
    for proc in &mut jobs {
        proc.join().await?;
    }
    // In the order the workers got there, as Python's dict keeps insertion order.
    println!("{:?}", return_dict.values().await?);
    Ok(())
}
