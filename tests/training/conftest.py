"""Fixtures of the training tests: one compute thread, a folder of shapes, one finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlfix.progress import Progress
from mlfix.training.barlow_twins import train_barlow_twins
from tests.training.tiny_runs import FAST, make_shapes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One compute thread: these steps are tiny, and on a busy machine two threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shapes(tmp_path: Path):
    return make_shapes(tmp_path / "images")


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    """One finished 1-epoch run, shared: (root, samples, project folder). Copy before changing it."""
    base = tmp_path_factory.mktemp("trained")
    root, samples = make_shapes(base / "images")
    project = base / "project"
    train_barlow_twins(root, samples, project / "models", epochs=1,
                       progress=Progress("train", project / "progress", terminal=False), **FAST)
    return root, samples, project
