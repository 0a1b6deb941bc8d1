"""Barlow Twins self-supervised training of a project's backbone on its own images (Zbontar et al.
2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction", arXiv:2103.03230).

:func:`train_barlow_twins` checks the arguments, builds the run and starts it: a timm backbone
(ResNet18 by default) with lightly's ``BarlowTwinsLoss``, ``BarlowTwinsProjectionHead`` and BYOL
two-view augmentations (lightly's own Barlow Twins recipe, without hue jitter), AdamW with a linear
warmup and a cosine decay, seeded. AdamW rather than SGD/LARS: on short CPU runs with small batches
SGD at lightly's CIFAR learning rate was unstable (loss spikes) where AdamW fell steadily. The
features it learns reflect the dataset's own domain (traffic-sign crops, product photos) rather than
ImageNet. Throughput: ``python -m bench.train``.

The run's other parts have their own modules: the steps and checkpoints of the loop
(:mod:`mlfix.training.loop`), writing and resuming checkpoints (:mod:`mlfix.training.checkpoints`),
the two augmented views per image and the seeded epoch order (:mod:`mlfix.training.data`), the
visual words learned with the backbone (``vq_words``, :mod:`mlfix.training.vq_head`).

Checkpoints (``<checkpoint_dir>/last.pt``) are written atomically after every epoch, and every few
minutes within long epochs. Calling again resumes from ``last.pt`` at the saved epoch and step; a
larger ``epochs`` extends a finished run (the cosine schedule is stretched to the new length from
the current step on). A checkpoint that cannot be read is never overwritten silently:
:class:`~mlfix.errors.CheckpointError` names the file and says what to do (rename or delete it, or
pass ``resume=False`` to start over and replace it). Ctrl-C saves a checkpoint at the current step and
raises :class:`~mlfix.training.loop.TrainingStopped`; a resumed run tells ``say`` where it goes on from.

``mlfix train`` starts from the backbone's offline ImageNet weights where it has them (continued
training on the user's images, at a lower learning rate). Whether that beats the frozen weights is
measured by ``python -m bench.feature_quality --continued`` (README, "Figures").

Example (one short epoch on 16 of the demo's digits; a real run wants thousands of images)::

    >>> import tempfile, pathlib
    >>> from mlfix.demo import digits_samples
    >>> from mlfix.pipeline.backbone import create_backbone
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> root, samples = digits_samples(folder / "digits", limit=16)
    >>> path = train_barlow_twins(root, samples, folder / "models",
    ...                           epochs=1, batch_size=8, image_size=32, head_dim=64, workers=0)
    >>> path.name
    'last.pt'
    >>> backbone = create_backbone("resnet18", weights=path)
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mlfix.data.images import DataRoot
from mlfix.training.checkpoints import (CHECKPOINT_NAME, Position, TrainSettings, check_vq_words,
                                        load_checkpoint, remove_stale_temporaries, restore)
from mlfix.training.data import MIN_BATCH, EvalImages, pair_loader
from mlfix.training.loop import TrainingLoop, position_text

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
                       bn_images: int = 512, say: Callable[[str], None] | None = None,
                       vq_words: int = 0) -> Path:
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
        head_dim: width of the projection head (lightly's default 8192 is much slower on a CPU).
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
            uses) then blow up; the re-estimate makes every checkpoint's features sound. Not with
            pretrained ``init`` (anything but ``random``): those keep their statistics
            (:func:`freeze_batchnorm`).
        say: called with a line for people, e.g. where a resumed run goes on from
            (``print`` in ``mlfix train``); None: only the progress log gets it.
        vq_words: also learn this many visual words on the cells, a VQ-VAE layer trained with the
            backbone (:mod:`mlfix.training.vq_head`); saved under ``"vq"`` in ``last.pt``. 0: none.

    Returns:
        The path of the last checkpoint, ``checkpoint_dir / "last.pt"``.

    Raises:
        ValueError: bad arguments, too few images, a backbone that cannot take ``image_size``.
        CheckpointError: ``last.pt`` is unreadable, or was made with other settings.
        TrainingStopped: Ctrl-C (a ``KeyboardInterrupt``); the steps done were checkpointed first.
        OSError: a checkpoint could not be written (disk full...); the previous one is intact.
        RuntimeError: the loss became NaN/inf, or no image of an epoch could be read.
    """
    import torch

    checkpoint_dir = Path(checkpoint_dir)
    rows = _sample_rows(samples)
    settings = _settings(len(rows), backbone=backbone, init=str(init), epochs=epochs,
                         batch_size=batch_size, image_size=image_size, flip=flip, head_dim=head_dim,
                         lr=lr, weight_decay=weight_decay, seed=seed, vq_words=vq_words)
    dev = _pick_device(device)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(checkpoint_dir):
        return _train(root, rows, checkpoint_dir, settings, dev, progress=progress, resume=resume,
                      workers=workers, checkpoint_minutes=checkpoint_minutes,
                      channels_last=channels_last, bn_images=bn_images, say=say)


