"""Suggested labels for the samples nobody labelled yet, from the few that are: labelling from scratch.

Once a reviewer has named a few images (or clusters) per class, every other image gets a suggested
label and a confidence, so that the reviewer confirms suggestions instead of typing them
(:meth:`mlfix.project.Project.suggest`). Two ways to suggest, one table:

==========  ========================================================================================
``knn``     the weighted vote of the ``k`` nearest *labelled* samples in embedding space
            (:func:`labelled_neighbours`, :func:`mlfix.scoring.neighbours.vote_shares`); confidence
            = the winning class's share.
            Works from a handful of labels; the default while labels are few.
``probe``   the linear probe (:func:`mlfix.scoring.probe.out_of_fold_probabilities`) fitted on the
            labelled part; confidence = its probability of the suggested class. Labelled samples
            get out-of-fold predictions (a model that never saw them). Better once each class has
            tens of labels.
==========  ========================================================================================

``method="auto"`` takes the probe when every class has at least :data:`PROBE_MIN_PER_CLASS`
labels, else the kNN vote. The result is ``DataFrame[sample_id, suggested_label, confidence,
source]`` (:data:`SUGGEST_COLUMNS`), most confident first; ``source`` names the method. Fewer than
two classes among the labels gives an empty table whose ``attrs["reason"]`` says why and what to
do (never an exception: "nothing to suggest yet" is a normal state of a new project).

Example (three blobs, two labels each; the rest get the right class):
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(np.eye(3, 8) * 4, 20, axis=0) + rng.normal(0, 1, (60, 8))
    >>> labels = np.full(60, None, dtype=object)
    >>> labels[[0, 1, 20, 21, 40, 41]] = ["a", "a", "b", "b", "c", "c"]
    >>> table = suggest_labels(x, labels, [f"s{i}" for i in range(60)], k=5)
    >>> len(table), sorted(table.suggested_label.unique()), table.source.iloc[0]
    (54, ['a', 'b', 'c'], 'knn')
    >>> suggest_labels(x, [None] * 60, range(60)).attrs["reason"][:9]
    'no labels'
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import check_embeddings, check_ids, check_trusted, encode_labels
from mlfix.scoring.neighbours import Neighbours, search_index, vote_shares

SUGGEST_COLUMNS = ["sample_id", "suggested_label", "confidence", "source"]
METHODS = ("auto", "knn", "probe")
SCOPES = ("unlabeled", "all")
DEFAULT_K = 15  # neighbours that vote: fewer than the scores' 50, labels are scarce here
PROBE_MIN_PER_CLASS = 20  # "auto" fits the probe once every class has this many labels


QUERY_CHUNK = 32_768  # rows per neighbour query


def empty_suggestions(reason: str) -> pd.DataFrame:
    """An empty suggestions table with ``attrs["reason"]`` saying why there is nothing to suggest.

    >>> empty_suggestions("no labels yet").attrs["reason"]
    'no labels yet'
    """
    table = pd.DataFrame({"sample_id": pd.Series([], dtype=object),
                          "suggested_label": pd.Series([], dtype=object),
                          "confidence": pd.Series([], dtype=np.float64), "source": pd.Series([], dtype=object)})
    table.attrs["reason"] = reason
    return table


def too_few_classes(classes: list) -> str | None:
    """Why nothing can be suggested from labels naming ``classes`` (None when two or more).

    >>> too_few_classes(["cat"])[:26]
    "one class only ('cat') yet"
    """
    if len(classes) >= 2:
        return None
    found = "no labels" if not classes else f"one class only ({classes[0]!r})"
    return (f"{found} yet: suggestions need labels of at least two classes. Label a few images of "
            "each class first (a run in the Review grid, or a whole cluster on the Clusters page)")


def choose_method(method: str, codes: np.ndarray, n_classes: int) -> str:
    """``knn`` or ``probe``: ``auto`` picks the probe when every class has enough labels.

    >>> choose_method("auto", np.array([0, 0, 1]), 2), choose_method("probe", np.array([0, 1]), 2)
    ('knn', 'probe')
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method != "auto":
        return method
    counts = np.bincount(codes[codes >= 0], minlength=n_classes)
    return "probe" if counts.min() >= PROBE_MIN_PER_CLASS else "knn"


