"""Similarity orderings of bags of visual words: similar images next to each other.

A bag is one bit per visual word (does the image contain the word?). Two images are as similar as
the number of words they share, ``popcount(x & y)``. Bags come in either of two forms:

- ``bool`` (N, k): one column per word;
- ``uint8`` (N, ceil(k/8)): packed bits, as mlfix stores them,
  ``np.packbits(bags, axis=1, bitorder="little")``. Any packing gives the same orders as long as all
  rows are packed alike, since shared words are counted bit against bit.

Orderings (each returns an int64 permutation of ``range(N)``):

- :func:`greedy_order` — the exact greedy chain of the method: start at ``start``; next = the
  remaining image sharing the most words with the current one, ties to the lowest index. A compiled
  scan (numba, AVX-512 popcount) over the remaining rows; O(N^2) pairs, about 2e8 at N=20,000.
- :func:`seed_greedy_order` — the seed tool's numpy loop, kept as the reference the fast one must
  equal (tests, benchmark).
- :func:`approximate_order` — for large N: PCA of the bags, KMeans into clusters of about
  ``cluster_size`` images, the exact greedy chain inside each cluster, and the clusters chained
  tail-to-head through the best next image among the nearest clusters. Roughly
  O(N * cluster_size) pairs.
- :func:`order` picks one by size (``method="auto"``); :func:`order_by_group` orders each group
  (class) separately and concatenates.

:func:`mean_shared_words` measures an ordering: the mean over consecutive pairs of shared words.

Example::

    >>> import numpy as np
    >>> bags = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=bool)
    >>> greedy_order(bags).tolist()
    [0, 2, 1]
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from mlfix.progress import ProgressFn

METHODS = ("auto", "exact", "approximate")
EXACT_MAX = 50_000  # "auto" uses the exact chain up to this many images (about 15 s on one core)
PACKING_HINT = ("pass bool (N, k) bags, one column per word, or uint8 (N, ceil(k/8)) packed bits "
                "from np.packbits(bags, axis=1, bitorder='little')")


# --------------------------------------------------------------------------------------------
# Input handling


def _as_words(bags: np.ndarray, name: str = "bags") -> np.ndarray:
    """Bags as a C-contiguous, aligned uint64 array (N, W) of packed bits, zero padded."""
    if not isinstance(bags, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; {PACKING_HINT}")
    if bags.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N images, words), got shape {bags.shape}; {PACKING_HINT}")
    if bags.dtype == np.bool_:
        packed = np.packbits(bags, axis=1, bitorder="little")
    elif bags.dtype == np.uint8:
        packed = bags
    else:
        raise TypeError(f"{name} has dtype {bags.dtype}; {PACKING_HINT} "
                        "(0/1 integers: use bags.astype(bool))")
    n, nbytes = packed.shape
    width = max(1, math.ceil(nbytes / 8))
    if nbytes == width * 8 and packed.flags.c_contiguous:
        words = packed.view(np.uint64)
        if words.flags.aligned:
            return words
        return words.copy()
    padded = np.zeros((n, width * 8), np.uint8)
    padded[:, :nbytes] = packed
    return padded.view(np.uint64)


def _check_start(start, n: int) -> int:
    if isinstance(start, (bool, np.bool_)) or not isinstance(start, (int, np.integer)):
        raise TypeError(f"start must be an integer row index, got {type(start).__name__}")
    start = int(start)
    if n == 0:
        if start != 0:
            raise ValueError(f"start={start} but there are no images; use start=0")
        return 0
    if not 0 <= start < n:
        raise ValueError(f"start={start} is out of range for {n} images; use 0 <= start < {n}")
    return start


def _kernels():
    from mlfix.pipeline import _ordering_kernels  # lazy: importing numba takes about a second

    return _ordering_kernels


# --------------------------------------------------------------------------------------------
# Exact greedy chain


def greedy_order(bags: np.ndarray, start: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """The exact greedy chain: a permutation of ``range(N)`` (int64).

    Starts at ``start``; each next image is the remaining one that shares the most words with the
    current one, ties going to the lowest row index. Equal to :func:`seed_greedy_order`, about
    100x faster (see ``python -m bench.ordering``).

    Args:
        bags: bool (N, k) or uint8 packed bits (N, ceil(k/8)); see the module docstring.
        start: row index of the first image.
        progress: optional ``progress(done, total)`` callback, called about 100 times.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=bool)
        >>> greedy_order(bags, start=2).tolist()
        [2, 0, 3, 1]
    """
    words = _as_words(bags)
    return _greedy_words(words, _check_start(start, len(words)), progress)


def greedy_order_packed(packed: np.ndarray, start: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """:func:`greedy_order` for packed bits only: uint8 (N, ceil(k/8)), rows packed alike."""
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise TypeError("packed must be a uint8 array from np.packbits(bags, axis=1, bitorder='little'); "
                        "for bool bags call greedy_order")
    return greedy_order(packed, start, progress)


def _greedy_words(words: np.ndarray, start: int, progress: ProgressFn | None = None) -> np.ndarray:
    """Exact greedy chain over uint64 rows (already validated)."""
    n = len(words)
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    order[0] = start
    if n == 1:
        return order
    kernels = _kernels()
    rows = np.delete(words, start, axis=0)  # a copy: the kernel compacts it in place
    ids = np.delete(np.arange(n, dtype=np.int64), start)
    dead = np.zeros(n - 1, np.bool_)
    cur = words[start].copy()
    state = np.array([1, n - 1, 0], np.int64)
    chunk = n if progress is None else max(1, n // 100)
    while state[0] < n:
        kernels.greedy_steps(rows, ids, dead, cur, order, state, min(n, int(state[0]) + chunk))
        if progress is not None:
            progress(int(state[0]), n)
    return order


def seed_greedy_order(bags: np.ndarray, start: int = 0) -> np.ndarray:
    """The seed tool's greedy loop in plain numpy: the reference for :func:`greedy_order`.

    ``scores = bags[remaining] @ bags[current]``, argmax (first maximum, so the lowest index as
    ``remaining`` stays sorted), remove, repeat: O(N^2 k) work. Rows are uint8 (the fastest exact
    dtype for this loop here; float32 BLAS was 4x slower) unless a bag has 256+ words, where uint8
    sums would wrap and int32 is used.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=bool)
        >>> seed_greedy_order(bags, start=2).tolist()
        [2, 0, 3, 1]
    """
    words = _as_words(bags)
    n = len(words)
    start = _check_start(start, n)
    if n == 0:
        return np.empty(0, np.int64)
    matrix = np.unpackbits(words.view(np.uint8), axis=1)
    dtype = np.uint8 if matrix.sum(axis=1).max() < 256 else np.int32
    matrix = matrix.astype(dtype, copy=False)
    order = [start]
    remaining = np.delete(np.arange(n), start)
    current = start
    while remaining.size:
        scores = matrix[remaining] @ matrix[current]
        j = int(np.argmax(scores))
        current = int(remaining[j])
        order.append(current)
        remaining = np.delete(remaining, j)
    return np.asarray(order, np.int64)


# --------------------------------------------------------------------------------------------
# Approximate order for large N


def approximate_order(bags: np.ndarray, start: int = 0, *, cluster_size: int = 1024, dims: int = 64,
                      next_clusters: int = 4, seed: int = 0, threads: int | None = 1,
                      progress: ProgressFn | None = None) -> np.ndarray:
    """A greedy-like ordering for large N: a permutation of ``range(N)`` (int64), starting at ``start``.

    1. Project the bags (rows scaled to unit length) on their first ``dims`` principal axes.
    2. KMeans (faiss) into clusters of about ``cluster_size`` images (at most twice that),
       hierarchically: at most 32 clusters per split, and clusters still too large are split again.
    3. Inside each cluster, the exact greedy chain (:func:`greedy_order`).
    4. Clusters follow one another tail to head: after a cluster's last image, the next image is the
       one sharing the most words with it among the ``next_clusters`` remaining clusters whose
       centres are nearest to it; its cluster comes next, starting there.

    Work is about N * cluster_size pair comparisons plus the KMeans; memory is O(N * (k/8 + dims)).
    With N <= 2 * cluster_size this is the exact chain. On clustered synthetic bags at N=20,000 the
    mean shared words between neighbours is within a few percent of the exact chain (see
    ``python -m bench.ordering``).

    Args:
        bags: bool (N, k) or uint8 packed bits (N, ceil(k/8)).
        start: row index of the first image.
        cluster_size: target images per cluster (larger: slower; at N=20,000, 512, 1024 and 2048
            all kept 98-99% of the exact chain's mean shared words).
        dims: PCA dimensions used for clustering.
        next_clusters: how many nearest clusters are searched for the next image at a junction.
        seed: KMeans seed (the result is deterministic for a given seed and thread count).
        threads: faiss and BLAS threads for the projection and the KMeans, small steps next to the
            chains (which use one core). One by default: on a busy machine extra threads made them
            5-10x slower here. None leaves the current settings.
        progress: optional ``progress(done, total)`` callback, in images placed.

    Example::

        >>> rng = np.random.default_rng(0)
        >>> bags = rng.random((300, 64)) < 0.2
        >>> order = approximate_order(bags, cluster_size=50)
        >>> sorted(order.tolist()) == list(range(300))
        True
    """
    for label, value, low in (("cluster_size", cluster_size, 2), ("dims", dims, 1), ("next_clusters", next_clusters, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    words = _as_words(bags)
    n = len(words)
    start = _check_start(start, n)
    if n <= 2 * cluster_size:
        return _greedy_words(words, start, progress)
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
    0.2 s against 1 s for a full ``eigh`` of the 1024 x 1024 covariance (and faiss's PCAMatrix took 8 s).
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
    _kernels().sum_rows_of_set_bits(words, axes, feats)
    sizes = np.bitwise_count(words).sum(axis=1, dtype=np.float32)
    feats /= np.sqrt(np.maximum(sizes, 1.0))[:, None]
    feats -= mean @ axes
    return feats


def _partition(feats: np.ndarray, cluster_size: int, seed: int, branching: int = 32) -> list[np.ndarray]:
    """Sorted row-index arrays of clusters of at most 2 * cluster_size rows, covering all rows.

    Hierarchical KMeans, at most ``branching`` clusters per split: assigning 1M rows to 1,000
    centres directly cost 15x more distance computations than two levels of about 32.
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
    kernels = _kernels()
    n = len(words)
    leaf_of = np.empty(n, np.int64)
    for i, ids in enumerate(leaves):
        leaf_of[ids] = i
    centres = np.stack([feats[ids].mean(axis=0) for ids in leaves])
    left = np.ones(len(leaves), bool)
    leaf, first = int(leaf_of[start]), start
    pieces, done = [], 0
    while True:
        ids = leaves[leaf]
        local = _greedy_words(words[ids], int(np.searchsorted(ids, first)))
        pieces.append(ids[local])
        done += len(ids)
        if progress is not None:
            progress(done, n)
        left[leaf] = False
        if not left.any():
            break
        tail = int(ids[local[-1]])
        first = _next_row(words, feats, leaves, centres, left, tail, next_clusters, kernels)
        leaf = int(leaf_of[first])
    return np.concatenate(pieces)


def _next_row(words, feats, leaves, centres, left, tail, next_clusters, kernels) -> int:
    """The row sharing most words with ``tail`` among the clusters left nearest to it (ties: lowest row)."""
    candidates = np.flatnonzero(left)
    if len(candidates) > next_clusters:
        dist = ((centres[candidates] - feats[tail]) ** 2).sum(axis=1)
        candidates = candidates[np.argpartition(dist, next_clusters - 1)[:next_clusters]]
    rows = np.sort(np.concatenate([leaves[c] for c in candidates]))
    shared = np.empty(len(rows), np.int64)
    kernels.shared_words(words[rows], words[tail], shared)
    return int(rows[np.argmax(shared)])  # rows ascending: the first maximum is the lowest row


# --------------------------------------------------------------------------------------------
# Choosing a method, groups, measuring


def order(bags: np.ndarray, method: str = "auto", start: int = 0, exact_max: int = EXACT_MAX,
          progress: ProgressFn | None = None, **approximate_options) -> np.ndarray:
    """An ordering of all rows: ``"exact"`` (:func:`greedy_order`), ``"approximate"``
    (:func:`approximate_order`, with ``approximate_options``) or ``"auto"`` (exact up to
    ``exact_max`` images, approximate above). Returns an int64 permutation of ``range(N)``.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=bool)
        >>> order(bags).tolist()
        [0, 2, 1]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    words = _as_words(bags)
    start = _check_start(start, len(words))
    if method == "exact" or (method == "auto" and len(words) <= exact_max):
        return _greedy_words(words, start, progress)
    return approximate_order(words.view(np.uint8), start, progress=progress, **approximate_options)


def order_by_group(bags: np.ndarray, groups, method: str = "auto", exact_max: int = EXACT_MAX,
                   progress: ProgressFn | None = None, **approximate_options) -> np.ndarray:
    """Each group's ordering, concatenated: int64 row indices (a permutation of ``range(N)``).

    Groups (e.g. class labels, one per row) come in sorted order (``np.unique``); inside a group
    rows follow :func:`order` with ``method``, starting at the group's lowest row index. Group ``g``
    occupies the positions ``offsets[i]:offsets[i + 1]`` where
    ``uniques, counts = np.unique(groups, return_counts=True)`` and
    ``offsets = np.r_[0, np.cumsum(counts)]``. For one ordering over the whole dataset call
    :func:`order`.

    Example::

        >>> bags = np.array([[1, 0], [0, 1], [1, 1], [0, 1]], dtype=bool)
        >>> order_by_group(bags, ["b", "a", "b", "a"]).tolist()
        [1, 3, 0, 2]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    words = _as_words(bags)
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != len(words):
        raise ValueError(f"groups must be 1-D with one entry per row of bags ({len(words)}), "
                         f"got shape {groups.shape}")
    try:
        _, inverse = np.unique(groups, return_inverse=True)
    except TypeError as error:
        raise TypeError("groups must be sortable (numbers or strings); replace missing labels "
                        "(None/NaN) with a value first") from error
    by_group = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    pieces, done = [], 0
    for rows in np.split(by_group, bounds):
        pieces.append(rows[order(words[rows].view(np.uint8), method, 0, exact_max, None, **approximate_options)])
        done += len(rows)
        if progress is not None:
            progress(done, len(words))
    return np.concatenate(pieces) if pieces else np.empty(0, np.int64)


def mean_shared_words(bags: np.ndarray, order: np.ndarray) -> float:
    """Mean over consecutive pairs of an ordering of the words they share (0.0 below 2 rows).

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
        >>> mean_shared_words(bags, np.array([0, 2, 1]))
        2.0
    """
    words = _as_words(bags)
    order = np.asarray(order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError("order must be a 1-D integer array of row indices")
    if len(order) and (order.min() < 0 or order.max() >= len(words)):
        raise ValueError(f"order has row indices outside 0..{len(words) - 1}")
    if len(order) < 2:
        return 0.0
    out = np.empty(len(order) - 1, np.int64)
    _kernels().consecutive_shared(words, order.astype(np.int64), out)
    return float(out.mean())
