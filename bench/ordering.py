"""Similarity orderings: the exact greedy chain against the seed's numpy loop, and the approximate
order on large N (time, memory, neighbour similarity against the exact chain).

    python -m bench.ordering [--quick]

Synthetic bags that look like visual words: k=1024 words, 100 clusters of images; each cluster has
its own Zipf-like word popularity (a random permutation of 1/rank, mixed with a shared background
popularity, as real scenes share common words), and each image makes 95-260 draws from its
cluster's distribution, which gives 68-145 distinct words per image (5th-95th percentile, mean 106).
Generated packed, in chunks, seeded.
"""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np

from bench.common import emit, parser, peak_rss_mb, timer
from mlfix.pipeline.ordering import mean_shared_words
from mlfix.pipeline.ordering.approximate import approximate_order
from mlfix.pipeline.ordering.exact import greedy_order, seed_greedy_order

BENCH = "ordering"


def clustered_bags(n: int, k: int = 1024, clusters: int = 100, draws: tuple[int, int] = (95, 260),
                   background: float = 0.3, seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """Packed bags (n, k/8) uint8, ``np.packbits(..., bitorder="little")``, from clustered word popularity."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, k + 1)
    shared = zipf[rng.permutation(k)]
    cdfs = np.empty((clusters, k))
    for c in range(clusters):
        own = zipf[rng.permutation(k)] * rng.gamma(2.0, 0.5, k)
        p = background * shared / shared.sum() + (1 - background) * own / own.sum()
        cdfs[c] = np.cumsum(p / p.sum())
    cdfs[:, -1] = 1.0
    labels = rng.integers(0, clusters, n)
    counts = rng.integers(draws[0], draws[1] + 1, n)
    out = np.empty((n, k // 8), np.uint8)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        bits = np.zeros((hi - lo, k), bool)
        for c in np.unique(labels[lo:hi]):
            rows = np.flatnonzero(labels[lo:hi] == c)
            words = np.searchsorted(cdfs[c], rng.random((len(rows), draws[1])), side="right")
            keep = np.arange(draws[1]) < counts[lo + rows, None]
            bits[np.broadcast_to(rows[:, None], words.shape)[keep], words[keep]] = True
        out[lo:hi] = np.packbits(bits, axis=1, bitorder="little")
    return out


def _words_per_image(packed: np.ndarray) -> float:
    return float(np.bitwise_count(packed).sum(axis=1).mean())


def exact_vs_seed(n: int, setup: dict) -> None:
    packed = clustered_bags(n)
    bags = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    setup = {**setup, "k": 1024, "words_per_image": round(_words_per_image(packed), 1)}
    with timer() as t_exact:
        fast = greedy_order(bags)
    with timer() as t_seed:
        ref = seed_greedy_order(bags)
    equal = bool(np.array_equal(fast, ref))
    emit(BENCH, "exact_s", round(t_exact(), 4), "s", n, **setup)
    emit(BENCH, "seed_s", round(t_seed(), 3), "s", n, **setup)
    emit(BENCH, "exact_speedup_vs_seed", round(t_seed() / t_exact(), 1), "x", n, **setup)
    emit(BENCH, "exact_equal_orders", equal, "bool", n, **setup)


def approx_quality(n: int, setup: dict) -> None:
    packed = clustered_bags(n, seed=1)
    setup = {**setup, "k": 1024, "words_per_image": round(_words_per_image(packed), 1)}
    with timer() as t_exact:
        exact = greedy_order(packed)
    with timer() as t_approx:
        approx = approximate_order(packed)
    exact_mean, approx_mean = mean_shared_words(packed, exact), mean_shared_words(packed, approx)
    emit(BENCH, "exact_mean_shared", round(exact_mean, 3), "words", n, seconds=round(t_exact(), 3), **setup)
    emit(BENCH, "approx_mean_shared", round(approx_mean, 3), "words", n, seconds=round(t_approx(), 3), **setup)
    emit(BENCH, "approx_over_exact_mean_shared", round(approx_mean / exact_mean, 4), "ratio", n, **setup)


def approx_large(n: int, setup: dict) -> None:
    with timer() as t_gen:
        packed = clustered_bags(n, seed=2)
    setup = {**setup, "k": 1024, "words_per_image": round(_words_per_image(packed), 1),
             "generate_s": round(t_gen(), 1)}
    rss_before = peak_rss_mb()
    tracemalloc.start()
    with timer() as t_approx:
        order = approximate_order(packed)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(np.sort(order), np.arange(n))
    emit(BENCH, "approx_s", round(t_approx(), 2), "s", n, **setup)
    emit(BENCH, "approx_peak_rss", round(peak_rss_mb(), 1), "MiB", n, peak_rss_before_call=round(rss_before, 1),
         input_mb=round(packed.nbytes / 2**20, 1), **setup)
    emit(BENCH, "approx_peak_numpy_alloc", round(traced_peak / 2**20, 1), "MiB", n,
         note="tracemalloc peak during the call (numpy arrays; faiss's C++ buffers not included)", **setup)
    emit(BENCH, "approx_mean_shared", round(mean_shared_words(packed, order), 3), "words", n, **setup)


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup = {"quick": args.quick, "omp_threads": os.environ.get("OMP_NUM_THREADS")}
    with timer() as t_compile:  # numba compiles (or loads from its cache) on the first call
        greedy_order(clustered_bags(64, seed=9))
    emit(BENCH, "first_call_compile_s", round(t_compile(), 2), "s", 64, **setup)
    for n in ([2000] if args.quick else [5000, 20000]):
        exact_vs_seed(n, setup)
    approx_quality(20000, setup)
    for n in ([] if args.quick else [100_000, 1_000_000]):
        approx_large(n, setup)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"# total {time.perf_counter() - started:.1f} s", flush=True)
