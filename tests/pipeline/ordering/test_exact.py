"""The exact greedy chain equals the seed's loop, for bool and packed bags of any layout, and
reports progress."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from mlfix.pipeline.ordering.exact import greedy_order, greedy_order_packed, seed_greedy_order
from tests.pipeline.ordering.bags_for_tests import FAST, is_permutation, pack, small_bags


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


def test_progress_reaches_the_total():
    calls = []
    greedy_order(np.random.default_rng(0).random((300, 64)) < 0.2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (300, 300) and all(t == 300 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_packed_entry_refuses_bool_bags():
    bags = np.ones((5, 8), bool)
    with pytest.raises(TypeError, match="greedy_order"):
        greedy_order_packed(bags)
