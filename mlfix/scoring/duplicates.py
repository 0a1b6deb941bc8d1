"""Exact and near copies of an image, grouped; copies under different labels; copies across splits.

- :func:`duplicate_groups`: a group id per sample. Exact copies share a non-zero ``content_hash``
  (the decoded pixels' digest, :func:`mlfix.data.quality.pixel_hash`) and always group; near copies
  are pairs of the shared kNN graph (:func:`mlfix.scoring.neighbours.embedding_neighbours`, the
  faiss index the votes use) whose cosine similarity is at least ``threshold``.
- :func:`duplicates_check` (the ``duplicates`` check): score = cosine to the closest copy (1.0 for an
  exact one), flag = in a group; a group whose members carry different labels is a label problem
  (``conflict``, and the group's majority label as ``suggested_label``).
- :func:`leak_check` (the ``leak`` check): members of a group that spans two or more splits.

Groups are the connected components (``scipy.sparse.csgraph.connected_components``) of the copy
edges, as fastdup and FiftyOne Brain build them. Plain components chain: a~b and b~c put a and c in
one group however unlike they are, and in a dense region of the embedding (plain backgrounds, one
sign type seen from a car) a chain of such edges grows one giant group. The guard: a near edge is
kept only when it is **mutual**, i.e. each end is among the other's :data:`MUTUAL_NEIGHBOURS`
closest neighbours (the mutual k-nearest-neighbour graph of Brito, Chavez, Quiroz & Yukich, 1997).
A hub near many images then links only to its few closest, and two tight clusters joined by weaker
cross pairs stay two groups, while a set of true copies, each other's closest, stays whole. What it
does not cut, by design: a chain of mutual copies (the frames of one sign as the car nears it) is one
group. The guard and the default :data:`NEAR_DUPLICATE_COSINE` were chosen by measurement on GTSRB
tracks (frames of one physical sign are true near copies) and CIFAR-10; see the constants' comments.

Example:
    >>> x = np.array([[1.0, 0.0, 0.0], [0.99, 0.05, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> duplicate_groups(x, content_hash=np.array([0, 0, 7, 7]), threshold=0.95).tolist()
    [0, 0, 1, 1]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import check_embeddings, check_ids, check_trusted, encode_labels
from mlfix.scoring.neighbours import DEFAULT_K, Neighbours, embedding_neighbours

# Default near-copy threshold on the cosine of the pooled vectors (efficientnet_lite0, offline weights),
# measured on whole GTSRB tracks (frames of one sign: true copies) and on CIFAR-10 (few copies):
# - CIFAR-10, 3,000 train airplanes, 96 px, by eye: at 0.91, 9 groups, all the same photo edited
#   (0.90: 12 groups, 2 of them two different planes; 0.85: 39, the largest ones merely alike; 0.92:
#   5). 2,000 random train images: one group at 0.91, the same car photo. 1,000 of the airplanes at
#   224 px (cosines run a little higher): as many groups as at 96 px, give or take one, 0.88 to 0.96.
# - GTSRB, 2,758 images (8 classes x 25 tracks), 96 px: at 0.91, 62% of the frames are grouped, the
#   copy a reason names is a frame of the same sign for 99.1% of them, 98.3% of the groups hold one
#   sign and none mixes two classes (0.90: 69%; 0.95: 24%, both 99% named right). 1,227 images at
#   224 px: 77% grouped, 99.8% named right, 99.3% of the groups one sign.
NEAR_DUPLICATE_COSINE = 0.91
# A near edge is kept only when each end is among the other's closest MUTUAL_NEIGHBOURS: the chain
# guard. Pairs inside groups that are frames of one sign, GTSRB at 0.90: 96 px (2,758 images) 29% with
# plain components (largest group 209), 69% with 5 (largest 88); 224 px (1,227) 72% plain, 78% with
# 10, 87% with 5.
MUTUAL_NEIGHBOURS = 5
# Near copies are searched only when the embedding tells images apart: when the typical image's
# TYPICAL_NEIGHBOUR-th closest neighbour is already at the near-copy threshold, a cosine above it says
# nothing (a random-init backbone: median 50th-neighbour cosine 0.993 on the demo digits, and every
# image "a copy"; offline Lite0: 0.49-0.66 on CIFAR-10, 0.71-0.75 on GTSRB). Exact copies still group.
TYPICAL_NEIGHBOUR = 50
# A near copy must also be much closer than the typical neighbour: its cosine distance at most
# RELATIVE_DISTANCE times the median distance to the TYPICAL_NEIGHBOUR-th neighbour, so in a set whose
# images all look alike the bar rises (the demo's rendered digits, Lite0: the 50th neighbour at median
# cosine 0.849, and at 0.91 79% of the images fell in 9 groups, most mixing digits; the bar rises to
# 0.970: 4 pairs, each one digit). Where it rose on GTSRB it costs recall, not precision (96 px: 62% ->
# 25% of the frames grouped, 224 px: 77% -> 37%); on CIFAR-10 it stays at NEAR_DUPLICATE_COSINE.
RELATIVE_DISTANCE = 0.2
THRESHOLDS = {"duplicates": NEAR_DUPLICATE_COSINE, "leak": 1.0}


def duplicate_groups(embeddings: np.ndarray, content_hash: np.ndarray | None = None,
                     neighbours: Neighbours | None = None,
                     threshold: float = NEAR_DUPLICATE_COSINE) -> np.ndarray:
    """(N,) int64 group id per sample, -1 = in no group; groups numbered 0.. by size, largest first.

    Args:
        embeddings: (N, D) pooled vectors (compared by cosine), e.g. the float16 memory map
            ``features/pooled.npy``: never copied whole, and not read at all when ``neighbours`` is given.
        content_hash: (N,) int64 pixel digests, 0 = unknown; equal non-zero digests always group.
        neighbours: the shared kNN graph of ``embeddings``; computed when None.
        threshold: a near edge needs cosine >= ``threshold`` (and to be mutual, see the module).

    >>> duplicate_groups(np.eye(3), content_hash=np.array([5, 0, 5])).tolist()
    [0, -1, 0]
    """
    return _copy_graph(_vectors(embeddings, neighbours), content_hash, neighbours, threshold)[0]


def _vectors(embeddings, neighbours: Neighbours | None) -> np.ndarray:
    """The embeddings as given (a float16 memory map stays one, never a float32 copy). With the graph
    given only their shape is checked, the values not read (25.6 GB at 10M x 1,280): the graph is all
    the check reads, and the search that made it checked them; without, they are checked chunk by
    chunk and the graph is searched from them."""
    x = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if neighbours is None or x.ndim != 2 or 0 in x.shape:
        return check_embeddings(x, convert=False)
    return x


def _copy_graph(x, content_hash, neighbours, threshold):
    """``(groups, edges)``: the group ids and the kept edges ``(i, j, cosine, exact)``, both directions.
    ``x`` is the checked embeddings, as given (a float16 memory map stays one): only a missing graph
    reads them, and :func:`~mlfix.scoring.neighbours.embedding_neighbours` does so chunk by chunk from
    APPROXIMATE_MIN rows."""
    n = x.shape[0]
    if neighbours is None:
        neighbours = embedding_neighbours(x, DEFAULT_K) if n > 1 else Neighbours(
            np.full((n, 0), -1, np.int64), np.zeros((n, 0), np.float32))
    elif neighbours.index.shape[0] != n:
        raise ValueError(f"neighbours were computed for {neighbours.index.shape[0]} samples, not {n}; "
                         "recompute them with embedding_neighbours(embeddings)")
    ei, ej, es = _exact_edges(content_hash, n)
    ni, nj, ns = _near_edges(neighbours, near_threshold(neighbours, threshold)) \
        if near_copies_unavailable(neighbours, threshold) is None \
        else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    i, j = np.concatenate([ei, ni, ej, nj]), np.concatenate([ej, nj, ei, ni])
    cosine = np.concatenate([es, ns, es, ns]).astype(np.float64)
    exact = np.concatenate([np.ones(len(ei), bool), np.zeros(len(ni), bool)] * 2)
    return _number_groups(i, j, n), (i, j, np.minimum(cosine, 1.0), exact)


def near_threshold(neighbours: Neighbours, threshold: float = NEAR_DUPLICATE_COSINE) -> float:
    """The cosine a near copy needs in this set: ``threshold``, raised where the typical
    :data:`TYPICAL_NEIGHBOUR`-th neighbour is close (see :data:`RELATIVE_DISTANCE`).

    >>> close = Neighbours(np.zeros((3, 60), np.int64), np.full((3, 60), 0.85, np.float32))
    >>> round(near_threshold(close), 3), near_threshold(Neighbours(close.index, close.similarity - 0.5))
    (0.97, 0.91)
    """
    typical = _typical_similarity(neighbours)
    return threshold if typical is None else max(threshold, 1.0 - RELATIVE_DISTANCE * (1.0 - typical))


def _typical_similarity(neighbours: Neighbours) -> float | None:
    """The median cosine to the TYPICAL_NEIGHBOUR-th closest neighbour (None without neighbours)."""
    similarity = neighbours.similarity
    if similarity.shape[1] == 0:
        return None
    return float(np.median(similarity[:, min(TYPICAL_NEIGHBOUR, similarity.shape[1]) - 1]))


def near_copies_note(neighbours: Neighbours, threshold: float = NEAR_DUPLICATE_COSINE) -> str | None:
    """What the duplicates check says about its near-copy search on these features: not searched
    (:func:`near_copies_unavailable`), or searched at a raised bar; None at the default."""
    unavailable = near_copies_unavailable(neighbours, threshold)
    if unavailable is not None:
        return unavailable
    bar = near_threshold(neighbours, threshold)
    if bar <= threshold:
        return None
    return (f"near copies need cosine >= {bar:.3f} here (not {threshold}): the images of this set are alike "
            f"(the typical {_ordinal(TYPICAL_NEIGHBOUR)} neighbour at cosine {_typical_similarity(neighbours):.3f}), "
            "so only pairs much closer than that count as copies")


def near_copies_unavailable(neighbours: Neighbours, threshold: float = NEAR_DUPLICATE_COSINE) -> str | None:
    """Why near copies cannot be told from merely similar images in this embedding (None when they
    can): the median cosine to the :data:`TYPICAL_NEIGHBOUR`-th closest neighbour reaches ``threshold``.

    >>> same = Neighbours(np.zeros((3, 60), np.int64), np.full((3, 60), 0.99, np.float32))
    >>> near_copies_unavailable(same)[:42]
    'near copies not searched: the typical imag'
    """
    typical = _typical_similarity(neighbours)
    if typical is None or typical < threshold:
        return None
    nth = _ordinal(min(TYPICAL_NEIGHBOUR, neighbours.similarity.shape[1]))
    return (f"near copies not searched: the typical image's {nth} "
            f"closest neighbour is already at cosine {typical:.3f} (>= {threshold}), so these features cannot "
            "tell a copy from a similar image (a random-init backbone?); exact copies were searched. "
            "Index with the offline or trained weights for near copies")


def _ordinal(n: int) -> str:
    """
    >>> [_ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 50)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '22nd', '23rd', '50th']
    """
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _exact_edges(content_hash: np.ndarray | None, n: int):
    """Each sample with a repeated non-zero hash linked to the first sample with that hash (a star)."""
    empty = np.zeros(0, np.int64)
    if content_hash is None:
        return empty, empty, np.zeros(0)
    digest = np.asarray(content_hash)
    if digest.shape != (n,):
        raise ValueError(f"content_hash must have one digest per sample, shape ({n},), got {digest.shape}")
    rows = np.flatnonzero(digest != 0)
    _, first, inverse = np.unique(digest[rows], return_index=True, return_inverse=True)
    leader = rows[first][inverse]
    copy = leader != rows
    return rows[copy], leader[copy], np.ones(int(copy.sum()))


def _near_edges(neighbours: Neighbours, threshold: float):
    """Directed kNN edges with cosine >= threshold that are mutual within MUTUAL_NEIGHBOURS."""
    index = neighbours.index[:, :MUTUAL_NEIGHBOURS]  # faiss returns the closest first
    similarity = neighbours.similarity[:, :MUTUAL_NEIGHBOURS]
    n, k = index.shape
    i, j, s = np.repeat(np.arange(n, dtype=np.int64), k), index.ravel(), similarity.ravel()
    keep = (j >= 0) & (j != i) & (s >= threshold)
    i, j, s = i[keep], j[keep], s[keep]
    mutual = np.isin(j * n + i, i * n + j)  # the reverse edge exists: each is among the other's closest
    return i[mutual & (i < j)], j[mutual & (i < j)], s[mutual & (i < j)]


def _number_groups(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the edges, numbered by size (largest first, ties by first member)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    size = np.bincount(component)
    first = np.unique(component, return_index=True)[1]  # each component's first row: a stable tie-break
    grouped = np.flatnonzero(size > 1)
    order = grouped[np.lexsort((first[grouped], -size[grouped]))]
    number = np.full(len(size), -1, np.int64)
    number[order] = np.arange(len(order))
    return number[component]


def _closest_copy(edges, n: int):
    """Per sample: ``(copy row or -1, cosine, exact)`` of its best kept edge (exact first on ties)."""
    i, j, cosine, exact = edges
    order = np.lexsort((~exact, -cosine, i))
    rows, first = np.unique(i[order], return_index=True)
    best = order[first]
    copy, score, is_exact = np.full(n, -1, np.int64), np.zeros(n), np.zeros(n, bool)
    copy[rows], score[rows], is_exact[rows] = j[best], cosine[best], exact[best]
    return copy, score, is_exact


def _majority(groups: np.ndarray, codes: np.ndarray, use: np.ndarray, size: int):
    """Per group (``size`` slots): ``(distinct labels, majority label or -1)`` over the rows in ``use``;
    ties go to the first class."""
    pairs, counts = np.unique(np.stack([groups[use], codes[use]]), axis=1, return_counts=True)
    distinct = np.bincount(pairs[0], minlength=size)
    order = np.lexsort((pairs[1], -counts, pairs[0]))
    group_of, first = np.unique(pairs[0][order], return_index=True)
    majority = np.full(size, -1, np.int64)
    majority[group_of] = pairs[1][order][first]
    return distinct, majority


def _group_labels(groups: np.ndarray, codes: np.ndarray, trusted: np.ndarray):
    """Per group, indexed by group id (-1, in no group, reads a last slot of zeros): the number of
    distinct labels, the reference label (the trusted members' majority when the group has any, else
    the majority) and whether a trusted member rules it. Unlabeled members are ignored."""
    size = int(groups.max(initial=-1)) + 2
    labeled = (groups >= 0) & (codes >= 0)
    distinct, reference = _majority(groups, codes, labeled, size)
    ruled, decided = _majority(groups, codes, labeled & trusted, size)
    ruled = ruled > 0
    return distinct, np.where(ruled, decided, reference), ruled


def duplicates_check(embeddings: np.ndarray, labels: Sequence | None, sample_ids: Sequence, *,
                     content_hash: np.ndarray | None = None, splits: pd.Series | None = None,
                     neighbours: Neighbours | None = None, trusted: np.ndarray | None = None,
                     threshold: float = NEAR_DUPLICATE_COSINE) -> pd.DataFrame:
    """The ``duplicates`` check: exact and near copies, and copies that carry different labels.

    Args:
        embeddings, content_hash, neighbours, threshold: as in :func:`duplicate_groups`.
        labels: (N,) labels, None/NaN = unlabeled (ignored in the conflict); None = no labels at all.
        sample_ids: (N,) ids; the reason names the closest copy by its id.
        splits: (N,) split of each sample (<NA> = none); the reason says when the copy is in another.
        trusted: (N,) bool, reviewed samples: still flagged (they are copies), but their label is
            right, so the group's reference label is theirs and they never conflict.

    Returns:
        ``DataFrame[sample_id, score, suggested_label, flag, reason, group, conflict]``: score = cosine
        to the closest copy (1.0 exact, 0 in no group); flag = in a group; conflict = its group carries
        more than one label (when a trusted member is in the group: its label differs from theirs);
        suggested_label = the group's reference label (majority, or the trusted members') on conflict.

    Example:
        >>> x = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
        >>> table = duplicates_check(x, ["cat", "dog", "cat"], ["a", "b", "c"], threshold=0.99)
        >>> table[["group", "conflict"]].values.tolist()
        [[0, True], [0, True], [-1, False]]
        >>> table.reason[0]
        'near copy of b (cosine 1.000); copies carry labels cat, dog'
    """
    x = _vectors(embeddings, neighbours)
    n = x.shape[0]
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    coded = encode_labels([None] * n if labels is None else labels, n)
    if neighbours is None and n > 1:
        neighbours = embedding_neighbours(x, DEFAULT_K)
    groups, edges = _copy_graph(x, content_hash, neighbours, threshold)
    copy, score, exact = _closest_copy(edges, n)
    distinct, reference, ruled = _group_labels(groups, coded.codes, mask)
    grouped, mixed = groups >= 0, distinct[groups] > 1
    # Without a reviewed member any of the labels may be the wrong one; with one, the others are.
    conflict = mixed & coded.labeled & ~mask & (~ruled[groups] | (coded.codes != reference[groups]))
    suggested = coded.decode(np.where(mixed, reference[groups], -1))
    reason = _duplicate_reasons(ids, copy, score, exact, groups, mixed, coded, splits)
    table = pd.DataFrame({"sample_id": ids, "score": np.where(grouped, score, 0.0),
                          "suggested_label": pd.Series(suggested, dtype=object), "flag": grouped,
                          "reason": reason, "group": groups, "conflict": conflict})
    if neighbours is not None:
        table.attrs["note"] = near_copies_note(neighbours, threshold)
    return table


def _duplicate_reasons(ids, copy, score, exact, groups, mixed, coded, splits) -> pd.Series:
    """'exact copy of X' / 'near copy of X (cosine 0.991)' [+ ' in split test'] [+ '; copies carry
    labels cat, dog'] for grouped samples, None for the others."""
    n = len(ids)
    reason = pd.Series([None] * n, dtype=object)
    rows = np.flatnonzero(groups >= 0)
    if len(rows) == 0:
        return reason
    other = pd.Series(ids[copy[rows]], dtype=object).astype(str)
    cosine = pd.Series(score[rows]).map("{:.3f}".format)
    text = pd.Series(np.where(exact[rows], "exact copy of " + other,
                              "near copy of " + other + " (cosine " + cosine + ")"), dtype=object)
    if splits is not None:
        split = _split_values(splits, n)
        mine, theirs = split[rows], split[copy[rows]]
        elsewhere = pd.notna(theirs) & (pd.isna(mine) | (mine != theirs))
        text = text.where(~elsewhere, text + " in split " + pd.Series(theirs, dtype=object).astype(str))
    text = text.where(~mixed[rows], text + "; copies carry labels " + _label_lists(groups, coded)
                      .reindex(groups[rows]).to_numpy(dtype=object))
    reason.iloc[rows] = text.to_numpy(dtype=object)
    return reason


def _label_lists(groups: np.ndarray, coded) -> pd.Series:
    """Per group id: its members' distinct labels, sorted, joined by ', '."""
    use = (groups >= 0) & coded.labeled
    pairs = pd.DataFrame({"group": groups[use], "code": coded.codes[use]}).drop_duplicates()
    pairs = pairs.sort_values(["group", "code"])
    pairs["label"] = pd.Series(coded.decode(pairs["code"].to_numpy()), index=pairs.index).astype(str)
    return pairs.groupby("group")["label"].agg(", ".join)


def _split_values(splits, n: int) -> np.ndarray:
    """(N,) object array of split names, None where unset; ValueError when not one per sample."""
    values = pd.Series(splits).reset_index(drop=True)
    if len(values) != n:
        raise ValueError(f"splits has {len(values)} entries but there are {n} samples; "
                         "pass one split per sample (<NA> for none)")
    return values.astype(object).where(values.notna(), None).to_numpy(dtype=object)


def leak_check(groups: np.ndarray, splits: pd.Series | None, sample_ids: Sequence) -> pd.DataFrame:
    """The ``leak`` check: copies of one image in two or more splits.

    Args:
        groups: (N,) group ids from :func:`duplicate_groups` (-1 = in no group).
        splits: (N,) split per sample (pandas Series, <NA> = none); None or all <NA>: no leak anywhere.
        sample_ids: (N,) ids.

    Returns:
        ``DataFrame[sample_id, score, suggested_label, flag, reason, group]``: score 1.0 for every member
        of a group spanning 2+ splits, else 0; reason names a copy in another split ("copy in split
        test of test/3.png").

    >>> table = leak_check(np.array([0, 0, 1, 1, -1]), pd.Series(["train", "test", "train", "train", "test"]),
    ...                    ["train/1.png", "test/3.png", "c", "d", "e"])
    >>> table.score.tolist(), table.reason[0]
    ([1.0, 1.0, 0.0, 0.0, 0.0], 'copy in split test of test/3.png')
    """
    group = np.asarray(groups, dtype=np.int64)
    n = len(group)
    ids = check_ids(sample_ids, n)
    split = _split_values(pd.Series([pd.NA] * n) if splits is None else splits, n)
    first, second = _split_leaders(group, split)
    spans = (group >= 0) & np.isin(group, second.index)
    reason = pd.Series([None] * n, dtype=object)
    rows = np.flatnonzero(spans)
    if len(rows):
        a, b = first.reindex(group[rows]).to_numpy(), second.reindex(group[rows]).to_numpy()
        other = np.where(split[rows] == split[a], b, a)  # a copy in a split that is not the sample's own
        reason.iloc[rows] = ("copy in split " + pd.Series(split[other], dtype=object).astype(str) + " of "
                             + pd.Series(ids[other], dtype=object).astype(str)).to_numpy(dtype=object)
    return pd.DataFrame({"sample_id": ids, "score": spans.astype(np.float64),
                         "suggested_label": pd.Series([None] * n, dtype=object), "flag": spans,
                         "reason": reason, "group": group})


def _split_leaders(group: np.ndarray, split: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """Per group (index): the first row of its first split and of its second split (splits in
    alphabetical order); a group with one split has no second."""
    member = (group >= 0) & pd.notna(split)
    leaders = (pd.DataFrame({"group": group[member], "split": split[member].astype(str),
                             "row": np.flatnonzero(member)})
               .sort_values(["group", "split", "row"]).drop_duplicates(["group", "split"]))
    rank = leaders.groupby("group").cumcount().to_numpy()
    first, second = (leaders[rank == r].set_index("group")["row"] for r in (0, 1))
    return first, second
