"""The greedy embedding chain: a permutation from ``start``, equal to the brute-force loop (the kNN
candidates and the exact fallback together), the approximate path for large N, input checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlfix.pipeline.ordering.embedding import (approximate_embedding_order, brute_force_embedding_order,
                                               embedding_order, greedy_embedding_order, unit_rows)
from tests.pipeline.ordering.bags_for_tests import FAST, is_permutation


@st.composite
def small_embeddings(draw, max_n: int = 60, max_d: int = 12):
    """(n, d) floats of several kinds: gaussian, clustered, a few repeated rows, float16."""
    n = draw(st.integers(0, max_n))
    d = draw(st.integers(1, max_d))
    kind = draw(st.sampled_from(["gaussian", "clustered", "repeats", "float16"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, d))
    if kind == "clustered" and n:
        x = rng.normal(size=(4, d))[rng.integers(0, 4, n)] * 5 + x
    elif kind == "repeats" and n:
        x = x[rng.integers(0, max(1, n // 3), n)]
    elif kind == "float16":
        x = x.astype(np.float16)
    start = draw(st.integers(0, max(0, n - 1)))
    return x, start


@FAST
@given(small_embeddings(), st.integers(1, 8))
def test_the_order_is_a_permutation_from_start(case, k):
    x, start = case
    for order in (greedy_embedding_order(x, start, k=k), embedding_order(x, start),
                  approximate_embedding_order(x, start, cluster_size=4, dims=3)):
        assert is_permutation(order, len(x))
        if len(x):
            assert order[0] == start


@pytest.mark.parametrize("n,d,k,seed", [(2, 3, 1, 0), (40, 8, 1, 1), (40, 8, 3, 2), (200, 16, 4, 3),
                                        (300, 64, 32, 4), (500, 5, 2, 5)])
def test_exact_chain_equals_the_brute_force_reference(n, d, k, seed):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    start = n // 3
    # small k forces many exact fallbacks; the order must not depend on k
    assert np.array_equal(greedy_embedding_order(x, start, k=k), brute_force_embedding_order(x, start))


def test_clustered_rows_stay_together():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 32)) * 10
    truth = np.repeat(np.arange(5), 40)
    x = (centres[truth] + rng.normal(size=(200, 32))).astype(np.float16)
    order = embedding_order(x)
    assert np.mean(truth[order][1:] == truth[order][:-1]) > 0.95
    assert np.array_equal(order, brute_force_embedding_order(x))


def test_scale_does_not_matter_and_a_memory_map_works(tmp_path):
    x = np.random.default_rng(1).normal(size=(120, 10)).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    expected = greedy_embedding_order(x)
    assert np.array_equal(greedy_embedding_order(mapped), expected)
    assert np.array_equal(greedy_embedding_order(x.astype(np.float32) * 7.5), expected)


def test_auto_switches_to_the_approximate_chain_above_exact_max():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 24)) * 8
    truth = rng.integers(0, 6, 900)
    x = centres[truth] + rng.normal(size=(900, 24))
    auto = embedding_order(x, start=5, exact_max=100, cluster_size=100, dims=8)
    assert is_permutation(auto, 900) and auto[0] == 5
    assert np.array_equal(auto, approximate_embedding_order(x, start=5, cluster_size=100, dims=8))
    assert np.array_equal(auto, embedding_order(x, start=5, exact_max=100, cluster_size=100, dims=8))  # deterministic
    purity = np.mean(truth[auto][1:] == truth[auto][:-1])
    assert purity > 0.95
    # small enough for one cluster: the exact chain
    assert np.array_equal(approximate_embedding_order(x[:150], cluster_size=100), greedy_embedding_order(x[:150]))


def test_progress_reaches_the_total():
    x = np.random.default_rng(0).normal(size=(250, 6))
    calls: list[tuple[int, int]] = []
    greedy_embedding_order(x, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (250, 250) and len(calls) >= 10
    calls.clear()
    approximate_embedding_order(x, cluster_size=40, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (250, 250)


def test_zero_rows_are_ordered_too():
    x = np.zeros((5, 3))
    x[0] = [1, 0, 0]
    assert is_permutation(greedy_embedding_order(x), 5)
    assert unit_rows(x)[1].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("bad,error,words", [
    ([[1.0, 2.0]], TypeError, "numpy array"),
    (np.ones(3), ValueError, "2-D"),
    (np.ones((3, 2), int), TypeError, "astype"),
    (np.array([[1.0, np.nan]]), ValueError, "NaN"),
])
def test_bad_input_says_what_to_pass(bad, error, words):
    with pytest.raises(error, match=words):
        embedding_order(bad)


def test_bad_options_say_what_to_pass():
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match="0 <= start < 4"):
        embedding_order(x, start=4)
    with pytest.raises(ValueError, match="method must be one of"):
        embedding_order(x, method="fast")
    with pytest.raises(ValueError, match="k must be"):
        greedy_embedding_order(x, k=0)
    with pytest.raises(ValueError, match="cluster_size"):
        approximate_embedding_order(x, cluster_size=1)
