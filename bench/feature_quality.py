"""Feature quality: kNN accuracy of pooled features against the clean labels.

    python -m bench.feature_quality [--quick] [--epochs-flowers N] [--epochs-cifar N] [--threads T]
    python -m bench.feature_quality --continued [--only cifar10n] [--epochs N] [--lr LR ...] [--train-size PX]

For each data set (flowers17: 1,360 photos, 17 classes; cifar10n: the first 10k images, 10 classes,
``clean_label``) and each backbone:

- ``random``: resnet18, random init (seed 0);
- ``barlow_twins``: resnet18 trained from random init with :func:`mlfix.training.barlow_twins.train_barlow_twins`
  on the same images for the stated number of epochs (labels unused);
- ``offline_imagenet``: efficientnet_lite0 with the offline ImageNet weights.

the pooled features are extracted with :func:`mlfix.pipeline.features.extract`, L2-normalised, and every image
is classified by a majority vote of its k=20 nearest neighbours (cosine, leave-one-out; ties go to the
label of the nearest tied neighbour). The figure is the fraction that matches the clean label.

``--continued`` asks whether ``mlfix train``'s default helps: the frozen offline EfficientNet-Lite0
against the same weights after a few epochs of Barlow Twins (Zbontar et al. 2021) on the set itself
(flowers17, 1,360 photos with 10% of the labels flipped, seed 0; cifar10n, the first 2,000 images with
their human labels): kNN accuracy against the clean labels, and the AUROC and AP of the kNN vote and
of the probe's loss against the known errors, both models' features extracted at the same size.

Training checkpoints go to ``bench/results/feature_quality/<data>/`` so that an interrupted run
resumes; ``--fresh`` deletes them first.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS_DIR, emit, parser, require_shared

K = 20


def samples_from_csv(folder: Path, limit: int | None, label_column: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A samples table straight from labels.csv (no header scan needed) and the clean labels."""
    table = pd.read_csv(folder / "labels.csv", dtype=str)
    if limit is not None:
        table = table.iloc[:limit]
    samples = pd.DataFrame({"sample_id": table["path"], "path": table["path"], "label": table["label"],
                            "box_x": np.nan, "box_y": np.nan, "box_w": np.nan, "box_h": np.nan})
    return samples.reset_index(drop=True), table[label_column].to_numpy()


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = K) -> float:
    """Leave-one-out kNN accuracy with cosine similarity (faiss inner product on unit vectors)."""
    import faiss

    x = features.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, neighbours = index.search(x, k + 1)
    codes, names = pd.factorize(pd.Series(labels))
    return float(np.mean(knn_vote(neighbours, codes, len(names), k) == codes))


def knn_vote(neighbours: np.ndarray, codes: np.ndarray, classes: int, k: int = K) -> np.ndarray:
    """Majority label of each row's k nearest neighbours, the row itself left out (vectorised).

    ``neighbours``: (n, k+1) indices, nearest first (faiss, -1 for none). A tie goes to the label of
    the nearest neighbour among the tied labels.
    """
    n = len(neighbours)
    own = neighbours == np.arange(n)[:, None]
    # drop the row itself (or, when faiss did not return it, the farthest) so that k remain
    drop = np.where(own.any(axis=1), own.argmax(axis=1), neighbours.shape[1] - 1)
    keep = np.ones(neighbours.shape, dtype=bool)
    keep[np.arange(n), drop] = False
    near = neighbours[keep].reshape(n, -1)[:, :k]
    valid = near >= 0
    near_codes = np.where(valid, codes[np.maximum(near, 0)], 0)
    votes = np.zeros((n, classes), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(n), near.shape[1]), near_codes.ravel()), valid.ravel())
    tied = votes[np.arange(n)[:, None], near_codes] == votes.max(axis=1, keepdims=True)
    return near_codes[np.arange(n), np.argmax(tied & valid, axis=1)]


def evaluate(name: str, data: str, root, samples, labels, backbone, image_size: int, **setup) -> float:
    from mlfix.pipeline.features import extract

    start = time.perf_counter()
    result = extract(root, samples, backbone, image_size=image_size, batch_size=64, device="cpu")
    seconds = time.perf_counter() - start
    ok = result.ok
    accuracy = knn_accuracy(result.pooled[ok], labels[ok])
    emit("feature_quality", f"knn{K}_accuracy_{data}_{name}", round(accuracy, 4), "fraction", int(ok.sum()),
         data=data, backbone_kind=name, backbone=backbone.name, image_size=image_size,
         extract_s=round(seconds, 1), **setup)
    return accuracy


