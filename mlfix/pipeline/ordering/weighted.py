"""Weighted bags of visual words: dense unit vectors over the ``k`` words, compared by cosine.

The seed's bag is one bit per word, and two images are as similar as the number of words they
share (:mod:`mlfix.pipeline.ordering.exact`). A weighted bag keeps more of the word grid:

- **counts** instead of bits: how many cells of the image carry each word;
- **tf-idf** (Salton and Buckley, "Term-weighting approaches in automatic text retrieval", 1988; for
  visual words Sivic and Zisserman, "Video Google", ICCV 2003): a word's count times
  ``idf = log(N / df)``, where ``df`` is the number of images holding the word, so a word in every
  image (sky, background) weighs 0 and rare words weigh more; ``sublinear=True`` uses ``1 + log(tf)``;
- **focus** weights per cell, so the object counts more than its surroundings: a Gaussian
  :func:`centre_weights` prior over the grid, or the backbone's own saliency, each cell's feature
  norm (:func:`saliency_weights`; strongly activated cells are where the network sees something).

Rows are L2-normalised, so the inner product of two rows is their cosine similarity, and the chain
and the vote need no new kernel: :func:`mlfix.pipeline.ordering.embedding.embedding_order` orders
them (exact up to its ``EXACT_MAX``, approximate above) and :func:`mlfix.scoring.neighbours.knn_vote`
votes with them. :func:`combined_vectors` joins a pooled embedding and a weighted bag into one
vector whose cosine is a weighted mean of the two cosines (issue #18, item 4).

Shapes: ``words`` is the index's word grid (N, h, w) uint16 (``features/words.npy``; a memory map is
fine: it is read ``chunk`` rows at a time); ``ok`` (N,) bool marks readable images, whose rows
alone count in ``df``; unreadable images get zero rows (similarity 0 to everything). Output
(N, k) float32 (about 4 GiB at N = 1M and k = 1024; pass ``dtype=np.float16`` for half that).
Building is one ``np.bincount`` per chunk over ``row * k + word``: O(N * h * w), no Python loop per
image.

Example::

    >>> words = np.array([[[0, 1], [1, 2]], [[0, 3], [3, 3]]], dtype=np.uint16)   # (N=2, h=2, w=2)
    >>> bag_counts(words, 4).tolist()
    [[1.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 3.0]]
    >>> weighted_bags(words, 4, "tfidf").astype(float).round(3).tolist()    # word 0 is in both images: weight 0
    [[0.0, 0.894, 0.447, 0.0], [0.0, 0.0, 0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

WEIGHTINGS = ("counts", "tfidf")
FOCUS = ("none", "centre", "saliency")
CHUNK = 8192  # rows per bincount: CHUNK * k float64 (64 MiB at k = 1024)
CENTRE_SIGMA = 0.5  # the centre prior's standard deviation, in half-widths of the grid


def check_words(words: np.ndarray, k: int) -> np.ndarray:
    """``words`` as an (N, h, w) or (N, cells) integer array; ValueError saying what to pass."""
    if not isinstance(words, np.ndarray) or words.ndim not in (2, 3):
        shape = getattr(words, "shape", None)
        raise ValueError(f"words must be a numpy word grid (N, h, w) or (N, cells), got shape {shape}")
    if not np.issubdtype(words.dtype, np.integer):
        raise ValueError(f"words must hold integer word ids, got dtype {words.dtype}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k (number of words) must be a positive integer, got {k!r}")
    return words


def _ok_mask(ok: np.ndarray | None, n: int) -> np.ndarray:
    if ok is None:
        return np.ones(n, bool)
    ok = np.asarray(ok, dtype=bool)
    if ok.shape != (n,):
        raise ValueError(f"ok must be (N,) bool with one entry per image ({n}), got shape {ok.shape}")
    return ok


def bag_counts(words: np.ndarray, k: int, weights: np.ndarray | None = None,
               rows: slice | None = None) -> np.ndarray:
    """(N, k) float32: per image, the summed weight of the cells carrying each word (the count
    without ``weights``). ``weights``: (h, w) for every image, or (N, h, w) per image;
    ``rows``: only these rows of ``words`` (and of per-image ``weights``).

    >>> bag_counts(np.array([[2, 2, 0]]), 3).tolist()
    [[1.0, 0.0, 2.0]]
    >>> bag_counts(np.array([[2, 2, 0]]), 3, weights=np.array([0.5, 1.0, 2.0])).tolist()
    [[2.0, 0.0, 1.5]]
    """
    words = check_words(words, k)
    block = np.asarray(words if rows is None else words[rows])
    flat = block.reshape(len(block), int(np.prod(block.shape[1:]))).astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= k):
        raise ValueError(f"word ids must lie in 0..{k - 1}; pass the codebook's k")
    offsets = (np.arange(len(flat), dtype=np.int64)[:, None] * k + flat).ravel()
    cell_weights = None
    if weights is not None:
        shape = np.shape(weights)  # sliced before converting: a (1M, h, w) memory map stays on disk
        if shape == words.shape[1:]:
            cell_weights = np.broadcast_to(np.asarray(weights, np.float64).reshape(1, -1), flat.shape).ravel()
        elif shape == words.shape:
            part = weights if rows is None else weights[rows]
            cell_weights = np.asarray(part, np.float64).reshape(flat.shape).ravel()
        else:
            raise ValueError(f"weights must be (h, w) {words.shape[1:]} or (N, h, w) {words.shape}, "
                             f"got shape {shape}")
    counts = np.bincount(offsets, weights=cell_weights, minlength=len(flat) * k)
    return counts.reshape(len(flat), k).astype(np.float32)


def document_frequency(words: np.ndarray, k: int, ok: np.ndarray | None = None, chunk: int = CHUNK) -> np.ndarray:
    """(k,) int64: in how many readable images each word occurs.

    >>> document_frequency(np.array([[0, 0, 1], [1, 2, 2]]), 4).tolist()
    [1, 2, 1, 0]
    """
    words = check_words(words, k)
    ok = _ok_mask(ok, len(words))
    df = np.zeros(k, np.int64)
    for begin in range(0, len(words), chunk):
        present = bag_counts(words, k, rows=slice(begin, begin + chunk)) > 0
        df += present[ok[begin:begin + chunk]].sum(axis=0)
    return df


def inverse_document_frequency(df: np.ndarray, n: int) -> np.ndarray:
    """(k,) float32 ``log(n / df)``; 0 for a word no image holds (it never counts).

    >>> inverse_document_frequency(np.array([4, 2, 0]), 4).astype(float).round(4).tolist()
    [0.0, 0.6931, 0.0]
    """
    df = np.asarray(df, dtype=np.float64)
    return np.where(df > 0, np.log(max(n, 1) / np.maximum(df, 1)), 0.0).astype(np.float32)


def centre_weights(h: int, w: int, sigma: float = CENTRE_SIGMA) -> np.ndarray:
    """(h, w) float32 Gaussian centre prior with mean 1 (so a weighted bag sums to the cell count).

    ``sigma`` is in half-widths of the grid: 0.5 puts the edges' middles at ``exp(-2)`` of the centre.

    >>> weights = centre_weights(3, 3)
    >>> weights.shape, round(float(weights.mean()), 6), bool(weights[1, 1] == weights.max())
    ((3, 3), 1.0, True)
    """
    if h < 1 or w < 1 or sigma <= 0:
        raise ValueError(f"centre_weights needs a grid of at least 1x1 and sigma > 0, got {h}x{w}, sigma {sigma}")
    ys = (np.arange(h) + 0.5) / h * 2 - 1  # cell centres in [-1, 1]
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    prior = np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))
    return (prior / prior.mean()).astype(np.float32)


def saliency_weights(norms: np.ndarray) -> np.ndarray:
    """(N, h, w) float32: each cell's feature norm over its image's mean norm (mean 1 per image;
    an image with all-zero norms gets uniform weights).

    ``norms`` (N, h, w): ``np.linalg.norm(cells, axis=-1)`` of the backbone's cell grid. Storing
    them in an index costs N * h * w * 2 bytes as float16 (392 MB at N = 1M, 14 x 14 cells).

    >>> saliency_weights(np.array([[[1.0, 3.0]], [[0.0, 0.0]]])).tolist()
    [[[0.5, 1.5]], [[1.0, 1.0]]]
    """
    norms = np.asarray(norms, dtype=np.float32)
    if norms.ndim < 2 or not np.isfinite(norms).all() or (norms < 0).any():
        raise ValueError("norms must be (N, h, w) non-negative finite cell norms")
    mean = norms.reshape(len(norms), -1).mean(axis=1).reshape((-1,) + (1,) * (norms.ndim - 1))
    return np.where(mean > 0, norms / np.where(mean > 0, mean, 1), np.float32(1)).astype(np.float32)


def weighted_bags(words: np.ndarray, k: int, weighting: str = "tfidf", focus: np.ndarray | None = None,
                  ok: np.ndarray | None = None, idf: np.ndarray | None = None, sublinear: bool = False,
                  dtype=np.float32, chunk: int = CHUNK) -> np.ndarray:
    """(N, k) unit rows (``dtype``): the weighted bags of ``words`` (see the module docstring).

    Args:
        words: (N, h, w) or (N, cells) word ids below ``k``.
        k: the codebook's number of words.
        weighting: ``"counts"`` or ``"tfidf"``.
        focus: cell weights, (h, w) for all images (:func:`centre_weights`) or (N, h, w)
            (:func:`saliency_weights`, or their product); None: every cell weighs 1.
        ok: (N,) bool, readable images; the others get zero rows and do not count in ``df``.
        idf: (k,) precomputed :func:`inverse_document_frequency` (e.g. of a larger set); by default
            it is computed from ``words``.
        sublinear: term frequency ``1 + log(tf)`` (for tf >= 1) instead of ``tf``.

    Example::

        >>> words = np.array([[0, 1, 1], [0, 2, 2]])
        >>> weighted_bags(words, 3, "counts").astype(float).round(3).tolist()
        [[0.447, 0.894, 0.0], [0.447, 0.0, 0.894]]
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    words = check_words(words, k)
    ok = _ok_mask(ok, len(words))
    if weighting == "tfidf" and idf is None:
        idf = inverse_document_frequency(document_frequency(words, k, ok, chunk), int(ok.sum()))
    if idf is not None and np.shape(idf) != (k,):
        raise ValueError(f"idf must be (k,) = ({k},), got shape {np.shape(idf)}")
    out = np.zeros((len(words), k), dtype)
    for begin in range(0, len(words), chunk):
        rows = slice(begin, begin + chunk)
        tf = bag_counts(words, k, focus, rows)
        if sublinear:
            tf = np.where(tf > 0, 1 + np.log(np.maximum(tf, 1e-12)), 0).astype(np.float32)
        if weighting == "tfidf":
            tf *= idf
        tf *= ok[rows, None]
        norms = np.sqrt(np.einsum("ij,ij->i", tf, tf))
        out[rows] = tf / np.maximum(norms, 1e-12)[:, None]
    return out


