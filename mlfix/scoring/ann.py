"""Approximate neighbours at millions of rows: a faiss IVF index, built and searched in chunks.

Exact search (:func:`mlfix.scoring.neighbours.cosine_index`) costs N^2 x D and holds every vector
as float32: at 10M x 1280 that is ~1.6e17 flops and 51 GB. Above
:data:`mlfix.scoring.neighbours.APPROXIMATE_MIN` rows the neighbour graphs come from an inverted
file index instead (Jegou et al., "Product quantization for nearest neighbor search", TPAMI 2011;
faiss ``IndexIVFScalarQuantizer``, Johnson et al., "Billion-scale similarity search with GPUs"):

- ``nlist`` = 4 sqrt(N) lists (capped at :data:`NLIST_MAX`, and at N / 39 so each centroid has the
  39 training points faiss asks for), from spherical k-means (two-level from :data:`TWO_LEVEL_MIN`
  lists) on a seeded sample of 40 rows per list, at most :data:`TRAIN_MAX`: the same index for the
  same data and seed, bit for bit;
- vectors stored as 8-bit scalar codes of their residuals (``QT_8bit``: 1 byte per dimension, half
  the float16 vectors and an eighth of float32; the cosine error it adds is at most 9e-4 at
  D = 1280, 100k rows, and 5e-3 at D = 64: ``bench/scale_neighbours.py``). Bags of words are 0/1,
  stored exactly as bytes (``QT_8bit_direct``, no residual), so shared-word counts stay exact;
- ``nprobe`` tuned per index: the smallest of :data:`NPROBE_LADDER` whose recall@k on
  :data:`TUNE_QUERIES` seeded queries (against an exact scan) reaches :data:`TUNE_RECALL`, so the
  graph meets the 0.95 goal on the data at hand, not only on a benchmark;
- vectors are added and queried :data:`CHUNK_ROWS` at a time, each chunk converted to float32 on its
  own: a float16 memmap of 25.6 GB is never loaded whole.

HNSW was the alternative; IVF was chosen, measured on 20k x 1280 clustered vectors, 2,000 queries, k=51
(on this 2-core shared box, one-off script; figures in the report of issue #16): IVF-SQ8 (512 lists,
nprobe 32) built in 22 s and searched in 3.6 s at recall 0.996; IVF-Flat 5.4 s (recall 0.9996, 2x
the memory); HNSW32 (efSearch 64) built in 44 s and searched in 4.4 s at recall 0.998. HNSW's
per-query cost grows as log N where IVF's grows as sqrt N, but it keeps float32 vectors plus ~64
links per row (> 51 GB at 10M x 1280), its multi-threaded build is not reproducible for a seed, and
it cannot be built from a compressed store chunk by chunk as cheaply.

Measured (``python -m bench.scale_neighbours --n N --dim 1280``, clustered float16 memmap, k=50,
recall on 1,000 queries against exact; 2 cores shared with other jobs, ~20% of one core's time):
100k rows: 1,264 lists, nprobe 16, recall 0.995, 654 s wall (115 s CPU), peak RSS 1.4 GB; 1M rows
(``--queries 10000``): 4,000 lists, nprobe 4, recall 0.980, index 1,371 s, 10k queries in 21 s
(all rows ~3,400 s estimated), peak RSS 5.3 GB of which 2.6 GB the memmap's cached pages.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

MIN_ROWS = 1_000  # under this an approximate request is served exactly: too few lists to help
NLIST_MAX = 16_384  # lists at 10M rows: 4 sqrt(1e7) ~ 12.6k, under the cap
TRAIN_PER_LIST = 40  # k-means points per list (faiss asks for >= 39): training costs 40 nlist^2 D
TWO_LEVEL_MIN = 1_024  # lists from which the k-means is two-level
TRAIN_MAX = 262_144  # ~20 points per list at 10M: enough for coarse lists, and k-means stays minutes
CHUNK_ROWS = 32_768  # rows per add/search chunk: 168 MB of float32 at D = 1280
TUNE_QUERIES = 256
TUNE_RECALL = 0.96  # a margin over the 0.95 goal for the sampling error of 256 queries
NPROBE_LADDER = (4, 8, 16, 32, 64, 128, 256, 512, 1024)

Reader = Callable[[object], np.ndarray]  # rows (a slice or sorted int array) -> float32 (m, D)


def n_lists(n: int) -> int:
    """Inverted lists for ``n`` rows: 4 sqrt(n), at most NLIST_MAX and n / 39 (faiss's minimum).

    >>> n_lists(20_000), n_lists(1_000_000), n_lists(10_000_000)
    (512, 4000, 12649)
    """
    by_size = int(4 * np.sqrt(n))
    if by_size > n // 39:  # small n: a power of two under n / 39
        by_size = 2 ** int(np.log2(max(n // 39, 1)))
    return max(1, min(NLIST_MAX, by_size))


def build_ivf(read: Reader, n: int, dim: int, seed: int, exact_bytes: bool = False):
    """An inner-product ``faiss.IndexIVFScalarQuantizer`` over rows 0..n-1 of ``read``.

    ``exact_bytes``: the rows are 0/1 (bags of words): stored as bytes, not residual codes.
    """
    import faiss

    nlist = n_lists(n)
    train = read(np.sort(np.random.default_rng(seed).choice(
        n, size=min(n, TRAIN_PER_LIST * nlist, TRAIN_MAX), replace=False)))
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(coarse_centroids(train, nlist, seed))
    sq = faiss.ScalarQuantizer
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist,
                                          sq.QT_8bit_direct if exact_bytes else sq.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT, not exact_bytes)
    index.train(train)  # the scalar codes' ranges only: the quantizer already holds nlist centroids
    for part in chunks(n):
        index.add(read(part))
    return index


def coarse_centroids(train: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """(nlist, D) spherical k-means centroids of ``train``, seeded (standalone faiss.Kmeans: its seed
    and sample are explicit, so the lists repeat bit for bit). From TWO_LEVEL_MIN lists, two-level
    k-means (faiss.contrib.clustering.two_level_clustering, as faiss's billion-scale recipes do):
    sqrt(nlist) clusters, then each split in proportion to its size; it costs ~sqrt(nlist) x less
    than one k-means with nlist centroids (at 1M rows: 0.45 instead of 8 TFLOP)."""
    import faiss

    args = {"seed": int(seed) % 2**31, "spherical": True, "min_points_per_centroid": 1}
    if nlist < TWO_LEVEL_MIN:
        kmeans = faiss.Kmeans(train.shape[1], nlist, niter=10, max_points_per_centroid=TRAIN_PER_LIST, **args)
        kmeans.train(train)
        return kmeans.centroids
    from faiss.contrib.clustering import two_level_clustering

    return two_level_clustering(train, int(np.sqrt(nlist)), nlist, clustering_niter=10, **args)[0]


def exact_top(read: Reader, n: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top ``k`` (similarity, row), best first, of each of ``queries`` (q, D) float32 over
    rows 0..n-1, by one chunked scan (never the whole (n, D) as float32)."""
    best = np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        sim = np.concatenate([best[0], queries @ read(slice(start, stop)).T], axis=1)
        block = np.broadcast_to(np.arange(start, stop), (len(queries), stop - start))
        rows = np.concatenate([best[1], block], axis=1)
        top = np.argpartition(-sim, min(k, sim.shape[1]) - 1, axis=1)[:, :k] if sim.shape[1] > k \
            else np.broadcast_to(np.arange(sim.shape[1]), sim.shape)
        best = np.take_along_axis(sim, top, axis=1), np.take_along_axis(rows, top, axis=1)
    order = np.argsort(-best[0], axis=1, kind="stable")
    return np.take_along_axis(best[0], order, axis=1), np.take_along_axis(best[1], order, axis=1)


def recall_at(found: np.ndarray, similarity: np.ndarray, exact_kth: np.ndarray) -> float:
    """Tie-aware recall@k: the share of found neighbours at least as similar (exactly computed,
    ``similarity`` (q, k)) as the exact k-th (``exact_kth`` (q,)); -1 entries count as misses.
    With distinct similarities it equals |found & exact| / k."""
    hit = (found >= 0) & (similarity >= exact_kth[:, None] - 1e-5)
    return float(hit.mean())


def true_similarity(read: Reader, queries: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(q, k) exact inner products of ``queries`` with their ``found`` rows (0 where -1)."""
    rows = np.unique(found[found >= 0])
    if not len(rows):
        return np.zeros(found.shape, np.float32)
    vectors = read(rows)[np.searchsorted(rows, np.maximum(found, 0))]
    return np.where(found >= 0, np.einsum("qd,qkd->qk", queries, vectors), 0.0).astype(np.float32)


def probe_recall(index, read: Reader, n: int, k: int, rows: np.ndarray) -> Callable[[int], float]:
    """recall(nprobe) of ``index`` for the query ``rows`` (self excluded), against an exact scan."""
    queries = read(rows)
    exact_sim, exact_rows = exact_top(read, n, queries, k + 1)
    kth = drop_self(exact_sim, exact_rows, rows, k)[0][:, -1]

    def recall(nprobe: int) -> float:
        index.nprobe = nprobe
        found = drop_self(*index.search(queries, k + 1), rows, k)[1]
        return recall_at(found, true_similarity(read, queries, found), kth)

    return recall


def tune_nprobe(index, read: Reader, n: int, k: int, seed: int) -> int:
    """The smallest nprobe of NPROBE_LADDER (<= nlist) whose recall@k reaches TUNE_RECALL on
    TUNE_QUERIES seeded queries; nlist (every list: exact up to the codes) when none does."""
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, size=min(n, TUNE_QUERIES), replace=False))
    recall = probe_recall(index, read, n, k, rows)
    for nprobe in (p for p in NPROBE_LADDER if p < index.nlist):
        if recall(nprobe) >= TUNE_RECALL:
            return nprobe
    return index.nlist


def search_all(index, read: Reader, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) similarity float32 and rows int64 of every row's ``k`` neighbours, self excluded,
    searched CHUNK_ROWS queries at a time. Rows whose probed lists held fewer than k others are
    searched again with 4x the lists, so -1 is left only where n - 1 < k."""
    similarity = np.empty((n, k), np.float32)
    found = np.empty((n, k), np.int64)
    for part in chunks(n):
        rows = np.arange(part.start, part.stop)
        similarity[part], found[part] = drop_self(*index.search(read(part), k + 1), rows, k)
    if not hasattr(index, "nprobe"):  # an exact index: nothing to search again
        return similarity, found
    short, tuned = np.flatnonzero((found < 0).any(axis=1)), index.nprobe
    while len(short) and index.nprobe < index.nlist:  # rare: rows in small lists far from the others
        index.nprobe = min(index.nlist, index.nprobe * 4)
        similarity[short], found[short] = drop_self(*index.search(read(short), k + 1), short, k)
        short = short[(found[short] < 0).any(axis=1)]
    index.nprobe = tuned
    return similarity, found


def chunks(n: int) -> list[slice]:
    """Slices of at most CHUNK_ROWS rows covering 0..n-1; a short tail joins the chunk before it
    (faiss searches fewer than 20 queries by another code path, whose ties may fall differently).

    >>> [(s.start, s.stop) for s in chunks(CHUNK_ROWS + 5)]
    [(0, 32773)]
    """
    starts = list(range(0, n, CHUNK_ROWS))
    if len(starts) > 1 and n - starts[-1] < 20:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n])]


def drop_self(similarity: np.ndarray, found: np.ndarray, rows: np.ndarray, k: int):
    """Drop each query row's own entry from its k + 1 results; when duplicates (or -1 padding) push
    self out, drop the last entry instead."""
    is_self = found == rows[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    m = len(rows)
    return similarity[keep].reshape(m, k), found[keep].reshape(m, k).astype(np.int64)
