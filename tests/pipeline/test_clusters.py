"""Clusters of the pooled embeddings (mlfix.pipeline.clusters): found again, numbered, ordered, cached."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.pipeline.clusters import (MAX_CLUSTERS, cached_clusters, choose_k, cluster_embeddings,
                                     member_order)


def groups(sizes, dim=12, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.normal(size=(len(sizes), dim))
    return (centres[truth] + rng.normal(0, noise, (len(truth), dim))).astype(np.float32), truth


def test_separate_groups_are_found_and_numbered_largest_first():
    x, truth = groups([40, 25, 10, 5])
    found = cluster_embeddings(x, k=4)
    assert np.bincount(found.assign).tolist() == [40, 25, 10, 5]
    for c in range(4):  # each cluster is exactly one group
        assert len(set(truth[found.assign == c])) == 1
    assert found.k == 4 and found.sizes().tolist() == [40, 25, 10, 5]


def test_members_come_most_typical_first_and_the_odd_one_last():
    x, _ = groups([30, 30], noise=0.05)
    x[7] = 0.6 * x[7] + 0.4 * x[40]  # a blend of the two groups: the odd one out of its cluster
    found = cluster_embeddings(x, k=2)
    cluster = found.assign[7]
    members = found.members(cluster)
    assert members[-1] == 7
    assert np.all(np.diff(found.similarity[members]) <= 0)
    order = member_order(found)
    assert sorted(order.tolist()) == list(range(60))
    assert found.assign[order].tolist() == sorted(found.assign.tolist())  # cluster by cluster


def test_same_input_and_seed_give_the_same_clusters():
    x, _ = groups([20, 20, 20], noise=0.6, seed=2)
    a, b = cluster_embeddings(x, seed=1), cluster_embeddings(x, seed=1)
    assert a.assign.tolist() == b.assign.tolist()


@pytest.mark.parametrize("n, k", [(1, 1), (2, 2), (8, 2), (50, 5), (1360, 26), (5000, 50), (10_000, 70),
                                  (1_000_000, 70)])
def test_choose_k(n, k):
    assert choose_k(n) == k


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 3))
def test_every_row_in_one_cluster_numbered_without_gaps(n, k, seed):
    x = np.random.default_rng(seed).normal(size=(n, 5)).astype(np.float32)
    k = min(k, n)
    found = cluster_embeddings(x, k=k, seed=seed)
    assert found.assign.shape == (n,) and found.assign.min() == 0
    assert set(found.assign.tolist()) == set(range(found.k)) and found.k <= k
    sizes = found.sizes()
    assert (np.diff(sizes) <= 0).all()  # largest first
    assert np.all(found.similarity <= 1.0001) and np.all(found.similarity >= -1.0001)
    assert choose_k(n) <= min(n, MAX_CLUSTERS)


def test_bad_k_is_refused():
    x, _ = groups([5, 5])
    with pytest.raises(ValueError, match="k must be between 1 and the number of images"):
        cluster_embeddings(x, k=11)
    with pytest.raises(ValueError, match="at least one image"):
        choose_k(0)


def test_cached_clusters_skip_unreadable_rows_and_recompute_on_a_new_index(tmp_path):
    x, _ = groups([20, 20])
    readable = np.ones(40, dtype=bool)
    readable[[3, 30]] = False
    first = cached_clusters(tmp_path, x, readable, {"run": 1}, k=2)
    assert first.assign[[3, 30]].tolist() == [-1, -1] and np.isnan(first.similarity[[3, 30]]).all()
    assert (first.assign[readable] >= 0).all()
    stamp = (tmp_path / "clusters" / "assign.npy").stat().st_mtime_ns
    again = cached_clusters(tmp_path, x, readable, {"run": 1}, k=2)
    assert (tmp_path / "clusters" / "assign.npy").stat().st_mtime_ns == stamp
    assert again.assign.tolist() == first.assign.tolist() and again.k == 2
    cached_clusters(tmp_path, x, readable, {"run": 2}, k=2)
    assert (tmp_path / "clusters" / "assign.npy").stat().st_mtime_ns != stamp
