"""The cross-validated linear probe and the two checks built on it: ``probe_loss``, ``confident_learning``.

:func:`out_of_fold_probabilities` fits a multinomial logistic regression on the pooled embeddings in
K stratified folds, so each labeled sample gets class probabilities from a model that never saw it
(:class:`OutOfFold`). One fit serves both methods (pass ``probabilities=``):

=====================  =======================================================================
``probe_loss``         out-of-fold cross-entropy of the given label, ``-log p(given)``
``confident_learning`` confident learning on the out-of-fold probabilities (the ``cleanlab``
                       check): score = 1 - ``p(given)`` (self-confidence); ``flag`` = the samples
                       :func:`mlfix.scoring.confident_learning.find_label_issues` calls wrong
                       (on the first fit)
=====================  =======================================================================

Both follow the contract of :mod:`mlfix.scoring.contract`; :func:`mlfix.scoring.registry.compute_scores`
runs them with the neighbour votes and combines them. The probe's argmax (:meth:`OutOfFold.predicted`)
is the suggested label, and the "predicted" side of :func:`mlfix.scoring.confusion.confusion`.

Trusted (reviewed) samples are in the training set of *every* fold (never held out: a reviewed label
is the best training signal there is). Their probability row is the mean of the fold models'
predictions, i.e. in-sample; that is harmless because their score is pinned to the floor.

The probe is fitted twice by default (``refit_without_suspects=True``), after cleanlab's
``CleanLearning`` (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021): the samples that confident learning flags on the first fit are left out of the
second fit's training folds, so the second probe learns from cleaner labels; the flagged samples get
the mean prediction of the second fit's fold models, which never saw them. The probabilities are the
mean of the two fits. Why the mean: under heavy human noise the refit gains by learning from cleaner
labels; under light noise with a weak probe most flags are hard but right examples, and leaving them
out costs the probe what it knows about hard classes. The mean keeps nearly all of the gain where it
helps and nearly all of the first fit where it does not (see the README's figures table,
``python -m bench.detect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.data.folds import fold_splits
from mlfix.scoring.confident_learning import find_label_issues, import_cleanlab, self_confidence
from mlfix.scoring.contract import (Labels, check_embeddings, check_ids, check_trusted, encode_labels,
                                    finish_score, score_frame)
from mlfix.scoring.probe_fit import fit_probe
from mlfix.scoring.probe_minibatch import check_rows, fit_folds

# Probe regularization (weight decay on standardized features, mean loss): the best AUROC of a sweep
# over 0.01, 0.03, 0.1 and 1.0 on CIFAR-10N features (bench/detect.py); the detection figures it gives
# are in the README's figures table (python -m bench.detect).
DEFAULT_L2 = 0.1
# Rows from which the probe is fitted by minibatches (mlfix.scoring.probe_minibatch): the full fit holds
# ~3.5 float32 copies of the (N, D) matrix: 1.8 GB at 100k x 1280, 3.6 GB here (bench/scale_probe.py).
MINIBATCH_MIN = 200_000


# ---------------------------------------------------------------------------------------------
# Out-of-fold probe


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predicted probabilities: ``probs`` (N, C) float64, rows sum to 1, columns follow
    ``classes``; ``fold`` (N,) int, the fold a sample was held out in (-1: never held out, i.e.
    unlabeled, trusted, or left out of the refit, whose row is the mean of all fold models);
    ``flags`` (N,) bool or None: confident learning's flags on the first fit
    (:func:`mlfix.scoring.confident_learning.find_label_issues`), when the probe was refitted
    without them."""

    probs: np.ndarray
    classes: list
    fold: np.ndarray
    flags: np.ndarray | None = None

    def predicted(self) -> np.ndarray:
        """(N,) the most probable class of each sample (object array of labels; None without classes)."""
        if not self.classes:
            return np.full(self.probs.shape[0], None, dtype=object)
        return np.array(self.classes, dtype=object)[self.probs.argmax(axis=1)]


def aligned_out_of_fold(probs: np.ndarray, classes: Sequence, fold: np.ndarray, labels: Sequence) -> OutOfFold:
    """Probabilities made elsewhere (a fine-tuned network's, a user's model's) as an :class:`OutOfFold`
    whose columns follow the classes of ``labels`` (:func:`encode_labels`): a class the model never
    saw gets probability 0, a model class absent from the labels is dropped, rows are renormalised. A
    row with a NaN (no prediction for that sample) stays NaN: :func:`mlfix.scoring.blend.blend` takes
    the probe's there.

    >>> oof = aligned_out_of_fold(np.array([[0.9, 0.1], [0.2, 0.8]]), ["b", "a"], np.array([0, 1]), ["a", "b"])
    >>> oof.classes, oof.probs.round(2).tolist()
    (['a', 'b'], [[0.1, 0.9], [0.8, 0.2]])
    """
    wanted = encode_labels(labels).classes
    given = pd.Index([str(c) for c in classes])
    columns = given.get_indexer([str(c) for c in wanted])
    probs = np.asarray(probs, dtype=np.float64)
    out = np.where(columns >= 0, probs[:, np.maximum(columns, 0)], 0.0)
    total = out.sum(axis=1, keepdims=True)
    out = np.divide(out, total, out=np.full_like(out, 1.0 / max(1, len(wanted))), where=total > 0)
    out[~np.isfinite(probs).all(axis=1)] = np.nan
    return OutOfFold(out, list(wanted), np.asarray(fold, dtype=np.int64))


