"""Weighted bags of visual words (mlfix.pipeline.ordering.weighted): counts, tf-idf, focus weights,
unit rows ordered by the embedding chain, and a planted set where tf-idf orders better than bits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlfix.pipeline.codebook import pack_bags
from mlfix.pipeline.ordering import order as order_bags
from mlfix.pipeline.ordering.embedding import embedding_order
from mlfix.pipeline.ordering.weighted import (bag_counts, centre_weights, combined_vectors, document_frequency,
                                              inverse_document_frequency, saliency_weights, weighted_bags)
from mlfix.scoring.neighbours import knn_vote
from tests.pipeline.ordering.bags_for_tests import FAST, is_permutation


@st.composite
def word_grids(draw, max_n: int = 40):
    """(n, h, w) uint16 word ids below k, and k."""
    n, h, w = draw(st.integers(0, max_n)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    k = draw(st.integers(1, 40))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, k, (n, h, w)).astype(np.uint16), k


@FAST
@given(word_grids(), st.integers(1, 7))
def test_counts_equal_bincount_per_row(grid, chunk):
    words, k = grid
    expected = np.array([np.bincount(row.ravel(), minlength=k) for row in words]).reshape(len(words), k)
    assert np.array_equal(bag_counts(words, k), expected)
    df = document_frequency(words, k, chunk=chunk)  # chunked like the 1M path
    assert np.array_equal(df, (expected > 0).sum(axis=0))


def test_weights_per_cell_are_summed():
    words = np.array([[[0, 1], [1, 1]]], dtype=np.uint16)
    assert bag_counts(words, 2, weights=np.array([[1.0, 2.0], [3.0, 4.0]])).tolist() == [[1.0, 9.0]]
    per_image = np.array([[[0.5, 0.0], [0.0, 1.0]]])
    assert bag_counts(words, 2, weights=per_image).tolist() == [[0.5, 1.0]]
    with pytest.raises(ValueError, match="weights must be"):
        bag_counts(words, 2, weights=np.ones(3))
    with pytest.raises(ValueError, match="word ids must lie in 0..0"):
        bag_counts(words, 1)


def test_tfidf_of_a_word_in_every_image_is_zero():
    words = np.array([[0, 0, 1, 2], [0, 3, 3, 3], [0, 1, 1, 0]], dtype=np.uint16)
    bags = weighted_bags(words, 4, "tfidf")
    assert np.all(bags[:, 0] == 0)
    assert np.all(bags[[0, 1, 2], [1, 3, 1]] > 0)
    assert inverse_document_frequency(document_frequency(words, 4), 3)[0] == 0
    # the counts keep it: it is most of the first row's cells
    assert weighted_bags(words, 4, "counts")[0, 0] > 0.5


def test_idf_counts_only_readable_images():
    words = np.array([[0, 1], [0, 0], [1, 1]], dtype=np.uint16)
    ok = np.array([True, True, False])
    assert document_frequency(words, 2, ok).tolist() == [2, 1]
    assert inverse_document_frequency(np.array([2, 1, 0]), 2).tolist() == pytest.approx([0.0, np.log(2), 0.0])


@pytest.mark.parametrize("h, w", [(1, 1), (3, 3), (7, 7), (4, 6), (14, 14)])
def test_centre_weights_shape_sum_and_symmetry(h, w):
    weights = centre_weights(h, w)
    assert weights.shape == (h, w) and weights.dtype == np.float32
    assert weights.sum() == pytest.approx(h * w, rel=1e-5)  # mean 1: a weighted bag keeps the cell count
    assert np.allclose(weights, weights[::-1, ::-1])
    assert weights[(h - 1) // 2, (w - 1) // 2] == pytest.approx(weights.max())
    if h >= 3 and w >= 3:
        assert weights[0, 0] < weights[h // 2, w // 2] / 4
    with pytest.raises(ValueError, match="sigma"):
        centre_weights(h, w, sigma=0)


def test_saliency_weights_are_norms_over_the_image_mean():
    norms = np.array([[[1.0, 3.0], [2.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=np.float16)
    weights = saliency_weights(norms)
    assert weights.tolist() == [[[0.5, 1.5], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]
    with pytest.raises(ValueError, match="non-negative finite"):
        saliency_weights(np.array([[[np.nan]]]))


def test_focus_moves_weight_to_the_salient_cell():
    words = np.array([[[0, 1], [2, 3]]] * 3 + [[[0, 0], [0, 0]]], dtype=np.uint16)
    norms = np.array([[[4.0, 1.0], [1.0, 1.0]]] * 4)
    bags = weighted_bags(words, 4, "counts", focus=saliency_weights(norms))
    assert bags[0].argmax() == 0 and bags[0, 0] == pytest.approx(4 / np.sqrt(19))


@FAST
@given(word_grids(), st.sampled_from(["counts", "tfidf"]), st.booleans(), st.booleans())
def test_rows_are_unit_or_zero_and_the_chain_is_a_permutation(grid, weighting, sublinear, some_unreadable):
    words, k = grid
    n = len(words)
    ok = np.ones(n, bool)
    if some_unreadable and n:
        ok[::3] = False  # the index stores zero grids for them; they must become zero rows
    bags = weighted_bags(words, k, weighting, focus=centre_weights(*words.shape[1:]), ok=ok,
                         sublinear=sublinear, chunk=5)
    assert bags.shape == (n, k) and bags.dtype == np.float32
    norms = np.linalg.norm(bags, axis=1)
    assert np.all(norms[~ok] == 0)
    assert np.all((np.abs(norms[ok] - 1) < 1e-5) | (norms[ok] == 0))  # tf-idf: all words common -> 0
    if weighting == "counts":
        assert np.allclose(norms[ok], 1, atol=1e-5)
    start = n // 2
    chain = embedding_order(bags, start=start)
    assert is_permutation(chain, n) and (n == 0 or chain[0] == start)


def test_zero_rows_do_not_break_the_vote():
    words = np.repeat(np.array([[[1, 2]], [[3, 4]]], dtype=np.uint16), 5, axis=0)
    ok = np.ones(10, bool)
    ok[[0, 9]] = False
    bags = weighted_bags(words, 5, "tfidf", ok=ok)
    table = knn_vote(bags, list("aaaaabbbbb"), range(10), k=3)
    assert len(table) == 10 and table["score"].iloc[1:9].max() == 0.0
    assert is_permutation(embedding_order(bags), 10)


def test_float16_output_for_large_sets():
    words = np.random.default_rng(0).integers(0, 32, (50, 3, 3)).astype(np.uint16)
    half = weighted_bags(words, 32, dtype=np.float16)
    assert half.dtype == np.float16 and np.allclose(half, weighted_bags(words, 32), atol=1e-3)


def test_combined_vectors_mix_the_two_cosines():
    rng = np.random.default_rng(0)
    emb, bags = rng.normal(size=(6, 5)), rng.random((6, 8))
    x = combined_vectors(emb, bags, weight=0.5)
    assert x.shape == (6, 13)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    expected = unit(emb) @ unit(emb).T + 0.25 * unit(bags) @ unit(bags).T
    assert np.allclose(x @ x.T, expected, atol=1e-5)
    with pytest.raises(ValueError, match="one row per image"):
        combined_vectors(emb, bags[:3])
    with pytest.raises(ValueError, match="weight must be"):
        combined_vectors(emb, bags, weight=-1)


def test_bad_inputs_say_what_to_pass():
    with pytest.raises(ValueError, match="weighting must be one of"):
        weighted_bags(np.zeros((2, 2), np.uint16), 4, "bm25")
    with pytest.raises(ValueError, match="integer word ids"):
        weighted_bags(np.zeros((2, 2)), 4)
    with pytest.raises(ValueError, match="word grid"):
        weighted_bags(np.zeros(4, np.uint16), 4)
    with pytest.raises(ValueError, match="ok must be"):
        weighted_bags(np.zeros((2, 2), np.uint16), 4, ok=np.ones(3, bool))
    with pytest.raises(ValueError, match="idf must be"):
        weighted_bags(np.zeros((2, 2), np.uint16), 4, idf=np.ones(3))


def planted(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes on a shared background: every image has word 0 (4 cells), 4 of the background
    words 1-8 whatever its class (2 cells each) and 2 of its class's 10 own words (2 cells each).
    Bits count the background words as much as the class's; tf-idf weighs them down."""
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % 2

    def pick(pool: int, m: int) -> np.ndarray:
        return np.argsort(rng.random((n, pool)), axis=1)[:, :m]

    grid = np.hstack([np.zeros((n, 4), int), np.repeat(1 + pick(8, 4), 2, axis=1),
                      np.repeat(9 + 10 * classes[:, None] + pick(10, 2), 2, axis=1)])
    return grid.reshape(n, 4, 4).astype(np.uint16), classes