def combined_vectors(embeddings: np.ndarray, bags: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """(N, D + k) float32: unit ``embeddings`` beside ``weight`` times unit ``bags``.

    For two rows the inner product is ``cos(e, e') + weight**2 * cos(b, b')``, so the cosine that the
    chain orders by (it normalises rows) is their mean weighted 1 : ``weight**2``.

    >>> combined_vectors(np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]]), weight=0.5).tolist()
    [[0.6000000238418579, 0.800000011920929, 0.0, 0.5]]
    """
    from mlfix.pipeline.ordering.embedding import unit_rows

    if len(embeddings) != len(bags):
        raise ValueError(f"embeddings ({len(embeddings)} rows) and bags ({len(bags)} rows) must have one row "
                         "per image each")
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"weight must be a finite number >= 0, got {weight}")
    return np.hstack([unit_rows(embeddings), np.float32(weight) * unit_rows(bags)])


def index_combined_vectors(pooled: np.ndarray, words: np.ndarray, k: int, ok: np.ndarray | None = None) -> np.ndarray:
    """The vectors the index's combined order chains (``orders/combined``, the Review page's default):
    the pooled embedding beside the sublinear tf-idf bag with the centre prior, weight 1 (the best
    variant an index can build from ``pooled.npy`` and ``words.npy``: bench/words.py, README).

    Shapes: ``pooled`` (N, D), ``words`` (N, h, w) below ``k``, ``ok`` (N,) bool; out (N, D + k) float32.

    >>> words = np.array([[[0, 1], [1, 1]], [[2, 2], [2, 0]]], dtype=np.uint16)
    >>> index_combined_vectors(np.eye(2, 3), words, 3).shape
    (2, 6)
    """
    words = check_words(words, k)
    if words.ndim != 3:
        raise ValueError(f"words must be the (N, h, w) word grid, got shape {words.shape}")
    bags = weighted_bags(words, k, "tfidf", focus=centre_weights(*words.shape[1:]), ok=ok, sublinear=True)
    return combined_vectors(np.asarray(pooled, dtype=np.float32), bags)
