"""Which weights an index run starts from: resolve_weights over a project's checkpoint."""

from __future__ import annotations

import json

import pytest

from mlfix.errors import SettingsError
from mlfix.settings import IndexSettings
from mlfix.training.checkpoints import resolve_weights


def fake_checkpoint(project_dir, backbone: str) -> None:
    models = project_dir / "models"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"weights")
    (models / "last.json").write_text(json.dumps({"settings": {"backbone": backbone}}))


def test_auto_is_random_without_a_checkpoint_and_the_checkpoint_with_one(tmp_path):
    assert resolve_weights(IndexSettings(), tmp_path) == ("random", "random")
    fake_checkpoint(tmp_path, "resnet18")
    weights, identity = resolve_weights(IndexSettings(), tmp_path)
    assert weights == str((tmp_path / "models" / "last.pt").resolve()) and identity["size"] == 7


def test_a_checkpoint_of_another_backbone_is_not_used(tmp_path):
    fake_checkpoint(tmp_path, "resnet50")
    assert resolve_weights(IndexSettings(), tmp_path) == ("random", "random")
    with pytest.raises(SettingsError, match="no checkpoint for backbone 'resnet18'.*mlfix train"):
        resolve_weights(IndexSettings(weights="trained"), tmp_path)


def test_keywords_pass_through_and_a_missing_file_is_named(tmp_path):
    assert resolve_weights(IndexSettings(weights="offline"), tmp_path) == ("offline", "offline")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        resolve_weights(IndexSettings(weights=str(tmp_path / "nothere.pt")), tmp_path)
