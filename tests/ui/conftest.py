"""Fixtures of the app's tests."""

from __future__ import annotations

import pytest

from mlfix.project import Project


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory) -> tuple[Project, Project]:
    """Two small unindexed projects, ``alpha`` (8 samples) and ``beta`` (12), told apart by their counts."""
    from tests.conftest import write_image_folder

    root = tmp_path_factory.mktemp("projects")
    alpha = Project.create(root / "alpha", write_image_folder(root / "a", per_class=2))
    beta = Project.create(root / "beta", write_image_folder(root / "b", per_class=3))
    return alpha, beta
