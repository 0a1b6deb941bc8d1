"""bench.feature_quality's vectorised kNN vote against a plain loop (the figure the README quotes)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.feature_quality import knn_vote


def vote_by_loop(neighbours: np.ndarray, codes: np.ndarray, classes: int, k: int) -> np.ndarray:
    out = []
    for i, row in enumerate(neighbours):
        row = row[row != i][:k]
        votes = np.bincount(codes[row], minlength=classes)
        best = np.flatnonzero(votes == votes.max())
        out.append(best[0] if len(best) == 1 else next(c for c in codes[row] if c in best))
    return np.array(out)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(3, 40), st.integers(2, 6), st.integers(1, 8))
def test_vote_matches_the_loop_with_ties_to_the_nearest(seed, n, classes, k):
    rng = np.random.default_rng(seed)
    k = min(k, n - 1)
    codes = rng.integers(0, classes, n)
    rows = []
    for i in range(n):
        others = rng.permutation(np.delete(np.arange(n), i))[:k]
        row = np.r_[i, others]
        rows.append(rng.permutation(row) if rng.random() < 0.3 else row)  # self not always first
    neighbours = np.array(rows)
    assert np.array_equal(knn_vote(neighbours, codes, classes, k), vote_by_loop(neighbours, codes, classes, k))


def test_a_clear_majority_wins_over_the_nearest():
    codes = np.array([0, 1, 0, 0, 1])
    neighbours = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 1, 4, 0], [3, 1, 4, 0], [4, 0, 2, 3]])
    assert knn_vote(neighbours, codes, 2, 3).tolist() == [0, 0, 1, 1, 0]
