"""Neighbour votes: the graphs (embeddings, shared visual words) and the vote shares."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.scoring import contract as score_contract
from mlfix.scoring import neighbours


def test_word_vote_accepts_bool_bags_and_counts_shared_words():
    bags = np.zeros((5, 12), dtype=bool)
    bags[0, :6] = bags[1, :5] = bags[2, :4] = True  # 0 shares 5 words with 1, 4 with 2
    bags[3, 6:] = bags[4, 7:] = True
    near = neighbours.word_neighbours(bags, k=2, n_words=12)
    assert near.index[0].tolist() == [1, 2] and near.similarity[0].tolist() == [5.0, 4.0]
    packed = np.packbits(bags, axis=1, bitorder="little")  # as mlfix.pipeline.codebook.pack_bags; 2 bytes
    table_bool = neighbours.word_vote(bags, list("aabbb"), range(5), k=2)
    table_packed = neighbours.word_vote(packed, list("aabbb"), range(5), k=2, n_words=12)
    pd.testing.assert_frame_equal(table_bool, table_packed)
    assert table_bool["score"].idxmax() == 2  # its neighbours 0 and 1 say "a"


def test_duplicate_embeddings_still_exclude_one_self_match():
    x = np.ones((4, 3), dtype=np.float32)  # all identical: faiss may return self anywhere
    near = neighbours.embedding_neighbours(x, k=3)
    assert all(sorted(row) == sorted(set(range(4)) - {i}) for i, row in enumerate(near.index.tolist()))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=3, max_size=30), st.integers(1, 6),
       st.integers(0, 2**16))
def test_vote_shares_are_distributions_and_scores_in_unit_interval(labels, k, seed):
    x = np.random.default_rng(seed).normal(size=(len(labels), 4))
    near = neighbours.embedding_neighbours(x, k)
    coded = score_contract.encode_labels(labels)
    shares = neighbours.vote_shares(near, coded)
    total = shares.sum(axis=1)
    assert np.all(np.isclose(total, 1.0) | (total == 0))
    table = neighbours.knn_vote(x, labels, range(len(labels)), k=k)
    score = table["score"].dropna()
    assert ((score >= 0) & (score <= 1)).all()
    assert table["score"].isna().sum() >= sum(v is None for v in labels)


def test_packed_bags_unpack_like_the_codebook():
    from mlfix.pipeline.codebook import pack_bags, unpack_bags

    words = np.random.default_rng(0).integers(0, 64, size=(20, 3, 3))
    packed = pack_bags(words, 64)
    np.testing.assert_array_equal(neighbours.unpack(packed), unpack_bags(packed, 64))
