"""Cross-validated fine-tuning: out-of-fold class probabilities from a network trained on the data.

A confident-learning tool is only as good as its out-of-fold probabilities (Northcutt, Jiang and
Chuang, "Confident Learning", JAIR 2021, found the CIFAR-10 and MNIST test-set errors with
cross-validated CNNs; Kuan and Mueller, "Model-Agnostic Label Quality Scoring", 2022: a fine-tuned
ResNet-18 reaches AUROC 0.977 on CIFAR-10N where a frozen probe is far behind). :func:`finetune`
trains the project's backbone on the given labels in K stratified folds; each fold's model predicts
the images it never saw, and the probabilities replace the frozen probe's in the probe-based checks
(``loss``, ``cleanlab``, ``combined``, the confusion view): see :meth:`mlfix.project.Project.scores`.

What is trained, and why it is cheap enough for a CPU (:mod:`mlfix.training.finetune_model`): the
early stages are frozen and run once per image and mirror image (:mod:`mlfix.training.finetune_cache`);
the last stage(s) and a linear head train on the cached maps with random shifts and flips, AdamW,
a warm-up then cosine schedule (no tuning), mixed precision and channels_last on CUDA. Trusted
(reviewed) samples are in every training fold and get the fold models' mean prediction; so do
unlabeled samples and, in the sample-based mode (``max_train``), the images outside the stratified
training subset, which no fold model saw. Samples of classes too small to split are in every
training fold too, so no model that never saw them can judge them: they get no prediction (NaN),
nor do unreadable images, and the scores keep the frozen probe's for them
(:func:`mlfix.scoring.blend.blend`).

Resuming: each fold saves a checkpoint every epoch, every minute and on Ctrl-C; a finished fold
saves its predictions. A rerun with the same labels and settings continues the unfinished fold from
its checkpoint (with the same batches and augmentations, so the result equals an uninterrupted
run's); other labels (reviews since) or settings start a new run, reusing the trunk cache.

Example (one short epoch per fold on 16 of the demo's digits at 32 px):
    >>> import tempfile, pathlib
    >>> from mlfix.demo import digits_samples
    >>> from mlfix.pipeline.backbone import create_backbone
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> root, samples = digits_samples(folder / "digits", limit=16)
    >>> result = finetune(root, samples, samples["label"], lambda: create_backbone("resnet18"),
    ...                   folder / "finetune", workers=0,
    ...                   settings=FinetuneSettings(folds=2, epochs=1, image_size=32, batch_size=4))
    >>> result.probs.shape[0] == len(samples), result.summary["oof_accuracy"] is not None
    (True, True)
"""

from __future__ import annotations

import hashlib
import math
import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mlfix.atomic import atomic_path, write_json_atomic
from mlfix.data.folds import fold_splits
from mlfix.data.labels import encode_labels
from mlfix.errors import SettingsError
from mlfix.training.finetune_cache import TrunkCache, remove_folder_files, stream_trunk
from mlfix.training.finetune_estimate import FinetunePlan, estimate_finetune
from mlfix.training.finetune_fold import FoldTrainer, fold_result_path, predict_views, softmax_mean
from mlfix.training.finetune_model import TRAIN_CHOICES, split_backbone

RESULT_FILE = "result.npz"
# Images per timed batch of the estimate: small batches ran faster per image at 224 px and slower at
# 96 px than training's 128 (CIFAR-10N 10,000, 224 px, last2, 3 folds: 42 min taken, 22 min estimated
# on 8 images, 38 on 64); 64 costs about 15 s on 2 CPU cores at 224 px.
ESTIMATE_BATCH = 64
RECIPE = 2  # how a fold trains (2: batch norm at its pretrained statistics); a run of another recipe starts over


