"""Barlow Twins self-supervised training of a project's backbone on its own images.

:func:`train_barlow_twins` trains a timm backbone (ResNet18 by default) with lightly's
``BarlowTwinsLoss``, ``BarlowTwinsProjectionHead`` and BYOL two-view augmentations (lightly's own
Barlow Twins recipe, without hue jitter), AdamW with a linear warmup and a cosine decay, seeded. (AdamW rather than
SGD/LARS: on short CPU runs with small batches SGD at lightly's CIFAR learning rate was unstable, loss
spikes of 2x; AdamW fell steadily.) The features it learns
reflect the dataset's own domain (traffic-sign crops, product photos) rather than ImageNet.

Checkpoints (``<checkpoint_dir>/last.pt``) are written after every epoch, and every few minutes
within long epochs, to a temporary file in the same folder that then replaces ``last.pt``
(:mod:`mlfix.atomic`), so a kill or a full disk never leaves a half-written checkpoint. Calling
again resumes from ``last.pt`` at the saved epoch and step; a larger ``epochs`` extends a finished
run (the cosine schedule is stretched to the new length from the current step on).

A checkpoint that cannot be read is never overwritten silently: :class:`CheckpointError` names the
file and says what to do (rename or delete it, or pass ``resume=False`` to start over and replace it).

Example:
    >>> from mlfix.data.dataset import scan, DataRoot                               # doctest: +SKIP
    >>> found = scan("photos/")                                                # doctest: +SKIP
    >>> path = train_barlow_twins(DataRoot("photos/"), found.samples,          # doctest: +SKIP
    ...                           Path("proj/models"), epochs=5, image_size=64)
    >>> backbone = create_backbone("resnet18", weights=path)                   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlfix.atomic import atomic_path, write_json_atomic
from mlfix.data.dataset import DataRoot
from mlfix.errors import CheckpointError
from mlfix.training.checkpoints import (CHECKPOINT_NAME, SETTINGS_THAT_MUST_MATCH, SUMMARY_NAME,
                                        TrainSettings, _Position, checkpoint_summary, trained_weights_path)
from mlfix.training.data import MIN_BATCH, EvalImages, pair_loader, recalibrate_batchnorm

if TYPE_CHECKING:  # torch is imported lazily: the app's pages import this module
    import pandas as pd
    import torch

    from mlfix.progress import Progress

def train_barlow_twins(root: DataRoot, samples: pd.DataFrame, checkpoint_dir: str | os.PathLike, *,
                       backbone: str = "resnet18", init: str = "random", epochs: int = 10,
                       batch_size: int = 128, image_size: int = 64, flip: bool = True,
                       head_dim: int = 2048, lr: float = 1e-3, weight_decay: float = 0.05,
                       seed: int = 0, workers: int | None = None, device: str | None = None,
                       progress: Progress | None = None, resume: bool = True,
                       checkpoint_minutes: float = 10.0, channels_last: bool = True,
                       bn_images: int = 512) -> Path:
    """Train ``backbone`` with Barlow Twins on ``samples`` and return the path of ``last.pt``.

    Args:
        root: the data root the ``path`` column of ``samples`` is relative to.
        samples: the sample table (``path`` and optional ``box_x/y/w/h`` crop columns).
        checkpoint_dir: folder for ``last.pt`` and ``last.json`` (a project's ``models/``).
        backbone: a timm model name (``resnet18``, ``efficientnet_lite0``...).
        init: starting weights: ``random``, ``imagenet`` (needs the internet), ``offline`` or a file.
        epochs: total epochs of the run; more than a finished run's extends it.
        batch_size: images per step; clamped (with a warning) to the number of samples.
        image_size: side of the square training crops in pixels (at least 32).
        flip: random horizontal flips; turn off where a mirror image means another class.
        head_dim: width of the projection head (lightly's default 8192 is ~8x slower on a CPU).
        lr: AdamW peak learning rate, reached after a linear warmup of up to one epoch (at most
            500 steps), then a cosine decay to 0.1% of it at the last step.
        weight_decay: AdamW (decoupled) weight decay on weights, not on biases and norm parameters.
        seed: seeds the initialisation, the per-epoch sample order and the augmentations.
        workers: DataLoader worker processes; None picks one from the device and CPU count.
        device: ``cuda``, ``cpu`` or None (CUDA when available, else the CPU with all cores).
        progress: a :class:`mlfix.progress.Progress`; the ``train`` stage gets a bar and
            records with ``step, epoch, loss, images_per_s, eta_s, done, total``. None: a bar only.
        resume: continue from ``last.pt`` if present (the default). False starts over and replaces it.
        checkpoint_minutes: also checkpoint within an epoch when this much time passed since the last.
        channels_last: NHWC memory format (faster convolutions on CPU and CUDA).
        bn_images: before each checkpoint, the backbone's batch-norm statistics are re-estimated on
            this many un-augmented images (a seeded subset; 0 turns it off). Training moves the
            weights faster than the running averages follow, and eval-mode features (what indexing
            uses) then blow up; the re-estimate makes every checkpoint's features sound.

    Returns:
        The path of the last checkpoint, ``checkpoint_dir / "last.pt"``.

    Raises:
        ValueError: bad arguments, too few images, a backbone that cannot take ``image_size``.
        CheckpointError: ``last.pt`` is unreadable, or was made with other settings.
        OSError: a checkpoint could not be written (disk full...); the previous one is intact.
        RuntimeError: the loss became NaN/inf, or no image of an epoch could be read.
    """
    import torch

    checkpoint_dir = Path(checkpoint_dir)
    rows = _sample_rows(samples)
    settings = _settings(len(rows), backbone=backbone, init=str(init), epochs=epochs,
                         batch_size=batch_size, image_size=image_size, flip=flip, head_dim=head_dim,
                         lr=lr, weight_decay=weight_decay, seed=seed)
    dev = _pick_device(device)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(checkpoint_dir):
        return _train(root, rows, checkpoint_dir, settings, dev, progress=progress, resume=resume,
                      workers=workers, checkpoint_minutes=checkpoint_minutes,
                      channels_last=channels_last, bn_images=bn_images)


def _train(root: DataRoot, rows: list[dict], checkpoint_dir: Path, settings: TrainSettings, dev, *,
           progress, resume: bool, workers: int | None, checkpoint_minutes: float, channels_last: bool,
           bn_images: int) -> Path:
    _remove_stale_temporaries(checkpoint_dir)
    saved = _load_checkpoint(checkpoint_dir / CHECKPOINT_NAME, settings) if resume else None
    seed = settings.seed

    _seed_everything(seed)
    model, head = _build(settings, dev, channels_last, from_checkpoint=saved is not None)
    optimizer = _optimizer(model, head, settings)
    steps_per_epoch = len(rows) // settings.batch_size
    total_steps = settings.epochs * steps_per_epoch
    scheduler = _scheduler(optimizer, settings, total_steps)
    position = _restore(saved, model, head, optimizer, scheduler, steps_per_epoch) if saved else _Position()
    if position.step >= total_steps:
        _close(progress)
        return checkpoint_dir / CHECKPOINT_NAME

    calibration = EvalImages(root, rows, settings.image_size, bn_images, settings.seed)
    loop = _Loop(settings, model, head, optimizer, scheduler, dev, channels_last, checkpoint_dir,
                 progress, total_steps, steps_per_epoch, checkpoint_minutes, calibration)
    loader = pair_loader(root, rows, settings, dev, workers, position)
    try:
        loop.run(loader, position)
    finally:
        _close(progress)
    return checkpoint_dir / CHECKPOINT_NAME


# ---------------------------------------------------------------- arguments and setup


@contextmanager
def _exclusive(folder: Path):
    """Hold ``folder/train.lock`` for the run: two runs writing one checkpoint would undo each other."""
    import fcntl

    with open(folder / "train.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"another training run is using {folder} (it holds {folder / 'train.lock'}); "
                               f"wait for it to finish or stop it first") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sample_rows(samples: pd.DataFrame) -> list[dict]:
    if "path" not in samples.columns:
        raise ValueError(f"samples need a 'path' column (the sample table from mlfix.data.dataset.scan); "
                         f"got columns {list(samples.columns)}")
    keep = [c for c in ("sample_id", "path", "box_x", "box_y", "box_w", "box_h") if c in samples.columns]
    rows = samples[keep].to_dict("records")
    for row in rows:  # plain floats/None pickle small and load_image reads them directly
        for key in ("box_x", "box_y", "box_w", "box_h"):
            if key in row and (row[key] is None or _is_nan(row[key])):
                row[key] = None
    return rows


def _is_nan(value: Any) -> bool:
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _settings(n: int, *, backbone: str, init: str, epochs: int, batch_size: int, image_size: int,
              flip: bool, head_dim: int, lr: float, weight_decay: float, seed: int) -> TrainSettings:
    if n < MIN_BATCH:
        raise ValueError(f"Barlow Twins needs at least {MIN_BATCH} images (it compares images within "
                         f"a batch); the sample table has {n}. Add images or check the scan's problems.")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < MIN_BATCH:
        raise ValueError(f"batch size must be a whole number >= {MIN_BATCH} (batch statistics need "
                         f"several images), got {batch_size!r}; 64-256 is typical")
    if batch_size > n:
        warnings.warn(f"batch size {batch_size} is larger than the dataset ({n} images); using "
                      f"{n}, one step per epoch", stacklevel=3)
        batch_size = n
    from mlfix.pipeline.backbone import ENSEMBLE_SEPARATOR, MIN_IMAGE_SIZE  # backbone imports torch: only when training

    if ENSEMBLE_SEPARATOR in backbone:
        raise ValueError(f"Barlow Twins trains one backbone, not the ensemble {backbone!r}; train one "
                         "member (e.g. --backbone efficientnet_lite0) or index with the ensemble's offline weights")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size!r} px is too small for the backbone's stride-32 "
                         f"stages; use at least {MIN_IMAGE_SIZE} (64 is a good CPU default)")
    if head_dim < 8:
        raise ValueError(f"head_dim must be >= 8 (2048 is the CPU-friendly default), got {head_dim}")
    lr = float(lr)
    if not lr > 0 or weight_decay < 0:
        raise ValueError(f"learning rate must be > 0 and weight decay >= 0; got lr={lr}, "
                         f"weight_decay={weight_decay}")
    steps_per_epoch = n // batch_size
    warmup = max(1, min(steps_per_epoch, 500))  # fixed, so that extending a run keeps it
    return TrainSettings(backbone=backbone, init=init, epochs=epochs, batch_size=batch_size,
                         image_size=image_size, flip=bool(flip), head_dim=int(head_dim), lr=lr,
                         weight_decay=float(weight_decay), seed=int(seed), warmup_steps=warmup)


def _seed_everything(seed: int) -> None:
    """Seed torch, numpy and random: lightly's blur and solarisation draw from numpy/random, and with
    ``workers=0`` they run in this process (workers are seeded by the DataLoader)."""
    import random

    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _pick_device(device: str | None) -> torch.device:
    import torch

    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        torch.set_num_threads(os.cpu_count() or 1)
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device=None "
                         "(automatic) or 'cpu'")
    return dev


def _build(settings: TrainSettings, dev: torch.device, channels_last: bool, from_checkpoint: bool):
    """Backbone and projection head on ``dev``; checks the backbone takes ``image_size``."""
    import torch
    from lightly.models.modules import BarlowTwinsProjectionHead

    from mlfix.pipeline.backbone import create_backbone

    # The weights come from the checkpoint when resuming: do not fetch 'imagenet' again.
    model = create_backbone(settings.backbone, weights="random" if from_checkpoint else settings.init)
    head = BarlowTwinsProjectionHead(model.pooled_dim, settings.head_dim, settings.head_dim)
    _check_image_size(model, settings)
    model, head = model.to(dev), head.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return model, head


def _check_image_size(model, settings: TrainSettings) -> None:
    import torch

    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, 3, settings.image_size, settings.image_size))
    except RuntimeError as err:
        raise ValueError(f"backbone {settings.backbone!r} cannot take {settings.image_size} px "
                         f"images ({err}); use a larger image size") from None
    finally:
        model.train()


def _optimizer(model, head, settings: TrainSettings):
    import torch

    decay, no_decay = [], []
    for module in (model, head):
        for param in module.parameters():
            # biases and norm scales are 1-d: decaying them only hurts
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr)


def _scheduler(optimizer, settings: TrainSettings, total_steps: int):
    from lightly.utils.scheduler import CosineWarmupScheduler

    return CosineWarmupScheduler(optimizer, warmup_epochs=min(settings.warmup_steps, total_steps),
                                 max_epochs=max(total_steps, 1))


def _close(progress) -> None:
    if progress is not None:
        progress.close()


# ---------------------------------------------------------------- checkpoints


def _load_checkpoint(path: Path, settings: TrainSettings) -> dict | None:
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
    old = saved["settings"]
    new = asdict(settings)
    differ = {k: (old.get(k), new[k]) for k in SETTINGS_THAT_MUST_MATCH if old.get(k) != new[k]}
    if differ:
        text = ", ".join(f"{k}: saved {a!r}, asked {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(f"checkpoint {path} was trained with other settings ({text}). "
                              f"Resume with the saved settings, or: {advice}")
    return saved


def _restore(saved: dict, model, head, optimizer, scheduler, steps_per_epoch: int) -> _Position:
    model.model.load_state_dict(saved["backbone"])
    head.load_state_dict(saved["head"])
    optimizer.load_state_dict(saved["optimizer"])
    position = _Position(epoch=int(saved["epoch"]), batch=int(saved.get("batch", 0)),
                         step=int(saved["step"]))
    if position.batch >= steps_per_epoch:  # the dataset shrank since: that epoch is done
        position.epoch, position.batch = position.epoch + 1, 0
    # The schedule is a function of the step: re-derive the lr for the (possibly longer) run.
    scheduler.last_epoch = position.step - 1
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()
    return position


def _save_atomic(state: dict, path: Path) -> None:
    """Write ``state`` to a temporary file beside ``path``, then rename it over ``path``."""
    import torch

    try:
        with atomic_path(path, fsync=True) as temporary:
            torch.save(state, temporary)
    except OSError as err:
        kept = f"the previous checkpoint {path} is intact" if path.exists() else "no checkpoint was kept"
        raise OSError(err.errno, f"cannot write checkpoint {path}: {err.strerror or err} "
                      f"(is the disk full?); {kept}. Free some space and run again to resume.") from err


def _remove_stale_temporaries(folder: Path) -> None:
    for leftover in glob.glob(str(folder / f".{CHECKPOINT_NAME}.*.tmp")):
        Path(leftover).unlink(missing_ok=True)


# ---------------------------------------------------------------- the loop


class _Loop:
    def __init__(self, settings: TrainSettings, model, head, optimizer, scheduler, dev, channels_last,
                 checkpoint_dir: Path, progress, total_steps: int, steps_per_epoch: int,
                 checkpoint_minutes: float, calibration: EvalImages):
        from lightly.loss import BarlowTwinsLoss

        self.settings, self.model, self.head = settings, model, head
        self.optimizer, self.scheduler, self.dev = optimizer, scheduler, dev
        self.channels_last, self.dir = channels_last, checkpoint_dir
        self.total, self.per_epoch = total_steps, steps_per_epoch
        self.every = checkpoint_minutes * 60
        self.calibration = calibration
        self.criterion = BarlowTwinsLoss()
        if progress is None:
            from mlfix.progress import Progress

            progress = Progress("train", log_dir=None)
        self.progress = progress
        self.callback = progress.stage("train")
        self.failed: dict[int, str] = {}
        self.recent: list[tuple[float, int]] = []  # (seconds, images) of the last steps
        self.last_loss = float("nan")

    def run(self, loader, position: _Position) -> None:
        last_save = time.monotonic()
        while position.epoch < self.settings.epochs:
            loader.batch_sampler.set_epoch(position.epoch, position.batch)
            used = 0
            start = time.perf_counter()
            for x0, x1, failures in loader:
                self._note_failures(failures, loader.dataset.rows)
                if x0 is not None and len(x0) >= MIN_BATCH:
                    self.last_loss = self._step(x0, x1, position)
                    used += 1
                position.batch += 1
                position.step += 1
                self.scheduler.step()
                now = time.perf_counter()
                self._report(position, now - start, 0 if x0 is None else len(x0))
                start = now
                if time.monotonic() - last_save > self.every and position.batch < self.per_epoch:
                    self._save(position)
                    last_save = time.monotonic()
            if used == 0 and position.batch > 0:
                raise RuntimeError(f"no image of epoch {position.epoch + 1} could be read "
                                   f"({len(self.failed)} failures, e.g. {next(iter(self.failed.values()), '')})")
            position.epoch, position.batch = position.epoch + 1, 0
            self._save(position)
            last_save = time.monotonic()

    def _step(self, x0, x1, position: _Position) -> float:
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x0 = x0.to(self.dev, non_blocking=True, memory_format=fmt)
        x1 = x1.to(self.dev, non_blocking=True, memory_format=fmt)
        z0 = self.head(self.model(x0)[1])
        z1 = self.head(self.model(x1)[1])
        loss = self.criterion(z0, z1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"the loss became {value} at step {position.step + 1}; lower the "
                               f"learning rate (lr={self.settings.lr}). The last checkpoint in "
                               f"{self.dir} is kept.")
        self.optimizer.step()
        return value

    def _note_failures(self, failures, rows) -> None:
        for index, reason in failures:
            if index not in self.failed:
                self.failed[index] = reason
                self.progress.record(stage="train_problem", sample_id=str(rows[index].get("sample_id",
                                     rows[index]["path"])), path=str(rows[index]["path"]), reason=reason)

    def _report(self, position: _Position, seconds: float, images: int) -> None:
        self.recent = (self.recent + [(seconds, images)])[-20:]
        elapsed = sum(s for s, _ in self.recent)
        rate = sum(i for _, i in self.recent) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - position.step) * elapsed / len(self.recent)
        self.callback(position.step, self.total, step=position.step, epoch=position.epoch + 1,
                      loss=round(self.last_loss, 4), images_per_s=round(rate, 1), eta_s=round(eta, 1),
                      lr=self.optimizer.param_groups[0]["lr"], skipped=len(self.failed))

    def _save(self, position: _Position) -> None:
        recalibrate_batchnorm(self.model, self.calibration.batches(min(self.settings.batch_size, 64)),
                              self.dev, self.channels_last)
        state = {"backbone": self.model.model.state_dict(), "head": self.head.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": position.epoch, "batch": position.batch, "step": position.step,
                 "settings": asdict(self.settings), "loss": self.last_loss}
        state["scheduler"] = {k: v for k, v in state["scheduler"].items() if k != "lr_lambdas"}
        path = self.dir / CHECKPOINT_NAME
        _save_atomic(state, path)
        summary = {"settings": asdict(self.settings), "epoch": position.epoch, "batch": position.batch,
                   "step": position.step, "total_steps": self.total, "loss": self.last_loss,
                   "skipped_images": len(self.failed), "time": time.time(), "checkpoint": str(path)}
        try:  # informational only: last.pt is the truth
            write_json_atomic(self.dir / SUMMARY_NAME, summary, default=float)
        except OSError:
            pass
        self.progress.record(stage="checkpoint", epoch=position.epoch, step=position.step,
                             path=str(path), loss=self.last_loss)
