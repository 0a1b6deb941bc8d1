"""Shared helpers for benchmarks: argument parsing, JSON figure lines, timing and peak memory."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test for CI")
    return p


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
            "date": _dt.date.today().isoformat()}


def emit(bench: str, metric: str, value, unit: str, n: int | None = None, **setup) -> dict:
    """Print one figure as a JSON line (and append it to bench/results/BENCH.jsonl)."""
    line = {"bench": bench, "metric": metric, "value": value, "unit": unit, "n": n,
            "setup": {"quick": "--quick" in sys.argv, **setup, **machine()}}
    text = json.dumps(line, default=float)
    print(text, flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    with open(RESULTS_DIR / f"{bench}.jsonl", "a") as f:
        f.write(text + "\n")
    return line


def peak_rss_mb() -> float:
    """Peak resident memory of this process since start or :func:`reset_peak_rss`, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the peak-memory mark (Linux: /proc/self/clear_refs), so the next peak is one stage's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def timer():
    """`with timer() as t: ...` then `t()` is the elapsed seconds."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end if end is not None else time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def require_shared(name: str) -> Path | None:
    """The path of a shared data set, or None (with a JSON skip line) when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        print(json.dumps({"bench": "skip", "reason": f"{path} not found"}), file=sys.stderr)
        return None
    return path
