"""The Barlow Twins training loop: steps, progress, skipped images and checkpoints of one run.

:func:`mlfix.training.barlow_twins.train_barlow_twins` builds the model, head, optimizer, schedule and
data, then hands them to :class:`TrainingLoop`, which runs the epochs from a :class:`Position`.
Before each checkpoint the backbone's batch-norm statistics are re-estimated on un-augmented images
(:func:`mlfix.training.data.recalibrate_batchnorm`), so that every checkpoint's eval-mode features
are sound.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from mlfix.atomic import write_json_atomic
from mlfix.training.checkpoints import CHECKPOINT_NAME, SUMMARY_NAME, Position, TrainSettings, save_checkpoint
from mlfix.training.data import MIN_BATCH, EvalImages, recalibrate_batchnorm


class TrainingLoop:
    """The steps of one run: each batch's two views through backbone and head, the Barlow Twins loss
    (plus ``vq``'s losses on the cells when the run learns words, :mod:`mlfix.training.vq_head`),
    the optimizer and schedule steps, progress records, and a checkpoint after every epoch and every
    ``checkpoint_minutes`` within one. Unreadable images are reported once and skipped."""

    def __init__(self, settings: TrainSettings, model, head, optimizer, scheduler, dev, channels_last,
                 checkpoint_dir: Path, progress, total_steps: int, steps_per_epoch: int,
                 checkpoint_minutes: float, calibration: EvalImages, say: Callable[[str], None] | None = None,
                 vq=None):
        from lightly.loss import BarlowTwinsLoss

        self.settings, self.model, self.head = settings, model, head
        self.optimizer, self.scheduler, self.dev = optimizer, scheduler, dev
        self.channels_last, self.dir = channels_last, checkpoint_dir
        self.total, self.per_epoch = total_steps, steps_per_epoch
        self.every = checkpoint_minutes * 60
        self.calibration, self.say = calibration, say
        self.vq, self.last_vq = vq, float("nan")  # the VQ head of a run with learned words (vq_head.py)
        self.criterion = BarlowTwinsLoss()
        if progress is None:
            from mlfix.progress import Progress

            progress = Progress("train", log_dir=None)
        self.progress = progress
        self.callback = progress.stage("train")
        self.failed: dict[int, str] = {}
        self.recent: list[tuple[float, int]] = []  # (seconds, images) of the last steps
        self.last_loss = float("nan")
        self._saved_step: int | None = None  # the step of the last checkpoint written or resumed from

    def run(self, loader, position: Position) -> None:
        """Train from ``position`` (advanced in place) to the end of the last epoch.

        Ctrl-C (``KeyboardInterrupt``) saves a checkpoint at the current step, then raises
        :class:`TrainingStopped`, so that the next run resumes from there."""
        self._saved_step = position.step
        try:
            self._epochs(loader, position)
        except KeyboardInterrupt:
            self._save_on_interrupt(position)
            checkpoint = self.dir / CHECKPOINT_NAME if self._saved_step else None
            raise TrainingStopped(position_text(position, self.total, self.settings.epochs), checkpoint) from None

    def _save_on_interrupt(self, position: Position) -> None:
        """Checkpoint the steps done so far; a second Ctrl-C meanwhile is ignored, so the file is whole."""
        if position.step == 0 or self._saved_step == position.step:
            return  # nothing new since the last checkpoint
        if self.say is not None:
            self.say(f"stopping: saving a checkpoint at step {position.step} of {self.total}...")
        previous = _ignore_sigint()
        try:
            self._save(position)
        finally:
            _restore_sigint(previous)

    def _epochs(self, loader, position: Position) -> None:
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

    def _step(self, x0, x1, position: Position) -> float:
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x0 = x0.to(self.dev, non_blocking=True, memory_format=fmt)
        x1 = x1.to(self.dev, non_blocking=True, memory_format=fmt)
        cells0, pooled0 = self.model(x0)
        z0 = self.head(pooled0)
        cells1, pooled1 = self.model(x1)
        z1 = self.head(pooled1)
        loss = self.criterion(z0, z1)
        words = None if self.vq is None else self.vq(cells0, cells1)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if words is None else loss + words).backward()
        value = float(loss.detach())  # the Barlow Twins loss: comparable with runs without words
        if words is not None:
            self.last_vq = float(words.detach())
            value = value if math.isfinite(self.last_vq) else self.last_vq
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

    def _report(self, position: Position, seconds: float, images: int) -> None:
        self.recent = (self.recent + [(seconds, images)])[-20:]
        elapsed = sum(s for s, _ in self.recent)
        rate = sum(i for _, i in self.recent) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - position.step) * elapsed / len(self.recent)
        self.callback(position.step, self.total, step=position.step, epoch=position.epoch + 1,
                      loss=round(self.last_loss, 4), images_per_s=round(rate, 1), eta_s=round(eta, 1),
                      lr=self.optimizer.param_groups[0]["lr"], skipped=len(self.failed),
                      **({} if self.vq is None else {"vq_loss": round(self.last_vq, 4)}))

    def _save(self, position: Position) -> None:
        if not self.settings.freeze_bn:
            recalibrate_batchnorm(self.model, self.calibration.batches(min(self.settings.batch_size, 64)),
                                  self.dev, self.channels_last)
        extra: dict = {}
        if self.vq is not None:  # the words' statistics on the cells an index will see
            from mlfix.training.vq_head import checkpoint_entries

            self.vq.calibrate(self.model, self.calibration.batches(min(self.settings.batch_size, 64)), self.dev,
                              self.channels_last)
            extra = checkpoint_entries(self.vq)
        state = {"backbone": self.model.model.state_dict(), "head": self.head.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "epoch": position.epoch, "batch": position.batch, "step": position.step,
                 "settings": asdict(self.settings), "loss": self.last_loss, **extra}
        state["scheduler"] = {k: v for k, v in state["scheduler"].items() if k != "lr_lambdas"}
        path = self.dir / CHECKPOINT_NAME
        save_checkpoint(state, path)
        summary = {"settings": asdict(self.settings), "epoch": position.epoch, "batch": position.batch,
                   "step": position.step, "total_steps": self.total, "loss": self.last_loss,
                   "skipped_images": len(self.failed), "time": time.time(), "checkpoint": str(path),
                   **({"vq": extra["vq_info"]} if extra else {})}
        try:  # informational only: last.pt is the truth
            write_json_atomic(self.dir / SUMMARY_NAME, summary, default=float)
        except OSError:
            pass
        self._saved_step = position.step
        self.progress.record(stage="checkpoint", epoch=position.epoch, step=position.step,
                             path=str(path), loss=self.last_loss)


class TrainingStopped(KeyboardInterrupt):
    """A run stopped by Ctrl-C after its checkpoint was saved; ``where`` says at which step and
    ``checkpoint`` where (None when no step had finished); running again resumes from there.
    A ``KeyboardInterrupt``, so a caller that does not catch it stops as on any Ctrl-C."""

    def __init__(self, where: str, checkpoint: Path | None):
        saved = (f"checkpoint saved to {checkpoint}" if checkpoint is not None
                 else "no step had finished, so there is nothing to save")
        super().__init__(f"stopped at {where}; {saved}; run again to resume")
        self.where, self.checkpoint = where, checkpoint


def position_text(position: Position, total_steps: int, epochs: int) -> str:
    """Where a run is, for people: ``epoch 2 of 3, step 25 of 63``.

    >>> position_text(Position(epoch=1, batch=4, step=25), 63, 3)
    'epoch 2 of 3, step 25 of 63'
    >>> position_text(Position(epoch=2, batch=0, step=42), 63, 3)  # between epochs: the next one
    'epoch 3 of 3, step 42 of 63'
    """
    epoch = min(position.epoch + 1, epochs)
    return f"epoch {epoch} of {epochs}, step {position.step} of {total_steps}"


def _ignore_sigint():
    """Ignore SIGINT while a checkpoint is written (main thread only); the previous handler, or None."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def _restore_sigint(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGINT, previous)
