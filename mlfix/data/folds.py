"""Stratified K-fold splits of labeled samples, shared by the linear probe and fine-tuning.

Each class is spread over the folds as far as it goes (scikit-learn's ``StratifiedKFold``); a class
with fewer samples than folds (even one) lands in as many held-out folds as it has samples, and the
training side of the other folds lacks it. Only when *every* class is smaller than the number of
folds does the split fall back to plain shuffled ``KFold``.

Example:
    >>> splits = fold_splits(np.array([0, 0, 0, 1, 1, 1]), folds=3, seed=0)
    >>> len(splits), sorted(np.concatenate([held for _, held in splits]).tolist())
    (3, [0, 1, 2, 3, 4, 5])
"""

from __future__ import annotations

import warnings

import numpy as np


def fold_splits(codes: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_positions, held_out_positions), ...]`` over ``codes`` (integer class per sample);
    every position is held out exactly once; deterministic for a seed; ``[]`` for fewer than 2 samples."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if len(codes) < 2:
        return []
    folds = min(folds, len(codes))
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    if counts.max() >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only 1 member"
            return list(splitter.split(np.zeros(len(codes)), codes))
    return list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(codes))))
