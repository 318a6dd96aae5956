#!/usr/bin/env python3
"""Dask and Ray, two workers each on this machine, on the work of benches/cluster.rs, beside
our figures.

Runs Dask's side and Ray's side here, then `cargo bench --bench cluster` (release; it makes
network namespaces, so it needs root), and prints the three with our ratio to each
(ours / theirs for throughput, theirs / ours for times: > 1 means we are faster). Each
figure is the median of 5 runs on every side; --repeat sets another count for all. Dask's
side is slow: its 10,000 tasks take most of a minute a run here and its map of a million
minutes, so --repeat 1 is the quick look.

- Dask: `distributed.LocalCluster` of 2 worker processes of 1 thread each.
- Ray: `ray.init(num_cpus=2)`, a local Ray instance of two CPUs.

The figures, named as ours:

- cluster_round_trip: one trivial task submitted and its result awaited, one after the
  other (Dask `client.submit(...).result()`, Ray `ray.get(f.remote(...))`);
- cluster_10k_apply_async: 10,000 trivial tasks at once (Dask `client.map` then
  `client.gather`, Ray 10,000 `f.remote` then one `ray.get`);
- cluster_map_1m: a map of 1,000,000 trivial items. Ray: `ray.util.multiprocessing.Pool(2)
  .map` with its default chunking (4 chunks per worker). Dask has no pool map; a Dask user
  maps a million small items with a bag, not with a million futures, so this is
  `dask.bag.from_sequence(range(n), npartitions=8).map(f).compute()`: the same 4 chunks per
  worker that Ray and CPython's Pool choose, and the partition count a user has to give,
  because `from_sequence`'s default cuts a million items into 10,000 partitions, one task
  each;
- cluster_built_to_first_result: from nothing to the first result of a fresh cluster (Dask
  `LocalCluster` and `Client`, Ray `ray.init`), torn down after each run.

Dask and Ray are not needed beforehand: when they do not import, the script makes a
virtualenv under ~/.cache/tokio-multiprocessing/bench-venv (`python3 -m venv`), installs
`dask[distributed]` and `ray` into it with pip, and re-runs itself with that venv's python,
saying so on stderr. If that fails it says why and prints our figures alone.

    python3 benches/cluster_python.py [--repeat N] [--no-rust]
"""

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys
import time

import support

VENV = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
    "tokio-multiprocessing",
    "bench-venv",
)
PACKAGES = ["dask[distributed]", "ray"]

UNITS = {
    "cluster_round_trip": "us",
    "cluster_10k_apply_async": "ktasks/s",
    "cluster_map_1m": "Mitems/s",
    "cluster_built_to_first_result": "ms",
}

# (figure, higher is better)
FIGURES = [
    ("cluster_round_trip", False),
    ("cluster_10k_apply_async", True),
    ("cluster_map_1m", True),
    ("cluster_built_to_first_result", False),
]

ROUND_TRIPS = 300
CONCURRENT = 10_000
MAP_ITEMS = 1_000_000


def noop(x):
    return x


def say(text):
    print(f"cluster_python: {text}", file=sys.stderr, flush=True)


def installed():
    """Whether Dask's distributed scheduler, Dask's bags and Ray all import here."""
    return all(importlib.util.find_spec(m) is not None for m in ("distributed", "dask", "ray"))


def venv_python():
    return os.path.join(VENV, "bin", "python")


def in_venv():
    return os.path.realpath(sys.prefix) == os.path.realpath(VENV)


def bring_up_venv():
    """Makes the bench venv and installs Dask and Ray into it, unless they already import
    there. Returns whether they do afterwards."""
    check = [venv_python(), "-c", "import distributed, dask.bag, ray"]
    if os.path.exists(venv_python()) and subprocess.run(check, capture_output=True).returncode == 0:
        return True
    try:
        if not os.path.exists(venv_python()):
            say(f"making a virtualenv at {VENV}")
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True, stdout=sys.stderr)
        say(f"installing {' and '.join(PACKAGES)} into it with pip (a few minutes the first time)")
        subprocess.run([venv_python(), "-m", "pip", "install", "--quiet", *PACKAGES],
                       check=True, stdout=sys.stderr)
    except (OSError, subprocess.CalledProcessError) as e:
        say(f"could not install Dask and Ray: {e}")
        return False
    return subprocess.run(check, capture_output=True).returncode == 0


