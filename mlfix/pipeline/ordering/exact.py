"""The exact greedy chain of the method: start anywhere; next = the remaining image sharing the most
words with the current one, ties to the lowest index; repeat.

- :func:`greedy_order` — a compiled scan (numba, :func:`mlfix.pipeline.ordering.kernels.greedy_steps`)
  over the remaining rows: O(N^2) pairs, each a popcount of ``x & y`` over the packed words.
- :func:`seed_greedy_order` — the seed tool's numpy loop, kept as the reference the fast one must
  equal (tests, ``python -m bench.ordering``).

    >>> import numpy as np
    >>> bags = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=bool)
    >>> greedy_order(bags).tolist()
    [0, 2, 1]
"""

from __future__ import annotations

import numpy as np

from mlfix.pipeline.ordering.bags import as_words, check_start, load_kernels
from mlfix.progress import ProgressFn


def greedy_order(bags: np.ndarray, start: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """The exact greedy chain: a permutation of ``range(N)`` (int64).

    Starts at ``start``; each next image is the remaining one that shares the most words with the
    current one, ties going to the lowest row index. Equal to :func:`seed_greedy_order`, and many
    times faster (``python -m bench.ordering`` measures by how much).

    Args:
        bags: bool (N, k) or uint8 packed bits (N, ceil(k/8)); see :mod:`mlfix.pipeline.ordering`.
        start: row index of the first image.
        progress: optional ``progress(done, total)`` callback, called about 100 times.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=bool)
        >>> greedy_order(bags, start=2).tolist()
        [2, 0, 3, 1]
    """
    words = as_words(bags)
    return greedy_words(words, check_start(start, len(words)), progress)


def greedy_order_packed(packed: np.ndarray, start: int = 0, progress: ProgressFn | None = None) -> np.ndarray:
    """:func:`greedy_order` for packed bits only: uint8 (N, ceil(k/8)), rows packed alike."""
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8:
        raise TypeError("packed must be a uint8 array from np.packbits(bags, axis=1, bitorder='little'); "
                        "for bool bags call greedy_order")
    return greedy_order(packed, start, progress)


def greedy_words(words: np.ndarray, start: int, progress: ProgressFn | None = None) -> np.ndarray:
    """The exact greedy chain over uint64 rows already checked by :func:`~mlfix.pipeline.ordering.bags.as_words`
    and :func:`~mlfix.pipeline.ordering.bags.check_start` (the approximate order and the dispatcher call it)."""
    n = len(words)
    order = np.empty(n, np.int64)
    if n == 0:
        return order
    order[0] = start
    if n == 1:
        return order
    kernels = load_kernels()
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
    ``remaining`` stays sorted), remove, repeat: O(N^2 k) work. Rows are uint8 (faster here for this
    loop than float32 BLAS, and exact) unless a bag has 256+ words, where uint8 sums would wrap and
    int32 is used.

    Example::

        >>> bags = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 1, 1]], dtype=bool)
        >>> seed_greedy_order(bags, start=2).tolist()
        [2, 0, 3, 1]
    """
    words = as_words(bags)
    n = len(words)
    start = check_start(start, n)
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
