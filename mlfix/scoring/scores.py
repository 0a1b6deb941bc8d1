"""Suspected-label-error scores: one function per method, one contract, and all of them at once.

Every method returns a ``DataFrame[sample_id, score, suggested_label]`` with one row per input sample,
in input order: **higher = more likely mislabeled**, NaN for unlabeled samples (the full contract,
and the helpers that keep it, are in :mod:`mlfix.scoring.contract`). One report and one review page
serve them all.

Methods (plain functions of arrays; no project, no files):

=====================  =======================================================================
``knn_vote``           cosine neighbours of the pooled embeddings (faiss), weighted label vote;
                       score = 1 - the vote share of the given label
``word_vote``          the same vote over neighbours that share the most visual words
``confident_learning`` (:mod:`mlfix.scoring.probe`) cleanlab on out-of-fold probabilities of a linear
                       probe: score = 1 - ``get_label_quality_scores``; ``flag`` = ``find_label_issues``
``probe_loss``         (:mod:`mlfix.scoring.probe`) out-of-fold cross-entropy of the given label
``combined``           rank average of several methods (see :func:`combined` for what and why)
``confusion``          given x out-of-fold predicted counts; :func:`confusion_samples` lists a cell
=====================  =======================================================================

This module holds the neighbour votes, the combination and the confusion table; the cross-validated
linear probe and its two methods are in :mod:`mlfix.scoring.probe`. :func:`compute_scores` runs them all and
returns one wide table.

Unlabeled samples (label ``None``/NaN/``pd.NA``) never train a probe nor vote, get a NaN score, and
still get a suggested label.

The review loop learns: ``trusted`` is a boolean mask of samples a reviewer confirmed or relabeled,
and the labels passed in are the corrected ones. Trusted samples

- are in the training set of *every* fold of the probe (never held out: a reviewed label is the best
  training signal there is, and every fold model should learn from it). Their probability row is the
  mean of the fold models' predictions, i.e. in-sample; that is harmless because
- their own score is pinned to 0.0, the lowest score any method gives, so they leave the queue; and
- in the neighbour votes their vote counts ``trusted_weight`` times (default 2) as much.

Example:
    >>> import numpy as np
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
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.probe import OutOfFold, confident_learning, out_of_fold_probabilities, probe_loss
from mlfix.scoring.contract import (TRUSTED_SCORE, Labels, check_embeddings, check_ids, check_trusted, encode_labels,
                                  finish_score, score_frame)

METHODS = ("knn", "words", "cleanlab", "loss", "combined")
# The default combined score: the rank average of the probe's out-of-fold loss (weight 2) and the
# embedding kNN vote (weight 1). On CIFAR-10N (bench/detect.py) the probe's loss alone has the best
# AUROC (Lite0: 0.934 vs 0.933 combined, vs 0.911 for the kNN vote; the three-backbone ensemble:
# 0.954 vs 0.952), the 2:1 average the better precision in the first 5% of the queue (0.968 vs 0.966;
# Lite2 + flip 0.986 vs 0.980; GTSRB 0.908 vs 0.904): that is the part of the queue reviewers see.
# On small or poorly separated sets the vote adds robustness.
COMBINED_DEFAULT = ("loss", "knn")
COMBINED_WEIGHTS = (2.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Neighbour votes


@dataclass(frozen=True)
class Neighbours:
    """``index`` (N, k) int64 neighbour rows (self excluded, -1 = none) and ``similarity`` (N, k)."""

    index: np.ndarray
    similarity: np.ndarray


def embedding_neighbours(embeddings: np.ndarray, k: int = 50) -> Neighbours:
    """The ``k`` nearest neighbours of every row by cosine similarity (faiss, exact), self excluded.

    ``k`` is capped at N - 1. The result depends only on the embeddings, so a caller that rescores
    after relabeling (the review loop) can compute it once and pass it to :func:`knn_vote`.
    """
    index, x = cosine_index(check_embeddings(embeddings))
    return _search_without_self(index, x, k)


def cosine_index(vectors: np.ndarray):
    """An exact faiss cosine index over ``vectors`` (N, D); returns ``(index, unit vectors float32)``."""
    import faiss

    x = np.array(vectors, dtype=np.float32, copy=True)
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index, x


def word_neighbours(bags: np.ndarray, k: int = 50, n_words: int | None = None) -> Neighbours:
    """The ``k`` images sharing the most visual words with every image, self excluded.

    ``bags`` is (N, k/8) packed uint8 (as ``mlfix.pipeline.codebook.pack_bags`` writes) or (N, k) bool. The
    similarity is the number of shared words, ``(x & y).sum()`` (the seed's ordering criterion), computed
    as an inner product of 0/1 vectors in a faiss flat index: exact, searched in blocks, so memory is
    O(N x words), never O(N^2).
    """
    import faiss

    x = unpack(bags, n_words).astype(np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return _search_without_self(index, x, k)


def unpack(bags: np.ndarray, n_words: int | None = None) -> np.ndarray:
    """Bags of words as (N, k) bool, from packed uint8 (N, k/8, ``bitorder="little"`` as
    ``mlfix.pipeline.codebook.pack_bags`` writes) or bool/0-1 (N, k)."""
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


def knn_vote(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence, k: int = 50,
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
        raise ValueError(f"neighbours were computed for {neighbours.index.shape[0]} samples, not {n}")
    shares = vote_shares(neighbours, coded, weighted, mask, trusted_weight)
    return _vote_frame(shares, coded, ids, mask)


def word_vote(bags: np.ndarray, labels: Sequence, sample_ids: Sequence, k: int = 50,
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



# ---------------------------------------------------------------------------------------------
# Combination and confusion


def combined(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Rank average of several methods' scores; suggested label of the first frame.

    Each method's score is turned into its percentile rank among the samples it scores (ties share
    the mean rank), and the ranks are averaged (weighted). Why ranks: the methods' scales differ
    (a vote share in [0, 1], a loss in [0, inf)), and a rank average rewards samples that several
    independent views agree on — the probe (a global linear boundary) and the neighbour vote (local
    density) make different mistakes. On the bench (bench/detect.py) the rank average of the probe
    loss and the kNN vote beat each alone with a weakly regularized probe; with the tuned probe the
    gain is in the first 5% of the queue only; the default pair and weights are
    :data:`COMBINED_DEFAULT` and :data:`COMBINED_WEIGHTS`.
    NaN (unlabeled) stays NaN; a sample at every method's floor (trusted) stays at 0.

    Example:
        >>> a = pd.DataFrame({"sample_id": [1, 2, 3], "score": [.1, .9, .5], "suggested_label": list("xyz")})
        >>> b = a.assign(score=[.2, .3, .8])
        >>> combined([a, b]).score.round(3).tolist()
        [0.333, 0.833, 0.833]
    """
    if not frames:
        raise ValueError("combined needs at least one score table")
    n = len(frames[0])
    for frame in frames:
        if len(frame) != n or not np.array_equal(frame["sample_id"].to_numpy(), frames[0]["sample_id"].to_numpy()):
            raise ValueError("all score tables must list the same samples in the same order")
    weights = np.ones(len(frames)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(frames) or (weights < 0).any() or weights.sum() == 0:
        raise ValueError("weights must be one non-negative number per score table, not all zero")
    ranks = np.stack([f["score"].rank(pct=True, method="average").to_numpy() for f in frames])
    floor = np.stack([f["score"].to_numpy() == TRUSTED_SCORE for f in frames]).all(axis=0)
    score = np.average(ranks, axis=0, weights=weights)
    score[floor] = TRUSTED_SCORE
    return score_frame(frames[0]["sample_id"].to_numpy(), score, frames[0]["suggested_label"].to_numpy())


def confusion(labels: Sequence, predicted: Sequence) -> pd.DataFrame:
    """Counts of (given label, predicted label) pairs: ``DataFrame[given, predicted, count]``.

    Every pair of classes appears (zero counts too), rows sorted by given then predicted, so the table
    pivots straight into a heatmap: ``table.pivot(index="given", columns="predicted", values="count")``.
    Unlabeled samples are left out.

    >>> confusion(["a", "a", "b", None], ["a", "b", "b", "a"])["count"].tolist()
    [1, 1, 0, 1]
    """
    given, pred = _pairs(labels, predicted)
    classes = encode_labels(list(given) + list(pred)).classes
    full = pd.MultiIndex.from_product([classes, classes], names=["given", "predicted"])
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([given, pred], names=["given", "predicted"]))
    counts = counts.groupby(level=[0, 1]).sum().reindex(full, fill_value=0)
    return counts.rename("count").reset_index().astype({"count": np.int64})


def confusion_samples(labels: Sequence, predicted: Sequence, sample_ids: Sequence, given,
                      predicted_label, order: Sequence[float] | None = None) -> list:
    """The sample ids in one confusion cell (given label ``given``, predicted ``predicted_label``).

    With ``order`` (e.g. a score column) the ids come most suspicious first.

    >>> confusion_samples(["a", "a", "b"], ["b", "b", "b"], ["x", "y", "z"], "a", "b", order=[.1, .9, .5])
    ['y', 'x']
    """
    n = len(labels)
    ids = check_ids(sample_ids, n)
    given_arr, pred_arr = np.asarray(list(labels), dtype=object), np.asarray(list(predicted), dtype=object)
    if len(pred_arr) != n:
        raise ValueError(f"predicted has {len(pred_arr)} entries, labels {n}")
    rows = np.flatnonzero((given_arr == given) & (pred_arr == predicted_label))
    if order is not None:
        key = np.asarray(order, dtype=np.float64)[rows]
        rows = rows[np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")]
    return ids[rows].tolist()


def _pairs(labels: Sequence, predicted: Sequence) -> tuple[np.ndarray, np.ndarray]:
    given = pd.Series(list(labels), dtype=object)
    pred = pd.Series(list(predicted), dtype=object)
    if len(given) != len(pred):
        raise ValueError(f"labels has {len(given)} entries but predicted has {len(pred)}")
    keep = ~(given.isna() | pred.isna()).to_numpy()
    return given[keep].to_numpy(), pred[keep].to_numpy()


# ---------------------------------------------------------------------------------------------
# All methods at once


def compute_scores(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence,
                   bags: np.ndarray | None = None, trusted: np.ndarray | None = None,
                   methods: Iterable[str] | None = None, seed: int = 0, k: int = 50, folds: int = 5,
                   combine: Sequence[str] = COMBINED_DEFAULT,
                   probabilities: OutOfFold | None = None,
                   neighbours: Neighbours | None = None) -> pd.DataFrame:
    """Every score method in one wide table.

    Columns: ``sample_id, label, score, suggested_label`` (the combined method, the default queue),
    then ``score_<method>, suggested_<method>`` for each method run, and ``flag_cleanlab`` when
    cleanlab ran. Methods: ``knn``, ``words`` (needs ``bags``), ``cleanlab``, ``loss``, ``combined``
    (default: all that the inputs allow). One probe fit serves cleanlab and loss.

    Example:
        >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, .1, (40, 2))
        >>> table = compute_scores(x, ["a"] * 20 + ["b"] * 20, range(40), k=5)
        >>> list(table.columns[:4])
        ['sample_id', 'label', 'score', 'suggested_label']
    """
    x = check_embeddings(embeddings)
    n = x.shape[0]
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    encode_labels(labels, n)  # validates the length
    wanted = _methods(methods, bags is not None, combine)
    tables: dict[str, pd.DataFrame] = {}
    if wanted & {"cleanlab", "loss"} or "combined" in wanted:
        if probabilities is None:
            probabilities = out_of_fold_probabilities(x, labels, folds, seed, mask)
    if "knn" in wanted or ("combined" in wanted and "knn" in combine):
        tables["knn"] = knn_vote(x, labels, ids, k=k, trusted=mask, neighbours=neighbours)
    if bags is not None and ("words" in wanted or ("combined" in wanted and "words" in combine)):
        if np.asarray(bags).shape[0] != n:
            raise ValueError(f"bags has {np.asarray(bags).shape[0]} rows but there are {n} samples")
        tables["words"] = word_vote(bags, labels, ids, k=k, trusted=mask)
    if "cleanlab" in wanted or ("combined" in wanted and "cleanlab" in combine):
        tables["cleanlab"] = confident_learning(None, labels, ids, trusted=mask, probabilities=probabilities)
    if "loss" in wanted or ("combined" in wanted and "loss" in combine):
        tables["loss"] = probe_loss(None, labels, ids, trusted=mask, probabilities=probabilities)
    if "combined" in wanted:
        weights = COMBINED_WEIGHTS if tuple(combine) == COMBINED_DEFAULT else None
        tables["combined"] = combined([tables[m] for m in combine], weights)
    default = tables["combined"] if "combined" in tables else tables[next(m for m in METHODS if m in tables)]
    out = pd.DataFrame({"sample_id": ids, "label": pd.Series(list(labels), dtype=object),
                        "score": default["score"], "suggested_label": default["suggested_label"]})
    for name in METHODS:
        if name in wanted:
            out[f"score_{name}"] = tables[name]["score"]
            out[f"suggested_{name}"] = tables[name]["suggested_label"]
    if "cleanlab" in wanted:
        out["flag_cleanlab"] = tables["cleanlab"]["flag"]
    return out


def _methods(methods: Iterable[str] | None, have_bags: bool, combine: Sequence[str]) -> set[str]:
    if methods is None:
        wanted = set(METHODS) - ({"words"} if not have_bags else set())
    else:
        wanted = set(methods)
        unknown = wanted - set(METHODS)
        if unknown:
            raise ValueError(f"unknown score methods {sorted(unknown)}; choose from {list(METHODS)}")
        if not wanted:
            raise ValueError(f"methods is empty; choose from {list(METHODS)}")
    if "words" in wanted and not have_bags:
        raise ValueError("the 'words' method needs bags of visual words (bags=...)")
    if "combined" in wanted:
        bad = set(combine) - set(METHODS[:-1])
        if bad or not combine:
            raise ValueError(f"combine must name methods from {list(METHODS[:-1])}, got {list(combine)}")
        if "words" in combine and not have_bags:
            raise ValueError("the combined score uses 'words', which needs bags=...")
    return wanted
