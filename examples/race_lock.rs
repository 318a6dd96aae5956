//! Seed 001's race example, with its fix: two processes add 1 to a shared `Value` 100 times,
//! and two more add 1 to each element of a shared `Array` 100 times, each update under a
//! lock. The result is exact: 200, and [200.0, 300.0, 400.0].
//!
//! ```python
//! from multiprocessing import Lock, Process, Value, Array
//! import time
//!
//! def add_100(number, lock):
//!     for _ in range(100):
//!         time.sleep(0.001)
//!         lock.acquire()
//!         number.value += 1
//!         lock.release()
//!
//! def add_100_array(numbers, lock):
//!     for _ in range(100):
//!         time.sleep(0.01)
//!         for i in range(len(numbers)):
//!             lock.acquire()
//!             numbers[i] += 1
//!             lock.release()
//!
//! if __name__ == "__main__":
//!     lock1 = Lock()
//!     lock2 = Lock()
//!     shared_number = Value('i', 0)
//!     print('Value at beginning:', shared_number.value)
//!     shared_array = Array('d', [0.0, 100.0, 200.0])
//!     print('Array at beginning:', shared_array[:])
//!     process1 = Process(target=add_100, args=(shared_number, lock1))
//!     process2 = Process(target=add_100, args=(shared_number, lock1))
//!     process3 = Process(target=add_100_array, args=(shared_array, lock2))
//!     process4 = Process(target=add_100_array, args=(shared_array, lock2))
//!     # start all four, join all four
//!     print('Value at end:', shared_number.value)
//!     print('Array at end:', shared_array[:])
//!     print('end main')
//! ```
//!
//! Without the locks (`RawValue` / `RawArray`, or reading with `get_obj().get()` and writing
//! with `set` in two steps), a read-modify-write of one process can fall between the read and
//! the write of the other, and that increment is lost: the seed shows `Value at end: 144` and
//! `Array at end: [134.0, 237.0, 339.0]`, different on every run. The lock makes each
//! read-modify-write whole. (`Value::lock` holds the value's own lock; here, as in the seed,
//! the lock is a separate object passed beside the values. The pauses are 1 ms in both
//! loops, to keep the example quick.)

use std::time::Duration;

use tokio_multiprocessing as mp;

async fn add_100(number: mp::RawValue<i32>, lock: mp::Lock) {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let Ok(_guard) = lock.lock().await else {
            return;
        };
        number.set(number.get() + 1);
    }
}

async fn add_100_array(numbers: mp::RawArray<f64>, lock: mp::Lock) {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
        for i in 0..numbers.len() {
            let Ok(_guard) = lock.lock().await else {
                return;
            };
            if let Some(x) = numbers.get(i) {
                let _ = numbers.set(i, x + 1.0);
            }
        }
    }
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    mp::init(); // optional: a child takes its role before `main`
    let lock1 = mp::Lock::new()?;
    let lock2 = mp::Lock::new()?;

    let shared_number = mp::RawValue::new(0i32)?;
    println!("Value at beginning: {}", shared_number.get());
    let shared_array = mp::RawArray::from_slice(&[0.0f64, 100.0, 200.0])?;
    println!("Array at beginning: {:?}", shared_array.to_vec());

    let mut processes = vec![
        mp::Process::new(add_100, (shared_number.clone(), lock1.clone())),
        mp::Process::new(add_100, (shared_number.clone(), lock1.clone())),
        mp::Process::new(add_100_array, (shared_array.clone(), lock2.clone())),
        mp::Process::new(add_100_array, (shared_array.clone(), lock2.clone())),
    ];
    let mut started = Vec::new();
    for p in processes.drain(..) {
        started.push(p.start().await?);
    }
    for mut p in started {
        p.join().await?;
    }

    println!("Value at end: {}", shared_number.get());
    println!("Array at end: {:?}", shared_array.to_vec());
    println!("end main");
    Ok(())
}
