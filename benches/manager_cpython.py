#!/usr/bin/env python3
"""CPython's Manager beside tokio-multiprocessing's: the figures of `cargo bench --bench manager`.

Runs the CPython counterpart of each figure on this machine, then that bench itself, and
prints both sides with the ratio (lower is better for times, higher for rates):

- dict_call_local_us: one dict call (d[i] = i, then d[i]) to `multiprocessing.Manager()`;
- dict_call_tcp_us: the same to a `BaseManager` served by another process on 127.0.0.1
  with an authkey, reached with `connect()`;
- queue_proxy_items_per_s: a child puts items on `manager.Queue()`, this process gets them;
- queue_proxy_tcp_items_per_s: the same through a queue served by a `BaseManager` on
  127.0.0.1 with an authkey (CPython's documented remote-manager example), both processes
  connected by address;
- manager_start_ms / manager_shutdown_ms: `Manager()` until its first object exists, then
  `shutdown()`.

    python3 benches/manager_cpython.py [--repeat N]   # both sides
    python3 benches/manager_cpython.py --no-rust       # CPython only (also: --python)
"""

import multiprocessing as mp
import queue
import time
from multiprocessing.managers import BaseManager, DictProxy

import support

CALLS = 5_000
ITEMS = 50_000
STARTS = 20
ROUNDS = 3
KEY = b"bench key"

SHARED = {}


def get_dict():
    return SHARED


class DictManager(BaseManager):
    pass


DictManager.register("get_dict", callable=get_dict, proxytype=DictProxy)

SERVED_QUEUE = queue.Queue()


def get_queue():
    return SERVED_QUEUE


class QueueManager(BaseManager):
    pass


QueueManager.register("get_queue", callable=get_queue)


def dict_calls(d):
    for i in range(100):
        d[i] = i
    out = []
    for _ in range(support.runs(ROUNDS)):
        t = time.perf_counter()
        for i in range(CALLS):
            d[i] = i
            assert d[i] == i
        out.append((time.perf_counter() - t) * 1e6 / (2 * CALLS))
    return out


def dict_local():
    with mp.Manager() as m:
        return dict_calls(m.dict())


def dict_tcp():
    server = DictManager(address=("127.0.0.1", 0), authkey=KEY)
    server.start()
    try:
        client = DictManager(address=server.address, authkey=KEY)
        client.connect()
        return dict_calls(client.get_dict())
    finally:
        server.shutdown()


def producer(q, n):
    for i in range(n):
        q.put(i)


def connected_queue(address):
    client = QueueManager(address=address, authkey=KEY)
    client.connect()
    return client.get_queue()


def tcp_producer(address, n):
    producer(connected_queue(address), n)


def items_per_second(q, target, args):
    """Items per second from a child running `target(*args)`, which puts ITEMS items, to
    this process taking them from `q`."""
    out = []
    for _ in range(support.runs(1)):
        t = time.perf_counter()
        p = mp.Process(target=target, args=args)
        p.start()
        total = 0
        for _ in range(ITEMS):
            total += q.get()
        secs = time.perf_counter() - t
        p.join()
        assert total == ITEMS * (ITEMS - 1) // 2
        out.append(ITEMS / secs)
    return out


def queue_tcp():
    server = QueueManager(address=("127.0.0.1", 0), authkey=KEY)
    server.start()
    try:
        q = connected_queue(server.address)
        return items_per_second(q, tcp_producer, (server.address, ITEMS))
    finally:
        server.shutdown()


def queue_between_processes():
    with mp.Manager() as m:
        q = m.Queue()
        return items_per_second(q, producer, (q, ITEMS))


def start_and_shutdown():
    starts, stops = [], []
    for _ in range(support.runs(STARTS)):
        t = time.perf_counter()
        m = mp.Manager()
        m.Event()
        starts.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        m.shutdown()
        stops.append((time.perf_counter() - t) * 1e3)
    return starts, stops


def main():
    args = support.arguments(__doc__).parse_args()
    support.apply_repeat(args)
    py = {}
    py["dict_call_local_us"] = support.Figure("dict_call_local_us", "us", dict_local())
    py["dict_call_tcp_us"] = support.Figure("dict_call_tcp_us", "us", dict_tcp())
    py["queue_proxy_items_per_s"] = support.Figure("queue_proxy_items_per_s", "items/s", queue_between_processes())
    py["queue_proxy_tcp_items_per_s"] = support.Figure("queue_proxy_tcp_items_per_s", "items/s", queue_tcp())
    starts, stops = start_and_shutdown()
    py["manager_start_ms"] = support.Figure("manager_start_ms", "ms", starts)
    py["manager_shutdown_ms"] = support.Figure("manager_shutdown_ms", "ms", stops)
    for f in py.values():
        support.show(f)
    if args.no_rust:
        return
    rs = support.cargo_bench("manager")
    support.compare(
        rs,
        py,
        [
            ("dict_call_local_us", False),
            ("dict_call_tcp_us", False),
            ("queue_proxy_items_per_s", True),
            ("queue_proxy_pipelined_items_per_s", True),
            ("queue_proxy_tcp_items_per_s", True),
            ("manager_start_ms", False),
            ("manager_start_forkserver_ms", False),
            ("manager_shutdown_ms", False),
            ("manager_shutdown_forkserver_ms", False),
        ],
        missing={
            "queue_proxy_pipelined_items_per_s": "vs queue_proxy: see its row",
            "manager_start_forkserver_ms": "vs manager_start: see its row",
            "manager_shutdown_forkserver_ms": "vs manager_shutdown: see its row",
        },
    )


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
