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

After ``mlfix finetune`` the probe's probabilities are mostly the fine-tuned network's, and the vote,
still on the frozen features, is the weaker view: :func:`default_weights` discounts it as the blend
discounted the frozen probe (:mod:`mlfix.scoring.blend`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.contract import TRUSTED_SCORE, score_frame

COMBINED_DEFAULT = ("loss", "knn")
COMBINED_WEIGHTS = (2.0, 1.0)


def default_weights(finetuned_share: float = 0.0) -> tuple[float, float]:
    """The loss and kNN vote weights of the default queue when the fine-tuned probabilities have the
    share ``finetuned_share`` (``w``, :func:`mlfix.scoring.blend.blend_weight`) of the probe's: 2 and
    ``1 - w``. The vote runs on the frozen features, so it gets the frozen probe's share. Loss AUROC
    of the queue, 2:1 then 2:(1-w) (``bench/finetune``'s cache, one script, this session's note):
    CIFAR-10N 10,000, 5 folds, w 0.8: 0.955, 0.960 (precision at 2% 1.0 both); 3 folds: 0.954,
    0.959; GTSRB 5,000 at 96 px, w 0.9: 0.993, 0.995. Without fine-tuning (w = 0): 2:1.

    >>> default_weights(), default_weights(0.75)
    ((2.0, 1.0), (2.0, 0.25))
    """
    share = min(max(float(finetuned_share), 0.0), 1.0)
    return COMBINED_WEIGHTS[0], COMBINED_WEIGHTS[1] * (1.0 - share)


def combined(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """Rank average of several methods' scores; suggested label of the first frame.

    Each method's score becomes its percentile rank among the samples it scores (ties share the mean
    rank), and the ranks are averaged (weighted; a method of weight 0 is left out). NaN (unlabeled) stays NaN; a sample at every
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
    frames, weights = [f for f, w in zip(frames, weights) if w > 0], weights[weights > 0]  # a 0 adds nothing, not its NaN
    ranks = np.stack([f["score"].rank(pct=True, method="average").to_numpy() for f in frames])
    floor = np.stack([f["score"].to_numpy() == TRUSTED_SCORE for f in frames]).all(axis=0)
    score = np.average(ranks, axis=0, weights=weights)
    score[floor] = TRUSTED_SCORE
    return score_frame(first_ids, score, frames[0]["suggested_label"].to_numpy())
