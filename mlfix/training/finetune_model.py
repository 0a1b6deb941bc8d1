"""The network side of fine-tuning: a frozen trunk run once per image, a trainable tail, a class head.

Fine-tuning a whole backbone on a CPU costs ~40 images/s at 64 px (Lite0, 2 cores); most of that is
the early, high-resolution layers, which change least when a network pretrained on ImageNet is
fine-tuned (Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014:
the first layers are general, the last ones specific). So the backbone is split at a stage boundary:

- the **trunk** (input statistics, stem and the first stages) is frozen and run once per image and
  once per mirror image; its output is cached (float16) and reused by every fold and epoch;
- the **tail** (the last ``train_stages`` stages and the final 1x1 conv) and a linear **head** are
  trained, on the cached trunk outputs, with a random shift of up to 1/8 of the map as augmentation.

``train_stages`` counts stages from the end (see :data:`TRAIN_CHOICES`): ``head`` trains the linear
head alone (a probe trained by SGD), ``all`` the whole network (the trunk is then the input
normalisation only, and the cache holds images). Supported families: timm EfficientNets (``blocks``)
and ResNets (``layer1..4``); any other backbone trains ``all``.

Example:
    >>> import torch
    >>> from mlfix.pipeline.backbone import create_backbone
    >>> parts = split_backbone(create_backbone("resnet18"), train_stages=1)
    >>> parts.trunk(torch.zeros(1, 3, 64, 64)).shape, parts.tail(torch.zeros(1, 256, 4, 4)).shape
    (torch.Size([1, 256, 4, 4]), torch.Size([1, 512]))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

TRAIN_CHOICES = {"head": 0, "last": 1, "last2": 2, "last3": 3, "all": None}  # name -> stages trained


@dataclass
class BackboneParts:
    """``trunk`` (frozen, eval mode) then ``tail`` (trained) give the pooled vector (B, ``dim``)."""

    trunk: nn.Module
    tail: nn.Module
    dim: int


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], nn.Module]:
    """(stem modules, stages, end) of a timm EfficientNet or ResNet; ValueError for other families."""
    if all(hasattr(model, name) for name in ("conv_stem", "blocks", "conv_head", "bn2")):  # EfficientNet family
        end = nn.Sequential(model.conv_head, model.bn2, model.global_pool)
        return [model.conv_stem, model.bn1], list(model.blocks), end
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # ResNet family
        stem = [model.conv1, model.bn1, model.act1, model.maxpool]
        return stem, [getattr(model, f"layer{i}") for i in range(1, 5)], nn.Sequential(model.global_pool)
    raise ValueError(f"cannot split {type(model).__name__} into stages")


def split_backbone(backbone, train_stages: int | None) -> BackboneParts:
    """Split a :class:`~mlfix.pipeline.backbone.Backbone` before its last ``train_stages`` stages
    (``None``: train everything; more stages than the network has: everything)."""
    normalise = backbone.normalise
    try:
        stem, stages, end = _stages(backbone.model)
    except ValueError:  # an unknown family: the whole network is the tail
        return _parts(nn.Sequential(normalise), _Whole(backbone.model), backbone.pooled_dim)
    if train_stages is None or train_stages >= len(stages):
        trunk, tail = nn.Sequential(normalise), nn.Sequential(*stem, *stages, end)
        return _parts(trunk, tail, backbone.pooled_dim)
    cut = len(stages) - train_stages
    trunk = nn.Sequential(normalise, *stem, *stages[:cut], *([] if train_stages else [end]))
    tail = nn.Sequential(*stages[cut:], end) if train_stages else nn.Identity()
    return _parts(trunk, tail, backbone.pooled_dim)


def _parts(trunk: nn.Module, tail: nn.Module, dim: int) -> BackboneParts:
    """The parts, with the trunk frozen (eval mode, no gradients)."""
    trunk.eval()
    for p in trunk.parameters():
        p.requires_grad_(False)
    return BackboneParts(trunk, tail, dim)


class _Whole(nn.Module):
    """A timm model as a tail: its forward gives the pooled vector."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Classifier(nn.Module):
    """The tail and a linear head: cached trunk output (B, C, H, W) -> logits (B, classes)."""

    def __init__(self, tail: nn.Module, dim: int, classes: int):
        super().__init__()
        self.tail = tail
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.tail(x)
        return self.head(pooled.flatten(1))


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each map of ``x`` (B, C, H, W) shifted by up to 1/8 of its side, edges replicated: the
    translation augmentation of small-image training, on cached feature maps too. Pooled vectors
    (B, D) and maps under 8 cells a side (where one cell is too coarse a shift) are returned as they are."""
    if x.dim() != 4 or x.shape[2] < 8:
        return x
    b, _, h, w = x.shape
    pad = h // 8
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :]).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w)[None, :]).to(x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return shifted.permute(0, 3, 1, 2).contiguous()
