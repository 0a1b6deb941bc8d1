"""Visual words learned with the backbone: a VQ-VAE bottleneck over the cell grid inside ``mlfix train``.

The same layer as :mod:`mlfix.pipeline.vq` (van den Oord et al. 2017, "Neural Discrete Representation
Learning"), trained jointly with Barlow Twins instead of over frozen cells: a linear encoder maps each
standardised cell vector (C) to a ``dim``-dimensional code space, the nearest of ``k`` codes replaces
it (straight-through gradients), a linear decoder reconstructs the cell. The run's loss is the Barlow
Twins loss plus ``VQ_WEIGHT * (reconstruction + beta * commitment)``. The codes follow exponential
moving averages of the encodings assigned to them (Razavi et al. 2019, "Generating Diverse
High-Fidelity Images with VQ-VAE-2", appendix), and a code that has gone unused is restarted at a
random encoding of the batch (dead-code replacement: Dhariwal et al. 2020 "Jukebox", Zeghidour et al.
2021 "SoundStream").

The cells are the backbone's stride-16 stage (:class:`mlfix.pipeline.backbone.Backbone` returns
``(cells, pooled)``), the grid the index assigns words to. Standardisation works like batch
normalisation (Ioffe and Szegedy 2015): in training each batch is standardised by its own mean (C,)
and overall standard deviation, so the VQ loss cannot shrink by scaling the cells, while running
averages (EMA) are kept for use on other cells; before a checkpoint they are re-estimated in eval
mode on un-augmented images (as the backbone's batch-norm statistics are), the cells an index sees.
On the first batch the encoder starts as the cells' PCA and the codes as a seeded sample of
encodings, so training starts where KMeans would.

:meth:`VQHead.codebook_state` exports ``codes, encoder, bias, mean, scale, centroids`` (float32 CPU
tensors, the names of :meth:`mlfix.pipeline.vq.VQCodebook.state`): ``VQCodebook.from_state({k:
v.numpy()})`` assigns cells as :meth:`VQHead.nearest` does. ``centroids = decoder(codes) * scale + mean``.

Example:
    >>> import torch
    >>> head = VQHead(channels=32, k=16, seed=0)
    >>> loss = head(torch.randn(4, 32, 3, 3), torch.randn(4, 32, 3, 3))   # two views' cell grids
    >>> loss.shape, head.nearest(torch.randn(5, 32)).shape, head.codebook_state()["centroids"].shape
    (torch.Size([]), torch.Size([5]), torch.Size([16, 32]))
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from mlfix.pipeline.vq import ema_step

VQ_WEIGHT = 1.0  # of the VQ losses beside the Barlow Twins loss
BETA = 0.25      # commitment weight (the paper's value, as VQCodebook)
DECAY = 0.99     # EMA decay of the codes and of the running statistics
MAX_DIM = 64     # code space dimensions: min(C, 64), as VQCodebook
STATE_NAMES = ("codes", "encoder", "bias", "mean", "scale", "centroids")


class VQHead(nn.Module):
    """VQ-VAE bottleneck over cell grids, trained with the backbone.

    Args:
        channels: cell channels C (``backbone.cell_channels``).
        k: number of words (codes).
        dim: code space dimensions (default min(C, 64)).
        seed: seeds the first codes and the dead-code restarts (with the step: resumable).
        decay, beta, weight: EMA decay, commitment weight, weight of the VQ losses in the run's loss.

    ``forward(*grids)`` takes (B, C, h, w) cell grids and returns the weighted VQ loss (a scalar);
    in training mode it also moves the codes (EMA), restarts dead codes and the running statistics
    (in eval mode the running statistics standardise the cells and nothing moves).
    """

    def __init__(self, channels: int, k: int, dim: int | None = None, *, seed: int = 0,
                 decay: float = DECAY, beta: float = BETA, weight: float = VQ_WEIGHT):
        super().__init__()
        dim = min(channels, dim or MAX_DIM)
        self.k, self.seed, self.decay, self.beta, self.weight = k, seed, decay, beta, weight
        self.encoder, self.decoder = nn.Linear(channels, dim), nn.Linear(dim, channels)
        for name, value in (("codes", torch.zeros(k, dim)), ("ema_count", torch.ones(k)),
                            ("ema_sum", torch.zeros(k, dim)), ("mean", torch.zeros(channels)),
                            ("scale", torch.ones(channels)), ("steps", torch.zeros((), dtype=torch.long)),
                            ("restarts", torch.zeros((), dtype=torch.long)),
                            ("reconstruction", torch.full((), float("nan")))):
            self.register_buffer(name, value)

    def forward(self, *grids: torch.Tensor) -> torch.Tensor:
        x = torch.cat([g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]) for g in grids]).float()
        if self.training:  # the batch's own statistics, as batch norm; the running ones in eval mode
            mean = x.mean(dim=0)
            scale = (x - x.mean()).square().mean().sqrt().clamp_min(1e-6)  # numpy's x.std(), as VQCodebook
        else:
            mean, scale = self.mean, self.scale
        x = (x - mean) / scale
        if self.training:
            with torch.no_grad():
                self._track(mean, scale)
                if int(self.steps) == 0:
                    self._start(x.detach())
        z = self.encoder(x)
        nearest = torch.cdist(z.detach(), self.codes).argmin(dim=1)
        quantised = self.codes[nearest]
        reconstruction = F.mse_loss(self.decoder(z + (quantised - z).detach()), x)  # straight-through
        loss = reconstruction + self.beta * F.mse_loss(z, quantised)
        if self.training:
            with torch.no_grad():
                self._ema(z.detach(), nearest)
                self.reconstruction.fill_(reconstruction.detach())
                self.steps += 1
        return self.weight * loss

    def _generator(self) -> torch.Generator:
        """CPU generator of this step: a resumed run draws what an uninterrupted one would."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))

    def _track(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        first = int(self.steps) == 0
        self.mean.lerp_(mean.detach(), 1.0 if first else 1 - self.decay)
        self.scale.lerp_(scale.detach().expand_as(self.scale), 1.0 if first else 1 - self.decay)

    def _start(self, x: torch.Tensor) -> None:
        """PCA encoder and decoder from the first batch, codes a seeded sample of its encodings."""
        _, _, vt = torch.linalg.svd(x[:20_000], full_matrices=False)
        rank = min(len(vt), self.encoder.out_features)  # a tiny first batch: the other rows stay random
        self.encoder.weight[:rank].copy_(vt[:rank]), self.encoder.bias.zero_()
        self.decoder.weight[:, :rank].copy_(vt[:rank].T), self.decoder.bias.zero_()
        m, generator = len(x), self._generator()
        picks = (torch.randperm(m, generator=generator)[:self.k] if m >= self.k
                 else torch.randint(0, m, (self.k,), generator=generator))
        self.codes.copy_(self.encoder(x[picks.to(x.device)]))
        fair = m / self.k  # counts start at a code's fair share (see mlfix.pipeline.vq._train)
        self.ema_sum.copy_(self.codes * fair), self.ema_count.fill_(fair)

    def _ema(self, z: torch.Tensor, nearest: torch.Tensor) -> None:
        """One EMA step of the codes, dead codes restarted (:func:`mlfix.pipeline.vq.ema_step`)."""
        self.restarts += ema_step(self.codes, self.ema_count, self.ema_sum, z, nearest, self.decay, self._generator())

    def encode(self, cells: torch.Tensor) -> torch.Tensor:
        """(..., C) cells -> (..., dim) encodings, standardised by the running statistics."""
        return self.encoder((cells.float() - self.mean) / self.scale)

    @torch.no_grad()
    def nearest(self, cells: torch.Tensor) -> torch.Tensor:
        """The word of every cell, (..., C) -> (...) int64: its encoding's nearest code."""
        z = self.encode(cells)
        flat = z.reshape(-1, z.shape[-1])
        return torch.cdist(flat, self.codes).argmin(dim=1).reshape(z.shape[:-1])

    @torch.no_grad()
    def calibrate(self, model, batches: Iterable[torch.Tensor], device, channels_last: bool = True) -> int:
        """Re-estimate the running mean and scale on ``model``'s eval-mode cells of ``batches`` (exact
        averages, in float64); the number of images used (0 keeps the running averages)."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        was_training, used = model.training, 0
        sums = torch.zeros(len(self.mean), dtype=torch.float64, device=self.mean.device)
        squares, cells = torch.zeros((), dtype=torch.float64, device=self.mean.device), 0
        model.eval()
        try:
            for x in batches:
                grid = model(x.to(device, memory_format=fmt))[0].double()
                sums += grid.sum(dim=(0, 2, 3))
                squares += grid.square().sum()
                cells, used = cells + grid.numel() // grid.shape[1], used + len(x)
        finally:
            model.train(was_training)
        if cells:
            mean = sums / cells
            variance = squares / (cells * len(mean)) - mean.mean().square()
            self.mean.copy_(mean), self.scale.fill_(float(variance.clamp_min(1e-12).sqrt()))
        return used

    @torch.no_grad()
    def codebook_state(self) -> dict[str, torch.Tensor]:
        """``codes, encoder, bias, mean, scale, centroids``: float32 CPU tensors (VQCodebook's names)."""
        state = {"codes": self.codes, "encoder": self.encoder.weight, "bias": self.encoder.bias,
                 "mean": self.mean, "scale": self.scale,
                 "centroids": self.decoder(self.codes) * self.scale + self.mean}
        return {name: state[name].detach().float().cpu().clone() for name in STATE_NAMES}

    def info(self) -> dict:
        """For people and the summary: words, dim, steps, restarts, reconstruction (standardised MSE)."""
        return {"words": self.k, "dim": self.encoder.out_features, "steps": int(self.steps),
                "restarts": int(self.restarts), "reconstruction": round(float(self.reconstruction), 5)}


def create_vq_head(vq_words: int, channels: int, seed: int, device) -> VQHead | None:
    """The head of a run with ``vq_words`` words (None when 0), initialised from ``seed`` without
    drawing from the global random stream (the run's augmentations stay those of a run without it)."""
    if not vq_words:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        head = VQHead(channels, vq_words, seed=seed)
    return head.to(device)


def checkpoint_entries(head: VQHead) -> dict:
    """What a checkpoint holds for the head: ``vq`` (the codebook, :meth:`VQHead.codebook_state`),
    ``vq_head`` (its full state, to resume) and ``vq_info`` (:meth:`VQHead.info`)."""
    return {"vq": head.codebook_state(), "vq_head": head.state_dict(), "vq_info": head.info()}
