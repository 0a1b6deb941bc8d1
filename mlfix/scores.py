"""Suspected-label-error scores: one function per method, one contract.

Every method returns a ``DataFrame[sample_id, score, suggested_label]`` with one row per input sample,
in input order (``RangeIndex``): ``score`` is a float, **higher = more likely mislabeled**, NaN for
unlabeled samples (they have no given label to doubt); ``suggested_label`` is the label the method
believes in (it may be given for unlabeled samples too). One report and one review page serve them all.

Methods (plain functions of arrays; no project, no files):

=====================  =======================================================================
``knn_vote``           cosine neighbours of the pooled embeddings (faiss), weighted label vote;
                       score = 1 - the vote share of the given label
``word_vote``          the same vote over neighbours that share the most visual words
``confident_learning`` cleanlab on out-of-fold probabilities of a linear probe:
                       score = 1 - ``get_label_quality_scores``; ``flag`` = ``find_label_issues``
``probe_loss``         out-of-fold cross-entropy of the given label
``combined``           rank average of several methods (see :func:`combined` for what and why)
``confusion``          given x out-of-fold predicted counts; :func:`confusion_samples` lists a cell
=====================  =======================================================================

:func:`compute_scores` runs them all and returns one wide table.

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

import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

SCORE_COLUMNS = ["sample_id", "score", "suggested_label"]
METHODS = ("knn", "words", "cleanlab", "loss", "combined")
TRUSTED_SCORE = 0.0  # every method's lowest score: a reviewed sample leaves the queue
# The default combined score: the rank average of the probe's out-of-fold loss (weight 2) and the
# embedding kNN vote (weight 1). On CIFAR-10N (bench/detect.py) the well-regularized probe alone has
# the best AUROC (0.916 vs 0.914 combined, vs 0.893 for the kNN vote), the 2:1 average the best
# precision in the first 5% of the queue; on small or poorly separated sets the vote adds robustness.
COMBINED_DEFAULT = ("loss", "knn")
COMBINED_WEIGHTS = (2.0, 1.0)
# Probe regularization (weight decay on standardized features, mean loss): chosen on CIFAR-10N 10k
# EfficientNet-Lite0 features; AUROC 0.889 / 0.907 / 0.916 / 0.905 at 0.01 / 0.03 / 0.1 / 1.0.
DEFAULT_L2 = 0.1


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class Labels:
    """Labels encoded as class indices: ``codes`` (N,) int64 with -1 for unlabeled; ``classes``."""

    codes: np.ndarray
    classes: list

    @property
    def labeled(self) -> np.ndarray:
        return self.codes >= 0

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Class indices -> labels (object array); -1 becomes None."""
        table = np.array(list(self.classes) + [None], dtype=object)
        return table[np.where(codes >= 0, codes, len(self.classes))]


def encode_labels(labels: Sequence | np.ndarray | pd.Series, n: int | None = None) -> Labels:
    """Encode labels (strings or numbers; None/NaN = unlabeled) as indices into sorted classes.

    >>> encode_labels(["b", None, "a", "b"]).codes.tolist()
    [1, -1, 0, 1]
    """
    series = pd.Series(list(labels) if not isinstance(labels, pd.Series) else labels.to_numpy(),
                       dtype=object)
    if n is not None and len(series) != n:
        raise ValueError(f"labels has {len(series)} entries but there are {n} samples; "
                         "pass one label per embedding row (None for unlabeled)")
    missing = series.isna().to_numpy()
    present = series[~missing]
    try:
        classes = sorted(present.unique().tolist())
    except TypeError:  # mixed types: sort by text so the order is still deterministic
        classes = sorted(present.unique().tolist(), key=str)
    # Plain Python values (np.str_ -> str), so suggested labels look like the labels users gave.
    classes = [c.item() if isinstance(c, np.generic) else c for c in classes]
    index = {c: i for i, c in enumerate(classes)}
    codes = np.full(len(series), -1, dtype=np.int64)
    codes[~missing] = [index[v] for v in present]
    return Labels(codes, classes)


