"""Training checkpoints: what a run is (:class:`TrainSettings`), where its checkpoint lies, how it is
written and read back, and which weights an index run starts from.

A run writes ``<project>/models/last.pt`` (the weights and :class:`TrainSettings`) and a small
``last.json`` summary beside it (:func:`checkpoint_summary`, cheap to read for the app and the CLI).
:func:`choose_weights` turns a project's ``weights`` setting into what the backbone factory takes,
its cache identity, and why: ``auto`` becomes the trained checkpoint when it was trained for the same
backbone, else the offline ImageNet weights when the backbone has them, else random.

:func:`save_checkpoint` writes to a temporary file beside ``last.pt`` that then replaces it
(:mod:`mlfix.atomic`), so a kill or a full disk never leaves a half-written checkpoint.
:func:`load_checkpoint` never overwrites an unreadable or mismatched checkpoint silently: it raises
:class:`~mlfix.errors.CheckpointError`, which names the file and says what to do.

    >>> import tempfile
    >>> trained_weights_path(tempfile.mkdtemp()) is None
    True
"""

from __future__ import annotations

import glob
import json
import os
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from mlfix.atomic import atomic_path
from mlfix.errors import CheckpointError, SettingsError
from mlfix.settings import OFFLINE_BACKBONES, IndexSettings

CHECKPOINT_NAME = "last.pt"
SUMMARY_NAME = "last.json"
SETTINGS_THAT_MUST_MATCH = ("backbone", "init", "batch_size", "image_size", "flip", "head_dim", "lr",
                            "weight_decay", "seed", "vq_words")


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
    # Pretrained weights keep their batch-norm statistics: the layers stay in eval mode and are not
    # re-estimated (re-estimating them on the project's images alone made offline features worse).
    freeze_bn: bool = False
    # Visual words learned with the backbone (mlfix.training.vq_head); 0: none.
    vq_words: int = 0


def check_vq_words(k: int) -> int:
    """``k`` if it is a valid ``--vq-words`` (0: off, else a multiple of 8 in [8, 65535]); ValueError otherwise.

    >>> check_vq_words(0), check_vq_words(1024)
    (0, 1024)
    """
    from mlfix.pipeline.codebook import MAX_WORDS

    if not isinstance(k, int) or isinstance(k, bool) or (k and (not 8 <= k <= MAX_WORDS or k % 8)):
        raise ValueError(f"vq_words must be 0 (no learned words) or a multiple of 8 in [8, {MAX_WORDS}] "
                         f"(the index's number of words, e.g. 1024), got {k!r}")
    return k


@dataclass
class Position:
    """Where a run is; saved in every checkpoint, so a resumed run goes on from there."""

    epoch: int = 0      # completed epochs
    batch: int = 0      # batches done within the current epoch
    step: int = 0       # batches done in total (the schedule's clock)


# ---------------------------------------------------------------- writing and reading a run


def load_checkpoint(path: Path, settings: TrainSettings) -> dict | None:
    """The saved checkpoint if there is one that fits ``settings``; raises :class:`CheckpointError`."""
    import torch

    if not path.exists():
        return None
    advice = (f"Rename or delete {path} to start training over (or pass resume=False / "
              f"`mlfix train --restart` to replace it).")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, wrong format, unpickling refused...
        raise CheckpointError(f"checkpoint {path} cannot be read (corrupt or not an mlfix "
                              f"checkpoint: {type(err).__name__}: {err}). It was left untouched. "
                              f"{advice}") from None
    needed = ("backbone", "head", "optimizer", "scheduler", "epoch", "step", "settings")
    if not isinstance(saved, dict) or any(key not in saved for key in needed):
        raise CheckpointError(f"checkpoint {path} is not an mlfix training checkpoint (it lacks "
                              f"{[k for k in needed if not isinstance(saved, dict) or k not in saved]}). "
                              f"{advice}")
    defaults = {f.name: f.default for f in fields(TrainSettings) if f.default is not MISSING}
    old = {**defaults, **saved["settings"]}  # a setting added since the checkpoint: its default
    new = asdict(settings)
    differ = {k: (old.get(k), new[k]) for k in SETTINGS_THAT_MUST_MATCH if old.get(k) != new[k]}
    if differ:
        text = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(f"checkpoint {path} was trained with other settings ({text}). "
                              f"Resume with the saved settings, or: {advice}")
    return saved


