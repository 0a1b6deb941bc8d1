"""The confusion table: given label x predicted label counts, and the samples in one cell.

The prediction is usually the probe's out-of-fold argmax (:meth:`mlfix.scoring.probe.OutOfFold.predicted`,
the ``suggested_cleanlab`` column of the scores table), or, once the user added their own model's
probabilities (``Project.add_predictions``, ``mlfix scores --pred-probs``), that model's argmax: they
replace the probe in the scores, so the heatmap then shows the user's model (:func:`model_confusion`
counts it straight from the probabilities). A large off-diagonal cell is a systematic
confusion (two classes that look alike, or an annotator's habit); the review page opens a cell with
:func:`confusion_samples`, most suspicious first.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import check_ids, encode_labels, object_series
from mlfix.scoring.probe import OutOfFold


def confusion(labels: Sequence, predicted: Sequence) -> pd.DataFrame:
    """Counts of (given label, predicted label) pairs: ``DataFrame[given, predicted, count]``.

    Every pair of classes appears (zero counts too), rows sorted by given then predicted, so the table
    pivots straight into a heatmap: ``table.pivot(index="given", columns="predicted", values="count")``.
    Unlabeled samples are left out.

    >>> confusion(["a", "a", "b", None], ["a", "b", "b", "a"])["count"].tolist()
    [1, 1, 0, 1]
    """
    given, pred = _pairs(labels, predicted)
    both = encode_labels(np.concatenate([given, pred]))
    classes, m = both.classes, len(both.classes)
    counts = np.bincount(both.codes[:len(given)] * m + both.codes[len(given):], minlength=m * m)
    full = pd.MultiIndex.from_product([classes, classes], names=["given", "predicted"])
    return pd.DataFrame({"count": counts.astype(np.int64)}, index=full).reset_index()


def model_confusion(probabilities: OutOfFold, labels: Sequence) -> pd.DataFrame:
    """:func:`confusion` of the given ``labels`` against a model's argmax (an :class:`OutOfFold`: the
    probe's, or the user's model's from :mod:`mlfix.scoring.predictions`).

    >>> oof = OutOfFold(np.array([[.9, .1], [.3, .7], [.6, .4]]), ["a", "b"], np.full(3, -1))
    >>> model_confusion(oof, ["a", "a", "b"])["count"].tolist()
    [1, 1, 1, 0]
    """
    if probabilities.probs.shape[0] != len(labels):
        raise ValueError(f"probabilities are for {probabilities.probs.shape[0]} samples but there are "
                         f"{len(labels)} labels; pass one row per label")
    return confusion(labels, probabilities.predicted())


def confusion_samples(labels: Sequence, predicted: Sequence, sample_ids: Sequence, given,
                      predicted_label, order: Sequence[float] | None = None) -> list:
    """The sample ids in one confusion cell (given label ``given``, predicted ``predicted_label``).

    With ``order`` (e.g. a score column) the ids come most suspicious first.

    >>> confusion_samples(["a", "a", "b"], ["b", "b", "b"], ["x", "y", "z"], "a", "b", order=[.1, .9, .5])
    ['y', 'x']
    """
    n = len(labels)
    ids = check_ids(sample_ids, n)
    given_arr, pred_arr = object_series(labels).to_numpy(), object_series(predicted).to_numpy()
    if len(pred_arr) != n:
        raise ValueError(f"predicted has {len(pred_arr)} entries, labels {n}; pass one prediction per sample")
    rows = np.flatnonzero((given_arr == given) & (pred_arr == predicted_label))
    if order is not None:
        key = np.asarray(order, dtype=np.float64)[rows]
        rows = rows[np.argsort(-np.nan_to_num(key, nan=-np.inf), kind="stable")]
    return ids[rows].tolist()


def _pairs(labels: Sequence, predicted: Sequence) -> tuple[np.ndarray, np.ndarray]:
    given, pred = object_series(labels), object_series(predicted)
    if len(given) != len(pred):
        raise ValueError(f"labels has {len(given)} entries but predicted has {len(pred)}; "
                         "pass one prediction per label")
    keep = ~(given.isna() | pred.isna()).to_numpy()
    return given[keep].to_numpy(), pred[keep].to_numpy()
