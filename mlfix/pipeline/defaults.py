"""What an index run with no options means, said in one line, and how long a setting will take.

``image_size = "auto"`` is resolved here from the sample table (the median short side of the readable
images or boxes, :func:`typical_side`, through :func:`mlfix.settings.auto_image_size`), so the cache
keys hold the size actually used. :func:`describe` is the line ``mlfix index`` prints before it starts
(which backbone, weights and size, and why); :func:`estimate` times one batch of the chosen backbone
and multiplies out images x forward passes x seconds per pass.

    >>> import pandas as pd
    >>> from mlfix.settings import IndexSettings
    >>> samples = pd.DataFrame({"width": [32, 32, 32], "height": [32, 32, 30], "status": ["ok"] * 3})
    >>> typical_side(samples)
    32.0
    >>> settings, side = resolve_image_size(IndexSettings(), samples)
    >>> settings.image_size
    224
    >>> describe(settings, "offline ImageNet weights (no trained checkpoint)", side, auto_size=True)
    'indexing with efficientnet_lite0, offline ImageNet weights (no trained checkpoint), 224 px (auto: images are about 32 px), 1 forward pass per image'
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlfix.settings import AUTO, IndexSettings, auto_image_size, forward_passes


def typical_side(samples: pd.DataFrame) -> float | None:
    """Median short side in px of the readable samples (a box's size for COCO crops); None if unknown."""
    if len(samples) == 0 or "width" not in samples or "height" not in samples:
        return None
    rows = samples[samples["status"] == "ok"] if "status" in samples else samples
    width = pd.to_numeric(rows["width"], errors="coerce").to_numpy(dtype=np.float64)
    height = pd.to_numeric(rows["height"], errors="coerce").to_numpy(dtype=np.float64)
    if "box_w" in rows and "box_h" in rows:  # crops: the box is what the backbone sees
        box_w = pd.to_numeric(rows["box_w"], errors="coerce").to_numpy(dtype=np.float64)
        box_h = pd.to_numeric(rows["box_h"], errors="coerce").to_numpy(dtype=np.float64)
        width, height = np.where(np.isnan(box_w), width, box_w), np.where(np.isnan(box_h), height, box_h)
    sides = np.fmin(width, height)
    sides = sides[np.isfinite(sides) & (sides > 0)]
    return float(np.median(sides)) if len(sides) else None


def resolve_image_size(settings: IndexSettings, samples: pd.DataFrame) -> tuple[IndexSettings, float | None]:
    """``(settings with a number for image_size, the images' typical side)``; a number stays as set."""
    side = typical_side(samples)
    if settings.image_size != AUTO:
        return settings, side
    return settings.replace(image_size=auto_image_size(side)), side


def describe(settings: IndexSettings, weights_text: str, side: float | None, auto_size: bool,
             quality: str | None = None) -> str:
    """The one line that says which backbone, weights and image size a run uses, and why."""
    if auto_size:
        why = f"auto: images are about {side:.0f} px" if side else "auto: image sizes unknown"
    else:
        why = "as set" + (f"; images are about {side:.0f} px" if side else "")
    passes = forward_passes(settings)
    flip = ", with the mirror image" if settings.tta_flip else ""
    head = f"quality {quality}: indexing" if quality else "indexing"
    return (f"{head} with {settings.backbone}, {weights_text}, {settings.image_size} px ({why}){flip}, "
            f"{passes} forward pass{'es' if passes != 1 else ''} per image")


def duration_text(seconds: float) -> str:
    """A time estimate in words: ``"40 s"``, ``"12 min"``, ``"2.5 h"``.

    >>> duration_text(40), duration_text(720), duration_text(9000)
    ('40 s', '12 min', '2.5 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Estimate:
    """How long extracting the features will take: images x passes x seconds per pass."""

    images: int
    passes: int
    seconds_per_pass: float

    @property
    def seconds(self) -> float:
        return self.images * self.passes * self.seconds_per_pass

    def __str__(self) -> str:
        return (f"estimate: about {duration_text(self.seconds)} for the features ({self.images:,} images x {self.passes} forward "
                f"passes x {self.seconds_per_pass:.3f} s, timed on one batch here; decoding and the "
                f"codebook come on top)")


def estimate(settings: IndexSettings, weights: str, images: int, device: str | None = None,
             batch: int = 8) -> Estimate:
    """Time one batch of ``settings``' backbone at its image size (after a warm-up batch)."""
    import torch

    from mlfix.pipeline.backbone import create_backbone

    if settings.image_size == AUTO:
        raise ValueError("resolve image_size 'auto' first (resolve_image_size)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = create_backbone(settings.backbone, weights, settings.cell_stride).eval().to(dev)
    members = len(settings.backbone.split("+"))
    size = int(settings.image_size)
    with torch.inference_mode():
        model(torch.zeros(2, 3, size, size, device=dev))  # warm-up: first calls allocate
        start = time.perf_counter()
        model(torch.zeros(batch, 3, size, size, device=dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return Estimate(images=int(images), passes=forward_passes(settings),
                    seconds_per_pass=seconds / batch / members)
