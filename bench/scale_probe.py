"""Seconds and peak memory of the linear probe at scale: full fit vs minibatch fit on a float16 memmap.

Synthetic pooled vectors (``make_memmap``): ``classes`` Gaussian classes in ``dim`` dimensions (centres
N(0, 0.05^2) per dimension, unit noise: about 2.5 noise sigmas between two centres), 5% of the labels
flipped to another class, written as an (n, dim) float16 ``.npy`` like ``features/pooled.npy``. Each
measurement runs in a fresh process so its peak memory is its own: ``peak_rss_mb`` is ``ru_maxrss``
(it counts the memmap's file pages the process touched, which the kernel can drop at will),
``peak_anon_mb`` the peak of anonymous memory (RssAnon sampled every 0.1 s: what the fit allocated).

    python -m bench.scale_probe --rows 100000 --path both    # full and minibatch at 100k
    python -m bench.scale_probe --rows 1000000 --path minibatch

H6's ``bench/scale.py`` imports :func:`measure_probe`.
"""

from __future__ import annotations

import resource
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.common import emit, parser

CENTRE_SCALE = 0.05
FLIP = 0.05


def make_memmap(path: Path, n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write the synthetic (n, dim) float16 ``.npy`` at ``path`` (chunk by chunk; reused when it exists
    with this shape) and return (labels (n,) int given, is_error (n,) bool)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, CENTRE_SCALE, (classes, dim)).astype(np.float32)
    truth = rng.integers(0, classes, n)
    planted = rng.random(n) < FLIP
    given = np.where(planted, (truth + rng.integers(1, classes, n)) % classes, truth)
    if not (path.exists() and np.load(path, mmap_mode="r").shape == (n, dim)):
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
        for start in range(0, n, 50_000):
            stop = min(start + 50_000, n)
            noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
            out[start:stop] = centres[truth[start:stop]] + noise
        out.flush()
        del out
    return given, planted


def _peak_anon(stop: threading.Event, peak: list) -> None:
    while not stop.wait(0.1):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) / 1024)


def _run(path: str, labels: np.ndarray, is_error: np.ndarray, minibatch: bool, seed: int) -> dict:
    """In the child process: one probe fit on the memmap, timed, with its memory and quality."""
    from sklearn.metrics import roc_auc_score

    from mlfix.scoring.probe import out_of_fold_probabilities

    x = np.load(path, mmap_mode="r")
    stop, peak = threading.Event(), [0.0]
    watcher = threading.Thread(target=_peak_anon, args=(stop, peak), daemon=True)
    watcher.start()
    start = time.perf_counter()
    oof = out_of_fold_probabilities(x, labels, seed=seed, minibatch=minibatch)
    seconds = time.perf_counter() - start
    stop.set()
    watcher.join()
    given = oof.probs[np.arange(len(labels)), np.searchsorted(oof.classes, labels)]
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_anon_mb": round(peak[0]), "auroc": round(float(roc_auc_score(is_error, -given)), 4),
            "agreement_with_given": round(float((oof.probs.argmax(axis=1) == labels).mean()), 4)}


def measure_probe(n: int, dim: int = 1280, classes: int = 10, seed: int = 0, minibatch: bool | None = None,
                  directory: Path = Path("/tmp/mlfix_scale_probe")) -> dict:
    """Fit the probe once on a synthetic (n, dim) float16 memmap in a fresh process; returns
    ``{"rows", "dim", "classes", "path", "seconds", "peak_rss_mb", "peak_anon_mb", "auroc", ...}``
    (``path``: ``"full"`` or ``"minibatch"``; None picks by :data:`mlfix.scoring.probe.MINIBATCH_MIN`).
    The memmap (2 bytes x n x dim) is kept in ``directory`` for the next call."""
    from mlfix.scoring.probe import MINIBATCH_MIN

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"pooled_{n}x{dim}_{classes}_{seed}.npy"
    labels, is_error = make_memmap(path, n, dim, classes, seed)
    chosen = n >= MINIBATCH_MIN if minibatch is None else minibatch
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        figures = pool.submit(_run, str(path), labels, is_error, chosen, seed).result()
    return {"rows": n, "dim": dim, "classes": classes, "path": "minibatch" if chosen else "full", **figures}


def main() -> None:
    p = parser("probe seconds and peak memory: full vs minibatch on a float16 memmap")
    p.add_argument("--rows", type=int, nargs="+", default=[100_000])
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--path", choices=("full", "minibatch", "both", "auto"), default="both")
    args = p.parse_args()
    paths = {"full": [False], "minibatch": [True], "both": [False, True], "auto": [None]}[args.path]
    for n in ([2_000] if args.quick else args.rows):
        for minibatch in paths:
            figures = measure_probe(n, args.dim, args.classes, minibatch=minibatch)
            for metric, unit in (("seconds", "s"), ("peak_rss_mb", "MiB"), ("peak_anon_mb", "MiB"), ("auroc", "")):
                emit("scale_probe", metric, figures[metric], unit, n, dim=args.dim, classes=args.classes,
                     path=figures["path"])


if __name__ == "__main__":
    main()
