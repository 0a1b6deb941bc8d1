"""Similarity orderings: the exact chain equals the seed's loop; approximate and grouped orders are
permutations that honour ``start``; argument checks say what to do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlfix.pipeline.ordering import (
    approximate_order,
    greedy_order,
    greedy_order_packed,
    mean_shared_words,
    order,
    order_by_group,
    seed_greedy_order,
)

# The first example compiles the numba kernels (or loads them from the cache): no deadline.
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def small_bags(draw, max_n: int = 60, min_k: int = 1, max_k: int = 32):
    """bool (n, k) bags; small k and a low or high density make many ties."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(min_k, max_k))
    density = draw(st.sampled_from([0.05, 0.2, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    bags = np.random.default_rng(seed).random((n, k)) < density
    start = draw(st.integers(0, max(0, n - 1)))
    return bags, start


def pack(bags: np.ndarray, bitorder: str = "little") -> np.ndarray:
    return np.packbits(bags, axis=1, bitorder=bitorder)


def is_permutation(order_: np.ndarray, n: int) -> bool:
    return order_.dtype == np.int64 and np.array_equal(np.sort(order_), np.arange(n))


def clustered(n: int, k: int = 256, clusters: int = 8, words: int = 30, seed: int = 0) -> np.ndarray:
    """Bags whose words come mostly from a per-cluster vocabulary."""
    rng = np.random.default_rng(seed)
    vocab = [rng.choice(k, 60, replace=False) for _ in range(clusters)]
    bags = np.zeros((n, k), bool)
    for i, c in enumerate(rng.integers(0, clusters, n)):
        bags[i, rng.choice(vocab[c], words - 5, replace=False)] = True
        bags[i, rng.choice(k, 5, replace=False)] = True
    return bags


# ---------------------------------------------------------------------------------------------
# Exact chain


@FAST
@given(small_bags())
def test_greedy_equals_seed_reference(case):
    bags, start = case
    fast = greedy_order(bags, start)
    assert is_permutation(fast, len(bags))
    assert np.array_equal(fast, seed_greedy_order(bags, start))
    if len(bags):
        assert fast[0] == start


@FAST
@given(small_bags(max_k=70))
def test_packed_and_unpacked_give_the_same_order(case):
    bags, start = case
    expected = greedy_order(bags, start)
    assert np.array_equal(greedy_order(pack(bags), start), expected)
    assert np.array_equal(greedy_order_packed(pack(bags), start), expected)
    # any packing works as long as all rows are packed alike
    assert np.array_equal(greedy_order(pack(bags, "big"), start), expected)


def test_greedy_follows_most_shared_words_with_ties_to_lowest_index():
    bags = np.array([[1, 1, 1, 0, 0],   # 0
                     [0, 0, 0, 1, 1],   # 1
                     [1, 1, 0, 0, 0],   # 2: shares 2 with 0
                     [0, 1, 1, 0, 0],   # 3: shares 2 with 0 too, higher index
                     [0, 0, 0, 0, 1]], dtype=bool)
    # 0 -> 2 (tie with 3, lower index) -> 3 (shares 1) -> 1 and 4 share 0 with 3: 1 first -> 4
    assert greedy_order(bags).tolist() == [0, 2, 3, 1, 4]
    assert greedy_order(np.zeros((4, 8), bool), start=2).tolist() == [2, 0, 1, 3]


def test_large_bags_use_a_reference_that_does_not_wrap():
    rng = np.random.default_rng(1)
    bags = rng.random((40, 1024)) < 0.5  # ~512 words per image: uint8 sums would wrap
    assert np.array_equal(greedy_order(bags, 3), seed_greedy_order(bags, 3))


def test_views_and_odd_layouts_give_the_same_order():
    rng = np.random.default_rng(2)
    bags = rng.random((80, 200)) < 0.3
    expected = greedy_order(bags)
    packed = pack(bags)  # 25 bytes a row: padded to 4 uint64 words
    assert np.array_equal(greedy_order(np.asfortranarray(packed)), expected)
    wide = np.zeros((80, 26), np.uint8)
    wide[:, 1:] = packed
    assert np.array_equal(greedy_order(wide[:, 1:]), expected)  # misaligned, non-contiguous view
    assert np.array_equal(greedy_order(bags[::-1]), greedy_order(np.ascontiguousarray(bags[::-1])))


def test_empty_and_single_inputs():
    for fn in (greedy_order, seed_greedy_order, approximate_order, order):
        assert fn(np.zeros((0, 16), bool)).tolist() == []
        assert fn(np.ones((1, 16), bool)).tolist() == [0]
    assert order_by_group(np.zeros((0, 16), bool), []).tolist() == []


def test_progress_reaches_the_total():
    calls = []
    greedy_order(np.random.default_rng(0).random((300, 64)) < 0.2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (300, 300) and all(t == 300 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# ---------------------------------------------------------------------------------------------
# Approximate order


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 400), cluster_size=st.integers(2, 40), seed=st.integers(0, 1000),
       data=st.data())
def test_approximate_is_a_permutation_starting_at_start(n, cluster_size, seed, data):
    bags = np.random.default_rng(seed).random((n, 96)) < 0.15
    start = data.draw(st.integers(0, max(0, n - 1)))
    result = approximate_order(pack(bags), start, cluster_size=cluster_size, seed=seed)
    assert is_permutation(result, n)
    if n:
        assert result[0] == start


def test_approximate_is_exact_below_two_clusters():
    bags = clustered(300)
    assert np.array_equal(approximate_order(bags, 7, cluster_size=200), greedy_order(bags, 7))


def test_approximate_keeps_neighbours_nearly_as_similar_as_exact_on_clustered_data():
    bags = clustered(2000)
    exact = mean_shared_words(bags, greedy_order(bags))
    approx = mean_shared_words(bags, approximate_order(bags, cluster_size=100))
    shuffled = mean_shared_words(bags, np.random.default_rng(0).permutation(len(bags)))
    assert approx >= 0.95 * exact
    assert approx > 2 * shuffled  # the measure itself separates good from bad orders


def test_approximate_handles_identical_rows():
    bags = np.zeros((500, 64), bool)
    bags[:, :5] = True
    result = approximate_order(bags, cluster_size=20)
    assert is_permutation(result, 500)


# ---------------------------------------------------------------------------------------------
# order, order_by_group, mean_shared_words


def test_order_dispatches_by_size():
    bags = clustered(600)
    assert np.array_equal(order(bags, "auto", start=4), greedy_order(bags, 4))
    assert np.array_equal(order(bags, "exact", start=4), greedy_order(bags, 4))
    approx = order(bags, "auto", start=4, exact_max=100, cluster_size=50)
    assert np.array_equal(approx, approximate_order(bags, 4, cluster_size=50))
    assert not np.array_equal(approx, greedy_order(bags, 4))


@FAST
@given(small_bags(), st.integers(1, 5), st.integers(0, 1000))
def test_order_by_group_concatenates_each_groups_exact_order(case, n_groups, seed):
    bags, _ = case
    groups = np.random.default_rng(seed).choice(["cat", "dog", "ant", "eel", "fox"][:n_groups], len(bags))
    result = order_by_group(bags, groups)
    assert is_permutation(result, len(bags))
    expected = [np.flatnonzero(groups == g)[greedy_order(bags[groups == g])] for g in np.unique(groups)]
    assert np.array_equal(result, np.concatenate(expected) if expected else np.empty(0, np.int64))


def test_order_by_group_with_approximate_method():
    bags = clustered(700)
    groups = np.arange(700) % 3
    result = order_by_group(pack(bags), groups, method="approximate", cluster_size=30)
    assert is_permutation(result, 700)
    for g, part in enumerate(np.split(result, [234, 467])):
        assert set(part.tolist()) == set(np.flatnonzero(groups == g).tolist())


def test_mean_shared_words():
    bags = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 1]], dtype=bool)
    assert mean_shared_words(bags, np.array([0, 2, 1])) == 2.0
    assert mean_shared_words(bags, np.array([0, 1, 2])) == 1.5
    assert mean_shared_words(pack(bags), np.array([1])) == 0.0


