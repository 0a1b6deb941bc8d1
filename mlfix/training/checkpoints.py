"""Training checkpoints: what a run is (:class:`TrainSettings`), where its checkpoint lies, and
which weights an index run starts from.

A run writes ``<project>/models/last.pt`` (the weights and :class:`TrainSettings`) and a small
``last.json`` summary beside it (:func:`checkpoint_summary`, cheap to read for the app and the CLI).
:func:`resolve_weights` turns a project's ``weights`` setting into what the backbone factory takes:
``auto`` becomes the trained checkpoint when it was trained for the same backbone, else random.

    >>> import tempfile
    >>> trained_weights_path(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlfix.errors import SettingsError
from mlfix.settings import IndexSettings

CHECKPOINT_NAME = "last.pt"
SUMMARY_NAME = "last.json"
SETTINGS_THAT_MUST_MATCH = ("backbone", "init", "batch_size", "image_size", "flip", "head_dim", "lr",
                            "weight_decay", "seed")


@dataclass(frozen=True)
class TrainSettings:
    """Everything that defines a training run; stored in every checkpoint."""

    backbone: str
    init: str
    epochs: int
    batch_size: int
    image_size: int
    flip: bool
    head_dim: int
    lr: float
    weight_decay: float
    seed: int
    warmup_steps: int = 0


@dataclass
class _Position:
    epoch: int = 0      # completed epochs
    batch: int = 0      # batches done within the current epoch
    step: int = 0       # batches done in total (the schedule's clock)


def trained_weights_path(project_dir: str | os.PathLike) -> Path | None:
    """``<project>/models/last.pt`` if training has written a checkpoint there, else None.

    The file holds ``{'backbone': state_dict, 'settings': {...}, ...}``; pass it as
    ``create_backbone(settings['backbone'], weights=path)`` (see :func:`checkpoint_summary`).
    """
    path = Path(project_dir) / "models" / CHECKPOINT_NAME
    return path if path.is_file() else None


def checkpoint_summary(checkpoint_dir: str | os.PathLike) -> dict | None:
    """The small JSON beside ``last.pt``: settings, epoch, step, loss, time; None if absent.

    Cheap to read (the app and CLI use it to show a run's state without loading the weights).
    """
    path = Path(checkpoint_dir) / SUMMARY_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def resolve_weights(settings: IndexSettings, project_dir: str | os.PathLike) -> tuple[str, object]:
    """``(weights for create_backbone, identity for the cache key)`` of a project's settings.

    ``auto``: the project's checkpoint when it was trained for this backbone, else ``random``.
    ``trained``: the checkpoint, an error when there is none for this backbone. A file is identified
    by its path, size and modification time, so a retrained file recomputes the features.
    """
    kind, trained = settings.weights.kind, trained_weights_path(project_dir)
    fits = trained is not None and _checkpoint_fits(trained, settings.backbone)
    if kind == "auto":
        kind, path = ("file", trained) if fits else ("random", None)
    elif kind == "trained":
        if not fits:
            raise SettingsError(f"weights = 'trained' but {Path(project_dir) / 'models'} has no checkpoint "
                                f"for backbone {settings.backbone!r}: run `mlfix train --project {project_dir}` "
                                "first, or choose other weights (auto, random, offline, imagenet, a file)")
        kind, path = "file", trained
    else:
        path = settings.weights.path
    if kind != "file":
        return kind, kind
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    stat = path.stat()
    return str(path), {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _checkpoint_fits(path: Path, backbone: str) -> bool:
    """A trained checkpoint is used only for the backbone architecture it was trained for."""
    summary = checkpoint_summary(path.parent) or {}
    return (summary.get("settings") or {}).get("backbone") == backbone
