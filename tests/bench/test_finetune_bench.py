"""bench/finetune.py: a quick run prints each variant's figures and the blend weight mlfix scores uses."""

from __future__ import annotations

import json

import pytest

import bench.common
from bench import finetune as finetune_bench


@pytest.mark.skipif(not (bench.common.SHARED_DATA / "cifar10n").exists(),
                    reason="needs the shared CIFAR-10N data (../shared/data/cifar10n)")
def test_quick_run_prints_every_variant_and_the_blend_weight(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path / "results")  # keep bench/results clean
    monkeypatch.setattr(finetune_bench, "RESULTS_DIR", tmp_path / "results")
    finetune_bench.main(["--quick", "--only", "cifar10n", "--n", "200"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    figures = {line["metric"]: line for line in lines}
    for variant in ("frozen", "finetuned", "blend", "mean"):
        loss = figures[f"cifar10n.{variant}.loss"]
        assert 0 <= loss["value"]["auroc"] <= 1 and loss["n"] == 200
    weight = figures["cifar10n.blend.loss"]["setup"]["blend_weight"]
    assert 0 <= weight <= 1
    cost = figures["cifar10n.finetune.cpu_minutes"]
    assert cost["value"] > 0 and cost["setup"]["estimate_minutes"] > 0 and not cost["setup"]["trunk_cache_reused"]


@pytest.mark.skipif(not (bench.common.SHARED_DATA / "cifar10n").exists(),
                    reason="needs the shared CIFAR-10N data (../shared/data/cifar10n)")
def test_another_backbone_is_fine_tuned_against_the_frozen_lite0_probe(tmp_path, monkeypatch, capsys):
    import bench.defaults
    import bench.detect_features

    for module in (bench.common, finetune_bench, bench.defaults, bench.detect_features):
        monkeypatch.setattr(module, "RESULTS_DIR", tmp_path / "results")
    finetune_bench.main(["--quick", "--only", "cifar10n", "--n", "120", "--backbone", "efficientnet_lite1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    figures = {line["metric"]: line for line in lines}
    assert figures["cifar10n.finetuned.loss"]["setup"]["backbone"] == "efficientnet_lite1"
    assert 0 <= figures["cifar10n.frozen.loss"]["value"]["auroc"] <= 1
    assert list((tmp_path / "results").glob("features_cifar10n_120_*lite0*"))  # the frozen Lite0 features
