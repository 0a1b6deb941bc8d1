"""The registry's health side: the ``meta`` resource, skip reasons, checks without labels, the shared
duplicates groups, and copies under two labels first in the default queue."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlfix.data.quality import QUALITY_STATS
from mlfix.scoring import contract, duplicates, registry
from mlfix.scoring.health_checks import HEALTH_CHECKS, QUALITY_DESCRIPTIONS

N = 40
SPLIT_HINT = "no split column: give a `split` column in the labels CSV"


def _data(seed: int = 0) -> dict:
    """40 samples in 2 clusters (8-D), labels a/b, image metadata; sample 39 is an exact copy of 0
    (same vector, same pixels hash) carrying the other label, in another split."""
    rng = np.random.default_rng(seed)
    codes = np.repeat([0, 1], N // 2)
    x = (np.eye(2, 8)[codes] * 3 + rng.normal(0, 1, (N, 8))).astype(np.float32)
    x[39] = x[0]
    labels = np.array(["a", "b"], dtype=object)[codes]
    stats = pd.DataFrame(rng.uniform(0.3, 0.6, (N, len(QUALITY_STATS))).astype(np.float32), columns=QUALITY_STATS)
    meta = pd.DataFrame({"width": np.full(N, 64), "height": np.full(N, 64),
                         "split": pd.Series(["train"] * 30 + ["test"] * 10, dtype="string"),
                         "content_hash": rng.integers(1, 2**62, N)})
    meta.loc[39, "content_hash"] = meta.loc[0, "content_hash"]
    meta = pd.concat([meta, stats], axis=1)
    return {"x": x, "labels": labels, "ids": [f"s{i}" for i in range(N)], "meta": meta}


def _scores(data: dict, **kwargs) -> pd.DataFrame:
    return registry.compute_scores(data["x"], data["labels"], data["ids"], k=5, folds=3,
                                   meta=data.get("meta"), **kwargs)


@pytest.fixture
def fresh(monkeypatch):
    """A private copy of the registry, so tests may register made-up checks."""
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    return registry


def _constant(inputs: registry.Inputs) -> pd.DataFrame:
    """A made-up check: the sample's width."""
    width = inputs.column("width").to_numpy(dtype=np.float64)
    return contract.score_frame(inputs.sample_ids, width, np.full(inputs.n, None, dtype=object))


def test_meta_must_have_one_row_per_sample():
    data = _data()
    with pytest.raises(ValueError, match=r"meta has 3 rows but there are 40 samples; pass one row of image "
                                         r"metadata per embedding row \(Project.image_meta\(rows\)\)"):
        _scores(dict(data, meta=data["meta"].head(3)))
    with pytest.raises(ValueError, match="meta must be a DataFrame with one row per sample, got dict"):
        _scores(dict(data, meta={"width": [1]}))
    shuffled = data["meta"].set_index(np.arange(N)[::-1])  # any index: rows are taken in order
    assert registry.Inputs(data["x"], data["labels"], data["ids"], meta=shuffled).meta.index.equals(pd.RangeIndex(N))


def test_a_check_needing_meta_columns_is_skipped_with_the_reason_and_runs_when_given(fresh):
    fresh.register("sized", labels=False, meta=("width",))(_constant)
    fresh.register("per_split", labels=False, meta=("split", "width"))(_constant)
    data = _data()
    table = _scores(data)
    np.testing.assert_array_equal(table["score_sized"], 64.0)
    assert "score_per_split" in table and "per_split" not in table.attrs["skipped"]
    no_split = _scores(dict(data, meta=data["meta"].drop(columns="split")))
    assert no_split.attrs["skipped"]["per_split"].startswith(SPLIT_HINT)
    assert no_split.attrs["skipped"]["leak"].startswith(SPLIT_HINT)
    all_na = data["meta"].assign(split=pd.Series(pd.NA, index=range(N), dtype="string"))  # a column of nothing
    assert _scores(dict(data, meta=all_na)).attrs["skipped"]["per_split"].startswith(SPLIT_HINT)
    no_meta = _scores(dict(data, meta=None))
    assert no_meta.attrs["skipped"]["sized"] == "no image metadata (meta=..., e.g. Project.image_meta())"
    no_stats = _scores(dict(data, meta=data["meta"][["width", "height", "split"]]))
    assert no_stats.attrs["skipped"]["dark"] == ("no image statistics (dark_fraction, brightness): run `mlfix index` "
                                                  "again to measure them (the features are reused)")
    with pytest.raises(ValueError, match=f"the 'leak' method cannot run here: {SPLIT_HINT}"):
        _scores(dict(data, meta=data["meta"].drop(columns="split")), methods=["leak"])


