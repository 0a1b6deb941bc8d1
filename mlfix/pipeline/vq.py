"""A learned codebook: vector quantisation of the cell vectors, trained as a VQ-VAE bottleneck.

The seed clusters cells with KMeans. Here a small VQ-VAE learns the words instead (van den Oord et
al. 2017, "Neural Discrete Representation Learning"): a linear encoder maps each cell vector (C) to a
``dim``-dimensional code space, the nearest of ``k`` code vectors replaces it, a linear decoder
reconstructs the cell from the code. The loss is the reconstruction error plus the commitment term
``beta * ||z - sg(e)||^2``; the code vectors follow exponential moving averages of the encodings
assigned to them (the EMA update of the paper's appendix, Razavi et al. 2019), and a code that has
gone unused is restarted at a random encoding of the current batch (dead-code replacement, as in
Dhariwal et al. 2020 "Jukebox" and Zeghidour et al. 2021 "SoundStream"). Gradients pass the
quantiser by the straight-through estimator.

The word of a cell is then the nearest code of its encoding: :meth:`VQCodebook.assign` runs in numpy
and faiss, with no torch, so it is as cheap as the KMeans codebook's. The encoder starts as the
cells' PCA and the codes as a seeded sample of encodings, so training starts where KMeans would.

Shapes: ``fit`` takes (M, C) cells; ``assign`` (..., C) -> (...) uint16, like
:class:`~mlfix.pipeline.codebook.Codebook`, and ``centroids_`` (k, C) are the decoded codes (the cell
each word stands for), so pages that show centroids work unchanged.

Example:
    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(8, 16)).astype(np.float32) * 4
    >>> cells = (centres[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    >>> vq = VQCodebook(k=16, dim=8, steps=200, seed=0).fit(cells)
    >>> words = vq.assign(cells[:6].reshape(2, 3, 16))
    >>> words.shape, words.dtype, vq.centroids_.shape
    ((2, 3), dtype('uint16'), (16, 16))
"""

from __future__ import annotations

import time

import numpy as np

from mlfix.pipeline.codebook import MAX_WORDS, MIN_CELLS_PER_WORD, small_set_advice, training_sample

DEAD_AFTER = 0.03  # a code used less than this share of its fair count per batch (batch / k) is restarted


class VQCodebook:
    """Visual words learned by a VQ-VAE bottleneck over the frozen backbone's cells.

    Args:
        k: number of words (a multiple of 8, at most 65,535).
        dim: code space dimensions (default: min(C, 64)).
        steps: training steps (minibatches).
        batch: cells per step.
        decay: EMA decay of the code vectors.
        beta: commitment weight.
        lr: Adam learning rate of the encoder and decoder.
        seed: the same cells and seed give the same codebook (on CPU).
        max_points_per_centroid: training sample cap per word, as the KMeans codebook.

    Attributes (after :meth:`fit`):
        codes_: (k, dim) float32 code vectors.
        encoder_: (dim, C) float32 and ``bias_`` (dim,): the encoding of a standardised cell.
        mean_, scale_: (C,) float32 standardisation of the cells.
        centroids_: (k, C) float32 decoded codes.
        fit_info_: ``cells_total``, ``cells_used``, ``seconds``, ``words_used``, ``restarts``,
            ``reconstruction`` (final mean squared error, standardised units) and the settings.
    """

    def __init__(self, k: int = 1024, dim: int | None = None, steps: int = 400, batch: int = 1024,
                 decay: float = 0.99, beta: float = 0.25, lr: float = 1e-3, seed: int = 0,
                 max_points_per_centroid: int = 256):
        if not 8 <= k <= MAX_WORDS or k % 8:
            raise ValueError(f"k (number of visual words) must be a multiple of 8 in [8, {MAX_WORDS}], got {k}")
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be at least 1 (or None for min(C, 64)), got {dim}")
        if steps < 1 or batch < 1:
            raise ValueError(f"steps and batch must be at least 1, got steps={steps}, batch={batch}")
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), e.g. 0.99; got {decay}")
        self.k, self.dim, self.steps, self.batch = k, dim, steps, batch
        self.decay, self.beta, self.lr, self.seed = decay, beta, lr, seed
        self.max_points_per_centroid = max_points_per_centroid

    @property
    def sample_size(self) -> int:
        return self.k * self.max_points_per_centroid

    def fit(self, cells: np.ndarray) -> "VQCodebook":
        """Train on (M, C) cell vectors; ``M`` beyond :attr:`sample_size` is subsampled (seeded)."""
        import torch

        rng = np.random.default_rng(self.seed)
        cells, total = training_sample(cells, self.k, self.sample_size, rng)
        start = time.perf_counter()
        x = np.asarray(cells, dtype=np.float32)
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.float32(x.std() or 1.0) * np.ones(x.shape[1], np.float32)
        x = (x - self.mean_) / self.scale_
        dim = min(x.shape[1], self.dim or 64)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            info = _train(self, torch.from_numpy(x), dim, generator, rng)
        self.fit_info_ = {"cells_total": int(total), "cells_used": int(len(x)), "k": self.k, "dim": dim,
                          "steps": self.steps, "seed": self.seed, "codebook": "vq",
                          "seconds": round(time.perf_counter() - start, 3), **info}
        if len(x) < MIN_CELLS_PER_WORD * self.k:
            self.fit_info_["advice"] = small_set_advice(len(x), self.k)
        return self

    def encode(self, cells: np.ndarray) -> np.ndarray:
        """(M, C) cells -> (M, dim) float32 encodings."""
        flat = (np.asarray(cells, dtype=np.float32) - self.mean_) / self.scale_
        return flat @ self.encoder_.T + self.bias_

    def assign(self, cells: np.ndarray) -> np.ndarray:
        """Nearest code of every cell's encoding: (..., C) -> (...) uint16."""
        import faiss

        if not hasattr(self, "codes_"):
            raise RuntimeError("the codebook is not fitted yet: call fit(cells) first")
        shape = cells.shape[:-1]
        z = np.ascontiguousarray(self.encode(cells.reshape(-1, cells.shape[-1])), dtype=np.float32)
        index = faiss.IndexFlatL2(self.codes_.shape[1])
        index.add(self.codes_)
        _, nearest = index.search(z, 1)
        return nearest[:, 0].astype(np.uint16).reshape(shape)

    def state(self) -> dict[str, np.ndarray]:
        """Everything :meth:`assign` needs, as arrays (``np.savez``; :meth:`from_state` reads it back)."""
        return {"codes": self.codes_, "encoder": self.encoder_, "bias": self.bias_, "mean": self.mean_,
                "scale": self.scale_, "centroids": self.centroids_}

    @classmethod
    def from_state(cls, state) -> "VQCodebook":
        codebook = cls(k=len(state["codes"]), dim=state["codes"].shape[1])
        for name in ("codes", "encoder", "bias", "mean", "scale", "centroids"):
            setattr(codebook, f"{name}_", np.ascontiguousarray(state[name], dtype=np.float32))
        return codebook