def suggest_labels(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence, *, method: str = "auto",
                   scope: str = "unlabeled", k: int = DEFAULT_K, trusted: np.ndarray | None = None,
                   neighbours: Neighbours | None = None, seed: int = 0) -> pd.DataFrame:
    """Suggested label and confidence for the unlabeled samples (``scope="all"``: for every sample).

    Args:
        embeddings: (N, D) pooled vectors.
        labels: (N,) the labels to learn from, None/NaN where there is none.
        sample_ids: (N,) ids, copied to the output.
        method: ``auto``, ``knn`` or ``probe`` (see the module docstring).
        scope: ``unlabeled`` (the samples without a label) or ``all`` (every sample, e.g. when the
            given labels are mostly wrong; labelled samples then get the vote of their neighbours,
            or the probe's out-of-fold prediction, never their own label back).
        k: neighbours per vote (``knn``).
        trusted: (N,) bool, reviewed samples: their votes count twice; they are never suggested for.
        neighbours: a precomputed :func:`labelled_neighbours` graph (the same labels).
        seed: the probe's fold seed.

    Returns:
        ``DataFrame[sample_id, suggested_label, confidence, source]``, most confident first (ties in
        input order); empty with ``attrs["reason"]`` when the labels name fewer than two classes.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {list(SCOPES)}, got {scope!r}")
    x = check_embeddings(embeddings)
    n = x.shape[0]
    coded, ids, mask = encode_labels(labels, n), check_ids(sample_ids, n), check_trusted(trusted, n)
    reason = too_few_classes(coded.classes)
    if reason is not None:
        return empty_suggestions(reason)
    chosen = choose_method(method, coded.codes, len(coded.classes))
    if chosen == "knn":
        if neighbours is None:
            neighbours = labelled_neighbours(x, coded.labeled, k)
        shares = vote_shares(neighbours, coded, weighted=True, trusted=mask)
    else:
        from mlfix.scoring.probe import out_of_fold_probabilities

        shares = out_of_fold_probabilities(x, labels, seed=seed, trusted=mask,
                                           refit_without_suspects=scope == "all").probs
    wanted = ~coded.labeled if scope == "unlabeled" else ~mask
    wanted &= shares.sum(axis=1) > 0  # no labelled neighbour: no evidence to suggest from
    rows = np.flatnonzero(wanted)
    best = shares[rows].argmax(axis=1)
    table = pd.DataFrame({"sample_id": ids[rows], "suggested_label": coded.decode(best),
                          "confidence": shares[rows, best].astype(np.float64), "source": chosen})
    order = np.lexsort((rows, -table["confidence"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    if not len(table):
        table.attrs["reason"] = "every sample already has a label" if scope == "unlabeled" else \
            "no sample has a labelled neighbour to learn from"
    return table


def labelled_neighbours(embeddings: np.ndarray, labelled: np.ndarray, k: int = DEFAULT_K) -> Neighbours:
    """Each sample's ``k`` most cosine-similar *labelled* samples (self excluded), as rows of
    ``embeddings``: with few labels, a sample's nearest neighbours overall are mostly unlabeled and
    would not vote.

    >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> labelled_neighbours(x, np.array([True, False, True, False]), k=1).index.tolist()
    [[2], [0], [0], [2]]
    """
    x = check_embeddings(embeddings)
    rows = np.flatnonzero(labelled)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(rows) == 0:
        return Neighbours(np.full((len(x), 1), -1, dtype=np.int64), np.zeros((len(x), 1), dtype=np.float32))
    index = search_index(x if len(rows) == len(x) else x[rows])  # exact, or IVF above APPROXIMATE_MIN rows
    width = min(k + 1, len(rows))
    similarity, found = np.zeros((len(x), width), np.float32), np.zeros((len(x), width), np.int64)
    for start in range(0, len(x), QUERY_CHUNK):  # float32 copies a chunk at a time (x may be a float16 memmap)
        query = np.array(x[start:start + QUERY_CHUNK], dtype=np.float32, copy=True)
        query /= np.clip(np.linalg.norm(query, axis=1, keepdims=True), 1e-12, None)
        similarity[start:start + QUERY_CHUNK], found[start:start + QUERY_CHUNK] = index.search(query, width)
    found = np.where(found >= 0, rows[np.maximum(found, 0)], -1)
    found[found == np.arange(len(x))[:, None]] = -1  # a labelled sample does not vote for itself
    keep = np.argsort(found < 0, axis=1, kind="stable")[:, :min(k, width)]  # drop self, keep order
    return Neighbours(np.take_along_axis(found, keep, axis=1).astype(np.int64),
                      np.take_along_axis(similarity, keep, axis=1))


# ---------------------------------------------------------------------------------------------
# A project's suggestions: which labels to learn from, and a cache beside scores.parquet

CACHE_FILE = "suggestions.parquet"
LEARNED = ("relabeled", "ok")  # statuses whose label a reviewer gave or confirmed


def labels_to_learn(corrected: pd.DataFrame, untrusted: bool, scope: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """``(labels, reviewed, scope)`` from a corrected-labels table (``corrected_label``, ``status``).

    A flagged sample (called wrong, no new label) has no label to learn from. When the given labels
    are ``untrusted`` (:mod:`mlfix.scoring.trust`), only reviewed labels count and ``scope="auto"``
    becomes ``all`` (every unreviewed sample gets a suggestion); else ``unlabeled``.

    >>> table = pd.DataFrame({"corrected_label": ["a", "b", None, "a"],
    ...                       "status": ["unreviewed", "relabeled", "unreviewed", "flagged"]})
    >>> labels, reviewed, scope = labels_to_learn(table, untrusted=True)
    >>> labels.tolist(), reviewed.tolist(), scope
    ([None, 'b', None, None], [False, True, False, False], 'all')
    """
    if scope not in SCOPES + ("auto",):
        raise ValueError(f"scope must be one of {['auto', *SCOPES]}, got {scope!r}")
    status = corrected["status"].to_numpy(dtype=object)
    reviewed = np.isin(status, LEARNED)
    labels = corrected["corrected_label"].to_numpy(dtype=object).copy()
    labels[pd.isna(labels) | (status == "flagged") | (~reviewed if untrusted else False)] = None
    if scope == "auto":
        scope = "all" if untrusted else "unlabeled"
    return labels, reviewed, scope


def cached_suggestions(project_dir, embeddings: np.ndarray, rows: np.ndarray, corrected: pd.DataFrame, key: dict,
                       *, method: str = "auto", scope: str = "auto", k: int = DEFAULT_K,
                       seed: int = 0) -> pd.DataFrame:
    """:func:`suggest_labels` for a project's readable ``rows``, cached in ``suggestions.parquet``
    while ``key`` (the index and decisions it was made from) and the options are the same.

    The given labels count as untrusted when the last scores said so (``scores.trust.json``).
    The table's ``attrs``: ``reason`` (when empty), ``scope`` and ``learned_from`` (labels used).
    """
    import json
    from pathlib import Path

    from mlfix.pipeline.artifacts import atomic_parquet, read_key, write_key
    from mlfix.scoring.trust import TRUST_FILE, read_trust

    folder = Path(project_dir)
    untrusted = (read_trust(folder / TRUST_FILE) or {}).get("verdict") == "untrusted"
    labels, reviewed, chosen = labels_to_learn(corrected, untrusted, scope)
    full_key = json.loads(json.dumps({**key, "method": method, "scope": chosen, "k": k, "seed": seed,
                                      "untrusted": untrusted}, sort_keys=True, default=str))
    path, key_path = folder / CACHE_FILE, folder / "suggestions.key.json"
    stored = read_key(key_path) or {}
    attrs = stored.pop("attrs", {})
    if stored == full_key and path.exists():
        table = pd.read_parquet(path)
        table.attrs.update(attrs)
        return table
    if len(rows):
        ids = corrected["sample_id"].to_numpy(dtype=object)[rows]
        table = suggest_labels(embeddings[rows], labels[rows], ids, method=method, scope=chosen, k=k,
                               trusted=reviewed[rows], seed=seed)
    else:
        table = empty_suggestions("no readable images to suggest for")
    table.attrs.update(scope=chosen, learned_from="reviewed labels only (the given ones look wrong)"
                       if untrusted else "given and reviewed labels")
    atomic_parquet(table, path)
    write_key(key_path, {**full_key, "attrs": dict(table.attrs)})
    return table


def read_suggestions(project_dir) -> pd.DataFrame | None:
    """The last suggestions a project computed (possibly older than the latest decisions), or None."""
    from pathlib import Path

    path = Path(project_dir) / CACHE_FILE
    try:
        return pd.read_parquet(path) if path.exists() else None
    except Exception:  # being rewritten, or damaged: no suggestions shown
        return None
