#!/usr/bin/env python3
"""CPython's multiprocessing.Pool(2) on the work of benches/pool.rs, beside our figures.

Runs the CPython side here, then `cargo bench --bench pool` (release), and prints both
with the ratio (ours / CPython for throughput, CPython / ours for times: > 1 means we are
faster). Each figure is the median of 5 runs on both sides (the machine's timings vary);
--repeat sets another count for both.

    python3 benches/pool_cpython.py [--imap-n N] [--repeat N] [--no-rust]
"""

import multiprocessing as mp
import os
import resource
import sys
import time

import support


def noop(x):
    return x


def cpython_figures(imap_n, reps):
    """Each figure is the median of `reps` runs, as on our side."""
    runs = {}

    def add(name, value):
        runs.setdefault(name, []).append(value)

    for _ in range(reps):
        t = time.perf_counter()
        pool = mp.get_context("spawn").Pool(2)
        pool.apply(noop, (1,))
        add("pool2_build_to_first_result", (time.perf_counter() - t) * 1e3)
        pool.terminate()
        pool.join()

    # A fresh pool (one apply first) for each map of a million, as on our side.
    for _ in range(reps):
        with mp.get_context("fork").Pool(2) as pool:
            pool.apply(noop, (1,))
            n = 1_000_000
            t = time.perf_counter()
            r = pool.map(noop, range(n))
            assert len(r) == n
            add("map_1M_default_chunksize", n / (time.perf_counter() - t) / 1e6)

    with mp.get_context("fork").Pool(2) as pool:
        pool.apply(noop, (1,))
        for _ in range(reps):
            n = 20_000
            t = time.perf_counter()
            r = pool.map(noop, range(n), chunksize=1)
            assert len(r) == n
            add("map_20k_chunksize_1", n / (time.perf_counter() - t) / 1e3)

        for i in range(200):
            pool.apply(noop, (i,))
        for _ in range(reps):
            n = 2_000
            t = time.perf_counter()
            for i in range(n):
                pool.apply(noop, (i,))
            add("apply_round_trip", (time.perf_counter() - t) * 1e6 / n)

        for _ in range(reps):
            n = 10_000
            t = time.perf_counter()
            hs = [pool.apply_async(noop, (i,)) for i in range(n)]
            for h in hs:
                h.get()
            add("apply_async_10k_concurrent", n / (time.perf_counter() - t) / 1e3)

        units = {
            "pool2_build_to_first_result": "ms",
            "map_1M_default_chunksize": "Mtasks/s",
            "map_20k_chunksize_1": "ktasks/s",
            "apply_round_trip": "us",
            "apply_async_10k_concurrent": "ktasks/s",
        }
        out = {name: support.Figure(name, units[name], v) for name, v in runs.items()}
        # CPython has one kind of event loop: the same figure stands beside both of ours.
        out["apply_round_trip_current_thread_runtime"] = support.Figure(
            "apply_round_trip_current_thread_runtime", "us", runs["apply_round_trip"])

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        for _ in pool.imap_unordered(noop, range(imap_n), chunksize=1000):
            count += 1
        assert count == imap_n
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["imap_unordered_peak_rss"] = support.Figure(
            "imap_unordered_peak_rss", "MiB", [peak / 1024],
            baseline=support.Figure("rss_before_streaming_ru_maxrss", "MiB", [before / 1024]))
    return out


# (figure, higher is better)
FIGURES = [
    ("map_1M_default_chunksize", True),
    ("map_20k_chunksize_1", True),
    ("apply_round_trip", False),
    ("apply_round_trip_current_thread_runtime", False),
    ("apply_async_10k_concurrent", True),
    ("pool2_build_to_first_result", False),
    ("imap_unordered_peak_rss", False),
    ("worker_death_to_error_median", False),
]


def main():
    ap = support.arguments(__doc__)
    ap.add_argument("--imap-n", type=int, default=10_000_000, help="inputs the RSS figure streams")
    a = ap.parse_args()
    support.apply_repeat(a)
    reps = support.runs(5)
    print(f"CPython {sys.version.split()[0]}, Pool(2), {os.cpu_count()} cores, median of {reps} runs")
    py = cpython_figures(a.imap_n, reps)
    for fig in py.values():
        support.show(fig)
    if a.no_rust:
        return
    rs = support.cargo_bench("pool", env={"POOL_BENCH_IMAP_N": str(a.imap_n)})
    support.compare(rs, py, FIGURES, missing={"worker_death_to_error_median": "CPython hangs"})


if __name__ == "__main__":
    main()
