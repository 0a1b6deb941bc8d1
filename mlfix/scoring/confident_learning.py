"""Confident learning: per-class thresholds, the confident joint, and the labels it calls wrong.

After Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset Labels",
Journal of Artificial Intelligence Research 70 (2021) 1373-1411, https://doi.org/10.1613/jair.1.12125.
From out-of-sample predicted probabilities ``probs`` (N, K) and the given labels ``codes`` (N,):

1. :func:`confident_thresholds` (Section 3.1, Eq. 2): the threshold of class j is the mean predicted
   probability of j over the samples labelled j, the model's expected self-confidence in j.
2. :func:`confident_joint` (Section 3.1, Eq. 1 and 3): a sample labelled i counts towards true class
   j when ``p_j >= t_j`` (the most probable such j when several pass; no count when none does); the
   counts are calibrated so that row i sums to the number of samples labelled i.
3. :func:`find_label_issues` (Section 3.2, "prune by noise rate"): among the samples labelled i, the
   ``C[i, j]`` with the largest margin ``p_j - p_i`` are flagged, for every j != i.

Why it is written here: cleanlab, the authors' library, is AGPL-3.0 and mlfix is permissive, so
mlfix's default queue must not need it. This module reproduces what mlfix used from it,
``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults, flag for flag: a class
keeps at least one sample (``min_examples_per_class=1``), and a sample whose given label is the most
probable class (within 1e-6) is never flagged. ``tests/scoring/test_confident_learning.py`` checks
the equality against cleanlab 2.x wherever cleanlab is installed; :func:`cleanlab_label_issues` runs
cleanlab itself, as an optional cross-check.

Example:
    >>> probs = np.array([[.9, .1], [.8, .2], [.7, .3], [.2, .8], [.1, .9], [.3, .7]])
    >>> codes = np.array([0, 0, 1, 1, 1, 0])   # samples 2 and 5 look like the other class
    >>> find_label_issues(codes, probs).nonzero()[0].tolist()
    [2, 5]
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

# The numeric tolerances of the reference implementation, so that the flags match it exactly.
TOLERANCE = 1e-6  # a probability within this of a threshold (or of the top class) counts as reaching it
MIN_THRESHOLD = 2 * TOLERANCE  # thresholds stay above the tolerance, so a 0 probability never counts
ABSENT_THRESHOLD = 2.0  # a class nobody is labelled with: no probability reaches it
TINY = 1e-100  # guards divisions by an empty row


def confident_thresholds(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(K,) per-class thresholds: the mean probability of class j over the samples labelled j.

    >>> confident_thresholds(np.array([0, 0, 1]), np.array([[.9, .1], [.7, .3], [.4, .6]])).tolist()
    [0.8, 0.6]
    """
    codes, probs = _check(codes, probs)
    means = [np.mean(probs[codes == j, j]) if (codes == j).any() else ABSENT_THRESHOLD
             for j in range(probs.shape[1])]
    return np.clip(means, MIN_THRESHOLD, None)


def confident_joint(codes: np.ndarray, probs: np.ndarray, calibrate: bool = True) -> np.ndarray:
    """(K, K) int counts: row = given label, column = the class a sample confidently belongs to.

    Every diagonal count is at least 1 before calibration (each class has a confident example).

    >>> probs = np.array([[.9, .1], [.8, .2], [.3, .7], [.2, .8], [.9, .1]])
    >>> confident_joint(np.array([0, 0, 1, 1, 1]), probs).tolist()  # the last sample is a confident 0
    [[2, 0], [1, 2]]
    """
    codes, probs = _check(codes, probs)
    k = probs.shape[1]
    passes = probs >= confident_thresholds(codes, probs) - TOLERANCE
    n_passed = passes.sum(axis=1)
    # One confident class: that one; several: the most probable of all classes (as in Eq. 1).
    true = np.where(n_passed > 1, probs.argmax(axis=1), passes.argmax(axis=1))
    counted = n_passed > 0
    # Counted as (true, given) and transposed: the reference's column-major layout, so that the
    # calibration sums its floats in the same order and rounds ties at .5 the same way.
    joint = np.bincount(true[counted] * k + codes[counted], minlength=k * k).reshape(k, k).T
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    return _calibrate(joint, np.bincount(codes, minlength=k)) if calibrate else joint


