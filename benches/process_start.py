#!/usr/bin/env python3
"""CPython's multiprocessing.Process start + join, beside tokio-multiprocessing's.

Runs CPython's Process with the fork, forkserver and spawn start methods, then
`cargo bench --bench process_start`, and prints both sides with ratios. A run is one
start + join; each figure is the median of its runs (100 for fork and forkserver, a fifth
as many for CPython's slow spawn; the Rust side's own default is 300).

    python3 benches/process_start.py [--repeat N] [--no-rust]
"""
import multiprocessing as mp
import time

import support


def nothing():
    pass


def measure(ctx, n):
    """`n` runs after a tenth as many warm-up runs (which start the fork server), in µs."""
    for _ in range(max(1, n // 10)):
        p = ctx.Process(target=nothing)
        p.start()
        p.join()

    def run():
        t = time.perf_counter()
        p = ctx.Process(target=nothing)
        p.start()
        p.join()
        return (time.perf_counter() - t) * 1e6

    return support.repeat(n, run)


def main():
    args = support.arguments(__doc__).parse_args()
    support.apply_repeat(args)
    n = support.runs(100)
    py = {}
    for method in ("fork", "forkserver", "spawn"):
        count = n if method != "spawn" else min(n, max(10, n // 5))
        fig = support.Figure(f"mp_{method}", "us", measure(mp.get_context(method), count))
        py[fig.name] = fig
        support.show(fig)
    if args.no_rust:
        return
    rust = support.cargo_bench("process_start")
    support.compare(rust, py, [("mp_fork", False), ("mp_forkserver", False), ("mp_spawn", False)])
    if "mp_forkserver" in rust:
        print(f"\nour forkserver vs CPython's fork: {py['mp_fork'].value / rust['mp_forkserver'].value:.1f}x faster")


if __name__ == "__main__":
    main()
