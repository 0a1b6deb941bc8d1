"""The probe fitted by minibatches (mlfix.scoring.probe_minibatch) against the full fit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from sklearn.metrics import roc_auc_score

from mlfix.scoring import probe, probe_minibatch


def overlapping(n: int = 300, dim: int = 24, classes: int = 4, flip: float = 0.1, seed: int = 0):
    """Gaussian classes that overlap (the full fit gets 0.8 of the true labels), 10% labels flipped."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.5, (classes, dim))
    truth = rng.integers(0, classes, n)
    x = (centres[truth] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    is_error = rng.random(n) < flip
    given_codes = np.where(is_error, (truth + rng.integers(1, classes, n)) % classes, truth)
    names = np.array(list("abcdefgh"), dtype=object)
    return x, names[given_codes], names[truth], is_error


def error_auroc(oof: probe.OutOfFold, labels, is_error) -> float:
    given_p = oof.probs[np.arange(len(labels)), np.searchsorted(oof.classes, labels)]
    return roc_auc_score(is_error, -given_p)


@pytest.fixture(scope="module")
def both():
    x, labels, truth, is_error = overlapping()
    full = probe.out_of_fold_probabilities(x, labels, minibatch=False)
    mini = probe.out_of_fold_probabilities(x, labels, minibatch=True)
    return x, labels, truth, is_error, full, mini


@pytest.fixture
def few_steps(monkeypatch):
    """A short fit: enough for the tests that compare the minibatch path with itself."""
    monkeypatch.setattr(probe_minibatch, "MIN_STEPS", 60)


def test_minibatch_matches_the_full_fit(both):
    x, labels, truth, is_error, full, mini = both
    accuracy = {name: (oof.predicted() == truth).mean() for name, oof in (("full", full), ("mini", mini))}
    assert accuracy["full"] > 0.7  # the data is learnable but not trivial
    assert abs(accuracy["mini"] - accuracy["full"]) <= 0.02
    assert abs(error_auroc(mini, labels, is_error) - error_auroc(full, labels, is_error)) <= 0.03
    assert np.abs(mini.probs - full.probs).max() < 0.02  # the same optimum, reached by Adam


def test_out_of_fold_shape_rows_and_refit(both):
    x, labels, _, _, full, mini = both
    assert mini.probs.shape == (len(x), 4) and mini.classes == full.classes == list("abcd")
    np.testing.assert_allclose(mini.probs.sum(axis=1), 1.0, atol=1e-9)
    assert mini.flags is not None and mini.flags.any()
    np.testing.assert_array_equal(mini.fold == -1, probe._suspects(mini.flags, probe.encode_labels(labels)))
    assert set(mini.fold[mini.fold >= 0]) == set(range(5))


def test_same_folds_as_the_full_fit_and_deterministic_for_a_seed(few_steps):
    x, labels, _, _ = overlapping(n=120)
    full = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False, minibatch=False)
    runs = [probe.out_of_fold_probabilities(x, labels, seed=s, refit_without_suspects=False, minibatch=True)
            for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0].fold, full.fold)
    np.testing.assert_array_equal(runs[0].probs, runs[1].probs)
    assert not np.array_equal(runs[0].probs, runs[2].probs)


def test_reads_a_float16_memmap_without_converting_it(tmp_path, few_steps, monkeypatch):
    x, labels, _, _ = overlapping(n=120)
    path = tmp_path / "pooled.npy"
    np.save(path, x.astype(np.float16))
    memmap = np.load(path, mmap_mode="r")
    assert probe_minibatch.check_rows(memmap) is memmap
    seen = []
    fit_folds = probe.fit_folds
    monkeypatch.setattr(probe, "fit_folds", lambda x, *a, **k: seen.append(type(x)) or fit_folds(x, *a, **k))
    from_file = probe.out_of_fold_probabilities(memmap, labels, refit_without_suspects=False, minibatch=True)
    in_memory = probe.out_of_fold_probabilities(np.asarray(x, dtype=np.float16), labels,
                                                refit_without_suspects=False, minibatch=True)
    assert seen[0] is np.memmap
    np.testing.assert_array_equal(from_file.probs, in_memory.probs)


def test_unlabeled_and_trusted_samples_behave_as_in_the_full_fit():
    x, labels, _, _ = overlapping(n=200)
    labels = labels.copy()
    labels[::9] = None
    trusted = np.zeros(len(x), dtype=bool)
    trusted[1::11] = True
    fits = [probe.out_of_fold_probabilities(x, labels, trusted=trusted, refit_without_suspects=False,
                                            minibatch=mb) for mb in (False, True)]
    for oof in fits:
        assert (oof.fold[::9] == -1).all() and (oof.fold[trusted] == -1).all()
        np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(fits[0].fold, fits[1].fold)
    assert np.abs(fits[0].probs - fits[1].probs).max() < 0.02  # unlabeled rows too: mean of the fold models


