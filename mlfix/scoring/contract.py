"""The contract every check follows (label errors, duplicates, outliers, image quality), and its helpers.

Every method returns a ``DataFrame[sample_id, score, suggested_label]`` (:data:`SCORE_COLUMNS`) with
one row per input sample, in input order (``RangeIndex``): ``score`` is a float, **higher = more
likely mislabeled**, NaN for unlabeled samples (they have no given label to doubt);
``suggested_label`` is the label the method believes in (it may be given for unlabeled samples too).
A trusted (reviewed) sample's score is pinned to :data:`TRUSTED_SCORE`, the lowest score any method
gives, so it leaves the queue. One report and one review page serve them all.

The health checks (:mod:`mlfix.scoring.health_checks`: duplicates, leaks between splits, outliers,
image quality) keep the same three columns (higher = worse; ``suggested_label`` None, or the label
a duplicates group agrees on) and add ``flag`` (bool: flagged at the check's default threshold,
``score >= THRESHOLDS[check]`` of its module) and ``reason`` (plain text, None when not flagged).
They score unlabeled samples too.

The methods live in :mod:`mlfix.scoring.neighbours` (neighbour votes), :mod:`mlfix.scoring.probe` (the
cross-validated linear probe: loss and confident learning) and :mod:`mlfix.scoring.combine` (the
combined score); :mod:`mlfix.scoring.registry` runs them all (:func:`~mlfix.scoring.registry.compute_scores`).
Each checks its inputs and builds its output here, so the rules above hold the same for all of them:

- :func:`encode_labels`: labels (None/NaN = unlabeled) as indices into sorted classes (:class:`Labels`);
- :func:`check_ids`, :func:`check_embeddings`, :func:`check_trusted`, :func:`check_meta`: one clear
  error per bad input;
- :func:`finish_score` (NaN for unlabeled, the floor for trusted) and :func:`score_frame` (the table).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlfix.data.labels import Labels, encode_labels, object_series  # noqa: F401  (part of the contract)

SCORE_COLUMNS = ["sample_id", "score", "suggested_label"]
TRUSTED_SCORE = 0.0  # every method's lowest score: a reviewed sample leaves the queue


def check_ids(sample_ids, n: int) -> np.ndarray:
    """``sample_ids`` as an object array, or ValueError when there is not one per sample."""
    ids = np.asarray(list(sample_ids), dtype=object)
    if len(ids) != n:
        raise ValueError(f"sample_ids has {len(ids)} entries but there are {n} samples; "
                         "pass one id per embedding row")
    return ids


LARGE_ROWS = 200_000  # from here embeddings are checked in chunks and passed on as given (float16 memmap)
CHECK_CHUNK = 65_536  # rows per finiteness check of large embeddings


def check_embeddings(embeddings, name: str = "embeddings", convert: bool | None = None) -> np.ndarray:
    """A non-empty finite (N, D) array, or ValueError that says what to fix.

    ``convert``: True gives float32; False returns the array as it is (a float16 memory map stays one),
    checked chunk by chunk; None (the default) is False from :data:`LARGE_ROWS` rows of float16/float32,
    else True: a float32 copy of 10M x 1280 would be 51 GB, and the functions that take large
    embeddings read them in chunks (the approximate neighbours, the minibatch probe).
    """
    x = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N samples x D dims), got shape {x.shape}")
    if convert is None:
        convert = not (x.shape[0] >= LARGE_ROWS and x.dtype in (np.float16, np.float32))
    if convert:
        x = x.astype(np.float32, copy=False)
    step = x.shape[0] if convert else CHECK_CHUNK
    for start in range(0, x.shape[0], step):
        if not np.isfinite(x[start:start + step]).all():
            raise ValueError(f"{name} contains NaN or infinite values; re-extract the features of those "
                             "samples or drop them before scoring")
    return x


def check_trusted(trusted, n: int) -> np.ndarray:
    """The (N,) bool mask of reviewed samples (all False when None), or ValueError."""
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


def check_meta(meta, n: int) -> pd.DataFrame:
    """Per-sample image metadata (one row per sample, in sample order) with a ``RangeIndex``, or
    ValueError. Its columns (any may be absent): ``width``, ``height``, ``split``, ``content_hash`` and
    the image statistics (:mod:`mlfix.data.quality`); see :meth:`mlfix.project.Project.image_meta`."""
    if not isinstance(meta, pd.DataFrame):
        raise ValueError(f"meta must be a DataFrame with one row per sample, got {type(meta).__name__}")
    if len(meta) != n:
        raise ValueError(f"meta has {len(meta)} rows but there are {n} samples; pass one row of image "
                         "metadata per embedding row (Project.image_meta(rows))")
    return meta.reset_index(drop=True)


def score_frame(sample_ids: np.ndarray, score: np.ndarray, suggested: np.ndarray) -> pd.DataFrame:
    """The table every method returns: ``DataFrame[sample_id, score, suggested_label]``."""
    return pd.DataFrame({"sample_id": sample_ids, "score": np.asarray(score, dtype=np.float64),
                         "suggested_label": pd.Series(suggested, dtype=object)})


def finish_score(score: np.ndarray, labels: Labels, trusted: np.ndarray) -> np.ndarray:
    """Unlabeled -> NaN, trusted -> the floor."""
    score = np.asarray(score, dtype=np.float64).copy()
    score[~labels.labeled] = np.nan
    score[trusted & labels.labeled] = TRUSTED_SCORE
    return score


def most_suspect_first(table: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """The scores table by ``score``, highest first, ties by ``positions`` (each row's place in the
    sample table); no score (NaN) last.

    >>> table = pd.DataFrame({"sample_id": ["a", "b", "c"], "score": [0.2, float("nan"), 0.9]})
    >>> most_suspect_first(table, np.arange(3))["sample_id"].tolist()
    ['c', 'a', 'b']
    """
    order = np.lexsort((np.asarray(positions), -table["score"].to_numpy(dtype=np.float64)))  # NaN last
    return table.iloc[order].reset_index(drop=True)
