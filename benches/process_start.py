#!/usr/bin/env python3
"""CPython's multiprocessing.Process start + join, beside tokio-multiprocessing's.

Runs CPython's Process with the fork, spawn and forkserver start methods, then
`cargo bench --bench process_start`, and prints both sides with ratios.

    python3 benches/process_start.py [ITERATIONS]
"""
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import time


def nothing():
    pass


def measure(ctx, n):
    for _ in range(max(1, n // 10)):  # warm-up (starts the fork server)
        p = ctx.Process(target=nothing)
        p.start()
        p.join()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        p = ctx.Process(target=nothing)
        p.start()
        p.join()
        samples.append((time.perf_counter() - t) * 1e6)
    return statistics.mean(samples), statistics.median(samples)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    py = {}
    for method in ("fork", "forkserver", "spawn"):
        count = n if method != "spawn" else max(10, n // 5)
        py[method] = measure(mp.get_context(method), count)
        print(f"CPython {method:<11} mean {py[method][0]:9.1f} µs  median {py[method][1]:9.1f} µs  ({count} runs)")

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "process_start", "--", str(max(n, 100))],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    rust = {}
    for line in out.splitlines():
        m = re.match(r"figure: (.+?)\s+([\d.]+)\s+([\d.]+)$", line)
        if m:
            rust[m.group(1).strip()] = float(m.group(2))
    print(out)
    print("tokio-multiprocessing vs CPython (mean start + join):")
    for method, key in (("fork", "mp fork"), ("forkserver", "mp forkserver"), ("spawn", "mp spawn")):
        if key in rust:
            print(f"  {method:<11} {rust[key]:9.1f} µs vs {py[method][0]:9.1f} µs  -> {py[method][0] / rust[key]:6.1f}x faster")
    if "mp forkserver" in rust:
        print(f"  forkserver vs CPython fork: {py['fork'][0] / rust['mp forkserver']:.1f}x faster")


if __name__ == "__main__":
    main()
