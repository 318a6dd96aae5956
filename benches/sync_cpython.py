#!/usr/bin/env python3
"""CPython's multiprocessing beside tokio-multiprocessing, on this machine.

Runs the CPython counterparts of the figures in benches/sync.rs, then `cargo bench --bench
sync` (unless --no-rust), and prints both sides with their ratio:

  - uncontended Lock acquire + release (ns)
  - Value increments under its lock from 2 processes at once, and from 16 (ops/s)
  - Event ping-pong between two processes, one round trip (us)

Each figure is the median of its runs, on both sides: one run for the lock and the
increments, 11 chunks of round trips for the ping-pong; --repeat sets another count.

Usage: python3 benches/sync_cpython.py [--repeat N] [--no-rust]
"""

import multiprocessing as mp
import time

import support

LOCK_ITERS = 1_000_000
INCREMENTS = 200_000
PINGS = 500
CHUNKS = 11


def uncontended_lock_ns():
    lock = mp.Lock()
    acquire, release = lock.acquire, lock.release
    t = time.perf_counter()
    for _ in range(LOCK_ITERS):
        acquire()
        release()
    return (time.perf_counter() - t) * 1e9 / LOCK_ITERS


def incrementer(v, start, done, n):
    start.wait()
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1
    done.release()


def value_increments_ops(processes):
    v = mp.Value("q", 0)
    start = mp.Event()
    done = mp.Semaphore(0)
    share = 2 * INCREMENTS // processes
    kids = [mp.Process(target=incrementer, args=(v, start, done, share)) for _ in range(processes)]
    for k in kids:
        k.start()
    t = time.perf_counter()
    start.set()
    for _ in range(processes):
        done.acquire()
    elapsed = time.perf_counter() - t
    for k in kids:
        k.join()
    assert v.value == 2 * INCREMENTS, "lost increments"
    return 2 * INCREMENTS / elapsed


def ponger(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event_ping_pong_us():
    """Chunks of PINGS round trips, as the Rust side measures them, each chunk's µs per trip."""
    chunks = support.runs(CHUNKS)
    ping, pong = mp.Event(), mp.Event()
    p = mp.Process(target=ponger, args=(ping, pong, chunks * PINGS + 1))
    p.start()
    ping.set()
    pong.wait()
    pong.clear()

    def chunk():
        t = time.perf_counter()
        for _ in range(PINGS):
            ping.set()
            pong.wait()
            pong.clear()
        return (time.perf_counter() - t) * 1e6 / PINGS

    out = support.repeat(chunks, chunk)
    p.join()
    return out


def main():
    args = support.arguments(__doc__).parse_args()
    support.apply_repeat(args)
    mp.set_start_method("fork")
    py = {
        "uncontended_lock_unlock_ns": ("ns", support.repeat(support.runs(1), uncontended_lock_ns)),
        "value_increments_2_processes_ops_per_s": ("ops/s", support.repeat(support.runs(1), lambda: value_increments_ops(2))),
        "value_increments_16_processes_ops_per_s": ("ops/s", support.repeat(support.runs(1), lambda: value_increments_ops(16))),
        "event_ping_pong_round_trip_us": ("us", event_ping_pong_us()),
    }
    py = {name: support.Figure(name, unit, runs) for name, (unit, runs) in py.items()}
    for fig in py.values():
        support.show(fig)
    if args.no_rust:
        return
    rust = support.cargo_bench("sync")
    # Higher is better for rates, lower for times.
    support.compare(rust, py, [(name, name.endswith("per_s")) for name in py])


if __name__ == "__main__":
    main()
