//! Seed 002: the child receives until the parent closes its end of the `Pipe`, and sees end
//! of stream.
//!
//! ```python
//! def pipeProc(pipe):
//!     outPipe, inPipe = pipe
//!     inPipe.close() # must close, or EOFError never comes
//!     try:
//!         while True:
//!             r = outPipe.recv()
//!             print("Recv:", r)
//!     except EOFError:
//!         print("RECV end")
//!
//! if __name__ == '__main__':
//!     outPipe, inPipe = multiprocessing.Pipe()
//!     sub = multiprocessing.Process(target=pipeProc, args=((outPipe, inPipe),))
//!     sub.start()
//!     outPipe.close() # only once the process is running
//!     with inPipe:
//!         for x in range(10):
//!             inPipe.send(x)
//!             time.sleep(.1)
//!     print("send complete")
//!     sub.join()
//! ```
//!
//! In Python the child inherits both ends and must close the one it does not use. Here each
//! process holds only what it was handed: the child gets `out_pipe` alone, and the parent's
//! copy of it moved into the process's arguments. So when the parent drops `in_pipe`, no
//! writer is left and the child's `recv` returns `Error::Closed`.

use std::time::Duration;

use tokio_multiprocessing as mp;

async fn pipe_proc(out_pipe: mp::Connection<i32>) {
    loop {
        match out_pipe.recv().await {
            Ok(r) => println!("Recv: {r}"),
            Err(mp::Error::Closed) => {
                println!("RECV end");
                return;
            }
            Err(e) => panic!("recv failed: {e}"),
        }
    }
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let (out_pipe, in_pipe) = mp::Pipe::<i32>::new()?;
    let mut sub = mp::Process::new(pipe_proc, (out_pipe,)).start().await?;
    for x in 0..10 {
        in_pipe.send(&x).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    in_pipe.close();
    println!("send complete");
    sub.join().await?;
    Ok(())
}
