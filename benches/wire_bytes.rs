//! What 1 MiB of bytes costs to encode and decode for another process, beside a plain
//! memcpy of the same size: `Vec<u8>`, `serde_bytes::ByteBuf` and `bytes::Bytes` all cross
//! as MessagePack `bin`, not as arrays of integers.
//!
//! `cargo bench --bench wire_bytes`

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_multiprocessing::{self as mp, __private::roundtrip};

const SIZE: usize = 1 << 20;
const ROUNDS: u32 = 300;

fn time_roundtrip<T: Serialize + DeserializeOwned>(name: &str, value: &T, memcpy_us: f64) {
    let t = Instant::now();
    for _ in 0..ROUNDS {
        black_box(roundtrip(black_box(value)).expect("roundtrip"));
    }
    let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    println!("{name:<34} {us:>9.1} µs   {:>5.1}x memcpy", us / memcpy_us);
}

fn main() {
    mp::init();
    let data = vec![0xa5u8; SIZE];
    let (mut a, mut b) = (vec![0u8; SIZE], vec![0u8; SIZE]);
    let t = Instant::now();
    for _ in 0..ROUNDS {
        // encode + decode copy the bytes twice: compare with two copies
        a.copy_from_slice(black_box(&data));
        b.copy_from_slice(black_box(&a));
        black_box((&a, &b));
    }
    let memcpy = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
    println!(
        "{:<34} {memcpy:>9.1} µs   (baseline: 2 x 1 MiB memcpy)",
        "memcpy x2"
    );
    time_roundtrip("Vec<u8> encode+decode", &data, memcpy);
    time_roundtrip(
        "serde_bytes::ByteBuf encode+decode",
        &serde_bytes::ByteBuf::from(data.clone()),
        memcpy,
    );
    time_roundtrip(
        "bytes::Bytes encode+decode",
        &bytes::Bytes::from(data.clone()),
        memcpy,
    );
    let ints: Vec<u32> = data.iter().map(|&b| u32::from(b)).collect();
    time_roundtrip("Vec<u32> (1 Mi ints, for scale)", &ints, memcpy);
}
