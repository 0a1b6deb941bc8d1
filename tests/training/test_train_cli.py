"""`mlfix train` as a user runs it: the weights it starts from, Ctrl-C, the resume line, the advice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlfix.cli.train import default_init, index_advice
from mlfix.progress import Progress
from mlfix.training.barlow_twins import resume_text, train_barlow_twins
from mlfix.training.checkpoints import Position, checkpoint_summary
from mlfix.training.loop import TrainingStopped
from tests.training.tiny_runs import FAST, KillAt, make_shapes, train_records


class InterruptAt(KillAt):
    """A progress log that presses Ctrl-C (raises KeyboardInterrupt) when training reaches ``step``."""

    def update(self, stage, done, total, **extra):
        Progress.update(self, stage, done, total, **extra)
        if stage == "train" and extra.get("step") == self.kill_step:
            raise KeyboardInterrupt


def test_ctrl_c_saves_the_current_step_and_a_resumed_run_says_where_it_goes_on(shapes, tmp_path):
    root, samples = shapes
    models = tmp_path / "models"
    with pytest.raises(TrainingStopped) as stopped:  # 24 shapes / batch 8: 3 steps per epoch, 6 in all
        train_barlow_twins(root, samples, models, epochs=2, progress=InterruptAt(tmp_path / "log", 4), **FAST)
    assert stopped.value.checkpoint == models / "last.pt"
    assert stopped.value.where == "epoch 2 of 2, step 4 of 6"
    assert "run again to resume" in str(stopped.value)
    summary = checkpoint_summary(models)
    assert (summary["epoch"], summary["batch"], summary["step"]) == (1, 1, 4)  # not only the epoch's end

    said: list[str] = []
    train_barlow_twins(root, samples, models, epochs=2, progress=KillAt(tmp_path / "log"), say=said.append, **FAST)
    assert said == [f"resuming {models / 'last.pt'} from epoch 2 of 2, step 4 of 6"]
    assert [r["step"] for r in train_records(tmp_path / "log")] == [5, 6]
    said.clear()
    train_barlow_twins(root, samples, models, epochs=2, say=said.append, **FAST)
    assert said and "already finished epoch 2 of 2, step 6 of 6" in said[0]


def test_ctrl_c_before_the_first_step_saves_nothing_and_says_so(shapes, tmp_path, monkeypatch):
    from mlfix.training.loop import TrainingLoop

    def pressed(*_):
        raise KeyboardInterrupt

    root, samples = shapes
    monkeypatch.setattr(TrainingLoop, "_step", pressed)
    with pytest.raises(TrainingStopped) as stopped:
        train_barlow_twins(root, samples, tmp_path / "models", epochs=1, **FAST)
    assert stopped.value.checkpoint is None and "nothing to save" in str(stopped.value)
    assert not (tmp_path / "models" / "last.pt").exists()


def test_resume_text_names_epoch_and_step_of_the_totals():
    assert resume_text(Path("m/last.pt"), Position(epoch=0, batch=2, step=2), 30, 10) == \
        "resuming m/last.pt from epoch 1 of 10, step 2 of 30"
    assert resume_text(Path("m/last.pt"), Position(epoch=3, batch=0, step=9), 30, 10) == \
        "resuming m/last.pt from epoch 4 of 10, step 9 of 30"


def test_training_starts_from_the_offline_weights_when_the_backbone_has_them():
    assert default_init("efficientnet_lite0") == "offline"
    assert default_init("efficientnet_lite2") == "offline"
    assert default_init("resnet18") == "random"


def test_the_advice_after_training_fits_the_projects_weights_setting():
    assert "`mlfix index --project p --weights trained`" in index_advice("p", "offline")
    assert "`mlfix index --project p --weights trained`" in index_advice("p", "random")
    auto = index_advice("p", "auto")
    assert "the next `mlfix index --project p`" in auto and "--weights trained" not in auto


@pytest.mark.slow
def test_sigint_during_mlfix_train_saves_says_stopped_and_resumes(tmp_path):
    """A real Ctrl-C: SIGINT to the `mlfix train` process of an EfficientNet-Lite0 project set to offline
    weights. It starts from the offline weights, saves and exits 130 without a traceback; the next run
    says where it resumed, and its advice names the command that indexes with the checkpoint."""
    from mlfix.project import Project

    root, _ = make_shapes(tmp_path / "images")
    project_dir = tmp_path / "p"
    Project.create(project_dir, images=tmp_path / "images", backbone="efficientnet_lite0", weights="offline")
    command = [sys.executable, "-m", "mlfix.cli", "train", "--project", str(project_dir), "--epochs", "40",
               "--batch-size", "8", "--image-size", "32", "--head-dim", "32", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A terminal delivers Ctrl-C; a shell running these tests in the background ignores SIGINT, and a
    # child Python would inherit that and never see the signal: give the child the default back.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = project_dir / "progress" / "train.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and run.poll() is None:
        if log.exists() and any(r.get("step", 0) >= 2 for r in train_records(project_dir / "progress")):
            break
        time.sleep(0.2)
    assert run.poll() is None, run.communicate()
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, (out, err)
    assert "stopped; run again to resume" in out and "Traceback" not in err
    assert "from its offline ImageNet weights" in out
    summary = checkpoint_summary(project_dir / "models")
    assert summary["settings"]["init"] == "offline" and summary["settings"]["lr"] == pytest.approx(1e-4)
    assert 2 <= summary["step"] < 120 and f"step {summary['step']} of 120" in out
    # Mid-epoch, Ctrl-C saves first and says so; landing just after an epoch's own checkpoint (3 steps an
    # epoch here) there may be nothing new to save (a loaded machine hit that window twice running).
    if summary["step"] % 3:
        assert "stopping: saving a checkpoint at step" in out, out

    # resume to the end of the epoch after the saved one (a few steps, not the 40 epochs asked first)
    epochs = str(summary["epoch"] + 1)
    resumed = subprocess.run([*command[:7], epochs, *command[8:]], capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {project_dir / 'models' / 'last.pt'}" in resumed.stdout
    assert f"step {summary['step']} of" in resumed.stdout
    assert f"`mlfix index --project {project_dir} --weights trained`" in resumed.stdout
    assert "measured on the shared test sets" in resumed.stdout  # what it did there (README, "Figures")


def test_pretrained_weights_keep_their_batchnorm_statistics_random_ones_learn_them(shapes, tmp_path):
    """Continued training (init other than random) leaves the running statistics of the weights it
    starts from as they were; training from random weights re-estimates them."""
    import torch

    from mlfix.pipeline.backbone import create_backbone

    root, samples = shapes
    start = tmp_path / "start.pt"
    torch.manual_seed(1)
    torch.save(create_backbone("resnet18", "random").model.state_dict(), start)
    before = torch.load(start)["bn1.running_mean"]
    for init, name in ((str(start), "pretrained"), ("random", "random")):
        path = train_barlow_twins(root, samples, tmp_path / name, epochs=1, init=init, **FAST)
        saved = torch.load(path, weights_only=True)
        assert saved["settings"]["freeze_bn"] is (name == "pretrained")
        kept = torch.equal(saved["backbone"]["bn1.running_mean"], before)
        assert kept is (name == "pretrained")
