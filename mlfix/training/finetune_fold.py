"""One fold of cross-validated fine-tuning: train the tail and head on cached trunk maps, predict.

:class:`FoldTrainer` trains a fresh copy of the tail (the pretrained weights) and a new linear head
on one fold's training rows, then predicts its held-out rows (the mean of the image's and the mirror
image's softmax). Batches and augmentations are a pure function of (seed, fold, epoch, step), so a
run resumed from a checkpoint sees exactly what an uninterrupted one would have.

Schedule: AdamW, the head at ``lr`` and the pretrained tail at ``lr / 3``, a linear warm-up over the
first 5% of the steps then cosine decay to zero (the one-cycle shape of Smith and Topin, 2019, that
needs no tuning per data set); weight decay ``settings.weight_decay``.

Batch norm keeps its pretrained statistics while the tail trains (its scale and shift still learn):
re-estimating them on the data's own small batches moved the features away from what the rest of
the network expects and lost accuracy here (CIFAR-10N 3,000 at 224 px, last stage: AUROC 0.919 with
batch statistics, 0.921 with the pretrained ones; ``mlfix train`` found the same for Barlow Twins),
and frozen statistics are the usual choice when an ImageNet backbone is fine-tuned with small
batches (the detection models' ``FrozenBatchNorm2d`` in torchvision and Detectron).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np

from mlfix.atomic import atomic_path
from mlfix.training.finetune_cache import autocast
from mlfix.training.finetune_model import Classifier, random_shift

CHECKPOINT_EVERY_S = 60.0
WARMUP = 0.05
TAIL_LR_FACTOR = 1 / 3


def softmax_mean(model, views) -> np.ndarray:
    """(B, C) the mean softmax of ``views`` (B, V, *map) over its V views, in eval mode."""
    import torch

    model.eval()
    b, v = views.shape[:2]
    with torch.no_grad():
        both = views.reshape(b * v, *views.shape[2:]).float()
        p = torch.softmax(model(both).float(), dim=1).reshape(b, v, -1).mean(dim=1)
    return p.cpu().numpy().astype(np.float64)


def predict_views(model, views: np.ndarray, positions: np.ndarray, device, batch: int = 256) -> np.ndarray:
    """(len(positions), C): :func:`softmax_mean` over cached views, read in sorted chunks."""
    import torch

    order = np.argsort(positions, kind="stable")
    chunks = np.array_split(positions[order], max(1, math.ceil(len(positions) / batch)))
    found = [softmax_mean(model, torch.from_numpy(np.asarray(views[chunk])).to(device)) for chunk in chunks if len(chunk)]
    out = np.zeros((len(positions), found[0].shape[1] if found else 0))
    if found:
        out[order] = np.concatenate(found)
    return out


def train_keeping_batch_norm_statistics(model) -> None:
    """Training mode, but every batch norm layer with learned statistics normalises with them and
    leaves them as they are (a layer that never saw data, mean 0 and variance 1, still learns them)."""
    import torch
    from torch import nn

    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            fresh = bool(torch.all(module.running_mean == 0)) and bool(torch.all(module.running_var == 1))
            if not fresh:
                module.eval()


def fold_result_path(folder: Path, fold: int) -> Path:
    """Where a finished fold keeps its model and held-out predictions."""
    return Path(folder) / f"fold{fold}.done.pt"


class FoldTrainer:
    """Train one fold (resuming its checkpoint) and predict its held-out rows."""

    def __init__(self, parts, classes: int, settings, fold: int, folds: int, folder: Path, run_key: dict, device):
        self.parts, self.classes, self.settings = parts, classes, settings
        self.fold, self.folds, self.device = fold, folds, device
        self.checkpoint = Path(folder) / f"fold{fold}.pt"
        self.result_path = fold_result_path(folder, fold)
        self.run_key = run_key

    def _model(self):
        import torch

        torch.manual_seed(self.settings.seed * 1000 + self.fold)  # the head's init
        model = Classifier(copy.deepcopy(self.parts.tail), self.parts.dim, self.classes).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    def run(self, views: np.ndarray, train: np.ndarray, codes: np.ndarray, held: np.ndarray, progress):
        """(trained model, (len(held), C) held-out probabilities)."""
        import torch

        model = self._model()
        done = self._load(self.result_path)
        if done is not None:
            model.load_state_dict(done["model"])
            return model, done["held_probs"].numpy()
        self._train(model, views, train, codes, progress)
        held_probs = predict_views(model, views, held, self.device) if len(held) else np.zeros((0, self.classes))
        if not np.isfinite(held_probs).all():  # diverged: saved, its NaN would pass for a prediction
            from mlfix.errors import SettingsError

            raise SettingsError(f"fine-tuning diverged in fold {self.fold + 1}/{self.folds}: its predictions are "
                                f"not numbers (NaN); lower the learning rate (lr, {self.settings.lr:g} now)")
        with atomic_path(self.result_path) as tmp:
            torch.save({"key": self.run_key, "model": model.state_dict(),
                        "held_probs": torch.from_numpy(held_probs)}, tmp)
        self.checkpoint.unlink(missing_ok=True)
        return model, held_probs

    def _load(self, path: Path):
        import torch

        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
        except Exception:  # a torn or foreign file: train again
            return None
        return saved if saved.get("key") == self.run_key else None

    def _train(self, model, views: np.ndarray, train: np.ndarray, codes: np.ndarray, progress) -> None:
        import torch

        s = self.settings
        batch = min(s.batch_size, len(train))
        steps_per_epoch = max(1, len(train) // batch)  # the last partial batch is dropped (batch norm)
        total = steps_per_epoch * s.epochs
        head = list(model.head.parameters())
        optimizer = torch.optim.AdamW([{"params": list(model.tail.parameters()), "lr": s.lr * TAIL_LR_FACTOR},
                                       {"params": head, "lr": s.lr}], weight_decay=s.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _one_cycle(step, total))
        epoch, step = self._resume(model, optimizer, scheduler)
        if (epoch, step) != (0, 0) and progress is not None:
            progress.note(f"resuming fold {self.fold + 1}/{self.folds} from its checkpoint: epoch {epoch + 1}, "
                          f"step {step}")
        scaler = torch.amp.GradScaler("cuda") if self.device.type == "cuda" else None
        report = progress.stage(f"fold {self.fold + 1}/{self.folds}") if progress else None
        last_save, started, seen = time.time(), time.time(), 0
        targets = torch.from_numpy(codes)
        try:
            while epoch < s.epochs:
                order = np.random.default_rng([s.seed, self.fold, epoch]).permutation(train)
                train_keeping_batch_norm_statistics(model)
                while step < steps_per_epoch:
                    rows = np.sort(order[step * batch:(step + 1) * batch])
                    loss = self._step(model, optimizer, scheduler, scaler, views, rows, targets, epoch, step)
                    step, seen = step + 1, seen + len(rows)
                    if report:
                        report(epoch * steps_per_epoch + step, total, epoch=epoch + 1, loss=round(loss, 4),
                               images_per_s=round(seen / max(time.time() - started, 1e-6), 1))
                    if time.time() - last_save > CHECKPOINT_EVERY_S:
                        self._save(model, optimizer, scheduler, epoch, step)
                        last_save = time.time()
                epoch, step = epoch + 1, 0
                self._save(model, optimizer, scheduler, epoch, step)
        except KeyboardInterrupt:
            self._save(model, optimizer, scheduler, epoch, step)
            from mlfix.training.loop import TrainingStopped

            raise TrainingStopped(f"fold {self.fold + 1}/{self.folds}, epoch {epoch + 1}, step {step}",
                                  self.checkpoint) from None

    def _step(self, model, optimizer, scheduler, scaler, views, rows, targets, epoch: int, step: int) -> float:
        import torch

        s = self.settings
        seed = np.random.SeedSequence([s.seed, self.fold, epoch, step]).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(seed))
        pair = torch.from_numpy(np.asarray(views[rows]))
        which = torch.randint(0, pair.shape[1], (len(rows),), generator=generator)
        x = random_shift(pair[torch.arange(len(rows)), which].float(), generator).to(self.device)
        if self.device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = targets[rows].to(self.device)
        with autocast(self.device):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        return float(loss.detach())

    def _save(self, model, optimizer, scheduler, epoch: int, step: int) -> None:
        import torch

        state = {"key": self.run_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step}
        with atomic_path(self.checkpoint) as tmp:
            torch.save(state, tmp)

    def _resume(self, model, optimizer, scheduler) -> tuple[int, int]:
        saved = self._load(self.checkpoint)
        if saved is None:
            return 0, 0
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        return int(saved["epoch"]), int(saved["step"])


def _one_cycle(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to 0 (a factor of the peak lr)."""
    warm = max(1, int(WARMUP * total))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
