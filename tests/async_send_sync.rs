//! Which public types and futures are `Send`, `Sync` and `Unpin`: checked when this file
//! compiles, so that a change that makes a handle or a future lose one of them (a user's
//! `tokio::spawn`, a handle shared through an `Arc`, `select!` on `&mut fut`) fails the build
//! instead of a user's. After tokio's `tests/async_send_sync.rs`.
//!
//! Nothing here runs: the futures are built inside closures that are type-checked, never
//! called.

#![allow(dead_code, clippy::let_underscore_future)]

use std::time::Duration;

use tokio_multiprocessing as mp;

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn unpin<T: Unpin>() {}

/// `T: Send + Sync + Unpin`: a handle that may be moved to a task, shared by reference
/// between tasks, and kept in a struct that is polled.
fn all<T: Send + Sync + Unpin>() {}

fn send_val<T: Send>(_: &T) {}
fn unpin_val<T: Unpin>(_: &T) {}

/// A user's `fn` target for the pool and process checks.
fn square(x: i64) -> i64 {
    x * x
}

/// A user's process target.
fn greet(_: i64) {}

#[test]
fn handles_are_send_sync_unpin() {
    // Errors and plain values.
    all::<mp::Error>();
    all::<mp::ExitCause>();
    all::<mp::StartMethod>();
    all::<mp::Address>();
    all::<mp::Fd>();
    all::<mp::PutError<String>>();

    // Processes.
    all::<mp::Process>();
    all::<mp::ProcessBuilder>();

    // Pools and their results.
    all::<mp::Pool>();
    all::<mp::PoolBuilder>();
    send::<mp::AsyncResult<i64>>();
    unpin::<mp::AsyncResult<i64>>();
    send::<mp::MapResult<i64>>();
    unpin::<mp::MapResult<i64>>();
    send::<mp::IMap<i64>>();
    unpin::<mp::IMap<i64>>();
    send::<mp::Map<'static, i64>>();

    // Queues, pipes, listeners.
    all::<mp::Queue<String>>();
    all::<mp::SimpleQueue<String>>();
    all::<mp::JoinableQueue<String>>();
    all::<mp::Connection<String>>();
    all::<mp::Listener>();
    // A sink is driven through `&mut`, by one task at a time, as a `BoxStream` is.
    send::<mp::PutSink<String>>();
    unpin::<mp::PutSink<String>>();

    // Synchronisation primitives and their guards.
    all::<mp::Lock>();
    all::<mp::RLock>();
    all::<mp::Semaphore>();
    all::<mp::BoundedSemaphore>();
    all::<mp::Condition>();
    all::<mp::Event>();
    all::<mp::Barrier>();
    all::<mp::LockGuard<'static>>();
    all::<mp::RLockGuard<'static>>();
    all::<mp::SemaphoreGuard<'static>>();
    all::<mp::ConditionGuard<'static>>();

    // Shared memory.
    all::<mp::Value<i64>>();
    all::<mp::RawValue<i64>>();
    all::<mp::Array<f64>>();
    all::<mp::RawArray<f64>>();
    all::<mp::SharedMemory>();
    send::<mp::ValueGuard<'static, i64>>();
    sync::<mp::ValueGuard<'static, i64>>();
    send::<mp::ArrayGuard<'static, f64>>();
    sync::<mp::ArrayGuard<'static, f64>>();

    // Managers and proxies.
    all::<mp::Manager>();
    all::<mp::DictProxy<String, i64>>();
    all::<mp::ListProxy<i64>>();
    all::<mp::ValueProxy<i64>>();
    all::<mp::SharedMemoryManager>();
    all::<mp::SegmentsProxy>();
}

