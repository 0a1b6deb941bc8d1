"""Labels as class indices: :func:`encode_labels` and :class:`Labels`, shared by the scores
(:mod:`mlfix.scoring.contract`) and fine-tuning (:mod:`mlfix.training.finetune`), so both read the
same classes in the same order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


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


def object_series(values: Sequence | np.ndarray | pd.Series) -> pd.Series:
    """``values`` as an object Series on a fresh index; arrays, Series and Categoricals without a Python
    list of every row.

    >>> object_series(np.array(["a", "b"])).tolist(), object_series(("x", None)).tolist()
    (['a', 'b'], ['x', None])
    """
    if isinstance(values, (pd.Series, pd.Index, np.ndarray, pd.Categorical)):
        return pd.Series(np.asarray(values, dtype=object), dtype=object)
    return pd.Series(list(values), dtype=object)


def encode_labels(labels: Sequence | np.ndarray | pd.Series, n: int | None = None) -> Labels:
    """Encode labels (strings or numbers; None/NaN = unlabeled) as indices into sorted classes.

    >>> encode_labels(["b", None, "a", "b"]).codes.tolist()
    [1, -1, 0, 1]
    """
    series = object_series(labels)
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
    codes = np.full(len(series), -1, dtype=np.int64)
    codes[~missing] = pd.Index(classes, dtype=object).get_indexer(present.to_numpy())  # a hash join, no row loop
    return Labels(codes, classes)