@dataclass(frozen=True)
class FinetuneSettings:
    """How to fine-tune (``mlfix finetune`` options). ``image_size`` None: the caller's choice (the
    project's index size); ``max_train``: cross-validate on a stratified subset of that many labeled
    images and predict the rest with the fold models (the mode for large sets); ``flip``: mirror images
    as augmentation and in the prediction (off where a mirror image is another class: digits, signs)."""

    folds: int = 3
    epochs: int = 4
    image_size: int | None = None
    train: str = "last2"
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    max_train: int | None = None
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        def need(ok: bool, text: str) -> None:
            if not ok:
                raise SettingsError(text)

        def number(value) -> bool:
            return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)

        need(_whole_number(self.folds) and 2 <= self.folds <= 20, f"folds must be 2 to 20, got {self.folds!r}")
        need(_whole_number(self.epochs) and 1 <= self.epochs <= 200, f"epochs must be 1 to 200, got {self.epochs!r}")
        need(self.image_size is None or (_whole_number(self.image_size) and 32 <= self.image_size <= 1024),
             f"image size must be 32 to 1024 px, got {self.image_size!r}")
        need(self.train in TRAIN_CHOICES, f"train must be one of {list(TRAIN_CHOICES)}, got {self.train!r}")
        need(_whole_number(self.batch_size) and 2 <= self.batch_size <= 65536,
             f"batch size must be 2 to 65536, got {self.batch_size!r}")
        # Above 1, AdamW diverges: the loss turns NaN and every prediction with it.
        need(number(self.lr) and 0 < self.lr <= 1,
             f"lr must be above 0 and at most 1 (the default is {FinetuneSettings.lr:g}), got {self.lr!r}")
        need(number(self.weight_decay) and 0 <= self.weight_decay <= 10,
             f"weight decay must be 0 to 10 (the default is {FinetuneSettings.weight_decay:g}), "
             f"got {self.weight_decay!r}")
        need(self.max_train is None or (_whole_number(self.max_train) and self.max_train >= 2 * self.folds),
             f"max_train must be a whole number, at least twice the folds ({2 * self.folds}), "
             f"got {self.max_train!r}")
        need(isinstance(self.flip, (bool, np.bool_)), f"flip must be True or False, got {self.flip!r}")
        need(_whole_number(self.seed), f"seed must be a whole number, got {self.seed!r}")


def _whole_number(value) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# What ``--quality`` means for fine-tuning; the default preset is FinetuneSettings' defaults, and
# ``backbone`` (the network) is read by :mod:`mlfix.training.finetune_project`, which applies a
# preset's network only to projects whose index starts from the offline ImageNet weights. Measured on
# CIFAR-10N's first 10,000 at 224 px with 4 epochs, loss AUROC of the blend ``mlfix scores`` uses
# (README, "Figures"; python -m bench.finetune): Lite0's last stage trained (``fast``), 0.940; its
# last two (``default``), 0.959 for about 80 CPU minutes with the trunk cache; the same on 5 folds,
# 0.960 for about 101; Lite1's last two on 3 folds (``best``), 0.962 for about 98.
BEST_BACKBONE = "efficientnet_lite1"
FINETUNE_QUALITIES: dict[str, dict] = {"fast": {"train": "last"}, "default": {},
                                       "best": {"backbone": BEST_BACKBONE}}


def quality_options(quality: str | None, **options) -> dict:
    """The :class:`FinetuneSettings` fields of a ``quality`` preset (None: ``default``), with the
    ``options`` given explicitly (not None) on top.

    >>> quality_options("fast"), quality_options("best", folds=4, epochs=None)
    ({'train': 'last'}, {'backbone': 'efficientnet_lite1', 'folds': 4})
    """
    quality = quality or "default"
    if quality not in FINETUNE_QUALITIES:
        raise SettingsError(f"quality must be one of {', '.join(FINETUNE_QUALITIES)}, got {quality!r}")
    known = ["backbone", *(f.name for f in fields(FinetuneSettings))]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise SettingsError(f"unknown fine-tuning option(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    return {**FINETUNE_QUALITIES[quality], **{k: v for k, v in options.items() if v is not None}}


@dataclass
class FinetuneResult:
    """``probs`` (N, C) float32 rows sum to 1, columns follow ``classes``; ``fold`` (N,) the fold a
    sample was held out in, -1 when no fold held it out (its row: the fold models' mean; NaN when
    there is no prediction that never saw it, or its image could not be read);
    ``summary``: settings, timings and the out-of-fold accuracy against the given labels."""

    sample_ids: np.ndarray
    probs: np.ndarray
    classes: list
    fold: np.ndarray
    summary: dict

    def save(self, folder: Path) -> None:
        with atomic_path(Path(folder) / RESULT_FILE) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, sample_ids=self.sample_ids.astype(str), probs=self.probs, fold=self.fold,
                         classes=np.asarray([str(c) for c in self.classes]))
        write_json_atomic(Path(folder) / "result.json", self.summary)

    @classmethod
    def load(cls, folder: str | Path) -> "FinetuneResult | None":
        """The saved result in ``folder``, or None when there is none (or it is unreadable)."""
        try:
            with np.load(Path(folder) / RESULT_FILE, allow_pickle=False) as data:
                parts = {k: data[k] for k in ("sample_ids", "probs", "fold", "classes")}
            summary = json.loads((Path(folder) / "result.json").read_text())
        except (OSError, ValueError, KeyError):
            return None
        return cls(parts["sample_ids"].astype(object), parts["probs"], parts["classes"].tolist(),
                   parts["fold"], summary)