def _check_ids(sample_ids, n: int) -> np.ndarray:
    ids = np.asarray(list(sample_ids), dtype=object)
    if len(ids) != n:
        raise ValueError(f"sample_ids has {len(ids)} entries but there are {n} samples; "
                         "pass one id per embedding row")
    return ids


def _check_embeddings(embeddings, name: str = "embeddings") -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N samples x D dims), got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; re-extract the features of those "
                         "samples or drop them before scoring")
    return x


def _check_trusted(trusted, n: int) -> np.ndarray:
    if trusted is None:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(trusted)
    if mask.shape != (n,):
        raise ValueError(f"trusted must be a boolean mask of shape ({n},), got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("trusted must be a boolean mask (True = reviewed); got non-0/1 values")
        mask = mask.astype(bool)
    return mask


def _frame(sample_ids: np.ndarray, score: np.ndarray, suggested: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": sample_ids, "score": np.asarray(score, dtype=np.float64),
                         "suggested_label": pd.Series(suggested, dtype=object)})


def _finish_score(score: np.ndarray, labels: Labels, trusted: np.ndarray) -> np.ndarray:
    """Unlabeled -> NaN, trusted -> the floor."""
    score = np.asarray(score, dtype=np.float64).copy()
    score[~labels.labeled] = np.nan
    score[trusted & labels.labeled] = TRUSTED_SCORE
    return score


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
    index, x = cosine_index(_check_embeddings(embeddings))
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

    ``bags`` is (N, k/8) packed uint8 (as ``mlfix.codebook.pack_bags`` writes) or (N, k) bool. The
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
    ``mlfix.codebook.pack_bags`` writes) or bool/0-1 (N, k)."""
    bags = np.asarray(bags)
    if bags.ndim != 2 or bags.shape[0] == 0:
        raise ValueError(f"bags must be a 2-D array (N images x words), got shape {bags.shape}")
    if bags.dtype == np.uint8:  # packed as mlfix.codebook.pack_bags does: little bit order
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
    return _frame(sample_ids, _finish_score(score, labels, trusted), suggested)


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
    x = _check_embeddings(embeddings)
    n = x.shape[0]
    coded, ids, mask = encode_labels(labels, n), _check_ids(sample_ids, n), _check_trusted(trusted, n)
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
    coded, ids, mask = encode_labels(labels, n), _check_ids(sample_ids, n), _check_trusted(trusted, n)
    if neighbours is None:
        neighbours = word_neighbours(bags, k, n_words)
    shares = vote_shares(neighbours, coded, weighted, mask, trusted_weight)
    return _vote_frame(shares, coded, ids, mask)


# ---------------------------------------------------------------------------------------------
# Out-of-fold probe


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predicted probabilities: ``probs`` (N, C) float64, rows sum to 1, columns follow
    ``classes``; ``fold`` (N,) int, the fold a sample was held out in (-1: never held out, i.e.
    unlabeled or trusted, whose row is the mean of all fold models)."""

    probs: np.ndarray
    classes: list
    fold: np.ndarray

    def predicted(self) -> np.ndarray:
        """(N,) the most probable class of each sample (object array of labels)."""
        return np.array(self.classes, dtype=object)[self.probs.argmax(axis=1)]


