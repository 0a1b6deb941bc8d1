"""bench/health.py: the planted set and its figures on generated images, and a --quick smoke run."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.health_plant import (EXPECTED, Source, blur, check_figures, counts_for, darken, grayscale, near_copy,
                                overexpose, plant, queue_recall, stretch, tiny)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def photo(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


def source_zip(tmp_path: Path, n: int = 60, classes: int = 3) -> Source:
    path = tmp_path / "src.zip"
    rows = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n):
            buffer = io.BytesIO()
            photo(i).save(buffer, format="JPEG", quality=95)
            z.writestr(f"c{i % classes}/{i}.jpg", buffer.getvalue())
            rows.append({"path": f"c{i % classes}/{i}.jpg", "label": f"c{i % classes}"})
    return Source(path, pd.DataFrame(rows))


def test_transforms_do_what_they_say():
    image = photo(0)
    assert np.asarray(darken(image)).mean() < 0.05 * np.asarray(image).mean() + 1
    assert (np.asarray(overexpose(image)) >= 250).mean() > (np.asarray(image) >= 250).mean()
    blurred = np.asarray(blur(image.resize((400, 300))), dtype=float)
    assert np.abs(np.diff(blurred, axis=1)).mean() < np.abs(np.diff(np.asarray(image.resize((400, 300)), float),
                                                                    axis=1)).mean()
    assert stretch(image).size == (80, 16)
    assert tiny(image).size == (16, 16)
    assert grayscale(image).mode == "L"
    assert near_copy(image).size == (67, 50)  # 4% off each side (3 px, 2 px), then 90%


def test_plant_writes_exact_copies_with_other_labels_across_splits(tmp_path):
    src = source_zip(tmp_path)
    out = tmp_path / "planted"
    table = plant(src, out, seed=0)
    counts = counts_for(60)
    assert (table["kind"] == "exact_copy").sum() == counts["exact"]
    assert (table["kind"] == "noise").sum() == counts["noise"]
    assert pd.read_csv(out / "labels.csv").columns.tolist() == ["path", "label", "split"]
    originals = table[table["kind"] == "exact_original"].reset_index(drop=True)
    copies = table[table["kind"] == "exact_copy"].reset_index(drop=True)
    for o, c in zip(originals.itertuples(), copies.itertuples()):
        assert (out / o.path).read_bytes() == (out / c.path).read_bytes()
        assert o.source == c.source and o.label != c.label
        assert (o.split, c.split) == ("train", "test")
    near = table[table["kind"] == "near_copy"]
    assert all(Image.open(out / p).size == (67, 50) for p in near["path"])
    assert len(table) == 60 + counts["exact"] + counts["near"] + counts["noise"]  # no foreign set given
    again = plant(src, tmp_path / "again", seed=0)
    assert again.equals(table)  # a fixed seed plants the same set


def test_plant_refuses_too_few_sources(tmp_path):
    src = source_zip(tmp_path, n=8)
    with pytest.raises(ValueError, match="source images"):
        plant(src, tmp_path / "p", seed=0)


def test_figures_count_tolerated_kinds_as_right_but_not_as_planted():
    kinds = np.array(["blurred", "black", "clean", "blurred", "clean"])
    flag = np.array([True, True, True, False, False])
    out = check_figures(flag, np.array([0.9, 0.8, 0.7, 0.1, 0.0]), kinds, "blurry")
    assert out == {"precision": 0.6667, "recall": 0.5, "recall_at_planted": 0.5, "planted": 2, "flagged": 3,
                   "unplanted_flagged": 1}
    assert check_figures(np.zeros(5, bool), np.zeros(5), kinds, "blurry")["precision"] is None
    assert set(EXPECTED) >= {"duplicates", "leak", "outlier", "dark", "blurry", "odd_aspect", "tiny", "grayscale"}


def test_queue_recall_takes_nan_last():
    kinds = np.array(["exact_copy", "clean", "near_original"])
    assert queue_recall(np.array([np.nan, 0.5, 0.9]), kinds) == 0.5
    assert queue_recall(np.zeros(3), np.array(["clean"] * 3)) is None


@pytest.mark.skipif(not (SHARED / "flowers17").exists() or not (SHARED / "cifar10n").exists(),
                    reason="needs ../shared/data/flowers17 and cifar10n")
def test_quick_run_prints_figures(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.health", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    metrics = {line["metric"] for line in lines}
    assert all(line["bench"] == "health" and line["setup"]["quick"] for line in lines)
    assert "planted.duplicates.recall" in metrics and "cost.flowers17.statistics_ratio" in metrics
    assert "user_model.loss.auroc_difference" in metrics and "user_model.loss.auroc_control_shuffled_rows" in metrics
    assert list(tmp_path.glob("*.png"))