def summary_text(summary: dict) -> str:
    """One line of a result's summary: accuracy against the given labels (and chance), time, device.

    >>> summary_text({"oof_accuracy": 0.81, "chance_accuracy": 0.1, "cross_validated": 900,
    ...               "wall_s": 75.0, "cpu_s": 140.0, "device": "cpu"})
    'out-of-fold accuracy 81.0% against the given labels (chance 10.0%) on 900 images; 1.2 min (2.3 CPU min) on cpu'
    """
    acc, chance = summary.get("oof_accuracy"), summary.get("chance_accuracy")
    text = (f"out-of-fold accuracy {acc:.1%} against the given labels (chance {chance:.1%}) on "
            f"{summary.get('cross_validated')} images" if acc is not None else "no image was cross-validated")
    network = (summary.get("start") or {}).get("backbone")
    failed = len(summary.get("failed") or {})
    unread = (f"; {failed} image(s) could not be read (listed in finetune/result.json): they keep the frozen "
              "probe's scores" if failed else "")
    return (f"{text}; {summary.get('wall_s', 0) / 60:.1f} min ({summary.get('cpu_s', 0) / 60:.1f} CPU min) "
            f"on {summary.get('device')}{f', {network} fine-tuned' if network else ''}{unread}")


def near_chance(summary: dict, margin: float = 0.1) -> bool:
    """Whether the out-of-fold accuracy is within ``margin`` of always guessing the largest class: the
    network learned little from these labels, and label-based scores are not to be trusted.

    >>> near_chance({"oof_accuracy": 0.55, "chance_accuracy": 0.5}), near_chance({"oof_accuracy": 0.9, "chance_accuracy": 0.5})
    (True, False)
    """
    acc, chance = summary.get("oof_accuracy"), summary.get("chance_accuracy")
    return acc is not None and chance is not None and acc < chance + margin


def _digest(values) -> str:
    return hashlib.sha256("\x1f".join(map(str, values)).encode()).hexdigest()[:16]


def labels_digest(codes: np.ndarray) -> str:
    """What identifies the label codes a run trained on (``run.json``'s ``labels``): a change starts a
    new run."""
    return _digest(codes)