def find_label_issues(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) bool: the samples confident learning calls mislabeled (prune by noise rate).

    Args:
        codes: (N,) int given labels, 0 <= code < K.
        probs: (N, K) out-of-sample predicted probabilities (e.g. a cross-validated probe's).

    Returns:
        The same flags as ``cleanlab.filter.find_label_issues(codes, probs)`` (its defaults).
    """
    codes, probs = _check(codes, probs)
    to_prune = _keep_one_per_class(confident_joint(codes, probs))
    flags = np.zeros(len(codes), dtype=bool)
    for given in range(probs.shape[1]):
        rows = np.flatnonzero(codes == given)
        if len(rows) > 1:  # a class of one sample keeps it
            flags[rows] = _prune_class(probs[rows], given, to_prune[given])
    flags[_given_is_top(codes, probs)] = False
    return flags


def self_confidence(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) the predicted probability of each sample's given label (cleanlab's "self_confidence").

    >>> self_confidence(np.array([1, 0]), np.array([[.3, .7], [.6, .4]])).tolist()
    [0.7, 0.6]
    """
    codes, probs = _check(codes, probs)
    return probs[np.arange(len(codes)), codes]


def cleanlab_label_issues(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's own ``find_label_issues`` on the same inputs: an optional cross-check.

    Raises ImportError saying how to install cleanlab when it is missing.
    """
    codes, probs = _check(codes, probs)
    return np.asarray(import_cleanlab("cleanlab.filter").find_label_issues(codes, probs), dtype=bool)


def import_cleanlab(module: str = "cleanlab") -> ModuleType:
    """Import a cleanlab module for an optional baseline or cross-check, or say how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed for this optional cross-check or baseline, and mlfix "
                          "does not install it (cleanlab is AGPL-3.0): pip install cleanlab") from error


# ---------------------------------------------------------------------------------------------
# The steps


def _calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Scale row i to the number of samples labelled i, the total to N; round keeping row sums."""
    rows = (joint.T / np.clip(joint.sum(axis=1), TINY, None) * label_counts).T
    scaled = rows / np.clip(np.sum(rows), TINY, None) * label_counts.sum()
    return np.array([_round_keeping_sum(row) for row in scaled], dtype=int)


def _round_keeping_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers that keep the rounded sum: move the values with the largest remainders."""
    floats = np.asarray(values, dtype=float)
    ints = floats.round()
    target = np.sum(floats).round()
    while abs(np.sum(ints).round() - target) > TOLERANCE:
        missing = np.round(target - np.sum(ints).round())
        step = 1 if missing > 0 else -1
        order = np.argsort(floats - ints)  # rounded down most first when adding, up most when removing
        order = order[::-1] if step > 0 else order
        ints[order[:min(int(abs(missing)), len(floats))]] += step
    return ints.astype(int)


def _keep_one_per_class(joint: np.ndarray) -> np.ndarray:
    """How many to prune per (given, true) pair, leaving each class at least one confident sample:
    where a calibrated diagonal rounded to 0, it becomes 1 and that row's other counts drop by 1."""
    lacking = (joint.diagonal() < 1).astype(joint.dtype)
    to_prune = np.maximum(joint - lacking[:, None], 0)
    np.fill_diagonal(to_prune, np.maximum(joint.diagonal(), 1))
    return to_prune


def _prune_class(probs: np.ndarray, given: int, to_prune: np.ndarray) -> np.ndarray:
    """Flags among the samples labelled ``given``: for each other class j, the ``to_prune[j]`` with
    the largest margin ``p_j - p_given`` (the likeliest to truly be j)."""
    flags = np.zeros(len(probs), dtype=bool)
    for true, count in enumerate(to_prune):
        if true != given and count > 0:
            margin = probs[:, true] - probs[:, given]
            flags[np.argsort(-margin)[:count]] = True
    return flags


def _given_is_top(codes: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) bool: the given label is the most probable class, counting a near-tie (1e-6) as a win."""
    boosted = probs.copy()
    boosted[np.arange(len(codes)), codes] += TOLERANCE
    return boosted.argmax(axis=1) == codes


def _check(codes, probs) -> tuple[np.ndarray, np.ndarray]:
    codes, probs = np.asarray(codes), np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"probs must be an (N samples x K classes) array, got shape {probs.shape}")
    if codes.shape != (len(probs),):
        raise ValueError(f"codes must hold one class index per row of probs ({len(probs)}), got shape "
                         f"{codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError("codes must be integer class indices; encode labels with "
                         "mlfix.scoring.contract.encode_labels first")
    if len(codes) and (codes.min() < 0 or codes.max() >= probs.shape[1]):
        raise ValueError(f"codes must lie in [0, {probs.shape[1]}) (one column of probs per class); "
                         "leave unlabeled samples (-1) out before calling")
    if not np.isfinite(probs).all():
        raise ValueError("probs contains NaN or infinite values; recompute the predicted probabilities")
    return codes, probs
