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
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring import ann
from mlfix.scoring.contract import (Labels, check_embeddings, check_ids, check_trusted, encode_labels,
                                    finish_score, score_frame)

if TYPE_CHECKING:
    import faiss

DEFAULT_K = 50  # neighbours per sample
# Rows from which neighbours come from an IVF index (mlfix.scoring.ann). Exact search costs N^2 D:
# at 20k x 1280 (float16 memmap, k=50, 2 shared cores) exact took 64 s and IVF 64 s (30 s to build);
# at 100k IVF took 654 s and exact ~25x its 20k time (~1,600 s); beyond, the gap grows as sqrt N.
# 100k keeps every project up to ~12.8 TFLOP of exact search (minutes on a workstation) exact.
APPROXIMATE_MIN = 100_000


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


def embedding_neighbours(embeddings: np.ndarray, k: int = DEFAULT_K, approximate: bool | None = None,
                         seed: int = 0) -> Neighbours:
    """The ``k`` nearest neighbours of every row by cosine similarity (faiss), self excluded.

    Exact up to APPROXIMATE_MIN rows; above, an IVF index (:mod:`mlfix.scoring.ann`: recall@k >= 0.95
    tuned per index, vectors read and converted chunk by chunk, so a float16 memmap is never loaded
    whole). ``approximate`` forces either path (None: by size; an approximate request under
    ``ann.MIN_ROWS`` rows is served exactly). ``seed`` seeds the index's training. ``k`` is capped at
    N - 1. The result depends only on the embeddings, so a caller that rescores after relabeling (the
    review loop) can compute it once and pass it to :func:`knn_vote`.

    >>> embedding_neighbours(np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), k=1).index.tolist()
    [[1], [0], [1]]
    """
    n = _rows(embeddings, "embeddings")
    if not _approximate(n, approximate):
        index, x = cosine_index(check_embeddings(embeddings))
        return search_without_self(index, x, k)
    k, read = _capped(n, k), unit_reader(embeddings)
    index = approximate_index(embeddings, k, seed, read)
    similarity, found = ann.search_all(index, read, n, k)
    return Neighbours(found, similarity)


def word_neighbours(bags: np.ndarray, k: int = DEFAULT_K, n_words: int | None = None,
                    approximate: bool | None = None, seed: int = 0) -> Neighbours:
    """The ``k`` images sharing the most visual words with every image, self excluded.

    ``bags`` is (N, k/8) packed uint8 (as ``mlfix.pipeline.codebook.pack_bags`` writes) or (N, k)
    bool. The similarity is the number of shared words, ``(x & y).sum()`` (the seed's ordering
    criterion), computed as an inner product of 0/1 vectors: exact in a faiss flat index up to
    APPROXIMATE_MIN rows, above in an IVF index holding each word as one byte (counts stay exact,
    only the probing is approximate; :mod:`mlfix.scoring.ann`). Bags are unpacked and searched a
    chunk at a time, so memory is the index plus one chunk, never O(N^2). ``approximate``, ``seed``:
    as in :func:`embedding_neighbours`.

    >>> bags = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    >>> near = word_neighbours(bags, k=1)
    >>> near.index.tolist(), near.similarity.tolist()
    ([[1], [0], [0]], [[2.0], [2.0], [1.0]])
    """
    import faiss

    n = _rows(bags, "bags")
    k = _capped(n, k)
    width = unpack(bags[:1], n_words).shape[1]  # checks the dtype early; each chunk checks its values

    def read(rows) -> np.ndarray:
        return unpack(np.asarray(bags[rows]), n_words).astype(np.float32)

    if _approximate(n, approximate):
        index = ann.build_ivf(read, n, width, seed, exact_bytes=True)
        index.nprobe = ann.tune_nprobe(index, read, n, k, seed)
    else:
        index = faiss.IndexFlatIP(width)
        for part in ann.chunks(n):
            index.add(read(part))
    similarity, found = ann.search_all(index, read, n, k)
    return Neighbours(found, similarity)


