//! `Value`, `Array` and `SharedMemory` between real processes.
//!
//! Each test names the case of CPython's `Lib/test/_test_multiprocessing.py` it comes from,
//! where there is one. Tests run one at a time (unless `--test-threads` says otherwise),
//! because several of them count this process's descriptors and `/dev/shm` segments.

mod support;

use std::time::Duration;

use libtest_mimic::Arguments;
use support::{TestResult, eventually, fds_return_to, join_ok, open_fds, run_example, send_as};
use tokio_multiprocessing::{
    Array, Error, Event, Lock, Process, RawArray, RawValue, ShareableItem, ShareableList,
    SharedMemory, Value,
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

/// Adds `n` to the value and to each element, each under its lock.
async fn add_under_locks(v: Value<i64>, a: Array<i64>, n: i64) -> Result<(), String> {
    v.lock().await.map_err(|e| e.to_string())?.update(|x| x + n);
    let g = a.lock().await.map_err(|e| e.to_string())?;
    for k in 0..g.len() {
        g.update(k, |x| x + n).map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn shm_attach_write(name: String) {
    let shm = SharedMemory::attach(&name).expect("attach");
    shm.write(0, b"from child").expect("write");
}

/// Creates the segment `name`, writes to it, and keeps its name when it exits (with `keep`)
/// or leaves its removal to its handle's drop (without).
fn shm_create_write_exit(name: String, keep: bool) -> Result<(), String> {
    let mut shm = SharedMemory::create(&name, 64).map_err(|e| e.to_string())?;
    shm.write(0, b"kept").map_err(|e| e.to_string())?;
    if keep {
        shm.keep_name();
    }
    Ok(())
}

/// Creates the segment `name` (keeping its name with `keep`), says so, and waits to be killed.
/// A name another process holds is tried, and left to it.
async fn shm_create_then_hang(name: String, keep: bool, ready: Event) -> Result<(), String> {
    let _shm = match SharedMemory::create(&name, 64) {
        Ok(mut shm) => {
            if keep {
                shm.keep_name();
            }
            Some(shm)
        }
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
        Err(e) => return Err(e.to_string()),
    };
    ready.set();
    std::future::pending::<()>().await;
    Ok(())
}

/// Creates the segment `first`, says so, and once told, `second`; then waits to be killed.
async fn shm_create_two(first: String, second: String, events: [Event; 3]) -> Result<(), String> {
    let [made_first, go, made_second] = events;
    let _first = SharedMemory::create(&first, 64).map_err(|e| e.to_string())?;
    made_first.set();
    go.wait().await.map_err(|e| e.to_string())?;
    let _second = SharedMemory::create(&second, 64).map_err(|e| e.to_string())?;
    made_second.set();
    std::future::pending::<()>().await;
    Ok(())
}

/// Creates the segment `name` and ends without dropping its handle.
fn shm_create_and_forget(name: String) -> Result<(), String> {
    let shm = SharedMemory::create(&name, 64).map_err(|e| e.to_string())?;
    std::mem::forget(shm);
    Ok(())
}

/// The segment tracker of process `creator`: the process started with the tracker's
/// variable naming it (`/proc/<pid>/environ` keeps a process's first environment).
fn tracker_of(creator: u32) -> Option<u32> {
    let wanted = format!(",{creator}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        env.split(|b| *b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .filter_map(|kv| kv.strip_prefix("TOKIO_MULTIPROCESSING_TRACKER="))
            .any(|v| v.ends_with(&wanted))
            .then_some(pid)
    })
}

/// Starts a child that creates the segment `name` and waits; returns it with its tracker.
async fn creator_of(
    name: &str,
    keep: bool,
) -> Result<(Process, u32), Box<dyn std::error::Error + Send + Sync>> {
    let ready = Event::new()?;
    // A daemon: should the test fail, it is ended with the test rather than waited for.
    let p = Process::new(
        shm_create_then_hang,
        (name.to_string(), keep, ready.clone()),
    )
    .daemon(true)
    .start()
    .await?;
    let tracker = tracker_once_made(&p, &ready).await?;
    ensure!(shm_exists(name), "the segment is not there");
    Ok((p, tracker))
}

/// The tracker of `p`, a child that sets `ready` once it made its segments.
async fn tracker_once_made(
    p: &Process,
    ready: &Event,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    ensure!(
        ready.wait_timeout(LONG).await?,
        "the child did not create its segments"
    );
    tracker_of(p.pid()).ok_or_else(|| format!("no tracker of the child {}", p.pid()).into())
}

async fn shm_write_then_hang(shm: SharedMemory, ready: Event) {
    shm.write(0, b"anon").expect("write");
    ready.set();
    std::future::pending::<()>().await;
}

/// How many `/dev/shm` segments this test process has made and not removed (other processes
/// on the machine make and remove their own at any time, so only ours are counted).
fn our_segments() -> usize {
    let ours = format!("-{}-", support::unique_stem());
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("tmp-sync-") && n.contains(&ours)
                })
                .count()
        })
        .unwrap_or(0)
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn unique(tag: &str) -> String {
    support::unique_name(&format!("tmp-sync-{tag}"))
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

/// `_TestSharedCTypes.test_synchronize` and `test_copy`: `from_raw` (Python's
/// `synchronized(obj, lock)`) guards the raw object's own memory with the lock given, so
/// writes through either are seen by the other, here and in a child; a copy (Python's
/// `copy(obj)`: a new raw object of the same contents) is memory of its own.
async fn synchronized_raw_objects_share_their_memory() -> TestResult {
    let raw = RawValue::new(2i64)?;
    let lock = Lock::new()?;
    let v = Value::from_raw(raw.clone(), lock.clone());
    let raw_array = RawArray::from_slice(&[1i64, 2, 3])?;
    let a = Array::from_raw(raw_array.clone(), Lock::new()?);
    {
        let _g = v.lock().await?;
        ensure!(
            lock.is_locked(),
            "the Value does not use the lock it was given"
        );
    }
    v.set(7).await?;
    ensure!(
        raw.get() == 7,
        "a write through the Value is not in the raw value"
    );
    raw.set(9);
    ensure!(
        v.get().await? == 9,
        "a write through the raw value is not in the Value"
    );
    let mut p = Process::new(add_under_locks, (v.clone(), a.clone(), 10))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(raw.get() == 19, "the child's add: {}", raw.get());
    ensure!(
        raw_array.to_vec() == [11, 12, 13],
        "the child's adds: {:?}",
        raw_array.to_vec()
    );
    let copy = RawArray::from_slice(&raw_array.to_vec())?;
    raw_array.copy_from_slice(&[0, 0, 0])?;
    ensure!(
        copy.to_vec() == [11, 12, 13],
        "the copy changed with its original"
    );
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_basics`: create, attach by name (here and in a
/// child), size and name, unlink; creating a taken name fails; nothing left in `/dev/shm`.
/// A read or write that passes the end fails with the first byte of its range that is past
/// the end, and touches nothing (Python's `shm.buf[60:65] = data` raises too).
async fn shared_memory_out_of_range() -> TestResult {
    let shm = SharedMemory::create_anonymous(64)?;
    shm.write(0, &[7; 64])?;
    let mut buf = [0u8; 5];
    for (offset, first_past) in [(60, 64), (64, 64), (100, 100), (usize::MAX, usize::MAX)] {
        let r = shm.read(offset, &mut buf);
        ensure!(
            matches!(r, Err(Error::IndexOutOfRange { index, len: 64 }) if index == first_past),
            "read of 5 bytes at {offset}: {r:?}"
        );
        let w = shm.write(offset, &[1; 5]);
        ensure!(
            matches!(w, Err(Error::IndexOutOfRange { index, len: 64 }) if index == first_past),
            "write of 5 bytes at {offset}: {w:?}"
        );
    }
    let msg = shm.read(60, &mut buf).map_err(|e| e.to_string());
    ensure!(
        msg == Err("index 64 out of range for length 64".to_string()),
        "message: {msg:?}"
    );
    ensure!(
        shm.to_vec() == [7; 64],
        "a refused write changed the segment"
    );
    Ok(())
}

/// A name that cannot be a segment's is an invalid argument, whatever is wrong with it, and a
/// missing segment's error names it (Python's `FileNotFoundError: ... '/name'`) and keeps its
/// kind. Ports `_TestSharedMemory.test_shared_memory_name_with_embedded_null`, the taken name
/// of `test_shared_memory_recreate` and `TestResourceTracker.test_too_long_name_resource`.
async fn shared_memory_bad_and_missing_names() -> TestResult {
    let long = "x".repeat(256);
    for name in ["", "/", "a/b", "//a", "a\0b", ".", "/..", long.as_str()] {
        for r in [SharedMemory::create(name, 10), SharedMemory::attach(name)] {
            ensure!(
                matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("shared memory name")),
                "name {name:?}: {:?}",
                r.map(|s| s.size())
            );
        }
    }
    let missing = unique("missing");
    match SharedMemory::attach(&missing) {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            let shown = e.to_string();
            ensure!(
                shown.contains(&missing),
                "the error names no segment: {shown}"
            );
        }
        r => return Err(format!("attach of a missing segment: {:?}", r.map(|s| s.size())).into()),
    }
    let name = unique("twice");
    let first = SharedMemory::create(&name, 10)?;
    match SharedMemory::create(&name, 10) {
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            ensure!(
                e.to_string().contains(&name),
                "the error names no segment: {e}"
            );
        }
        r => return Err(format!("a second create: {:?}", r.map(|s| s.size())).into()),
    }
    drop(first);
    // A size no file can have: the error says which.
    let too_large = usize::MAX;
    for r in [
        SharedMemory::create_anonymous(too_large),
        SharedMemory::create(&unique("too-large"), too_large),
    ] {
        match r {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                ensure!(
                    e.to_string().contains(&too_large.to_string()),
                    "the error gives no size: {e}"
                );
            }
            r => {
                return Err(
                    format!("a segment of {too_large} bytes: {:?}", r.map(|s| s.size())).into(),
                );
            }
        }
    }
    Ok(())
}

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

/// `_TestSharedMemory.test_shared_memory_untracking` (gh-82300) for a creator: a child
/// creates a segment with `keep_name` (Python 3.13's `track=False`) and exits; the segment
/// is still there, with what the child wrote, until the parent unlinks it. Without
/// `keep_name` the child's handle removes it as the child ends.
async fn shared_memory_kept_name_outlives_its_creator() -> TestResult {
    let name = unique("keep");
    let mut p = Process::new(shm_create_write_exit, (name.clone(), true))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(shm_exists(&name), "the kept name went with its creator");
    let mut shm = SharedMemory::attach(&name)?;
    let mut buf = [0u8; 4];
    shm.read(0, &mut buf)?;
    ensure!(&buf == b"kept", "the creator's write: {buf:?}");
    shm.unlink()?;
    ensure!(!shm_exists(&name), "unlink left the segment");

    let mut p = Process::new(shm_create_write_exit, (name.clone(), false))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(!shm_exists(&name), "a name not kept outlived its creator");
    Ok(())
}

/// No Python counterpart: a child holding a segment (named: received from its creator;
/// anonymous: a memfd) is killed; the named one is still removed by its creator's drop, and
/// neither leaves a segment or a descriptor behind.
async fn shared_memory_survives_killed_child() -> TestResult {
    let name = unique("kill");
    // The first named segment starts this process's tracker, whose socket stays open.
    drop(SharedMemory::create(&unique("first"), 1)?);
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

/// Ends the creator `p` as `how` says (`"kill"`, else `terminate()`), then checks that its
/// tracker ends too, having removed the segment `name`.
async fn end_creator_then_no_segment(
    p: &mut Process,
    how: &str,
    tracker: u32,
    name: &str,
) -> TestResult {
    match how {
        "kill" => p.kill()?,
        _ => p.terminate()?,
    }
    p.join().await?;
    ensure!(
        eventually(LONG, || support::is_zombie_or_gone(tracker)).await,
        "the tracker {tracker} outlived its creator"
    );
    if shm_exists(name) {
        // Removed here, so that a failed run leaves nothing in /dev/shm.
        SharedMemory::attach(name)?.unlink()?;
        return Err(format!("the segment of a creator ended by {how} is left").into());
    }
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_cleaned_after_process_termination` and
/// `TestResourceTracker.test_resource_tracker`: a creator
/// killed by SIGKILL or ended by SIGTERM (`terminate()`) runs no drop; its tracker removes
/// the name once it has gone, as Python's resource tracker does. So it does for a creator
/// that ended without dropping its handle.
async fn a_creator_killed_leaves_no_segment() -> TestResult {
    for how in ["kill", "terminate"] {
        let name = unique(how);
        let (mut p, tracker) = creator_of(&name, false).await?;
        // The tracker moves off the program's streams first thing, as its creator goes on.
        let target = |fd: i32| std::fs::read_link(format!("/proc/{tracker}/fd/{fd}"));
        for fd in [0, 1] {
            let null = || target(fd).is_ok_and(|to| to == std::path::Path::new("/dev/null"));
            ensure!(
                eventually(LONG, null).await,
                "the tracker's descriptor {fd} is {:?}, which a reader of the program's may wait on",
                target(fd)
            );
        }
        end_creator_then_no_segment(&mut p, how, tracker, &name).await?;
    }
    let name = unique("forget");
    let mut p = Process::new(shm_create_and_forget, (name.clone(),))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(
        eventually(LONG, || !shm_exists(&name)).await,
        "the segment of a creator that forgot its handle is left"
    );
    Ok(())
}

/// The tracker leaves what its creator did not own when it went: a kept name
/// (`keep_name`, Python 3.13's `track=False`), a name that someone else unlinked and made
/// again for another segment, and a name another process held when the creator tried it.
/// That last creator's tracker ran all the same: a tracker starts before its creator's first
/// segment exists, where a creator killed as it made that segment left the name if the kill
/// fell in its tracker's start (a process start, after the segment: about 1 in 4 creators
/// killed 0 to 4 ms after their start).
async fn a_killed_creators_tracker_leaves_names_not_its_own() -> TestResult {
    let kept = unique("tracker-kept");
    let (mut p, tracker) = creator_of(&kept, true).await?;
    kill_creator(&mut p, tracker).await?;
    ensure!(shm_exists(&kept), "the tracker removed a kept name");
    SharedMemory::attach(&kept)?.unlink()?;

    let remade = unique("tracker-remade");
    let (mut p, tracker) = creator_of(&remade, false).await?;
    SharedMemory::attach(&remade)?.unlink()?;
    let ours = SharedMemory::create(&remade, 64)?;
    kill_creator(&mut p, tracker).await?;
    ensure!(
        shm_exists(&remade),
        "the tracker removed a name made again by another process"
    );
    drop(ours);
    ensure!(!shm_exists(&remade), "our own segment's name is left");

    let taken = unique("tracker-taken");
    let _ours = SharedMemory::create(&taken, 64)?;
    // `creator_of` fails unless the child has a tracker.
    let (mut p, tracker) = creator_of(&taken, false).await?;
    kill_creator(&mut p, tracker).await?;
    ensure!(
        shm_exists(&taken),
        "the tracker removed a name it never held"
    );
    Ok(())
}

/// Kills `p`, a creator of segments, and waits for its tracker to end.
async fn kill_creator(p: &mut Process, tracker: u32) -> TestResult {
    p.kill()?;
    p.join().await?;
    ensure!(
        eventually(LONG, || support::is_zombie_or_gone(tracker)).await,
        "the tracker {tracker} outlived its creator"
    );
    Ok(())
}

/// Makes the segments `names`, the first with its soft limit of open descriptors lowered to a
/// few more than it has open (so its tracker starts with that limit), the others with its
/// limit as it was; says so, and waits to be killed.
async fn shm_create_past_a_lowered_limit(names: Vec<String>, ready: Event) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let open = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| e.to_string())?
        .count() as u64;
    let mut held = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i == 0 {
            setrlimit(Resource::RLIMIT_NOFILE, open + 16, hard).map_err(|e| e.to_string())?;
        }
        held.push(SharedMemory::create(name, 64).map_err(|e| e.to_string())?);
        if i == 0 {
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(|e| e.to_string())?;
        }
    }
    ready.set();
    std::future::pending::<()>().await;
    Ok(())
}

