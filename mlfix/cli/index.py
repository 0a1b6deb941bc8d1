"""``mlfix index``: scan images into a project and index it."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlfix.progress import Progress
from mlfix.settings import AUTO, CODEBOOKS, ENGINES, QUALITIES

def add_parser(commands) -> None:
    p = commands.add_parser("index", help="scan images and build features, visual words and orderings")
    p.add_argument("--project", required=True, help="project folder (created if missing)")
    p.add_argument("--images", help="folder or .zip of images, or an object-storage prefix pyarrow reads "
                   "(s3://bucket/photos, gs://, hdfs://; credentials from the environment) (required for a new project)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--labels", help="CSV with path,label columns (paths relative to --images)")
    source.add_argument("--coco", help="COCO JSON: every box becomes a crop sample")
    p.add_argument("--padding", type=float, default=0.0, help="COCO crops: context around boxes (fraction)")
    p.add_argument("--quality", choices=QUALITIES,
                   help="a preset (explicit options win): default = efficientnet_lite0 at a size chosen from the "
                        "images, 1 pass per image; fast = the same, smaller; best = the three offline backbones "
                        "efficientnet_lite0+1+2 at 260 px with the mirror image (6 passes). Prints a time "
                        "estimate first")
    p.add_argument("--backbone", help="timm model name (default efficientnet_lite0; resnet18 and any timm name "
                                      "work too); join names with + for an ensemble, "
                                      "e.g. efficientnet_lite0+efficientnet_lite1+efficientnet_lite2")
    p.add_argument("--weights", help="auto | random | imagenet (internet) | offline | trained | FILE (a path, or "
                                     "file:NAME); default auto: the project's trained checkpoint for this "
                                     "backbone, else the offline ImageNet weights (EfficientNet-Lite0/1/2), "
                                     "else random")
    p.add_argument("--image-size", type=_image_size,
                   help="input size in px, or auto (the default: 224, EfficientNet-Lite0's own size, which "
                        "found the most errors even on 32 px images); small images are scaled up")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average each image's features with its mirror image's (twice the extraction)")
    p.add_argument("--words", type=int, help="visual words in the codebook (default 1024)")
    # no argparse choices: a wrong value gets the settings' own message (and exit status 2)
    p.add_argument("--codebook", metavar="|".join(CODEBOOKS),
                   help="how cells become visual words: kmeans (faiss KMeans, the default) or vq (a VQ-VAE "
                        "codebook learned on the cells; the one `mlfix train --vq-words` trained with the "
                        "backbone when the weights carry it); kept in mlfix.toml")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, help="image decoding processes")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--engine", choices=ENGINES,
                   help="where the features are extracted: local (this process, the default) or ray (Ray Data "
                        "on a Ray cluster: the same project, the work spread over its nodes); kept in mlfix.toml")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="the Ray cluster for --engine ray: auto (the one `ray start --head` started), HOST:6379 "
                        "or ray://HOST:10001; default: join or start a Ray on this machine")
    p.add_argument("--embeddings", metavar="FILE",
                   help="your own model's embeddings, used instead of the backbone's pooled vectors by the kNN vote "
                        "and the duplicates (the backbone still makes the visual words and orders): .npz with "
                        "'embeddings' (N x D) and 'sample_id', or .npy (N x D) with --embedding-ids, or .npy "
                        "whose rows follow the project's samples")
    p.add_argument("--embedding-ids", metavar="FILE",
                   help="the sample_id of each row of --embeddings: a CSV with a sample_id column, a .npy of "
                        "strings, or one id a line")
    p.add_argument("--scan-only", action="store_true",
                   help="create (or rescan) the project and stop before indexing (the app's Dataset page)")
    p.set_defaults(run=run)


def _image_size(text: str) -> int | str:
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'auto', got {text!r}") from None


def run(args) -> int:
    from mlfix.project import Project

    settings = {"backbone": args.backbone, "weights": args.weights, "image_size": args.image_size,
                "tta_flip": args.tta_flip, "words": args.words, "codebook": getattr(args, "codebook", None),
                "batch_size": args.batch_size,
                "engine": getattr(args, "engine", None), "ray_address": getattr(args, "ray_address", None)}
    settings = {k: v for k, v in settings.items() if v is not None}
    _check_files(getattr(args, "embeddings", None), getattr(args, "embedding_ids", None))
    progress = Progress("index", Path(args.project) / "progress")
    if args.images:
        project = Project.create(args.project, images=args.images, labels=args.labels, coco=args.coco,
                                 padding=args.padding, progress=progress.stage("scan"), **settings)
    elif Project.is_project(args.project):
        project = Project.open(args.project)
    else:
        raise ValueError(f"{args.project} is not a project yet: give --images to create it")
    if getattr(args, "scan_only", False):
        progress.close()
        _print_summary(project)
        _add_embeddings(project, args)
        return 0
    project.index(progress=progress, workers=args.workers, device=args.device,
                  quality=getattr(args, "quality", None), announce=print, **settings)
    _add_embeddings(project, args)
    scores = _scores_after_index(project, progress)
    progress.close()
    _print_summary(project)
    _print_scores(project, scores)
    return 0


def _add_embeddings(project, args) -> None:
    """``--embeddings``: store the user's vectors (after the index: its readable samples need a row)."""
    if getattr(args, "embeddings", None):
        project.add_embeddings(args.embeddings, sample_ids=args.embedding_ids)
        print(f"your embeddings are stored ({project.dir}/features/user_embeddings.npy): the scores use them "
              "instead of the pooled vectors")


def _check_files(*paths: str | None) -> None:
    """A missing --embeddings / --embedding-ids file fails before the indexing, not after it."""
    from mlfix.errors import PredictionsError

    for path in paths:
        if path and not Path(path).expanduser().is_file():
            raise PredictionsError(f"{path} does not exist")


def _print_summary(project) -> None:
    samples, problems = project.samples, project.problems
    usable = int((samples["status"] == "ok").sum())
    classes = f"in {len(project.labels)} classes" if project.labels else "(unlabeled)"
    print(f"{usable} samples indexed {classes} -> {project.dir}")
    from mlfix.data.scan import NOTE_STAGES

    notes = problems[problems["stage"].isin(NOTE_STAGES)]
    if len(notes):
        print(f"{len(notes)} COCO box{'es' if len(notes) != 1 else ''} reached past the image edge: clipped to "
              "the image "
              f"(stage 'clipped' in {project.dir / 'problems.parquet'})")
    problems = problems[~problems["stage"].isin(NOTE_STAGES)]
    if len(problems):
        print(f"{len(problems)} files skipped:")
        with_reason = problems[["path", "stage", "reason"]].fillna("")
        print(with_reason.head(20).to_string(index=False))
        if len(problems) > 20:
            print(f"... and {len(problems) - 20} more (see {project.dir / 'problems.parquet'})")


def _scores_after_index(project, progress: Progress):
    """Indexing ends with the scores (stage ``scores``) when the labels name two classes or more:
    the table; else the line that says why not; None when nothing could be read."""
    from mlfix.errors import NotEnoughLabelsError

    if not project.is_indexed or not project.readable().any():
        return None
    reason = project.scores_unavailable()
    if reason is not None:
        return reason
    stage = progress.stage("scores")
    stage(0, 1)
    try:
        table = project.scores()
    except NotEnoughLabelsError as err:  # the labelled images are the unreadable ones
        return str(err)
    stage(1, 1)
    return table


def _print_scores(project, scores) -> None:
    from mlfix.cli.scores import print_top

    if isinstance(scores, str):
        print(f"scores: {scores}")
    elif scores is not None:
        print_top(scores, 5, project.dir)
