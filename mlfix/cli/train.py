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
    p.add_argument("--init", help="random | imagenet | offline | FILE (default: offline for a backbone with "
                                  "offline weights (EfficientNet-Lite0/1/2), else random)")
    p.add_argument("--lr", type=float, help=f"AdamW peak learning rate (default {RANDOM_INIT_LR:g} from random "
                                            f"weights, {PRETRAINED_LR:g} from pretrained ones)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips (mirror images are another class)")
    p.add_argument("--head-dim", type=int, help="projection head size (default 2048)")
    p.add_argument("--vq-words", type=vq_words_argument, metavar="K",
                   help="also learn K visual words with the backbone (a VQ-VAE layer on the cells, saved in "
                        "models/last.pt for `codebook = \"vq\"`): 0 = off (default), else a multiple of 8 in [8, 65535]")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming models/last.pt")
    p.add_argument("--workers", type=int)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.set_defaults(run=run)


def run(args) -> int:
    from mlfix.training.barlow_twins import train_barlow_twins
    from mlfix.training.checkpoints import checkpoint_summary
    from mlfix.training.loop import TrainingStopped
    from mlfix.project import Project

    project = Project.open(args.project)
    readable = project.samples[project.samples["status"] == "ok"]
    # A resumed run keeps the settings it was started with unless the user names new ones.
    previous = {} if args.restart else (checkpoint_summary(project.dir / "models") or {}).get("settings", {})
    chosen = {"epochs": args.epochs, "batch_size": args.batch_size, "image_size": args.image_size,
              "init": args.init, "lr": args.lr, "head_dim": args.head_dim,
              "flip": False if args.no_flip else None, "vq_words": args.vq_words}
    settings = {**TRAIN_DEFAULTS, **{k: previous[k] for k in TRAIN_DEFAULTS if k in previous},
                **{k: v for k, v in chosen.items() if v is not None}}
    backbone = project.settings.backbone
    if settings["init"] == "auto":
        settings["init"] = default_init(backbone)
    if settings["lr"] is None:
        settings["lr"] = RANDOM_INIT_LR if settings["init"] == "random" else PRETRAINED_LR
    if not previous:
        print(start_text(backbone, settings["init"]))
    openmp_waits_for_training(int(settings["image_size"]))
    progress = Progress("train", project.dir / "progress")
    try:
        checkpoint = train_barlow_twins(project.root, readable, project.dir / "models", backbone=backbone,
                                        seed=project.settings.seed, workers=args.workers, device=args.device,
                                        progress=progress, resume=not args.restart, say=_say, **settings)
    except TrainingStopped as stopped:
        saved = (f"checkpoint {stopped.checkpoint} at {stopped.where}" if stopped.checkpoint is not None
                 else f"nothing saved: no step had finished, at {stopped.where}")
        print(f"stopped; run again to resume ({saved})")
        return INTERRUPTED
    except KeyboardInterrupt:
        print("stopped before training started; nothing saved; run again to start")
        return INTERRUPTED
    print(f"checkpoint: {checkpoint}")
    if settings["init"] != "random":
        print(MEASURED_HELP)
    print(index_advice(args.project, str(project.settings.weights)))
    return 0


def vq_words_argument(text: str) -> int:
    """``--vq-words``: a whole number that :func:`~mlfix.training.checkpoints.check_vq_words` accepts
    (argparse turns the error into exit code 2 and a usage line)."""
    import argparse

    from mlfix.training.checkpoints import check_vq_words

    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--vq-words takes a whole number (0 = off, e.g. 1024), got {text!r}") from None
    try:
        return check_vq_words(k)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("vq_words", "--vq-words", 1)) from None


def _say(text: str) -> None:
    print(text, flush=True)


def default_init(backbone: str) -> str:
    """The weights a run starts from when none are named: the offline ImageNet weights when the
    backbone has them (continued training on the project's own images), else random."""
    from mlfix.settings import OFFLINE_BACKBONES

    return "offline" if backbone in OFFLINE_BACKBONES else "random"


def start_text(backbone: str, init: str) -> str:
    """The line a new run prints: which weights it starts from, and why.

    >>> start_text("efficientnet_lite0", "offline")
    'training efficientnet_lite0 from its offline ImageNet weights (continued self-supervised training on your images)'
    """
    if init == "offline":
        return f"training {backbone} from its offline ImageNet weights (continued self-supervised training on your images)"
    if init == "random":
        return (f"training {backbone} from random weights (no offline weights ship for it; --init imagenet "
                "starts from timm's hub weights, which needs the internet)")
    return f"training {backbone} from {init}"


def index_advice(project: str, weights: str) -> str:
    """What to run after training, for the project's ``weights`` setting.

    >>> index_advice("p", "auto")
    'the next `mlfix index --project p` indexes with it (weights = auto picks the trained checkpoint); to keep the frozen offline backbone instead: `mlfix index --project p --weights offline`'
    >>> index_advice("p", "offline")
    "this project indexes with weights = 'offline', which ignores the checkpoint: run `mlfix index --project p --weights trained` to index with it"
    """
    if weights == "auto":
        return (f"the next `mlfix index --project {project}` indexes with it (weights = auto picks the trained "
                f"checkpoint); to keep the frozen offline backbone instead: "
                f"`mlfix index --project {project} --weights offline`")
    return (f"this project indexes with weights = {weights!r}, which ignores the checkpoint: run "
            f"`mlfix index --project {project} --weights trained` to index with it")


TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 128, "image_size": 64, "init": "auto", "lr": None,
                  "head_dim": 2048, "flip": True, "vq_words": 0}
RANDOM_INIT_LR, PRETRAINED_LR = 1e-3, 1e-4
INTERRUPTED = 130  # the shell's code for a run stopped by SIGINT
# What continued training from the offline weights did on the shared sets (README, "Figures";
# python -m bench.feature_quality --continued).
MEASURED_HELP = ("measured on the shared test sets: 2 epochs of continued training helped a little (CIFAR-10N, "
                 "2,000 images: kNN accuracy 0.534 -> 0.576, label-error AUROC 0.852 -> 0.868; flowers17: "
                 "0.865 -> 0.882, detection unchanged; README, \"Figures\"). Compare the scores with the frozen "
                 "backbone's (`mlfix index --weights offline`) before relying on them.")
