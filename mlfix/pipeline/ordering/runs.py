"""Runs of a similarity order: where the order's similarity drops, one run ends and the next begins.

A similarity order puts similar images side by side, but it must jump somewhere: from the last
flower of one kind to the nearest image of the next. Those jumps are where a reviewer labelling from
scratch wants a break, so that one key can label a whole run. This module finds them, a pure
function of an order and the embeddings.

The method is TextTiling's (Hearst, 1997, "TextTiling: Segmenting Text into Multi-paragraph Subtopic
Passages", Computational Linguistics 23(1)), with images in place of sentences:

1. **Gap scores** — :func:`gap_similarity`: at each gap between positions ``p-1`` and ``p``, the
   cosine similarity of the mean (unit) embedding of the ``width`` images before it and of the
   ``width`` images after it. ``width=1`` is the similarity of each consecutive pair; the default
   :data:`WIDTH` compares three with three (fewer breaks inside a run of varied images). Computed
   block by block: memory O(N + block * D), never an N x D copy. :func:`run_ids` gives the first
   and last ``width - 1`` gaps, whose windows the ends cut short (which makes them look more
   similar), the score of the nearest full gap.
2. **Depth scores** — :func:`depth_scores`: how far each gap lies below the peaks on either side
   (climbing left and right while the score does not fall): ``(left peak - s) + (right peak - s)``.
   A drop counts relative to its surroundings, so a run of loosely similar images (lower scores
   throughout) is not cut into pieces, and a jump between tight runs is not missed.
3. **Boundaries** — :func:`boundaries`: a gap whose depth exceeds TextTiling's cut-off,
   ``mean(depth) - std(depth) / 2`` (NLTK's ``TextTilingTokenizer`` default, "HC"), and at least
   :data:`NOISE` (smaller drops are float rounding, e.g. of float16 features), and is the deepest
   within ``min_run - 1`` gaps on either side (the leftmost of equals; TextTiling likewise drops a
   boundary next to a deeper one). So every run is at least ``min_run`` images long
   (:data:`MIN_RUN`), and nothing is tuned per data set: the cut-off comes from the order's own
   depth scores.

:func:`run_ids` puts it together: a run id per position, 0, 1, 2, ... in order.

Measured (2026-12-01) on flowers17 (1,360 images, 17 classes; offline EfficientNet-Lite0 pooled
features at 224 px; the embedding chain over all images; 80.5% of consecutive pairs share a class):
labelling each run with its majority class and then fixing images one by one until 95% are right
costs 0.26 key presses per image with these defaults (one press per run, 198 runs of 6.9 images on
average), against 0.20 for a break at every change of true class (the best any cut of this order
can do) and 0.89 for a global outlier rule on the pair similarities (median minus 3.5 MADs, Iglewicz
and Hoaglin 1993: it found 7 breaks). Other widths and minimum lengths (1-3, 3-5) cost 0.26-0.32 there.

Example::

    >>> import numpy as np
    >>> flowers = [[1, 0], [1, .05], [1, .1], [1, .12], [1, .08]]   # five of one kind
    >>> signs = [[0, 1], [.05, 1], [.1, 1], [.02, 1]]               # then four of another
    >>> x = np.array(flowers + signs, dtype=np.float32)
    >>> run_ids(x).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1]
    >>> run_ids(x, order=[5, 6, 7, 8, 0, 1, 2, 3, 4]).tolist()       # any order of rows
    [0, 0, 0, 0, 1, 1, 1, 1, 1]
"""

from __future__ import annotations

import numpy as np

from mlfix.pipeline.ordering.bags import check_int_options
from mlfix.pipeline.ordering.embedding import BLOCK, check_embeddings, unit_rows

WIDTH = 3  # images on each side of a gap whose mean embeddings are compared
MIN_RUN = 4  # images in the shortest run
NOISE = 0.01  # depth (in cosine similarity) below which a drop is rounding, never a boundary


def check_order(order, n: int) -> np.ndarray:
    """``order`` as an int64 array of row indices into ``n`` rows; TypeError or ValueError saying what to pass."""
    order = np.asarray(range(n) if order is None else order)
    if order.ndim != 1:
        raise ValueError(f"order must be 1-D (row indices), got shape {order.shape}")
    if order.size and not np.issubdtype(order.dtype, np.integer):
        raise TypeError(f"order must hold integer row indices, got dtype {order.dtype}")
    order = order.astype(np.int64, copy=False)
    if order.size and (order.min() < 0 or order.max() >= n):
        raise ValueError(f"order has row indices outside 0..{n - 1} (the embeddings have {n} rows)")
    return order


