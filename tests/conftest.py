"""Shared fixtures: small generated image sets and a small indexed demo project."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
# Small and fast settings for tests: a 4x4 grid of 256-d cells per image.
FAST_SETTINGS = {"backbone": "resnet18", "weights": "random", "image_size": 64, "words": 32, "batch_size": 32}

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Dummy credentials for the S3 tests' local endpoint (tests/s3.py), set before anything starts (Ray's
# workers inherit them): no test can sign a request to a real bucket, nor wait on a metadata service.
os.environ.update(AWS_ACCESS_KEY_ID="mlfix-tests", AWS_SECRET_ACCESS_KEY="mlfix-tests",
                  AWS_EC2_METADATA_DISABLED="true")
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ.pop("AWS_PROFILE", None)


def shape_image(color: tuple[int, int, int], seed: int, size: int = 48) -> Image.Image:
    """A coloured disc or square on a noisy light background, varied by ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(200, 255, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    radius = rng.integers(size // 6, size // 3)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2 if seed % 2 else (
        (abs(yy - cy) < radius) & (abs(xx - cx) < radius))
    pixels[mask] = np.clip(np.array(color) + rng.integers(-20, 20, 3), 0, 255)
    return Image.fromarray(pixels, "RGB")


def write_image_folder(root: Path, per_class: int = 10, classes=tuple(COLORS)) -> Path:
    """An ImageFolder ``root/<colour>/<n>.png``."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape_image(COLORS[name], seed=100 * c + i).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def tiny_image_folder(tmp_path: Path) -> Path:
    """40 images: 4 colour classes x 10, 48x48 PNG."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def demo_project(tmp_path_factory):
    """The demo (digits with planted errors), 200 images, indexed with fast settings."""
    from mlfix.demo import build_demo

    folder = tmp_path_factory.mktemp("demo") / "project"
    return build_demo(folder, limit=200, **FAST_SETTINGS)


def write_flat_folder(root: Path, n: int = 16) -> Path:
    """An unlabeled folder: ``n`` images at the top level (no class folders)."""
    root.mkdir(parents=True, exist_ok=True)
    colours = list(COLORS.values())
    for i in range(n):
        shape_image(colours[i % len(colours)], seed=i).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def unlabeled_project(tmp_path_factory):
    """16 unlabeled images (a flat folder), indexed with fast settings; no scores."""
    from mlfix.project import Project

    images = write_flat_folder(tmp_path_factory.mktemp("flat") / "images")
    return Project.create(tmp_path_factory.mktemp("unlabeled") / "project", images=images,
                          **FAST_SETTINGS).index()


def shared_data(name: str) -> Path:
    """A shared evaluation data set, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} is absent")
    return path


@pytest.fixture(autouse=True)
def _main_module_kept():
    """Streamlit's AppTest leaves ``sys.modules["__main__"]`` set to the app script; a process started
    later with the ``spawn`` method then re-runs the app as its main module and dies at start, and a
    ``multiprocessing.Pool`` replaces it forever (tests/bench/test_scale_bench.py hung after tests/cli)."""
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
