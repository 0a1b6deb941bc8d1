"""Scale (issue 16): the Ray engine against the local one, and every later stage at 1M-10M rows.

    python -m bench.scale                          # engine, stages, recall, review (hours on 2 cores)
    python -m bench.scale --quick                  # small sizes: a smoke test (about a minute without engine)
    python -m bench.scale --only stages --rows 1000000 --dim 256
    python -m bench.scale --only stages --rows 10000000 --stages bags orders.bags health neighbours probe
    python -m bench.scale --only engine --engine-sizes 10000
    python -m bench.scale --only engine --engine-sizes 10000 100000 --engine-image-size 32 --no-flowers
    python -m bench.scale --out /tmp/mlfix-scale   # where generated images and memory maps go (reused)

Sections (JSON lines via bench.common.emit, metric ``<section>.<...>``):

1. ``engine``: ``Project.index`` with ``engine="local"`` and ``engine="ray"`` (a local Ray on the same
   2 cores, ``ray.init(num_cpus=2)``) on the same images: flowers17 (1,360 photos) and generated 64 px
   JPEGs (10 classes of coloured shapes, seed 0; 10k and 100k, --quick 2k), offline EfficientNet-Lite0
   at 64 px, 64 words, the two-pass route for both (``cell_cache_gb=0``); ``bench/scale_engine.py``.
   Each run is a subprocess, so its ``ru_maxrss`` is the driver's own peak (Ray's workers are other
   processes). Figures: images/s of the whole index and of the features passes (``features/engine.json``),
   ray / local of each, the driver's peak MiB.
2. ``stages``: synthetic clustered embeddings (N x dim float16 memory map on disk, 100 classes, N / 200
   below 20k rows, 5% of labels flipped) and word grids (N x 14 x 14 uint16, 1,024 words: the grid of
   Lite0 at 224 px): seconds and peak resident memory of the approximate neighbours
   (``bench.scale_neighbours``: above 100k rows it searches 100k and estimates the rest), the minibatch
   probe (``bench.scale_probe``), the embedding and bag orders, the bags, and the health checks whose
   cost grows with N (the kNN graph they share, duplicates, outliers, class outliers, the seven quality
   checks; above 200k rows they read a random graph of the real shape, not a second search).
3. ``recall``: recall@50 of the approximate neighbour index against exact search
   (``mlfix.scoring.neighbours.neighbour_recall``, 1,000 queries) on 100k synthetic 1,280-d vectors
   and on the 10k real CIFAR-10N Lite0 vectors cached in bench/results.
4. ``review``: ``python -m bench.scale_review`` (the Review page of a 10M-image project), when present.
5. ``storage``: bytes per image of each project artifact on a real project (``bench/scale_storage.py``:
   a seeded 300 flowers17 photos at 224 px, 1,024 words, scores and thumbnails made).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import emit, parser, peak_rss_mb, reset_peak_rss, timer

BENCH = "scale"
SEED = 0
CLASSES = 100  # classes of the stages' data (fewer below 20k rows: 200 rows per class at least)
FLIPPED = 0.05
K = 50
WORDS, GRID = 1024, 14  # Lite0 at 224 px with stride 16: a 14 x 14 grid of words
SECTIONS = ("engine", "stages", "recall", "review", "storage")
QUICK_ROWS, QUICK_DIM = 2000, 32
GRAPH_MAX = 200_000  # health: above, a graph of the right shape instead of a second neighbour search
SEARCHED = 100_000  # neighbours: above, the helper searches this many rows and estimates the rest
REAL_FEATURES = Path(__file__).resolve().parent / "results" / "features_cifar10n_10000_tf_efficientnet_lite0_96.npz"


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def measured(stage: str, n: int, setup: dict, run, **extra):
    """Run ``run()``; emit ``stages.<stage>.seconds`` and ``.peak_mb`` (resident peak during the call,
    file-backed pages of the memory maps it reads included) and return its result."""
    reset_peak_rss()
    before = peak_rss_mb()
    with timer() as took:
        result = run()
    peak = peak_rss_mb()
    setup = {**setup, **extra}
    emit(BENCH, f"stages.{stage}.seconds", round(took(), 2), "s", n, **setup)
    emit(BENCH, f"stages.{stage}.peak_mb", round(peak, 1), "MiB", n, rss_before_mb=round(before, 1), **setup)
    return result


# ---- synthetic data -----------------------------------------------------------------------------

def classes_for(n: int) -> int:
    return int(np.clip(n // 200, 10, CLASSES))


def synthetic_embeddings(n: int, dim: int, folder: Path, seed: int = SEED,
                         chunk: int = 65_536) -> tuple[Path, np.ndarray]:
    """(path of an (n, dim) float16 .npy of clustered vectors, (n,) int64 labels with 5% flipped).

    Rows are ``centre[class] + noise`` with a within-class cosine near 0.5 (a pooled-feature-like
    spread), written a chunk at a time so that N x dim never sits in memory. Reused when present."""
    rng = np.random.default_rng(seed)
    count = classes_for(n)
    classes = rng.integers(0, count, n)
    labels = np.where(rng.random(n) < FLIPPED, rng.integers(0, count, n), classes)
    path = folder / f"embeddings_{n}_{dim}_{seed}.npy"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        centres = rng.normal(0, 1, (count, dim)).astype(np.float32)
        out = np.lib.format.open_memmap(path.with_suffix(".tmp.npy"), mode="w+", dtype=np.float16, shape=(n, dim))
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            out[lo:hi] = centres[classes[lo:hi]] + rng.normal(0, 1, (hi - lo, dim)).astype(np.float32)
        out.flush()
        del out
        path.with_suffix(".tmp.npy").rename(path)
    return path, labels


def synthetic_words(labels: np.ndarray, seed: int = SEED, chunk: int = 131_072) -> np.ndarray:
    """(N, GRID, GRID) uint16 word grids: each class favours its own stretch of the codebook (word =
    class offset + a geometric step), so same-class images share words as real scenes do."""
    rng = np.random.default_rng(seed + 1)
    offsets = rng.integers(0, WORDS, labels.max() + 1)
    out = np.empty((len(labels), GRID, GRID), np.uint16)
    for lo in range(0, len(labels), chunk):  # int64 steps of one chunk at a time: 200 MB, not 1.6 GB per 1M
        steps = rng.geometric(0.02, (len(labels[lo:lo + chunk]), GRID, GRID))
        out[lo:lo + chunk] = (offsets[labels[lo:lo + chunk]][:, None, None] + steps) % WORDS
    return out


def synthetic_meta(n: int, seed: int = SEED) -> pd.DataFrame:
    """The quality checks' image table: sizes and statistics drawn around typical photo values."""
    from mlfix.data.quality import QUALITY_STATS

    rng = np.random.default_rng(seed + 2)
    meta = pd.DataFrame({"width": rng.integers(200, 800, n), "height": rng.integers(200, 800, n)})
    for column in QUALITY_STATS:
        meta[column] = rng.beta(2, 5, n).astype(np.float32)
    return meta