/// Every `async fn` of the public API returns a `Send` future, so it can be spawned.
#[test]
fn futures_are_send() {
    let _ = |p: &mut mp::Process| {
        send_val(&p.join());
        send_val(&p.join_timeout(Duration::ZERO));
    };
    let _ = || send_val(&mp::Process::new(greet, (1,)).start());

    let _ = |pool: &mp::Pool| {
        send_val(&mp::Pool::new(1));
        send_val(&mp::Pool::builder().processes(1).build());
        send_val(&pool.apply(square, (1,)));
        send_val(&pool.apply_timeout(square, (1,), Duration::ZERO));
        send_val(&std::future::IntoFuture::into_future(
            pool.map(square, 0..3),
        ));
        send_val(&pool.join());
        send_val(&pool.terminate());
        let mut h = pool.apply_async(square, (1,));
        send_val(&h.get_timeout(Duration::ZERO));
        let mut m = pool.map_async(square, 0..3);
        send_val(&m.get_timeout(Duration::ZERO));
    };

    let _ = |q: &mp::Queue<String>, s: &mp::SimpleQueue<String>, j: &mp::JoinableQueue<String>| {
        send_val(&q.put(String::new()));
        send_val(&q.put_timeout(String::new(), Duration::ZERO));
        send_val(&q.get());
        send_val(&q.get_timeout(Duration::ZERO));
        send_val(&s.put(String::new()));
        send_val(&s.get());
        send_val(&j.join());
    };

    let _ = |c: &mp::Connection<String>, l: &mp::Listener, v: &String| {
        send_val(&c.send(v));
        send_val(&c.recv());
        send_val(&c.recv_timeout(Duration::ZERO));
        send_val(&c.send_bytes(b""));
        send_val(&c.recv_bytes());
        send_val(&c.poll(Duration::ZERO));
        send_val(&l.accept::<String>());
        send_val(&mp::Client::connect::<String>(
            mp::Address::Unix("/nonexistent".into()),
            None,
        ));
        let objects: [&dyn mp::Waitable; 1] = [c];
        send_val(&mp::wait(&objects, Some(Duration::ZERO)));
    };

    let _ = |l: &mp::Lock, r: &mp::RLock, c: &mp::Condition| {
        send_val(&l.lock());
        send_val(&l.lock_timeout(Duration::ZERO));
        send_val(&r.lock());
        send_val(&r.lock_timeout(Duration::ZERO));
        send_val(&c.lock());
        send_val(&c.lock_timeout(Duration::ZERO));
    };
    let _ = |g: mp::ConditionGuard<'static>| send_val(&g.wait());
    let _ = |g: mp::ConditionGuard<'static>| send_val(&g.wait_timeout(Duration::ZERO));
    let _ = |s: &mp::Semaphore, b: &mp::BoundedSemaphore| {
        send_val(&s.acquire());
        send_val(&s.acquire_timeout(Duration::ZERO));
        send_val(&b.acquire());
        send_val(&b.acquire_timeout(Duration::ZERO));
    };
    let _ = |e: &mp::Event, b: &mp::Barrier| {
        send_val(&e.wait());
        send_val(&e.wait_timeout(Duration::ZERO));
        send_val(&b.wait());
        send_val(&b.wait_timeout(Duration::ZERO));
    };

    let _ = |v: &mp::Value<i64>, a: &mp::Array<f64>| {
        send_val(&v.lock());
        send_val(&v.get());
        send_val(&v.set(0));
        send_val(&a.lock());
        send_val(&a.get(0));
        send_val(&a.set(0, 0.0));
        send_val(&a.to_vec());
    };

    let _ = |m: &mp::Manager, d: &mp::DictProxy<String, i64>, v: &mp::ValueProxy<i64>| {
        send_val(&mp::Manager::start());
        send_val(&m.dict::<String, i64>());
        send_val(&m.value(0i64));
        send_val(&d.insert(String::new(), 0));
        send_val(&d.get(&String::new()));
        send_val(&v.get());
        send_val(&v.set(0));
    };

    let _ = |m: &mp::SharedMemoryManager, p: &mp::SegmentsProxy| {
        send_val(&mp::SharedMemoryManager::start());
        send_val(&m.shared_memory(1));
        send_val(&m.shareable_list([1i64, 2]));
        send_val(&m.segments());
        send_val(&p.shared_memory(1));
        send_val(&p.shareable_list(["a"]));
        send_val(&p.segments());
    };
}

/// The pool's named results are futures and streams a user polls by `&mut` in `select!`.
#[test]
fn named_futures_are_unpin() {
    let _ = |pool: &mp::Pool| {
        let h = pool.apply_async(square, (1,));
        unpin_val(&h);
        let m = pool.map_async(square, 0..3);
        unpin_val(&m);
        let s = pool.imap_unordered(square, 0..3);
        unpin_val(&s);
    };
}
