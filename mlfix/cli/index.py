"""``mlfix index``: scan images into a project and index it."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlfix.progress import Progress

def add_parser(commands) -> None:
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
    p.set_defaults(run=run)


def run(args) -> int:
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
