//! The clients of CPython's remote-manager example: one puts a message on the served
//! queue, another gets it.
//!
//! ```python
//! from multiprocessing.managers import BaseManager
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue')
//! m = QueueManager(address=('foo.bar.org', 50000), authkey=b'abracadabra')
//! m.connect()
//! queue = m.get_queue()
//! queue.put('hello')        # one client
//! print(queue.get())        # another: 'hello'
//! ```
//!
//! Usage: `manager_remote_client put MESSAGE [ADDRESS]` or `manager_remote_client get
//! [ADDRESS]`. The address defaults to `$TKMP_MANAGER_ADDRESS`, then `127.0.0.1:50000`; the
//! key to `$TKMP_MANAGER_AUTHKEY`, then `abracadabra`. `get` waits up to 30 s for a message
//! and prints it. The server: `manager_remote_server`.

use std::time::Duration;

use tokio_multiprocessing::{self as mp, Manager, QueueProxy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    mp::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (put, rest) = match args.first().map(String::as_str) {
        Some("put") => (
            Some(args.get(1).cloned().ok_or("put needs a message")?),
            &args[2.min(args.len())..],
        ),
        Some("get") => (None, &args[1..]),
        _ => {
            return Err(
                "usage: manager_remote_client put MESSAGE [ADDRESS] | get [ADDRESS]".into(),
            );
        }
    };
    let address = rest
        .first()
        .cloned()
        .or_else(|| std::env::var("TKMP_MANAGER_ADDRESS").ok())
        .unwrap_or_else(|| "127.0.0.1:50000".to_string());
    let authkey =
        std::env::var("TKMP_MANAGER_AUTHKEY").unwrap_or_else(|_| "abracadabra".to_string());
    let m = Manager::connect(address.as_str(), authkey).await?;
    let queue: QueueProxy<String> = m.get("get_queue").await?;
    match put {
        Some(message) => queue.put(message).await?,
        None => println!("{}", queue.get_timeout(Duration::from_secs(30)).await?),
    }
    Ok(())
}
