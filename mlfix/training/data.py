"""The data side of Barlow Twins training (:mod:`mlfix.training.barlow_twins`): two augmented views per image,
resumable seeded epoch batches, and the batch-norm recalibration before each checkpoint.

:func:`pair_loader` gives ``(x0, x1, failures)`` batches: two BYOL views of each readable image
(lightly's transforms), and ``[(index, reason)]`` for the images that could not be read, which the
training loop reports and skips. :class:`EpochBatches` makes the order a seeded permutation per
epoch that can start at any batch of it, so a resumed run sees the images a finished one would have.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from mlfix.data.images import DataRoot, load_image
from mlfix.errors import ImageError

if TYPE_CHECKING:
    from mlfix.training.checkpoints import Position, TrainSettings

MIN_BATCH = 2  # Barlow Twins normalises over the batch: one sample has no variance


class TwoViews:
    """Dataset of (index, view0, view1); an unreadable image gives (index, None, reason)."""

    def __init__(self, root: DataRoot, rows: list[dict], image_size: int, flip: bool):
        from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

        self.root, self.rows, self.image_size = root, rows, image_size
        # lightly's small-image recipe: no blur up to 64 px (it wipes out small images).
        # No hue jitter: colour often is the class (red vs. blue signs, flower species), and in PIL
        # it was the costliest of the augmentations.
        common = {"input_size": image_size, "hf_prob": 0.5 if flip else 0.0, "cj_hue": 0.0}
        if image_size <= 64:
            common["gaussian_blur"] = 0.0
        self.transform = BYOLTransform(BYOLView1Transform(**common), BYOLView2Transform(**common))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.root, self.rows[index], target_size=2 * self.image_size)
        except (ImageError, OSError) as err:
            return index, None, str(err)
        side = min(image.size)
        if side > 2 * self.image_size:  # smaller source: cheaper random crops, same result
            scale = 2 * self.image_size / side
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        view0, view1 = self.transform(image)
        return index, view0, view1


class EvalImages:
    """A fixed, seeded subset of the images with the extraction transform, for batch-norm statistics."""

    def __init__(self, root: DataRoot, rows: list[dict], image_size: int, limit: int, seed: int):
        from mlfix.pipeline.backbone import image_transform

        chosen = np.random.default_rng([seed, 7]).permutation(len(rows))[:max(0, limit)]
        self.root, self.rows = root, [rows[i] for i in sorted(chosen)]
        self.image_size, self.transform = image_size, image_transform(image_size)

    def batches(self, batch_size: int):
        """Yield stacked tensors (B, 3, S, S) of the images that decode."""
        import torch

        batch = []
        for row in self.rows:
            try:
                batch.append(self.transform(load_image(self.root, row, target_size=self.image_size)))
            except (ImageError, OSError):
                continue
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if len(batch) >= MIN_BATCH:
            yield torch.stack(batch)


def recalibrate_batchnorm(model, batches, device, channels_last: bool = True) -> int:
    """Re-estimate every batch-norm layer's running mean/var as the exact average over ``batches``.

    Returns the number of images used (0 leaves the statistics untouched).
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
             for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches, not an exponential one
    was_training, used = model.training, 0
    model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for x in batches:
            model(x.to(device, memory_format=fmt))
            used += len(x)
    for m, (mean, var, count, momentum) in zip(layers, saved):
        m.momentum = momentum
        if used == 0:
            m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
    model.train(was_training)
    return used


def collate_pairs(items: list):
    """Stack the readable pairs; return (x0, x1, failures [(index, reason)])."""
    import torch

    good = [item for item in items if item[1] is not None]
    failures = [(item[0], item[2]) for item in items if item[1] is None]
    if not good:
        return None, None, failures
    return (torch.stack([g[1] for g in good]), torch.stack([g[2] for g in good]), failures)


class EpochBatches:
    """Batches of indices: a seeded permutation per epoch, resumable at any batch of it.

    ``drop_last``: every batch has ``batch_size`` images (batch statistics stay comparable); the
    permutation changes every epoch, so no image is left out for good.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // self.batch_size - self.skip

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for b in range(self.skip, self.n // self.batch_size):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def pair_loader(root: DataRoot, rows: list[dict], settings: "TrainSettings", dev, workers: int | None,
                position: "Position"):
    import torch
    from torch.utils.data import DataLoader

    if workers is None:
        cpus = os.cpu_count() or 1
        # CPU training: workers compete with the compute threads, so keep them few
        workers = min(8, cpus) if dev.type == "cuda" else max(1, min(4, cpus // 2))
    batches = EpochBatches(len(rows), settings.batch_size, settings.seed)
    batches.set_epoch(position.epoch, position.batch)
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + position.step)
    return DataLoader(TwoViews(root, rows, settings.image_size, settings.flip), batch_sampler=batches,
                      num_workers=workers, collate_fn=collate_pairs, pin_memory=dev.type == "cuda",
                      persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None,
                      generator=generator)
