"""The defaults (no options) against the best offline setting, on every shared set with known errors.

    python -m bench.defaults                       # subsets: CIFAR-10N 1,000, GTSRB 1,000, flowers 400
    python -m bench.defaults --quick               # a smoke test for CI (40 images per set, 64 px; about
                                                   # a minute of CPU, most of it loading models)
    python -m bench.defaults --n 2000 2000 1360 --best-n 2000 2000 1360 --sizes 96 128 160
    # what the README's rows ran on the shared 2-core machine (features cached by earlier runs):
    python -m bench.defaults --cached-only --only cifar10n --n 300 1000 300 --best-n 300 300 300 \
        --no-sweep-flip --sizes 96 128
    python -m bench.defaults --only gtsrb35 --n 300 1000 300 --best-n 300 300 300 --no-best-flip \
        --no-sweep-flip --sizes 96 128                      # likewise --only flowers17 ... --sizes 128

Per data set (``cifar10n``: real human noise, the truth is ``clean_label``; ``gtsrb35`` and ``flowers17``:
a seeded 5% of the labels flipped to another class, the truth kept):

- the defaults, exactly as ``mlfix index`` resolves them with no options: ``IndexSettings()``, the image
  size from the images' median short side (``auto_image_size``), EfficientNet-Lite0 with its offline
  ImageNet weights (no trained checkpoint), one forward pass per image;
- each Lite0 size of ``--sizes`` (the measurements behind the ``auto`` rule), with and without the
  mirror image at the default size;
- the best offline setting, ``--quality best``: EfficientNet-Lite0+Lite1+Lite2 at 260 px, each image
  averaged with its mirror image (6 forward passes), on the first ``--best-n`` rows of the subset
  (the defaults are evaluated on the same rows, so the ratio compares like with like).

Figures (JSON lines via bench.common.emit, ``<set>.<setting>.<metric>``): ``recall_at_queue`` (share of
the errors in the first 2% of the default queue, or in the first 1.5x the error count where errors
exceed 2%), ``auroc``, ``ap`` (average precision), ``s_per_1000`` (seconds of feature extraction per 1,000
images on this machine), ``passes`` (forward passes per image); and ``<set>.auroc_ratio_defaults_to_best``
(the goal: at least 0.95 at no more than 2 passes). The queue is mlfix's default score
(``compute_scores``' combined column: the two-fit probe's loss and the kNN vote).

Features are cached in bench/results/ (the same files as bench/detect.py where the subsets agree), so a
rerun costs only the scoring.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from bench.common import RESULTS_DIR, SHARED_DATA, emit, parser, require_shared

BENCH = "defaults"
DATASETS = ("cifar10n", "gtsrb35", "flowers17")
FLIP_RATE, FLIP_SEED = 0.05, 0
LITE0 = "efficientnet_lite0"
CACHED_ONLY = False  # --cached-only: score the settings whose features are cached, skip the rest


class NotCached(Exception):
    """A setting's features are not cached and --cached-only forbids extracting them."""


# ---- data ----------------------------------------------------------------------------------------

def subset(dataset: str, n: int) -> pd.DataFrame:
    """``n`` rows of a shared set: CIFAR-10N's first ``n`` (its order is random already, and it matches
    bench/detect.py); GTSRB and flowers (sorted by class) a seeded random subset in file order."""
    from bench.detect_features import load_labels

    if dataset != "flowers17":
        return load_labels(dataset, n)  # cifar10n: first n; gtsrb35: seed 0, as bench/detect.py
    table = pd.read_csv(SHARED_DATA / dataset / "labels.csv", dtype=str, keep_default_na=False)
    if n < len(table):
        table = table.iloc[np.sort(np.random.default_rng(0).choice(len(table), n, replace=False))]
    table = table.reset_index(drop=True)
    table.insert(0, "sample_id", table["path"])
    return table


def labels_and_truth(dataset: str, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, str]:
    """(given labels, true labels, what the noise is)."""
    from bench.detect import flip_labels

    if dataset == "cifar10n":
        return (table["label"].to_numpy(dtype=object), table["clean_label"].to_numpy(dtype=object),
                "human labels (CIFAR-10N random_label1) vs clean_label")
    truth = table["label"].to_numpy(dtype=object)
    return (flip_labels(truth, FLIP_RATE, FLIP_SEED), truth,
            f"{FLIP_RATE:.0%} of labels flipped to another class (seed {FLIP_SEED})")


