"""Confident learning written here gives cleanlab's flags exactly; the default path never needs cleanlab."""

from __future__ import annotations

import contextlib
import importlib.abc
import sys
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mlfix.scoring import confident_learning as cl
from mlfix.scoring import probe, registry
from tests.scoring.synthetic import noisy_blobs


@pytest.fixture(scope="module")
def cleanlab():
    """cleanlab's own modules, the reference (skipped where cleanlab is not installed)."""
    pytest.importorskip("cleanlab", reason="cleanlab (optional, AGPL-3.0) is the reference here")
    import cleanlab.count
    import cleanlab.filter
    import cleanlab.rank
    return cleanlab


def _random_case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, probs) of one kind: smooth, peaked, tied, realistic (mostly right, some flipped)."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(10, 300)), int(rng.integers(2, 12))
    if kind == "dirichlet":
        probs = rng.dirichlet(np.ones(k) * rng.uniform(0.05, 3), n)
    elif kind == "softmax":
        logits = rng.normal(0, rng.uniform(0.1, 6), (n, k))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    elif kind == "ties":  # few distinct values: ties everywhere, and .5 roundings in the calibration
        probs = rng.integers(0, 4, (n, k)) + 1e-9
    else:  # realistic: a confident model, labels mostly its argmax, 20% random
        truth = rng.integers(0, k, n)
        probs = rng.dirichlet(np.ones(k) * 0.3, n)
        probs[np.arange(n), truth] += 2
    probs = probs / probs.sum(axis=1, keepdims=True)
    codes = rng.integers(0, k, n) if kind != "realistic" else \
        np.where(rng.random(n) < 0.2, rng.integers(0, k, n), probs.argmax(axis=1))
    codes[:2] = [0, 1]  # at least two classes: cleanlab refuses one
    return codes, probs


def _assert_same_as_cleanlab(cleanlab, codes: np.ndarray, probs: np.ndarray) -> None:
    with _quiet():
        expected = cleanlab.filter.find_label_issues(codes, probs, n_jobs=1)  # n_jobs: speed only
        joint = cleanlab.count.compute_confident_joint(codes, probs)
        thresholds = cleanlab.count.get_confident_thresholds(codes, probs)
    np.testing.assert_array_equal(cl.confident_thresholds(codes, probs), thresholds)
    np.testing.assert_array_equal(cl.confident_joint(codes, probs), joint)
    np.testing.assert_array_equal(cl.find_label_issues(codes, probs), expected)


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about tiny classes; the flags are what we compare
        yield


@pytest.mark.parametrize("kind", ["dirichlet", "softmax", "ties", "realistic"])
@pytest.mark.parametrize("seed", range(12))
def test_flags_equal_cleanlabs_on_random_inputs(cleanlab, kind, seed):
    _assert_same_as_cleanlab(cleanlab, *_random_case(kind, seed))


def test_flags_equal_cleanlabs_on_many_classes_and_a_missing_class(cleanlab):
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 49, 3000)  # 50 columns, class 49 never given: its threshold is out of reach
    probs = rng.dirichlet(np.ones(50) * 0.2, 3000)
    probs[np.arange(3000), truth] += 1.5
    probs /= probs.sum(axis=1, keepdims=True)
    codes = np.where(rng.random(3000) < 0.15, rng.integers(0, 49, 3000), truth)
    _assert_same_as_cleanlab(cleanlab, codes, probs)
    assert cl.find_label_issues(codes, probs).sum() > 100


def test_flags_equal_cleanlabs_on_a_real_probe(cleanlab):
    x, labels, _, is_error = noisy_blobs(flip=0.3)
    oof = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    codes = np.array([oof.classes.index(v) for v in labels])
    _assert_same_as_cleanlab(cleanlab, codes, oof.probs)
    flags = cl.find_label_issues(codes, oof.probs)
    assert is_error[flags].mean() > 0.5  # a real probe's flags are mostly real errors


