"""Neighbours at scale: seconds, peak memory and recall@k of :func:`embedding_neighbours` on synthetic
clustered embeddings written as a float16 memmap (as ``features/pooled.npy`` is).

    python -m bench.scale_neighbours --n 100000 --dim 1280 [--k 50] [--sample 1000] [--exact]

prints one JSON object. :func:`measure_neighbours` (used by ``bench/scale.py``) runs each
measurement in a fresh process, so its peak RSS (``resource.getrusage``) is that run's alone; the
RSS includes the memmap's pages read from the page cache (file-backed, reclaimable).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

LATENT = 32  # intrinsic dimension: real embeddings live near a low-dimensional set
CHUNK = 16_384


def clustered_embeddings(n: int, dim: int, seed: int, path: Path, clusters: int | None = None) -> np.memmap:
    """(n, dim) float16 memmap at ``path``: a mixture of ``clusters`` (n / 1000 by default) Gaussians
    in a LATENT-dimensional space, mapped linearly to ``dim`` and jittered; written in chunks."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(10, n // 1000)
    centres = rng.normal(size=(clusters, LATENT)) * 2.0
    lift = rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        z = centres[rng.integers(0, clusters, m)] + rng.normal(size=(m, LATENT))
        out[start:start + m] = (z @ lift + 0.2 * rng.normal(size=(m, dim))).astype(np.float16)
    out.flush()
    return np.load(path, mmap_mode="r")


def _measure(n: int, dim: int, k: int, seed: int, sample: int, exact: bool, queries: int | None) -> dict:
    import faiss  # noqa: F401  (imported before the clock starts)

    import mlfix.scoring.neighbours  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        x = clustered_embeddings(n, dim, seed, Path(tmp) / "pooled.npy")
        made, cpu_start = time.perf_counter(), _cpu()
        rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        near, index, built = _graph(x, k, seed, exact, queries)
        graph, cpu = time.perf_counter(), _cpu() - cpu_start
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        searched = n if exact or queries is None else min(queries, n)
        return {"stage": "neighbours", "n": n, "dim": dim, "k": k, "seed": seed, "dtype": "float16 memmap",
                "approximate": not exact, "seconds_data": round(made - started, 2),
                "seconds": round(graph - made, 2), "seconds_index": round(built - made, 2),
                "cpu_seconds": round(cpu, 1), "searched_rows": searched,
                "seconds_estimate_all_rows": round(built - made + (graph - built) * n / searched, 1),
                "peak_rss_mb_data": round(rss_data), "peak_rss_mb": round(rss),
                "nlist": getattr(index, "nlist", None), "nprobe": getattr(index, "nprobe", None),
                **_recall(x, near, k, np.random.default_rng(seed + 3), searched, sample)}


def _graph(x, k: int, seed: int, exact: bool, queries: int | None):
    """(neighbours, index or None, when the index was built): embedding_neighbours's path, the
    approximate one in its two steps to time each."""
    from mlfix.scoring import ann
    from mlfix.scoring.neighbours import Neighbours, approximate_index, embedding_neighbours, unit_reader

    if exact:
        return embedding_neighbours(x, k, approximate=False), None, time.perf_counter()
    index = approximate_index(x, k, seed)
    built = time.perf_counter()
    if queries is not None:
        return _search_first(index, x, queries, k), index, built
    return Neighbours(*ann.search_all(index, unit_reader(x), len(x), k)[::-1]), index, built


def _recall(x, near, k: int, rng: np.random.Generator, searched: int, sample: int) -> dict:
    """Tie-aware recall@k of ``near`` against an exact scan, on ``sample`` of the searched rows, and
    the largest error of its similarities."""
    from mlfix.scoring import ann
    from mlfix.scoring.neighbours import unit_reader

    read = unit_reader(x)
    rows = np.sort(rng.choice(searched, size=min(searched, sample), replace=False))
    queries = read(rows)
    kth = ann.drop_self(*ann.exact_top(read, len(x), queries, k + 1), rows, k)[0][:, -1]
    found = near.index[rows]
    true = ann.true_similarity(read, queries, found)
    return {"recall_at_k": round(ann.recall_at(found, true, kth), 4), "recall_queries": len(rows),
            "similarity_error_max": float(np.abs(true - near.similarity[rows]).max())}


def _search_first(index, x, queries: int, k: int):
    """The graph's first ``queries`` rows only (to time a graph too slow to finish here); other rows
    stay -1. Search is per query, so its time scales linearly to all rows."""
    from mlfix.scoring import ann
    from mlfix.scoring.neighbours import Neighbours, unit_reader

    n = len(x)
    found, similarity = np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32)
    read = unit_reader(x)
    for part in ann.chunks(min(queries, n)):
        rows = np.arange(part.start, part.stop)
        similarity[part], found[part] = ann.drop_self(*index.search(read(part), k + 1), rows, k)
    return Neighbours(found, similarity)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_neighbours(n: int, dim: int = 1280, k: int = 50, seed: int = 0, sample: int = 1000,
                       exact: bool = False, queries: int | None = None) -> dict:
    """Seconds, peak RSS (MB) and recall@k vs exact (on ``sample`` queries) of the neighbour graph
    of ``n`` x ``dim`` clustered float16 embeddings; runs in a fresh process. ``queries``: search
    only that many rows (the index is still built over all n) and extrapolate the search time."""
    # An executor, not a Pool: a worker that dies at start raises BrokenProcessPool, a Pool replaces it forever.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measure, n, dim, k, seed, sample, exact, queries).result()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--exact", action="store_true", help="the exact path (slow above 100k rows)")
    parser.add_argument("--queries", type=int, default=None,
                        help="search only these rows, extrapolate the time (1M rows take hours on 2 cores)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_neighbours(args.n, args.dim, args.k, args.seed, args.sample, args.exact,
                                        args.queries)))


if __name__ == "__main__":
    main()