def test_without_labels_the_health_checks_run_and_the_label_checks_say_why_not():
    data = dict(_data(), labels=np.full(N, None, dtype=object))
    table = _scores(data)
    ran = [c[len("score_"):] for c in table.columns if c.startswith("score_")]
    assert ran == [name for name in HEALTH_CHECKS if name != "class_outlier"]
    for name in ["knn", "cleanlab", "loss", "combined", "class_outlier"]:
        assert table.attrs["skipped"][name] == "no labels: it needs labels of at least two classes"
    assert table.attrs["skipped"]["words"] == "no bags of visual words (bags=...)"  # the first reason
    one_class = _scores(dict(data, labels=np.array(["a"] * N, dtype=object)))
    assert one_class.attrs["skipped"]["knn"] == "one class only ('a'): it needs labels of at least two classes"
    with pytest.raises(ValueError, match=r"^no labels: label-error scores need labels of at least two classes; "
                                         r".*run the checks that need no labels \(duplicates, leak, outlier, "):
        _scores(data, methods=["cleanlab"])


def test_nothing_to_run_is_a_clear_error(fresh):
    for name in HEALTH_CHECKS:
        del fresh.REGISTRY[name]
    with pytest.raises(ValueError, match="^no check can run on these inputs: .*no labels: it needs labels"):
        _scores(dict(_data(), labels=np.full(N, None, dtype=object)))


@pytest.mark.parametrize("name", list(HEALTH_CHECKS))
def test_every_health_check_keeps_the_contract_and_lands_in_the_wide_table(name):
    data = _data()
    inputs = registry.Inputs(data["x"], data["labels"], data["ids"], k=5, meta=data["meta"])
    table = inputs.scores(name)
    assert list(table.columns[:5]) == [*contract.SCORE_COLUMNS, "flag", "reason"]
    assert table["sample_id"].tolist() == data["ids"] and isinstance(table.index, pd.RangeIndex)
    assert table["score"].dtype == np.float64 and table["flag"].dtype == bool
    assert table.loc[table["flag"], "reason"].map(lambda r: isinstance(r, str) and len(r) > 0).all()
    assert table.loc[~table["flag"], "reason"].isna().all()
    assert registry.REGISTRY[name].description
    wide = _scores(data, methods=[name])
    assert {f"score_{name}", f"flag_{name}", f"reason_{name}"} <= set(wide.columns)
    np.testing.assert_array_equal(wide[f"flag_{name}"], table["flag"])


def test_the_planted_copy_is_found_leaks_and_comes_first_in_the_queue():
    data = _data()
    table = _scores(data)
    assert table.loc[39, "flag_duplicates"] and table.loc[39, "score_duplicates"] == 1.0
    assert table.loc[39, "group_duplicates"] == table.loc[0, "group_duplicates"] >= 0
    assert table.loc[[0, 39], "flag_leak"].all()  # one image in train and in test
    assert table["conflict_duplicates"][[0, 39]].all()
    odd = 39 if table.loc[39, "suggested_duplicates"] == "a" else 0  # the copy whose label its group doubts
    assert table["score"].idxmax() == odd and table.loc[odd, "score"] > 1
    trusted = np.zeros(N, dtype=bool)
    trusted[odd] = True  # reviewed: its label is right, and it stays at the floor
    again = _scores(data, trusted=trusted)
    assert again.loc[odd, "score"] == contract.TRUSTED_SCORE


def test_duplicates_and_leak_share_one_grouping(monkeypatch):
    calls = []
    real = duplicates.duplicates_check
    monkeypatch.setattr(duplicates, "duplicates_check", lambda *a, **k: calls.append(1) or real(*a, **k))
    table = _scores(_data(), methods=["duplicates", "leak"])
    assert len(calls) == 1
    np.testing.assert_array_equal(table["group_leak"], table["group_duplicates"])
    _scores(_data(), methods=["leak"])  # the leak check alone still computes the groups (once)
    assert len(calls) == 2


def test_quality_checks_are_registered_in_order_with_their_descriptions():
    assert registry.METHODS == ("knn", "words", "cleanlab", "loss", "combined", "duplicates", "leak", "outlier",
                                "class_outlier", *QUALITY_DESCRIPTIONS)
    from mlfix.scoring.quality import QUALITY_CHECKS

    for name in QUALITY_DESCRIPTIONS:
        assert registry.REGISTRY[name].meta_columns == QUALITY_CHECKS[name]
        assert not registry.REGISTRY[name].labels


def test_near_copies_lead_the_queue_only_while_the_vectors_tell_copies_apart():
    from mlfix.scoring.health_checks import QUEUE_MAX_FLAGGED, queue_conflicts

    n = 10
    score = pd.Series(np.linspace(0.1, 0.9, n))
    labels = ["a"] * (n - 1) + ["b"]
    near = pd.DataFrame({"score": [0.0] * (n - 2) + [0.97, 0.97], "conflict": [False] * (n - 2) + [True, True],
                         "suggested_label": [None] * (n - 2) + ["a", "a"]})
    assert queue_conflicts(score, near, labels, np.zeros(n, bool)).tolist() == score.tolist()[:-1] + [1.97]
    crowded = near.assign(score=0.97)  # every sample "a near copy": the vectors cannot tell
    assert (crowded["score"] > 0).mean() >= QUEUE_MAX_FLAGGED
    assert queue_conflicts(score, crowded, labels, np.zeros(n, bool)).tolist() == score.tolist()
    exact = crowded.assign(score=[0.97] * (n - 2) + [1.0, 1.0])  # an exact copy still leads
    assert queue_conflicts(score, exact, labels, np.zeros(n, bool)).tolist()[-1] == 2.0
