"""Weights files that cannot be used: one clear MlfixError, never torch's own advice."""

from __future__ import annotations

import pytest

from mlfix.errors import CheckpointError, MlfixError, SettingsError
from mlfix.pipeline.backbone import create_backbone


def test_a_junk_file_is_refused_without_unsafe_advice(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot read weights file") as caught:
        create_backbone("resnet18", junk)
    assert "weights_only=False" not in str(caught.value) and isinstance(caught.value, MlfixError)


def test_weights_of_another_backbone_say_so(tmp_path):
    import torch

    other = tmp_path / "resnet34.pt"
    torch.save(create_backbone("resnet34", "random").model.state_dict(), other)
    with pytest.raises(CheckpointError, match="does not fit the backbone 'resnet18'.*--backbone"):
        create_backbone("resnet18", other)


def test_an_unknown_backbone_is_a_settings_error():
    with pytest.raises(SettingsError, match="unknown backbone 'resnet1800'"):
        create_backbone("resnet1800", "random")
