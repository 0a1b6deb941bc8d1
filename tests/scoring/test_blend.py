"""Blending the frozen probe with fine-tuned out-of-fold probabilities (mlfix.scoring.blend), as the
scores use it: the weight, trusted and missing rows, and the combined queue's discounted vote."""

from __future__ import annotations

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st


def test_scores_take_the_weighted_mean_of_the_probe_and_the_fine_tuned_probabilities():
    from mlfix.scoring.probe import OutOfFold, out_of_fold_probabilities
    from mlfix.scoring.blend import blend_weight
    from mlfix.scoring.registry import compute_scores

    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (30, 4)), rng.normal(1.5, 1, (30, 4))].astype(np.float32)
    labels = np.array(["a"] * 30 + ["b"] * 30, dtype=object)
    labels[[3, 40]] = ["b", "a"]
    given = (labels == "b").astype(int)
    probe = out_of_fold_probabilities(x, labels)
    truth = np.repeat([0, 1], 30)
    sure = OutOfFold(np.where(truth[:, None] == [0, 1], 0.95, 0.05), ["a", "b"], np.zeros(60, dtype=np.int64))
    useless = OutOfFold(np.tile([0.9, 0.1], (60, 1)), ["a", "b"], np.zeros(60, dtype=np.int64))
    assert blend_weight(probe, sure, given) > 0.5 > blend_weight(probe, useless, given)
    for tuned in (sure, useless):
        w = blend_weight(probe, tuned, given)
        table = compute_scores(x, labels, range(60), methods=["loss"], finetuned=tuned)
        expected = -np.log((w * tuned.probs + (1 - w) * probe.probs)[np.arange(60), given])
        np.testing.assert_allclose(table["score_loss"], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="same samples and classes"):
        compute_scores(x, labels, range(60), methods=["loss"], finetuned=OutOfFold(sure.probs[:10], ["a", "b"],
                                                                                  sure.fold[:10]))


def test_the_combined_queue_discounts_the_frozen_vote_by_the_fine_tuned_share():
    """After fine-tuning the kNN vote (on the frozen features) counts 1 - w against the loss's 2."""
    from mlfix.scoring.combine import combined
    from mlfix.scoring.probe import OutOfFold, out_of_fold_probabilities
    from mlfix.scoring.blend import blend_weight
    from mlfix.scoring.registry import compute_scores

    rng = np.random.default_rng(2)
    truth = np.repeat([0, 1], 40)
    x = (truth[:, None] * 1.2 + rng.normal(0, 1, (80, 3))).astype(np.float32)
    labels = np.where(truth == 1, "b", "a").astype(object)
    labels[[1, 5, 50, 70]] = ["b", "b", "a", "a"]
    tuned = OutOfFold(np.where(truth[:, None] == [0, 1], 0.7, 0.3), ["a", "b"], np.zeros(80, dtype=np.int64))
    w = blend_weight(out_of_fold_probabilities(x, labels), tuned, (labels == "b").astype(int))
    assert 0 < w < 1
    table = compute_scores(x, labels, range(80), methods=["loss", "knn", "combined"], finetuned=tuned)
    frame = lambda column: table[["sample_id", "label"]].assign(score=table[column], suggested_label=table["label"])
    expected = combined([frame("score_loss"), frame("score_knn")], (2.0, 1.0 - w))["score"]
    np.testing.assert_allclose(table["score"], expected)
    plain = compute_scores(x, labels, range(80), methods=["loss", "knn", "combined"])  # no fine-tuning: 2:1
    np.testing.assert_allclose(plain["score"], combined([
        plain[["sample_id"]].assign(score=plain[c], suggested_label=plain["label"]) for c in ("score_loss", "score_knn")],
        (2.0, 1.0))["score"])


def test_trusted_samples_do_not_sway_the_blend_weight():
    """Every fold trains on trusted (reviewed) samples: a network that memorised them looks perfect
    there, and must not win the blend for that."""
    from mlfix.scoring.probe import OutOfFold
    from mlfix.scoring.registry import Inputs

    rng = np.random.default_rng(1)
    labels = np.array(["a", "b"] * 40, dtype=object)
    x = (np.c_[(labels == "b") * 2.0, np.zeros(80)] + rng.normal(0, 1, (80, 2))).astype(np.float32)
    trusted = np.zeros(80, dtype=bool)
    trusted[:40] = True
    probs = np.full((80, 2), 0.5)
    probs[:40] = np.where((labels[:40] == "b")[:, None] == [False, True], 0.999, 0.001)  # memorised
    tuned = OutOfFold(probs, ["a", "b"], np.r_[np.full(40, -1), np.zeros(40, dtype=int)])
    with_trust = Inputs(x, labels, range(80), trusted=trusted, finetuned=tuned).probe.probs
    without = Inputs(x, labels, range(80), finetuned=tuned).probe.probs
    assert not np.allclose(with_trust, without)
    assert np.abs(with_trust[40:] - 0.5).mean() > np.abs(without[40:] - 0.5).mean()  # the probe kept its say


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(st.integers(0, 2**31 - 1), st.integers(2, 5))
def test_a_blend_is_a_distribution_between_its_sources(seed, classes):
    from mlfix.scoring.probe import OutOfFold
    from mlfix.scoring.blend import BLEND_WEIGHTS, blend, blend_weight

    rng = np.random.default_rng(seed)
    probs = [rng.dirichlet(np.ones(classes), 50) for _ in range(2)]
    fold = rng.integers(-1, 3, 50)
    codes = rng.integers(-1, classes, 50)
    a, b = (OutOfFold(p, list("abcde"[:classes]), fold) for p in probs)
    mixed = blend(a, b, codes)
    w = blend_weight(a, b, codes)
    assert w in BLEND_WEIGHTS
    np.testing.assert_allclose(mixed.probs.sum(1), 1)
    np.testing.assert_allclose(mixed.probs, w * b.probs + (1 - w) * a.probs)


def test_samples_without_a_fine_tuned_prediction_keep_the_probes_probabilities():
    from mlfix.scoring.blend import blend, blend_weight
    from mlfix.scoring.probe import OutOfFold, aligned_out_of_fold

    probe = OutOfFold(np.array([[.6, .4], [.3, .7], [.5, .5], [.2, .8]]), ["a", "b"], np.zeros(4, int))
    tuned = aligned_out_of_fold(np.array([[.9, .1], [np.nan, np.nan], [.2, .8], [.1, .9]]), ["a", "b"],
                                np.array([0, -1, 1, 1]), ["a", "b", "a", "b"])
    assert np.isnan(tuned.probs[1]).all()
    codes = np.array([0, 1, 0, 1])
    w = blend_weight(probe, tuned, codes)
    assert w == blend_weight(OutOfFold(probe.probs[[0, 2, 3]], ["a", "b"], np.zeros(3, int)),
                             OutOfFold(tuned.probs[[0, 2, 3]], ["a", "b"], np.zeros(3, int)), codes[[0, 2, 3]])
    mixed = blend(probe, tuned, codes, weight=0.5)
    np.testing.assert_allclose(mixed.probs[1], probe.probs[1])
    np.testing.assert_allclose(mixed.probs[0], [.75, .25])
