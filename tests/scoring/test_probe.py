"""The cross-validated probe: folds, trusted samples, the refit without suspects, reuse of one fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from mlfix.scoring import probe, registry
from tests.scoring.synthetic import N_CLASSES, noisy_blobs


def test_trusted_samples_are_in_every_training_fold(blobs):
    trusted = np.zeros(len(blobs["ids"]), dtype=bool)
    trusted[::7] = True
    for refit in (False, True):
        oof = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, trusted=trusted,
                                              refit_without_suspects=refit)
        assert (oof.fold[trusted] == -1).all()
        assert set(oof.fold[~trusted]) - {-1} == set(range(5))  # -1 there: suspects left out of the refit
        np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0, atol=1e-9)


def test_the_refit_leaves_the_suspects_out_and_learns_cleaner_labels():
    x, labels, truth, is_error = noisy_blobs(flip=0.3)
    first = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    refit = probe.out_of_fold_probabilities(x, labels)
    flagged = probe.confident_learning(None, labels, range(len(labels)), probabilities=first)["flag"].to_numpy()
    assert flagged.any()
    np.testing.assert_array_equal(refit.fold == -1, flagged)  # exactly the flagged ones were left out
    assert (first.fold >= 0).all()
    assert (refit.predicted() == truth).mean() > (first.predicted() == truth).mean()
    assert roc_auc_score(is_error, -np.log(refit.probs[np.arange(400), [refit.classes.index(v) for v in labels]])) \
        > roc_auc_score(is_error, -np.log(first.probs[np.arange(400), [first.classes.index(v) for v in labels]]))


def test_the_refit_keeps_a_class_that_would_lose_half_its_samples():
    x, labels, _, _ = noisy_blobs(flip=0.0)
    labels = labels.copy()
    rare = np.flatnonzero(labels == "0")[:4]  # 4 samples of another class called "rare"
    labels[rare] = "rare"
    oof = probe.out_of_fold_probabilities(x, labels)
    assert (oof.fold[rare] >= 0).all()  # all 4 look wrong, but leaving them out would unlearn the class
    assert "rare" in oof.classes


def test_precomputed_probabilities_are_the_same_probe(blobs):
    direct = probe.probe_loss(blobs["x"], blobs["labels"], blobs["ids"], folds=5, seed=0)
    reused = probe.probe_loss(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    pd.testing.assert_frame_equal(direct, reused)


def test_self_confidence_ranks_like_the_loss(blobs):
    cl = probe.confident_learning(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    loss = probe.probe_loss(None, blobs["labels"], blobs["ids"], probabilities=blobs["oof"])
    assert cl["score"].rank().corr(loss["score"].rank()) > 0.999
    assert cl["flag"].sum() >= 0.5 * blobs["is_error"].sum()


def test_single_sample_class_does_not_break_cross_validation(blobs):
    x = np.vstack([blobs["x"], blobs["x"][:1] + 5.0])
    labels = np.append(blobs["labels"], "lonely")
    ids = blobs["ids"] + ["lonely0"]
    oof = probe.out_of_fold_probabilities(x, labels, folds=5)
    assert oof.classes[-1] == "lonely" and oof.probs.shape == (len(ids), N_CLASSES + 1)
    # Held out, the lonely sample was unseen by its fold model: probability 0 for its own class.
    assert oof.probs[-1, -1] == 0.0
    table = registry.compute_scores(x, labels, ids, k=10)
    assert np.isfinite(table["score"]).all()


def test_every_class_smaller_than_the_folds_uses_plain_kfold():
    x = np.random.default_rng(0).normal(size=(6, 4))
    oof = probe.out_of_fold_probabilities(x, list("aabbcc"), folds=5)
    assert oof.probs.shape == (6, 3) and set(oof.fold) == set(range(5))
    np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0)


def test_sklearn_probe_agrees_with_lbfgs_probe(blobs):
    sk = probe.out_of_fold_probabilities(blobs["x"], blobs["labels"], folds=5, probe="sklearn")
    assert (sk.probs.argmax(1) == blobs["oof"].probs.argmax(1)).mean() > 0.95
    np.testing.assert_array_equal(sk.fold, blobs["oof"].fold)


def test_no_labels_at_all_is_a_probe_without_classes_not_an_index_error():
    """An unlabeled folder used to crash the refit (IndexError in ``_suspects``)."""
    x = np.random.default_rng(0).normal(size=(12, 4))
    oof = probe.out_of_fold_probabilities(x, [None] * 12, folds=3)
    assert oof.probs.shape == (12, 0) and oof.classes == []
    assert oof.predicted().tolist() == [None] * 12
    assert probe.probe_loss(None, [None] * 12, range(12), probabilities=oof)["score"].isna().all()
