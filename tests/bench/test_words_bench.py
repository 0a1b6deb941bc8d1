"""bench/words.py: synthetic grids, and a --quick run on the shared sets (skipped without them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import bench.common
from bench import words as bench_words

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_synthetic_grids_are_clustered_word_ids():
    grids = bench_words.synthetic_grids(500, k=64, side=4, clusters=5, seed=0, chunk=128)
    assert grids.shape == (500, 4, 4) and grids.dtype == np.uint16 and grids.max() < 64
    assert np.array_equal(grids, bench_words.synthetic_grids(500, k=64, side=4, clusters=5, seed=0, chunk=128))
    distinct = np.array([len(np.unique(row)) for row in grids.reshape(500, -1)])
    assert 1 < distinct.mean() < 16  # Zipf-like: words repeat inside an image


@pytest.mark.skipif(not all((SHARED / name).exists() for name in bench_words.PLANS),
                    reason="../shared/data (cifar10n, flowers17, gtsrb35) is absent")
def test_quick_run_emits_every_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)  # the figures, not the cached grids
    monkeypatch.setattr(sys, "argv", ["bench.words", "--quick"])
    assert bench_words.main(["--quick", "--no-timing"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "words.jsonl").read_text().splitlines()]
    assert lines and all(line["setup"]["quick"] and line["setup"]["codebook"] == "kmeans" for line in lines
                         if line["metric"].split(".")[1] != "noise_rate")
    variants = {"bits", "embedding", "counts", "tfidf", "tfidf_sublinear", "tfidf+centre", "tfidf+saliency",
                "tfidf+centre+saliency", "tfidf_sublinear+centre+saliency", "combined_w0.5", "combined_w1",
                "combined_focus_w0.5", "combined_focus_w1", "tfidf_sublinear+centre", "combined_centre_w1"}
    for dataset in bench_words.PLANS:
        metrics = {line["metric"]: line["value"] for line in lines if line["metric"].startswith(dataset + ".")}
        for variant in variants:
            for figure in ("purity", "class_purity", "vote_auroc", "vote_ap"):
                assert 0 <= metrics[f"{dataset}.{variant}.{figure}"] <= 1
