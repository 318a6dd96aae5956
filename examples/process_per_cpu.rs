//! Seed 001's first example: one process per CPU, each running `square_numbers`, all
//! started, then all joined.
//!
//! ```python
//! def square_numbers():
//!     for i in range(1000):
//!         result = i * i
//!
//! if __name__ == "__main__":
//!     processes = []
//!     num_processes = os.cpu_count()
//!     for i in range(num_processes):
//!         process = Process(target=square_numbers)
//!         processes.append(process)
//!     for process in processes:
//!         process.start()
//!     for process in processes:
//!         process.join()
//! ```

use tokio_multiprocessing as mp;

fn square_numbers() {
    let sum: u64 = (0..1000u64).map(|i| i * i).sum();
    println!(
        "pid {}: sum of squares below 1000: {sum}",
        std::process::id()
    );
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let num_processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut processes = Vec::new();
    for _ in 0..num_processes {
        processes.push(mp::Process::new(square_numbers, ()).start().await?);
    }
    for (i, mut process) in processes.into_iter().enumerate() {
        let code = process.join().await?;
        println!(
            "process {i} (pid {}) joined: exit code {code}",
            process.pid()
        );
    }
    Ok(())
}
