"""Indexing when no image decodes: the first reasons, with paths, instead of a KMeans error."""

from __future__ import annotations

import pytest

from mlfix.errors import NoReadableSamplesError, NotAProjectError
from mlfix.project import Project
from tests.conftest import FAST_SETTINGS


@pytest.mark.parametrize("cell_cache_gb", [4.0, 0.0], ids=["cell cache", "two passes"])
def test_images_that_all_fail_to_decode_name_their_reasons(tiny_image_folder, tmp_path, cell_cache_gb):
    for path in tiny_image_folder.rglob("*.png"):  # the header reads, the pixels do not
        path.write_bytes(path.read_bytes()[:80])
    project = Project.create(tmp_path / "p", images=tiny_image_folder, cell_cache_gb=cell_cache_gb,
                             **FAST_SETTINGS)
    assert len(project.samples) == 40  # the scan read every header
    with pytest.raises(NoReadableSamplesError) as caught:
        project.index()
    message = str(caught.value)
    assert "has no readable samples" in message and "the first reasons:" in message
    assert message.count("\n  blue/") + message.count("\n  green/") + message.count("\n  red/") \
        + message.count("\n  yellow/") == 5
    assert str(project.dir / "problems.parquet") in message


def test_a_hand_written_project_without_a_sample_table_says_how_to_make_one(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "mlfix.toml").write_text(f'[source]\nimages = "{tmp_path / "images"}"\n')
    with pytest.raises(NotAProjectError, match="no sample table.*mlfix index --images"):
        Project.open(tmp_path).index(weights="random")
