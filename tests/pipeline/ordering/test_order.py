"""The package's entry points: ``order`` dispatches by size, ``order_by_group`` concatenates each
group's order, ``mean_shared_words`` measures an order; every ordering handles 0 and 1 rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlfix.pipeline.ordering import mean_shared_words, order, order_by_group
from mlfix.pipeline.ordering.approximate import approximate_order
from mlfix.pipeline.ordering.exact import greedy_order, seed_greedy_order
from tests.pipeline.ordering.bags_for_tests import FAST, clustered, is_permutation, pack, small_bags


def test_empty_and_single_inputs():
    for fn in (greedy_order, seed_greedy_order, approximate_order, order):
        assert fn(np.zeros((0, 16), bool)).tolist() == []
        assert fn(np.ones((1, 16), bool)).tolist() == [0]
    assert order_by_group(np.zeros((0, 16), bool), []).tolist() == []


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


def test_other_bad_arguments_are_refused():
    bags = np.ones((5, 8), bool)
    with pytest.raises(ValueError, match="method must be one of"):
        order(bags, "fastest")
    with pytest.raises(ValueError, match="one entry per row"):
        order_by_group(bags, [1, 2])
    with pytest.raises(TypeError, match="sortable"):
        order_by_group(bags, np.array([1, None, 2, 3, 1], dtype=object))
    with pytest.raises(ValueError, match="outside"):
        mean_shared_words(bags, np.array([0, 9]))