def run_dataset(data: str, limit: int | None, label_column: str, epochs: int, train_size: int,
                batch_size: int, offline_size: int, fresh: bool, quick: bool) -> None:
    import torch

    from mlfix.pipeline.backbone import create_backbone
    from mlfix.data.images import DataRoot
    from mlfix.training.barlow_twins import train_barlow_twins
    from mlfix.progress import Progress

    folder = require_shared(data)
    if folder is None:
        return
    samples, labels = samples_from_csv(folder, limit, label_column)
    root = DataRoot(folder / "images.zip")

    torch.manual_seed(0)
    evaluate("random", data, root, samples, labels, create_backbone("resnet18", "random"), train_size,
             quick=quick)

    models = RESULTS_DIR / "feature_quality" / f"{data}{'-quick' if quick else ''}"
    if fresh and models.exists():
        shutil.rmtree(models)
    start = time.perf_counter()
    checkpoint = train_barlow_twins(root, samples, models, backbone="resnet18", epochs=epochs,
                                    batch_size=batch_size, image_size=train_size, head_dim=2048,
                                    device="cpu", progress=Progress("train", models, terminal=False))
    train_s = time.perf_counter() - start  # 0-ish when the checkpoint was already finished
    evaluate("barlow_twins", data, root, samples, labels, create_backbone("resnet18", checkpoint),
             train_size, epochs=epochs, batch_size=batch_size, head_dim=2048, train_s=round(train_s, 1),
             quick=quick)

    evaluate("offline_imagenet", data, root, samples, labels,
             create_backbone("efficientnet_lite0", "offline"), offline_size, quick=quick)


# ---------------------------------------------------------------- continued training from offline weights

NOISE_SEED = 0
NOISE_RATE = 0.10


def planted_noise(labels: np.ndarray, rate: float = NOISE_RATE, seed: int = NOISE_SEED) -> np.ndarray:
    """``labels`` with a seeded ``rate`` of them flipped to another class (for sets without known errors)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    noisy = labels.copy()
    for i in rng.choice(len(labels), int(round(rate * len(labels))), replace=False):
        noisy[i] = rng.choice(classes[classes != labels[i]])
    return noisy


def detection(features: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """AUROC and AP of the kNN vote (k=50, weighted) and of the probe's loss against the known errors."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from mlfix.scoring import neighbours, probe

    x = features.astype(np.float32)
    ids = np.arange(len(x))
    is_error = noisy != clean
    out = {}
    knn = neighbours.knn_vote(x, noisy, ids, k=50)["score"].to_numpy()
    loss = probe.probe_loss(x, noisy, ids)["score"].to_numpy()
    for name, score in (("knn", knn), ("probe_loss", loss)):
        out[f"auroc_{name}"] = round(float(roc_auc_score(is_error, score)), 4)
        out[f"ap_{name}"] = round(float(average_precision_score(is_error, score)), 4)
    return out