def _train(root: DataRoot, rows: list[dict], checkpoint_dir: Path, settings: TrainSettings, dev, *,
           progress, resume: bool, workers: int | None, checkpoint_minutes: float, channels_last: bool,
           bn_images: int, say: Callable[[str], None] | None) -> Path:
    remove_stale_temporaries(checkpoint_dir)
    saved = load_checkpoint(checkpoint_dir / CHECKPOINT_NAME, settings) if resume else None
    seed = settings.seed

    _seed_everything(seed)
    model, head = _build(settings, dev, channels_last, from_checkpoint=saved is not None)
    from mlfix.training.vq_head import create_vq_head  # imports torch: only when training

    vq = create_vq_head(settings.vq_words, model.cell_channels, seed, dev)
    optimizer = _optimizer(model, head, settings, vq)
    steps_per_epoch = len(rows) // settings.batch_size
    total_steps = settings.epochs * steps_per_epoch
    scheduler = _scheduler(optimizer, settings, total_steps)
    position = restore(saved, model, head, optimizer, scheduler, steps_per_epoch, vq) if saved else Position()
    if saved:
        _say(say, progress, resume_text(checkpoint_dir / CHECKPOINT_NAME, position, total_steps,
                                        settings.epochs), position)
    if position.step >= total_steps:
        _close(progress)
        return checkpoint_dir / CHECKPOINT_NAME

    # the VQ head's statistics are re-estimated on these images too, also when batch norm is frozen
    calibration = EvalImages(root, rows, settings.image_size,
                             0 if settings.freeze_bn and vq is None else bn_images, settings.seed)
    loop = TrainingLoop(settings, model, head, optimizer, scheduler, dev, channels_last, checkpoint_dir,
                        progress, total_steps, steps_per_epoch, checkpoint_minutes, calibration, say, vq)
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
        raise ValueError(f"samples need a 'path' column (the sample table from mlfix.data.scan.scan); "
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
              flip: bool, head_dim: int, lr: float, weight_decay: float, seed: int,
              vq_words: int = 0) -> TrainSettings:
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
                         weight_decay=float(weight_decay), seed=int(seed), warmup_steps=warmup,
                         freeze_bn=init != "random", vq_words=check_vq_words(vq_words))


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
    from mlfix.pipeline.backbone import resolve_device

    return resolve_device(device)


def _build(settings: TrainSettings, dev: torch.device, channels_last: bool, from_checkpoint: bool):
    """Backbone and projection head on ``dev``; checks the backbone takes ``image_size``."""
    import torch
    from lightly.models.modules import BarlowTwinsProjectionHead

    from mlfix.pipeline.backbone import create_backbone

    # The weights come from the checkpoint when resuming: do not fetch 'imagenet' again.
    model = create_backbone(settings.backbone, weights="random" if from_checkpoint else settings.init)
    head = BarlowTwinsProjectionHead(model.pooled_dim, settings.head_dim, settings.head_dim)
    _check_image_size(model, settings)
    if settings.freeze_bn:
        freeze_batchnorm(model)
    model, head = model.to(dev), head.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return model, head


def freeze_batchnorm(model) -> None:
    """Keep ``model``'s batch-norm layers in eval mode (their running statistics fixed) whatever
    ``model.train()`` is later called with; their scale and shift still learn.

    Continued training from pretrained weights keeps the statistics they were trained with: small
    batches of augmented views, or a re-estimate on the project's images, made the features worse
    (``python -m bench.feature_quality --continued``).
    """
    import types

    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

    def train(self, mode: bool = True):
        nn.Module.train(self, mode)
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        return self

    model.train = types.MethodType(train, model)
    model.train(model.training)


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


def _optimizer(model, head, settings: TrainSettings, vq=None):
    import torch

    decay, no_decay = [], []
    for module in (model, head) if vq is None else (model, head, vq):
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


def resume_text(checkpoint: Path, position: Position, total_steps: int, epochs: int) -> str:
    """What a resumed run says: where it goes on from, or that the run is already finished.

    >>> resume_text(Path("models/last.pt"), Position(epoch=1, batch=4, step=25), 63, 3)
    'resuming models/last.pt from epoch 2 of 3, step 25 of 63'
    >>> resume_text(Path("models/last.pt"), Position(epoch=3, step=63), 63, 3)
    'models/last.pt already finished epoch 3 of 3, step 63 of 63: nothing to do (ask for more epochs to extend it, or restart)'
    """
    where = position_text(position, total_steps, epochs)
    if position.step >= total_steps:
        return (f"{checkpoint} already finished {where}: nothing to do (ask for more epochs to extend "
                "it, or restart)")
    return f"resuming {checkpoint} from {where}"


def _say(say: Callable[[str], None] | None, progress, text: str, position: Position) -> None:
    if say is not None:
        say(text)
    if progress is not None:
        progress.record(stage="resume", message=text, epoch=position.epoch, step=position.step)


def _close(progress) -> None:
    if progress is not None:
        progress.close()
