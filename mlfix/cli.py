"""The ``mlfix`` command: index, train, scores, serve.

    mlfix index --images PATH [--labels CSV | --coco JSON] --project DIR [--backbone NAME[+NAME...]]
                [--image-size PX] [--tta-flip] [--words K] [--weights auto|random|imagenet|offline|trained|FILE]
    mlfix train --project DIR [--epochs N] [--batch-size B] [--image-size PX] [--init random|imagenet|FILE] [--no-flip]
    mlfix scores --project DIR [-o scores.csv]
    mlfix serve --project DIR [--port PORT] [--address ADDR] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlfix", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_index(commands)
    _add_train(commands)
    _add_scores(commands)
    _add_serve(commands)
    args = parser.parse_args(argv)
    from mlfix.errors import MlfixError

    try:
        return args.run(args) or 0
    except (MlfixError, OSError, ValueError, RuntimeError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mlfix {args.command}: error: {message}", file=sys.stderr)
        return 2


def _add_index(commands) -> None:
    p = commands.add_parser("index", help="scan images and build features, visual words and orderings")
    p.add_argument("--project", required=True, help="project folder (created if missing)")
    p.add_argument("--images", help="folder or .zip of images (required for a new project)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--labels", help="CSV with path,label columns (paths relative to --images)")
    source.add_argument("--coco", help="COCO JSON: every box becomes a crop sample")
    p.add_argument("--padding", type=float, default=0.0, help="COCO crops: context around boxes (fraction)")
    p.add_argument("--backbone", help="timm model name (default resnet18); join names with + for an ensemble, "
                                      "e.g. efficientnet_lite0+efficientnet_lite1+efficientnet_lite2")
    p.add_argument("--weights", help="auto | random | imagenet (internet) | offline | trained | FILE (a path, or "
                                     "file:NAME); default auto: the project's trained checkpoint, else random")
    p.add_argument("--image-size", type=int, help="input size in px; small images are scaled up (default 224)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's features with its mirror image's (twice the extraction)")
    p.add_argument("--words", type=int, help="visual words in the codebook (default 1024)")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, help="image decoding processes")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(run=run_index)


def run_index(args) -> int:
    from mlfix.project import Project

    settings = {"backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
                "tta_flip": args.tta_flip, "words": args.words, "batch_size": args.batch_size}
    settings = {k: v for k, v in settings.items() if v is not None}
    progress = Progress("index", Path(args.project) / "progress")
    if args.images:
        project = Project.create(args.project, images=args.images, labels=args.labels, coco=args.coco,
                                 padding=args.padding, progress=progress.stage("scan"), **settings)
    elif Project.is_project(args.project):
        project = Project.open(args.project)
    else:
        raise ValueError(f"{args.project} is not a project yet: give --images to create it")
    project.index(progress=progress, workers=args.workers, device=args.device, **settings)
    progress.close()
    _print_summary(project)
    return 0


def _print_summary(project) -> None:
    samples, problems = project.samples, project.problems
    usable = int((samples["status"] == "ok").sum())
    print(f"{usable} samples indexed in {len(project.labels)} classes -> {project.dir}")
    if len(problems):
        print(f"{len(problems)} files skipped:")
        with_reason = problems[["path", "stage", "reason"]].fillna("")
        print(with_reason.head(20).to_string(index=False))
        if len(problems) > 20:
            print(f"... and {len(problems) - 20} more (see {project.dir / 'problems.parquet'})")


def _add_train(commands) -> None:
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
    p.set_defaults(run=run_train)


def run_train(args) -> int:
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


def _add_scores(commands) -> None:
    p = commands.add_parser("scores", help="rank suspected label errors")
    p.add_argument("--project", required=True)
    p.add_argument("-o", "--output", help="CSV to write (default: print the top 20)")
    p.set_defaults(run=run_scores)


def run_scores(args) -> int:
    from mlfix.project import Project

    table = Project.open(args.project).scores()
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"{len(table)} rows -> {args.output}")
    else:
        print(table.head(20).to_string(index=False))
    return 0


def _add_serve(commands) -> None:
    p = commands.add_parser("serve", help="start the review app on a project")
    p.add_argument("--project", required=True)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--address", default="localhost", help="0.0.0.0 to share on the network")
    p.add_argument("--db", default=None, metavar="URL",
                   help="decisions database, e.g. postgresql+psycopg://mlfix@dbhost/mlfix (sets MLFIX_DB_URL; "
                        "default: MLFIX_DB_URL, else reviews.db in the project)")
    p.add_argument("--db-retries", type=int, default=5, metavar="N",
                   help="how often to try reaching the database before giving up (default 5)")
    p.set_defaults(run=run_serve)


def run_serve(args) -> int:
    import os
    import subprocess

    from mlfix.project import Project
    from mlfix.review.store import ENV_DB_URL, ReviewStore, StoreUnavailable

    project = Project.open(args.project)
    env = dict(os.environ)
    if args.db:
        env[ENV_DB_URL] = args.db
    if env.get(ENV_DB_URL):
        # Reach the database now, so a wrong URL or a server that is down is said here, once.
        try:
            ReviewStore.connect_with_retry(env[ENV_DB_URL], attempts=max(1, args.db_retries)).close()
        except (StoreUnavailable, ValueError) as error:
            print(f"mlfix serve: {error}", file=sys.stderr)
            return 2
    from mlfix.service.server import APP_ROOT, app_command

    return subprocess.call(app_command(project.dir, args.port, args.address), env=env, cwd=APP_ROOT)


if __name__ == "__main__":
    sys.exit(main())
