//! Seed 004's tour of `Process` methods: a process sleeping for 1000 s is started, checked,
//! terminated with SIGTERM, and its exit code read.
//!
//! ```python
//! >>> import multiprocessing, time, signal
//! >>> p = multiprocessing.Process(target=time.sleep, args=(1000,))
//! >>> print(p, p.is_alive())
//! <Process(Process-1, initial)> False
//! >>> p.start()
//! >>> print(p, p.is_alive())
//! <Process(Process-1, started)> True
//! >>> p.terminate()
//! >>> time.sleep(0.1)
//! >>> print(p, p.is_alive())
//! <Process(Process-1, stopped[SIGTERM])> False
//! >>> p.exitcode == -signal.SIGTERM
//! True
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

fn sleep(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let p = mp::Process::new(sleep, (1000,));
    println!("{p}"); // not started: there is no process to be alive
    let mut p = p.start().await?;
    let alive = p.is_alive();
    println!("{p} {alive}");
    p.terminate()?;
    p.join().await?; // rather than sleeping 0.1 s and hoping: wait for the exit itself
    let alive = p.is_alive();
    println!("{p} {alive}");
    println!("{}", p.exitcode()? == Some(-libc::SIGTERM));
    Ok(())
}
