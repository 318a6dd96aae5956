//! Seed 000's pool example: the mean of each row of a table, one row per task.
//!
//! ```python
//! from multiprocessing import Pool
//! from statistics import mean
//!
//! def f(x):
//!     return mean(x)
//!
//! if __name__ == '__main__':
//!     x = [list(range(10)), list(range(20, 30)), list(range(50, 60)), list(range(80, 90))]
//!     with Pool(5) as p:
//!         print(p.map(f, x))
//! ```
//!
//! Prints `[4.5, 24.5, 54.5, 84.5]`.

use tokio_multiprocessing as mp;

fn f(x: Vec<i64>) -> f64 {
    x.iter().sum::<i64>() as f64 / x.len() as f64
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a worker takes its role before `main`
    let x: Vec<Vec<i64>> = vec![
        (0..10).collect(),
        (20..30).collect(),
        (50..60).collect(),
        (80..90).collect(),
    ];
    let p = mp::Pool::new(5).await?; // dropped at the end: Python's `with Pool(5) as p`
    println!("{:?}", p.map(f, x).await?);
    Ok(())
}