# ---------------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize("bad, error, says", [
    (np.zeros(5, bool), ValueError, "2-D"),
    (np.zeros((4, 8), np.int64), TypeError, "astype(bool)"),
    (np.zeros((4, 8), np.float32), TypeError, "np.packbits"),
    ([[True, False]], TypeError, "numpy array"),
])
def test_bad_bags_are_refused_with_a_hint(bad, error, says):
    with pytest.raises(error, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        greedy_order(bad)


@pytest.mark.parametrize("start, error", [(5, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_start_is_refused(start, error):
    bags = np.ones((5, 8), bool)
    with pytest.raises(error, match="start"):
        greedy_order(bags, start)
    with pytest.raises(error, match="start"):
        approximate_order(bags, start)


def test_other_bad_arguments_are_refused():
    bags = np.ones((5, 8), bool)
    with pytest.raises(ValueError, match="use start=0"):
        greedy_order(np.zeros((0, 8), bool), 1)
    with pytest.raises(TypeError, match="greedy_order"):
        greedy_order_packed(bags)
    with pytest.raises(ValueError, match="method must be one of"):
        order(bags, "fastest")
    with pytest.raises(ValueError, match="one entry per row"):
        order_by_group(bags, [1, 2])
    with pytest.raises(TypeError, match="sortable"):
        order_by_group(bags, np.array([1, None, 2, 3, 1], dtype=object))
    with pytest.raises(ValueError, match="cluster_size"):
        approximate_order(bags, cluster_size=1)
    with pytest.raises(ValueError, match="outside"):
        mean_shared_words(bags, np.array([0, 9]))
