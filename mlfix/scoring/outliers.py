"""Outliers: images far from their nearest neighbours, and images far from their own class.

- :func:`outlier_check` (the ``outlier`` check): the mean cosine distance to the :data:`OUTLIER_K`
  nearest neighbours of the shared kNN graph (:func:`mlfix.scoring.neighbours.embedding_neighbours`),
  as cleanlab's Datalab scores outliers (its ``OutlierIssueManager`` averages the kNN distances).
- :func:`class_outlier_check` (the ``class_outlier`` check): the mean cosine distance to the
  :data:`CLASS_K` closest other samples of the sample's own class; NaN for unlabeled samples. A class
  is often several clusters (the tracks of one sign, the breeds of one animal), so the distance to
  its nearest members judges better than the distance to the class's mean direction: with 2% of
  GTSRB labels flipped (8 classes, 2,758 images, efficientnet_lite0 offline at 96 px), 75% of the
  top 55 are flipped labels with CLASS_K = 5 (71% with 10, 64% with 20, 49% with the mean direction).

How far is far depends on the set (a backbone, an image size, a class that is tight or loose), so
both scores are **robust z-scores** of those distances: ``(d - median) / (1.4826 * MAD)``, over the
whole set for ``outlier`` and within each class for ``class_outlier`` (the modified z-score of
Iglewicz & Hoaglin, 1993, whose customary cut-off 3.5 is :data:`ROBUST_Z`). A sample is flagged at
``score >= THRESHOLDS[check]``; the raw distance is kept in the ``distance`` column and quoted in the
reason, with the sample's rank. The spread is floored at :data:`MIN_SPREAD` so that a set of near
copies (all distances alike) does not turn tiny differences into huge scores.

Measured (efficientnet_lite0 offline, 96 px): 20 CIFAR-10 images planted among 2,758 GTSRB signs are
all flagged by ``outlier`` (48 flagged: precision 0.42, recall 1.0; 19 of the top 20 are planted;
OUTLIER_K 5, 20 and 50 did no better). With 2% of those GTSRB labels flipped, ``class_outlier``
flags 74 (precision 0.60, recall 0.80).

At scale (a float16 memory map of millions of rows): ``class_outlier`` reads the vectors one class at
a time, the queries in chunks. A class of more than :data:`REFERENCE_MAX` samples is compared with a
fixed :data:`REFERENCE_MAX` of its members (those whose sample ids hash lowest), not all: every member
is still scored, but a class costs m x REFERENCE_MAX x D, not m^2 x D, so the check grows linearly
with N whatever the class sizes. From APPROXIMATE_MIN labeled rows a flagged sample's closest class is sought among the
:data:`CLOSEST_CANDIDATES` classes of nearest mean direction, not all (``python -m bench.scale_checks``;
figures in docs/scale.md).

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(0, 1, (60, 8)) + 6.0; x[7] = -x[7]     # one vector points the other way
    >>> from mlfix.scoring.neighbours import embedding_neighbours
    >>> table = outlier_check(embedding_neighbours(x, k=10), [f"s{i}" for i in range(60)])
    >>> table.sort_values("score", ascending=False).sample_id.iloc[0], int(table.flag.sum())
    ('s7', 1)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring import ann
from mlfix.scoring.contract import (TRUSTED_SCORE, check_embeddings, check_ids, check_trusted,
                                    encode_labels)
from mlfix.scoring.neighbours import Neighbours, approximate_min, cosine_index, search_without_self

OUTLIER_K = 10  # neighbours averaged: the closest few, so a small cluster of odd images is still odd
CLASS_K = 5  # same-class neighbours averaged (5 beat 10, 20 and the class centre on GTSRB)
ROBUST_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score
MIN_SPREAD = 0.01  # floor of 1.4826 * MAD, in cosine distance
MIN_CLASS = 3  # a class needs this many labeled samples to judge one of them
# From APPROXIMATE_MIN labeled rows a flagged sample's closest class is sought among this many other
# classes, those whose mean direction is nearest its own, not all: exact over all classes costs
# flagged x N x D (5% flagged at 1M x 256: 1.3e13 multiply-adds, most of the 1,335 s that
# docs/scale.md measured). On bench.scale's 200k x 256 vectors (100 classes of 2k, 9,911 flagged) it
# named the same class as the search of all classes for every flagged row, in 17 instead of 46 CPU s.
CLOSEST_CANDIDATES = 10
# A class of more than this many samples is compared with a fixed subset of this many of its members
# (:func:`_reference`). Exact search of a class costs m^2 x D: 38 s for one class of 100k x 256 on 2
# cores, ~65 min for the 100 such classes of 10M rows. The IVF index that served large classes before
# is no help here: within a class there is little structure for its lists, so its nprobe was tuned to
# scan nearly all of them (186 s for that class). Detection did not suffer at a cap of 1/4 of the class
# (python -m bench.class_reference): on CIFAR-10N 50k (one annotator's labels, classes of 5k) AUROC
# 0.716 capped at 1,250 vs 0.718 uncapped, precision of the flags 0.85 vs 0.83; on 2 synthetic
# classes of 100k x 256 (200 modes of Zipf sizes, 2% planted from the other) capped at 25k: AUROC
# 0.875 vs 0.835, precision 0.991 vs 0.999, recall 0.41 vs 0.19, 19 s instead of 82. Planted rows
# find each other among all members; fewer of them are in a subset. At 1/10 precision fell to 0.87
# there (members of rare modes flagged).
REFERENCE_MAX = 25_000
THRESHOLDS = {"outlier": ROBUST_Z, "class_outlier": ROBUST_Z}


def robust_z(values: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(z, median)``: modified z-scores of ``values`` (within each group when given) and the median
    each was measured against. NaN values stay NaN and are left out of the medians.

    >>> z, median = robust_z(np.array([1.0, 1.1, 0.9, 1.0, 3.0]))
    >>> z.round(1).tolist(), float(median[0])
    ([0.0, 0.7, -0.7, 0.0, 13.5], 1.0)
    """
    frame = pd.DataFrame({"v": np.asarray(values, dtype=np.float64),
                          "g": np.zeros(len(values), np.int64) if groups is None else groups})
    by = frame.groupby("g")["v"]
    median = by.transform("median").to_numpy()
    deviation = pd.Series(np.abs(frame["v"].to_numpy() - median)).groupby(frame["g"]).transform("median")
    spread = np.maximum(1.4826 * deviation.to_numpy(), MIN_SPREAD)
    return (frame["v"].to_numpy() - median) / spread, median


