"""The combined score: a weighted rank average of several checks, the default review queue.

Why ranks: the checks' scales differ (a vote share in [0, 1], a loss in [0, inf)), and a rank
average rewards samples that several independent views agree on: the probe (a global linear
boundary, :mod:`mlfix.scoring.probe`) and the neighbour vote (local density,
:mod:`mlfix.scoring.neighbours`) make different mistakes.

The default pair and weights (:data:`COMBINED_DEFAULT`, :data:`COMBINED_WEIGHTS`): the probe's
out-of-fold loss counts twice, the embedding kNN vote once. The loss alone ranks the whole set about
as well; the 2:1 average is a little more precise in the first few percent of the queue, which is
the part reviewers see, and the vote adds robustness on small or poorly separated sets. The figures
behind this choice are in the README's figures table (``python -m bench.detect``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import TRUSTED_SCORE, score_frame

COMBINED_DEFAULT = ("loss", "knn")
COMBINED_WEIGHTS = (2.0, 1.0)


def combined(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Rank average of several methods' scores; suggested label of the first frame.

    Each method's score becomes its percentile rank among the samples it scores (ties share the mean
    rank), and the ranks are averaged (weighted). NaN (unlabeled) stays NaN; a sample at every
    method's floor (trusted) stays at the floor.

    Example:
        >>> a = pd.DataFrame({"sample_id": [1, 2, 3], "score": [.1, .9, .5], "suggested_label": list("xyz")})
        >>> b = a.assign(score=[.2, .3, .8])
        >>> combined([a, b]).score.round(3).tolist()
        [0.333, 0.833, 0.833]
    """
    if not frames:
        raise ValueError("combined needs at least one score table")
    first_ids = frames[0]["sample_id"].to_numpy()
    for frame in frames:
        if len(frame) != len(first_ids) or not np.array_equal(frame["sample_id"].to_numpy(), first_ids):
            raise ValueError("all score tables must list the same samples in the same order")
    weights = np.ones(len(frames)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(weights) != len(frames) or (weights < 0).any() or weights.sum() == 0:
        raise ValueError("weights must be one non-negative number per score table, not all zero")
    ranks = np.stack([f["score"].rank(pct=True, method="average").to_numpy() for f in frames])
    floor = np.stack([f["score"].to_numpy() == TRUSTED_SCORE for f in frames]).all(axis=0)
    score = np.average(ranks, axis=0, weights=weights)
    score[floor] = TRUSTED_SCORE
    return score_frame(first_ids, score, frames[0]["suggested_label"].to_numpy())
