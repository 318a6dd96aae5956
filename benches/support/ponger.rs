//! The child's side of an `Event` ping-pong, shared by the benches that time one.

use tokio_multiprocessing as mp;

/// Answers `n` pings: waits for `ping`, clears it, sets `pong`. Returns early if a wait
/// fails.
pub async fn event_ponger(ping: mp::Event, pong: mp::Event, n: u32) {
    for _ in 0..n {
        if ping.wait().await.is_err() {
            return;
        }
        ping.clear();
        pong.set();
    }
}