# ---- 2. stages ----------------------------------------------------------------------------------

def helper(module: str, name: str):
    """A helper's measuring function, or None (with a skip line) while it is not there yet."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        print(json.dumps({"bench": "skip", "reason": f"{module}.{name}: {err}"}), file=sys.stderr)
        return None


def unit_of(key: str) -> str:
    """The unit of a helper's figure, from its name (``seconds_index`` -> s, ``peak_rss_mb`` -> MiB)."""
    for part, unit in (("seconds", "s"), ("_s_", "s"), ("mb", "MiB"), ("recall_at", "share"), ("auroc", "share")):
        if part in f"_{key}_":
            return unit
    return ""


def helper_stage(stage: str, function, n: int, setup: dict, options: dict | None = None, **arguments) -> None:
    """Emit a helper's figures as ``stages.<stage>.<key>``: its numbers as metrics, the rest as setup.
    The helpers measure their own peak memory (in a fresh process), so no peak is taken here."""
    if function is None:
        return
    with timer() as took:
        figures = dict(function(n=n, seed=SEED, **arguments, **(options or {})) or {})
    skip = {"n", "rows", "seed", "stage", "bench", *arguments}
    numbers = {key: value for key, value in figures.items() if key not in skip
               and isinstance(value, (int, float)) and not isinstance(value, bool)}
    info = {key: value for key, value in figures.items() if key not in skip and key not in numbers}
    setup = {**setup, **arguments, **info, "data": f"generated by {function.__module__}"}
    for key, value in numbers.items():
        emit(BENCH, f"stages.{stage}.{key}", value, unit_of(key), n, **setup)
    emit(BENCH, f"stages.{stage}.wall_seconds", round(took(), 2), "s", n, **setup)


