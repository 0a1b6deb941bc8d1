"""A first run without rough edges: --version, help on every serve option, the reasons when every file
fails, advice instead of faiss's warning on small sets."""

from __future__ import annotations

import pytest

import mlfix
from mlfix.cli import main

FAST = ["--backbone", "resnet18", "--weights", "random", "--image-size", "64", "--words", "32"]


def test_version_prints_mlfix_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlfix {mlfix.__version__}"


def test_every_serve_option_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--port PORT port the app listens on (default 8501)" in text
    assert "--project PROJECT project folder" in text


def test_when_every_file_fails_the_first_reasons_are_printed(tmp_path, capsys):
    images = tmp_path / "images"
    for i in range(7):
        (images / "cats").mkdir(parents=True, exist_ok=True)
        (images / "cats" / f"{i}.png").write_bytes(b"not a png")
    project = tmp_path / "project"
    assert main(["index", "--images", str(images), "--project", str(project), *FAST]) == 2
    err = capsys.readouterr().err
    assert "has no readable samples: all 7 files failed; the first reasons:" in err
    assert err.count("  cats/") == 5 and "  cats/0.png: " in err and "... and 2 more" in err
    assert str(project / "problems.parquet") in err and "see its problems table" not in err


def test_a_small_set_gets_advice_on_the_number_of_words_not_faiss_warning(tiny_image_folder, tmp_path, capfd):
    # 40 images x 4x4 cells = 640 cells for 32 words: 20 per word, under KMeans's 39
    assert main(["index", "--images", str(tiny_image_folder), "--project", str(tmp_path / "p"), *FAST]) == 0
    err = capfd.readouterr().err
    assert "WARNING clustering" not in err
    assert "640 image cells for 32 words is 20 per word (KMeans wants 39)" in err
    assert "--words 16 fits this set" in err


def test_the_index_summary_tells_clipped_boxes_from_skipped_files(tmp_path, capsys):
    from types import SimpleNamespace

    import pandas as pd

    from mlfix.cli.index import _print_summary
    from mlfix.data.scan import problems_frame

    problems = problems_frame([
        {"sample_id": "a.png#1", "path": "a.png", "stage": "clipped", "reason": "box ... clipped to [0, 0, 5, 5]"},
        {"sample_id": "b.png#2", "path": "b.png", "stage": "read", "reason": "not an image"}])
    samples = pd.DataFrame({"sample_id": ["a.png#1"], "label": ["cat"], "status": ["ok"]})
    _print_summary(SimpleNamespace(samples=samples, problems=problems, labels=["cat"], dir=tmp_path))
    out = capsys.readouterr().out
    assert "1 COCO box reached past the image edge" in out
    assert "1 files skipped" in out and "b.png" in out