def purity(order: np.ndarray, truth: np.ndarray) -> float:
    same = truth[order]
    return float(np.mean(same[1:] == same[:-1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tfidf_orders_a_planted_set_better_than_bits(seed):
    words, classes = planted(seed=seed)
    by_bits = purity(order_bags(pack_bags(words, 32)), classes)
    by_tfidf = purity(embedding_order(weighted_bags(words, 32, "tfidf")), classes)
    assert by_tfidf >= 0.95
    assert by_bits <= 0.87


def test_index_combined_vectors_are_the_pooled_embedding_beside_the_sublinear_centred_bag():
    from mlfix.pipeline.ordering.weighted import index_combined_vectors

    rng = np.random.default_rng(1)
    words, pooled = rng.integers(0, 16, (20, 3, 3)).astype(np.uint16), rng.normal(size=(20, 4)).astype(np.float16)
    ok = np.arange(20) != 5
    bags = weighted_bags(words, 16, "tfidf", focus=centre_weights(3, 3), ok=ok, sublinear=True)
    expected = combined_vectors(pooled.astype(np.float32), bags)
    assert np.array_equal(index_combined_vectors(pooled, words, 16, ok), expected)
    with pytest.raises(ValueError, match=r"\(N, h, w\) word grid"):
        index_combined_vectors(pooled, words.reshape(20, 9), 16, ok)