def _train(vq: VQCodebook, x, dim: int, generator, rng: np.random.Generator) -> dict:
    """The VQ-VAE loop on standardised cells ``x`` (M, C) torch float32; sets the learned attributes."""
    import torch

    m, channels = x.shape
    # PCA start: the encoder keeps the directions KMeans would see most of
    _, _, vt = torch.linalg.svd(x[torch.randperm(m, generator=generator)[:min(m, 20_000)]], full_matrices=False)
    encoder = torch.nn.Linear(channels, dim)
    decoder = torch.nn.Linear(dim, channels)
    with torch.no_grad():
        encoder.weight.copy_(vt[:dim]), encoder.bias.zero_()
        decoder.weight.copy_(vt[:dim].T), decoder.bias.zero_()
        codes = encoder(x[torch.from_numpy(rng.choice(m, vq.k, replace=False))]).clone()
    # counts start at a code's fair share of a batch: starting lower (1.0 when batch / k > 33) put every
    # code under the dead threshold and restarted them all on every step
    fair = min(vq.batch, m) / vq.k
    ema_count, ema_sum = torch.full((vq.k,), fair), codes * fair
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=vq.lr)
    restarts, loss_value = 0, float("nan")
    for _ in range(vq.steps):
        batch = x[torch.randint(0, m, (min(vq.batch, m),), generator=generator)]
        z = encoder(batch)
        nearest = torch.cdist(z.detach(), codes).argmin(dim=1)
        quantised = codes[nearest]
        reconstruction = decoder(z + (quantised - z).detach())  # straight-through
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + vq.beta * torch.nn.functional.mse_loss(
            z, quantised)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            restarts += ema_step(codes, ema_count, ema_sum, z.detach(), nearest, vq.decay, generator)
        loss_value = loss.item()
    with torch.no_grad():
        vq.codes_ = codes.numpy().astype(np.float32)
        vq.encoder_ = encoder.weight.numpy().astype(np.float32)
        vq.bias_ = encoder.bias.numpy().astype(np.float32)
        vq.centroids_ = (decoder(codes).numpy() * vq.scale_ + vq.mean_).astype(np.float32)
    used = int(len(np.unique(vq.assign(x.numpy() * vq.scale_ + vq.mean_))))
    return {"words_used": used, "restarts": int(restarts), "reconstruction": round(loss_value, 5)}


def ema_step(codes, ema_count, ema_sum, z, nearest, decay: float, generator) -> int:
    """One EMA step of the code vectors, in place, then dead codes restarted at random encodings of
    the batch; returns how many were restarted. The one update of :class:`VQCodebook` and of
    ``mlfix train --vq-words`` (:class:`mlfix.training.vq_head.VQHead`), on any device.

    Shapes: ``codes`` and ``ema_sum`` (k, dim), ``ema_count`` (k,), ``z`` (B, dim) the batch's
    encodings, ``nearest`` (B,) int64 their codes; ``generator`` a CPU ``torch.Generator``.
    The counts are Laplace-smoothed (van den Oord et al. 2017, appendix) so that a rarely used code
    does not divide by ~0; a code whose count falls under ``DEAD_AFTER`` of its fair share of a
    batch is dead.

    >>> import torch
    >>> codes, count, total = torch.zeros(2, 1), torch.ones(2), torch.zeros(2, 1)
    >>> ema_step(codes, count, total, torch.tensor([[1.0], [3.0]]), torch.tensor([0, 0]), 0.5,
    ...          torch.Generator().manual_seed(0))
    0
    >>> count.tolist(), codes[0].item()
    ([1.5, 0.5], 1.3333...)
    """
    import torch

    k = len(codes)
    ema_count.mul_(decay).add_(torch.bincount(nearest, minlength=k).to(z.dtype), alpha=1 - decay)
    ema_sum.mul_(decay).add_(torch.zeros_like(ema_sum).index_add_(0, nearest, z), alpha=1 - decay)
    total = ema_count.sum()
    smoothed = (ema_count + 1e-5) / (total + k * 1e-5) * total
    codes.copy_(ema_sum / smoothed[:, None])
    fair = len(z) / k
    dead = ema_count < DEAD_AFTER * fair
    count = int(dead.sum())
    if count:
        picks = z[torch.randint(0, len(z), (count,), generator=generator).to(z.device)]
        codes[dead], ema_sum[dead], ema_count[dead] = picks, picks * fair, fair
    return count
