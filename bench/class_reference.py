"""Class outliers with a class's reference capped (``outliers.REFERENCE_MAX``) against every member.

    python -m bench.class_reference                  # CIFAR-10N 50k (real noise) and 2 synthetic classes of 100k
    python -m bench.class_reference --quick          # CIFAR-10N 5k, 2 synthetic classes of 10k

A class of more than REFERENCE_MAX samples is compared with a fixed REFERENCE_MAX of its members
(those whose sample ids hash lowest). This measures what that costs in detection, as the ratio
m / REFERENCE_MAX a class of m samples sees (25k of 100k is 4; the cap is reached first by classes
of 100k at 10M rows x 100 classes):

- **cifar10n**: pooled efficientnet_lite0 features (offline weights, 64 px; cached by
  ``bench.detect_features``) of the first N CIFAR-10N images, labels = one human annotator (17% wrong).
  Classes of ~N/10 samples, capped at N/10/ratio. Figures per cap: flags, precision and recall of the
  flags against the wrong labels, AUROC of the score, and the agreement (Jaccard) of the flags with the
  uncapped run.
- **synthetic**: classes of ``--class-rows`` 256-d vectors made of 200 modes of Zipf-distributed sizes
  (the rare modes are what a cap might take for outliers), 2% of each class planted from the other
  class. The same figures against the planted rows, and the seconds of each run (both classes).

Figures: JSON lines via bench.common.emit (``class_reference.<data>.<cap>.<figure>``).
"""

from __future__ import annotations

import numpy as np

from bench.common import emit, parser, require_shared, timer

BENCH = "class_reference"
RATIOS = (4, 10)  # class size / cap: 100k / 25k, and a harsher one
MODES = 200


def run(x: np.ndarray, labels: np.ndarray, wrong: np.ndarray, cap: int | None) -> dict:
    """class_outlier_check with REFERENCE_MAX = cap (None: no cap): its flags, figures and seconds."""
    from sklearn.metrics import roc_auc_score

    from mlfix.scoring import outliers

    saved = outliers.REFERENCE_MAX
    outliers.REFERENCE_MAX = cap or len(x)
    try:
        with timer() as took:
            table = outliers.class_outlier_check(x, labels, np.arange(len(x)))
    finally:
        outliers.REFERENCE_MAX = saved
    flag = table["flag"].to_numpy()
    score = table["score"].fillna(0).to_numpy()
    hits = int((flag & wrong).sum())
    return {"flag": flag, "flagged": int(flag.sum()), "precision": round(hits / max(1, flag.sum()), 4),
            "recall": round(hits / max(1, wrong.sum()), 4), "auroc": round(float(roc_auc_score(wrong, score)), 4),
            "seconds": round(took(), 2)}


def compare(data: str, x: np.ndarray, labels: np.ndarray, wrong: np.ndarray, class_rows: int, setup: dict) -> None:
    """Emit the uncapped run's figures and each cap's, with its flags' agreement with the uncapped."""
    full = run(x, labels, wrong, None)
    caps = [("all", None)] + [(f"1/{ratio}", max(10, class_rows // ratio)) for ratio in RATIOS]
    for name, cap in caps:
        result = full if cap is None else run(x, labels, wrong, cap)
        union = (result["flag"] | full["flag"]).sum()
        jaccard = round(float((result["flag"] & full["flag"]).sum() / max(1, union)), 4)
        for figure in ("flagged", "precision", "recall", "auroc", "seconds"):
            emit(BENCH, f"{data}.{name}.{figure}", result[figure], "s" if figure == "seconds" else "",
                 len(x), cap=cap, class_rows=class_rows, **setup)
        emit(BENCH, f"{data}.{name}.jaccard_with_all", jaccard, "", len(x), cap=cap, class_rows=class_rows, **setup)


def cifar10n(n: int, size: int) -> None:
    if require_shared("cifar10n") is None:
        return
    from bench.detect_features import features, load_labels

    table = load_labels("cifar10n", n)
    x = features("cifar10n", n, size)["pooled"]
    labels = table["label"].to_numpy(dtype=object)
    wrong = (table["label"] != table["clean_label"]).to_numpy()
    compare("cifar10n", x, labels, wrong, n // 10, {"backbone": "efficientnet_lite0 offline", "size": size,
                                                     "wrong": int(wrong.sum())})


def modes_of(rows: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, dim) float16: one class of MODES modes whose sizes follow Zipf (1/rank)."""
    weight = 1.0 / np.arange(1, MODES + 1)
    mode = rng.choice(MODES, rows, p=weight / weight.sum())
    centre = rng.normal(0, 1, dim)
    offsets = rng.normal(0, 1, (MODES, dim))
    return (centre * 1.5 + offsets[mode] + 0.6 * rng.normal(0, 1, (rows, dim))).astype(np.float16)


def synthetic(class_rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    a, b = modes_of(class_rows, dim, rng), modes_of(class_rows, dim, rng)
    x = np.concatenate([a, b])
    labels = np.array(["a"] * class_rows + ["b"] * class_rows, dtype=object)
    wrong = rng.random(len(x)) < 0.02
    labels[wrong] = np.where(labels[wrong] == "a", "b", "a")  # planted: a "b" vector labelled "a", and back
    compare("synthetic", x, labels, wrong, class_rows, {"dim": dim, "modes": MODES, "planted": int(wrong.sum())})


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cifar-rows", type=int, default=50_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--class-rows", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--data", choices=("cifar10n", "synthetic"), nargs="+", default=["cifar10n", "synthetic"])
    args = p.parse_args(argv)
    if args.quick:
        args.cifar_rows, args.class_rows = 5_000, 10_000
    if "cifar10n" in args.data:
        cifar10n(args.cifar_rows, args.size)
    if "synthetic" in args.data:
        synthetic(args.class_rows, args.dim)


if __name__ == "__main__":
    main()
