"""The approximate order is a permutation that honours ``start``, equals the exact chain below two
clusters, and keeps neighbours nearly as similar as the exact chain on clustered bags."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.pipeline.ordering import mean_shared_words
from mlfix.pipeline.ordering.approximate import approximate_order
from mlfix.pipeline.ordering.exact import greedy_order
from tests.pipeline.ordering.bags_for_tests import clustered, is_permutation, pack


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


def test_bad_cluster_size_is_refused():
    with pytest.raises(ValueError, match="cluster_size"):
        approximate_order(np.ones((5, 8), bool), cluster_size=1)
