"""Visual words: KMeans codebook, assignment, packed bags."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlfix.pipeline.codebook import Codebook, images_per_word, pack_bags, unpack_bags, word_counts


def clustered_cells(n_per: int = 200, centers: int = 8, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 10, (centers, dim))
    cells = np.concatenate([m + rng.normal(0, 0.1, (n_per, dim)) for m in means]).astype(np.float32)
    return cells, np.repeat(np.arange(centers), n_per)


def test_codebook_words_do_not_mix_well_separated_clusters():
    cells, truth = clustered_cells()
    codebook = Codebook(k=16, seed=0).fit(cells)
    words = codebook.assign(cells)
    clusters_per_word = {w: set(truth[words == w].tolist()) for w in np.unique(words)}
    assert all(len(c) == 1 for c in clusters_per_word.values())
    assert set().union(*clusters_per_word.values()) == set(range(8))
    assert codebook.fit_info_["cells_used"] == len(cells)


def test_codebook_is_deterministic_for_a_seed_and_samples_large_inputs():
    cells, _ = clustered_cells(n_per=300)
    a = Codebook(k=8, seed=3, max_points_per_centroid=100).fit(cells)
    b = Codebook(k=8, seed=3, max_points_per_centroid=100).fit(cells)
    np.testing.assert_array_equal(a.centroids_, b.centroids_)
    assert a.fit_info_["cells_used"] == 800 and a.fit_info_["cells_total"] == 2400


def test_assign_keeps_the_grid_shape():
    cells, _ = clustered_cells()
    codebook = Codebook(k=8).fit(cells)
    grid = codebook.assign(cells[:64].reshape(4, 4, 4, 16))
    assert grid.shape == (4, 4, 4) and grid.dtype == np.uint16


@pytest.mark.parametrize("k", [0, 7, 12, 70_000])
def test_bad_k_is_refused_with_advice(k):
    with pytest.raises(ValueError, match="multiple of 8"):
        Codebook(k=k)


def test_too_few_cells_suggests_fewer_words():
    with pytest.raises(ValueError, match="use fewer words"):
        Codebook(k=64).fit(np.zeros((10, 4), np.float32))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.uint16, st.tuples(st.integers(1, 20), st.integers(1, 4), st.integers(1, 4)),
                  elements=st.integers(0, 63)))
def test_packed_and_unpacked_bags_agree(words):
    packed = pack_bags(words, 64)
    bags = unpack_bags(packed, 64)
    assert packed.shape == (len(words), 8)
    for row, grid in zip(bags, words):
        assert set(np.flatnonzero(row)) == set(np.unique(grid).tolist())
    np.testing.assert_array_equal(images_per_word(packed, 64), bags.sum(axis=0))
    assert word_counts(words, 64).sum() == words.size
