"""Every ordering refuses bags and start rows it cannot use, saying what to pass."""

from __future__ import annotations

import numpy as np
import pytest

from mlfix.pipeline.ordering.approximate import approximate_order
from mlfix.pipeline.ordering.exact import greedy_order


@pytest.mark.parametrize("bad, error, says", [
    (np.zeros(5, bool), ValueError, "2-D"),
    (np.zeros((4, 8), np.int64), TypeError, "astype(bool)"),
    (np.zeros((4, 8), np.float32), TypeError, "np.packbits"),
    ([[True, False]], TypeError, "numpy array"),
])
def test_bad_bags_are_refused_with_a_hint(bad, error, says):
    with pytest.raises(error, match=says.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        greedy_order(bad)


@pytest.mark.parametrize("start, error", [(5, ValueError), (-1, ValueError), (1.0, TypeError), (True, TypeError)])
def test_bad_start_is_refused(start, error):
    bags = np.ones((5, 8), bool)
    with pytest.raises(error, match="start"):
        greedy_order(bags, start)
    with pytest.raises(error, match="start"):
        approximate_order(bags, start)


def test_a_start_without_images_must_be_zero():
    with pytest.raises(ValueError, match="use start=0"):
        greedy_order(np.zeros((0, 8), bool), 1)
