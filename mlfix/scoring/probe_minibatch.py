"""The cross-validated linear probe fitted by minibatches (torch, CPU), for data too big to hold as float32.

:func:`mlfix.scoring.probe.out_of_fold_probabilities` takes this route from
:data:`mlfix.scoring.probe.MINIBATCH_MIN` rows (or when asked with ``minibatch=True``). The model is the
full fit's: a multinomial logistic regression on features standardized per training fold, objective
mean cross-entropy + ``l2``/2 ||W||^2 (bias not penalised), here minimised by Adam (Kingma and Ba, "Adam:
A Method for Stochastic Optimization", ICLR 2015) with a step size decaying linearly to 0, the usual
schedule for a convex objective by stochastic gradients (as scikit-learn's
``SGDClassifier(loss="log_loss")`` does with its ``"invscaling"`` rate; Bottou, "Large-Scale Machine
Learning with Stochastic Gradient Descent", COMPSTAT 2010).

What differs from the full fit is only how the data is read, so the memory stays bounded
(O(:data:`CHUNK` x D + K x D x C + N x C)); the (N, D) matrix is never loaded or converted:

- all K fold models are fitted together, in one pass over the data per epoch: a row held out in fold g
  trains every model but g (a trusted row trains all of them); the models' logits are one
  (D, K x C) product, so the data is read once per epoch rather than K times;
- rows are read from the (N, D) array (typically the float16 memmap ``features/pooled.npy``) in chunks
  gathered from random blocks of :data:`BLOCK` consecutive labeled rows, shuffled within the chunk: reads
  stay sequential, and a file sorted by class still gives mixed minibatches; seeded, so the result is
  deterministic for a seed (on one machine and thread count);
- standardization: per-fold mean and standard deviation from one pass of per-fold sums (float64), folded
  into the weights (``(x - mean) / std @ W = x @ (W / std) - (mean / std) @ W``);
- a class missing from a model's training rows gets logit -1e9, i.e. probability 0, as in the full fit;
- out-of-fold probabilities are predicted chunk by chunk: a held-out row from its fold's model, the
  others (trusted, unlabeled) the mean of the fold models.
"""

from __future__ import annotations

import numpy as np

from mlfix.scoring.contract import check_embeddings

BLOCK = 256  # consecutive rows read together (a 1280-d float16 block is 640 KiB: a sequential read)
CHUNK = 32 * BLOCK  # rows per read: 8192 rows, 21 MB as 1280-d float16, 42 MB as float32
BATCH = 2048  # rows per Adam step
LEARNING_RATE = 0.01  # initial Adam step size on standardized features, decayed linearly to 0
MIN_STEPS = 500  # at least this many Adam steps (small data: many epochs) ...
MIN_EPOCHS = 2  # ... and at least this many passes over the labeled rows
ABSENT = -1e9  # logit of a class a model never saw: probability exactly 0 in float32


def check_rows(embeddings) -> np.ndarray:
    """``embeddings`` as an (N, D) array, unconverted (a float16 memmap stays one), checked to be 2-D,
    non-empty and finite chunk by chunk (:func:`mlfix.scoring.contract.check_embeddings`); ValueError
    otherwise."""
    return check_embeddings(embeddings, convert=False)


