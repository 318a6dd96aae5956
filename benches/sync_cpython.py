#!/usr/bin/env python3
"""CPython's multiprocessing beside tokio-multiprocessing, on this machine.

Runs the CPython counterparts of the figures in benches/sync.rs, then `cargo bench --bench
sync` (unless --no-rust), and prints both sides with their ratio:

  - uncontended Lock acquire + release (ns)
  - Value increments under its lock from 2 processes at once (ops/s)
  - Event ping-pong between two processes, one round trip (us)

Usage: python3 benches/sync_cpython.py [--no-rust]
"""

import multiprocessing as mp
import subprocess
import sys
import time

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


def value_increments_ops():
    v = mp.Value("q", 0)
    start = mp.Event()
    done = mp.Semaphore(0)
    kids = [mp.Process(target=incrementer, args=(v, start, done, INCREMENTS)) for _ in range(2)]
    for k in kids:
        k.start()
    t = time.perf_counter()
    start.set()
    done.acquire()
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
    """Median of CHUNKS chunks of PINGS round trips, as the Rust side measures it."""
    ping, pong = mp.Event(), mp.Event()
    p = mp.Process(target=ponger, args=(ping, pong, CHUNKS * PINGS + 1))
    p.start()
    ping.set()
    pong.wait()
    pong.clear()
    chunks = []
    for _ in range(CHUNKS):
        t = time.perf_counter()
        for _ in range(PINGS):
            ping.set()
            pong.wait()
            pong.clear()
        chunks.append((time.perf_counter() - t) * 1e6 / PINGS)
    p.join()
    return sorted(chunks)[CHUNKS // 2]


def rust_figures():
    out = subprocess.run(
        ["cargo", "bench", "--bench", "sync"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    figures = {}
    for line in out.splitlines():
        if line.startswith("figure "):
            _, name, value = line.split()
            figures[name] = float(value)
        else:
            print("  rust: " + line)
    return figures


def main():
    mp.set_start_method("fork")
    py = {
        "uncontended_lock_unlock_ns": uncontended_lock_ns(),
        "value_increments_2_processes_ops_per_s": value_increments_ops(),
        "event_ping_pong_round_trip_us": event_ping_pong_us(),
    }
    rust = {} if "--no-rust" in sys.argv else rust_figures()
    print(f"{'figure':<42} {'CPython ' + sys.version.split()[0]:>16} {'tokio-mp':>14} {'ratio':>10}")
    for name, value in py.items():
        r = rust.get(name)
        if r is None:
            print(f"{name:<42} {value:>16.1f} {'-':>14} {'-':>10}")
            continue
        # Higher is better for rates, lower for times: print how many times better Rust is.
        better = r / value if name.endswith("per_s") else value / r
        print(f"{name:<42} {value:>16.1f} {r:>14.1f} {better:>9.1f}x")
    raw = rust.get("event_ping_pong_raw_eventfd_us")
    if raw is not None:
        print(f"{'(raw eventfd ping-pong, same run)':<42} {'':>16} {raw:>14.1f}")


if __name__ == "__main__":
    main()