def test_a_class_missing_from_a_training_fold_gets_probability_zero(few_steps):
    x, labels, _, _ = overlapping(n=120)
    x = np.vstack([x, x[:1] + 5.0])
    labels = np.append(labels, "lonely")
    oof = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False, minibatch=True)
    assert oof.classes[-1] == "lonely" and oof.probs[-1, -1] == 0.0
    assert (oof.probs[oof.fold != oof.fold[-1], -1] > 0).all()  # the other folds' models learned it


def test_fewer_than_two_held_out_samples_fit_one_model(few_steps):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    x[3:] += 3
    trusted = np.array([True, True, True, True, True, False])
    oof = probe.out_of_fold_probabilities(x, list("aaabbb"), trusted=trusted, refit_without_suspects=False,
                                          minibatch=True)
    assert (oof.fold == -1).all() and oof.predicted().tolist() == list("aaabbb")


def test_the_size_threshold_picks_the_path(monkeypatch):
    calls = []
    monkeypatch.setattr(probe, "fit_folds", lambda *a, **k: calls.append(1))
    x, labels, _, _ = overlapping(n=40)
    monkeypatch.setattr(probe, "MINIBATCH_MIN", 41)
    probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    assert calls == []
    monkeypatch.setattr(probe, "MINIBATCH_MIN", 40)
    probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    assert calls == [1]
    probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False, minibatch=False)
    assert calls == [1]


def test_bad_rows_are_refused_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(probe_minibatch, "CHUNK", 4)  # NaN in the 3rd chunk of 32 rows
    x = np.zeros((100, 3), dtype=np.float16)
    x[70, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe.out_of_fold_probabilities(x, ["a", "b"] * 50, minibatch=True)
    with pytest.raises(ValueError, match="2-D"):
        probe_minibatch.check_rows(np.zeros(5))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**16))
def test_each_pass_reads_every_row_once_in_sorted_chunks(n, seed):
    rows = np.arange(0, 3 * n, 3)  # any increasing row indices
    chunks = list(probe_minibatch._chunks(rows, np.random.default_rng(seed)))
    assert all(len(c) <= probe_minibatch.CHUNK and (np.diff(c) > 0).all() for c in chunks)
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), rows)


def test_the_refit_is_averaged_in_place_exactly_as_two_separate_fits(few_steps):
    """At millions of rows an (N, C) float64 array is gigabytes: the refit without the flagged samples
    is averaged into the first fit's array chunk by chunk, with the same result as (first + second) / 2."""
    x, labels, _, _ = overlapping(n=400, classes=5)
    oof = probe.out_of_fold_probabilities(x, labels, minibatch=True)
    coded, mask = probe.encode_labels(labels), np.zeros(len(labels), dtype=bool)
    fit = (x, 5, 0, probe.DEFAULT_L2, 100, "lbfgs", True)
    first = probe._one_fit(coded, mask, *fit)
    suspects = probe._suspects(probe._flags(first, coded, mask), coded)
    second = probe._one_fit(probe.Labels(np.where(suspects, -1, coded.codes), coded.classes), mask, *fit)
    assert suspects.any() and np.array_equal(oof.probs, (first.probs + second.probs) / 2)
    assert np.array_equal(oof.fold, second.fold)


def test_the_minibatch_probe_allocates_about_two_probability_arrays_not_four(few_steps):
    """Its numpy allocations peak near the (N, C) result plus one array of that size for confident
    learning's flags (before: the flags copied the probabilities twice and the refit made a second)."""
    import tracemalloc

    rng, n, classes = np.random.default_rng(1), 30_000, 50
    truth = rng.integers(0, classes, n)
    x = (rng.normal(0, 1, (classes, 8))[truth] + rng.normal(0, 1, (n, 8))).astype(np.float16)
    labels = np.where(rng.random(n) < 0.1, rng.integers(0, classes, n), truth)
    probe.out_of_fold_probabilities(x[:500], labels[:500], minibatch=True)  # imports outside the measure
    tracemalloc.start()
    try:
        oof = probe.out_of_fold_probabilities(x, labels, minibatch=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert oof.flags.any() and peak < 3 * oof.probs.nbytes
