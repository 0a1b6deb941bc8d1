"""Training throughput: the Barlow Twins loop against the bare forward+backward step.

    python -m bench.train [--quick] [--threads T] [--sizes 64 224]

For each image size, in one process:

- ``bare_step``: images/s of the bare training step (two views through resnet18 + a 2048-d
  projection head, lightly's BarlowTwinsLoss, backward, AdamW) on random tensors made beforehand;
- ``train_loop``: images/s of :func:`mlfix.training.barlow_twins.train_barlow_twins` on real photos (flowers17
  when present, else generated images): decoding, lightly's two-view augmentations in a DataLoader
  worker, the same step, progress records. Measured between the end of the first and the last step,
  so start-up (imports, model creation, worker start) is left out; the end-of-epoch work
  (batch-norm re-estimate and checkpoint) is reported on its own as ``epoch_end_s``;
- ``loop_vs_bare``: the ratio (goal: at least 0.9).

The bare step runs before and after the loop; its mean is the reference (the machine is shared).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import emit, parser, require_shared
from mlfix.cli.train import openmp_waits_for_training

HEAD_DIM = 2048


def bare_rate(image_size: int, batch_size: int, steps: int) -> float:
    """Images/s of the bare step: model, head, loss, backward, optimizer step; inputs premade."""
    import torch
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    from mlfix.pipeline.backbone import create_backbone

    torch.manual_seed(0)
    model = create_backbone("resnet18", "random").to(memory_format=torch.channels_last).train()
    head = BarlowTwinsProjectionHead(model.pooled_dim, HEAD_DIM, HEAD_DIM).train()
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    criterion = BarlowTwinsLoss()
    views = [torch.randn(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]

    def step():
        loss = criterion(head(model(views[0])[1]), head(model(views[1])[1]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


class StepTimes:
    """A progress sink that keeps the time of every training step (no terminal, no file)."""

    def __init__(self):
        self.times: list[float] = []

    def stage(self, name):
        def callback(done, total, **extra):
            if name == "train":
                self.times.append(time.perf_counter())
        return callback

    def record(self, **fields):
        pass

    def close(self):
        pass


def loop_rate(root, samples, image_size: int, batch_size: int, steps: int) -> tuple[float, float]:
    """(images/s between the first and last step, seconds after the last step) of the real loop."""
    import torch

    from mlfix.training.barlow_twins import train_barlow_twins

    times = StepTimes()
    with tempfile.TemporaryDirectory() as folder:
        train_barlow_twins(root, samples.iloc[:batch_size * (steps + 1)], Path(folder), epochs=1,
                           batch_size=batch_size, image_size=image_size, head_dim=HEAD_DIM, device="cpu",
                           progress=times, seed=0, workers=None)
        end = time.perf_counter()
    rate = (len(times.times) - 1) * batch_size / (times.times[-1] - times.times[0])
    return rate, end - times.times[-1]


def data(n: int):
    """flowers17 photos when present, else n generated 256 px images."""
    from mlfix.data.images import DataRoot
    from mlfix.data.scan import scan

    folder = require_shared("flowers17")
    if folder is not None:
        import pandas as pd

        table = pd.read_csv(folder / "labels.csv").sample(frac=1.0, random_state=0).iloc[:n]
        samples = pd.DataFrame({"sample_id": table["path"], "path": table["path"], "box_x": np.nan,
                                "box_y": np.nan, "box_w": np.nan, "box_h": np.nan})
        return DataRoot(folder / "images.zip"), samples.reset_index(drop=True), "flowers17"
    from PIL import Image

    out = Path(tempfile.mkdtemp()) / "images"
    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(out / f"{i:04d}.jpg")
    return DataRoot(out), scan(out).samples, "generated 256 px JPEG"


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 64 up to 64 px, else 32)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default: 5 up to 64 px, else 3)")
    args = p.parse_args()
    if len(args.sizes) == 1:  # as `mlfix train` runs at that size (set before torch is imported)
        openmp_waits_for_training(args.sizes[0])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    plans = [(32, 8, 2)] if args.quick else [
        (s, args.batch or (64 if s <= 64 else 32), args.steps or (5 if s <= 64 else 3)) for s in args.sizes]
    root, samples, source = data(max(b * (s + 1) for _, b, s in plans))
    for image_size, batch_size, steps in plans:
        setup = {"image_size": image_size, "batch_size": batch_size, "head_dim": HEAD_DIM,
                 "backbone": "resnet18", "threads": torch.get_num_threads(), "data": source,
                 "quick": args.quick, "steps": steps}
        before = bare_rate(image_size, batch_size, steps)
        loop, epoch_end = loop_rate(root, samples, image_size, batch_size, steps)
        after = bare_rate(image_size, batch_size, steps)
        bare = (before + after) / 2
        emit("train", "bare_step", round(bare, 2), "img/s", steps * batch_size,
             before=round(before, 2), after=round(after, 2), **setup)
        emit("train", "train_loop", round(loop, 2), "img/s", steps * batch_size, **setup)
        emit("train", "loop_vs_bare", round(loop / bare, 3), "ratio", steps * batch_size, **setup)
        emit("train", "epoch_end_s", round(epoch_end, 2), "s", None, **setup)


if __name__ == "__main__":
    main()