/// A creator whose limit of open descriptors was low when it made its first segment (which
/// started its tracker), and higher when it made the next hundred, leaves none of them once
/// killed: the tracker kept the limit its creator had at its start, and the segments past
/// it went untracked.
async fn a_tracker_holds_segments_past_its_creators_first_limit() -> TestResult {
    let names: Vec<String> = (0..100).map(|i| unique(&format!("limit{i}"))).collect();
    let ready = Event::new()?;
    let mut p = Process::new(
        shm_create_past_a_lowered_limit,
        (names.clone(), ready.clone()),
    )
    .daemon(true)
    .start()
    .await?;
    let tracker = tracker_once_made(&p, &ready).await?;
    kill_creator(&mut p, tracker).await?;
    let left: Vec<&String> = names.iter().filter(|n| shm_exists(n)).collect();
    for name in &left {
        let _ = SharedMemory::attach(name)?.unlink();
    }
    ensure!(left.is_empty(), "{} of 100 segments left", left.len());
    Ok(())
}

/// Adds 1 to the counter and to its own cell of `done`, `n` times, each under the one lock
/// they share; a lock whose holder died is taken again.
async fn count_under_a_shared_lock(
    counter: Value<i64>,
    done: Array<i64>,
    me: usize,
    n: i64,
) -> Result<(), String> {
    let mut added = 0;
    while added < n {
        let mut g = match counter.lock().await {
            Ok(g) => g,
            Err(Error::LockOwnerDied { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        };
        g.update(|x| x + 1);
        let cells = done.get_obj();
        cells
            .set(me, cells.get(me).ok_or("no cell")? + 1)
            .map_err(|e| e.to_string())?;
        added += 1;
    }
    Ok(())
}

/// `_TestValue.test_getobj_getlock` and `_TestArray.test_getobj_getlock` under contention:
/// four children count under one lock shared by a `Value` and an `Array`, and one is killed
/// by SIGKILL midway, holding the lock or not. No one hangs, the lock is free afterwards,
/// and the counter is the sum of the completed updates (the killed one's last, half done,
/// at most one more).
async fn a_holder_killed_mid_update_is_reported_and_counts_stay_exact() -> TestResult {
    const N: i64 = 100_000;
    let lock = Lock::new()?;
    let counter = Value::with_lock(0i64, lock.clone())?;
    let done = Array::with_lock(&[0i64; 4], lock)?;
    let mut children = Vec::new();
    for me in 0..4 {
        let p = Process::new(
            count_under_a_shared_lock,
            (counter.clone(), done.clone(), me, N),
        )
        .daemon(true)
        .start()
        .await?;
        children.push(p);
    }
    ensure!(
        eventually(LONG, || done.get_obj().get(0).is_some_and(|d| d > 1000)).await,
        "the first child did not count"
    );
    children[0].kill()?;
    ensure!(
        children[0].join().await? == -9,
        "the first child was not killed"
    );
    for p in &mut children[1..] {
        join_ok(p).await?;
    }
    let g = tokio::time::timeout(LONG, counter.lock()).await?;
    let g = match g {
        Err(Error::LockOwnerDied { .. }) => counter.lock().await?,
        other => other?,
    };
    let cells = done.get_obj().to_vec();
    ensure!(cells[1..] == [N; 3], "the survivors counted {cells:?}");
    let sum: i64 = cells.iter().sum();
    ensure!(
        g.get() == sum || g.get() == sum + 1,
        "the counter is {} for {cells:?}",
        g.get()
    );
    Ok(())
}

/// Makes the segment `name`, then drops it with no descriptor left to open (its soft limit
/// lowered to the descriptors it has open).
fn shm_drop_at_the_descriptor_limit(name: String) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let shm = SharedMemory::create(&name, 64).map_err(|e| e.to_string())?;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    // Counting takes a descriptor of its own, closed again.
    let open = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| e.to_string())?
        .count() as u64
        - 1;
    setrlimit(Resource::RLIMIT_NOFILE, open, hard).map_err(|e| e.to_string())?;
    drop(shm);
    Ok(())
}

