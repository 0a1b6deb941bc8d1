"""AppTest for the Training page: the loss curve, speed and stage progress, and background jobs
(start, resume, stop, kill, crash) started from its buttons."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from mlfix.service import jobs
from tests.ui.test_app_pages import app_on, plotly_figures, project_copy, values  # noqa: F401 (a fixture)


# ------------------------------------------------------------------------------------ training


def write_train_log(project_dir: Path, steps: int = 30) -> None:
    lines = [{"job": "train", "time": 1000.0 + s, "stage": "train", "done": s, "total": 100, "step": s,
              "epoch": 1 + s // 10, "loss": 50.0 - s, "images_per_s": 123.4, "eta_s": 100 - s}
             for s in range(1, steps + 1)]
    (project_dir / "progress").mkdir(exist_ok=True)
    (project_dir / "progress" / "train.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))


def test_training_page_shows_the_loss_curve_speed_eta_and_stage_progress(project_copy):
    write_train_log(project_copy.dir)
    (project_copy.dir / "progress" / "index.jsonl").write_text(
        json.dumps({"job": "index", "time": 1.0, "stage": "features", "done": 200, "total": 200}) + "\n" +
        json.dumps({"job": "index", "time": 2.0, "stage": "words", "done": 50, "total": 200}) + "\n")
    at = app_on(project_copy.dir, "app_pages/training.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Epoch": "4", "Loss": "20", "Images/s": "123.4", "ETA": "1 min 10 s"}
    loss = plotly_figures(at)[0]
    assert values(loss.data[0].x) == list(range(1, 31))
    assert values(loss.data[0].y) == [50.0 - s for s in range(1, 31)]
    bars = {p.proto.text.split(" · ")[0]: p.proto.value for p in at.get("progress")}
    assert bars["training: step 30 of 100"] == 30
    assert bars["features: 200 of 200"] == 100
    assert bars["words: 50 of 200"] == 25
    assert [b.label for b in at.button] == ["Start training", "Index again", "Start fine-tuning"]
    # an unfinished log written moments ago: work started from a terminal, followed live
    assert any("started outside the app" in c.value for c in at.caption)
    write_train_log(project_copy.dir, steps=100)  # both runs finished
    (project_copy.dir / "progress" / "index.jsonl").write_text(
        json.dumps({"job": "index", "time": 3.0, "stage": "orders", "done": 11, "total": 11}) + "\n")
    at.run()
    assert not any("started outside the app" in c.value for c in at.caption)


def test_a_long_training_log_is_thinned_for_the_browser(project_copy):
    write_train_log(project_copy.dir, steps=5000)
    at = app_on(project_copy.dir, "app_pages/training.py")
    steps = values(plotly_figures(at)[0].data[0].x)
    assert len(steps) <= 2000 and steps[0] == 1 and steps[-1] == 5000
    assert {m.label: m.value for m in at.metric}["Loss"] == "-4950"  # the latest record, not a thinned one


def test_training_buttons_start_a_background_job_with_the_chosen_settings(project_copy, monkeypatch):
    # The job runs a harmless command instead of real training; the page does not know the difference.
    def harmless(project_dir, kind, args=()):
        return [sys.executable, "-c", f"print('pretend {kind}', {list(map(str, args))!r})"]

    monkeypatch.setattr(jobs, "mlfix_command", harmless)
    at = app_on(project_copy.dir, "app_pages/training.py")
    at.number_input(key="tr_epochs").set_value(3)
    at.checkbox(key="tr_flip").uncheck()
    at.number_input(key="tr_vq").set_value(70)  # rounded down to a multiple of 8, as --vq-words needs
    at.button(key="tr_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    record = jobs.current_job(project_copy.dir)
    assert record["kind"] == "train"
    assert record["args"][:2] == ["--epochs", "3"] and "--no-flip" in record["args"]
    assert record["args"][-2:] == ["--vq-words", "64"]
    status = jobs.wait_job(project_copy.dir, timeout=60)
    assert status.state == "finished" and "pretend train" in status.log_tail
    at.run()
    assert any("Training finished" in s.value for s in at.success)


def test_a_checkpoint_offers_resume_with_its_settings_or_a_fresh_start(project_copy, monkeypatch):
    monkeypatch.setattr(jobs, "mlfix_command", lambda project_dir, kind, args=(): [sys.executable, "-c", "pass"])
    models = project_copy.dir / "models"
    models.mkdir()
    (models / "last.pt").write_bytes(b"weights")
    (models / "last.json").write_text(json.dumps({
        "settings": {"epochs": 7, "batch_size": 64, "image_size": 96, "init": "random", "flip": False,
                     "head_dim": 1024}, "epoch": 3, "step": 30, "total_steps": 70, "loss": 812.5}))
    at = app_on(project_copy.dir, "app_pages/training.py")
    assert at.button(key="tr_start").label == "Resume training"
    assert any("epoch **3** of 7" in m.value and "loss 812.5" in m.value for m in at.markdown)
    # the form starts from the checkpoint's settings, so a resume continues the same run
    assert (at.number_input(key="tr_epochs").value, at.number_input(key="tr_batch").value,
            at.number_input(key="tr_size").value, at.checkbox(key="tr_flip").value) == (7, 64, 96, False)
    at.button(key="tr_restart").click().run()
    assert not at.exception and not (models / "last.pt").exists()
    (kept,) = models.glob("previous-*/last.pt")  # set aside, never deleted
    assert kept.read_bytes() == b"weights"
    assert jobs.current_job(project_copy.dir)["kind"] == "train"
    jobs.wait_job(project_copy.dir, timeout=60)


def test_a_running_job_can_be_stopped_from_the_page_and_a_second_is_refused(project_copy):
    jobs.start_job(project_copy.dir, "train",
                   command=[sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"])
    try:
        at = app_on(project_copy.dir, "app_pages/training.py")
        assert any("is running" in i.value for i in at.info)
        assert at.button(key="tr_start").disabled and at.button(key="ix_start").disabled
        with pytest.raises(jobs.JobRunningError):  # a second tab pressing Start gets a clear refusal
            jobs.start_job(project_copy.dir, "index")
        at.button(key="tr_stop").click().run()
        assert jobs.wait_job(project_copy.dir, timeout=30).state == "stopped"
        assert jobs.stop_requested_at(project_copy.dir) is not None
        at.run()
        assert any("was stopped" in w.value for w in at.warning)
    finally:
        jobs.stop_job(project_copy.dir, force=True)


def test_a_job_that_ignores_stop_can_be_killed_from_the_page(project_copy):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    jobs.start_job(project_copy.dir, "train", command=[sys.executable, "-c", code])
    try:
        for _ in range(400):
            if "ready" in jobs.job_status(project_copy.dir).log_tail:
                break
            time.sleep(0.05)
        jobs.stop_job(project_copy.dir)
        record = jobs.current_job(project_copy.dir)  # pretend the stop was asked for a minute ago
        (project_copy.dir / "jobs" / f"{record['job_id']}.stop").write_text(str(time.time() - 60))
        at = app_on(project_copy.dir, "app_pages/training.py")
        assert any("has not stopped" in w.value for w in at.warning)
        at.button(key="tr_kill").click().run()
        assert jobs.wait_job(project_copy.dir, timeout=30).state == "stopped"
    finally:
        jobs.stop_job(project_copy.dir, force=True)


def test_a_job_that_crashes_is_a_clear_message_with_its_log(project_copy):
    jobs.start_job(project_copy.dir, "index",
                   command=[sys.executable, "-c", "raise MemoryError('the cat ate the RAM')"])
    jobs.wait_job(project_copy.dir, timeout=60)
    at = app_on(project_copy.dir, "app_pages/training.py")
    assert any("Indexing failed" in e.value and "exit code 1" in e.value for e in at.error)
    assert any("MemoryError: the cat ate the RAM" in c.value for c in at.code)
