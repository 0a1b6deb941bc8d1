"""Cross-validated fine-tuning against the frozen probe: label-error detection per CPU minute.

    python -m bench.finetune                        # CIFAR-10N first 10,000 (128 px, last stage, 4 epochs, 3 folds)
    python -m bench.finetune --quick                # 300 CIFAR-10N images at 64 px, 1 epoch: a smoke test
    python -m bench.finetune --only gtsrb35 --n 5000 --size 96
    python -m bench.finetune --n 2000 --train last last2 --epochs 2 4 --folds 3 5 --size 96 128   # a sweep
    python -m bench.finetune --max-train 5000       # the sample-based mode: cross-validate on 5,000
    python -m bench.finetune --only cifar10n --size 224 --ensemble mirror   # with the ensemble (3 passes)
    python -m bench.finetune --only cifar10n --size 224 --train last2 --backbone efficientnet_lite1

Setup: the data as bench/detect.py (CIFAR-10N: ``label`` = random_label1, truth = clean_label;
GTSRB: a seeded subset with 5% of labels flipped, seed 0). Each setting fine-tunes the offline
``--backbone`` (EfficientNet-Lite0 unless told; :func:`mlfix.training.finetune.finetune`) and scores
with the same registry as ``mlfix scores``: the kNN vote on the frozen Lite0 pooled features (as the
default index at the setting's size makes them; taken from a Lite0 fine-tuning's trunk cache when
there is one, see :func:`frozen_from_trunk`, else extracted) and the
probe-based checks on (a) the frozen linear probe (the baseline), (b) the fine-tuned out-of-fold
probabilities, (c) their blend as ``mlfix scores`` makes it (weighted by fit to the given labels:
:func:`mlfix.scoring.blend.blend`; the weight is emitted; the combined queue's vote discounted by
it) and their plain mean; with ``--ensemble`` also (d) the offline three-backbone ensemble's probe
(bench/detect.py's best setting) and (e) its blend with the fine-tuned probabilities, both scored
as on an ensemble index (the vote on the ensemble's features); and (f) the kNN vote on the fold
models' own embeddings (:func:`fold_model_vote`), alone and in the combined queue. Figures per setting and variant: AUROC, AP, precision at 1/2/5%, the
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
# Imported now, not when the figures are made an hour later: an mlfix edited meanwhile cannot half-load.
from mlfix.scoring.registry import compute_scores

BENCH = "finetune"
OFFLINE_BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
REVIEWED = 2000


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the DataLoader's decoding workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def queue_figures(x, labels, truth, probabilities=None, finetuned=None) -> dict:
    """The queues' detection figures with the given probe ``probabilities`` (None: the frozen probe),
    or, given the ``finetuned`` probabilities instead, exactly as ``mlfix scores`` makes them after
    ``mlfix finetune`` (the blend, and the combined queue's vote discounted by its weight)."""
    table = compute_scores(x, labels, np.arange(len(labels)), seed=0, probabilities=probabilities,
                           finetuned=finetuned)
    is_error = labels != truth
    return {"combined" if column == "score" else column.removeprefix("score_"): figures_of(is_error, table[column])
            for column in ("score", "score_cleanlab", "score_loss")}


def figures_of(is_error: np.ndarray, score) -> dict:
    """A queue's detection figures (:func:`bench.detect.detection_metrics`) and the errors in its first 2,000."""
    score = np.asarray(score, dtype=np.float64)
    figures = detection_metrics(is_error, score)
    order = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
    figures["errors_in_first_2000"] = int(is_error[order[:REVIEWED]].sum())
    return figures


def fold_model_vote(folder: Path, backbone: str, train: str, labels, fold: np.ndarray) -> np.ndarray:
    """(N,) the kNN vote of each cross-validated image on the embeddings of the fold model that never
    saw it (that model's pooled features of every cached image, image and mirror image averaged;
    neighbours among all images); NaN where no fold held the image out. What the fold models'
    embeddings would add to the vote, which mlfix runs on the frozen features (issue #13)."""
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.scoring.neighbours import knn_vote
    from mlfix.training.finetune_fold import fold_result_path
    from mlfix.training.finetune_model import TRAIN_CHOICES, Classifier, split_backbone

    views, n = np.load(folder / "trunk.npy", mmap_mode="r"), len(labels)
    out = np.full(n, np.nan)
    for k in range(int(fold.max()) + 1):
        parts = split_backbone(create_backbone(backbone, weights="offline"), TRAIN_CHOICES[train])
        saved = torch.load(fold_result_path(folder, k), map_location="cpu", weights_only=True)
        model = Classifier(parts.tail, parts.dim, saved["model"]["head.weight"].shape[0])
        model.load_state_dict(saved["model"])
        model.eval()
        embedded = np.zeros((n, parts.dim), np.float32)
        with torch.no_grad():
            for start in range(0, n, 256):
                chunk = torch.from_numpy(np.asarray(views[start:start + 256], dtype=np.float32))
                b, v = chunk.shape[:2]
                pooled = model.tail(chunk.reshape(b * v, *chunk.shape[2:])).flatten(1)
                embedded[start:start + b] = pooled.reshape(b, v, -1).mean(1).numpy()
        held = fold == k
        out[held] = knn_vote(embedded, labels, np.arange(n))["score"].to_numpy()[held]
    return out


def fold_model_vote_figures(folder: Path, backbone: str, train: str, x, labels, truth, tuned, fold) -> dict:
    """The figures of :func:`fold_model_vote` alone, and of the combined queue with it in place of the
    frozen vote (the blend's loss 2, the vote 1)."""
    from mlfix.scoring.combine import combined
    from mlfix.scoring.contract import score_frame

    ids = np.arange(len(labels))
    vote = fold_model_vote(folder, backbone, train, labels, fold)
    loss = compute_scores(x, labels, ids, seed=0, finetuned=tuned, methods=["loss"])
    queue = combined([score_frame(ids, loss["score_loss"].to_numpy(), loss["suggested_loss"].to_numpy()),
                      score_frame(ids, vote, loss["suggested_loss"].to_numpy())], [2, 1])
    is_error = labels != truth
    return {"knn": figures_of(is_error, vote), "combined": figures_of(is_error, queue["score"])}


FROZEN = "efficientnet_lite0"  # the frozen probe's backbone: the default index's


def frozen_from_trunk(views: np.ndarray, train: str) -> np.ndarray:
    """(N, V, D) the frozen backbone's pooled features of each cached trunk map (V views: image, mirror
    image): the pretrained tail on the map. The same network on the same pixels as an index at that
    size, up to the float16 rounding of the cached maps, for the cost of the tail alone."""
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.training.finetune_model import TRAIN_CHOICES, split_backbone

    tail = split_backbone(create_backbone(FROZEN, weights="offline"), TRAIN_CHOICES[train]).tail.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(views), 256):
            chunk = torch.from_numpy(np.asarray(views[start:start + 256], dtype=np.float32))
            b, v = chunk.shape[:2]
            out.append(tail(chunk.reshape(b * v, *chunk.shape[2:])).reshape(b, v, -1).numpy())
    return np.concatenate(out).astype(np.float32)


