"""How long a fine-tuning run will take, said before it starts (``mlfix finetune``, the Training page).

Three parts, each timed here on one batch after a warm-up batch (so the figure is this machine's,
CPU or GPU, and costs seconds: about 15 on 2 CPU cores at 224 px with 64 images): the trunk pass
of every image (and its mirror image) still missing from the cache, the training steps of every fold still to run (images x
epochs), and the prediction of the held-out images. Decoding the images comes on top of the trunk
pass; on a CPU busy with other work every part takes longer.

Example:
    >>> from mlfix.pipeline.backbone import create_backbone
    >>> from mlfix.training.finetune_model import split_backbone
    >>> parts = split_backbone(create_backbone("resnet18"), train_stages=1)
    >>> plan = FinetunePlan(images_to_cache=100, views=2, train_images=[60, 60], epochs=2, predict_images=120)
    >>> guess = estimate_finetune(parts, classes=3, image_size=32, plan=plan, batch=4)
    >>> guess.seconds > 0, str(guess).startswith("estimate: about")
    (True, True)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from mlfix.pipeline.defaults import duration_text


@dataclass(frozen=True)
class FinetunePlan:
    """What a run still has to do: ``images_to_cache`` trunk passes of ``views`` each; per fold still
    to train, its training images (``train_images``) for ``epochs``; ``predict_images`` held-out
    images to predict (each with its views)."""

    images_to_cache: int
    views: int
    train_images: list[int]
    epochs: int
    predict_images: int


@dataclass(frozen=True)
class FinetuneEstimate:
    """The plan and the seconds per image of each part, timed here."""

    plan: FinetunePlan
    trunk_s: float  # per image, all its views
    train_s: float  # per image per epoch (forward, backward, optimizer step)
    predict_s: float  # per image, all its views

    @property
    def parts(self) -> dict[str, float]:
        p = self.plan
        return {"trunk cache": p.images_to_cache * self.trunk_s,
                "training": sum(p.train_images) * p.epochs * self.train_s,
                "prediction": p.predict_images * self.predict_s}

    @property
    def seconds(self) -> float:
        return sum(self.parts.values())

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {duration_text(s)}" for name, s in self.parts.items() if s > 0)
        folds = len(self.plan.train_images)
        return (f"estimate: about {duration_text(self.seconds)} ({parts or 'nothing left to do'}; "
                f"{folds} fold(s) left x {self.plan.epochs} epochs; timed on one batch here, image decoding "
                "on top)")


def estimate_finetune(parts, classes: int, image_size: int, plan: FinetunePlan, device=None,
                      channels_last: bool = False, batch: int = 8) -> FinetuneEstimate:
    """Time the trunk, one training step and one prediction on ``batch`` blank images at ``image_size``
    (``parts``: :func:`~mlfix.training.finetune_model.split_backbone`'s) and scale them to ``plan``."""
    import torch

    from mlfix.training.finetune_cache import trunk_views
    from mlfix.training.finetune_fold import softmax_mean
    from mlfix.training.finetune_model import Classifier

    device = torch.device(device or "cpu")
    images = torch.zeros(batch, 3, image_size, image_size)
    flip = plan.views > 1
    trunk_s, views = _timed(lambda: trunk_views(parts.trunk, images, device, channels_last, flip), device)
    model = Classifier(copy.deepcopy(parts.tail), parts.dim, classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    maps = views[:, 0].float().to(device)
    targets = torch.zeros(batch, dtype=torch.long, device=device)

    def step() -> None:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(maps).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train_s, _ = _timed(step, device)
    predict_s, _ = _timed(lambda: softmax_mean(model, views.to(device)), device)
    return FinetuneEstimate(plan, trunk_s / batch, train_s / batch, predict_s / batch)


def _timed(run, device, repeats: int = 3, enough_s: float = 2.0):
    """(the fastest of up to ``repeats`` timed calls of ``run``, its result) after a warm-up call (which
    allocates); stops early once ``enough_s`` seconds were spent. The fastest, because a single short
    call on a busy machine can take several times as long as the calls of a real run (seen at 96 px)."""
    import torch

    out = run()
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > enough_s:
            break
    return best, out
