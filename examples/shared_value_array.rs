//! Seed 000's shared-memory example: a child sets a `Value` of `f64` to 3.1415927 and squares
//! every element of an `Array` of `i32`; the parent prints both.
//!
//! ```python
//! from multiprocessing import Process, Value, Array
//!
//! def f(n, a):
//!     n.value = 3.1415927
//!     for i in range(len(a)):
//!         a[i] = a[i] * a[i]
//!
//! if __name__ == '__main__':
//!     num = Value('d', 0.0)
//!     arr = Array('i', range(10))
//!     p = Process(target = f, args = (num, arr))
//!     p.start()
//!     p.join()
//!     print(num.value)
//!     print(arr[:])
//! ```

use tokio_multiprocessing as mp;

#[allow(clippy::approx_constant)] // the seed's own literal, not an approximation of π
async fn f(n: mp::Value<f64>, a: mp::Array<i32>) -> mp::Result<()> {
    n.set(3.1415927).await?;
    let g = a.lock().await?;
    for i in 0..g.len() {
        g.update(i, |x| x * x)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let num = mp::Value::new(0.0f64)?;
    let arr = mp::Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    let mut p = mp::Process::new(f, (num.clone(), arr.clone()))
        .start()
        .await?;
    p.join().await?;
    println!("{}", num.get().await?);
    println!("{:?}", arr.to_vec().await?);
    Ok(())
}
