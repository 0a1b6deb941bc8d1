"""Neighbour votes: a sample whose neighbours carry another label is a suspected label error.

Two neighbour graphs, one vote:

- :func:`embedding_neighbours`: the ``k`` most cosine-similar pooled embeddings (an exact faiss
  index, :func:`cosine_index`); :func:`knn_vote` is the label vote over them (the ``knn`` check);
- :func:`word_neighbours`: the ``k`` images sharing the most visual words (the seed's ordering
  criterion); :func:`word_vote` is the same vote over them (the ``words`` check).

:func:`vote_shares` counts the votes: a neighbour votes with its similarity (clipped at 0), an
unlabeled neighbour never votes, a trusted (reviewed) neighbour counts ``trusted_weight`` times.
The score is 1 - the vote share of the given label; the suggestion is the label with the most votes.
Both methods follow :mod:`mlfix.scoring.contract`. The pooled embedding serves the ``knn`` vote
better than bags of words do (see the README's figures table, ``python -m bench.detect``), so the
words vote is a second view, not the default.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(np.eye(3, 8) * 4, 30, axis=0) + rng.normal(0, 1, (90, 8))  # 3 directions
    >>> y = np.repeat(["a", "b", "c"], 30); y[5] = "c"          # one planted error
    >>> table = knn_vote(x, y, [f"s{i}" for i in range(90)], k=10)
    >>> top = table.sort_values("score", ascending=False).iloc[0]
    >>> top.sample_id, float(top.score), top.suggested_label
    ('s5', 1.0, 'a')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import (Labels, check_embeddings, check_ids, check_trusted, encode_labels,
                                    finish_score, score_frame)

if TYPE_CHECKING:
    import faiss

DEFAULT_K = 50  # neighbours per sample


@dataclass(frozen=True)
class Neighbours:
    """``index`` (N, k) int64 neighbour rows (self excluded, -1 = none) and ``similarity`` (N, k)."""

    index: np.ndarray
    similarity: np.ndarray


def cosine_index(vectors: np.ndarray) -> tuple[faiss.IndexFlatIP, np.ndarray]:
    """An exact faiss cosine index over ``vectors`` (N, D); returns ``(index, unit vectors float32)``.

    >>> index, unit = cosine_index(np.array([[3.0, 4.0], [0.0, 2.0]]))
    >>> print(unit.round(2), index.ntotal)
    [[0.6 0.8]
     [0.  1. ]] 2
    """
    import faiss

    x = np.array(vectors, dtype=np.float32, copy=True)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index, x


def embedding_neighbours(embeddings: np.ndarray, k: int = DEFAULT_K) -> Neighbours:
    """The ``k`` nearest neighbours of every row by cosine similarity (faiss, exact), self excluded.

    ``k`` is capped at N - 1. The result depends only on the embeddings, so a caller that rescores
    after relabeling (the review loop) can compute it once and pass it to :func:`knn_vote`.

    >>> embedding_neighbours(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), k=1).index.tolist()
    [[1], [0], [1]]
    """
    index, x = cosine_index(check_embeddings(embeddings))
    return _search_without_self(index, x, k)


def word_neighbours(bags: np.ndarray, k: int = DEFAULT_K, n_words: int | None = None) -> Neighbours:
    """The ``k`` images sharing the most visual words with every image, self excluded.

    ``bags`` is (N, k/8) packed uint8 (as ``mlfix.pipeline.codebook.pack_bags`` writes) or (N, k)
    bool. The similarity is the number of shared words, ``(x & y).sum()`` (the seed's ordering
    criterion), computed as an inner product of 0/1 vectors in a faiss flat index: exact, searched in
    blocks, so memory is O(N x words), never O(N^2).

    >>> bags = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    >>> near = word_neighbours(bags, k=1)
    >>> near.index.tolist(), near.similarity.tolist()
    ([[1], [0], [0]], [[2.0], [2.0], [1.0]])
    """
    import faiss

    x = unpack(bags, n_words).astype(np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return _search_without_self(index, x, k)


def unpack(bags: np.ndarray, n_words: int | None = None) -> np.ndarray:
    """Bags of words as (N, k) bool, from packed uint8 (N, k/8, ``bitorder="little"`` as
    ``mlfix.pipeline.codebook.pack_bags`` writes) or bool/0-1 (N, k).

    >>> unpack(np.array([[5]], dtype=np.uint8), n_words=4).tolist()
    [[True, False, True, False]]
    """
    bags = np.asarray(bags)
    if bags.ndim != 2 or bags.shape[0] == 0:
        raise ValueError(f"bags must be a 2-D array (N images x words), got shape {bags.shape}")
    if bags.dtype == np.uint8:  # packed as mlfix.pipeline.codebook.pack_bags does: little bit order
        return np.unpackbits(bags, axis=1, count=n_words, bitorder="little").astype(bool)
    if bags.dtype == bool:
        return bags
    if np.isin(bags, (0, 1)).all():
        return bags.astype(bool)
    raise ValueError("bags must be packed uint8 (N, k/8) or bool (N, k); got dtype "
                     f"{bags.dtype} with values other than 0/1")


def _search_without_self(index, x: np.ndarray, k: int) -> Neighbours:
    n = x.shape[0]
    if n < 2:
        raise ValueError("neighbour votes need at least 2 samples")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, n - 1)
    similarity, found = index.search(x, k + 1)
    # Drop each row's own entry; when duplicates push self out of the top k+1, drop the last instead.
    is_self = found == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return Neighbours(found[keep].reshape(n, k).astype(np.int64), similarity[keep].reshape(n, k))


def vote_shares(neighbours: Neighbours, labels: Labels, weighted: bool = True,
                trusted: np.ndarray | None = None, trusted_weight: float = 2.0) -> np.ndarray:
    """(N, C) share of each class in the neighbours' labels, rows summing to 1 (0 without votes).

    Weighted: a neighbour's vote is its similarity (clipped at 0, so an anti-correlated neighbour
    does not vote); unlabeled neighbours never vote; trusted neighbours count ``trusted_weight`` x.

    >>> near = Neighbours(np.array([[1, 2], [0, 2], [0, 1]]), np.ones((3, 2)))
    >>> vote_shares(near, encode_labels(["a", "a", "b"])).tolist()
    [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]
    """
    idx = neighbours.index
    valid = idx >= 0
    codes = np.where(valid, labels.codes[np.where(valid, idx, 0)], -1)
    weight = np.clip(neighbours.similarity, 0, None).astype(np.float64) if weighted \
        else np.ones(idx.shape, dtype=np.float64)
    if trusted is not None and trusted_weight != 1.0:
        weight = weight * np.where(trusted[np.where(valid, idx, 0)], trusted_weight, 1.0)
    weight = np.where(codes >= 0, weight, 0.0)
    n, c = idx.shape[0], len(labels.classes)
    shares = np.zeros((n, max(c, 1)), dtype=np.float64)
    rows = np.repeat(np.arange(n), idx.shape[1])
    np.add.at(shares, (rows, np.where(codes >= 0, codes, 0).ravel()), weight.ravel())
    total = shares.sum(axis=1, keepdims=True)
    return np.divide(shares, total, out=np.zeros_like(shares), where=total > 0)[:, :c]


def _vote_frame(shares: np.ndarray, labels: Labels, sample_ids: np.ndarray,
                trusted: np.ndarray) -> pd.DataFrame:
    n = len(sample_ids)
    has_votes = shares.sum(axis=1) > 0
    given = np.where(labels.labeled, labels.codes, 0)
    score = 1.0 - shares[np.arange(n), given] if shares.shape[1] else np.ones(n)
    score = np.where(has_votes, score, np.nan)  # no labeled neighbour: no evidence either way
    suggested = labels.decode(np.where(has_votes, shares.argmax(axis=1) if shares.shape[1] else -1, -1))
    return score_frame(sample_ids, finish_score(score, labels, trusted), suggested)


def knn_vote(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence, k: int = DEFAULT_K,
             weighted: bool = True, trusted: np.ndarray | None = None, trusted_weight: float = 2.0,
             neighbours: Neighbours | None = None) -> pd.DataFrame:
    """Label disagreement with the ``k`` nearest neighbours in embedding space.

    Args:
        embeddings: (N, D) pooled vectors; compared by cosine similarity.
        labels: (N,) given labels, None/NaN for unlabeled.
        sample_ids: (N,) ids, copied to the output.
        k: neighbours per sample (capped at N - 1).
        weighted: weight each neighbour's vote by its cosine similarity.
        trusted: (N,) bool, reviewed samples (score pinned to 0, vote counts ``trusted_weight`` x).
        neighbours: precomputed :func:`embedding_neighbours` (to rescore after relabeling).

    Returns:
        ``DataFrame[sample_id, score, suggested_label]``; score = 1 - vote share of the given label.

    Example:
        >>> x = np.eye(4).repeat(5, axis=0) + 0.01 * np.arange(20)[:, None]
        >>> float(knn_vote(x, list("aaaaabbbbbcccccddddc"), range(20), k=4).score.iloc[-1])
        1.0
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    coded, ids, mask = encode_labels(labels, n), check_ids(sample_ids, n), check_trusted(trusted, n)
    if neighbours is None:
        neighbours = embedding_neighbours(x, k)
    elif neighbours.index.shape[0] != n:
        raise ValueError(f"neighbours were computed for {neighbours.index.shape[0]} samples, not {n}; "
                         "recompute them with embedding_neighbours(embeddings)")
    shares = vote_shares(neighbours, coded, weighted, mask, trusted_weight)
    return _vote_frame(shares, coded, ids, mask)