def test_mlfix_flags_and_scores_are_what_cleanlab_gave(cleanlab):
    """The flags mlfix used to ask cleanlab for: labeled, untrusted rows, over the classes they hold."""
    x, labels, _, _ = noisy_blobs(flip=0.2)
    labels = labels.copy()
    labels[:5] = None
    trusted = np.zeros(len(labels), dtype=bool)
    trusted[5:40:3] = True
    labels[trusted] = "reviewed-only"  # a class that only trusted rows hold
    oof = probe.out_of_fold_probabilities(x, labels, trusted=trusted, refit_without_suspects=False)
    table = probe.confident_learning(None, labels, range(len(labels)), trusted=trusted, probabilities=oof)
    rows = np.flatnonzero(~trusted & (np.arange(len(labels)) >= 5))
    codes = np.array([oof.classes.index(v) for v in labels[rows]])
    present = np.unique(codes)
    sub = oof.probs[rows][:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    with _quiet():
        expected = cleanlab.filter.find_label_issues(np.searchsorted(present, codes), sub)
        quality = cleanlab.rank.get_label_quality_scores(codes, oof.probs[rows], method="self_confidence")
    np.testing.assert_array_equal(table["flag"].to_numpy()[rows], expected)
    assert not table["flag"].to_numpy()[trusted].any()
    np.testing.assert_array_equal(table["score"].to_numpy()[rows], 1.0 - quality)


def test_other_quality_methods_run_cleanlab_itself(cleanlab):
    x, labels, _, _ = noisy_blobs(flip=0.1)
    oof = probe.out_of_fold_probabilities(x, labels, refit_without_suspects=False)
    table = probe.confident_learning(None, labels, range(len(labels)), probabilities=oof,
                                     method="normalized_margin")
    codes = np.array([oof.classes.index(v) for v in labels])
    expected = cleanlab.rank.get_label_quality_scores(codes, oof.probs, method="normalized_margin")
    np.testing.assert_array_equal(table["score"].to_numpy(), 1.0 - expected)
    with pytest.raises(ValueError, match="choose from"):
        probe.confident_learning(None, labels, range(len(labels)), probabilities=oof, method="vibes")


def test_the_cross_check_runs_cleanlab_with_its_defaults(cleanlab):
    codes, probs = _random_case("realistic", 3)
    np.testing.assert_array_equal(cl.cleanlab_label_issues(codes, probs), cl.find_label_issues(codes, probs))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_flags_equal_cleanlabs(cleanlab, data):
    """Small integer weights make ties and .5 roundings common: where an exact copy would differ."""
    k = data.draw(st.integers(2, 6), label="classes")
    n = data.draw(st.integers(2, 40), label="samples")
    weights = data.draw(st.lists(st.lists(st.integers(0, 5), min_size=k, max_size=k), min_size=n, max_size=n))
    codes = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    assume(len(np.unique(codes)) >= 2)  # cleanlab refuses a single class
    probs = np.asarray(weights, dtype=float) + data.draw(st.sampled_from([1e-3, 0.5]))
    probs /= probs.sum(axis=1, keepdims=True)
    _assert_same_as_cleanlab(cleanlab, codes, probs)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["dirichlet", "softmax", "ties", "realistic"]))
def test_property_flags_equal_cleanlabs_on_seeded_inputs(cleanlab, seed, kind):
    _assert_same_as_cleanlab(cleanlab, *_random_case(kind, seed))


@pytest.mark.parametrize("codes, probs, message", [
    ([0, 1], [[0.5, 0.5]], "one class index per row"),
    ([0, 2], [[0.5, 0.5], [0.5, 0.5]], "must lie in"),
    ([0.0, 1.0], [[0.5, 0.5], [0.5, 0.5]], "integer class indices"),
    ([0, 1], [[np.nan, 1.0], [0.5, 0.5]], "NaN"),
    ([0, 1], [0.5, 0.5], "N samples x K classes"),
])
def test_bad_inputs_say_what_to_do(codes, probs, message):
    with pytest.raises(ValueError, match=message):
        cl.find_label_issues(np.asarray(codes), np.asarray(probs))


# ---------------------------------------------------------------------------------------------
# Without cleanlab


class _NoCleanlab(importlib.abc.MetaPathFinder):
    """Fails the test at any attempt to import cleanlab (even one that would catch ImportError)."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cleanlab":
            raise AssertionError(f"the default path imported {name}")
        return None


def test_the_default_queue_never_imports_cleanlab(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "cleanlab"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoCleanlab(), *sys.meta_path])
    x, labels, _, is_error = noisy_blobs(flip=0.2)
    bags = np.random.default_rng(0).random((len(labels), 64)) < 0.2
    table = registry.compute_scores(x, labels, range(len(labels)), bags=bags, k=10)
    assert table["flag_cleanlab"].any() and "score_cleanlab" in table
    assert not any(m.split(".")[0] == "cleanlab" for m in sys.modules)


def test_a_missing_cleanlab_says_how_to_install_it(monkeypatch):
    for name in [m for m in sys.modules if m.split(".")[0] == "cleanlab"] + ["cleanlab"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: "not installed" to the import system
    codes, probs = _random_case("realistic", 1)
    with pytest.raises(ImportError, match="pip install cleanlab"):
        cl.cleanlab_label_issues(codes, probs)
    x, labels, _, _ = noisy_blobs(flip=0.1)
    with pytest.raises(ImportError, match="pip install cleanlab"):
        probe.confident_learning(x, labels, range(len(labels)), method="normalized_margin")
    assert cl.find_label_issues(codes, probs).any()  # the default needs none of it
