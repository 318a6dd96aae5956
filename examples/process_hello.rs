//! Seed 000's first example: a child prints its module name, its parent's pid, its own pid,
//! and greets `bob`.
//!
//! ```python
//! def f(name):
//!     print('module name:', __name__)
//!     print('parent process:', os.getppid())
//!     print('process id:', os.getpid())
//!     print('hello', name)
//!
//! if __name__ == '__main__':
//!     p = Process(target=f, args=('bob',))
//!     p.start()
//!     p.join()
//! ```

use tokio_multiprocessing as mp;

fn f(name: String) {
    println!("module name: {}", module_path!());
    println!("parent process: {}", std::os::unix::process::parent_id());
    println!("process id: {}", std::process::id());
    println!("hello {name}");
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    println!("main process: {}", std::process::id());
    let mut p = mp::Process::new(f, ("bob".to_string(),)).start().await?;
    p.join().await?;
    Ok(())
}
