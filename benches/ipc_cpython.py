#!/usr/bin/env python3
"""CPython's multiprocessing beside tokio-multiprocessing: Queue and Pipe figures.

Runs the CPython counterpart of each figure of `cargo bench --bench ipc` on this machine,
then that bench itself, and prints both sides with the ratio (higher is better for rates,
lower for round-trip times).

    python3 benches/ipc_cpython.py            # both sides
    python3 benches/ipc_cpython.py --python   # CPython only
"""

import multiprocessing as mp
import os
import subprocess
import sys
import time

SMALL_ITEMS = 200_000
BIG = 1 << 20
BIG_ITEMS = 200
ROUND_TRIPS = 10_000
ROUNDS = 3  # round-trip figures are the best of this many rounds: the machine is shared


def queue_producer(q, go, n):
    go.recv()
    for i in range(n):
        q.put(i)


def queue_small():
    q = mp.Queue()
    go, go_child = mp.Pipe()
    p = mp.Process(target=queue_producer, args=(q, go_child, SMALL_ITEMS))
    p.start()
    t = time.perf_counter()
    go.send(1)
    for i in range(SMALL_ITEMS):
        assert q.get() == i
    secs = time.perf_counter() - t
    p.join()
    return SMALL_ITEMS / secs


def queue_big_producer(q, go, n):
    item = bytes([7]) * BIG
    go.recv()
    for _ in range(n):
        q.put(item)


def queue_big():
    q = mp.Queue()
    go, go_child = mp.Pipe()
    p = mp.Process(target=queue_big_producer, args=(q, go_child, BIG_ITEMS))
    p.start()
    t = time.perf_counter()
    go.send(1)
    for _ in range(BIG_ITEMS):
        assert len(q.get()) == BIG
    secs = time.perf_counter() - t
    p.join()
    return BIG_ITEMS * BIG / secs / 1e6


def echo_values(conn):
    # Stops on None: the child inherits the parent's end too (fork), so it never sees EOF.
    while (v := conn.recv()) is not None:
        conn.send(v)


def echo_bytes(conn):
    while v := conn.recv_bytes():
        conn.send_bytes(v)


def pipe_ping_pong(raw):
    a, b = mp.Pipe()
    p = mp.Process(target=echo_bytes if raw else echo_values, args=(b,))
    p.start()
    b.close()
    for i in range(1000):
        if raw:
            a.send_bytes(i.to_bytes(8, "little"))
            a.recv_bytes()
        else:
            a.send(i)
            a.recv()
    us = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for i in range(ROUND_TRIPS):
            if raw:
                a.send_bytes(i.to_bytes(8, "little"))
                a.recv_bytes()
            else:
                a.send(i)
                a.recv()
        us = min(us, (time.perf_counter() - t) * 1e6 / ROUND_TRIPS)
    if raw:
        a.send_bytes(b"")
    else:
        a.send(None)
    p.join()
    return us


def pipe_big_sender(conn, n):
    item = bytes([7]) * BIG
    conn.recv()
    for _ in range(n):
        conn.send_bytes(item)


def pipe_big():
    a, b = mp.Pipe()
    p = mp.Process(target=pipe_big_sender, args=(b, BIG_ITEMS))
    p.start()
    t = time.perf_counter()
    a.send(1)
    for _ in range(BIG_ITEMS):
        assert len(a.recv_bytes()) == BIG
    secs = time.perf_counter() - t
    p.join()
    return BIG_ITEMS * BIG / secs / 1e6


# (key in the Rust bench's RESULT lines, label, CPython function, unit, higher is better)
FIGURES = [
    ("queue_small_msgs_per_s", "Queue small items, 1 producer -> consumer", queue_small, "msgs/s", True),
    ("queue_1mib_mb_per_s", "Queue 1 MiB items", queue_big, "MB/s", True),
    ("pipe_rtt_us", "Pipe ping-pong round trip, small value", lambda: pipe_ping_pong(False), "us", False),
    ("pipe_rtt_bytes_us", "Pipe ping-pong round trip, bytes", lambda: pipe_ping_pong(True), "us", False),
    ("pipe_1mib_mb_per_s", "Pipe 1 MiB messages", pipe_big, "MB/s", True),
]


def rust_figures():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        ["cargo", "bench", "--bench", "ipc"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            _, key, value = line.split()
            figures[key] = float(value)
    return figures


def main():
    python_only = "--python" in sys.argv
    py = {}
    for key, label, fn, unit, _ in FIGURES:
        py[key] = fn()
        print(f"CPython {sys.version.split()[0]:<8} {label:<44} {py[key]:>12.2f} {unit}", flush=True)
    if python_only:
        return
    rs = rust_figures()
    print()
    print(f"{'figure':<44} {'CPython':>12} {'Rust':>12}  ratio (Rust vs CPython)")
    for key, label, _, unit, higher in FIGURES:
        r = rs.get(key)
        if r is None:
            print(f"{label:<44} {py[key]:>12.2f} {'-':>12}")
            continue
        ratio = r / py[key] if higher else py[key] / r
        print(f"{label:<44} {py[key]:>12.2f} {r:>12.2f}  {ratio:6.2f}x better  ({unit})")
    for key in ("raw_rtt_us", "raw_rtt_processes_us", "raw_stream_mb_per_s"):
        if key in rs:
            print(f"  baseline {key:<35} {rs[key]:>25.2f}")


if __name__ == "__main__":
    main()
