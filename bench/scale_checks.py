"""The two health checks that read the embeddings (duplicates, class outliers) at scale, each alone.

    python -m bench.scale_checks --rows 1000000 --dim 256            # both checks, 100 classes
    python -m bench.scale_checks --rows 200000 --checks class_outlier --profile

Each check runs in a child process on the float16 memory map ``bench.scale`` makes (``--out``,
reused), so its ``ru_maxrss`` is that check's own peak resident memory (file-backed pages of the
memory map included); the duplicates check reads a random 50-neighbour graph of the real shape
(``bench.scale.shaped_graph``: its cost does not depend on which rows are neighbours), built before
the clock and the peak start. ``--quick``: 2,000 x 32. Figures (JSON
lines via bench.common.emit): ``checks.<check>.seconds`` (wall; ``cpu_seconds``: this process's CPU
time, all threads, steadier on a shared machine) and ``.peak_mb`` (``rss_before_mb``: the
child's resident memory just before the call: interpreter, libraries, the graph; ``ru_maxrss_mb``:
the child's whole-life peak, the graph's construction included).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, parser, peak_rss_mb, reset_peak_rss, timer

BENCH = "scale_checks"
CHECKS = ("duplicates", "class_outlier")


def run_check(check: str, rows: int, dim: int, out: Path, profile: bool) -> None:
    """In this (child) process: load the memory map, run ``check`` once, emit seconds and peak MiB."""
    from bench.scale import SEED, classes_for, shaped_graph, synthetic_embeddings

    path, labels = synthetic_embeddings(rows, dim, out)
    x = np.load(path, mmap_mode="r")
    names = np.char.add("c", labels.astype(str)).astype(object)
    ids = np.arange(rows)
    if check == "duplicates":
        from mlfix.scoring.duplicates import duplicates_check

        rng = np.random.default_rng(SEED + 3)
        content_hash = np.where(rng.random(rows) < 0.001, rng.integers(1, 50, rows), 0)
        graph = shaped_graph(rows, rng)

        def call():
            return duplicates_check(x, names, ids, content_hash=content_hash, neighbours=graph)
    else:
        from mlfix.scoring.outliers import class_outlier_check

        def call():
            return class_outlier_check(x, names, ids)
    reset_peak_rss()  # the peak from here on is the check's (the graph's construction left out)
    before = peak_rss_mb()
    profiler = cProfile.Profile() if profile else None
    cpu = time.process_time()
    with timer() as took:
        if profiler:
            profiler.enable()
        table = call()
        if profiler:
            profiler.disable()
    cpu = time.process_time() - cpu
    peak, maxrss = peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    setup = {"dim": dim, "classes": classes_for(rows), "flagged": int(table["flag"].sum()),
             "data": "bench.scale synthetic clustered float16 memory map"}
    emit(BENCH, f"checks.{check}.seconds", round(took(), 2), "s", rows, cpu_seconds=round(cpu, 2), **setup)
    emit(BENCH, f"checks.{check}.peak_mb", round(peak, 1), "MiB", rows, rss_before_mb=round(before, 1),
         ru_maxrss_mb=round(maxrss, 1), **setup)
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--checks", choices=CHECKS, nargs="+", default=list(CHECKS))
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlfix-scale")
    p.add_argument("--profile", action="store_true", help="print the cProfile of each check to stderr")
    p.add_argument("--child", choices=CHECKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.dim = 2000, 32
    if args.child:
        run_check(args.child, args.rows, args.dim, args.out, args.profile)
        return
    for check in args.checks:  # one child per check: its ru_maxrss is that check's peak alone
        command = [sys.executable, "-m", "bench.scale_checks", "--child", check, "--rows", str(args.rows),
                   "--dim", str(args.dim), "--out", str(args.out)] + ["--profile"] * args.profile + ["--quick"] * args.quick
        subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])


if __name__ == "__main__":
    main()
