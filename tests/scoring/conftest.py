"""Fixtures shared by the scoring tests."""

from __future__ import annotations

import pytest

from mlfix.scoring import probe
from tests.scoring.synthetic import blobs_data


@pytest.fixture(scope="session")
def blobs():
    """10 classes x 40 samples, 5% planted errors, and one probe fit on them (read-only)."""
    data = blobs_data()
    data["oof"] = probe.out_of_fold_probabilities(data["x"], data["labels"], folds=5, seed=0)
    return data