def typical_side(dataset: str, table: pd.DataFrame, probe: int = 200) -> float:
    """The median short side of (up to ``probe`` of) the subset's images, read from their headers."""
    from mlfix.data.images import DataRoot, load_image

    root = DataRoot(SHARED_DATA / dataset / "images.zip")
    rows = table.iloc[np.linspace(0, len(table) - 1, min(probe, len(table))).astype(int)]
    return float(np.median([min(load_image(root, row).size) for row in rows.to_dict("records")]))


def features(dataset: str, table: pd.DataFrame, size: int, flip: bool, backbone: str) -> tuple[np.ndarray, float]:
    """(pooled features of the rows of ``table``, extraction seconds), cached by data set, rows, size,
    mirror and backbone (an ensemble is its members side by side, its time their sum)."""
    from bench.detect_features import _extract, cache_path

    if "+" in backbone:
        parts = [features(dataset, table, size, flip, member) for member in backbone.split("+")]
        return np.hstack([p[0] for p in parts]), sum(p[1] for p in parts)
    n = len(table)
    same_as_detect = dataset != "flowers17" and table["path"].equals(subset(dataset, n)["path"])
    rows_id = hashlib.sha1("\n".join(table["path"]).encode()).hexdigest()[:10]
    path = cache_path(dataset, n, size, flip, backbone) if same_as_detect else \
        RESULTS_DIR / f"{Path(cache_path(dataset, n, size, flip, backbone)).stem}_rows{rows_id}.npz"
    if not path.exists() and dataset == "cifar10n":  # first-N subsets nest: reuse a larger cache
        for bigger in sorted(RESULTS_DIR.glob(f"features_cifar10n_*_{path.name.split('_', 3)[3]}")):
            m = int(bigger.name.split("_")[2])
            if m > n and (not flip) == ("_flip" not in bigger.name):
                with np.load(bigger) as data:
                    return data["pooled"][:n].astype(np.float32), float(data["seconds"]) * n / m
    if path.exists():
        with np.load(path) as data:
            return data["pooled"].astype(np.float32), float(data["seconds"])
    if CACHED_ONLY:
        raise NotCached(path.name)
    start = time.perf_counter()
    out = _extract(dataset, table, size, flip, backbone, 64, lambda *a, **k: print(*a, **k))
    out["seconds"] = np.array(time.perf_counter() - start)
    RESULTS_DIR.mkdir(exist_ok=True)
    np.savez(path, **out)
    return out["pooled"].astype(np.float32), float(out["seconds"])


# ---- metrics -------------------------------------------------------------------------------------

def queue_length(n: int, errors: int) -> int:
    """2% of the set, or 1.5x the error count where errors exceed 2% (a queue that can hold them all)."""
    two_pct = max(1, int(round(0.02 * n)))
    return two_pct if errors <= two_pct else int(round(1.5 * errors))


def metrics(is_error: np.ndarray, score: np.ndarray) -> dict[str, float]:
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-score, kind="stable")
    errors = int(is_error.sum())
    top = queue_length(len(score), errors)
    return {"recall_at_queue": round(float(is_error[order[:top]].sum() / max(1, errors)), 4),
            "auroc": round(float(roc_auc_score(is_error, score)), 4),
            "ap": round(float(average_precision_score(is_error, score)), 4)}