def fit_folds(x: np.ndarray, codes: np.ndarray, fold_of: np.ndarray, n_models: int, n_classes: int,
              l2: float, seed: int, out: np.ndarray, blend: bool = False) -> np.ndarray:
    """Fit ``n_models`` fold probes by minibatches and write the out-of-fold probabilities into ``out``
    (with ``blend``: their mean with what ``out`` holds, chunk by chunk, so a refit needs no second
    (N, C) array).

    Args:
        x: (N, D) features, any float dtype (a float16 memmap is read chunk by chunk).
        codes: (N,) int class code of each training row, -1 for rows that train no model (unlabeled,
            left out of the refit).
        fold_of: (N,) int fold a row is held out in (it trains every other model), -1 when it trains
            all models (trusted) or is held out nowhere.
        n_models: number of fold models (1 when there are no folds: one model on every labeled row).
        n_classes: C.
        l2: weight decay on the standardized weights (the full fit's ``l2``).
        seed: shuffling seed.
        out: (N, C) float64, filled with the probabilities (rows sum to 1).
        blend: average into ``out`` instead of overwriting it.

    Returns:
        ``out``.

    Example:
        >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, .1, (40, 2))
        >>> codes, fold_of = np.repeat([0, 1], 20), np.tile([0, 1], 20)
        >>> p = fit_folds(x.astype(np.float16), codes, fold_of, 2, 2, 0.1, 0, np.zeros((40, 2)))
        >>> p.argmax(axis=1).tolist() == codes.tolist(), np.allclose(p.sum(axis=1), 1)
        (True, True)
    """
    import torch

    rows = np.flatnonzero(codes >= 0)
    center, mean, std, present = _fold_stats(x, rows, codes, fold_of, n_models, n_classes)
    threads = torch.get_num_threads()
    # One thread: each step is a few small products, and multi-threaded torch spin-waits between them;
    # on a busy 2-core machine two threads made every step 10x slower (the full fit limits BLAS alike).
    torch.set_num_threads(1)
    try:
        w, b = _train(torch, x, rows, codes, fold_of, (center, mean, std, present), l2, seed)
        _predict(torch, x, fold_of, (w, b, center, mean, std, present), out, blend)
    finally:
        torch.set_num_threads(threads)
    return out


def _predict(torch, x: np.ndarray, fold_of: np.ndarray, model, out: np.ndarray, blend: bool = False) -> None:
    """Out-of-fold probabilities chunk by chunk into ``out`` (``blend``: averaged with what it holds)."""
    with torch.no_grad():
        for start in range(0, len(x), CHUNK):
            stop = min(start + CHUNK, len(x))
            p = torch.softmax(_logits(torch, x[start:stop], *model).double(), dim=2)  # rows sum to 1 in float64
            placed = _place(p.numpy(), fold_of[start:stop])
            if blend:  # (a + b) / 2, as the full fit averages its two fits
                placed += out[start:stop]
                placed /= 2
            out[start:stop] = placed


def _place(p: np.ndarray, fold_of: np.ndarray) -> np.ndarray:
    """A held-out row's probabilities from its fold's model, the others' the mean of the models."""
    held = fold_of >= 0
    placed = np.empty((len(p), p.shape[2]), dtype=np.float64)
    placed[held] = p[np.flatnonzero(held), fold_of[held]]
    placed[~held] = p[~held].mean(axis=1)
    return placed


def _fold_stats(x: np.ndarray, rows: np.ndarray, codes: np.ndarray, fold_of: np.ndarray, n_models: int,
                n_classes: int):
    """One pass of per-fold sums: ``center`` (D,) the mean of the training rows, ``mean`` and ``std``
    (K, D) of each model's training rows (population std + 1e-6, the full fit's), ``present`` (K, C)
    bool, the classes each model trains on."""
    groups = fold_of[rows] + 1  # 0: trains every model; g + 1: held out in fold g
    dim = x.shape[1]
    sums, squares = np.zeros((n_models + 1, dim)), np.zeros((n_models + 1, dim))
    for start in range(0, len(rows), CHUNK):
        chunk = np.asarray(x[rows[start:start + CHUNK]], dtype=np.float64)
        onehot = np.eye(n_models + 1)[groups[start:start + CHUNK]]
        sums += onehot.T @ chunk
        squares += onehot.T @ (chunk * chunk)
    counts = np.bincount(groups, minlength=n_models + 1).astype(np.float64)
    per_class = np.bincount(groups * n_classes + codes[rows], minlength=(n_models + 1) * n_classes)
    per_class = per_class.reshape(n_models + 1, n_classes)
    model_n = np.maximum(counts.sum() - counts[1:], 1.0)[:, None]  # model k trains on all groups but k + 1
    mean = (sums.sum(axis=0) - sums[1:]) / model_n
    var = (squares.sum(axis=0) - squares[1:]) / model_n - mean ** 2
    present = per_class.sum(axis=0) - per_class[1:] > 0
    center = sums.sum(axis=0) / max(counts.sum(), 1.0)
    return center, mean, np.sqrt(np.maximum(var, 0.0)) + 1e-6, present