def cache_folder(dataset: str, n: int, size: int, train: str, flip: bool, max_train: int | None,
                 backbone: str = FROZEN) -> Path:
    """Where a setting's fine-tuning lives (its trunk cache is reused by every rerun of the setting)."""
    return RESULTS_DIR / "finetune" / (f"{dataset}_{n}_{size}_{train}{'' if flip else '_noflip'}"
                                       f"{f'_max{max_train}' if max_train else ''}"
                                       f"{'' if backbone == FROZEN else '_' + backbone}")


def frozen_features(dataset: str, table, size: int, train: str, flip: bool, folder: Path, max_train, backbone: str):
    """(N, D) the frozen Lite0 pooled features of every image: from a finished Lite0 trunk cache that
    covers them all (this run's, or the same setting's Lite0 run's), else extracted."""
    import json

    lite0 = folder if backbone == FROZEN else cache_folder(dataset, len(table), size, train, flip, None)
    if max_train is None or backbone != FROZEN:
        try:
            done = json.loads((lite0 / "trunk.json").read_text()).get("done")
            views = np.load(lite0 / "trunk.npy", mmap_mode="r")
        except (OSError, ValueError):
            done = views = None
        if views is not None and len(views) == len(table) == done:  # a killed fill leaves zero rows
            return frozen_from_trunk(views[:, :1], train)[:, 0]  # the image's view, as an index
    return features(dataset, table, size, False, FROZEN)[0]