def word_vote(bags: np.ndarray, labels: Sequence, sample_ids: Sequence, k: int = DEFAULT_K,
              weighted: bool = True, trusted: np.ndarray | None = None, trusted_weight: float = 2.0,
              n_words: int | None = None, neighbours: Neighbours | None = None) -> pd.DataFrame:
    """Label disagreement with the ``k`` images that share the most visual words.

    Args:
        bags: (N, words/8) packed uint8 or (N, words) bool bags of visual words.
        labels, sample_ids, k, weighted, trusted, trusted_weight: as in :func:`knn_vote`; the
            weight of a neighbour is the number of words it shares.
        n_words: the codebook size when it is not a multiple of 8 (packed bags only).
        neighbours: precomputed :func:`word_neighbours`.

    Example:
        >>> bags = np.zeros((6, 16), bool); bags[:3, :8] = True; bags[3:, 8:] = True
        >>> word_vote(bags, list("aaabba"), range(6), k=2).score.tolist()
        [0.0, 0.0, 0.0, 0.5, 0.5, 1.0]
    """
    n = np.asarray(bags).shape[0]
    coded, ids, mask = encode_labels(labels, n), check_ids(sample_ids, n), check_trusted(trusted, n)
    if neighbours is None:
        neighbours = word_neighbours(bags, k, n_words)
    shares = vote_shares(neighbours, coded, weighted, mask, trusted_weight)
    return _vote_frame(shares, coded, ids, mask)
