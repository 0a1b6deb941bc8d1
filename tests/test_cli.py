"""The `mlfix` command end to end on a tiny generated dataset."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from mlfix.cli import main
from mlfix.project import Project
from tests.conftest import shape_image


def test_index_from_a_csv_with_bad_rows_reports_problems_and_completes(tiny_image_folder, tmp_path, capsys):
    shape_image((0, 0, 0), seed=1).save(tmp_path / "outside.png")
    (tiny_image_folder / "red" / "broken.png").write_bytes(b"garbage")
    rows = [f"{c}/{i:03d}.png,{c}" for c in ("red", "green", "blue", "yellow") for i in range(10)]
    rows += ["red/broken.png,red", "../outside.png,red", "red/missing.png,red"]
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    project_dir = tmp_path / "project"
    code = main(["index", "--images", str(tiny_image_folder), "--labels", str(csv), "--project",
                 str(project_dir), "--image-size", "64", "--words", "32", "--weights", "random"])
    out = capsys.readouterr().out
    assert code == 0
    assert "40 samples indexed in 4 classes" in out
    assert "3 files skipped" in out and "leaves the data root" in out and "not an image" in out
    project = Project.open(project_dir)
    assert project.is_indexed and len(project.problems) == 3
    assert project.settings.image_size == 64 and project.settings.words == 32


def test_index_with_an_ensemble_and_flip_tta_keys_its_features_by_both(tiny_image_folder, tmp_path, capsys):
    import json

    project_dir = tmp_path / "project"
    assert main(["index", "--images", str(tiny_image_folder), "--project", str(project_dir),
                 "--backbone", "resnet18+resnet18", "--tta-flip", "--image-size", "64", "--words", "32",
                 "--weights", "random"]) == 0
    project = Project.open(project_dir)
    assert project.settings.tta_flip is True and project.settings.backbone == "resnet18+resnet18"
    assert project.pooled().shape == (40, 1024)
    key = json.loads((project_dir / "features" / "words.key.json").read_text())
    assert key["tta_flip"] is True and key["architecture"] == "resnet18+resnet18"
    assert project.scores()["score"].notna().all()
    pooled = project_dir / "features" / "pooled.npy"
    before = pooled.stat().st_mtime_ns
    assert main(["index", "--project", str(project_dir), "--no-tta-flip"]) == 0
    assert pooled.stat().st_mtime_ns != before  # the features without the mirror images are new ones
    assert "tta_flip" not in json.loads((project_dir / "features" / "words.key.json").read_text())


def test_index_without_images_on_a_new_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["index", "--project", str(tmp_path / "nothing")]) == 2
    assert "give --images to create it" in capsys.readouterr().err


def test_missing_image_source_is_a_clear_error(tmp_path, capsys):
    assert main(["index", "--images", str(tmp_path / "nope"), "--project", str(tmp_path / "p")]) == 2
    assert "image source not found" in capsys.readouterr().err


def test_scores_on_a_folder_that_is_not_a_project(tmp_path, capsys):
    assert main(["scores", "--project", str(tmp_path)]) == 2
    assert "not an mlfix project" in capsys.readouterr().err


def test_console_script_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mlfix.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "index" in result.stdout and "train" in result.stdout


def test_demo_builds_digits_with_planted_errors(demo_project):
    truth = pd.read_csv(demo_project.dir / "truth.csv")
    assert len(truth) == 200 == len(demo_project.samples)
    assert (truth["label"] != truth["true_label"]).sum() == 10  # 5% of 200
    assert demo_project.is_indexed
    assert set(demo_project.labels) <= {"zero", "one", "two", "three", "four", "five", "six", "seven",
                                        "eight", "nine"}


def test_demo_report_finds_planted_errors_far_above_chance(demo_project):
    from mlfix.demo import demo_report

    report = demo_report(demo_project)
    assert report["planted"] == 10
    # chance would put 0.5 of the 10 planted errors in the top 10 of 200
    assert report["found_in_top"] >= 3
    assert 0.5 < report["neighbour_purity"] <= 1.0


@pytest.mark.slow
def test_train_then_index_uses_the_trained_backbone_and_a_resume_keeps_its_settings(tiny_image_folder, tmp_path):
    project_dir = tmp_path / "p"
    assert main(["index", "--images", str(tiny_image_folder), "--project", str(project_dir), "--image-size", "64",
                 "--words", "16"]) == 0
    train = ["train", "--project", str(project_dir), "--batch-size", "8", "--image-size", "32", "--head-dim", "32",
             "--workers", "0"]
    assert main([*train, "--epochs", "1"]) == 0
    # a second call that names only --epochs resumes with the first run's settings (no CheckpointError)
    assert main(["train", "--project", str(project_dir), "--epochs", "2", "--workers", "0"]) == 0
    from mlfix.training.checkpoints import checkpoint_summary

    assert checkpoint_summary(project_dir / "models")["epoch"] == 2
    assert main(["index", "--project", str(project_dir)]) == 0
    key = (project_dir / "features" / "words.key.json").read_text()
    assert "last.pt" in key  # the index was rebuilt with the trained weights


def test_scores_command_writes_the_stated_columns(demo_project, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert main(["scores", "--project", str(demo_project.dir), "-o", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:5]) == ["sample_id", "path", "label", "score", "suggested_label"]
    assert {"score_knn", "score_cleanlab", "score_loss", "score_words", "score_combined"} <= set(table.columns)
    assert len(table) == len(demo_project.samples)
    assert f"{len(table)} rows" in capsys.readouterr().out


def test_training_small_crops_lets_openmp_threads_sleep_unless_the_user_chose():
    """Set before torch loads, in the process that trains (see openmp_waits_for_training)."""
    import os
    import subprocess
    import sys

    probe = ("import os, sys, mlfix.cli.train as c; c.openmp_waits_for_training(int(sys.argv[1])); "
             "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def policy(size: int, **extra) -> str:
        return subprocess.run([sys.executable, "-c", probe, str(size)], env={**env, **extra},
                              capture_output=True, text=True, timeout=120).stdout.strip()

    assert policy(64) == "PASSIVE"
    assert policy(224) == "unset"
    assert policy(64, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_scores_prints_the_20_most_suspect_first_with_label_suggestion_and_score(demo_project, capsys):
    assert main(["scores", "--project", str(demo_project.dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"The 20 most suspect of {len(demo_project.samples)} scored samples:"
    assert lines[1].split() == ["sample_id", "label", "suggested_label", "score"]
    rows = [line.split() for line in lines[2:22]]
    expected = Project.open(demo_project.dir).scores().head(20)
    assert [row[0] for row in rows] == expected["sample_id"].tolist()
    assert [row[1:3] for row in rows] == expected[["label", "suggested_label"]].values.tolist()
    printed = [float(row[3]) for row in rows]
    assert printed == sorted(printed, reverse=True) and printed[0] > printed[-1]
    assert "scores.parquet" in lines[22] and "-o scores.csv" in lines[22]


def test_index_ends_with_the_scores_and_a_scores_stage(tiny_image_folder, tmp_path, capsys):
    import json

    project_dir = tmp_path / "project"
    assert main(["index", "--images", str(tiny_image_folder), "--project", str(project_dir), "--image-size", "64",
                 "--words", "32", "--weights", "random"]) == 0
    out = capsys.readouterr().out
    assert "The 5 most suspect of 40 scored samples:" in out and f"{project_dir.resolve()}/scores.parquet" in out
    scores = project_dir / "scores.parquet"
    assert scores.exists()
    mtime = scores.stat().st_mtime_ns
    assert len(Project.open(project_dir).scores()) == 40 and scores.stat().st_mtime_ns == mtime  # up to date
    records = [json.loads(line) for line in (project_dir / "progress" / "index.jsonl").read_text().splitlines()]
    assert {"stage": "scores", "done": 1, "total": 1}.items() <= records[-1].items()  # the Training page's bar


def test_an_unlabeled_folder_indexes_and_says_what_works_instead_of_scores(unlabeled_project, capsys):
    assert main(["index", "--project", str(unlabeled_project.dir)]) == 0
    out = capsys.readouterr().out
    assert ("scores: no labels: label-error scores need at least two classes; the similarity order works: "
            "open the Review page") in out
    assert main(["scores", "--project", str(unlabeled_project.dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("mlfix scores: no labels: label-error scores need at least two classes")
    assert not (unlabeled_project.dir / "scores.parquet").exists()