/// A creator at its limit of open descriptors that drops its handle removes the name: the
/// drop opened the name to check it was still its own, failed for want of a descriptor,
/// and left the name, which the tracker, told the handle went, left too.
async fn a_creator_at_its_descriptor_limit_removes_its_name() -> TestResult {
    let name = unique("at-limit");
    let mut p = Process::new(shm_drop_at_the_descriptor_limit, (name.clone(),))
        .start()
        .await?;
    let ended = join_ok(&mut p).await;
    let left = eventually(Duration::from_secs(2), || !shm_exists(&name)).await;
    if !left {
        SharedMemory::attach(&name)?.unlink()?;
    }
    ended?;
    ensure!(left, "the name of a dropped creator is left");
    Ok(())
}

/// Set in a child that stops in `SharedMemory::create` (see [`stop_once_made`]).
static MADE: std::sync::OnceLock<Event> = std::sync::OnceLock::new();

/// Says the segment is made, then waits to be killed: what a creator killed at that point
/// leaves is what any kill between the segment's making and its tracking leaves.
fn stop_once_made() {
    if let Some(made) = MADE.get() {
        made.set();
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

async fn shm_create_stopping_once_made(name: String, made: Event) -> Result<(), String> {
    let _ = MADE.set(made);
    tokio_multiprocessing::__private::on_segment_made(stop_once_made);
    SharedMemory::create(&name, 64).map_err(|e| e.to_string())?;
    Ok(())
}

/// A creator killed after it made a segment and before its tracker knew of it leaves no name:
/// the segment has none until the tracker holds it.
async fn a_creator_killed_between_making_a_segment_and_telling_its_tracker_leaves_no_name()
-> TestResult {
    let name = unique("tracker-between");
    let made = Event::new()?;
    let mut p = Process::new(shm_create_stopping_once_made, (name.clone(), made.clone()))
        .daemon(true)
        .start()
        .await?;
    ensure!(made.wait_timeout(LONG).await?, "the child made no segment");
    let Some(tracker) = tracker_of(p.pid()) else {
        return Err(format!("no tracker of the child {}", p.pid()).into());
    };
    kill_creator(&mut p, tracker).await?;
    let left = shm_exists(&name);
    if left {
        SharedMemory::attach(&name)?.unlink()?;
    }
    ensure!(!left, "the killed creator left its segment's name");
    Ok(())
}

/// `TestResourceTracker.test_resource_tracker_sigint` and `test_resource_tracker_sigterm`
/// (bpo-31310): the signals sent to a whole program (a terminal's SIGINT, a service manager's
/// SIGTERM, a hang-up) do not end a tracker, which still removes its creator's segment once
/// the creator is killed.
async fn a_tracker_outlives_the_signals_sent_to_a_program() -> TestResult {
    use nix::sys::signal::{Signal, kill};
    let name = unique("signalled-tracker");
    let (mut p, tracker) = creator_of(&name, false).await?;
    // Its signals are set once it has moved off the program's streams.
    let null = || {
        std::fs::read_link(format!("/proc/{tracker}/fd/1"))
            .is_ok_and(|to| to == std::path::Path::new("/dev/null"))
    };
    ensure!(eventually(LONG, null).await, "the tracker never detached");
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        kill(nix::unistd::Pid::from_raw(tracker as i32), sig)?;
    }
    end_creator_then_no_segment(&mut p, "kill", tracker, &name).await
}

/// `TestResourceTracker.test_resource_tracker_sigkill` (bpo-31310): a tracker someone killed
/// is replaced at the next segment, which the new one removes once the creator is killed (the
/// first is lost with the tracker that held it).
async fn a_killed_tracker_is_replaced() -> TestResult {
    let (first, second) = (unique("tracker-first"), unique("tracker-second"));
    let events = [Event::new()?, Event::new()?, Event::new()?];
    let mut p = Process::new(
        shm_create_two,
        (first.clone(), second.clone(), events.clone()),
    )
    .daemon(true)
    .start()
    .await?;
    ensure!(events[0].wait_timeout(LONG).await?, "no first segment");
    let Some(killed) = tracker_of(p.pid()) else {
        return Err("no tracker of the child".into());
    };
    support::pool::kill9(killed)?;
    ensure!(
        eventually(LONG, || support::is_zombie_or_gone(killed)).await,
        "the tracker {killed} survived SIGKILL"
    );
    events[1].set();
    ensure!(events[2].wait_timeout(LONG).await?, "no second segment");
    let replaced = tracker_of(p.pid()).filter(|t| *t != killed);
    let Some(tracker) = replaced else {
        return Err("the killed tracker was not replaced".into());
    };
    p.kill()?;
    p.join().await?;
    ensure!(
        eventually(LONG, || support::is_zombie_or_gone(tracker)).await,
        "the tracker {tracker} outlived its creator"
    );
    ensure!(!shm_exists(&second), "the second segment is left");
    if shm_exists(&first) {
        SharedMemory::attach(&first)?.unlink()?;
    }
    Ok(())
}

async fn arrays_of_copies_and_too_many_elements() -> TestResult {
    // `Array('q', [3] * 5)`, and more elements than an address can count: an error, where
    // building the copies on the heap first panicked.
    let a = tokio_multiprocessing::Array::<i64>::from_elem(3, 5)?;
    let items = a.to_vec().await?;
    ensure!(items == [3; 5], "from_elem: {items:?}");
    let huge = RawArray::<u64>::from_elem(0, usize::MAX / 4);
    ensure!(
        matches!(huge, Err(Error::InvalidArgument(_))),
        "{:?}",
        huge.map(|a| a.len())
    );
    let huge = tokio_multiprocessing::Array::<u64>::from_elem(1, usize::MAX / 4);
    ensure!(
        matches!(huge, Err(Error::InvalidArgument(_))),
        "{:?}",
        huge.map(|a| a.len())
    );
    Ok(())
}

async fn a_dropped_creator_leaves_a_name_made_again_by_another() -> TestResult {
    // The creator's handle removes the name it made; once that name was removed and made
    // again for another segment, it is the new segment's, which its dropped first creator
    // must not remove.
    let name = unique("remade");
    let first = SharedMemory::create(&name, 64)?;
    SharedMemory::attach(&name)?.unlink()?;
    let second = SharedMemory::create(&name, 64)?;
    second.write(0, &[7])?;
    drop(first);
    let attached = SharedMemory::attach(&name);
    ensure!(
        attached.as_ref().is_ok_and(|a| a.to_vec()[0] == 7),
        "the second segment's name, after its first creator's drop: {:?}",
        attached.map(|a| a.to_vec()[0])
    );
    drop(second);
    ensure!(
        !shm_exists(&name),
        "the second creator's drop left its name"
    );
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

/// The list of `test_shared_memory_ShareableList_basics`.
fn python_list() -> Vec<ShareableItem> {
    vec![
        "howdy".into(),
        b"HoWdY".as_slice().into(),
        (-273.154).into(),
        100.into(),
        ().into(),
        true.into(),
        42.into(),
    ]
}

/// `_TestSharedMemory.test_shared_memory_ShareableList_basics`, ported.
async fn shareable_list_basics() -> TestResult {
    let name = unique("list");
    let sl = ShareableList::create(Some(&name), python_list())?;
    ensure!(sl.len() == 7, "len {}", sl.len());
    ensure!(sl.to_vec()? == python_list(), "{sl:?}");
    ensure!(
        sl.format()? == "8s8sdqxxxxxx?xxxxxxxx?q",
        "format {}",
        sl.format()?
    );
    ensure!(sl.index(&ShareableItem::from(42))? == 6, "index of 42");
    ensure!(
        sl.count(&ShareableItem::from(b"HoWdY".as_slice()))? == 1,
        "count"
    );
    let missing = sl.index(&ShareableItem::from("missing"));
    ensure!(
        matches!(missing, Err(Error::InvalidArgument(_))),
        "{missing:?}"
    );
    // Any type into a number's slot; a string or bytes up to its slot's size.
    sl.set(2, "hi")?;
    ensure!(
        sl.get(2)? == ShareableItem::from("hi"),
        "a string in a float's slot"
    );
    sl.set(-1, 3.5)?;
    sl.set(4, false)?;
    sl.set(0, "12345678")?;
    sl.set(3, ())?;
    let too_long = sl.set(0, "123456789");
    ensure!(
        matches!(too_long, Err(Error::InvalidArgument(_))),
        "{too_long:?}"
    );
    ensure!(
        sl.get(0)? == ShareableItem::from("12345678"),
        "a refused set changed the item"
    );
    for i in [7, -8] {
        let r = sl.get(i);
        ensure!(
            matches!(r, Err(Error::IndexOutOfRange { .. })),
            "get({i}): {r:?}"
        );
    }
    let other = ShareableList::attach(&name)?;
    ensure!(
        other.to_vec()?
            == vec![
                "12345678".into(),
                b"HoWdY".as_slice().into(),
                "hi".into(),
                ().into(),
                false.into(),
                true.into(),
                3.5.into()
            ],
        "{other:?}"
    );
    let huge = ShareableList::create(None::<&str>, [vec![0u8; 10_000_000]]);
    ensure!(matches!(huge, Err(Error::InvalidArgument(_))), "{huge:?}");
    let empty = ShareableList::create(None::<&str>, Vec::<ShareableItem>::new())?;
    ensure!(empty.is_empty() && empty.to_vec()?.is_empty(), "{empty:?}");
    let generated = empty.shm().name().unwrap_or("").to_string();
    ensure!(
        generated.starts_with("psm_") && generated.len() == 12,
        "name {generated}"
    );
    drop((sl, other, empty));
    ensure!(
        !shm_exists(&name) && !shm_exists(&generated),
        "a segment was left"
    );
    Ok(())
}

/// `_TestSharedMemory.test_shared_memory_ShareableList_basics`, the steps that change an
/// item's type and size, in CPython's order with CPython's formats: a string in an
/// integer's slot, UTF-8 filling a slot to its last byte, one byte too many refused with
/// nothing spilled to the next item, counts, a copy under a name of its own, a second
/// handle by name, and an empty list.
async fn shareable_list_formats_as_items_change() -> TestResult {
    let list = python_list();
    let sl = ShareableList::create(None::<&str>, list.clone())?;
    sl.set(0, "howdy")?;
    ensure!(
        sl.format()? == "8s8sdqxxxxxx?xxxxxxxx?q",
        "format {}",
        sl.format()?
    );
    ensure!(sl.len() == 7, "len {}", sl.len());
    let r = sl.index(&ShareableItem::from("100"));
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "index('100'): {r:?}"
    );
    ensure!(sl.index(&ShareableItem::from(100))? == 3, "index(100)");
    ensure!(sl.get(0)? == ShareableItem::from("howdy"), "sl[0]");
    ensure!(sl.get(-2)? == ShareableItem::from(true), "sl[-2]");
    ensure!(sl.to_vec()? == list, "tuple(sl): {sl:?}");

    sl.set(3, 42)?;
    ensure!(sl.get(3)? == ShareableItem::from(42), "sl[3]");
    sl.set(4, "some")?;
    ensure!(sl.get(4)? == ShareableItem::from("some"), "sl[4]");
    ensure!(
        sl.format()? == "8s8sdq8sxxxxxxx?q",
        "format after sl[4] = 'some': {}",
        sl.format()?
    );
    let storage = |r: tokio_multiprocessing::Result<()>| matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("exceeds available storage"));
    ensure!(storage(sl.set(4, "far too many")), "sl[4] = 'far too many'");
    ensure!(
        sl.get(4)? == ShareableItem::from("some"),
        "sl[4] after a refused set"
    );
    sl.set(0, "encodés")?; // exactly 8 bytes of UTF-8
    ensure!(sl.get(0)? == ShareableItem::from("encodés"), "sl[0]");
    let howdy = ShareableItem::from(b"HoWdY".as_slice());
    ensure!(sl.get(1)? == howdy, "sl[1] after sl[0] filled its slot");
    ensure!(storage(sl.set(0, "encodées")), "sl[0] = 9 bytes of UTF-8");
    ensure!(sl.get(1)? == howdy, "sl[1] after a refused sl[0]");
    ensure!(
        storage(sl.set(1, b"123456789".as_slice())),
        "sl[1] = 9 bytes"
    );
    ensure!(sl.get(1)? == howdy, "sl[1] after a refused set");
    ensure!(sl.count(&ShareableItem::from(42))? == 2, "count(42)");
    ensure!(sl.count(&howdy)? == 1, "count(b'HoWdY')");
    ensure!(
        sl.count(&ShareableItem::from(b"adios".as_slice()))? == 0,
        "count(b'adios')"
    );

    let dup = unique("duplicate");
    let copy = ShareableList::create(Some(&dup), sl.to_vec()?)?;
    ensure!(copy.shm().name() == Some(dup.as_str()), "the copy's name");
    ensure!(copy.to_vec()? == sl.to_vec()?, "the copy's items");
    // CPython gives a string a slot of its length in characters rounded up, so its copy
    // has the list's format; the crate counts the string's UTF-8 bytes (see the README), so
    // `encodés`, 7 characters in 8 bytes, gets 16 bytes where CPython gives it 8.
    ensure!(
        copy.format()? == "16s8sdq8sxxxxxxx?q",
        "the copy's format {}",
        copy.format()?
    );
    copy.set(-1, 77)?;
    ensure!(copy.get(-1)? == ShareableItem::from(77), "copy[-1]");
    ensure!(
        sl.get(-1)? != ShareableItem::from(77),
        "the copy shares its memory"
    );
    drop(copy);

    let tethered = ShareableList::attach(sl.shm().name().ok_or("no name")?)?;
    tethered.set(-1, 880)?;
    ensure!(
        sl.get(-1)? == ShareableItem::from(880),
        "sl[-1] set through another handle"
    );
    drop(tethered);

    let empty = ShareableList::create(None::<&str>, Vec::<ShareableItem>::new())?;
    ensure!(empty.is_empty(), "len {}", empty.len());
    ensure!(empty.format()?.is_empty(), "format {:?}", empty.format()?);
    ensure!(
        empty.count(&ShareableItem::from("any"))? == 0,
        "count('any')"
    );
    let r = empty.index(&ShareableItem::from(()));
    ensure!(
        matches!(r, Err(Error::InvalidArgument(_))),
        "index(None): {r:?}"
    );
    let names = [sl.shm().name(), empty.shm().name()].map(|n| n.unwrap_or("").to_string());
    drop((sl, empty));
    ensure!(
        !shm_exists(&dup) && names.iter().all(|n| !shm_exists(n)),
        "a segment was left"
    );
    Ok(())
}

