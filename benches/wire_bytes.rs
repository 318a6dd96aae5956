//! What 1 MiB of bytes costs to encode and decode for another process, beside a plain
//! memcpy of the same size: `Vec<u8>`, `serde_bytes::ByteBuf` and `bytes::Bytes` all cross
//! as MessagePack `bin`, not as arrays of integers.
//!
//! `cargo bench --bench wire_bytes`. A run is one encode + decode (the baseline: two 1 MiB
//! copies, as encode and decode copy the bytes twice); each figure is the median of 300
//! runs (`TKMP_BENCH_REPEAT` sets another count). Figure lines as described in
//! `benches/support/mod.rs`.

mod support;

use std::hint::black_box;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use support::{Figure, Report};
use tokio_multiprocessing::{self as mp, __private::roundtrip};

const SIZE: usize = 1 << 20;

fn time_roundtrip<T: Serialize + DeserializeOwned>(name: &str, value: &T, n: usize) -> Figure {
    let runs = support::repeat(n, || {
        let t = Instant::now();
        black_box(roundtrip(black_box(value)).expect("roundtrip"));
        t.elapsed().as_secs_f64() * 1e6
    });
    Figure::new(name, "us", runs)
}

fn main() {
    mp::init();
    let n = support::runs(300);
    let mut report = Report::new("wire_bytes");
    let data = vec![0xa5u8; SIZE];
    let (mut a, mut b) = (vec![0u8; SIZE], vec![0u8; SIZE]);
    let memcpy = Figure::new(
        "memcpy_x2",
        "us",
        support::repeat(n, || {
            let t = Instant::now();
            a.copy_from_slice(black_box(&data));
            b.copy_from_slice(black_box(&a));
            black_box((&a, &b));
            t.elapsed().as_secs_f64() * 1e6
        }),
    );
    let fig = time_roundtrip("vec_u8_encode_decode", &data, n);
    report.add(fig.baseline(memcpy.clone()));
    let fig = time_roundtrip(
        "serde_bytes_bytebuf_encode_decode",
        &serde_bytes::ByteBuf::from(data.clone()),
        n,
    );
    report.add(fig.baseline(memcpy.clone()));
    let fig = time_roundtrip(
        "bytes_bytes_encode_decode",
        &bytes::Bytes::from(data.clone()),
        n,
    );
    report.add(fig.baseline(memcpy.clone()));
    let ints: Vec<u32> = data.iter().map(|&b| u32::from(b)).collect();
    let fig = time_roundtrip("vec_u32_1mi_ints_encode_decode", &ints, n);
    report.add(fig.baseline(memcpy));
    report.note("vec_u32_1mi_ints_encode_decode is for scale: 1 Mi integers, not bytes");
    report.finish();
}
