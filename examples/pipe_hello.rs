//! Seed 000: a child sends a greeting through a `Pipe`; the parent receives it.
//!
//! ```python
//! from multiprocessing import Process, Pipe
//!
//! def f(conn):
//!     conn.send('hello world')
//!     conn.close()
//!
//! if __name__ == '__main__':
//!     parent_conn, child_conn = Pipe()
//!     p = Process(target=f, args=(child_conn,))
//!     p.start()
//!     print(parent_conn.recv())
//!     p.join()
//! ```

use tokio_multiprocessing as mp;

async fn f(conn: mp::Connection<String>) -> mp::Result<()> {
    conn.send(&"hello world".to_string()).await?;
    conn.close();
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let (parent_conn, child_conn) = mp::Pipe::<String>::new()?;
    // `child_conn` moves into the arguments: the child gets it, this process keeps no copy.
    let mut p = mp::Process::new(f, (child_conn,)).start().await?;
    println!("{}", parent_conn.recv().await?);
    p.join().await?;
    Ok(())
}
