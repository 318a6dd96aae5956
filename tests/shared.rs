//! `Value`, `Array` and `SharedMemory` between real processes.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, fds_return_to, join_ok, open_fds, run_example};
use tokio_multiprocessing::{
    Array, Error, Event, Lock, Process, RawArray, RawValue, SharedMemory, Value,
};

const LONG: Duration = Duration::from_secs(20);

/// A user's plain-old-data type (`_TestValue` uses ctypes structures the same way).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Point {
    x: f64,
    y: i32,
    on: bool,
}

// SAFETY: numbers and a bool written only through the typed API: no pointers, and every
// value stored is a valid Point.
unsafe impl tokio_multiprocessing::Pod for Point {}

#[allow(clippy::approx_constant)] // the seed's own literal
async fn set_values(
    f: Value<f64>,
    i: Value<i32>,
    c: RawValue<u8>,
    a: Array<i32>,
    pts: Array<Point>,
) {
    pts.set(
        1,
        Point {
            x: -1.5,
            y: 9,
            on: true,
        },
    )
    .await
    .expect("set");
    f.set(3.1415927).await.expect("set");
    i.set(-7).await.expect("set");
    c.set(b'x');
    let g = a.lock().await.expect("lock");
    for k in 0..g.len() {
        g.update(k, |x| x * x).expect("index");
    }
}

async fn shm_attach_write(name: String) {
    let shm = SharedMemory::attach(&name).expect("attach");
    shm.write(0, b"from child").expect("write");
}

async fn shm_write_then_hang(shm: SharedMemory, ready: Event) {
    shm.write(0, b"anon").expect("write");
    ready.set();
    std::future::pending::<()>().await;
}

/// How many `/dev/shm` segments this test process has made and not removed (other processes
/// on the machine make and remove their own at any time, so only ours are counted).
fn our_segments() -> usize {
    let suffix = format!("-{}", std::process::id());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("tmp-sync-") && n.ends_with(&suffix)
                })
                .count()
        })
        .unwrap_or(0)
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn unique(tag: &str) -> String {
    format!("tmp-sync-{tag}-{}", std::process::id())
}

/// `_TestValue.test_value` and `_TestArray.test_array`: a child writes values of several
/// types and squares an array; the parent sees it all.
#[allow(clippy::approx_constant)]
async fn value_and_array_cross() -> TestResult {
    let fds = open_fds();
    value_and_array_cross_inner().await?;
    fds_return_to(fds, LONG).await?;
    Ok(())
}

#[allow(clippy::approx_constant)]
async fn value_and_array_cross_inner() -> TestResult {
    let f = Value::new(0.0f64)?;
    let i = Value::new(0i32)?;
    let c = RawValue::new(b'a')?;
    let a = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    let zero = Point {
        x: 0.0,
        y: 0,
        on: false,
    };
    let pts = Array::from_elem(zero, 2)?;
    let mut p = Process::new(
        set_values,
        (f.clone(), i.clone(), c.clone(), a.clone(), pts.clone()),
    )
    .start()
    .await?;
    join_ok(&mut p).await?;
    ensure!(f.get().await? == 3.1415927, "f64");
    ensure!(i.get().await? == -7, "i32");
    ensure!(c.get() == b'x', "u8");
    let want: Vec<i32> = (0..10).map(|x| x * x).collect();
    ensure!(a.to_vec().await? == want, "array {:?}", a.to_vec().await?);
    let got = pts.to_vec().await?;
    ensure!(
        got == vec![
            zero,
            Point {
                x: -1.5,
                y: 9,
                on: true
            }
        ],
        "points {got:?}"
    );
    Ok(())
}

