//! The server of CPython's remote-manager example: a queue served on a port, reached by
//! any process that holds the key.
//!
//! ```python
//! from multiprocessing.managers import BaseManager
//! from queue import Queue
//! queue = Queue()
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue', callable=lambda:queue)
//! m = QueueManager(address=('', 50000), authkey=b'abracadabra')
//! s = m.get_server()
//! s.serve_forever()
//! ```
//!
//! Usage: `manager_remote_server [ADDRESS]`. The address (a `host:port` or a socket path)
//! defaults to `$TKMP_MANAGER_ADDRESS`, then `127.0.0.1:50000`; the key to
//! `$TKMP_MANAGER_AUTHKEY`, then `abracadabra`. It prints the address it serves on (with the
//! port chosen, for port 0) and serves until killed. Clients: `manager_remote_client`.

use std::io::Write;

use tokio_multiprocessing::{self as mp, Manager};

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init();
    let address = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TKMP_MANAGER_ADDRESS").ok())
        .unwrap_or_else(|| "127.0.0.1:50000".to_string());
    let authkey =
        std::env::var("TKMP_MANAGER_AUTHKEY").unwrap_or_else(|_| "abracadabra".to_string());
    let mut m = Manager::builder()
        .address(address.as_str())
        .authkey(authkey)
        .serve()
        .await?;
    let queue = m.queue::<String>().await?;
    m.register("get_queue", &queue).await?;
    if let Some(bound) = m.address() {
        println!("serving on {bound}");
    }
    std::io::stdout().flush()?;
    m.serve_forever().await
}
