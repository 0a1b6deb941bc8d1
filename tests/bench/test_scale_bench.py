"""bench/scale.py: its generated data, its rates, and the --quick stages and recall printing JSON."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import bench.common
from bench import scale, scale_engine


def test_synthetic_embeddings_are_clustered_float16_and_reused(tmp_path):
    path, labels = scale.synthetic_embeddings(2000, 16, tmp_path)
    x = np.load(path, mmap_mode="r")
    assert x.shape == (2000, 16) and x.dtype == np.float16 and labels.shape == (2000,)
    assert 0 <= labels.min() and labels.max() < scale.classes_for(2000) == 10
    again_path, again = scale.synthetic_embeddings(2000, 16, tmp_path)
    assert again_path == path and np.array_equal(again, labels)  # same seed: same labels, file reused
    unit = np.asarray(x, np.float32) / np.linalg.norm(np.asarray(x, np.float32), axis=1, keepdims=True)
    same = labels[:200, None] == labels[None, :200]
    cosine = unit[:200] @ unit[:200].T
    off = ~np.eye(200, dtype=bool)
    assert cosine[same & off].mean() > 0.3 > cosine[~same].mean()  # classes are clusters


def test_synthetic_words_share_words_within_a_class():
    labels = np.repeat([0, 1], 50)
    words = scale.synthetic_words(labels)
    assert words.shape == (100, scale.GRID, scale.GRID) and words.dtype == np.uint16
    assert words.max() < scale.WORDS
    bags = [set(np.unique(w)) for w in words]
    within = np.mean([len(bags[i] & bags[i + 1]) for i in range(0, 48)])
    across = np.mean([len(bags[i] & bags[50 + i]) for i in range(0, 48)])
    assert within > across


def test_synthetic_images_write_files_and_labels(tmp_path):
    labels_csv = scale_engine.synthetic_images(25, tmp_path, chunk=10)
    table = pd.read_csv(labels_csv)
    assert len(table) == 25 and table.columns.tolist() == ["path", "label"]
    assert (table["path"].str.split("/").str[0] == table["label"]).all()
    with Image.open(tmp_path / table["path"].iloc[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    stamp = labels_csv.stat().st_mtime_ns
    assert scale_engine.synthetic_images(25, tmp_path) == labels_csv and labels_csv.stat().st_mtime_ns == stamp  # reused


def test_engine_rates_of_the_index_and_of_the_engine_record():
    run = {"images": 100, "seconds": 50.0, "stages": {"features": 15.0}, "record": {"seconds": 10.0}}
    assert scale_engine.engine_rates(run) == {"index": 2.0, "record": 10.0}
    assert scale_engine.engine_rates({**run, "record": {}}) == {"index": 2.0}


def test_units_follow_the_figure_names():
    assert [scale.unit_of(k) for k in ("seconds_index", "peak_rss_mb", "recall_at_k", "nprobe")] == \
        ["s", "MiB", "share", ""]


def quick(tmp_path, monkeypatch, capsys, *sections: str) -> list[dict]:
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path / "results")  # keep bench/results clean
    argv = ["--quick", "--out", str(tmp_path / "cache")]
    for section in sections:
        argv += ["--only", section]
    scale.main(argv)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    saved = (tmp_path / "results" / "scale.jsonl").read_text().splitlines()
    assert len(saved) == len(lines) and all(line["bench"] == "scale" and line["setup"]["quick"] for line in lines)
    assert not list((tmp_path / "cache").rglob("*.npy"))  # the memory maps are removed after
    return lines


def test_quick_stages_and_recall_print_the_expected_figures(tmp_path, monkeypatch, capsys):
    lines = quick(tmp_path, monkeypatch, capsys, "stages", "recall")
    metrics = {line["metric"]: line for line in lines}
    for stage in ("orders.embedding", "bags", "orders.bags", "health.neighbours_graph", "health.duplicates",
                  "health.outlier", "health.class_outlier", "health.quality"):
        assert metrics[f"stages.{stage}.seconds"]["unit"] == "s"
        assert metrics[f"stages.{stage}.peak_mb"]["value"] > 0
        assert metrics[f"stages.{stage}.seconds"]["n"] == scale.QUICK_ROWS
    assert metrics["stages.bags.seconds"]["setup"]["dim"] == 32
    if importlib.util.find_spec("bench.scale_neighbours"):
        assert 0.9 <= metrics["stages.neighbours.recall_at_k"]["value"] <= 1
    if importlib.util.find_spec("bench.scale_probe"):
        assert "stages.probe.wall_seconds" in metrics
    assert 0.9 <= metrics["recall.synthetic"]["value"] <= 1
    assert metrics["recall.synthetic"]["unit"] == "recall@50"
    if scale.REAL_FEATURES.exists():
        assert metrics["recall.cifar10n_lite0"]["n"] == scale.QUICK_ROWS


def test_unknown_section_is_refused(capsys):
    with pytest.raises(SystemExit):
        scale.main(["--only", "everything"])
    assert "invalid choice" in capsys.readouterr().err


def test_health_above_graph_max_reads_a_graph_of_the_right_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(scale, "GRAPH_MAX", 100)
    graph = scale.shaped_graph(300, np.random.default_rng(0))
    assert graph.index.shape == graph.similarity.shape == (300, scale.K)
    assert (np.diff(graph.similarity, axis=1) <= 0).all() and 0 <= graph.index.min() and graph.index.max() < 300
    path, labels = scale.synthetic_embeddings(300, 8, tmp_path)
    scale.health_stage(np.load(path), labels, 300, {"quick": True})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = {line["metric"] for line in lines}
    assert "stages.health.neighbours_graph.seconds" not in metrics and "stages.health.duplicates.seconds" in metrics
    assert all("random" in line["setup"]["graph"] for line in lines if "duplicates" in line["metric"])
