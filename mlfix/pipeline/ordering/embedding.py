"""The greedy similarity chain over pooled embeddings: start anywhere; next = the remaining image most
similar to the current one (cosine), ties to the lowest row; repeat.

On CIFAR-10N it keeps more neighbours in the same true class than the visual-word chain
(:mod:`mlfix.pipeline.ordering.exact`), so it is the project's default order (``python -m
bench.detect``: ``purity.greedy_embedding`` against ``purity.greedy_words``).

- :func:`embedding_order` — picks the exact or the approximate chain by size (``method="auto"``);
- :func:`greedy_embedding_order` — the exact chain: each row's ``k`` nearest neighbours (faiss, exact
  inner product on unit rows, searched in blocks) are its candidates; the chain takes the most similar
  unplaced candidate, and when all of them are placed an exact scan of the unplaced rows (compiled,
  :func:`mlfix.pipeline.ordering.kernels.embedding_chain_steps`) continues it. Equal to
  :func:`brute_force_embedding_order` (up to float rounding of near ties); memory O(N * (D + k));
- :func:`approximate_embedding_order` — for large N: rows projected on their leading principal axes,
  hierarchical KMeans into clusters of about ``cluster_size`` rows, the exact chain inside each
  cluster, clusters joined tail to head (as :mod:`mlfix.pipeline.ordering.approximate` does for
  bags). Only the projection (N x ``dims``) and one cluster's rows at a time are held in float32,
  so a float16 memory map of a million pooled vectors is never loaded whole;
- :func:`brute_force_embedding_order` — the O(N^2) numpy loop, the reference of the tests.

Shapes: ``embeddings`` is (N, D), any float dtype (a memory map is fine); rows need not be unit
length (zero rows have similarity 0 to everything). Each function returns an int64 permutation of
``range(N)`` starting at ``start``.

Example::

    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    >>> embedding_order(x).tolist()
    [0, 2, 3, 1]
    >>> brute_force_embedding_order(x, start=1).tolist()
    [1, 3, 2, 0]
"""

from __future__ import annotations

import numpy as np

from mlfix.pipeline.ordering.bags import check_int_options, check_start, load_kernels
from mlfix.progress import ProgressFn

VERSION = 1  # in the index's key: bump when the order a given input gets changes
METHODS = ("auto", "exact", "approximate")
EXACT_MAX = 20_000  # "auto" uses the exact chain up to this many rows (its kNN search is O(N^2 * D))
CANDIDATES = 64  # candidates per row before the exact fallback (10k x 1280-d: 331 fallbacks, 676 with 32)
BLOCK = 8192  # rows per block when converting and searching


def check_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """``embeddings`` as a 2-D float array (not copied); TypeError or ValueError saying what to pass."""
    if not isinstance(embeddings, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (N images, D dimensions), got {type(embeddings).__name__}")
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N images, D dimensions), got shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise TypeError(f"{name} has dtype {embeddings.dtype}; pass floats (e.g. embeddings.astype(np.float32))")
    if embeddings.shape[1] == 0 and embeddings.shape[0] > 0:
        raise ValueError(f"{name} has no dimensions (shape {embeddings.shape}); pass (N, D) with D >= 1")
    return embeddings


def unit_rows(embeddings: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 (N, D) rows scaled to unit length (zero rows stay zero), converted block by block.

    ``rows``: only these rows (in this order). ValueError when a value is not finite.

    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float16)).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    count = len(embeddings) if rows is None else len(rows)
    out = np.empty((count, embeddings.shape[1]), np.float32)
    for begin in range(0, count, BLOCK):
        part = embeddings[begin:begin + BLOCK] if rows is None else embeddings[rows[begin:begin + BLOCK]]
        block = np.asarray(part, dtype=np.float32)
        if not np.isfinite(block).all():
            raise ValueError("embeddings hold NaN or infinite values; drop or repair those rows first")
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        out[begin:begin + len(block)] = block / np.maximum(norms, np.float32(1e-12))[:, None]
    return out


def embedding_order(embeddings: np.ndarray, start: int = 0, method: str = "auto", exact_max: int = EXACT_MAX,
                    progress: ProgressFn | None = None, **options) -> np.ndarray:
    """The greedy embedding chain of all rows: ``"exact"`` (:func:`greedy_embedding_order`),
    ``"approximate"`` (:func:`approximate_embedding_order`) or ``"auto"``: exact up to ``exact_max``
    rows. ``options`` go to the chosen function (``k``; ``cluster_size``, ``dims``, ...).

        >>> x = np.random.default_rng(0).normal(size=(50, 8))
        >>> bool((embedding_order(x) == brute_force_embedding_order(x)).all())
        True
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    embeddings = check_embeddings(embeddings)
    if method == "exact" or (method == "auto" and len(embeddings) <= exact_max):
        exact_options = {key: value for key, value in options.items() if key == "k"}
        return greedy_embedding_order(embeddings, start, progress=progress, **exact_options)
    return approximate_embedding_order(embeddings, start, progress=progress, **options)


def greedy_embedding_order(embeddings: np.ndarray, start: int = 0, k: int = CANDIDATES,
                           progress: ProgressFn | None = None) -> np.ndarray:
    """The exact greedy chain over cosine similarity: a permutation of ``range(N)`` (int64).

    Args:
        embeddings: (N, D) floats, any scale (rows are normalised here).
        start: row index of the first image.
        k: candidates per row from the kNN search; the exact fallback covers the rest, so ``k``
            changes the time, not the order.
        progress: optional ``progress(done, total)`` callback, called about 100 times.

    Example::

        >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.5]])
        >>> greedy_embedding_order(x, start=1).tolist()
        [1, 2, 0]
    """
    check_int_options(k=(k, 1))
    embeddings = check_embeddings(embeddings)
    n = len(embeddings)
    start = check_start(start, n)
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    x = unit_rows(embeddings)  # checks the values too
    order[0] = start
    if n == 1:
        return order
    near, sims = _knn(x, min(int(k) + 1, n))
    return _chain(x, near, sims, order, progress)


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) candidate rows and similarities of unit rows ``x`` (exact faiss inner product, in blocks;
    a row's own index may be among them: it is placed before it is looked at)."""
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    near = np.empty((len(x), k), np.int64)
    sims = np.empty((len(x), k), np.float32)
    for begin in range(0, len(x), BLOCK):
        sims[begin:begin + BLOCK], near[begin:begin + BLOCK] = index.search(x[begin:begin + BLOCK], k)
    return near, sims