def run_setting(dataset: str, table, labels, truth, size: int, train: str, epochs: int, folds: int,
                max_train: int | None, quick: bool, base_setup: dict, flip: bool = True,
                ensemble: tuple | None = None, backbone: str = FROZEN) -> None:
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.progress import Progress
    from mlfix.scoring.contract import encode_labels
    from mlfix.scoring.probe import OutOfFold, aligned_out_of_fold, out_of_fold_probabilities
    from mlfix.scoring.blend import blend_weight
    from mlfix.training.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(folds=folds, epochs=epochs, image_size=size, train=train, max_train=max_train,
                                flip=flip)
    samples = table.assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    cache_dir = cache_folder(dataset, len(table), size, train, flip, max_train, backbone)
    trunk_cached = (cache_dir / "trunk.json").exists() and not quick  # else this run pays the trunk passes
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = cache_dir if not quick else Path(scratch)
        result = finetune(DataRoot(SHARED_DATA / dataset / "images.zip"), samples, labels,
                          lambda: create_backbone(backbone, weights="offline"), folder, settings,
                          progress=Progress("finetune", None, terminal=False))  # for the time estimate
        cpu_min, wall_min = (cpu_seconds() - cpu0) / 60, (time.perf_counter() - wall0) / 60
        x = frozen_features(dataset, table, size, train, flip, folder, max_train, backbone)
    frozen = out_of_fold_probabilities(x, labels, seed=0)
    tuned = aligned_out_of_fold(result.probs, result.classes, result.fold, labels)
    setup = {**base_setup, "backbone": backbone,
             "frozen": f"offline Lite0 pooled at {size} px, 5-fold probe (the kNN vote uses them too)",
             "finetune": {k: v for k, v in result.summary["settings"].items()},
             "oof_accuracy_vs_given": result.summary["oof_accuracy"],
             "oof_accuracy_vs_truth": accuracy_vs_truth(tuned.probs, tuned.classes, truth),
             "frozen_probe_accuracy_vs_truth": accuracy_vs_truth(frozen.probs, frozen.classes, truth)}
    n = len(labels)
    emit(BENCH, f"{dataset}.finetune.cpu_minutes", round(cpu_min, 2), "min", n, wall_minutes=round(wall_min, 2),
         estimate_minutes=round(result.summary.get("estimate_s", 0) / 60, 2),  # said before it started
         trunk_cache_reused=trunk_cached, **setup)
    codes = encode_labels(labels, n).codes
    setup["blend_weight"] = blend_weight(frozen, tuned, codes)  # the fine-tuned share (what mlfix scores uses)
    # (name, the index's features, probe probabilities or the fine-tuned ones to blend as mlfix scores does)
    variants = [("frozen", x, {"probabilities": frozen}), ("finetuned", x, {"probabilities": tuned}),
                ("blend", x, {"finetuned": tuned}),
                ("mean", x, {"probabilities": OutOfFold((tuned.probs + frozen.probs) / 2, tuned.classes, tuned.fold)})]
    if ensemble is not None:  # an ensemble index's queue, alone and after fine-tuning (its vote on its features)
        ensemble_oof, ensemble_setup, ensemble_x = ensemble
        setup = {**setup, **ensemble_setup, "ensemble_blend_weight": blend_weight(ensemble_oof, tuned, codes)}
        variants += [("ensemble", ensemble_x, {"probabilities": ensemble_oof}),
                     ("ensemble_blend", ensemble_x, {"finetuned": tuned})]
    for variant, features_x, probabilities in variants:
        for method, figures in queue_figures(features_x, labels, truth, **probabilities).items():
            emit(BENCH, f"{dataset}.{variant}.{method}", figures, "figures", n, **setup)
    if max_train is None and not quick:  # the trunk cache holds every image, in order
        cpu0 = cpu_seconds()
        found = fold_model_vote_figures(cache_dir, backbone, train, x, labels, truth, tuned, result.fold)
        for method, figures in found.items():
            emit(BENCH, f"{dataset}.fold_model_vote.{method}", figures, "figures", n,
                 vote_cpu_minutes=round((cpu_seconds() - cpu0) / 60, 2), **setup)


