"""Barlow Twins training: learning, checkpoints, resume, progress, bad input."""

from __future__ import annotations

import errno
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from mlfix.pipeline.backbone import create_backbone, image_transform, offline_classifier
from mlfix.data.dataset import DataRoot, scan
from mlfix.training.barlow_twins import (CheckpointError, checkpoint_summary, train_barlow_twins,
                            trained_weights_path)
from mlfix.progress import Progress, read_progress

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
FAST = dict(backbone="resnet18", batch_size=8, image_size=32, head_dim=64, workers=0, seed=0,
            device="cpu")


class Killed(Exception):
    """Stands in for a kill in the middle of training."""


class KillAt(Progress):
    """A progress log that records every step and dies when training reaches ``step``."""

    def __init__(self, log_dir: Path, step: int | None = None):
        super().__init__("train", log_dir, terminal=False, min_interval=0.0)
        self.kill_step = step

    def update(self, stage, done, total, **extra):
        super().update(stage, done, total, **extra)
        if stage == "train" and self.kill_step is not None and extra.get("step") == self.kill_step:
            raise Killed(f"killed at step {self.kill_step}")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: these steps are tiny, and on a busy machine two threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_shapes(folder: Path) -> tuple[DataRoot, pd.DataFrame]:
    """24 coloured shapes (3 kinds x 8), 32-48 px, as an ImageFolder."""
    rng = np.random.default_rng(0)
    for i in range(24):
        kind = ("circle", "square", "triangle")[i % 3]
        side = int(rng.integers(32, 49))
        image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        colour = tuple(int(v) for v in rng.integers(120, 256, 3))
        a, b = int(side * 0.2), int(side * 0.8)
        if kind == "circle":
            draw.ellipse((a, a, b, b), fill=colour)
        elif kind == "square":
            draw.rectangle((a, a, b, b), fill=colour)
        else:
            draw.polygon([(a, b), (b, b), ((a + b) // 2, a)], fill=colour)
        (folder / kind).mkdir(parents=True, exist_ok=True)
        image.save(folder / kind / f"{i:02d}.png")
    return DataRoot(folder), scan(folder).samples


@pytest.fixture
def shapes(tmp_path: Path):
    return make_shapes(tmp_path / "images")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch run, shared: (root, samples, project folder). Copy before changing it."""
    base = tmp_path_factory.mktemp("trained")
    root, samples = make_shapes(base / "images")
    project = base / "project"
    train_barlow_twins(root, samples, project / "models", epochs=1,
                       progress=Progress("train", project / "progress", terminal=False), **FAST)
    return root, samples, project


def copy_models(project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(project / "models", tmp_path / "models"))


def train_records(log_dir: Path) -> list[dict]:
    return [r for r in read_progress(log_dir / "train.jsonl") if r.get("stage") == "train"]


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


def test_resume_after_kill_continues_at_the_right_epoch_and_step(shapes, tmp_path):
    root, samples = shapes
    models = tmp_path / "models"
    with pytest.raises(Killed):  # dies in epoch 2 (steps 4-6), after its first end-of-epoch save
        train_barlow_twins(root, samples, models, epochs=3, progress=KillAt(tmp_path / "a", step=5),
                           **FAST)
    saved = torch.load(models / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 3)

    logs = tmp_path / "b"
    train_barlow_twins(root, samples, models, epochs=3, progress=KillAt(logs), **FAST)
    records = train_records(logs)
    assert [r["step"] for r in records] == [4, 5, 6, 7, 8, 9]
    assert [r["epoch"] for r in records] == [2, 2, 2, 3, 3, 3]
    saved = torch.load(models / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (3, 9)


def test_resume_within_an_epoch_and_extend_a_finished_run(shapes, tmp_path):
    root, samples = shapes
    models = tmp_path / "models"
    with pytest.raises(Killed):  # checkpoint_minutes=0: a checkpoint after every step
        train_barlow_twins(root, samples, models, epochs=2, checkpoint_minutes=0,
                           progress=KillAt(tmp_path / "a", step=5), **FAST)
    assert checkpoint_summary(models)["step"] == 4
    logs = tmp_path / "b"
    train_barlow_twins(root, samples, models, epochs=2, workers=1,
                       progress=KillAt(logs), **{k: v for k, v in FAST.items() if k != "workers"})
    assert [(r["epoch"], r["step"]) for r in train_records(logs)] == [(2, 5), (2, 6)]

    logs = tmp_path / "c"  # the same number of epochs again: nothing to do
    train_barlow_twins(root, samples, models, epochs=2, progress=KillAt(logs), **FAST)
    assert train_records(logs) == []
    logs = tmp_path / "d"  # more epochs: extends the finished run
    train_barlow_twins(root, samples, models, epochs=3, progress=KillAt(logs), **FAST)
    assert [r["step"] for r in train_records(logs)] == [7, 8, 9]
    assert checkpoint_summary(models)["epoch"] == 3


def test_checkpoint_round_trip_and_progress_records(trained, tmp_path):
    root, samples, project = trained
    assert trained_weights_path(tmp_path) is None
    path = trained_weights_path(project)
    assert path == project / "models" / "last.pt"
    logs = project / "progress"

    saved = torch.load(path, weights_only=True)
    loaded = create_backbone("resnet18", weights=path).model.state_dict()
    assert loaded.keys() == saved["backbone"].keys()
    for key, tensor in saved["backbone"].items():
        assert torch.equal(loaded[key], tensor), key
    torch.manual_seed(0)
    fresh = create_backbone("resnet18", weights="random").model.state_dict()
    assert not torch.equal(fresh["conv1.weight"], saved["backbone"]["conv1.weight"])  # it trained

    records = read_progress(logs / "train.jsonl")
    steps = [r for r in records if r["stage"] == "train"]
    assert steps and steps[-1]["done"] == steps[-1]["total"] == 3
    for key in ("step", "epoch", "loss", "images_per_s", "eta_s", "done", "total"):
        assert key in steps[-1]
    assert any(r["stage"] == "checkpoint" and r["epoch"] == 1 for r in records)
    summary = checkpoint_summary(project / "models")
    assert summary["settings"]["backbone"] == "resnet18" and summary["epoch"] == 1


def test_checkpoint_batchnorm_statistics_fit_the_trained_weights(trained):
    """Eval-mode features (what indexing uses) stay on the scale of train-mode ones after a short run."""
    root, samples, project = trained
    from mlfix.data.dataset import load_image

    backbone = create_backbone("resnet18", weights=project / "models" / "last.pt")
    transform = image_transform(32)
    x = torch.stack([transform(load_image(root, row)) for _, row in samples.head(16).iterrows()])
    with torch.no_grad():
        pooled_eval = backbone.eval()(x)[1]
        pooled_train = backbone.train()(x)[1]
    assert torch.isfinite(pooled_eval).all()
    ratio = float(pooled_eval.norm(dim=1).mean() / pooled_train.norm(dim=1).mean())
    assert 0.5 < ratio < 2.0, ratio  # without re-estimated statistics this is ~1e13


def test_corrupt_checkpoint_is_refused_and_left_alone(shapes, tmp_path):
    root, samples = shapes
    models = tmp_path / "models"
    models.mkdir()
    (models / "last.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"last\.pt cannot be read.*Rename or delete"):
        train_barlow_twins(root, samples, models, epochs=1, **FAST)
    assert (models / "last.pt").read_bytes() == b"PK\x03\x04 this is not a checkpoint"
    # an explicit restart replaces it
    train_barlow_twins(root, samples, models, epochs=1, resume=False, **FAST)
    assert torch.load(models / "last.pt", weights_only=True)["epoch"] == 1


def test_resume_with_other_settings_is_refused(trained, tmp_path):
    root, samples, project = trained
    models = copy_models(project, tmp_path)
    with pytest.raises(CheckpointError, match="image_size: saved 32, asked 48"):
        train_barlow_twins(root, samples, models, epochs=2, **{**FAST, "image_size": 48})


def test_a_second_run_on_the_same_folder_is_refused(trained, tmp_path):
    import fcntl

    root, samples, project = trained
    models = copy_models(project, tmp_path)
    with open(models / "train.lock", "w") as held:  # another run holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another training run is using"):
            train_barlow_twins(root, samples, models, epochs=2, **FAST)
    train_barlow_twins(root, samples, models, epochs=1, **FAST)  # released: fine again


def test_disk_full_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    root, samples, project = trained
    models = copy_models(project, tmp_path)
    before = (models / "last.pt").read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=r"disk full.*previous checkpoint .*last\.pt is intact"):
        train_barlow_twins(root, samples, models, epochs=2, **FAST)
    assert (models / "last.pt").read_bytes() == before
    assert [p.name for p in models.iterdir() if p.name.endswith(".tmp")] == []


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


def test_summary_is_none_without_a_run(tmp_path):
    assert checkpoint_summary(tmp_path) is None
    (tmp_path / "last.json").write_text("{half")
    assert checkpoint_summary(tmp_path) is None