/// `ShareableList.count` and `index` compare as Python's `==` does: CPython 3.11 gives these
/// counts and positions for the same list, where `1`, `1.0` and `True` are equal.
async fn shareable_list_counts_as_python_compares() -> TestResult {
    let sl = ShareableList::create(
        None::<&str>,
        [
            ShareableItem::from(0.0),
            true.into(),
            1.into(),
            1.0.into(),
            ().into(),
            "a".into(),
            b"a".as_slice().into(),
            (1i64 << 53).into(),
            0.into(),
            f64::NAN.into(),
        ],
    )?;
    for (item, count) in [
        (ShareableItem::from(1), 3),
        (true.into(), 3),
        (false.into(), 2),
        (0.0.into(), 2),
        (((1i64 << 53) + 1).into(), 0),
        (f64::NAN.into(), 0),
        ("a".into(), 1),
        (().into(), 1),
    ] {
        ensure!(
            sl.count(&item)? == count,
            "count({item}): {}",
            sl.count(&item)?
        );
    }
    for (item, at) in [
        (ShareableItem::from(1), 1),
        (0.into(), 0),
        (9_007_199_254_740_992.0.into(), 7),
        (b"a".as_slice().into(), 6),
    ] {
        ensure!(
            sl.index(&item)? == at,
            "index({item}): {}",
            sl.index(&item)?
        );
    }
    let missing = sl.index(&ShareableItem::from(2.5));
    ensure!(
        matches!(missing, Err(Error::InvalidArgument(_))),
        "{missing:?}"
    );
    Ok(())
}

async fn double_items(sl: ShareableList) -> Result<(), String> {
    for i in 0..sl.len() as i64 {
        if let ShareableItem::Int(v) = sl.get(i).map_err(|e| e.to_string())? {
            sl.set(i, v * 2).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

async fn shareable_list_reaches_a_child() -> TestResult {
    // Sent as a value, the list carries its segment (no name lookup).
    let sl = ShareableList::create(None::<&str>, [1, 2, 3])?;
    let mut p = Process::new(double_items, (sl.try_clone()?,))
        .start()
        .await?;
    join_ok(&mut p).await?;
    ensure!(sl.to_vec()? == vec![2.into(), 4.into(), 6.into()], "{sl:?}");
    Ok(())
}

/// Runs `script` with python3, whose multiprocessing.shared_memory it needs: `false` (after
/// saying why) where the machine has none; an error if the script fails.
fn python(script: &str) -> Result<bool, String> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import multiprocessing.shared_memory"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no python3 with multiprocessing.shared_memory on this machine");
        return Ok(false);
    }
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    match out.status.success() {
        true => Ok(true),
        false => Err(format!("python: {}", String::from_utf8_lossy(&out.stderr))),
    }
}

async fn shareable_list_shared_with_cpython() -> TestResult {
    // Made here, read and changed by CPython.
    let name = unique("pylist");
    let sl = ShareableList::create(Some(&name), python_list())?;
    let script = format!(
        r#"
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import ShareableList
sl = ShareableList(name="{name}")
resource_tracker.unregister(sl.shm._name, "shared_memory")  # ours to remove
assert list(sl) == ['howdy', b'HoWdY', -273.154, 100, None, True, 42], list(sl)
assert sl.format == "8s8sdqxxxxxx?xxxxxxxx?q", sl.format
sl[0] = "hi"; sl[2] = 2.5; sl[3] = None; sl[4] = 7; sl[6] = b"x"
sl.shm.close()
made = ShareableList(["made", b"by", 3.25, -1, None, False], name="{name}-py")
resource_tracker.unregister(made.shm._name, "shared_memory")  # ours to remove
made.shm.close()
"#
    );
    if !python(&script)? {
        return Ok(());
    }
    let expected: Vec<ShareableItem> = vec![
        "hi".into(),
        b"HoWdY".as_slice().into(),
        2.5.into(),
        ().into(),
        7.into(),
        true.into(),
        b"x".as_slice().into(),
    ];
    ensure!(sl.to_vec()? == expected, "after CPython's changes: {sl:?}");
    // Made by CPython, read here.
    let mut made = ShareableList::attach(&format!("{name}-py"))?;
    made.unlink()?;
    let expected: Vec<ShareableItem> = vec![
        "made".into(),
        b"by".as_slice().into(),
        3.25.into(),
        (-1).into(),
        ().into(),
        false.into(),
    ];
    ensure!(made.to_vec()? == expected, "CPython's list: {made:?}");
    Ok(())
}