def training_plan(codes: np.ndarray, trusted: np.ndarray, folds: int, max_train: int | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(cross-validated rows, rows in every training fold, notes). Trusted rows, and rows of classes
    with fewer untrusted samples than folds, are trained on by every fold; ``max_train`` keeps a
    stratified random subset of the rest."""
    candidates = np.flatnonzero((codes >= 0) & ~trusted)
    counts = np.bincount(codes[candidates], minlength=max(codes.max() + 1, 1)) if len(candidates) else np.zeros(1)
    small = np.flatnonzero((counts > 0) & (counts < folds))
    notes = []
    if len(small):
        notes.append(f"{len(small)} class(es) have fewer labeled images than the {folds} folds; their "
                     f"{int(counts[small].sum())} images are trained on by every fold, not cross-validated")
    always = np.flatnonzero(trusted & (codes >= 0))
    in_small = np.isin(codes[candidates], small)
    always, candidates = np.union1d(always, candidates[in_small]), candidates[~in_small]
    if max_train is not None and len(candidates) > max_train:
        from sklearn.model_selection import train_test_split

        kinds = len(np.unique(codes[candidates]))
        if max_train < kinds:
            raise SettingsError(f"max_train ({max_train}) must be at least the number of classes to "
                                f"cross-validate ({kinds}): every class needs an image in the sample")

        candidates = np.sort(train_test_split(candidates, train_size=max_train, random_state=seed,
                                              stratify=codes[candidates])[0])
        notes.append(f"sample-based mode: cross-validating on {max_train} labeled images; the fold models "
                     "predict the others")
    return candidates, always, notes


def finetune(root, samples: pd.DataFrame, labels: Sequence, backbone_factory: Callable[[], object],
             folder: str | Path, settings: FinetuneSettings = FinetuneSettings(),
             trusted: np.ndarray | None = None, progress=None, device: str | None = None,
             workers: int | None = None, cache_key: dict | None = None) -> FinetuneResult:
    """K-fold fine-tuning of ``backbone_factory()`` on ``labels``; the out-of-fold probabilities.

    Args:
        root, samples: the data root and the rows to use (``path`` and ``box_*`` columns, ``sample_id``).
        labels: (N,) labels (None/NaN: unlabeled); trusted: (N,) bool, reviewed samples.
        backbone_factory: makes the starting network (:func:`~mlfix.pipeline.backbone.create_backbone`).
        folder: where the run keeps its cache, checkpoints and result (a rerun resumes there).
        progress: a :class:`~mlfix.progress.Progress` (stages ``finetune cache``, ``fold k/K``).
        cache_key: what identifies the starting weights and images (the project's index key).
    """
    from mlfix.pipeline.backbone import resolve_device

    folder, started, cpu0 = Path(folder), time.time(), time.process_time()
    folder.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    coded = encode_labels(labels, n)
    codes, classes = coded.codes, [str(c) for c in coded.classes]
    trusted = np.zeros(n, dtype=bool) if trusted is None else np.asarray(trusted, dtype=bool)
    if len(classes) < 2:
        raise SettingsError(f"fine-tuning needs labels of at least two classes, found {classes or 'none'}")
    image_size = settings.image_size or 224
    if workers is not None and not (_whole_number(workers) and workers >= 0):
        raise SettingsError(f"workers must be 0 or more (0: decode the images in this process), got {workers!r}")
    cv_rows, always, notes = training_plan(codes, trusted, settings.folds, settings.max_train, settings.seed)
    for text in notes:
        _note(progress, text)
    dev = resolve_device(device)
    backbone = backbone_factory()
    parts = split_backbone(backbone, TRAIN_CHOICES[settings.train])
    parts.trunk.to(dev)
    channels_last = dev.type == "cuda"
    cached = np.arange(n) if settings.max_train is None else np.union1d(cv_rows, always)
    ids = samples["sample_id"].to_numpy()
    trunk_key = {"weights": cache_key or {}, "image_size": image_size, "train": settings.train,
                 "flip": settings.flip, "rows": _digest(ids[cached])}
    run_key = {"trunk": trunk_key, "labels": labels_digest(codes), "trusted": _digest(np.flatnonzero(trusted)),
               "recipe": RECIPE, **asdict(settings)}
    _forget_other_runs(folder, run_key)
    cache = TrunkCache(folder, trunk_key)
    guess = None
    if progress is not None:  # said before the long work starts
        plan = _plan(cache.missing(len(cached)) + n - len(cached), settings, len(cv_rows), len(always), folder)
        guess = estimate_finetune(parts, len(classes), image_size, plan, dev, channels_last,
                                  batch=min(settings.batch_size, ESTIMATE_BATCH))
        _note(progress, str(guess))
    cache.fill(parts.trunk, root, samples.iloc[cached], image_size, dev, workers=workers,
               channels_last=channels_last, progress=progress.stage("finetune cache") if progress else None,
               flip=settings.flip)
    failed = np.zeros(len(cached), dtype=bool)
    failed[list(cache.failed)] = True
    cv_pos, always_pos = (_readable_positions(cached, rows, failed) for rows in (cv_rows, always))
    cached_codes = codes[cached]
    splits = fold_splits(cached_codes[cv_pos], settings.folds, settings.seed) if len(cv_pos) else []
    probs = np.zeros((len(cached), len(classes)), dtype=np.float64)
    fold = np.full(n, -1, dtype=np.int64)
    models = []
    for k, (train, held) in enumerate(splits):
        trainer = FoldTrainer(parts, len(classes), settings, k, len(splits), folder, run_key, dev)
        model, held_probs = trainer.run(cache.views, np.union1d(cv_pos[train], always_pos), cached_codes,
                                        cv_pos[held], progress)
        probs[cv_pos[held]] = held_probs
        fold[cached[cv_pos[held]]] = k
        models.append(model)
    # No out-of-fold prediction: images every fold trained on (untrusted ones: a class smaller than the
    # folds; their loss would hide their errors) and unreadable ones. NaN: the scores take the frozen
    # probe's there (mlfix.scoring.blend).
    no_prediction = np.union1d(always_pos[~trusted[cached[always_pos]]], np.flatnonzero(failed))
    probs[no_prediction] = np.nan
    # cached, held out by no fold and not left without: the fold models' mean
    others = np.setdiff1d(np.flatnonzero(fold[cached] < 0), no_prediction)
    if len(others):
        probs[others] = np.mean([predict_views(m, cache.views, others, dev) for m in models], axis=0)
    full = np.full((n, len(classes)), 1.0 / len(classes))
    full[cached] = probs
    rest = np.setdiff1d(np.arange(n), cached)
    unreadable = {int(cached[k]): reason for k, reason in cache.failed.items()}
    if len(rest):
        unreadable.update(_predict_rest(parts.trunk, models, root, samples, rest, full, image_size, dev, workers,
                                        channels_last, settings.flip))
    summary = _summary(settings, image_size, codes, full, fold, cv_rows, notes, unreadable, started, cpu0,
                       dev, ids, cached)
    summary["start"] = cache_key or {}  # the network and weights it started from
    if guess is not None:
        summary["estimate_s"] = round(guess.seconds, 1)
    result = FinetuneResult(ids.astype(object), full.astype(np.float32), classes, fold, summary)
    result.save(folder)
    return result


def _plan(images_to_cache: int, settings: FinetuneSettings, cross_validated: int, always: int,
          folder: Path) -> FinetunePlan:
    """What the run still has to do: the trunk passes, and the folds without a finished result."""
    left = [k for k in range(settings.folds) if not fold_result_path(folder, k).exists()] if cross_validated else []
    held = cross_validated / settings.folds
    return FinetunePlan(images_to_cache=images_to_cache, views=2 if settings.flip else 1,
                        train_images=[round(cross_validated - held + always)] * len(left), epochs=settings.epochs,
                        predict_images=round(held * len(left)))


def _readable_positions(cached: np.ndarray, rows: np.ndarray, failed: np.ndarray) -> np.ndarray:
    """The positions in the (sorted) ``cached`` rows of ``rows``, leaving out images that failed to decode."""
    where = np.searchsorted(cached, rows).astype(np.int64)
    return where[~failed[where]] if len(where) else where


def _predict_rest(trunk, models, root, samples, rest, out, image_size, dev, workers, channels_last,
                  flip: bool) -> dict[int, str]:
    """The fold models' mean prediction for images outside the cache (streamed through the trunk), NaN
    for the unreadable ones; returns {row: why it could not be read}."""
    unreadable = {}
    for rows, views, errors in stream_trunk(trunk, root, samples.iloc[rest], image_size, dev,
                                            workers=workers, channels_last=channels_last, flip=flip):
        out[rest[rows]] = np.mean([softmax_mean(m, views.to(dev)) for m in models], axis=0)
        found = {int(rest[r]): error for r, error in zip(np.asarray(rows), errors) if error}
        out[list(found)] = np.nan
        unreadable.update(found)
    return unreadable


def _forget_other_runs(folder: Path, run_key: dict) -> None:
    """A new run (other labels or settings) drops the old run's checkpoints and result, not the cache."""
    key_path = folder / "run.json"
    try:
        same = json.loads(key_path.read_text()) == json.loads(json.dumps(run_key))
    except (OSError, ValueError):
        same = False
    if not same:
        remove_folder_files(folder, keep=lambda p: p.name in ("trunk.npy", "trunk.json"))
        write_json_atomic(key_path, run_key)


def _note(progress, text: str) -> None:
    if progress is not None:
        progress.note(text)


def _summary(settings, image_size, codes, probs, fold, cv_rows, notes, failed, started, cpu0, dev, ids,
             cached) -> dict:
    held = cv_rows[fold[cv_rows] >= 0]
    accuracy = float((probs[held].argmax(1) == codes[held]).mean()) if len(held) else None
    chance = float(np.bincount(codes[held]).max() / len(held)) if len(held) else None
    return {"settings": {**asdict(settings), "image_size": image_size}, "device": dev.type,
            "images": int(len(ids)), "cross_validated": int(len(held)), "cached": int(len(cached)),
            "oof_accuracy": accuracy, "chance_accuracy": chance, "notes": notes,
            "failed": {str(ids[row]): reason for row, reason in failed.items()},
            "wall_s": round(time.time() - started, 1), "cpu_s": round(time.process_time() - cpu0, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
