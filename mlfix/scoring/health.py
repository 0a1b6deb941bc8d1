"""The health summary of a dataset: per check, how many samples it flags and at which threshold.

After cleanlab Datalab's issue summary (``Datalab.get_issue_summary``): one row per registered check
(:data:`mlfix.scoring.registry.REGISTRY`), read from the wide table of
:func:`~mlfix.scoring.registry.compute_scores` (``score_<check>``, ``flag_<check>``) and the reasons
the checks left out were skipped (``table.attrs["skipped"]``). ``Project.health()`` and
``mlfix status`` show it.
"""

from __future__ import annotations

import importlib

import numpy as np
import pandas as pd

from mlfix.scoring.health_checks import QUALITY_DESCRIPTIONS
from mlfix.scoring.registry import REGISTRY

# What kind of defect each built-in check finds (a check registered elsewhere: "label" when it needs
# labels, else "other").
CHECK_KINDS: dict[str, str] = {
    **{name: "label" for name in ("knn", "words", "cleanlab", "loss", "combined")},
    "duplicates": "duplicates", "leak": "duplicates", "outlier": "outlier", "class_outlier": "outlier",
    **{name: "quality" for name in QUALITY_DESCRIPTIONS},
}
# Where each kind's default thresholds live (``THRESHOLDS: dict[check, float]``, flag = score >= it).
_THRESHOLD_MODULES = {"duplicates": "mlfix.scoring.duplicates", "outlier": "mlfix.scoring.outliers",
                      "quality": "mlfix.scoring.quality"}
SUMMARY_COLUMNS = ["check", "kind", "flagged", "samples", "threshold", "description", "skipped", "note"]


def check_kind(name: str) -> str:
    """The kind of the registered check ``name``: label, duplicates, outlier, quality (or other)."""
    return CHECK_KINDS.get(name, "label" if REGISTRY[name].labels else "other")


def threshold(name: str) -> float:
    """The default threshold of check ``name`` (flag = score >= it); NaN for the label checks (they
    rank, and ``cleanlab`` flags with per-class thresholds of its own)."""
    module = _THRESHOLD_MODULES.get(check_kind(name))
    if module is None:
        return float("nan")
    try:
        return float(getattr(importlib.import_module(module), "THRESHOLDS", {}).get(name, float("nan")))
    except ImportError:  # a check module missing from this install: no threshold to show
        return float("nan")


def health_summary(table: pd.DataFrame, skipped: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per registered check: ``check, kind, flagged, samples, threshold, description, skipped, note``.

    ``flagged``: samples with ``flag_<check>`` True (<NA> when the check has no flags: the ranking
    label checks); ``samples``: samples the check scored (a score, not NaN); ``threshold``: its
    default (:func:`threshold`); ``skipped``: why it did not run (from ``skipped``, else
    ``table.attrs["skipped"]``; "not run" when neither says), None when it ran; ``note``: what a check
    that ran wants said (``table.attrs["notes"]``: duplicates on features that cannot tell copies apart).

    Example:
        >>> table = pd.DataFrame({"score_dark": [0.9, 0.1, np.nan], "flag_dark": [True, False, False]})
        >>> row = health_summary(table, {"leak": "no split column"}).set_index("check")
        >>> row.loc["dark", "kind"], int(row.loc["dark", "flagged"]), int(row.loc["dark", "samples"])
        ('quality', 1, 2)
        >>> row.loc["leak", "skipped"], pd.isna(row.loc["leak", "flagged"])
        ('no split column', True)
    """
    skipped = dict(table.attrs.get("skipped") or {}) if skipped is None else skipped
    notes = dict(table.attrs.get("notes") or {})
    rows = []
    for name, check in REGISTRY.items():
        ran = f"score_{name}" in table.columns
        flags = table.get(f"flag_{name}")
        rows.append({
            "check": name, "kind": check_kind(name),
            "flagged": int(flags.fillna(False).astype(bool).sum()) if ran and flags is not None else pd.NA,
            "samples": int(table[f"score_{name}"].notna().sum()) if ran else 0,
            "threshold": threshold(name), "description": check.description,
            "skipped": None if ran else skipped.get(name, "not run"),
            "note": notes.get(name) if ran else None,
        })
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    out["flagged"] = out["flagged"].astype("Int64")
    out["samples"] = out["samples"].astype(np.int64)
    return out