def shaped_graph(n: int, rng: np.random.Generator, chunk: int = 262_144):
    """A k-neighbour graph of random rows with descending cosines around the synthetic data's (0.3-0.9):
    what the health checks read, without the search."""
    from mlfix.scoring.neighbours import Neighbours

    index = np.empty((n, K), np.int64)
    similarity = np.empty((n, K), np.float32)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        index[lo:hi] = rng.integers(0, n, (hi - lo, K))
        similarity[lo:hi] = -np.sort(-rng.beta(5, 4, (hi - lo, K)).astype(np.float32), axis=1)
    return Neighbours(index, similarity)


def health_stage(x: np.ndarray, labels: np.ndarray, n: int, setup: dict) -> None:
    from mlfix.scoring import neighbours as nb
    from mlfix.scoring.duplicates import duplicates_check
    from mlfix.scoring.outliers import class_outlier_check, outlier_check
    from mlfix.scoring.quality import QUALITY_CHECKS, quality_check

    ids = np.arange(n)
    names = np.char.add("c", labels.astype(str)).astype(object)
    rng = np.random.default_rng(SEED + 3)
    content_hash = np.where(rng.random(n) < 0.001, rng.integers(1, 50, n), 0)
    if n <= GRAPH_MAX:
        graph = measured("health.neighbours_graph", n, setup, lambda: nb.embedding_neighbours(x, k=K), k=K)
    else:  # the graph's cost is the neighbours stage's; the checks' cost does not depend on which rows
        graph = shaped_graph(n, rng)
        setup = {**setup, "graph": f"random {K}-neighbour graph of the real shape (over {GRAPH_MAX:,} rows: "
                                   "the graph itself is the neighbours stage)"}
    measured("health.duplicates", n, setup,
             lambda: duplicates_check(x, names, ids, content_hash=content_hash, neighbours=graph))
    measured("health.outlier", n, setup, lambda: outlier_check(graph, ids))
    del graph
    measured("health.class_outlier", n, setup, lambda: class_outlier_check(x, names, ids))
    meta = synthetic_meta(n)
    measured("health.quality", n, setup, lambda: [quality_check(name, meta, ids) for name in QUALITY_CHECKS],
             checks=len(QUALITY_CHECKS))


STAGES = ("orders.embedding", "bags", "orders.bags", "health", "neighbours", "probe")


def stages(n: int, dim: int, out: Path, setup: dict, keep: bool, only: tuple[str, ...] = STAGES) -> None:
    """The later stages at ``n`` x ``dim`` (``only``: those of :data:`STAGES`, e.g. the cheap ones at 10M)."""
    from mlfix.pipeline.codebook import pack_bags
    from mlfix.pipeline.ordering import order
    from mlfix.pipeline.ordering.embedding import embedding_order

    setup = {**setup, "dim": dim, "classes": classes_for(n), "flipped": FLIPPED, "data": "synthetic clustered float16"}
    log(f"stages: {n:,} x {dim}")
    with timer() as made:
        path, labels = synthetic_embeddings(n, dim, out)
    emit(BENCH, "stages.generate.seconds", round(made(), 1), "s", n, path=str(path), **setup)
    if "orders.embedding" in only:
        embeddings = np.load(path, mmap_mode="r")
        measured("orders.embedding", n, setup, lambda: embedding_order(embeddings))
        del embeddings
    if "bags" in only or "orders.bags" in only:
        words = synthetic_words(labels)
        bags = measured("bags", n, setup, lambda: pack_bags(words, WORDS), words=WORDS, grid=GRID)
        del words
        if "orders.bags" in only:
            measured("orders.bags", n, setup, lambda: order(bags), words=WORDS)  # approximate above EXACT_MAX
        del bags
    if "health" in only:
        x = np.load(path, mmap_mode="r")
        health_stage(x, labels, n, setup)
        del x
    # the helpers last: each runs in its own process on its own generated data
    if "neighbours" in only:
        helper_stage("neighbours", helper("bench.scale_neighbours", "measure_neighbours"), n, setup,
                     {"queries": SEARCHED} if n > SEARCHED else None, dim=dim, k=K)
    if "probe" in only:
        helper_stage("probe", helper("bench.scale_probe", "measure_probe"), n, setup, {"directory": out / "probe"},
                     dim=dim, classes=classes_for(n))
    if not keep:
        path.unlink(missing_ok=True)
        shutil.rmtree(out / "probe", ignore_errors=True)


