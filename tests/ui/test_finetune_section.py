"""The Training page's fine-tuning section: it starts `mlfix finetune` with the chosen settings, shows
the folds' progress from the job's log, and the last result with a warning near chance."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from mlfix.project import Project
from mlfix.service import jobs
from mlfix.training.finetune import FinetuneResult
from tests.ui.test_app_pages import app_on, copy_project


@pytest.fixture
def project_copy(demo_project, tmp_path) -> Project:
    return Project.open(copy_project(demo_project, tmp_path / "project"))


def test_the_button_starts_a_finetune_job_with_the_chosen_settings(project_copy, monkeypatch):
    monkeypatch.setattr(jobs, "mlfix_command", lambda project_dir, kind, args=(): [
        sys.executable, "-c", f"print('pretend {kind}', {list(map(str, args))!r})"])
    at = app_on(project_copy.dir, "app_pages/training.py")
    assert any("Not fine-tuned yet" in c.value for c in at.caption)
    assert at.number_input(key="ft_folds_default").value == 3  # the default preset's fields
    assert at.selectbox(key="ft_backbone_default").value == project_copy.settings.backbone.split("+")[0]
    at.radio(key="ft_quality").set_value("best").run()
    assert at.number_input(key="ft_folds_best").value == 3 and at.selectbox(key="ft_train_best").value == "last2"
    assert at.selectbox(key="ft_backbone_best").value == "resnet18"  # the test project's own network stays
    at.number_input(key="ft_folds_best").set_value(4)
    at.selectbox(key="ft_train_best").set_value("last3")
    at.selectbox(key="ft_backbone_best").set_value("efficientnet_lite2")
    at.run()
    assert at.checkbox(key="ft_flip_best_efficientnet_lite2").value  # mirror images unless told
    at.checkbox(key="ft_flip_best_efficientnet_lite2").uncheck()
    at.button(key="ft_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    record = jobs.current_job(project_copy.dir)
    assert record["kind"] == "finetune"
    assert record["args"][:4] == ["--backbone", "efficientnet_lite2", "--folds", "4"]
    assert record["args"][-3:] == ["--train", "last3", "--no-flip"]
    assert jobs.wait_job(project_copy.dir, timeout=60).state == "finished"


def test_the_folds_progress_and_the_last_result_are_shown(project_copy):
    log = project_copy.dir / "progress" / "finetune.jsonl"
    log.parent.mkdir(exist_ok=True)
    records = [{"note": "estimate: about 12 min (trunk cache 2 min, training 10 min; 3 fold(s) left x 4 epochs)"},
               {"stage": "finetune cache", "done": 200, "total": 200},
               {"stage": "fold 1/3", "done": 10, "total": 10, "epoch": 4, "loss": 0.3},
               {"stage": "fold 2/3", "done": 5, "total": 10, "epoch": 2, "loss": 0.5, "images_per_s": 80.0}]
    log.write_text("".join(json.dumps({"job": "finetune", "time": 1.0, **r}) + "\n" for r in records))
    n = 4
    FinetuneResult(np.array([f"s{i}" for i in range(n)], dtype=object), np.full((n, 2), 0.5, dtype=np.float32),
                   ["a", "b"], np.zeros(n, dtype=np.int64),
                   {"oof_accuracy": 0.52, "chance_accuracy": 0.5, "cross_validated": 4, "wall_s": 60, "cpu_s": 90,
                    "device": "cpu"}).save(project_copy.dir / "finetune")
    at = app_on(project_copy.dir, "app_pages/training.py")
    bars = {p.proto.text: p.proto.value for p in at.get("progress")}
    assert bars["fold 2/3: 5 of 10 (epoch 2, loss 0.5, images per s 80.0)"] == 50
    assert bars["fold 1/3: 10 of 10 (epoch 4, loss 0.3)"] == 100
    assert any(c.value.startswith("estimate: about 12 min") for c in at.caption)
    assert any("out-of-fold accuracy 52.0%" in m.value for m in at.markdown)
    assert any("barely beats chance" in w.value for w in at.warning)
