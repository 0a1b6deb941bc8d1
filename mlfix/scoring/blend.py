"""Two sources of out-of-fold class probabilities made one: the frozen backbone's linear probe
(:mod:`mlfix.scoring.probe`) and a network fine-tuned on the labels (:mod:`mlfix.training.finetune`),
weighted by how well each predicts the given labels. The probe-based checks read the blend
(:class:`mlfix.scoring.registry.Inputs`).
"""

from __future__ import annotations

import numpy as np

from mlfix.scoring.probe import OutOfFold

BLEND_WEIGHTS = np.linspace(0.0, 1.0, 21)  # the fine-tuned share tried, in steps of 0.05


def blend(probe: OutOfFold, finetuned: OutOfFold | None, codes: np.ndarray, weight: float | None = None) -> OutOfFold:
    """The weighted mean ``w * finetuned + (1 - w) * probe`` of the linear probe's and a fine-tuned
    network's out-of-fold probabilities (same classes; ``probe`` alone without the other). ``w`` is
    ``weight`` when the caller has it already, else :func:`blend_weight` on the given label ``codes``.
    The folds are the probe's; confident learning flags the blend afresh. A sample without a
    fine-tuned prediction (a NaN row: every fold trained on it, or its image could not be read) keeps
    the probe's probabilities.

    Why weighted: the stronger source should count more, and which one is stronger depends on the
    data and the run (CIFAR-10N 10,000, 3 folds: fine-tuned loss AUROC 0.958, the frozen probe 0.934,
    their plain mean 0.956 lost to the fine-tuned alone, the weighted blend, w = 0.8, 0.959; GTSRB
    5,000 at 96 px, where the two are about as good: 0.990 either way; README, ``python -m
    bench.finetune``).
    """
    if finetuned is None:
        return probe
    _check_aligned(probe, finetuned)
    w = blend_weight(probe, finetuned, codes) if weight is None else float(weight)
    missing = ~np.isfinite(finetuned.probs).all(axis=1)
    mixed = w * np.where(missing[:, None], probe.probs, finetuned.probs) + (1 - w) * probe.probs
    return OutOfFold(mixed, probe.classes, probe.fold)


def blend_weight(probe: OutOfFold, finetuned: OutOfFold, codes: np.ndarray) -> float:
    """The fine-tuned share ``w`` (0, 0.05, ... 1) whose blend gives the given labels ``codes`` the
    lowest mean cross-entropy (stacking with one weight: Wolpert 1992; Breiman 1996, "Stacked
    regressions"). Pass -1 for the samples not to judge on: unlabeled ones, and trusted ones, which
    every fold trained on. The others are out-of-fold in both inputs (the probe's suspects too: its
    refit leaves them out), so neither source could memorise the labels it is judged on; the wrong
    labels are a minority and cost both sources alike. Samples without a fine-tuned prediction (NaN
    rows) are not judged on either. 0.5 when no sample is left to judge on.

    >>> codes = np.array([0, 0, 1, 1])
    >>> sharp = OutOfFold(np.array([[.9, .1], [.8, .2], [.1, .9], [.3, .7]]), ["a", "b"], np.zeros(4, int))
    >>> flat = OutOfFold(np.full((4, 2), .5), ["a", "b"], np.zeros(4, int))
    >>> blend_weight(flat, sharp, codes), blend_weight(sharp, flat, codes)
    (1.0, 0.0)
    """
    _check_aligned(probe, finetuned)
    codes = np.asarray(codes)
    rows = np.flatnonzero((codes >= 0) & np.isfinite(finetuned.probs).all(axis=1))
    if not len(rows):
        return 0.5
    tuned, frozen = finetuned.probs[rows, codes[rows]], probe.probs[rows, codes[rows]]
    loss = [-np.log(np.clip(w * tuned + (1 - w) * frozen, 1e-12, None)).mean() for w in BLEND_WEIGHTS]
    return float(BLEND_WEIGHTS[int(np.argmin(loss))])


def _check_aligned(probe: OutOfFold, finetuned: OutOfFold) -> None:
    if list(finetuned.classes) != list(probe.classes) or finetuned.probs.shape != probe.probs.shape:
        raise ValueError("fine-tuned probabilities must cover the same samples and classes as the labels; "
                         "build them with mlfix.scoring.probe.aligned_out_of_fold")