def gap_similarity(embeddings: np.ndarray, order=None, width: int = WIDTH, block: int = BLOCK) -> np.ndarray:
    """float32 (len(order) - 1,): at each gap, the cosine similarity of the mean unit embedding of the
    ``width`` positions before it and the ``width`` after it (fewer at the ends).

    ``embeddings``: (N, D) floats, any scale (a float16 memory map is fine); ``order``: row indices
    (None: all rows in row order). Zero rows have similarity 0 to everything.

    >>> x = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])
    >>> [round(float(s), 3) for s in gap_similarity(x, width=1)]
    [0.707, 0.707]
    """
    embeddings = check_embeddings(embeddings)
    order = check_order(order, len(embeddings))
    check_int_options(width=(width, 1), block=(block, 1))
    n = len(order)
    out = np.empty(max(n - 1, 0), np.float32)
    for begin in range(1, n, block):  # gaps begin .. end-1 (gap p sits before position p)
        end = min(n, begin + block)
        lo, hi = max(0, begin - width), min(n, end - 1 + width)
        rows = unit_rows(embeddings, order[lo:hi])
        sums = np.vstack([np.zeros((1, rows.shape[1]), np.float32), np.cumsum(rows, axis=0, dtype=np.float32)])
        gaps = np.arange(begin, end)
        before = sums[gaps - lo] - sums[np.maximum(gaps - width, 0) - lo]
        after = sums[np.minimum(gaps + width, n) - lo] - sums[gaps - lo]
        out[begin - 1:end - 1] = _cosine(before, after)
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.clip(np.einsum("ij,ij->i", a, b) / np.maximum(norms, np.float32(1e-12)), -1.0, 1.0)


def depth_scores(similarity: np.ndarray) -> np.ndarray:
    """float32: each gap's depth below the peaks on either side, ``(left - s) + (right - s)``, where a
    peak is where the score stops rising when climbing away from the gap (TextTiling's depth score).

    >>> [round(float(d), 2) for d in depth_scores(np.array([0.9, 0.5, 0.8, 0.8, 0.2, 0.7]))]
    [0.0, 0.7, 0.0, 0.0, 1.1, 0.0]
    """
    s = np.asarray(similarity, dtype=np.float32)
    n = len(s)
    if n == 0:
        return s.copy()
    position = np.arange(n)
    # Climbing left from i goes on while the next score is not lower, so it stops at the last j <= i
    # that the score strictly rose into (or at 0); climbing right, at the first j >= i after which it
    # strictly falls (or at the end). Plateaus are climbed through.
    stop_left = np.concatenate([[True], s[:-1] < s[1:]])
    stop_right = np.concatenate([s[1:] < s[:-1], [True]])
    left = np.maximum.accumulate(np.where(stop_left, position, 0))
    right = np.minimum.accumulate(np.where(stop_right, position, n - 1)[::-1])[::-1]
    return (s[left] - s) + (s[right] - s)


def boundaries(similarity: np.ndarray, min_run: int = MIN_RUN) -> np.ndarray:
    """bool (len(similarity),): True where a run ends at that gap (see the module docstring).

    ``similarity``: one score per gap of the order (:func:`gap_similarity`), len(order) - 1 of them.
    Boundaries are at least ``min_run`` gaps apart and at least ``min_run`` from either end.

    >>> boundaries(np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])).tolist()
    [False, False, False, True, False, False, False]
    """
    check_int_options(min_run=(min_run, 1))
    depth = depth_scores(similarity)
    n = len(depth)
    if n == 0:
        return np.zeros(0, bool)
    cut = max(float(depth.mean() - depth.std() / 2), NOISE)
    keep = depth > cut
    for shift in range(1, min_run):  # the deepest within min_run - 1 gaps (ties: the leftmost)
        keep[shift:] &= depth[shift:] > depth[:-shift]
        keep[:-shift] &= depth[:-shift] >= depth[shift:]
    gap = np.arange(n)
    keep &= (gap >= min_run - 1) & (gap <= n - min_run)  # first and last runs are min_run long too
    return keep


def run_ids_from_similarity(similarity: np.ndarray, min_run: int = MIN_RUN) -> np.ndarray:
    """int64 (len(similarity) + 1,): the run of each position, 0, 1, 2, ... (see :func:`boundaries`).

    >>> run_ids_from_similarity(np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9])).tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    cuts = boundaries(similarity, min_run)
    return np.concatenate([[0], np.cumsum(cuts, dtype=np.int64)])


def run_ids(embeddings: np.ndarray, order=None, *, width: int = WIDTH, min_run: int = MIN_RUN) -> np.ndarray:
    """int64 (len(order),): the run id of each position of ``order`` (None: all rows in row order).

    Non-decreasing, from 0, consecutive; a new run starts where the order's similarity drops (module
    docstring). Runs are at least ``max(min_run, width)`` long: the gap scores of a shorter run mix
    it with its neighbours (and the ends' gap scores compare fewer images). An empty order gives an
    empty array.
    """
    embeddings = check_embeddings(embeddings)
    order = check_order(order, len(embeddings))
    check_int_options(width=(width, 1), min_run=(min_run, 1))
    if len(order) == 0:
        return np.zeros(0, np.int64)
    scores = gap_similarity(embeddings, order, width)
    # The first and last width - 1 gaps compare fewer images (cut short by the ends), which makes them
    # look more similar than the rest: give them the nearest full gap's score instead.
    full = scores[width - 1:len(scores) - width + 1]
    if len(full):
        scores[:width - 1], scores[len(scores) - width + 1:] = full[0], full[-1]
    return run_ids_from_similarity(scores, max(min_run, width))


def run_starts(ids: np.ndarray) -> np.ndarray:
    """Positions where a run begins (the first is 0), from :func:`run_ids`.

    >>> run_starts(np.array([0, 0, 1, 1, 1, 2])).tolist()
    [0, 2, 5]
    """
    ids = np.asarray(ids)
    if ids.size == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
