"""What the comparison scripts (CPython's, and Dask's and Ray's) share: run counts, the
median, the figure line of benches/support/mod.rs (parsed from `cargo bench` and printed for
the other side), and the comparison table.

A figure line reads

    figure <name> <value> <unit> runs <v1,v2,...> [baseline <name> <value> <unit> runs <v1,...>]

where <value> is the median of the runs. TKMP_BENCH_REPEAT=N sets every figure, on both
sides, to N runs; unset, each figure keeps its own default count.
"""

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

REPEAT_VAR = "TKMP_BENCH_REPEAT"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runs(default: int) -> int:
    """How many runs a figure takes: TKMP_BENCH_REPEAT if set (at least 1), else `default`."""
    value = os.environ.get(REPEAT_VAR, "").strip()
    return max(1, int(value)) if value.isdigit() else max(1, default)


def repeat(n: int, f: Callable[[], float]) -> List[float]:
    """`f` run `n` times, one value per run."""
    return [f() for _ in range(n)]


def median(values: Sequence[float]) -> float:
    """The median (the upper one of the middle two for an even count), as on the Rust side."""
    v = sorted(values)
    return v[len(v) // 2] if v else 0.0


@dataclass
class Figure:
    name: str
    unit: str
    runs: List[float]
    baseline: Optional["Figure"] = None

    @property
    def value(self) -> float:
        return median(self.runs)

    def fields(self) -> str:
        runs = ",".join(f"{v:.3f}" for v in self.runs)
        return f"{self.name} {self.value:.3f} {self.unit} runs {runs}"

    def line(self) -> str:
        if self.baseline is None:
            return f"figure {self.fields()}"
        return f"figure {self.fields()} baseline {self.baseline.fields()}"


def _fields(words: List[str]) -> Tuple[Figure, List[str]]:
    if len(words) < 5 or words[3] != "runs":
        raise ValueError(f"not a figure: {' '.join(words)!r}")
    name, _value, unit = words[0], float(words[1]), words[2]
    return Figure(name, unit, [float(v) for v in words[4].split(",")]), words[5:]


def parse_line(line: str) -> Optional[Figure]:
    """The figure on `line`, or None if it is not a figure line."""
    words = line.split()
    if not words or words[0] != "figure":
        return None
    fig, rest = _fields(words[1:])
    if rest:
        if rest[0] != "baseline":
            raise ValueError(f"unexpected {rest[0]!r} in {line!r}")
        fig.baseline, rest = _fields(rest[1:])
        if rest:
            raise ValueError(f"trailing words in {line!r}")
    return fig


def parse(text: str) -> Dict[str, Figure]:
    """Every figure in a bench's output, by name."""
    out = {}
    for line in text.splitlines():
        fig = parse_line(line)
        if fig is not None:
            out[fig.name] = fig
    return out


def cargo_bench(bench: str, args: Iterable[str] = (), env: Optional[Dict[str, str]] = None) -> Dict[str, Figure]:
    """Runs `cargo bench --bench <bench> -- <args>` at the crate's root, echoes its output
    prefixed with `rust: `, and returns its figures by name."""
    run = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", bench, "--", *args],
        cwd=ROOT,
        env=dict(os.environ, **(env or {})),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    for line in run.stdout.splitlines():
        print("  rust: " + line, flush=True)
    return parse(run.stdout)


def arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every script takes: --repeat and --no-rust."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, metavar="N",
                    help=f"runs per figure on both sides (sets {REPEAT_VAR}); default: each figure's own")
    ap.add_argument("--no-rust", "--python", action="store_true", dest="no_rust",
                    help="CPython's side only")
    return ap


def apply_repeat(ns: argparse.Namespace) -> None:
    """Puts --repeat into the environment, where both sides read it."""
    if ns.repeat is not None:
        os.environ[REPEAT_VAR] = str(max(1, ns.repeat))


def show(figure: Figure, side: str = "cpython") -> None:
    """Prints one side's figure as a figure line, prefixed with the side's name."""
    print(f"  {side}: {figure.line()}", flush=True)


def _cell(v: float) -> str:
    """A value with about four significant digits, as in the Rust side's table (three below
    1, where a fixed count of decimals would round a small figure to nothing)."""
    a = abs(v)
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 10:
        return f"{v:.2f}"
    if a >= 1:
        return f"{v:.3f}"
    return f"{v:.3g}"


def compare(
    ours: Dict[str, Figure],
    theirs: Dict[str, Figure],
    rows: Sequence[Tuple[str, bool]],
    missing: Optional[Dict[str, str]] = None,
) -> None:
    """The comparison table: for each (figure name, higher is better), CPython's value, ours,
    the ratio (> 1: ours better) and our baseline. `missing` gives the ratio cell's text for a
    figure CPython has no counterpart to."""
    version = sys.version.split()[0]
    compare_sides(ours, [(f"CPython {version}", theirs)], rows, missing)


def compare_sides(
    ours: Dict[str, Figure],
    sides: Sequence[Tuple[str, Dict[str, Figure]]],
    rows: Sequence[Tuple[str, bool]],
    missing: Optional[Dict[str, str]] = None,
) -> None:
    """The comparison table against one or more other sides, each a (label, figures by name):
    for each (figure name, higher is better), every side's value, ours, our ratio to each
    side (> 1: ours better) and our baseline. `missing` gives the ratio cell's text for a
    figure a side has no counterpart to."""
    missing = missing or {}
    labels = [label for label, _ in sides]
    if len(sides) == 1:
        ratios = ["ratio (>1: ours better)"]
    else:
        ratios = [f"ours vs {label.split()[0]} (>1: ours better)" for label in labels]
    header = ["figure", "unit", *labels, "ours", *ratios, "our baseline"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name, higher in rows:
        r = ours.get(name)
        ps = [figures.get(name) for _, figures in sides]
        known = [f for f in (r, *ps) if f is not None]
        if not known:
            continue
        cells = [name, known[0].unit]
        cells += [_cell(p.value) if p else "-" for p in ps]
        cells.append(_cell(r.value) if r else "-")
        for p in ps:
            if p and r and p.value and r.value:
                cells.append(f"{(r.value / p.value) if higher else (p.value / r.value):.2f}x")
            else:
                cells.append(missing.get(name, "-"))
        if r and r.baseline:
            b = r.baseline
            cells.append(f"{b.name} {_cell(b.value)} {b.unit}")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")