def _rank(values: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rank, of)``: 1 = the largest value (within its group), and how many were ranked."""
    frame = pd.DataFrame({"v": values, "g": 0 if groups is None else groups})
    by = frame.groupby("g")["v"]
    return by.rank(ascending=False, method="min").to_numpy(), by.transform("count").to_numpy()


def outlier_check(neighbours: Neighbours, sample_ids: Sequence, k: int = OUTLIER_K) -> pd.DataFrame:
    """The ``outlier`` check: far from the nearest neighbours.

    Args:
        neighbours: the shared kNN graph (closest first; -1 = none).
        sample_ids: (N,) ids.
        k: how many of the closest neighbours are averaged.

    Returns:
        ``DataFrame[sample_id, score, suggested_label, flag, reason, distance]``: distance = mean cosine
        distance to the ``k`` nearest neighbours; score = its robust z over the set (NaN when a sample
        has no neighbour); flag = score >= ``THRESHOLDS["outlier"]``.
    """
    index, similarity = neighbours.index[:, :k], neighbours.similarity[:, :k].astype(np.float64)
    ids = check_ids(sample_ids, index.shape[0])
    valid = index >= 0
    count = valid.sum(axis=1)
    total = np.where(valid, 1.0 - similarity, 0.0).sum(axis=1)
    distance = np.divide(total, count, out=np.full(len(ids), np.nan), where=count > 0)
    score, median = robust_z(distance)
    flag = score >= THRESHOLDS["outlier"]
    rank, of = _rank(distance)
    used = min(k, index.shape[1])
    text = pd.Series([f"mean cosine distance {d:.3f} to its {used} nearest neighbours "
                      f"(rank {r:.0f} of {o:.0f}; median {m:.3f})"
                      for d, r, o, m in zip(distance[flag], rank[flag], of[flag], median[flag])], dtype=object)
    return _table(ids, score, flag, text, distance)


def class_outlier_check(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence,
                        trusted: np.ndarray | None = None, k: int = CLASS_K) -> pd.DataFrame:
    """The ``class_outlier`` check: far from the other samples of its own class.

    Args:
        embeddings: (N, D) pooled vectors, e.g. the float16 memory map ``features/pooled.npy``: read one
            class at a time (at most REFERENCE_MAX rows of it held, the queries read in chunks), never
            copied whole.
        labels: (N,) labels, None/NaN = unlabeled (score NaN).
        sample_ids: (N,) ids.
        trusted: (N,) bool, reviewed samples: their label is right, so score 0 and no flag (they still
            count as neighbours of their class).
        k: how many of the closest samples of the class are averaged.

    Returns:
        ``DataFrame[sample_id, score, suggested_label, flag, reason, distance]``: distance = mean cosine
        distance to the ``k`` closest other samples of its class (of its REFERENCE_MAX subset when the
        class is larger); score = its robust z within the class
        (NaN for unlabeled samples and classes of fewer than :data:`MIN_CLASS`); the reason names the
        class whose samples are closest (by the same measure) when it is another.

    Example:
        >>> x = np.repeat(np.eye(2, 4), 10, axis=0) + 0.1 * np.arange(20)[:, None] % 0.3
        >>> labels = ["a"] * 10 + ["b"] * 9 + ["a"]                 # the last "a" lies among the "b"
        >>> table = class_outlier_check(x, labels, range(20))
        >>> table.sort_values("score", ascending=False).sample_id.iloc[0]
        19
        >>> table.reason[19]
        'mean cosine distance 0.759 to the 5 closest of class a (rank 1 of 11; median 0.005); closest class: b'
    """
    x = check_embeddings(embeddings, convert=False)  # a float16 memory map stays one: read class by class
    n = x.shape[0]
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    coded = encode_labels(labels, n)
    members = _class_members(coded.codes)
    references = {code: _reference(rows, ids) for code, rows in members}
    distance, directions = _same_class_distance(x, members, references, k)
    score, median = robust_z(distance, coded.codes)
    score = np.where(mask & ~np.isnan(score), TRUSTED_SCORE, score)
    flag = (score >= THRESHOLDS["class_outlier"]) & ~mask
    near = coded.decode(_closest_class(x, coded.codes, members, references, np.flatnonzero(flag), distance[flag],
                                       k, directions))
    rank, of = _rank(distance, coded.codes)
    names = coded.decode(coded.codes)
    text = pd.Series([f"mean cosine distance {d:.3f} to the {k} closest of class {name} (rank {r:.0f} of "
                      f"{o:.0f}; median {m:.3f})" + (f"; closest class: {other}" if other != name else "")
                      for d, name, r, o, m, other in zip(distance[flag], names[flag], rank[flag], of[flag],
                                                         median[flag], near)], dtype=object)
    return _table(ids, score, flag, text, distance)


def _class_members(codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(code, its rows ascending)`` of every labeled class, from one stable sort of the codes
    (not a boolean mask over all N rows per class).

    >>> [(code, rows.tolist()) for code, rows in _class_members(np.array([1, -1, 0, 1, 0]))]
    [(0, [2, 4]), (1, [0, 3])]
    """
    labeled = np.flatnonzero(codes >= 0)
    order = labeled[np.argsort(codes[labeled], kind="stable")]
    classes, starts = np.unique(codes[order], return_index=True)
    return list(zip(classes.tolist(), np.split(order, starts[1:])))


