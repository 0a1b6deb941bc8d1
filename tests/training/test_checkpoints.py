"""Checkpoints: a corrupt or mismatched one is refused and left alone, a full disk keeps the previous
one, the summary is None without a run; which weights an index run starts from (choose_weights)."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from mlfix.errors import CheckpointError, SettingsError
from mlfix.settings import IndexSettings
from mlfix.training.barlow_twins import train_barlow_twins
from mlfix.training.checkpoints import checkpoint_summary, choose_weights

from tests.training.tiny_runs import FAST, copy_models


def resolve_weights(settings, project_dir):
    """``(weights for create_backbone, cache identity)`` of :func:`choose_weights`."""
    choice = choose_weights(settings, project_dir)
    return choice.weights, choice.identity


def fake_checkpoint(project_dir, backbone: str) -> None:
    models = project_dir / "models"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"weights")
    (models / "last.json").write_text(json.dumps({"settings": {"backbone": backbone}}))


def test_auto_is_random_without_a_checkpoint_and_the_checkpoint_with_one(tmp_path):
    resnet = IndexSettings(backbone="resnet18")  # no offline weights: auto falls back to random
    assert resolve_weights(resnet, tmp_path) == ("random", "random")
    assert resolve_weights(IndexSettings(), tmp_path) == ("offline", "offline")  # efficientnet_lite0
    fake_checkpoint(tmp_path, "resnet18")
    weights, identity = resolve_weights(resnet, tmp_path)
    assert weights == str((tmp_path / "models" / "last.pt").resolve()) and identity["size"] == 7


def test_a_checkpoint_of_another_backbone_is_not_used(tmp_path):
    fake_checkpoint(tmp_path, "resnet50")
    assert resolve_weights(IndexSettings(backbone="resnet18"), tmp_path) == ("random", "random")
    with pytest.raises(SettingsError, match="no checkpoint for backbone 'resnet18'.*mlfix train"):
        resolve_weights(IndexSettings(backbone="resnet18", weights="trained"), tmp_path)


def test_keywords_pass_through_and_a_missing_file_is_named(tmp_path):
    assert resolve_weights(IndexSettings(weights="offline"), tmp_path) == ("offline", "offline")
    with pytest.raises(SettingsError, match="weights file not found: .*nothere.pt"):
        resolve_weights(IndexSettings(weights=str(tmp_path / "nothere.pt")), tmp_path)


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


def test_summary_is_none_without_a_run(tmp_path):
    assert checkpoint_summary(tmp_path) is None
    (tmp_path / "last.json").write_text("{half")
    assert checkpoint_summary(tmp_path) is None
