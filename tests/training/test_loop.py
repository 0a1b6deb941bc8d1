"""The training loop: resuming after a kill or within an epoch, extending a finished run, progress
records, and checkpoints whose batch-norm statistics fit their weights."""

from __future__ import annotations

import pytest
import torch

from mlfix.pipeline.backbone import create_backbone, image_transform
from mlfix.progress import read_progress
from mlfix.training.barlow_twins import train_barlow_twins
from mlfix.training.checkpoints import checkpoint_summary, trained_weights_path
from tests.training.tiny_runs import FAST, Killed, KillAt, train_records


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
    from mlfix.data.images import load_image

    backbone = create_backbone("resnet18", weights=project / "models" / "last.pt")
    transform = image_transform(32)
    x = torch.stack([transform(load_image(root, row)) for _, row in samples.head(16).iterrows()])
    with torch.no_grad():
        pooled_eval = backbone.eval()(x)[1]
        pooled_train = backbone.train()(x)[1]
    assert torch.isfinite(pooled_eval).all()
    ratio = float(pooled_eval.norm(dim=1).mean() / pooled_train.norm(dim=1).mean())
    assert 0.5 < ratio < 2.0, ratio  # without re-estimated statistics this is ~1e13