def restore(saved: dict, model, head, optimizer, scheduler, steps_per_epoch: int, vq=None) -> Position:
    """Load a checkpoint's weights and optimizer state (and ``vq``'s, the VQ head of a run with learned
    words); the :class:`Position` to go on from, with the schedule's learning rate re-derived for the
    (possibly longer) run."""
    model.model.load_state_dict(saved["backbone"])
    head.load_state_dict(saved["head"])
    if vq is not None:
        vq.load_state_dict(saved["vq_head"])
    optimizer.load_state_dict(saved["optimizer"])
    position = Position(epoch=int(saved["epoch"]), batch=int(saved.get("batch", 0)),
                         step=int(saved["step"]))
    if position.batch >= steps_per_epoch:  # the dataset shrank since: that epoch is done
        position.epoch, position.batch = position.epoch + 1, 0
    # The schedule is a function of the step: re-derive the lr for the (possibly longer) run.
    scheduler.last_epoch = position.step - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return position


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to a temporary file beside ``path``, then rename it over ``path``."""
    import torch

    try:
        with atomic_path(path, fsync=True) as temporary:
            torch.save(state, temporary)
    except OSError as err:
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was kept"
        raise OSError(err.errno, f"cannot write checkpoint {path}: {err.strerror or err} "
                      f"(is the disk full?); {kept}. Free some space and run again to resume.") from err


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary checkpoint files a killed run left in ``folder``."""
    for leftover in glob.glob(str(folder / f".{CHECKPOINT_NAME}.*.tmp")):
        Path(leftover).unlink(missing_ok=True)


# ---------------------------------------------------------------- which weights an index run uses


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


@dataclass(frozen=True)
class WeightsChoice:
    """The weights an index run starts from: ``weights`` for create_backbone, ``identity`` for the
    cache key, and ``text``, said to the user (e.g. "offline ImageNet weights (no trained checkpoint)")."""

    weights: str
    identity: object
    text: str


def choose_weights(settings: IndexSettings, project_dir: str | os.PathLike) -> WeightsChoice:
    """What a project's ``weights`` setting means for its backbone, and why.

    ``auto``: the project's checkpoint when it was trained for this backbone, else the offline ImageNet
    weights when every member of the backbone has them (EfficientNet-Lite0/1/2), else ``random``.
    ``trained``: the checkpoint, an error when there is none for this backbone. A file is identified
    by its path, size and modification time, so a retrained file recomputes the features.
    """
    kind, trained = settings.weights.kind, trained_weights_path(project_dir)
    fits = trained is not None and _checkpoint_fits(trained, settings.backbone)
    offline = all(part in OFFLINE_BACKBONES for part in settings.backbone.split("+"))
    why = ""
    if kind == "auto":
        if fits:
            kind, path, why = "file", trained, "auto: trained for this backbone"
        else:
            no_checkpoint = ("no trained checkpoint" if trained is None
                             else f"the trained checkpoint is for another backbone")
            kind, path = ("offline" if offline else "random"), None
            why = no_checkpoint if offline else f"{no_checkpoint}, no offline weights for {settings.backbone}"
    elif kind == "trained":
        if not fits:
            raise SettingsError(f"weights = 'trained' but {Path(project_dir) / 'models'} has no checkpoint "
                                f"for backbone {settings.backbone!r}: run `mlfix train --project {project_dir}` "
                                "first, or choose other weights (auto, random, offline, imagenet, a file)")
        kind, path, why = "file", trained, "as set"
    else:
        path, why = settings.weights.path, "as set"
    if kind != "file":
        text = {"offline": "offline ImageNet weights", "random": "random weights",
                "imagenet": "ImageNet weights from the hub"}[kind]
        return WeightsChoice(kind, kind, f"{text} ({why})")
    path = Path(path).expanduser()
    path = (path if path.is_absolute() else Path(project_dir) / path).resolve()  # old configs: relative
    if not path.is_file():
        raise SettingsError(f"weights file not found: {path}; give an existing file, or weights = auto, "
                            "offline, random, imagenet or trained")
    stat = path.stat()
    name = "trained checkpoint" if trained is not None and path == trained.resolve() else "weights file"
    return WeightsChoice(str(path), {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
                         f"{name} {path} ({why})")


def _checkpoint_fits(path: Path, backbone: str) -> bool:
    """A trained checkpoint is used only for the backbone architecture it was trained for."""
    summary = checkpoint_summary(path.parent) or {}
    return (summary.get("settings") or {}).get("backbone") == backbone