def accuracy_vs_truth(probs: np.ndarray, classes, truth: np.ndarray) -> float:
    """The share of rows whose most probable class (columns follow ``classes``) is the true label."""
    return round(float((np.array(classes, dtype=object)[probs.argmax(1)] == truth).mean()), 4)


ENSEMBLE = "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"
ENSEMBLE_SIZE = 260  # as bench/detect.py measures the ensemble (the ``best`` preset's size)
ENSEMBLE_VIEWS = {"both": (False, True), "plain": (False,), "mirror": (True,)}  # images whose features are averaged


def ensemble_probe(dataset: str, table, labels, truth, views: str = "both") -> tuple:
    """The offline ensemble's out-of-fold probe on the features of the ``views``: ``both`` averages each
    image's with its mirror image's (bench/detect.py's best setting, 6 passes), ``plain`` or ``mirror``
    one of them (3 passes; a mirror photo is as likely as the photo). Features from bench/detect.py's
    cache, or extracted. Returns (the probe, its setup lines, the features)."""
    from mlfix.scoring.probe import out_of_fold_probabilities

    parts = [features(dataset, table, ENSEMBLE_SIZE, flip, ENSEMBLE) for flip in ENSEMBLE_VIEWS[views]]
    x = np.mean([p[0] for p in parts], axis=0)
    oof = out_of_fold_probabilities(x, labels, seed=0)
    return oof, {"ensemble": f"{ENSEMBLE} at {ENSEMBLE_SIZE} px, features of the {views} image(s), 5-fold probe",
                 "ensemble_extraction_s": round(sum(p[1] for p in parts), 1),
                 "ensemble_accuracy_vs_truth": accuracy_vs_truth(oof.probs, oof.classes, truth)}, x


def run_set(dataset: str, n: int, sizes, trains, epochs_list, folds_list, max_train, quick: bool,
            flip: bool = True, ensemble_views: str | None = None, backbone: str = FROZEN) -> None:
    table = subset(dataset, n)
    labels, truth, noise = labels_and_truth(dataset, table)
    base = {"data": f"{dataset} {n} ({noise})", "errors": int((labels != truth).sum())}
    ensemble = ensemble_probe(dataset, table, labels, truth, ensemble_views) if ensemble_views else None
    for size, train, epochs, folds in itertools.product(sizes, trains, epochs_list, folds_list):
        run_setting(dataset, table, labels, truth, size, train, epochs, folds, max_train, quick, base, flip, ensemble,
                    backbone)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--only", choices=["cifar10n", "gtsrb35"], help="one data set (default: both)")
    p.add_argument("--n", type=int, help="images per set (default 10,000 CIFAR-10N, 5,000 GTSRB)")
    p.add_argument("--size", type=int, nargs="+", default=[128])
    p.add_argument("--train", nargs="+", default=["last"])
    p.add_argument("--epochs", type=int, nargs="+", default=[4])
    p.add_argument("--folds", type=int, nargs="+", default=[3])
    p.add_argument("--max-train", type=int)
    p.add_argument("--backbone", default=FROZEN, choices=OFFLINE_BACKBONES,
                   help="the offline backbone to fine-tune (the frozen probe stays Lite0, the default index's)")
    p.add_argument("--no-flip", action="store_true", help="no mirror images (signs: a mirror is another class)")
    p.add_argument("--ensemble", nargs="?", const="both", choices=list(ENSEMBLE_VIEWS),
                   help=f"also the offline ensemble's probe at {ENSEMBLE_SIZE} px, alone and blended: on the image "
                        "and its mirror image averaged (both, the default), or one of them")
    args = p.parse_args(argv)
    if not (SHARED_DATA / "cifar10n").exists():
        print(f"shared data not found at {SHARED_DATA}; nothing to measure")
        return 0
    sets = [args.only] if args.only else ["cifar10n", "gtsrb35"]
    for dataset in sets:
        n = args.n or (300 if args.quick else 10000 if dataset == "cifar10n" else 5000)
        sizes, epochs = ([64], [1]) if args.quick else (args.size, args.epochs)
        run_set(dataset, n, sizes, args.train, epochs, args.folds, args.max_train, args.quick, not args.no_flip,
                args.ensemble, args.backbone)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