def _logits(torch, chunk: np.ndarray, w, b, center, mean, std, present):
    """(B, K, C) logits of every model on a chunk of raw rows; the standardization is folded into the
    weights, after centring on the pooled mean (so the float32 product loses no precision to an offset)."""
    z = torch.from_numpy(np.asarray(chunk, dtype=np.float32) - center.astype(np.float32))
    inv = torch.from_numpy((1.0 / std).astype(np.float32))  # (K, D)
    shift = torch.from_numpy(((mean - center) / std).astype(np.float32))  # (K, D)
    dim, models, classes = w.shape
    scaled = w * inv.T[:, :, None]
    bias = b - torch.einsum("kd,dkc->kc", shift, w)
    absent = torch.from_numpy(np.where(present, 0.0, ABSENT).astype(np.float32))
    return (z @ scaled.reshape(dim, models * classes)).reshape(len(z), models, classes) + bias + absent


def _train(torch, x: np.ndarray, rows: np.ndarray, codes: np.ndarray, fold_of: np.ndarray, stats, l2: float,
           seed: int):
    """Adam on mean cross-entropy + l2/2 ||W||^2 of every model at once; returns (W (D, K, C), b (K, C))."""
    center, mean, std, present = stats
    models, classes = present.shape
    w = torch.zeros((x.shape[1], models, classes), requires_grad=True)
    b = torch.zeros((models, classes), requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=LEARNING_RATE)
    epochs = max(MIN_EPOCHS, -(-MIN_STEPS // max(1, -(-len(rows) // BATCH))))
    total, seen = epochs * len(rows), 0
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        for sorted_rows in _chunks(rows, rng):
            order = rng.permutation(len(sorted_rows))  # shuffle in memory after a sorted read
            chunk, chunk_rows = np.asarray(x[sorted_rows])[order], sorted_rows[order]
            for start in range(0, len(chunk_rows), BATCH):
                batch = slice(start, start + BATCH)
                for group in optimizer.param_groups:  # linear decay to 0 over all epochs
                    group["lr"] = LEARNING_RATE * (1.0 - seen / total)
                logits = _logits(torch, chunk[batch], w, b, center, mean, std, present)
                loss = _loss(torch, logits, codes[chunk_rows[batch]], fold_of[chunk_rows[batch]], w, l2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                seen += len(chunk_rows[batch])
    return w.detach(), b.detach()


def _loss(torch, logits, codes: np.ndarray, fold_of: np.ndarray, w, l2: float):
    """Sum over models of each model's mean cross-entropy on its training rows in the batch, + l2/2 ||W||^2."""
    models = logits.shape[1]
    member = torch.from_numpy((fold_of[:, None] < 0) | (fold_of[:, None] != np.arange(models)))  # (B, K)
    log_p = torch.log_softmax(logits, dim=2)
    picked = log_p[torch.arange(len(codes)), :, torch.from_numpy(codes)]  # (B, K)
    nll = torch.where(member, -picked, torch.zeros_like(picked)).sum(dim=0)
    return (nll / member.sum(dim=0).clamp(min=1)).sum() + 0.5 * l2 * (w * w).sum()


def _chunks(rows: np.ndarray, rng: np.random.Generator):
    """Yield sorted row indices of :data:`CHUNK` rows gathered from random blocks of :data:`BLOCK`
    consecutive ``rows`` (each row once per pass; sorted, so the memmap is read forwards)."""
    starts = rng.permutation(np.arange(0, len(rows), BLOCK))
    per_chunk = CHUNK // BLOCK
    for first in range(0, len(starts), per_chunk):
        positions = (starts[first:first + per_chunk, None] + np.arange(BLOCK)).ravel()
        positions = np.sort(positions[positions < len(rows)])
        yield rows[positions]
