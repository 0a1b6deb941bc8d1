"""The health summary: one row per registered check, with counts, thresholds and skip reasons."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlfix.scoring import duplicates, outliers, quality, registry
from mlfix.scoring.health import CHECK_KINDS, SUMMARY_COLUMNS, health_summary, threshold
from tests.scoring.test_registry_health import _data, _scores


def test_the_summary_counts_what_each_check_flagged_at_its_threshold():
    data = _data()
    table = _scores(data, bags=None)
    summary = health_summary(table)
    assert list(summary.columns) == SUMMARY_COLUMNS == ["check", "kind", "flagged", "samples", "threshold",
                                                        "description", "skipped", "note"]
    assert summary["check"].tolist() == list(registry.METHODS)
    rows = summary.set_index("check")
    for name in ("duplicates", "leak", "outlier", "class_outlier", "dark", "grayscale"):
        assert rows.loc[name, "flagged"] == int(table[f"flag_{name}"].sum())
        assert rows.loc[name, "samples"] == int(table[f"score_{name}"].notna().sum())
        assert pd.isna(rows.loc[name, "skipped"])
    assert rows.loc["duplicates", "flagged"] >= 2 and rows.loc["leak", "flagged"] >= 2  # the planted copy
    assert rows.loc["cleanlab", "flagged"] == int(table["flag_cleanlab"].sum())
    assert pd.isna(rows.loc["knn", "flagged"]) and rows.loc["knn", "samples"] == len(table)  # ranks, no flags
    assert rows.loc["words", "skipped"] == "no bags of visual words (bags=...)"
    assert rows.loc["words", "samples"] == 0 and pd.isna(rows.loc["words", "flagged"])
    assert rows.loc["dark", "threshold"] == quality.THRESHOLDS["dark"]
    assert rows.loc["duplicates", "threshold"] == duplicates.THRESHOLDS["duplicates"]
    assert rows.loc["outlier", "threshold"] == outliers.THRESHOLDS["outlier"]
    assert np.isnan(rows.loc["loss", "threshold"])
    assert rows.loc["dark", "kind"] == "quality" and rows.loc["leak", "kind"] == "duplicates"
    assert rows.loc["class_outlier", "kind"] == "outlier" and rows.loc["combined", "kind"] == "label"
    assert (summary["description"].str.len() > 0).all()
    assert summary["flagged"].dtype == "Int64" and summary["samples"].dtype == np.int64


def test_the_summary_of_an_unlabeled_set_says_the_label_checks_were_skipped():
    table = _scores(dict(_data(), labels=np.full(40, None, dtype=object)))
    rows = health_summary(table).set_index("check")
    assert rows.loc["loss", "skipped"] == "no labels: it needs labels of at least two classes"
    assert rows.loc["class_outlier", "skipped"].startswith("no labels")
    assert rows.loc["duplicates", "samples"] == 40 and pd.isna(rows.loc["duplicates", "skipped"])


def test_skip_reasons_given_win_and_an_unexplained_absence_says_not_run():
    table = pd.DataFrame({"score_dark": [0.9], "flag_dark": [True]})
    table.attrs["skipped"] = {"leak": "from the table"}
    assert health_summary(table).set_index("check").loc["leak", "skipped"] == "from the table"
    rows = health_summary(table, {"leak": "given"}).set_index("check")
    assert rows.loc["leak", "skipped"] == "given" and rows.loc["tiny", "skipped"] == "not run"


def test_every_built_in_check_has_a_kind_and_each_health_check_a_threshold():
    assert set(CHECK_KINDS) == set(registry.METHODS)
    for name, kind in CHECK_KINDS.items():
        assert np.isnan(threshold(name)) == (kind == "label"), name
