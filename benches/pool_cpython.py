#!/usr/bin/env python3
"""CPython's multiprocessing.Pool(2) on the work of benches/pool.rs, beside our figures.

Runs the CPython side here, then `cargo bench --bench pool` (release), and prints both
with the ratio (ours / CPython for throughput, CPython / ours for times: > 1 means we are
faster). Each figure is the median of several runs on both sides (the machine's timings vary).
Usage: python3 benches/pool_cpython.py [--imap-n N] [--repeat R]
"""

import argparse
import multiprocessing as mp
import os
import re
import resource
import subprocess
import sys
import time


def noop(x):
    return x


def noop0():
    return None


def median(runs):
    return sorted(runs)[len(runs) // 2]


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

        out = {name: median(v) for name, v in runs.items()}
        for name, v in runs.items():
            print(f"  cpython: note {name} runs: " + " ".join(f"{x:.2f}" for x in v))
        out["apply_round_trip_current_thread_runtime"] = out["apply_round_trip"]

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        for _ in pool.imap_unordered(noop, range(imap_n), chunksize=1000):
            count += 1
        assert count == imap_n
        out["imap_unordered_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out["_rss_before"] = before / 1024
    return out


# (figure, unit, higher is better)
FIGURES = [
    ("map_1M_default_chunksize", "Mtasks/s", True),
    ("map_20k_chunksize_1", "ktasks/s", True),
    ("apply_round_trip", "us", False),
    ("apply_round_trip_current_thread_runtime", "us", False),
    ("apply_async_10k_concurrent", "ktasks/s", True),
    ("pool2_build_to_first_result", "ms", False),
    ("imap_unordered_peak_rss", "MiB", False),
    ("worker_death_to_error_median", "us", False),
]


def ours(imap_n, reps):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, POOL_BENCH_IMAP_N=str(imap_n), POOL_BENCH_REPEAT=str(reps))
    run = subprocess.run(
        ["cargo", "bench", "--bench", "pool"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    )
    figs = {}
    for line in run.stdout.splitlines():
        print("  rust: " + line)
        m = re.match(r"figure (\S+) (\S+) (\S+) \| baseline (\S+) (\S+) (\S+)", line)
        if m:
            figs[m.group(1)] = (float(m.group(2)), m.group(4), float(m.group(5)), m.group(6))
    return figs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imap-n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5, help="runs per figure (the median is shown)")
    a = ap.parse_args()
    print(f"CPython {sys.version.split()[0]}, Pool(2), {os.cpu_count()} cores, median of {a.repeat} runs")
    py = cpython_figures(a.imap_n, a.repeat)
    rs = ours(a.imap_n, a.repeat)
    print()
    print(f"| figure | unit | CPython | ours | ratio (>1: ours better) | our baseline |")
    print(f"| --- | --- | --- | --- | --- | --- |")
    for name, unit, higher in FIGURES:
        p = py.get(name)
        r = rs.get(name)
        if r is None:
            continue
        if p is None:
            ratio = "CPython hangs" if name.startswith("worker_death") else "-"
            ps = "-"
        else:
            ratio = f"{(r[0] / p) if higher else (p / r[0]):.1f}x"
            ps = f"{p:.2f}"
        base = f"{r[1]} {r[2]:.2f} {r[3]}" if r[3] != "-" else "-"
        print(f"| {name} | {unit} | {ps} | {r[0]:.2f} | {ratio} | {base} |")
    print(f"\nCPython RSS before imap_unordered: {py['_rss_before']:.1f} MiB (ru_maxrss)")


if __name__ == "__main__":
    main()