/// The longest name a segment can have is the longest file name in `/dev/shm`, 255 bytes,
/// as CPython takes it: a list CPython made under such a name is attached here.
async fn names_of_255_bytes_as_cpython_allows() -> TestResult {
    let longest = |tag: &str| {
        let mut name = unique(tag);
        name.push_str(&"x".repeat(255 - name.len()));
        name
    };
    let ours = longest("ours");
    let shm = SharedMemory::create(&ours, 10)?;
    shm.write(0, b"hi")?;
    let mut buf = [0u8; 2];
    SharedMemory::attach(&format!("/{ours}"))?.read(0, &mut buf)?;
    ensure!(&buf == b"hi", "read back {buf:?}");
    let name = longest("py");
    let script = format!(
        r#"
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import ShareableList
made = ShareableList(["long", 255], name="{name}")
resource_tracker.unregister(made.shm._name, "shared_memory")  # ours to remove
made.shm.close()
"#
    );
    if !python(&script)? {
        return Ok(());
    }
    let mut made = ShareableList::attach(&name)?;
    made.unlink()?;
    ensure!(
        made.to_vec()? == vec!["long".into(), 255.into()],
        "CPython's list: {made:?}"
    );
    drop(shm);
    ensure!(!shm_exists(&ours), "a segment was left");
    Ok(())
}