/// `_TestValue.test_getobj_getlock` and `_TestArray.test_getobj_getlock`, plus index errors
/// (`IndexError` in Python).
async fn value_lock_and_indices() -> TestResult {
    let l = Lock::new()?;
    let v = Value::with_lock(5u64, l.clone())?;
    {
        let g = v.lock().await?;
        ensure!(l.is_locked(), "Value's lock is not the given lock");
        ensure!(g.get() == 5, "value");
    }
    ensure!(v.get_obj().get() == 5, "get_obj");
    ensure!(!v.get_lock().is_locked(), "lock left held");
    let a = RawArray::from_slice(&[1.0f32, 2.0])?;
    ensure!(a.len() == 2 && a.get(2).is_none(), "get past the end");
    ensure!(
        matches!(
            a.set(2, 0.0),
            Err(Error::IndexOutOfRange { index: 2, len: 2 })
        ),
        "set past the end"
    );
    ensure!(
        matches!(a.copy_from_slice(&[1.0]), Err(Error::InvalidArgument(_))),
        "short copy accepted"
    );
    let locked = Array::from_elem(true, 3)?;
    ensure!(
        locked.set(3, false).await.is_err(),
        "locked set past the end"
    );
    ensure!(locked.to_vec().await? == vec![true; 3], "bools");
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_basics`: create, attach by name (here and in a
/// child), size and name, unlink; creating a taken name fails; nothing left in `/dev/shm`.
async fn shared_memory_named() -> TestResult {
    let segments = our_segments();
    let name = unique("basics");
    ensure!(!shm_exists(&name), "stale segment {name}");
    let mut shm = SharedMemory::create(&name, 4096)?;
    ensure!(shm_exists(&name), "segment not in /dev/shm");
    ensure!(
        shm.size() == 4096 && shm.name() == Some(name.as_str()),
        "size/name"
    );
    let dup = SharedMemory::create(&name, 10);
    ensure!(
        matches!(&dup, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists),
        "duplicate create: {dup:?}"
    );
    let other = SharedMemory::attach(&name)?;
    other.write(100, b"abc")?;
    let mut buf = [0u8; 3];
    shm.read(100, &mut buf)?;
    ensure!(&buf == b"abc", "attach sees other memory");
    ensure!(
        shm.write(4095, b"xy").is_err(),
        "write past the end accepted"
    );
    // Unaligned starts and lengths, across the word-sized copies.
    let pattern: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    shm.write(1003, &pattern)?;
    let mut back = vec![0u8; 1000];
    other.read(1003, &mut back)?;
    ensure!(back == pattern, "unaligned round trip differs");
    let whole = other.to_vec();
    ensure!(
        whole.len() == 4096 && whole[1003..2003] == pattern[..] && whole[100..103] == *b"abc",
        "to_vec differs"
    );

    let mut p = Process::new(shm_attach_write, (name.clone(),))
        .start()
        .await?;
    join_ok(&mut p).await?;
    let mut buf = [0u8; 10];
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"from child", "child's write: {buf:?}");

    drop(other); // an attacher never unlinks
    ensure!(shm_exists(&name), "an attacher removed the segment");
    shm.unlink()?;
    ensure!(!shm_exists(&name), "unlink left the segment");
    let gone = SharedMemory::attach(&name);
    ensure!(
        matches!(&gone, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound),
        "attach after unlink: {gone:?}"
    );
    shm.read(0, &mut buf)?; // the mapping outlives the name
    drop(shm);
    ensure!(!shm_exists(&name), "segment leaked");
    ensure!(
        our_segments() == segments,
        "segments: {segments} before, {} after",
        our_segments()
    );
    Ok(())
}

/// No Python counterpart: a child holding a segment (named: received from its creator;
/// anonymous: a memfd) is killed; the named one is still removed by its creator's drop, and
/// neither leaves a segment or a descriptor behind.
async fn shared_memory_survives_killed_child() -> TestResult {
    let name = unique("kill");
    let segments = our_segments();
    let fds = open_fds();
    {
        let named = SharedMemory::create(&name, 64)?;
        let anon = SharedMemory::create_anonymous(64)?;
        ensure!(anon.name().is_none(), "anonymous has a name");
        for shm in [&named, &anon] {
            let ready = Event::new()?;
            let mut p = Process::new(shm_write_then_hang, (shm.try_clone()?, ready.clone()))
                .start()
                .await?;
            ready.wait_timeout(LONG).await?;
            p.kill()?;
            p.join().await?;
            let mut buf = [0u8; 4];
            shm.read(0, &mut buf)?;
            ensure!(&buf == b"anon", "child's write lost");
        }
        ensure!(shm_exists(&name), "the child's death removed the name");
        ensure!(our_segments() == segments + 1, "segments while alive");
    }
    ensure!(!shm_exists(&name), "segment leaked");
    ensure!(
        our_segments() == segments,
        "segments: {segments} before, {} after",
        our_segments()
    );
    fds_return_to(fds, LONG).await?;
    Ok(())
}

async fn example_shared_value_array() -> TestResult {
    let out = run_example("shared_value_array").await?;
    ensure!(
        out == "3.1415927\n[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n",
        "output:\n{out}"
    );
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        value_and_array_cross,
        value_lock_and_indices,
        shared_memory_named,
        shared_memory_survives_killed_child,
        example_shared_value_array
    ];
    libtest_mimic::run(&args, trials).exit()
}
