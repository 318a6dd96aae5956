#!/usr/bin/env python3
"""CPython's multiprocessing beside tokio-multiprocessing: Queue and Pipe figures.

Runs the CPython counterpart of each figure of `cargo bench --bench ipc` on this machine,
then that bench itself, and prints both sides with the ratio (higher is better for rates,
lower for round-trip times). A throughput figure is the median of 1 run, a round-trip
figure of 3 rounds on one child, on both sides; --repeat sets another count for both.

    python3 benches/ipc_cpython.py [--repeat N]   # both sides
    python3 benches/ipc_cpython.py --no-rust       # CPython only (also: --python)
"""

import multiprocessing as mp
import time

import support

SMALL_ITEMS = 200_000
BIG = 1 << 20
BIG_ITEMS = 200
MID = 16 * 1024
MID_ITEMS = 10_000
ROUND_TRIPS = 10_000
ROUNDS = 3  # round-trip figures are the median of this many rounds: the machine is shared
THROUGHPUT_RUNS = 1


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


def queue_bytes_producer(q, go, size, n):
    item = bytes([7]) * size
    go.recv()
    for _ in range(n):
        q.put(item)


def queue_bytes(size, n):
    """`n` items of `size` bytes through a queue from a child, in MB/s."""
    q = mp.Queue()
    go, go_child = mp.Pipe()
    p = mp.Process(target=queue_bytes_producer, args=(q, go_child, size, n))
    p.start()
    t = time.perf_counter()
    go.send(1)
    for _ in range(n):
        assert len(q.get()) == size
    secs = time.perf_counter() - t
    p.join()
    return n * size / secs / 1e6


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
    us = []
    for _ in range(support.runs(ROUNDS)):
        t = time.perf_counter()
        for i in range(ROUND_TRIPS):
            if raw:
                a.send_bytes(i.to_bytes(8, "little"))
                a.recv_bytes()
            else:
                a.send(i)
                a.recv()
        us.append((time.perf_counter() - t) * 1e6 / ROUND_TRIPS)
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


def throughput(f):
    return lambda: support.repeat(support.runs(THROUGHPUT_RUNS), f)


# (figure name in the Rust bench, CPython's runs, unit, higher is better)
FIGURES = [
    ("queue_small_msgs_per_s", throughput(queue_small), "msgs/s", True),
    ("queue_1mib_mb_per_s", throughput(lambda: queue_bytes(BIG, BIG_ITEMS)), "MB/s", True),
    ("queue_1kib_msgs_per_s", throughput(lambda: queue_bytes(1024, 100_000) * 1e6 / 1024), "msgs/s", True),
    # `bytes` here; the Rust figure is for `Vec<u8>` (its `ByteBuf` twin is its baseline).
    ("queue_16kib_vec_mb_per_s", throughput(lambda: queue_bytes(MID, MID_ITEMS)), "MB/s", True),
    ("pipe_rtt_us", lambda: pipe_ping_pong(False), "us", False),
    ("pipe_rtt_bytes_us", lambda: pipe_ping_pong(True), "us", False),
    ("pipe_1mib_mb_per_s", throughput(pipe_big), "MB/s", True),
]


def main():
    args = support.arguments(__doc__).parse_args()
    support.apply_repeat(args)
    py = {}
    for name, runs, unit, _ in FIGURES:
        py[name] = support.Figure(name, unit, runs())
        support.show(py[name])
    if args.no_rust:
        return
    rs = support.cargo_bench("ipc")
    support.compare(rs, py, [(name, higher) for name, _, _, higher in FIGURES] + [("raw_rtt_processes_us", False)])


if __name__ == "__main__":
    main()