def out_of_fold_probabilities(embeddings: np.ndarray, labels: Sequence, folds: int = 5, seed: int = 0,
                              trusted: np.ndarray | None = None, l2: float = DEFAULT_L2,
                              max_iter: int = 200, probe: str = "lbfgs") -> OutOfFold:
    """Cross-validated linear probe: each labeled sample's class probabilities from a model that never
    saw it.

    Features are standardized per training fold; the probe is a multinomial logistic regression
    (``probe="lbfgs"``: scipy L-BFGS on numpy, objective mean cross-entropy + ``l2``/2 ||W||^2;
    ``probe="sklearn"``: ``LogisticRegression(C=1 / (l2 * n_train))``, the same objective; compare
    both in bench/detect.py).
    Folds are stratified by class; classes with fewer samples than folds (even a single sample) are
    spread over the folds as far as they go, and a class missing from a training fold gets probability
    0 from that fold's model (columns are aligned to the full class list). Trusted samples are in every
    training fold; they and unlabeled samples get the mean prediction of the fold models.

    Args:
        embeddings: (N, D) features.
        labels: (N,) labels, None/NaN for unlabeled.
        folds: number of folds (reduced to the number of labeled, untrusted samples if fewer).
        seed: fold assignment seed; the result is deterministic for a seed.
        trusted: (N,) bool mask of reviewed samples.

    Returns:
        :class:`OutOfFold`.

    Example:
        >>> x = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, .1, (20, 2))
        >>> oof = out_of_fold_probabilities(x, ["a"] * 10 + ["b"] * 10, folds=2)
        >>> oof.predicted()[[0, 19]].tolist()
        ['a', 'b']
    """
    x = _check_embeddings(embeddings)
    n = x.shape[0]
    coded, mask = encode_labels(labels, n), _check_trusted(trusted, n)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if probe not in ("lbfgs", "sklearn"):
        raise ValueError(f"probe must be 'lbfgs' or 'sklearn', got {probe!r}")
    n_classes = len(coded.classes)
    probs = np.zeros((n, max(n_classes, 1)), dtype=np.float64)
    fold_of = np.full(n, -1, dtype=np.int64)
    if n_classes <= 1:  # nothing to tell apart: every sample is the one class
        probs[:, 0] = 1.0
        return OutOfFold(probs[:, :n_classes] if n_classes else probs[:, :0], coded.classes, fold_of)
    held = np.flatnonzero(coded.labeled & ~mask)  # samples that get a real out-of-fold prediction
    always = np.flatnonzero(coded.labeled & mask)  # trusted: in every training fold
    rest = np.flatnonzero(~(coded.labeled & ~mask))  # trusted + unlabeled: mean of the fold models
    splits = _fold_splits(coded.codes[held], folds, seed)
    for f, (train_pos, test_pos) in enumerate(splits):
        train = np.concatenate([held[train_pos], always])
        test = held[test_pos]
        fold_of[test] = f
        predict = _fit_probe(x[train], coded.codes[train], n_classes, l2, max_iter, probe, seed)
        probs[test] = predict(x[test])
        if len(rest):
            probs[rest] += predict(x[rest]) / len(splits)
    if not splits:  # fewer than 2 held-out samples: train once on everything labeled
        predict = _fit_probe(x[coded.labeled], coded.codes[coded.labeled], n_classes, l2, max_iter,
                             probe, seed)
        probs[:] = predict(x)
    return OutOfFold(probs, coded.classes, fold_of)


def _fold_splits(codes: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(codes) < 2:
        return []
    folds = min(folds, len(codes))
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    # StratifiedKFold spreads each class over the folds; it only refuses when *every* class is smaller
    # than the number of folds, where plain shuffled KFold is the best we can do.
    if counts.max() >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only 1 member"
            return list(splitter.split(np.zeros(len(codes)), codes))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(codes))))


def _fit_probe(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, probe: str,
               seed: int):
    """Fit a standardized multinomial logistic regression; return ``predict(x) -> (n, n_classes)``."""
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    present = np.unique(y)
    if len(present) == 1:  # a training fold with one class: it predicts that class
        def predict_constant(z: np.ndarray) -> np.ndarray:
            out = np.zeros((len(z), n_classes))
            out[:, present[0]] = 1.0
            return out
        return predict_constant
    # Train on the classes present; unseen classes get probability 0 (columns aligned below).
    local = np.searchsorted(present, y)
    xs = (x - mean) / std
    fit = _fit_lbfgs if probe == "lbfgs" else _fit_sklearn
    predict_local = fit(xs, local, len(present), l2, max_iter, seed)

    def predict(z: np.ndarray) -> np.ndarray:
        out = np.zeros((len(z), n_classes))
        out[:, present] = predict_local((z - mean) / std)
        return out
    return predict


