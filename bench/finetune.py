"""Cross-validated fine-tuning against the frozen probe: label-error detection per CPU minute.

    python -m bench.finetune                        # CIFAR-10N first 10,000 (128 px, last stage, 4 epochs, 3 folds)
    python -m bench.finetune --quick                # 300 CIFAR-10N images at 64 px, 1 epoch: a smoke test
    python -m bench.finetune --only gtsrb35 --n 5000 --size 96
    python -m bench.finetune --n 2000 --train last last2 --epochs 2 4 --folds 3 5 --size 96 128   # a sweep
    python -m bench.finetune --max-train 5000       # the sample-based mode: cross-validate on 5,000

Setup: the data as bench/detect.py (CIFAR-10N: ``label`` = random_label1, truth = clean_label;
GTSRB: a seeded subset with 5% of labels flipped, seed 0). Each setting fine-tunes the offline
EfficientNet-Lite0 (:func:`mlfix.training.finetune.finetune`) and scores with the same registry as
``mlfix scores``: the kNN vote on the frozen pooled features (as an index makes them) and the
probe-based checks on (a) the frozen linear probe (the baseline), (b) the fine-tuned out-of-fold
probabilities, (c) their mean. Figures per setting and variant: AUROC, AP, precision at 1/2/5%, the
errors in the first 2,000 of the queue (a reviewer's static pass), and CPU minutes of the
fine-tuning (this process and its decoding workers; the trunk cache is counted once per setting, as
a user's first run pays it).
"""

from __future__ import annotations

import itertools
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, SHARED_DATA, emit, parser
from bench.defaults import features, labels_and_truth, subset
from bench.detect import detection_metrics

BENCH = "finetune"
REVIEWED = 2000


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the DataLoader's decoding workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def queue_figures(x, labels, truth, probabilities) -> dict:
    """The combined queue's detection figures with the given probe probabilities (None: the frozen probe)."""
    from mlfix.scoring.registry import compute_scores

    table = compute_scores(x, labels, np.arange(len(labels)), seed=0, probabilities=probabilities)
    is_error = labels != truth
    out = {}
    for column in ("score", "score_cleanlab", "score_loss"):
        figures = detection_metrics(is_error, table[column].to_numpy())
        order = np.argsort(-np.nan_to_num(table[column].to_numpy(), nan=-np.inf), kind="stable")
        figures["errors_in_first_2000"] = int(is_error[order[:REVIEWED]].sum())
        out["combined" if column == "score" else column.removeprefix("score_")] = figures
    return out


def run_setting(dataset: str, table, labels, truth, x, frozen, size: int, train: str, epochs: int, folds: int,
                max_train: int | None, quick: bool, base_setup: dict, flip: bool = True) -> None:
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.scoring.probe import OutOfFold, aligned_out_of_fold
    from mlfix.training.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(folds=folds, epochs=epochs, image_size=size, train=train, max_train=max_train,
                                flip=flip)
    samples = table.assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    cache_dir = RESULTS_DIR / "finetune" / (f"{dataset}_{len(table)}_{size}_{train}{'' if flip else '_noflip'}"
                                            f"{f'_max{max_train}' if max_train else ''}")
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = cache_dir if not quick else Path(scratch)
        result = finetune(DataRoot(SHARED_DATA / dataset / "images.zip"), samples, labels,
                          lambda: create_backbone("efficientnet_lite0", weights="offline"), folder, settings)
    cpu_min, wall_min = (cpu_seconds() - cpu0) / 60, (time.perf_counter() - wall0) / 60
    tuned = aligned_out_of_fold(result.probs, result.classes, result.fold, labels)
    blend = OutOfFold((tuned.probs + frozen.probs) / 2, tuned.classes, tuned.fold)
    setup = {**base_setup, "finetune": {k: v for k, v in result.summary["settings"].items()},
             "oof_accuracy_vs_given": result.summary["oof_accuracy"],
             "oof_accuracy_vs_truth": round(float((np.array(tuned.classes, dtype=object)[
                 tuned.probs.argmax(1)] == truth).mean()), 4)}
    n = len(labels)
    emit(BENCH, f"{dataset}.finetune.cpu_minutes", round(cpu_min, 2), "min", n, wall_minutes=round(wall_min, 2),
         resumed_from_cache=(cache_dir / "trunk.json").exists() and not quick, **setup)
    for variant, probabilities in (("finetuned", tuned), ("blend", blend)):
        for method, figures in queue_figures(x, labels, truth, probabilities).items():
            emit(BENCH, f"{dataset}.{variant}.{method}", figures, "figures", n, **setup)


FROZEN_SIZE = {"cifar10n": 224, "gtsrb35": 96}  # as bench/detect.py measures the frozen backbone


def run_set(dataset: str, n: int, sizes, trains, epochs_list, folds_list, max_train, quick: bool,
            flip: bool = True) -> None:
    from mlfix.scoring.probe import out_of_fold_probabilities

    table = subset(dataset, n)
    labels, truth, noise = labels_and_truth(dataset, table)
    frozen_size = 64 if quick else FROZEN_SIZE[dataset]
    x, _ = features(dataset, table, frozen_size, False, "efficientnet_lite0")
    frozen = out_of_fold_probabilities(x, labels, seed=0)
    base = {"data": f"{dataset} {n} ({noise})", "errors": int((labels != truth).sum()),
            "frozen": f"offline Lite0 pooled at {frozen_size} px, 5-fold probe (the kNN vote uses them too)"}
    for method, figures in queue_figures(x, labels, truth, frozen).items():
        emit(BENCH, f"{dataset}.frozen.{method}", figures, "figures", n, **base)
    for size, train, epochs, folds in itertools.product(sizes, trains, epochs_list, folds_list):
        run_setting(dataset, table, labels, truth, x, frozen, size, train, epochs, folds, max_train, quick, base,
                    flip)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--only", choices=["cifar10n", "gtsrb35"], help="one data set (default: both)")
    p.add_argument("--n", type=int, help="images per set (default 10,000 CIFAR-10N, 5,000 GTSRB)")
    p.add_argument("--size", type=int, nargs="+", default=[128])
    p.add_argument("--train", nargs="+", default=["last"])
    p.add_argument("--epochs", type=int, nargs="+", default=[4])
    p.add_argument("--folds", type=int, nargs="+", default=[3])
    p.add_argument("--max-train", type=int)
    p.add_argument("--no-flip", action="store_true", help="no mirror images (signs: a mirror is another class)")
    args = p.parse_args(argv)
    if not (SHARED_DATA / "cifar10n").exists():
        print(f"shared data not found at {SHARED_DATA}; nothing to measure")
        return 0
    sets = [args.only] if args.only else ["cifar10n", "gtsrb35"]
    for dataset in sets:
        n = args.n or (300 if args.quick else 10000 if dataset == "cifar10n" else 5000)
        sizes, epochs = ([64], [1]) if args.quick else (args.size, args.epochs)
        run_set(dataset, n, sizes, args.train, epochs, args.folds, args.max_train, args.quick, not args.no_flip)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