def out_of_fold_probabilities(embeddings: np.ndarray, labels: Sequence, folds: int = 5, seed: int = 0,
                              trusted: np.ndarray | None = None, l2: float = DEFAULT_L2,
                              max_iter: int = 200, probe: str = "lbfgs",
                              refit_without_suspects: bool = True, minibatch: bool | None = None) -> OutOfFold:
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
        refit_without_suspects: fit once more without the samples confident learning flags on the
            first fit and return the mean of both fits' probabilities (see the module docstring);
            the flagged samples' refit rows come from the mean of the refit's fold models (``fold``
            -1). A class keeps its flagged samples when flagging would drop half of it or more: a
            probe that never saw a class cannot tell its samples apart.
        minibatch: fit by minibatches, reading ``embeddings`` (a float16 memmap) chunk by chunk (None:
            from :data:`MINIBATCH_MIN` rows; :mod:`mlfix.scoring.probe_minibatch`; no ``probe``, ``max_iter``).

    Returns:
        :class:`OutOfFold`.

    Example:
        >>> x = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, .1, (20, 2))
        >>> oof = out_of_fold_probabilities(x, ["a"] * 10 + ["b"] * 10, folds=2)
        >>> oof.predicted()[[0, 19]].tolist()
        ['a', 'b']
    """
    minibatch = len(embeddings) >= MINIBATCH_MIN if minibatch is None else minibatch
    x = check_rows(embeddings) if minibatch else check_embeddings(embeddings, convert=True)  # full fit: float32
    n = x.shape[0]
    coded, mask = encode_labels(labels, n), check_trusted(trusted, n)
    fit = (x, folds, seed, l2, max_iter, probe, minibatch)
    first = _one_fit(coded, mask, *fit)
    if not refit_without_suspects:
        return first
    flags = _flags(first, coded, mask)
    suspects = _suspects(flags, coded)
    if not suspects.any():
        return OutOfFold(first.probs, first.classes, first.fold, flags)
    unflagged = Labels(np.where(suspects, -1, coded.codes), coded.classes)
    if minibatch:  # (N, C) float64 is gigabytes at millions of rows: the refit is averaged into the first's
        second = _one_fit(unflagged, mask, *fit, blend_into=first.probs)
        return OutOfFold(first.probs, first.classes, second.fold, flags)
    second = _one_fit(unflagged, mask, *fit)
    return OutOfFold((first.probs + second.probs) / 2, first.classes, second.fold, flags)


def _flags(oof: OutOfFold, coded: Labels, trusted: np.ndarray) -> np.ndarray:
    """(N,) bool: confident learning's flags on the labeled, untrusted samples (trusted rows are
    in-sample predictions and would bias its per-class thresholds)."""
    rows = np.flatnonzero(coded.labeled & ~trusted)
    flags = np.zeros(len(coded.codes), dtype=bool)
    if len(rows) >= 2 and len(oof.classes) >= 2:
        every = len(rows) == len(coded.codes)  # no (N, C) copy when every row counts (the usual case)
        flags[rows] = _present_class_flags(coded.codes[rows], oof.probs if every else oof.probs[rows])
    return flags


def _present_class_flags(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confident learning over the classes that appear among ``codes``: a class seen only in
    trusted or unlabeled rows is dropped from the matrix and the rows renormalised (its threshold
    would have no samples to average)."""
    present = np.unique(codes)
    if len(present) < 2:
        return np.zeros(len(codes), dtype=bool)
    if len(present) == probs.shape[1]:  # every class: the rows already sum to 1, no (N, C) copy
        return find_label_issues(codes, probs)
    sub = probs[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    return find_label_issues(np.searchsorted(present, codes), sub)


def _suspects(flags: np.ndarray, coded: Labels) -> np.ndarray:
    """The flagged samples, but none of a class that would lose half of its labeled samples or more."""
    n_classes = len(coded.classes)
    if n_classes == 0:  # no labels at all: nothing was flagged
        return np.zeros_like(flags)
    labeled = np.bincount(coded.codes[coded.labeled], minlength=n_classes)
    flagged = np.bincount(coded.codes[flags], minlength=n_classes)
    keep_all = flagged * 2 >= np.maximum(labeled, 1)
    return flags & ~keep_all[np.maximum(coded.codes, 0)]


def _one_fit(coded: Labels, mask: np.ndarray, x: np.ndarray, folds: int, seed: int, l2: float,
             max_iter: int, probe: str, minibatch: bool = False, blend_into: np.ndarray | None = None) -> OutOfFold:
    """One cross-validated fit. ``blend_into`` (minibatch only, every class present): an earlier fit's
    (N, C) probabilities, replaced in place by their mean with this fit's; returned as this fit's."""
    n = x.shape[0]
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if probe not in ("lbfgs", "sklearn"):
        raise ValueError(f"probe must be 'lbfgs' or 'sklearn', got {probe!r}")
    n_classes = len(coded.classes)
    probs = np.zeros((n, max(n_classes, 1)), dtype=np.float64) if blend_into is None else blend_into
    fold_of = np.full(n, -1, dtype=np.int64)
    if n_classes <= 1:  # nothing to tell apart: every sample is the one class
        probs[:, 0] = 1.0
        return OutOfFold(probs[:, :n_classes] if n_classes else probs[:, :0], coded.classes, fold_of)
    held = np.flatnonzero(coded.labeled & ~mask)  # samples that get a real out-of-fold prediction
    splits = fold_splits(coded.codes[held], folds, seed)
    for f, (_, test_pos) in enumerate(splits):
        fold_of[held[test_pos]] = f
    # Model f trains on the labeled rows not held out in fold f (trusted: all models; under 2 held out:
    # one model on all labeled rows); rows held out nowhere (trusted, unlabeled) get the models' mean.
    models, rest = max(len(splits), 1), np.flatnonzero(fold_of < 0)
    if minibatch:  # every fold model in one pass per epoch over the data
        fit_folds(x, coded.codes, fold_of, models, n_classes, l2, seed, probs, blend=blend_into is not None)
        return OutOfFold(probs, coded.classes, fold_of)
    for f in range(models):
        train, test = np.flatnonzero(coded.labeled & (fold_of != f)), np.flatnonzero(fold_of == f)
        predict = fit_probe(x[train], coded.codes[train], n_classes, l2, max_iter, probe, seed)
        probs[test] = predict(x[test])
        if len(rest):
            probs[rest] += predict(x[rest]) / models
    return OutOfFold(probs, coded.classes, fold_of)


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
    if not oof.classes:  # no labels at all: no given label to doubt
        return np.full(len(codes), np.nan), codes
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
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    oof = _oof(embeddings, labels, folds, seed, mask, probabilities)
    p, codes = _given_probability(oof, labels)
    score = -np.log(np.clip(p, 1e-12, None))
    coded = Labels(codes, oof.classes)
    return score_frame(ids, finish_score(score, coded, mask), oof.predicted())


def confident_learning(embeddings: np.ndarray | None, labels: Sequence, sample_ids: Sequence,
                       folds: int = 5, seed: int = 0, trusted: np.ndarray | None = None,
                       probabilities: OutOfFold | None = None,
                       method: str = "self_confidence") -> pd.DataFrame:
    """Confident learning on the out-of-fold probe probabilities (the ``cleanlab`` check).

    ``score`` = 1 - self-confidence, the probability of the given label; the extra boolean column
    ``flag`` marks the samples confident learning calls label errors
    (:func:`mlfix.scoring.confident_learning.find_label_issues`, cleanlab's flags exactly) on the
    probe's first fit (``probabilities.flags``; a probe refitted on cleaner labels is more confident
    everywhere, which raises the per-class thresholds above the errors it finds). Only labeled,
    untrusted samples are scored and flagged (trusted rows are in-sample predictions and would bias
    the per-class thresholds); the others get NaN / the floor and ``flag`` False.

    ``method``: ``"self_confidence"`` (computed here); any other
    ``cleanlab.rank.get_label_quality_scores`` method runs cleanlab itself, which is optional (an
    ImportError says ``pip install cleanlab`` when it is missing).

    Example:
        >>> x = np.r_[np.zeros((10, 2)), np.ones((10, 2))] + np.random.default_rng(0).normal(0, .1, (20, 2))
        >>> y = ["a"] * 10 + ["b"] * 10; y[3] = "b"
        >>> oof = out_of_fold_probabilities(x, y, folds=2, l2=1e-3)  # 2-D toy data: weak l2
        >>> table = confident_learning(None, y, range(20), probabilities=oof)
        >>> int(table.score.idxmax()), int(table.flag.sum())
        (3, 1)
    """
    n = len(labels)
    ids, mask = check_ids(sample_ids, n), check_trusted(trusted, n)
    oof = _oof(embeddings, labels, folds, seed, mask, probabilities)
    _, codes = _given_probability(oof, labels)
    coded = Labels(codes, oof.classes)
    rows = np.flatnonzero((codes >= 0) & ~mask)
    score = np.full(n, np.nan)
    if len(rows):
        score[rows] = 1.0 - _label_quality(codes[rows], oof.probs[rows], method)
    flag = oof.flags & ~mask if oof.flags is not None else _flags(oof, coded, mask)
    frame = score_frame(ids, finish_score(score, coded, mask), oof.predicted())
    frame["flag"] = flag
    return frame


def _label_quality(codes: np.ndarray, probs: np.ndarray, method: str) -> np.ndarray:
    known = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
    if method not in known:
        raise ValueError(f"unknown label quality method {method!r}; choose from {list(known)}")
    if method == "self_confidence":
        return self_confidence(codes, probs)
    # Other quality scores are a baseline only: cleanlab (AGPL-3.0) stays optional and off the default.
    rank = import_cleanlab("cleanlab.rank")
    return rank.get_label_quality_scores(codes, probs, method=method)