def continued(data: str, limit: int | None, noisy_column: str | None, epochs: int, train_size: int,
              eval_sizes: list[int], lrs: list[float], batch_size: int, fresh: bool,
              frozen: bool = True) -> None:
    """Frozen offline EfficientNet-Lite0 vs the same weights after ``epochs`` of Barlow Twins on the set.

    Figures per eval size: kNN accuracy (k=20) against the clean labels, and label-error detection
    (kNN vote, probe loss) against the known errors (CIFAR-10N's human labels, or planted flips).
    """
    from mlfix.data.images import DataRoot
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.pipeline.features import extract
    from mlfix.progress import Progress
    from mlfix.training.barlow_twins import train_barlow_twins

    folder = require_shared(data)
    if folder is None:
        return
    label_column = "clean_label" if noisy_column else "label"
    samples, clean = samples_from_csv(folder, limit, label_column)
    noisy = (pd.read_csv(folder / "labels.csv", dtype=str)[noisy_column].to_numpy()[:len(samples)]
             if noisy_column else planted_noise(clean))
    root = DataRoot(folder / "images.zip")
    noise = f"{noisy_column} (human)" if noisy_column else f"{NOISE_RATE:.0%} planted, seed {NOISE_SEED}"

    def measure(name: str, backbone, **setup) -> None:
        for size in eval_sizes:
            start = time.perf_counter()
            result = extract(root, samples, backbone, image_size=size, batch_size=64, device="cpu")
            ok = result.ok
            figures = {"knn20_accuracy": round(knn_accuracy(result.pooled[ok], clean[ok]), 4),
                       **detection(result.pooled[ok], noisy[ok], clean[ok])}
            for metric, value in figures.items():
                emit("feature_quality", f"continued_{metric}_{data}_{name}", value,
                     "fraction" if metric.startswith("knn20") else "score", int(ok.sum()), data=data,
                     backbone="efficientnet_lite0", kind=name, eval_size=size, noise=noise,
                     extract_s=round(time.perf_counter() - start, 1), **setup)

    if frozen:
        measure("frozen_offline", create_backbone("efficientnet_lite0", "offline"))
    for lr in lrs:
        models = RESULTS_DIR / "feature_quality" / f"continued-{data}-{limit}-lr{lr:g}-{train_size}px"
        if fresh and models.exists():
            shutil.rmtree(models)
        start = time.perf_counter()
        checkpoint = train_barlow_twins(root, samples, models, backbone="efficientnet_lite0", init="offline",
                                        epochs=epochs, batch_size=batch_size, image_size=train_size,
                                        head_dim=2048, lr=lr, device="cpu",
                                        progress=Progress("train", models, terminal=False))
        measure("continued_barlow_twins", create_backbone("efficientnet_lite0", checkpoint), epochs=epochs,
                lr=lr, train_size=train_size, batch_size=batch_size,
                train_s=round(time.perf_counter() - start, 1))


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs-flowers", type=int, default=30)
    p.add_argument("--epochs-cifar", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--only", choices=["flowers17", "cifar10n"], help="one data set only")
    p.add_argument("--cifar-offline-size", type=int, default=96,
                   help="input size of the ImageNet model on the 32 px CIFAR images")
    p.add_argument("--fresh", action="store_true", help="retrain instead of resuming saved checkpoints")
    p.add_argument("--continued", action="store_true",
                   help="frozen offline EfficientNet-Lite0 vs continued Barlow Twins from it (flowers17, "
                        "cifar10n first 2,000): kNN accuracy and label-error detection")
    p.add_argument("--epochs", type=int, default=3, help="--continued: Barlow Twins epochs")
    p.add_argument("--lr", type=float, nargs="+", default=[1e-4], help="--continued: learning rates to try")
    p.add_argument("--train-size", type=int, default=64, help="--continued: training crop size")
    p.add_argument("--skip-frozen", action="store_true", help="--continued: only the trained model's figures")
    args = p.parse_args()
    from mlfix.cli.train import openmp_waits_for_training

    # as `mlfix train` does, before torch loads: on a busy CPU, spinning OpenMP threads slowed the
    # training steps here more than tenfold
    openmp_waits_for_training(args.train_size if args.continued else 64)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.continued:
        plans = [("flowers17", None, None, [128]), ("cifar10n", 2_000, "label", [64])]
        if args.quick:
            plans = [("flowers17", 128, None, [64])]
        for data, limit, noisy, sizes in plans:
            if args.only in (None, data):
                continued(data, limit, noisy, 1 if args.quick else args.epochs,
                          32 if args.quick else args.train_size, sizes, args.lr, 32 if args.quick else 64,
                          fresh=args.fresh or args.quick, frozen=not args.skip_frozen)
        return
    if args.quick:  # a smoke test: 128 flowers, one epoch at 32 px
        run_dataset("flowers17", 128, "label", 1, 32, 32, 64, fresh=True, quick=True)
        return
    if args.only in (None, "flowers17"):
        run_dataset("flowers17", None, "label", args.epochs_flowers, 64, 64, 224, args.fresh, False)
    if args.only in (None, "cifar10n"):
        run_dataset("cifar10n", 10_000, "clean_label", args.epochs_cifar, 32, 128,
                    args.cifar_offline_size, args.fresh, False)


if __name__ == "__main__":
    main()