async fn shareable_list_refuses_a_segment_that_is_not_one() -> TestResult {
    let name = unique("notalist");
    let shm = SharedMemory::create(&name, 64)?;
    // A length that cannot fit, then offsets that run backwards or past the end.
    for (at, bytes) in [
        (0usize, 1_000_000i64.to_le_bytes()),
        (0, 2i64.to_le_bytes()),
        (16, 0i64.to_le_bytes()),
        (16, 900i64.to_le_bytes()),
    ] {
        shm.write(at, &bytes)?;
        let r = ShareableList::attach(&name);
        ensure!(matches!(r, Err(Error::InvalidArgument(_))), "{at}: {r:?}");
    }
    // Segments too small to hold a length, or a length and the first offset.
    for size in [1, 8, 15] {
        let small = unique("tiny");
        let _shm = SharedMemory::create(&small, size)?;
        let r = ShareableList::attach(&small);
        ensure!(
            matches!(&r, Err(Error::InvalidArgument(m)) if m.contains("does not hold a list")),
            "a segment of {size} bytes: {r:?}"
        );
    }
    // A valid list whose format bytes are garbage: an error for that item only.
    let list_name = unique("garbled");
    let sl = ShareableList::create(Some(&list_name), [1, 2])?;
    let formats = sl.shm().size() - 2 - 16;
    sl.shm().write(formats, b"zzzzzzzz")?;
    let r = sl.get(0);
    ensure!(matches!(r, Err(Error::InvalidArgument(_))), "{r:?}");
    ensure!(sl.get(1)? == ShareableItem::from(2), "the other item");
    Ok(())
}

