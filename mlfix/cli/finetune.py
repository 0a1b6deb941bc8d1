"""``mlfix finetune``: cross-validated fine-tuning for the probe-based scores (mlfix.training.finetune)."""

from __future__ import annotations

import argparse
import sys

from mlfix.cli.train import INTERRUPTED, openmp_waits_for_training


def add_parser(commands) -> None:
    from mlfix.training.finetune import FINETUNE_QUALITIES, FinetuneSettings
    from mlfix.training.finetune_model import TRAIN_CHOICES

    d = FinetuneSettings()
    p = commands.add_parser("finetune", help="K-fold fine-tuning on the labels: out-of-fold probabilities for "
                                             "the scores (finds subtler errors than the frozen probe)")
    p.add_argument("--project", required=True)
    p.add_argument("--quality", choices=list(FINETUNE_QUALITIES),
                   help="a preset (explicit options win): fast = the last stage trained; default = the last two "
                        f"stages, {d.folds} folds; best = the same with EfficientNet-Lite1 (about a fifth slower; "
                        "a project with its own network or checkpoint keeps it)")
    p.add_argument("--backbone", help="the network to fine-tune, one timm name such as efficientnet_lite1 "
                                      "(default: the index's backbone, an ensemble's first member)")
    p.add_argument("--folds", type=int, help=f"cross-validation folds (default {d.folds})")
    p.add_argument("--epochs", type=int, help=f"epochs per fold (default {d.epochs})")
    p.add_argument("--image-size", type=int, help="input size in px (default: the project's index size)")
    p.add_argument("--train", choices=list(TRAIN_CHOICES),
                   help=f"which layers train: the linear head only, the last 1-3 stages, or all (default {d.train!r})")
    p.add_argument("--batch-size", type=int, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, help=f"AdamW peak learning rate of the head (default {d.lr:g})")
    p.add_argument("--max-train", type=int, help="sample-based mode for large sets: cross-validate on this many "
                                                 "labeled images (stratified) and predict the rest")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction,
                   help="train and predict on mirror images too; --no-flip where a mirror image is another class "
                        "(digits, text, signs). Default: on, off when the project's checkpoint was trained with "
                        "--no-flip")
    p.add_argument("--workers", type=int, help="image decoding processes")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(run=run)


def run(args) -> int:
    from mlfix.project import Project
    from mlfix.training.finetune import near_chance, summary_text
    from mlfix.training.loop import TrainingStopped

    project = Project.open(args.project)
    options = {"folds": args.folds, "epochs": args.epochs, "image_size": args.image_size, "train": args.train,
               "batch_size": args.batch_size, "lr": args.lr, "max_train": args.max_train,
               "flip": args.flip, "backbone": args.backbone}
    openmp_waits_for_training(args.image_size or project.image_size)
    try:
        result = project.finetune(device=args.device, workers=args.workers, quality=args.quality, **options)
    except TrainingStopped as stopped:
        print(f"stopped; run again to resume (checkpoint {stopped.checkpoint} at {stopped.where})")
        return INTERRUPTED
    except KeyboardInterrupt:
        print("stopped; what was computed is kept; run again to continue")
        return INTERRUPTED
    print(summary_text(result.summary))
    if near_chance(result.summary):
        print("warning: the fine-tuned network barely beats chance on these labels: the label-based scores are "
              "not to be trusted here (mostly wrong labels, or classes the images cannot tell apart)",
              file=sys.stderr)
    print(f"`mlfix scores --project {args.project}` now ranks with the fine-tuned out-of-fold probabilities")
    return 0

