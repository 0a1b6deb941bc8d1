"""Variants of the fold training of ``mlfix finetune``, on a trunk cache bench/finetune.py filled.

    python -m bench.finetune --only cifar10n --n 3000 --size 224      # fills the cache (once)
    python -m bench.finetune_variants --n 3000                          # every variant, ~7 min each here
    python -m bench.finetune_variants --n 3000 --variants mlfix batch-statistics

Each variant trains the last stage + a linear head of the offline EfficientNet-Lite0 on 3 stratified
folds of CIFAR-10N's first ``n`` images (cached 224 px maps, image and mirror image) and predicts the
held-out images; figures: the AUROC of 1 - p(given label) against the human errors (the ranking of
the ``loss`` score) and the accuracy against the clean labels, and seconds.

- ``mlfix``: what :class:`mlfix.training.finetune_fold.FoldTrainer` does (random head, lr 1e-3,
  the tail at a third of it, 4 epochs, batch norm at its pretrained statistics);
- ``batch-statistics``: batch norm re-estimated on the batches (``model.train()``; mlfix before 2026-12-02);
- ``epochs8``: twice the epochs;
- ``small-loss``: each batch drops its largest losses, a share rising to 20% over the first half of
  training (the small-loss selection of co-teaching: Han et al., "Co-teaching: Robust training of
  deep neural networks with extremely noisy labels", NeurIPS 2018);
- ``lp-ft``: the head starts as the linear probe on the pretrained pooled features, then everything
  trains at lr 1e-4 (Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
  Out-of-Distribution", ICLR 2022).
"""

from __future__ import annotations

import copy
import time

import numpy as np

from bench.common import RESULTS_DIR, emit, parser
from bench.defaults import labels_and_truth, subset

BENCH = "finetune_variants"
VARIANTS = {
    "mlfix": {},
    "batch-statistics": {"batch_norm": "batch"},
    "epochs8": {"epochs": 8},
    "small-loss": {"forget": 0.2},
    "lp-ft": {"init": "probe", "lr_head": 1e-4, "lr_tail": 1e-4},
}


def probe_head(x: np.ndarray, y: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W (D, C), b (C,)) of mlfix's L-BFGS probe on standardized ``x``, folded back to raw features."""
    from mlfix.scoring.probe import DEFAULT_L2
    from mlfix.scoring.probe_fit import lbfgs_weights

    mean, std = x.mean(0), x.std(0) + 1e-6
    w, b = lbfgs_weights((x - mean) / std, y, classes, DEFAULT_L2)
    return (w / std[:, None]).astype(np.float32), (b - (mean / std) @ w).astype(np.float32)


def train_fold(tail, dim: int, views: np.ndarray, codes: np.ndarray, train: np.ndarray, held: np.ndarray,
               classes: int, fold: int, pooled: np.ndarray, epochs: int = 4, lr_head: float = 1e-3,
               lr_tail: float = 1e-3 / 3, batch_norm: str = "pretrained", forget: float = 0.0,
               init: str = "random", batch: int = 128) -> np.ndarray:
    """(len(held), C): one fold trained as the variant says, its held-out softmax (mean of both views)."""
    import torch

    from mlfix.training.finetune_fold import _one_cycle, predict_views, train_keeping_batch_norm_statistics
    from mlfix.training.finetune_model import Classifier, random_shift

    torch.manual_seed(fold)
    model = Classifier(copy.deepcopy(tail), dim, classes)
    if init == "probe":
        w, b = probe_head(pooled[train].reshape(-1, pooled.shape[-1]), np.repeat(codes[train], pooled.shape[1]),
                          classes)
        model.head.weight.data, model.head.bias.data = torch.from_numpy(w.T.copy()), torch.from_numpy(b)
    optimizer = torch.optim.AdamW([{"params": list(model.tail.parameters()), "lr": lr_tail},
                                   {"params": list(model.head.parameters()), "lr": lr_head}], weight_decay=0.01)
    steps = max(1, len(train) // batch)
    total = steps * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _one_cycle(step, total))
    targets = torch.from_numpy(codes)
    for epoch in range(epochs):
        order = np.random.default_rng([0, fold, epoch]).permutation(train)
        model.train() if batch_norm == "batch" else train_keeping_batch_norm_statistics(model)
        for step in range(steps):
            rows = np.sort(order[step * batch:(step + 1) * batch])
            generator = torch.Generator().manual_seed(epoch * 100_000 + step)
            pair = torch.from_numpy(np.asarray(views[rows]))
            which = torch.randint(0, pair.shape[1], (len(rows),), generator=generator)
            x = random_shift(pair[torch.arange(len(rows)), which].float(), generator)
            losses = torch.nn.functional.cross_entropy(model(x), targets[rows], reduction="none")
            share = forget * min(1.0, (epoch * steps + step) / (0.5 * total))
            loss = torch.topk(losses, max(1, round(len(rows) * (1 - share))), largest=False).values.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    return predict_views(model, views, held, torch.device("cpu"))


def main(argv: list[str] | None = None) -> int:
    from sklearn.metrics import roc_auc_score

    from bench.finetune import accuracy_vs_truth, frozen_from_trunk
    from mlfix.data.folds import fold_splits
    from mlfix.data.labels import encode_labels
    from mlfix.pipeline.backbone import create_backbone
    from mlfix.training.finetune_model import TRAIN_CHOICES, split_backbone

    p = parser(__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = p.parse_args(argv)
    path = RESULTS_DIR / "finetune" / f"cifar10n_{args.n}_224_last" / "trunk.npy"
    if not path.exists():
        print(f"no trunk cache at {path}: run python -m bench.finetune --only cifar10n --n {args.n} --size 224 first")
        return 0
    views = np.load(path, mmap_mode="r")
    labels, truth, noise = labels_and_truth("cifar10n", subset("cifar10n", args.n))
    coded = encode_labels(labels, args.n)
    classes = len(coded.classes)
    wrong = labels != truth
    parts = split_backbone(create_backbone("efficientnet_lite0", weights="offline"), TRAIN_CHOICES["last"])
    pooled = frozen_from_trunk(views, "last")  # (N, V, D): the probe head of lp-ft
    for name in args.variants:
        started, probs = time.perf_counter(), np.zeros((args.n, classes))
        for fold, (train, held) in enumerate(fold_splits(coded.codes, 3, 0)):
            probs[held] = train_fold(parts.tail, parts.dim, views, coded.codes, train, held, classes, fold, pooled,
                                     **VARIANTS[name])
        given = probs[np.arange(args.n), coded.codes]
        emit(BENCH, f"cifar10n.{name}", {"auroc": round(float(roc_auc_score(wrong, 1 - given)), 4),
                                         "accuracy_vs_truth": accuracy_vs_truth(probs, coded.classes, truth),
                                         "seconds": round(time.perf_counter() - started, 1)}, "figures", args.n,
             data=f"cifar10n {args.n} ({noise})", variant=VARIANTS[name])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
