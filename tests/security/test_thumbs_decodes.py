"""Full-size decodes for thumbnails in the server process are bounded by ``limits.decode_concurrency``:
a page of large images made by every thread at once would hold all of them in memory together."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from mlfix.data.thumbnails import for_project


class SlowProject:
    """Counts how many of its images are being decoded at once."""

    def __init__(self, folder):
        self.dir = folder
        self.lock = threading.Lock()
        self.active = self.most = 0

    def image(self, sample_id, target_size=None):
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.05)  # a decode takes a while; overlap is what is measured
        with self.lock:
            self.active -= 1
        return Image.new("RGB", (40, 40), "green")


@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_thumbnail_decodes_wait_for_a_slot(tmp_path, monkeypatch, concurrency):
    monkeypatch.setenv("MLFIX_DECODE_CONCURRENCY", str(concurrency))
    project = SlowProject(tmp_path)
    paths = for_project(project, 32, workers=8).ensure_many([f"{i}.png" for i in range(12)])
    assert len(paths) == 12 and all(p.is_file() for p in paths)
    assert project.most == concurrency
