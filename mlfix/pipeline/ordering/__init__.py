"""Similarity orderings of bags of visual words: similar images next to each other.

A bag is one bit per visual word (does the image contain the word?). Two images are as similar as
the number of words they share, ``popcount(x & y)``. Bags come in either of two forms:

- ``bool`` (N, k): one column per word;
- ``uint8`` (N, ceil(k/8)): packed bits, as mlfix stores them,
  ``np.packbits(bags, axis=1, bitorder="little")``. Any packing gives the same orders as long as all
  rows are packed alike, since shared words are counted bit against bit.

Each ordering returns an int64 permutation of ``range(N)``. The package, one module per way:

- :mod:`~mlfix.pipeline.ordering.exact` — ``greedy_order``, the exact greedy chain of the method
  (next = the remaining image sharing the most words, ties to the lowest index), and
  ``seed_greedy_order``, the seed tool's numpy loop it must equal;
- :mod:`~mlfix.pipeline.ordering.approximate` — ``approximate_order`` for large N: exact chains
  inside KMeans clusters, the clusters chained tail to head;
- :mod:`~mlfix.pipeline.ordering.kernels` — the compiled (numba) popcount scans both use, and the
  embedding chain's scan;
- :mod:`~mlfix.pipeline.ordering.bags` — the input checks they share;
- :mod:`~mlfix.pipeline.ordering.embedding` — ``embedding_order``, the same greedy chain over pooled
  embeddings (cosine) instead of bags (and over the combined vectors: the project's default order,
  :data:`DEFAULT_ORDERING`);
- :mod:`~mlfix.pipeline.ordering.runs` — ``run_ids``: where an order's similarity drops, a run id per
  position (the review grid's breaks; one key labels a run);
- :mod:`~mlfix.pipeline.ordering.weighted` — :func:`weighted_bags`: counts or tf-idf bags from the word
  grid, with focus weights per cell (centre prior, feature-norm saliency), as unit (N, k) vectors that
  ``embedding_order`` chains by cosine; ``combined_vectors`` joins them to the pooled embeddings
  (``python -m bench.words`` measures them against bits and embeddings).

A project's index stores both kinds of order (:data:`ORDERINGS`: the folder of each).

This module chooses between them: :func:`order` picks one by size (``method="auto"``);
:func:`order_by_group` orders each group (class) separately and concatenates;
:func:`mean_shared_words` measures an ordering: the mean over consecutive pairs of shared words.

Example::

    >>> import numpy as np
    >>> bags = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=bool)
    >>> order(bags).tolist()
    [0, 2, 1]
"""

from __future__ import annotations

import numpy as np

from mlfix.pipeline.ordering import approximate, exact
from mlfix.pipeline.ordering import bags as _bags
from mlfix.pipeline.ordering.weighted import weighted_bags  # noqa: F401  (exported)
from mlfix.progress import ProgressFn

METHODS = ("auto", "exact", "approximate")
EXACT_MAX = 50_000  # "auto" uses the exact chain up to this many images (O(N^2): seconds on one core)
# The similarity orders of a project and the folder (in the project) that holds each one's files
# (all.npy, class-NNNN.npy, orders.json, orders.key.json).
ORDERINGS = {"embedding": "orders/by-embedding", "words": "orders", "combined": "orders/by-combined"}
# Which order a project offers first, of those its index holds. "combined" (the embedding chain over the
# pooled embedding beside the sublinear tf-idf bag of words with a centre prior,
# mlfix.pipeline.ordering.weighted) kept more neighbours in the same true class than the embedding
# chain on every set and size measured (`python -m bench.words`: CIFAR-10N 10k at 112 px 0.613 vs 0.582
# and 3k at 224 px 0.611 vs 0.606, flowers17 0.868 vs 0.811, GTSRB 0.836 vs 0.747), and the embedding
# chain more than the words (`python -m bench.detect`). The index builds the combined order up to
# 100,000 images (mlfix.pipeline.index.COMBINED_MAX); above, the embedding order comes first.
ORDER_PREFERENCE = ("combined", "embedding", "words")
DEFAULT_ORDERING = ORDER_PREFERENCE[0]


def order(bags: np.ndarray, method: str = "auto", start: int = 0, exact_max: int = EXACT_MAX,
          progress: ProgressFn | None = None, **approximate_options) -> np.ndarray:
    """An ordering of all rows: ``"exact"`` (:func:`~mlfix.pipeline.ordering.exact.greedy_order`),
    ``"approximate"`` (:func:`~mlfix.pipeline.ordering.approximate.approximate_order`, with
    ``approximate_options``) or ``"auto"`` (exact up to ``exact_max`` images, approximate above).
    Returns an int64 permutation of ``range(N)``.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=bool)
        >>> order(bags).tolist()
        [0, 2, 1]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    words = _bags.as_words(bags)
    start = _bags.check_start(start, len(words))
    if method == "exact" or (method == "auto" and len(words) <= exact_max):
        return exact.greedy_words(words, start, progress)
    return approximate.approximate_order(words.view(np.uint8), start, progress=progress, **approximate_options)


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
    words = _bags.as_words(bags)
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
    words = _bags.as_words(bags)
    order = np.asarray(order)
    if order.ndim != 1 or not np.issubdtype(order.dtype, np.integer):
        raise ValueError("order must be a 1-D integer array of row indices")
    if len(order) and (order.min() < 0 or order.max() >= len(words)):
        raise ValueError(f"order has row indices outside 0..{len(words) - 1}")
    if len(order) < 2:
        return 0.0
    out = np.empty(len(order) - 1, np.int64)
    _bags.load_kernels().consecutive_shared(words, order.astype(np.int64), out)
    return float(out.mean())