def approximate_index(embeddings: np.ndarray, k: int = DEFAULT_K, seed: int = 0, read=None):
    """A cosine IVF index over ``embeddings`` (N, D) (any float dtype, a memmap read in chunks), its
    ``nprobe`` tuned for recall@k (:func:`mlfix.scoring.ann.tune_nprobe`); query it with unit
    float32 vectors. For one-off queries (``Project.neighbours``) on millions of rows."""
    read = read or unit_reader(embeddings)
    n, dim = np.shape(embeddings)
    index = ann.build_ivf(read, n, dim, seed)
    index.nprobe = ann.tune_nprobe(index, read, n, min(k, n - 1), seed)
    return index


def search_index(embeddings: np.ndarray, approximate: bool | None = None, seed: int = 0):
    """A faiss cosine index over ``embeddings``: exact (:func:`cosine_index`) or, above
    APPROXIMATE_MIN rows, :func:`approximate_index`. Query it with unit float32 rows."""
    if _approximate(len(embeddings), approximate):
        return approximate_index(embeddings, DEFAULT_K, seed)
    return cosine_index(np.asarray(embeddings))[0]


def stored_search_index(embeddings: np.ndarray, path: Path, key: dict | None):
    """:func:`search_index`, kept in ``path`` (with ``key``, what made the vectors) when approximate:
    read back while the key matches, built and written otherwise. An exact index is cheap to build
    and as large as the vectors, so it is never stored."""
    import faiss

    from mlfix.atomic import atomic_path
    from mlfix.pipeline.artifacts import read_key, write_key

    if not _approximate(len(embeddings), None):
        return search_index(embeddings)
    key_path = Path(path).with_suffix(".key.json")
    if key is not None and read_key(key_path) == key and Path(path).is_file():
        return faiss.read_index(str(path))
    index = search_index(embeddings)
    with atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    write_key(key_path, key)
    return index


def neighbour_recall(vectors: np.ndarray, k: int = DEFAULT_K, sample: int = 1000, seed: int = 0) -> float:
    """Recall@k of the approximate index against exact search, on ``sample`` seeded query rows.

    Builds the index :func:`embedding_neighbours` builds above APPROXIMATE_MIN (same seed), searches
    the sampled rows, and counts the found neighbours at least as similar as the exact k-th (tie-aware
    recall: |found & exact| / k when similarities differ). The exact side is one chunked scan.

    >>> x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    >>> neighbour_recall(x, k=10, sample=100) >= 0.95
    True
    """
    n = _rows(vectors, "vectors")
    k, read = _capped(n, k), unit_reader(vectors)
    index = approximate_index(vectors, k, seed, read)
    rows = np.sort(np.random.default_rng(seed + 2).choice(n, size=min(n, sample), replace=False))
    return ann.probe_recall(index, read, n, k, rows)(index.nprobe)


def unit_reader(embeddings: np.ndarray):
    """rows -> those rows of ``embeddings`` as unit float32 (one chunk at a time), or ValueError
    when they hold NaN or infinite values."""
    def read(rows) -> np.ndarray:
        x = check_embeddings(np.array(embeddings[rows], dtype=np.float32))  # a copy: never the caller's
        x /= np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)  # as faiss.normalize_L2
        return x

    return read


def _rows(array, name: str) -> int:
    shape = np.shape(array)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N samples x D dims), got shape {shape}")
    return shape[0]


def approximate_min() -> int:
    """Rows from which the search is approximate (APPROXIMATE_MIN, read when called)."""
    return APPROXIMATE_MIN


def _approximate(n: int, approximate: bool | None) -> bool:
    if approximate is None:
        return n >= APPROXIMATE_MIN
    return bool(approximate) and n >= ann.MIN_ROWS


def _capped(n: int, k: int) -> int:
    if n < 2:
        raise ValueError("neighbour votes need at least 2 samples")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return min(k, n - 1)


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


def search_without_self(index, x: np.ndarray, k: int) -> Neighbours:
    """Each row of ``x`` (the vectors ``index`` holds, in its order) searched for its ``k`` nearest
    rows other than itself (``k + 1`` found, the row dropped wherever it ranks)."""
    k = _capped(x.shape[0], k)
    similarity, found = index.search(x, k + 1)
    similarity, found = ann.drop_self(similarity, found, np.arange(x.shape[0]), k)
    return Neighbours(found, similarity)


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