def _chain(x: np.ndarray, near: np.ndarray, sims: np.ndarray, order: np.ndarray,
           progress: ProgressFn | None) -> np.ndarray:
    """Run the compiled chain from ``order[0]`` (see :func:`greedy_embedding_order`)."""
    kernels = load_kernels()
    n = len(x)
    placed = np.zeros(n, np.bool_)
    placed[order[0]] = True
    alive = np.arange(n, dtype=np.int64)
    state = np.array([1, n, 0], np.int64)
    chunk = n if progress is None else max(1, n // 100)
    while state[0] < n:
        kernels.embedding_chain_steps(x, near, sims, placed, alive, order, state, min(n, int(state[0]) + chunk))
        if progress is not None:
            progress(int(state[0]), n)
    return order


def approximate_embedding_order(embeddings: np.ndarray, start: int = 0, *, k: int = CANDIDATES,
                                cluster_size: int = 2048, dims: int = 64, next_clusters: int = 4,
                                seed: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """A greedy-like embedding chain for large N: a permutation of ``range(N)`` (int64).

    1. Project the unit rows on their first ``dims`` principal axes (fitted on a row sample).
    2. Hierarchical KMeans (faiss) into clusters of at most ``2 * cluster_size`` rows
       (:func:`mlfix.pipeline.ordering.approximate._partition`).
    3. Inside each cluster, the exact chain (:func:`greedy_embedding_order`) on the full embeddings.
    4. After a cluster's last row, the next row is the one most similar to it among the
       ``next_clusters`` remaining clusters whose centres are nearest; its cluster comes next.

    Work is about N * cluster_size * D plus the KMeans; memory O(N * dims + cluster_size * D).
    Deterministic for a given seed. With N <= 2 * cluster_size this is the exact chain.

        >>> x = np.random.default_rng(2).normal(size=(300, 16))
        >>> order = approximate_embedding_order(x, start=7, cluster_size=40)
        >>> int(order[0]), sorted(order.tolist()) == list(range(300))
        (7, True)
    """
    from mlfix.pipeline.ordering.approximate import _partition, _threads, chain_clusters

    check_int_options(cluster_size=(cluster_size, 2), dims=(dims, 1), next_clusters=(next_clusters, 1), k=(k, 1))
    embeddings = check_embeddings(embeddings)
    n = len(embeddings)
    start = check_start(start, n)
    if n <= 2 * cluster_size:
        return greedy_embedding_order(embeddings, start, k=k, progress=progress)
    with _threads(1):
        feats = _project(embeddings, dims, seed)
        leaves = _partition(feats, cluster_size, seed)

    def chain(ids: np.ndarray, first: int) -> np.ndarray:
        return greedy_embedding_order(unit_rows(embeddings, ids), first, k=k)

    def most_similar(tail: int, rows: np.ndarray) -> int:
        similarity = unit_rows(embeddings, rows) @ unit_rows(embeddings, np.array([tail]))[0]
        return int(rows[np.argmax(similarity)])  # rows ascending: the first maximum is the lowest row

    return chain_clusters(feats, leaves, start, next_clusters, chain, most_similar, progress)


def _project(embeddings: np.ndarray, dims: int, seed: int, sample: int = 16_384) -> np.ndarray:
    """(N, dims) float32: the unit rows, centred, on their leading principal axes (from a row sample)."""
    n, d = embeddings.shape
    dims = min(dims, d)
    rng = np.random.default_rng(seed)
    x = unit_rows(embeddings, np.sort(rng.choice(n, size=min(n, sample), replace=False)))
    mean = x.mean(axis=0)
    x -= mean
    _, vectors = np.linalg.eigh((x.T @ x).astype(np.float64))
    axes = np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)
    feats = np.empty((n, dims), np.float32)
    for begin in range(0, n, BLOCK):
        feats[begin:begin + BLOCK] = (unit_rows(embeddings[begin:begin + BLOCK]) - mean) @ axes
    return feats


def brute_force_embedding_order(embeddings: np.ndarray, start: int = 0) -> np.ndarray:
    """The greedy chain in plain numpy, O(N^2) time: the reference :func:`greedy_embedding_order` must
    equal. ``sims = x @ x[current]`` in float64 over the unit rows, placed rows masked, first maximum.

        >>> brute_force_embedding_order(np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.5]])).tolist()
        [0, 2, 1]
    """
    embeddings = check_embeddings(embeddings)
    n = len(embeddings)
    start = check_start(start, n)
    x = unit_rows(embeddings).astype(np.float64)
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    placed = np.zeros(n, bool)
    current = start
    for i in range(n):
        order[i] = current
        placed[current] = True
        if i < n - 1:
            sims = x @ x[current]
            sims[placed] = -np.inf
            current = int(np.argmax(sims))
    return order