/// No Python counterpart (Python's values carry their ctype with them): shared cells received
/// as another element type of the same size are refused, as cells of another size are, rather
/// than read as values their type cannot hold (a byte of 2 as a `bool`); the same type is
/// received.
async fn shared_values_received_as_another_type_are_refused() -> TestResult {
    let bytes = RawArray::from_slice(&[2u8, 0, 1])?;
    let r = send_as::<_, RawArray<bool>>(bytes.clone()).await?;
    ensure!(r.is_err(), "cells of u8 received as bool");
    let r = send_as::<_, Value<f32>>(Value::new(7u32)?).await?;
    ensure!(r.is_err(), "a Value<u32> received as Value<f32>");
    let r = send_as::<_, RawValue<Point>>(RawValue::new(u128::MAX)?).await?;
    ensure!(r.is_err(), "a RawValue<u128> received as RawValue<Point>");
    let same = send_as::<_, RawArray<u8>>(bytes.clone()).await??;
    same.set(0, 9)?;
    ensure!(
        bytes.to_vec() == [9, 0, 1],
        "the same type: {:?}",
        bytes.to_vec()
    );
    Ok(())
}

/// No Python counterpart: a `SharedMemory`, whose bytes anyone holding it writes freely, is
/// refused where shared cells are expected, and shared cells where a `SharedMemory` is, as
/// the cells of another type are. The code before took each for the other: a segment
/// written to look like a `RawValue<bool>` holding 2 was read as a `bool` that cannot
/// exist, and a `RawValue<bool>`'s cells received as a `SharedMemory` could be written so.
async fn shared_memory_and_shared_cells_are_not_taken_for_each_other() -> TestResult {
    // Both cross as a descriptor; the name a `SharedMemory` carries beside it is `None`.
    type AsShm = (tokio_multiprocessing::Fd, Option<String>);
    type AsCells = (tokio_multiprocessing::Fd,);
    let model = RawValue::new(true)?;
    let (fd,) = send_as::<_, AsCells>(model.clone()).await??;
    let cells = send_as::<_, SharedMemory>((fd, None::<String>)).await?;
    ensure!(
        cells.is_err(),
        "the cells of a RawValue<bool> received as a SharedMemory"
    );
    // A header as the crate writes one for a single `bool` (element size 1, count 1, the
    // FNV-1a hash of the type's name), and then a byte of 2.
    let tag = "bool".bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let shm = SharedMemory::create_anonymous(4096)?;
    shm.write(0, &1u32.to_ne_bytes())?;
    shm.write(8, &1u64.to_ne_bytes())?;
    shm.write(16, &tag.to_ne_bytes())?;
    shm.write(64, &[2])?;
    let (fd, _) = send_as::<_, AsShm>(shm.try_clone()?).await??;
    let r = send_as::<_, RawValue<bool>>((fd,)).await?;
    // Not read if it was taken: reading it would make the `bool` of 2.
    ensure!(r.is_err(), "a SharedMemory received as a RawValue<bool>");
    // Each still crosses as itself.
    let back = send_as::<_, RawValue<bool>>(model.clone()).await??;
    back.set(false);
    ensure!(!model.get(), "the value received is another");
    let back = send_as::<_, SharedMemory>(shm.try_clone()?).await??;
    back.write(0, b"x")?;
    let mut b = [0u8];
    shm.read(0, &mut b)?;
    ensure!(b == *b"x", "the segment received is another");
    Ok(())
}

fn main() {
    tokio_multiprocessing::init();
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    let trials = trials![
        value_and_array_cross,
        value_lock_and_indices,
        synchronized_raw_objects_share_their_memory,
        shared_memory_named,
        shared_memory_out_of_range,
        arrays_of_copies_and_too_many_elements,
        shared_memory_bad_and_missing_names,
        shared_memory_survives_killed_child,
        shared_memory_kept_name_outlives_its_creator,
        a_dropped_creator_leaves_a_name_made_again_by_another,
        a_creator_killed_leaves_no_segment,
        a_killed_creators_tracker_leaves_names_not_its_own,
        a_killed_tracker_is_replaced,
        a_tracker_outlives_the_signals_sent_to_a_program,
        a_tracker_holds_segments_past_its_creators_first_limit,
        a_holder_killed_mid_update_is_reported_and_counts_stay_exact,
        a_creator_at_its_descriptor_limit_removes_its_name,
        a_creator_killed_between_making_a_segment_and_telling_its_tracker_leaves_no_name,
        example_shared_value_array,
        shareable_list_basics,
        shareable_list_formats_as_items_change,
        shareable_list_counts_as_python_compares,
        shareable_list_reaches_a_child,
        shareable_list_shared_with_cpython,
        names_of_255_bytes_as_cpython_allows,
        shareable_list_refuses_a_segment_that_is_not_one,
        shared_values_received_as_another_type_are_refused,
        shared_memory_and_shared_cells_are_not_taken_for_each_other
    ];
    libtest_mimic::run(&args, trials).exit()
}
