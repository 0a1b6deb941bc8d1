"""bench/class_reference.py: the capped and uncapped class-outlier runs print comparable figures."""

from __future__ import annotations

import json

import bench.common
from bench import class_reference
from mlfix.scoring import outliers


def test_quick_synthetic_run_prints_each_cap_and_leaves_the_cap_as_it_was(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path / "results")  # keep bench/results clean
    before = outliers.REFERENCE_MAX
    class_reference.main(["--quick", "--data", "synthetic", "--dim", "32"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    figures = {line["metric"]: line for line in lines}
    assert outliers.REFERENCE_MAX == before
    for cap in ("all", "1/4", "1/10"):
        assert 0 <= figures[f"synthetic.{cap}.precision"]["value"] <= 1
        assert 0.5 <= figures[f"synthetic.{cap}.auroc"]["value"] <= 1  # planted rows score higher
    assert figures["synthetic.all.jaccard_with_all"]["value"] == 1.0
    assert figures["synthetic.1/4.jaccard_with_all"]["setup"]["cap"] == 2_500
