"""Small Barlow Twins runs for the training tests: 24 generated shapes, settings that train in
seconds on a CPU, and a progress log that can kill a run at a chosen step."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mlfix.data.images import DataRoot
from mlfix.data.scan import scan
from mlfix.progress import Progress, read_progress

FAST = dict(backbone="resnet18", batch_size=8, image_size=32, head_dim=64, workers=0, seed=0,
            device="cpu")


class Killed(Exception):
    """Stands in for a kill in the middle of training."""


class KillAt(Progress):
    """A progress log that records every step and dies when training reaches ``step``."""

    def __init__(self, log_dir: Path, step: int | None = None):
        super().__init__("train", log_dir, terminal=False, min_interval=0.0)
        self.kill_step = step

    def update(self, stage, done, total, **extra):
        super().update(stage, done, total, **extra)
        if stage == "train" and self.kill_step is not None and extra.get("step") == self.kill_step:
            raise Killed(f"killed at step {self.kill_step}")


def make_shapes(folder: Path) -> tuple[DataRoot, pd.DataFrame]:
    """24 coloured shapes (3 kinds x 8), 32-48 px, as an ImageFolder."""
    rng = np.random.default_rng(0)
    for i in range(24):
        kind = ("circle", "square", "triangle")[i % 3]
        side = int(rng.integers(32, 49))
        image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw = ImageDraw.Draw(image)
        colour = tuple(int(v) for v in rng.integers(120, 256, 3))
        a, b = int(side * 0.2), int(side * 0.8)
        if kind == "circle":
            draw.ellipse((a, a, b, b), fill=colour)
        elif kind == "square":
            draw.rectangle((a, a, b, b), fill=colour)
        else:
            draw.polygon([(a, b), (b, b), ((a + b) // 2, a)], fill=colour)
        (folder / kind).mkdir(parents=True, exist_ok=True)
        image.save(folder / kind / f"{i:02d}.png")
    return DataRoot(folder), scan(folder).samples


def copy_models(project: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(project / "models", tmp_path / "models"))


def train_records(log_dir: Path) -> list[dict]:
    return [r for r in read_progress(log_dir / "train.jsonl") if r.get("stage") == "train"]