def _fit_lbfgs(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, seed: int):
    """Multinomial logistic regression by scipy's L-BFGS on numpy BLAS (no torch, no sklearn overhead).

    Objective: mean cross-entropy + 0.5 * l2 * ||W||^2 (bias not penalised); zero start, so the result
    is deterministic (the problem is convex: the start does not change the optimum).
    """
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    onehot = np.zeros((n, n_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

    def loss_and_grad(theta: np.ndarray):
        w = theta[: d * n_classes].reshape(d, n_classes).astype(np.float32)
        b = theta[d * n_classes:].astype(np.float32)
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -float((log_p * onehot).sum()) / n + 0.5 * l2 * float((w.astype(np.float64) ** 2).sum())
        delta = (np.exp(log_p) - onehot) / n
        grad_w = (x.T @ delta).astype(np.float64) + l2 * w
        return loss, np.concatenate([grad_w.ravel(), delta.sum(axis=0).astype(np.float64)])

    theta0 = np.zeros(d * n_classes + n_classes)
    # One BLAS thread: L-BFGS makes thousands of tiny vector operations, and multi-threaded OpenBLAS
    # spin-waits on each of them; on a busy 2-core machine that made a 400-sample fit 20x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "gtol": 1e-5})
    w = result.x[: d * n_classes].reshape(d, n_classes).astype(np.float32)
    b = result.x[d * n_classes:].astype(np.float32)

    def predict(z: np.ndarray) -> np.ndarray:
        logits = (np.asarray(z, dtype=np.float32) @ w + b).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)
    return predict


def _fit_sklearn(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int, seed: int):
    from sklearn.linear_model import LogisticRegression

    # sklearn minimises C * sum(loss) + 0.5 ||w||^2, i.e. mean loss + 0.5 / (C n) ||w||^2.
    model = LogisticRegression(C=1.0 / (l2 * len(y)), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: the probe is good enough
        model.fit(x, y)
    return lambda z: model.predict_proba(z)


def _oof(embeddings, labels, folds, seed, trusted, probabilities) -> OutOfFold:
    if probabilities is not None:
        n = len(labels)
        if probabilities.probs.shape[0] != n:
            raise ValueError(f"probabilities are for {probabilities.probs.shape[0]} samples, not {n}")
        unknown = set(encode_labels(labels).classes) - set(probabilities.classes)
        if unknown:
            raise ValueError(f"probabilities have no column for labels {sorted(unknown, key=str)}; recompute "
                             "them with out_of_fold_probabilities(embeddings, labels)")
        return probabilities
    if embeddings is None:
        raise ValueError("give embeddings or precomputed probabilities (out_of_fold_probabilities)")
    return out_of_fold_probabilities(embeddings, labels, folds=folds, seed=seed, trusted=trusted)


def _given_probability(oof: OutOfFold, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(N,) probability of the given label (NaN when unlabeled), (N,) codes into oof.classes."""
    index = {c: i for i, c in enumerate(oof.classes)}
    series = pd.Series(list(labels), dtype=object)
    codes = np.array([-1 if pd.isna(v) else index[v] for v in series], dtype=np.int64)
    p = np.where(codes >= 0, oof.probs[np.arange(len(codes)), np.maximum(codes, 0)], np.nan)
    return p, codes


# ---------------------------------------------------------------------------------------------
# Probe-based methods


def probe_loss(embeddings: np.ndarray | None, labels: Sequence, sample_ids: Sequence, folds: int = 5,
               seed: int = 0, trusted: np.ndarray | None = None,
               probabilities: OutOfFold | None = None) -> pd.DataFrame:
    """Out-of-fold cross-entropy of the given label, ``-log p(given)``; suggested = argmax.

    Pass ``probabilities`` (from :func:`out_of_fold_probabilities`) to reuse one probe for several
    methods; ``embeddings`` may then be None.

    Example:
        >>> x = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, .1, (20, 2))
        >>> y = ["a"] * 10 + ["b"] * 10; y[3] = "b"
        >>> int(probe_loss(x, y, range(20), folds=2).score.idxmax())
        3
    """
    n = len(labels)
    ids, mask = _check_ids(sample_ids, n), _check_trusted(trusted, n)
    oof = _oof(embeddings, labels, folds, seed, mask, probabilities)
    p, codes = _given_probability(oof, labels)
    score = -np.log(np.clip(p, 1e-12, None))
    coded = Labels(codes, oof.classes)
    return _frame(ids, _finish_score(score, coded, mask), oof.predicted())


def confident_learning(embeddings: np.ndarray | None, labels: Sequence, sample_ids: Sequence,
                       folds: int = 5, seed: int = 0, trusted: np.ndarray | None = None,
                       probabilities: OutOfFold | None = None,
                       method: str = "self_confidence") -> pd.DataFrame:
    """cleanlab's confident learning on the out-of-fold probe probabilities.

    ``score`` = 1 - ``cleanlab.rank.get_label_quality_scores(method=method)``; the extra boolean column
    ``flag`` is ``cleanlab.filter.find_label_issues`` (the samples cleanlab would call label issues).
    Only labeled, untrusted samples are given to cleanlab (trusted rows are in-sample predictions and
    would bias its per-class thresholds); the others get NaN / the floor and ``flag`` False.

    Example:
        >>> x = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, .1, (20, 2))
        >>> y = ["a"] * 10 + ["b"] * 10; y[3] = "b"
        >>> oof = out_of_fold_probabilities(x, y, folds=2, l2=1e-3)  # 2-D toy data: weak l2
        >>> table = confident_learning(None, y, range(20), probabilities=oof)
        >>> int(table.score.idxmax()), int(table.flag.sum())
        (3, 1)
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(labels)
    ids, mask = _check_ids(sample_ids, n), _check_trusted(trusted, n)
    oof = _oof(embeddings, labels, folds, seed, mask, probabilities)
    _, codes = _given_probability(oof, labels)
    rows = np.flatnonzero((codes >= 0) & ~mask)
    score = np.full(n, np.nan)
    flag = np.zeros(n, dtype=bool)
    if len(rows):
        pred = oof.probs[rows]
        score[rows] = 1.0 - get_label_quality_scores(codes[rows], pred, method=method)
        flag[rows] = _cleanlab_flags(find_label_issues, codes[rows], pred)
    coded = Labels(codes, oof.classes)
    frame = _frame(ids, _finish_score(score, coded, mask), oof.predicted())
    frame["flag"] = flag
    return frame


def _cleanlab_flags(find_label_issues, codes: np.ndarray, pred: np.ndarray) -> np.ndarray:
    # cleanlab needs every class to appear among the labels it is given; classes seen only in
    # trusted/unlabeled rows are dropped from the matrix (renormalised) for the flags.
    present = np.unique(codes)
    sub = pred[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    local = np.searchsorted(present, codes)
    if len(present) < 2:
        return np.zeros(len(codes), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(find_label_issues(local, sub), dtype=bool)


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
    return _frame(frames[0]["sample_id"].to_numpy(), score, frames[0]["suggested_label"].to_numpy())


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
    ids = _check_ids(sample_ids, n)
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
    x = _check_embeddings(embeddings)
    n = x.shape[0]
    ids, mask = _check_ids(sample_ids, n), _check_trusted(trusted, n)
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
