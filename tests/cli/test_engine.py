"""``mlfix index --engine local|ray [--ray-address ADDR]`` and the engine line of ``mlfix status``.

No Ray is started here: the flags are followed to the settings (and to ``Project.index``), and the
status reads an engine record written by hand in the format of ``features/engine.json``.
"""

from __future__ import annotations

import json

import pytest

from mlfix.cli import main
from mlfix.project import Project
from mlfix.settings import read_config


@pytest.fixture
def scanned(tiny_image_folder, tmp_path) -> Project:
    """A project created (scanned, not indexed) by ``mlfix index --scan-only`` with the Ray engine."""
    folder = tmp_path / "p"
    assert main(["index", "--project", str(folder), "--images", str(tiny_image_folder), "--engine", "ray",
                 "--ray-address", "auto", "--scan-only"]) == 0
    return Project.open(folder)


def test_the_engine_flags_are_kept_in_mlfix_toml(scanned, capsys):
    _, settings = read_config(scanned.dir)
    assert (settings.engine, settings.ray_address) == ("ray", "auto")


def test_the_engine_flags_reach_project_index(scanned, monkeypatch, capsys):
    asked = {}

    def index(self, **kwargs):
        asked.update(kwargs)
        return self

    monkeypatch.setattr(Project, "index", index)
    assert main(["index", "--project", str(scanned.dir), "--engine", "local"]) == 0
    assert asked["engine"] == "local" and "ray_address" not in asked  # not given: the project's value stays
    assert main(["index", "--project", str(scanned.dir), "--engine", "ray", "--ray-address=ray://head:10001"]) == 0
    assert (asked["engine"], asked["ray_address"]) == ("ray", "ray://head:10001")
    asked.clear()
    assert main(["index", "--project", str(scanned.dir)]) == 0
    assert "engine" not in asked and "ray_address" not in asked


def test_an_unknown_engine_or_a_bad_address_is_refused(scanned, tiny_image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["index", "--project", str(scanned.dir), "--engine", "spark"])
    assert exit_.value.code == 2 and "invalid choice: 'spark'" in capsys.readouterr().err
    assert main(["index", "--project", str(tmp_path / "q"), "--images", str(tiny_image_folder), "--engine", "ray",
                 "--ray-address", "auto; rm -rf ~", "--scan-only"]) == 2
    assert "ray_address must be 'auto', HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "q" / "mlfix.toml").exists()  # refused before the scan


def status_of(project: Project, capsys) -> str:
    assert main(["status", "--project", str(project.dir)]) == 0
    return capsys.readouterr().out


def write_engine(project: Project, record: dict) -> None:
    (project.dir / "features").mkdir(exist_ok=True)
    (project.dir / "features" / "engine.json").write_text(json.dumps(record))


def test_status_shows_the_engine_of_the_last_features_pass(scanned, capsys):
    capsys.readouterr()
    assert "engine " not in status_of(scanned, capsys)  # no features pass yet: no line
    write_engine(scanned, {"engine": "ray", "address": "auto", "actors": 1, "gpus": 0, "images": 40,
                           "seconds": 12.34})
    lines = status_of(scanned, capsys).splitlines()
    assert "engine    ray at auto, 1 actor, 0 GPUs, 40 images in 12.3 s" in lines
    write_engine(scanned, {"engine": "local", "address": None, "actors": 1, "gpus": 1, "images": 40,
                           "seconds": 3.0})
    assert ("engine    local, 1 GPU, 40 images in 3.0 s; mlfix.toml now asks for ray at auto (the results "
            "are the same)") in status_of(scanned, capsys).splitlines()


def test_the_engine_line_is_visible_text_only(scanned, capsys):
    write_engine(scanned, {"engine": "ray", "address": "evil\x1b[2J\u202e", "actors": 2, "gpus": 4,
                           "images": 1, "seconds": 0.5})
    out = status_of(scanned, capsys)
    assert ("engine    ray at evil[U+001B][2J[U+202E], 2 actors, 4 GPUs, 1 image in 0.5 s; mlfix.toml now asks "
            "for ray at auto (the results are the same)") in out.splitlines()
    assert "\x1b" not in out
