"""A greedy-like ordering for large N: PCA of the bags, hierarchical KMeans into clusters of about
``cluster_size`` images, the exact greedy chain inside each cluster, and the clusters chained tail to
head through the best next image among the nearest clusters. Roughly O(N * cluster_size) pairs
where the exact chain costs O(N^2).

How close it stays to the exact chain (mean shared words between neighbours) and how long it takes
at a million images: ``python -m bench.ordering``.

    >>> import numpy as np
    >>> bags = np.random.default_rng(0).random((300, 64)) < 0.2
    >>> order = approximate_order(bags, cluster_size=50)
    >>> sorted(order.tolist()) == list(range(300))
    True
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from mlfix.pipeline.ordering.bags import as_words, check_int_options, check_start, load_kernels
from mlfix.pipeline.ordering.exact import greedy_words
from mlfix.progress import ProgressFn


def approximate_order(bags: np.ndarray, start: int = 0, *, cluster_size: int = 1024, dims: int = 64,
                      next_clusters: int = 4, seed: int = 0, threads: int | None = 1,
                      progress: ProgressFn | None = None) -> np.ndarray:
    """A greedy-like ordering for large N: a permutation of ``range(N)`` (int64), starting at ``start``.

    1. Project the bags (rows scaled to unit length) on their first ``dims`` principal axes.
    2. KMeans (faiss) into clusters of about ``cluster_size`` images (at most twice that),
       hierarchically: at most 32 clusters per split, and clusters still too large are split again.
    3. Inside each cluster, the exact greedy chain (:func:`~mlfix.pipeline.ordering.exact.greedy_order`).
    4. Clusters follow one another tail to head: after a cluster's last image, the next image is the
       one sharing the most words with it among the ``next_clusters`` remaining clusters whose
       centres are nearest to it; its cluster comes next, starting there.

    Work is about N * cluster_size pair comparisons plus the KMeans; memory is O(N * (k/8 + dims)).
    With N <= 2 * cluster_size this is the exact chain. ``python -m bench.ordering`` compares the
    mean shared words between neighbours with the exact chain's.

    Args:
        bags: bool (N, k) or uint8 packed bits (N, ceil(k/8)).
        start: row index of the first image.
        cluster_size: target images per cluster (larger: slower, and closer to the exact chain).
        dims: PCA dimensions used for clustering.
        next_clusters: how many nearest clusters are searched for the next image at a junction.
        seed: KMeans seed (the result is deterministic for a given seed and thread count).
        threads: faiss and BLAS threads for the projection and the KMeans, small steps next to the
            chains (which use one core). One by default: on a busy machine extra threads slowed
            them down many times over. None leaves the current settings.
        progress: optional ``progress(done, total)`` callback, in images placed.

    Example::

        >>> bags = np.random.default_rng(1).random((120, 32)) < 0.3
        >>> int(approximate_order(bags, start=5, cluster_size=20)[0])
        5
    """
    check_int_options(cluster_size=(cluster_size, 2), dims=(dims, 1), next_clusters=(next_clusters, 1))
    words = as_words(bags)
    n = len(words)
    start = check_start(start, n)
    if n <= 2 * cluster_size:
        return greedy_words(words, start, progress)
    with _threads(threads):
        feats = _project(words, dims, seed)
        leaves = _partition(feats, cluster_size, seed)
    return _chain_clusters(words, feats, leaves, start, next_clusters, progress)


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """Limit faiss (OpenMP) and BLAS threads for a while; None leaves them alone."""
    if threads is None:
        yield
        return
    import faiss
    from threadpoolctl import threadpool_limits

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        with threadpool_limits(int(threads)):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def _unpack_float(words: np.ndarray) -> np.ndarray:
    """uint64 rows -> float32 (rows, 64 * W) 0/1, scaled to unit length (cosine geometry)."""
    bits = np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").astype(np.float32)
    norms = np.sqrt(bits.sum(axis=1, keepdims=True))
    return bits / np.maximum(norms, 1.0)


def _project(words: np.ndarray, dims: int, seed: int, sample: int = 8192) -> np.ndarray:
    """(N, dims) float32 coordinates of the unit-scaled bags on their leading principal axes.

    The axes come from a few subspace iterations on the covariance of a row sample: GEMMs only,
    cheaper than a full ``eigh`` of the k x k covariance or faiss's PCAMatrix.
    """
    n, width = words.shape
    d_in = 64 * width
    dims = min(dims, d_in)
    rng = np.random.default_rng(seed)
    x = _unpack_float(words[np.sort(rng.choice(n, size=min(n, sample), replace=False))])
    mean = x.mean(axis=0)
    x -= mean
    cov = x.T @ x
    basis = rng.standard_normal((d_in, min(d_in, dims + 16))).astype(np.float32)
    for _ in range(5):
        basis, _ = np.linalg.qr(cov @ basis)
    _, small = np.linalg.eigh(basis.T @ cov @ basis)  # Rayleigh-Ritz: order the axes
    axes = np.ascontiguousarray((basis @ small[:, ::-1])[:, :dims], dtype=np.float32)
    # (bits / |bits|^0.5 - mean) @ axes without a float copy of the bits: sum the axes' rows of the set
    # bits (compiled), then scale and shift.
    feats = np.empty((n, dims), np.float32)
    load_kernels().sum_rows_of_set_bits(words, axes, feats)
    sizes = np.bitwise_count(words).sum(axis=1, dtype=np.float32)
    feats /= np.sqrt(np.maximum(sizes, 1.0))[:, None]
    feats -= mean @ axes
    return feats


def _partition(feats: np.ndarray, cluster_size: int, seed: int, branching: int = 32) -> list[np.ndarray]:
    """Sorted row-index arrays of clusters of at most 2 * cluster_size rows, covering all rows.

    Hierarchical KMeans, at most ``branching`` clusters per split: assigning rows to 1,000 centres
    directly takes 1,000 distances a row, two levels of about 32 take 64.
    """
    import faiss

    leaves: list[np.ndarray] = []
    todo = [np.arange(len(feats), dtype=np.int64)]
    while todo:
        ids = todo.pop()
        if len(ids) <= 2 * cluster_size:
            leaves.append(ids)
            continue
        x = feats if len(ids) == len(feats) else np.ascontiguousarray(feats[ids])
        n_clusters = min(branching, math.ceil(len(ids) / cluster_size))
        kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=10, seed=seed)
        kmeans.train(x)
        _, assign = kmeans.index.search(x, 1)
        assign = assign.ravel()
        if np.all(assign == assign[0]):  # KMeans could not split (e.g. identical rows): cut in runs
            todo.extend(np.array_split(ids, n_clusters))
            continue
        by_cluster = np.argsort(assign, kind="stable")  # stable: members stay in ascending row order
        bounds = np.cumsum(np.bincount(assign, minlength=n_clusters))[:-1]
        todo.extend(part for part in np.split(ids[by_cluster], bounds) if len(part))
    return leaves


def _chain_clusters(words: np.ndarray, feats: np.ndarray, leaves: list[np.ndarray], start: int,
                    next_clusters: int, progress: ProgressFn | None) -> np.ndarray:
    """Exact chains inside clusters, clusters joined tail to head (see :func:`approximate_order`)."""
    kernels = load_kernels()

    def most_shared(tail: int, rows: np.ndarray) -> int:
        shared = np.empty(len(rows), np.int64)
        kernels.shared_words(words[rows], words[tail], shared)
        return int(rows[np.argmax(shared)])  # rows ascending: the first maximum is the lowest row

    return chain_clusters(feats, leaves, start, next_clusters,
                          lambda ids, first: greedy_words(words[ids], first), most_shared, progress)


def chain_clusters(feats: np.ndarray, leaves: list[np.ndarray], start: int, next_clusters: int,
                   chain: Callable[[np.ndarray, int], np.ndarray], closest: Callable[[int, np.ndarray], int],
                   progress: ProgressFn | None) -> np.ndarray:
    """Chain each cluster (``leaves``: sorted row arrays covering ``range(N)``) and join the clusters
    tail to head; the words order and the embedding order (:mod:`mlfix.pipeline.ordering.embedding`)
    share it.

    ``chain(ids, first)``: the order of the cluster's rows ``ids`` (positions in ``ids``) starting at
    position ``first``; ``closest(tail, rows)``: the row of the ascending ``rows`` most similar to the
    row ``tail`` (ties: the lowest). After a cluster's last row, the next cluster is the one holding
    the ``closest`` row among the ``next_clusters`` remaining clusters whose centres (the mean of
    ``feats`` rows) are nearest to the tail, and it starts there.
    """
    n = len(feats)
    leaf_of = np.empty(n, np.int64)
    for i, ids in enumerate(leaves):
        leaf_of[ids] = i
    centres = np.stack([feats[ids].mean(axis=0) for ids in leaves])
    left = np.ones(len(leaves), bool)
    leaf, first = int(leaf_of[start]), start
    pieces, done = [], 0
    while True:
        ids = leaves[leaf]
        local = chain(ids, int(np.searchsorted(ids, first)))
        pieces.append(ids[local])
        done += len(ids)
        if progress is not None:
            progress(done, n)
        left[leaf] = False
        if not left.any():
            break
        tail = int(ids[local[-1]])
        candidates = np.flatnonzero(left)
        if len(candidates) > next_clusters:
            dist = ((centres[candidates] - feats[tail]) ** 2).sum(axis=1)
            candidates = candidates[np.argpartition(dist, next_clusters - 1)[:next_clusters]]
        first = closest(tail, np.sort(np.concatenate([leaves[c] for c in candidates])))
        leaf = int(leaf_of[first])
    return np.concatenate(pieces)