def _reference(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The members a class's samples are compared with: all its ``rows`` up to REFERENCE_MAX, else the
    REFERENCE_MAX whose sample ids hash lowest (ascending). A hash of each id, not a random draw from
    the class: a relabelled sample changes a class's reference by at most one member, and a rerun
    (or a class that sorts elsewhere) picks the same ones.

    >>> ids = np.array([f"img{i}" for i in range(REFERENCE_MAX + 10)], dtype=object)
    >>> len(_reference(np.arange(10), ids)), len(_reference(np.arange(len(ids)), ids)) == REFERENCE_MAX
    (10, True)
    """
    if len(rows) <= REFERENCE_MAX:
        return rows
    key = pd.util.hash_array(np.asarray(ids[rows], dtype=object))
    return np.sort(rows[np.argpartition(key, REFERENCE_MAX - 1)[:REFERENCE_MAX]])


def _same_class_distance(x: np.ndarray, members: list, references: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distance, directions)``: (N,) mean cosine distance of each labeled sample to the ``k`` closest
    others of its class's reference (:func:`_reference`; NaN when unlabeled or its class has fewer than
    MIN_CLASS samples), and (C, D) each class's mean unit vector (over its reference).

    An exact faiss index per class over its reference (at most REFERENCE_MAX rows gathered); the
    class's rows are its queries, read a chunk at a time. Never the whole (N, D) array as float32."""
    distance = np.full(len(x), np.nan)
    directions = np.zeros((max((code for code, _ in members), default=-1) + 1, x.shape[1]), np.float32)
    for code, rows in members:
        reference = references[code]
        index, unit = cosine_index(x[reference])
        directions[code] = unit.sum(axis=0)
        if len(rows) < MIN_CLASS:
            continue
        if len(reference) == len(rows):
            similarity = search_without_self(index, unit, k).similarity
        else:
            similarity = _search_reference(index, x, rows, reference, k)
        distance[rows] = 1.0 - similarity.mean(axis=1)
    directions /= np.clip(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12, None)
    return distance, directions


def _search_reference(index, x: np.ndarray, rows: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """(len(rows), k) similarities of each row of a class to its ``k`` closest reference members other
    than itself (``k + 1`` found; a row in the reference drops itself, any other its last), a chunk of
    rows at a time."""
    k = min(k, len(reference) - 1)
    similarity = np.empty((len(rows), k), np.float32)
    for part in ann.chunks(len(rows)):
        query = rows[part]
        at = np.minimum(np.searchsorted(reference, query), len(reference) - 1)
        own = np.where(reference[at] == query, at, -2)  # -2: not in the reference (-1 is faiss's "none")
        similarity[part] = ann.drop_self(*index.search(_unit(x[query]), k + 1), own, k)[0]
    return similarity


def _closest_class(x: np.ndarray, codes: np.ndarray, members: list, references: dict, rows: np.ndarray,
                   own: np.ndarray, k: int, directions: np.ndarray) -> np.ndarray:
    """For ``rows`` (the flagged): the class whose ``k`` closest samples are nearest on average;
    ``own`` is their distance to their own class (which must not count them as their own neighbour).

    Under APPROXIMATE_MIN labeled rows, every class is searched exactly for every flagged row. From
    there, each flagged row searches only the :data:`CLOSEST_CANDIDATES` other classes whose mean
    direction is nearest its own (:func:`_asked`), a chunk of flagged rows at a time. A class is
    searched in its reference (``references``, :func:`_reference`), as its own samples were."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    distance = np.full((len(rows), len(directions)), np.inf)
    asked = _asked(x, rows, directions, codes[rows], sum(len(r) for _, r in members))
    for code, class_rows in members:
        which = np.arange(len(rows)) if asked is None else asked.get(code, np.zeros(0, np.int64))
        if len(which) == 0:
            continue
        index = cosine_index(x[references[code]])[0]  # gathered again: C indexes kept would be C x 25k x D
        for part in ann.chunks(len(which)):  # the flagged rows that search this class, read a chunk at a time
            similarity, _ = index.search(_unit(x[rows[which[part]]]), min(k, index.ntotal))
            distance[which[part], code] = 1.0 - similarity.mean(axis=1)
    distance[np.arange(len(rows)), codes[rows]] = own
    return distance.argmin(axis=1)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as unit float32 rows, normalised by faiss as :func:`cosine_index` does."""
    import faiss

    unit = np.array(vectors, dtype=np.float32, copy=True)
    faiss.normalize_L2(unit)
    return unit


def _asked(x: np.ndarray, rows: np.ndarray, directions: np.ndarray, own: np.ndarray, n: int) -> dict | None:
    """``{class code: positions in rows of the flagged samples that search it}``: each one's
    CLOSEST_CANDIDATES classes of nearest mean direction, its own left out (its distance is known);
    None (every class for every one) under APPROXIMATE_MIN labeled rows ``n`` or when no class would be
    left out. Exact search of every class costs flagged x N x D: 5% of 1M x 256 flagged, 1.3e13
    multiply-adds. The flagged rows are read a chunk at a time."""
    if n < approximate_min() or len(directions) - 1 <= CLOSEST_CANDIDATES:
        return None
    picked = np.empty((len(rows), CLOSEST_CANDIDATES), np.int64)
    for part in ann.chunks(len(rows)):
        similarity = _unit(x[rows[part]]) @ directions.T
        similarity[np.arange(len(similarity)), own[part]] = -np.inf
        picked[part] = np.argpartition(-similarity, CLOSEST_CANDIDATES - 1, axis=1)[:, :CLOSEST_CANDIDATES]
    query = np.repeat(np.arange(len(rows)), CLOSEST_CANDIDATES)
    order = np.argsort(picked.ravel(), kind="stable")
    classes, starts = np.unique(picked.ravel()[order], return_index=True)
    return dict(zip(classes.tolist(), np.split(query[order], starts[1:])))


def _table(ids: np.ndarray, score: np.ndarray, flag: np.ndarray, text: pd.Series,
           distance: np.ndarray) -> pd.DataFrame:
    n = len(ids)
    reason = pd.Series([None] * n, dtype=object)
    reason.iloc[np.flatnonzero(flag)] = text.to_numpy(dtype=object)
    return pd.DataFrame({"sample_id": ids, "score": np.asarray(score, dtype=np.float64),
                         "suggested_label": pd.Series([None] * n, dtype=object), "flag": flag,
                         "reason": reason, "distance": distance})