def measured(side, reps, build, session):
    """One side's figures, each the median of `reps` runs. `build()` starts a fresh cluster
    and returns (submit one task and wait, close); it is timed to its first result for each
    run. `session()` is a context manager yielding (round trip of one task, run 10,000 at
    once, map a million items) on one long-lived cluster."""
    runs = {name: [] for name in UNITS}
    with session() as (one, concurrent, map_million):
        for _ in range(20):
            one(0)
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(ROUND_TRIPS):
                one(i)
            runs["cluster_round_trip"].append((time.perf_counter() - t) * 1e6 / ROUND_TRIPS)
        for _ in range(reps):
            t = time.perf_counter()
            out = concurrent(CONCURRENT)
            runs["cluster_10k_apply_async"].append(CONCURRENT / (time.perf_counter() - t) / 1e3)
            assert len(out) == CONCURRENT
        for _ in range(reps):
            t = time.perf_counter()
            out = map_million(MAP_ITEMS)
            runs["cluster_map_1m"].append(MAP_ITEMS / (time.perf_counter() - t) / 1e6)
            assert len(out) == MAP_ITEMS and out[-1] == MAP_ITEMS - 1
    for _ in range(reps):
        t = time.perf_counter()
        first, close = build()
        first()
        runs["cluster_built_to_first_result"].append((time.perf_counter() - t) * 1e3)
        close()
    figures = {name: support.Figure(name, UNITS[name], v) for name, v in runs.items()}
    for fig in figures.values():
        support.show(fig, side)
    return figures


class DaskSide:
    """Dask's distributed scheduler: a LocalCluster of 2 processes of 1 thread each."""

    name = "dask"

    def __init__(self):
        import dask
        self.version = dask.__version__

    @staticmethod
    def _cluster():
        from dask.distributed import Client, LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return cluster, Client(cluster)

    def build(self):
        cluster, client = self._cluster()

        def close():
            client.close()
            cluster.close()

        return (lambda: client.submit(noop, 1, pure=False).result()), close

    def session(self):
        import dask.bag as db

        @contextlib.contextmanager
        def running():
            cluster, client = self._cluster()
            try:
                yield (
                    lambda i: client.submit(noop, i, pure=False).result(),
                    lambda n: client.gather(client.map(noop, range(n), pure=False)),
                    lambda n: db.from_sequence(range(n), npartitions=8).map(noop).compute(),
                )
            finally:
                client.close()
                cluster.close()

        return running()


class RaySide:
    """Ray: a local instance of two CPUs; `ray.util.multiprocessing.Pool(2)` for the map."""

    name = "ray"

    def __init__(self):
        import ray
        self.version = ray.__version__

    @staticmethod
    def _init():
        import ray
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        return ray, ray.remote(noop)

    def build(self):
        ray, task = self._init()
        return (lambda: ray.get(task.remote(1))), ray.shutdown

    def session(self):
        from ray.util.multiprocessing import Pool

        @contextlib.contextmanager
        def running():
            ray, task = self._init()
            pool = None
            try:
                pool = Pool(2)
                pool.apply(noop, (1,))
                yield (
                    lambda i: ray.get(task.remote(i)),
                    lambda n: ray.get([task.remote(i) for i in range(n)]),
                    lambda n: pool.map(noop, range(n)),
                )
            finally:
                if pool is not None:
                    pool.terminate()
                ray.shutdown()

        return running()


def main():
    ap = support.arguments(__doc__)
    a = ap.parse_args()
    support.apply_repeat(a)
    sides = []
    if not installed() and not in_venv():
        if bring_up_venv():
            say(f"re-running with {venv_python()}")
            os.execv(venv_python(), [venv_python(), os.path.abspath(__file__), *sys.argv[1:]])
        say("going on with our figures alone")
    elif not installed():
        say(f"Dask or Ray does not import in {VENV}; going on with our figures alone")
    else:
        # Ray would otherwise ask about sending usage statistics.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        sides = [DaskSide(), RaySide()]
    reps = support.runs(5)
    if sides:
        print(f"Dask and Ray with 2 workers, {os.cpu_count()} cores, median of {reps} runs")
    theirs = []
    for side in sides:
        label = f"{side.name.capitalize()} {side.version}"
        try:
            theirs.append((label, measured(side.name, reps, side.build, side.session)))
        except Exception as e:  # one framework failing leaves the others' figures
            say(f"{label} failed: {e!r}")
    if a.no_rust:
        return
    ours = support.cargo_bench("cluster")
    if theirs:
        support.compare_sides(ours, theirs, FIGURES)


if __name__ == "__main__":
    main()