# ---- 3. recall and 4. review --------------------------------------------------------------------

def recall(n: int, dim: int, queries: int, out: Path, setup: dict) -> None:
    recall_at = helper("mlfix.scoring.neighbours", "neighbour_recall")
    if recall_at is None:
        return
    path, _ = synthetic_embeddings(n, dim, out)
    vectors = np.load(path).astype(np.float32)
    with timer() as took:
        value = recall_at(vectors, K, queries, SEED)
    emit(BENCH, "recall.synthetic", round(float(value), 4), f"recall@{K}", n, dim=dim, queries=queries,
         seconds=round(took(), 1), goal=">= 0.95", data="synthetic clustered", **setup)
    if REAL_FEATURES.exists():
        real = np.load(REAL_FEATURES)["pooled"][:n].astype(np.float32)  # --quick: its first rows
        emit(BENCH, "recall.cifar10n_lite0", round(float(recall_at(real, K, queries, SEED)), 4), f"recall@{K}",
             len(real), dim=real.shape[1], queries=queries, goal=">= 0.95",
             data=f"CIFAR-10N first {len(real):,}, Lite0 offline 96 px ({REAL_FEATURES.name})", **setup)


def review(quick: bool) -> None:
    if importlib.util.find_spec("bench.scale_review") is None:
        print(json.dumps({"bench": "skip", "reason": "bench/scale_review.py not found"}), file=sys.stderr)
        return
    command = [sys.executable, "-m", "bench.scale_review"] + (["--quick"] if quick else [])
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "mlfix-scale",
                   help="generated images and memory maps (kept for the next run; outside the repository)")
    p.add_argument("--rows", type=int, nargs="+", help="stages: rows (default 1,000,000; --quick 2,000)")
    p.add_argument("--dim", type=int, help="stages: embedding dims (default 256; --quick 32)")
    p.add_argument("--engine-sizes", type=int, nargs="+", help="engine: generated images (default 10k 100k)")
    p.add_argument("--engine-image-size", type=int, default=64, help="engine: the index's image size (default 64)")
    p.add_argument("--engine-only", choices=("local", "ray"), help="engine: run one engine (no ratio)")
    p.add_argument("--no-flowers", action="store_true", help="engine: skip the flowers17 comparison")
    p.add_argument("--keep", action="store_true", help="keep the stages' memory maps in --out")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES, help="stages: which (default all)")
    args = p.parse_args(argv)
    sections = args.only or SECTIONS
    setup = {"quick": args.quick, "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    if "engine" in sections:
        from bench.scale_engine import engine

        engine(args.engine_sizes or ([2000] if args.quick else [10_000, 100_000]), args.out, setup,
               args.engine_image_size, not args.no_flowers,
               (args.engine_only,) if args.engine_only else ("local", "ray"))
    if "stages" in sections:
        for n in args.rows or ([QUICK_ROWS] if args.quick else [1_000_000]):
            stages(n, args.dim or (QUICK_DIM if args.quick else 256), args.out, setup, args.keep, tuple(args.stages))
    if "recall" in sections:
        recall(*((QUICK_ROWS, QUICK_DIM, 200) if args.quick else (100_000, 1280, 1000)), args.out, setup)
        if not args.keep:
            for path in args.out.glob(f"embeddings_{QUICK_ROWS if args.quick else 100_000}_*.npy"):
                path.unlink()
    if "review" in sections:
        review(args.quick)
    if "storage" in sections:
        from bench.scale_storage import storage

        storage(30 if args.quick else 300, setup, BENCH)


if __name__ == "__main__":
    main()
