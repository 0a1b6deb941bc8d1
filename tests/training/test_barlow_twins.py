"""Barlow Twins training: it learns, refuses bad arguments and a second run on one folder, clamps
the batch and skips unreadable images."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlfix.pipeline.backbone import image_transform, offline_classifier
from mlfix.progress import read_progress
from mlfix.training.barlow_twins import train_barlow_twins
from mlfix.training.checkpoints import checkpoint_summary
from tests.training.tiny_runs import FAST, KillAt, copy_models, train_records

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.slow
def test_loss_decreases(shapes, tmp_path):
    """Paired: the same seed gives both runs the same batches and views, so the augmentation noise
    (large on 8-image batches) cancels; only the learning differs."""
    root, samples = shapes
    losses = {}
    for lr in (1e-3, 1e-12):  # trained vs. (practically) frozen
        logs = tmp_path / f"logs-{lr}"
        train_barlow_twins(root, samples, tmp_path / f"models-{lr}", epochs=6, lr=lr, bn_images=0,
                           progress=KillAt(logs), **FAST)
        losses[lr] = np.array([r["loss"] for r in train_records(logs)])
    trained, frozen = losses[1e-3], losses[1e-12]
    assert len(trained) == len(frozen) == 18  # 24 images // 8 = 3 steps per epoch
    assert trained[0] == pytest.approx(frozen[0])  # same start, same first batch
    assert trained[-8:].mean() < 0.95 * frozen[-8:].mean(), (trained, frozen)


def test_a_second_run_on_the_same_folder_is_refused(trained, tmp_path):
    import fcntl

    root, samples, project = trained
    models = copy_models(project, tmp_path)
    with open(models / "train.lock", "w") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another training run is using"):
            train_barlow_twins(root, samples, models, epochs=2, **FAST)
    train_barlow_twins(root, samples, models, epochs=1, **FAST)  # released: fine again


def test_bad_arguments_give_clear_messages(shapes, tmp_path):
    root, samples = shapes
    with pytest.raises(ValueError, match="too small.*at least 32"):
        train_barlow_twins(root, samples, tmp_path / "m", **{**FAST, "image_size": 16})
    with pytest.raises(ValueError, match="at least 2 images"):
        train_barlow_twins(root, samples.head(1), tmp_path / "m", **FAST)
    with pytest.raises(ValueError, match="batch size must be"):
        train_barlow_twins(root, samples, tmp_path / "m", **{**FAST, "batch_size": 1})
    with pytest.raises(ValueError, match="unknown backbone"):
        train_barlow_twins(root, samples, tmp_path / "m", **{**FAST, "backbone": "no_such_net"})
    with pytest.raises(ValueError, match="trains one backbone, not the ensemble"):
        train_barlow_twins(root, samples, tmp_path / "m", **{**FAST, "backbone": "resnet18+resnet18"})


def test_batch_larger_than_dataset_is_clamped_and_bad_images_are_skipped(shapes, tmp_path):
    root, samples = shapes
    broken = samples.iloc[0]["path"]
    (Path(root.location) / broken).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    models, logs = tmp_path / "models", tmp_path / "logs"
    with pytest.warns(UserWarning, match="batch size 100 is larger than the dataset"):
        train_barlow_twins(root, samples, models, epochs=2, progress=KillAt(logs),
                           **{**FAST, "batch_size": 100})
    summary = checkpoint_summary(models)
    assert summary["settings"]["batch_size"] == 24 and summary["step"] == 2
    assert summary["skipped_images"] == 1
    problems = [r for r in read_progress(logs / "train.jsonl") if r["stage"] == "train_problem"]
    assert [p["path"] for p in problems] == [broken]


@pytest.mark.shared_data
def test_offline_imagenet_backbone_knows_a_daisy():
    archive = SHARED / "flowers17" / "images.zip"
    if not archive.exists():
        pytest.skip(f"shared data not found: {archive}")
    import io

    with zipfile.ZipFile(archive) as z:
        image = Image.open(io.BytesIO(z.read("10_daisy/image_0801.jpg"))).convert("RGB")
    with torch.no_grad():
        logits = offline_classifier()(image_transform(224)(image)[None])
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy
