"""The health checks of the registry: duplicates, leaks between splits, outliers, image quality.

Listed here in :data:`HEALTH_CHECKS` and registered by :mod:`mlfix.scoring.registry` after its label
checks (so the columns of ``scores.parquet`` come in this order; this module does not import the
registry, which imports it). Each is a
thin wrapper: the work is in :mod:`mlfix.scoring.duplicates`, :mod:`mlfix.scoring.outliers` and
:mod:`mlfix.scoring.quality`, imported when the check runs. They need no labels (``class_outlier``
excepted: how far a sample lies from its own class) and score unlabeled samples too; each table
carries ``flag`` (at the module's default threshold, ``THRESHOLDS``) and ``reason``.

The duplicates groups are computed once per :class:`~mlfix.scoring.registry.Inputs` (the
``groups`` resource, read from the duplicates table) and shared by the leak check, as the probe fit
is shared by the label checks. A group whose members carry different labels is a label problem:
:func:`queue_conflicts` puts its odd members out first in the default queue (``score``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import TRUSTED_SCORE



class Inputs(Protocol):
    """What these checks read of :class:`mlfix.scoring.registry.Inputs` (described, not imported:
    the registry imports this module to register the checks)."""

    embeddings: np.ndarray
    labels: Sequence
    sample_ids: np.ndarray
    trusted: np.ndarray
    meta: pd.DataFrame | None
    neighbours: Any
    groups: np.ndarray

    def column(self, name: str) -> pd.Series | None: ...

# The image-quality checks (:mod:`mlfix.scoring.quality`) and what each finds, in column order.
QUALITY_DESCRIPTIONS = {
    "dark": "Too dark: most pixels near black.",
    "overexposed": "Over-exposed: most pixels near white.",
    "blurry": "Blurry: little fine detail for this set (robust z of the Laplacian variance).",
    "low_information": "Low information: little variety of pixel values (entropy), e.g. a blank image.",
    "odd_aspect": "Odd aspect ratio: far wider than tall or taller than wide.",
    "tiny": "Tiny: far fewer pixels than the model's input size.",
    "grayscale": "Grayscale image in a colour set.",
}


class HealthCheck(NamedTuple):
    """A health check as :func:`mlfix.scoring.registry.register` takes it."""

    run: Callable[["Inputs"], pd.DataFrame]
    needs: tuple[str, ...] = ()
    labels: bool = False
    meta: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()


HEALTH_CHECKS: dict[str, HealthCheck] = {}  # name -> check, in column order
# The share of the set in duplicates groups from which near copies no longer lead the label queue
# (the demo's digits under random weights: 96% "near copies"; the scoring tests' tight blobs: 35%).
QUEUE_MAX_FLAGGED = 0.5


def _check(name: str, **options) -> Callable:
    def add(run: Callable[["Inputs"], pd.DataFrame]) -> Callable[["Inputs"], pd.DataFrame]:
        HEALTH_CHECKS[name] = HealthCheck(run, **options)
        return run
    return add


def _splits(inputs: "Inputs") -> pd.Series | None:
    split = inputs.column("split")
    return None if split is None or split.isna().all() else split


@_check("duplicates", needs=("embeddings", "neighbours"))
def _duplicates(inputs: "Inputs") -> pd.DataFrame:
    """Exact and near copies (same pixels, or cosine of the pooled vectors), grouped; copies under
    different labels are label problems."""
    from mlfix.scoring.duplicates import duplicates_check

    content_hash = inputs.column("content_hash")
    return duplicates_check(inputs.embeddings, inputs.labels, inputs.sample_ids,
                            content_hash=None if content_hash is None else content_hash.to_numpy(dtype=np.int64),
                            splits=_splits(inputs), neighbours=inputs.neighbours, trusted=inputs.trusted)


@_check("leak", needs=("groups",), meta=("split",))
def _leak(inputs: "Inputs") -> pd.DataFrame:
    """Leaks between splits: copies of one image in two or more splits."""
    from mlfix.scoring.duplicates import leak_check

    return leak_check(inputs.groups, inputs.column("split"), inputs.sample_ids)


@_check("outlier", needs=("neighbours",))
def _outlier(inputs: "Inputs") -> pd.DataFrame:
    """Outliers: far from their nearest neighbours (mean cosine distance)."""
    from mlfix.scoring.outliers import outlier_check

    return outlier_check(inputs.neighbours, inputs.sample_ids)


@_check("class_outlier", needs=("embeddings",), labels=True)
def _class_outlier(inputs: "Inputs") -> pd.DataFrame:
    """Far from the other samples of their own class."""
    from mlfix.scoring.outliers import class_outlier_check

    return class_outlier_check(inputs.embeddings, inputs.labels, inputs.sample_ids, trusted=inputs.trusted)


def _quality_columns(name: str) -> Callable[[], tuple[str, ...]]:
    def columns() -> tuple[str, ...]:
        from mlfix.scoring.quality import QUALITY_CHECKS

        return tuple(QUALITY_CHECKS[name])
    return columns


def _quality(name: str) -> Callable[["Inputs"], pd.DataFrame]:
    def run(inputs: "Inputs") -> pd.DataFrame:
        from mlfix.scoring.quality import quality_check

        return quality_check(name, inputs.meta, inputs.sample_ids)
    run.__doc__, run.__qualname__ = QUALITY_DESCRIPTIONS[name], f"quality_{name}"
    return run


for _name in QUALITY_DESCRIPTIONS:
    _check(_name, meta=_quality_columns(_name))(_quality(_name))


def queue_conflicts(score: pd.Series, duplicates: pd.DataFrame, labels: Sequence,
                    trusted: np.ndarray) -> pd.Series:
    """``score`` with the copies whose label disagrees with their duplicates group first: above every
    other score, closest copies first (one image under two labels: one label is wrong).

    Only the members whose label differs from the group's reference label (``suggested_label`` of the
    duplicates table: the majority, or the reviewed members' label) move up: a long chain of near
    copies in one class with one odd label out puts that one first, not the whole chain. Near copies
    count only while the check flags less than :data:`QUEUE_MAX_FLAGGED` of the set: beyond, the
    vectors do not tell copies from neighbours (random weights; a set of one pattern) and only exact
    copies (score 1) move up. Trusted samples keep the floor; unlabeled ones keep their score (NaN).

    >>> dup = pd.DataFrame({"score": [1.0, 1.0, 1.0, 0.99, 0.0], "conflict": [True, True, True, True, False],
    ...                     "suggested_label": ["a", "a", "a", "a", None]})
    >>> queue_conflicts(pd.Series([0.2, 0.5, 0.9, 0.1, 0.3]), dup, ["a", "b", "b", None, "a"],
    ...                 np.array([False, True, False, False, False])).tolist()
    [0.2, 0.5, 2.0, 0.1, 0.3]
    """
    given = pd.Series(list(labels), dtype=object)
    odd = given.notna().to_numpy() & (given.to_numpy() != duplicates["suggested_label"].to_numpy())
    up = duplicates["conflict"].to_numpy(dtype=bool) & odd & ~np.asarray(trusted, dtype=bool)
    copy = duplicates["score"].to_numpy(dtype=np.float64)
    if (copy > 0).mean() >= QUEUE_MAX_FLAGGED:
        up &= copy >= 1.0
    if not up.any():
        return score
    values = score.to_numpy(dtype=np.float64)
    top = max(1.0, float(np.nanmax(values, initial=TRUSTED_SCORE)))
    out = values.copy()
    out[up] = top + np.clip(copy[up], 1e-6, None)
    return pd.Series(out, index=score.index)
