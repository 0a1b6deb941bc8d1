"""Fine-tuning a project (``mlfix finetune``, :meth:`mlfix.project.Project.finetune`): which network
it starts from, where the run lives, and the saved result for the scores.

The run starts from the weights the project's index used (:func:`~mlfix.training.checkpoints.choose_weights`:
the project's Barlow Twins checkpoint when it was trained for this backbone, else the offline ImageNet
weights); an ensemble backbone fine-tunes its first member. It lives in ``<project>/finetune/``:
the trunk cache, one checkpoint per unfinished fold, and ``result.npz`` (the out-of-fold
probabilities), which :meth:`~mlfix.project.Project.scores` uses for the probe-based checks from then
on, on every image it covers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlfix.settings import IndexSettings
from mlfix.training.finetune import FinetuneResult, FinetuneSettings, finetune

FOLDER = "finetune"


def finetune_project(project_dir: str | os.PathLike, settings: IndexSettings, root, samples: pd.DataFrame,
                     labels, trusted: np.ndarray, image_size: int, progress=None, device: str | None = None,
                     workers: int | None = None, options: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune the project's backbone on ``labels`` (the readable ``samples``' current labels);
    ``options``: :class:`~mlfix.training.finetune.FinetuneSettings` fields (None: the default)."""
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.training.checkpoints import choose_weights

    chosen = {k: v for k, v in (options or {}).items() if v is not None}
    tune = FinetuneSettings(**{"image_size": image_size, "seed": settings.seed, **chosen})
    choice = choose_weights(settings, project_dir)
    first = settings.backbone.split("+")[0]
    if first != settings.backbone and progress is not None:
        progress.note(f"the backbone is an ensemble: fine-tuning its first member, {first}")
    if progress is not None:
        progress.note(f"fine-tuning {first} from {choice.text}: {tune.folds} folds x {tune.epochs} epochs at "
                      f"{tune.image_size} px, training the {tune.train!r} layers")
    weights = choice.weights if choice.weights in ("offline", "random", "imagenet") or first == settings.backbone \
        else "offline"
    key = {"backbone": first, "weights": choice.identity}
    return finetune(root, samples, labels, lambda: create_backbone(first, weights, settings.cell_stride),
                    Path(project_dir) / FOLDER, tune, trusted=trusted, progress=progress, device=device,
                    workers=workers, cache_key=key)


def finetuned_result(project_dir: str | os.PathLike, sample_ids: np.ndarray) -> FinetuneResult | None:
    """The saved fine-tuning result, rows reordered to ``sample_ids``; None when there is none or it
    does not cover every one of them (a rescan added images since: rerun ``mlfix finetune``)."""
    result = FinetuneResult.load(Path(project_dir) / FOLDER)
    if result is None:
        return None
    where = pd.Index(result.sample_ids).get_indexer(pd.Index(sample_ids, dtype=object))
    if len(where) == 0 or (where < 0).any():
        return None
    return FinetuneResult(result.sample_ids[where], result.probs[where], result.classes, result.fold[where],
                          result.summary)
