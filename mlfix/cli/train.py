"""``mlfix train``: Barlow Twins on the project's own images."""

from __future__ import annotations

import os

from mlfix.progress import Progress

SMALL_TRAINING_CROP = 96


def openmp_waits_for_training(image_size: int) -> None:
    """Let OpenMP threads sleep rather than spin while they wait, for small crops; before torch loads.

    On the CPU the model runs on every core while a DataLoader worker decodes and augments images on
    the same cores. At small crops that data work is a large share, and spinning OpenMP threads steal
    its time: the Barlow Twins loop ran faster with sleeping threads. At 224 px the model dominates
    and spinning was faster, so the default is kept there. Measured with ``python -m bench.train``
    (the README's figures table). A value the user set is kept.
    """
    if image_size <= SMALL_TRAINING_CROP:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def add_parser(commands) -> None:
    p = commands.add_parser("train", help="self-supervised Barlow Twins training of the project's backbone")
    p.add_argument("--project", required=True)
    p.add_argument("--epochs", type=int, help="total epochs (default 10); more than a finished run extends it")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--image-size", type=int, help="training crop size in px (default 64)")
    p.add_argument("--init", help="random | imagenet | offline | FILE (default random)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (mirror images are another class)")
    p.add_argument("--head-dim", type=int, help="projection head size (default 2048)")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming models/last.pt")
    p.add_argument("--workers", type=int)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(run=run)


def run(args) -> int:
    from mlfix.training.barlow_twins import train_barlow_twins
    from mlfix.training.checkpoints import checkpoint_summary
    from mlfix.project import Project

    project = Project.open(args.project)
    readable = project.samples[project.samples["status"] == "ok"]
    # A resumed run keeps the settings it was started with unless the user names new ones.
    previous = {} if args.restart else (checkpoint_summary(project.dir / "models") or {}).get("settings", {})
    chosen = {"epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
              "init": args.init, "head_dim": args.head_dim, "flip": False if args.no_flip else None}
    settings = {**TRAIN_DEFAULTS, **{k: previous[k] for k in TRAIN_DEFAULTS if k in previous},
                **{k: v for k, v in chosen.items() if v is not None}}
    openmp_waits_for_training(int(settings["image_size"]))
    progress = Progress("train", project.dir / "progress")
    checkpoint = train_barlow_twins(project.root, readable, project.dir / "models",
                                    backbone=project.settings.backbone, seed=project.settings.seed,
                                    workers=args.workers, device=args.device, progress=progress,
                                    resume=not args.restart, **settings)
    print(f"checkpoint: {checkpoint}\nrun `mlfix index --project {args.project}` to index with it")
    return 0


TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128, "image_size": 64, "init": "random", "head_dim": 2048,
                  "flip": True}
