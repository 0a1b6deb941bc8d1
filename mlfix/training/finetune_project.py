"""Fine-tuning a project (``mlfix finetune``, :meth:`mlfix.project.Project.finetune`): which network
it starts from, where the run lives, and the saved result for the scores.

Which network: the ``backbone`` option (one timm name, e.g. ``efficientnet_lite1``), else the index's
backbone, else, for an ensemble, its first member. It starts from the weights the project's
``weights`` setting gives it (:func:`finetune_weights`): the project's Barlow Twins checkpoint when
it was trained for this network, else the offline ImageNet weights. From a checkpoint trained without
mirror images (``mlfix train --no-flip``) it fine-tunes without them too, unless told
(:func:`checkpoint_flip`). The run lives in ``<project>/finetune/``:
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

from mlfix.errors import SettingsError
from mlfix.settings import OFFLINE_BACKBONES, IndexSettings, Weights
from mlfix.training.finetune import FinetuneResult, FinetuneSettings, finetune

FOLDER = "finetune"


def finetune_project(project_dir: str | os.PathLike, settings: IndexSettings, root, samples: pd.DataFrame,
                     labels, trusted: np.ndarray, image_size: int, progress=None, device: str | None = None,
                     workers: int | None = None, options: dict[str, Any] | None = None,
                     quality: str | None = None) -> FinetuneResult:
    """Fine-tune the project's backbone on ``labels`` (the readable ``samples``' current labels);
    ``options``: :class:`~mlfix.training.finetune.FinetuneSettings` fields and ``backbone`` (the
    network to fine-tune, see the module), given explicitly (None: not given) over the ``quality``
    preset (:func:`preset_options`)."""
    from mlfix.pipeline.backbone import create_backbone

    chosen = preset_options(settings, project_dir, quality, **(options or {}))
    given = chosen.pop("backbone", None)
    name = finetuned_backbone(settings, given)
    choice = finetune_weights(settings, project_dir, name)
    inherited = {} if "flip" in chosen else checkpoint_flip(choice, project_dir)
    tune = FinetuneSettings(**{"image_size": image_size, "seed": settings.seed, **inherited, **chosen})
    if progress is not None:
        if inherited:
            progress.note("the project's checkpoint was trained without mirror images: fine-tuning without them too")
        if given is None and name != settings.backbone:  # the index is an ensemble: one member trains
            progress.note(f"the backbone is an ensemble: fine-tuning its first member, {name}")
        progress.note(f"fine-tuning {name} from {choice.text}: {tune.folds} folds x {tune.epochs} epochs at "
                      f"{tune.image_size} px, training the {tune.train!r} layers")
    key = {"backbone": name, "weights": choice.identity}
    return finetune(root, samples, labels, lambda: create_backbone(name, choice.weights, settings.cell_stride),
                    Path(project_dir) / FOLDER, tune, trusted=trusted, progress=progress, device=device,
                    workers=workers, cache_key=key)


def preset_options(settings: IndexSettings, project_dir: str | os.PathLike, quality: str | None,
                   **options) -> dict[str, Any]:
    """The fine-tuning options of the ``quality`` preset with the explicit ``options`` (not None) on
    top (:func:`~mlfix.training.finetune.quality_options`). A preset's network applies only where the
    index starts from the offline ImageNet weights: a project's own network, or its Barlow Twins
    checkpoint, is what it fine-tunes unless ``backbone`` is given."""
    from mlfix.training.checkpoints import choose_weights
    from mlfix.training.finetune import quality_options

    chosen = quality_options(quality, **options)
    if options.get("backbone") is None and "backbone" in chosen:
        try:
            shipped = choose_weights(settings, project_dir).weights == "offline"
        except SettingsError:  # weights the index cannot use either: said when it runs
            shipped = False
        if not shipped:
            chosen.pop("backbone")
    return chosen


def finetuned_backbone(settings: IndexSettings, backbone: str | None = None) -> str:
    """The one network fine-tuning trains: ``backbone`` when given, else the index's (an ensemble's
    first member).

    >>> finetuned_backbone(IndexSettings(backbone="efficientnet_lite0+efficientnet_lite2"))
    'efficientnet_lite0'
    >>> finetuned_backbone(IndexSettings(), "efficientnet_lite1")
    'efficientnet_lite1'
    """
    from mlfix.pipeline.backbone import ENSEMBLE_SEPARATOR, check_backbone

    if backbone is None:
        return settings.backbone.split(ENSEMBLE_SEPARATOR)[0]
    if not isinstance(backbone, str) or not backbone.strip() or ENSEMBLE_SEPARATOR in backbone:
        raise SettingsError(f"fine-tuning trains one network: give one backbone name such as efficientnet_lite1, "
                            f"got {backbone!r}")
    check_backbone(backbone.strip())
    return backbone.strip()


def finetune_weights(settings: IndexSettings, project_dir: str | os.PathLike, name: str):
    """The :class:`~mlfix.training.checkpoints.WeightsChoice` fine-tuning ``name`` starts from: the
    index's when ``name`` is the index's backbone; for another network (an ensemble's member, or the
    ``backbone`` option) the project's ``weights`` read for it, where a file or ``trained`` means
    ``auto`` (a checkpoint fits the network it was trained for only)."""
    from dataclasses import replace

    from mlfix.training.checkpoints import choose_weights

    if name == settings.backbone:
        return choose_weights(settings, project_dir)
    kind = settings.weights.kind
    if kind == "offline" and name not in OFFLINE_BACKBONES:
        raise SettingsError(f"the project's weights are 'offline', and no offline weights ship for {name}: "
                            f"fine-tune one of {', '.join(OFFLINE_BACKBONES)}, or set weights = imagenet "
                            "(needs the internet)")
    keep = kind in ("random", "imagenet", "offline")
    choice = choose_weights(replace(settings, backbone=name, weights=settings.weights if keep else Weights("auto")),
                            project_dir)
    if choice.weights == "random" and kind != "random":  # auto found nothing for it: a wasted run
        raise SettingsError(f"no weights for {name} here (no offline weights ship for it and the project has no "
                            f"checkpoint trained for it); fine-tuning from random weights learns little: "
                            f"fine-tune one of {', '.join(OFFLINE_BACKBONES)}, or set weights = imagenet "
                            "(needs the internet)")
    return choice


def checkpoint_flip(choice, project_dir: str | os.PathLike) -> dict[str, bool]:
    """``{"flip": False}`` when fine-tuning starts from the project's Barlow Twins checkpoint and that was
    trained without mirror images (``mlfix train --no-flip``: digits, signs, text, where a mirror image
    is another class or none); else ``{}``, the fine-tuning default."""
    from mlfix.training.checkpoints import checkpoint_summary, trained_weights_path

    trained = trained_weights_path(project_dir)
    if trained is None or choice.weights != str(trained.resolve()):
        return {}
    trained_with = (checkpoint_summary(trained.parent) or {}).get("settings") or {}
    return {"flip": False} if trained_with.get("flip") is False else {}


def mirror_by_default(settings: IndexSettings, project_dir: str | os.PathLike, name: str) -> bool:
    """Whether fine-tuning ``name`` uses mirror images when not told (:func:`checkpoint_flip`); True
    when its weights cannot be chosen (the run says why)."""
    try:
        return not checkpoint_flip(finetune_weights(settings, project_dir, name), project_dir)
    except SettingsError:
        return True


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