def queue_score(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mlfix's default queue (the combined score ``mlfix scores`` sorts by)."""
    from mlfix.scoring.registry import compute_scores

    return compute_scores(x, labels, np.arange(len(labels)), seed=0)["score"].to_numpy()


# ---- the benchmark -------------------------------------------------------------------------------

def run_set(dataset: str, n: int, best_n: int, sizes: list[int], quick: bool, best_flip: bool = True,
            sweep_flip: bool = True) -> None:
    from mlfix.settings import BEST_ENSEMBLE, IndexSettings, auto_image_size, forward_passes, quality_settings

    table = subset(dataset, n)
    labels, truth, noise = labels_and_truth(dataset, table)
    side = typical_side(dataset, table)
    defaults = IndexSettings()
    default_size = 64 if quick else auto_image_size(side)
    best = defaults.replace(**quality_settings("best"))
    if quick:
        best = best.replace(backbone="efficientnet_lite0+efficientnet_lite1", image_size=64)
    if not best_flip:  # --no-best-flip: the ensemble without the mirror image (half the passes)
        best = best.replace(tta_flip=False)
    setup = {"data": f"{dataset}: {n} images ({'first' if dataset == 'cifar10n' else 'seeded random'} subset), "
                     f"{noise}", "images_median_side_px": side, "queue": "mlfix's default combined score",
             "recall_queue": "first 2% of the queue, or 1.5x the error count where errors exceed 2%"}
    is_error = labels != truth
    emit(BENCH, f"{dataset}.noise_rate", round(float(is_error.mean()), 4), "share", n, **setup)

    def extracted(rows: np.ndarray, size: int, flip: bool, backbone: str) -> tuple[np.ndarray, float]:
        if backbone == LITE0 and len(rows) < n:  # the whole subset's Lite0 features are there: slice
            x, seconds = features(dataset, table, size, flip, backbone)
            return x[rows], seconds * len(rows) / n
        return features(dataset, table.iloc[rows].reset_index(drop=True), size, flip, backbone)

    def evaluate(name: str, rows: np.ndarray, size: int, flip: bool, backbone: str, passes: int) -> dict | None:
        try:
            x, seconds = extracted(rows, size, False, backbone)
            if flip:
                mirrored, more = extracted(rows, size, True, backbone)
                x, seconds = (x + mirrored) / 2, seconds + more
        except NotCached as missing:
            print(json.dumps({"bench": "skip", "reason": f"{dataset}.{name}: {missing} not cached (--cached-only)"}),
                  file=sys.stderr)
            return None
        result = metrics(is_error[rows], queue_score(x, labels[rows]))
        result["s_per_1000"] = round(1000 * seconds / len(rows), 1)
        result["passes"] = passes
        where = {**setup, "setting": f"{backbone} offline, {size} px{', + mirror image' if flip else ''}",
                 "rows": len(rows), "errors": int(is_error[rows].sum())}
        for metric, value in result.items():
            emit(BENCH, f"{dataset}.{name}.{metric}", value, "s" if metric == "s_per_1000" else "", len(rows),
                 **where)
        return result

    every = np.arange(n)
    mine = evaluate("defaults", every, default_size, defaults.tta_flip, defaults.backbone, forward_passes(defaults))
    for size in sizes:
        if size != default_size:
            evaluate(f"lite0_{size}px", every, size, False, LITE0, 1)
    if sweep_flip:
        evaluate(f"lite0_{default_size}px_flip", every, default_size, True, LITE0, 2)
    if best_n <= 0:  # --best-n 0: no ensemble here
        return
    # the best offline setting on the first best_n rows (CIFAR) or a seeded part of the subset
    rows = every[:best_n] if dataset == "cifar10n" or best_n >= n else \
        np.sort(np.random.default_rng(1).permutation(n)[:best_n])
    if best_n < n:
        mine = evaluate("defaults_on_best_rows", rows, default_size, False, LITE0, 1)
    top = evaluate("best", rows, int(best.image_size), best.tta_flip, best.backbone, forward_passes(best))
    if mine is None or top is None:
        return
    emit(BENCH, f"{dataset}.auroc_ratio_defaults_to_best", round(mine["auroc"] / top["auroc"], 4), "ratio",
         len(rows), **setup, best=f"{best.backbone} {best.image_size} px{' + mirror' if best.tta_flip else ''}",
         defaults_size=default_size)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs=3, default=[1000, 1000, 400], metavar=("CIFAR", "GTSRB", "FLOWERS"),
                   help="subset sizes for the defaults and the size sweep")
    p.add_argument("--best-n", type=int, nargs=3, default=[300, 300, 200], metavar=("CIFAR", "GTSRB", "FLOWERS"),
                   help="rows of each subset the 6-pass ensemble runs on (the defaults are compared on the same)")
    p.add_argument("--sizes", type=int, nargs="*", default=[96, 128, 224], help="Lite0 sizes to sweep")
    p.add_argument("--only", choices=DATASETS, action="append", help="run these data sets only")
    p.add_argument("--cached-only", action="store_true",
                   help="score only the settings whose features are cached (a skip line for the others)")
    p.add_argument("--best-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="the best setting with the mirror image (6 passes; --no-best-flip: 3)")
    p.add_argument("--sweep-flip", action=argparse.BooleanOptionalAction, default=True,
                   help="also the defaults with the mirror image (2 passes)")
    args = p.parse_args(argv)
    global CACHED_ONLY
    CACHED_ONLY = args.cached_only
    if args.quick:
        args.n, args.best_n, args.sizes = [40, 40, 40], [40, 40, 40], []
    for dataset, n, best_n in zip(DATASETS, args.n, args.best_n):
        if args.only and dataset not in args.only:
            continue
        if require_shared(dataset) is None:
            continue
        run_set(dataset, n, min(best_n, n), args.sizes, args.quick, args.best_flip, args.sweep_flip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
