//! A filter that hands each line of its input to a pool as the line arrives: the lines of
//! stdin become a `futures::Stream`, and `Pool::imap_stream` maps them in the workers,
//! yielding the results in input order. Stdin is read only while the pool has room for
//! more, so a fast writer waits for the workers, and memory stays flat however long the
//! input.
//!
//! Python's counterpart reads `sys.stdin` in `pool.imap(f, sys.stdin)`, a thread feeding
//! the pool:
//!
//! ```python
//! import sys
//! from multiprocessing import Pool
//!
//! def words(line):
//!     return len(line.split())
//!
//! if __name__ == '__main__':
//!     with Pool(2) as p:
//!         total = 0
//!         for n, w in enumerate(p.imap(words, sys.stdin), 1):
//!             print(f'line {n}: {w} words')
//!             total += w
//!         print(f'{total} words')
//! ```
//!
//! `printf 'a b\nc\n' | cargo run --example pool_stdin_lines` prints `line 1: 2 words`,
//! `line 2: 1 words` and `3 words`.

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_multiprocessing as mp;

/// The words of a line: the work a worker does.
fn words(line: String) -> usize {
    line.split_whitespace().count()
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init();
    let pool = mp::Pool::new(2).await?;
    // Stdin's lines as a stream, ending at the end of the input (or at a read error, which
    // is reported below).
    let (errors, mut error) = futures::channel::oneshot::channel();
    let lines = futures::stream::unfold(
        (BufReader::new(tokio::io::stdin()).lines(), Some(errors)),
        |(mut lines, mut errors)| async move {
            match lines.next_line().await {
                Ok(Some(line)) => Some((line, (lines, errors))),
                Ok(None) => None,
                Err(e) => {
                    if let Some(tx) = errors.take() {
                        let _ = tx.send(e);
                    }
                    None
                }
            }
        },
    );
    let mut results = pool.imap_stream(words, lines);
    let mut total = 0;
    let mut n = 0;
    while let Some(w) = results.next().await {
        let w = w?;
        n += 1;
        println!("line {n}: {w} words");
        total += w;
    }
    if let Ok(Some(e)) = error.try_recv() {
        return Err(e.into());
    }
    println!("{total} words");
    Ok(())
}
