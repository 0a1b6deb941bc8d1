"""Cross-validated fine-tuning (mlfix.training.finetune): detection, determinism, resume, odd labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlfix.data.images import DataRoot
from mlfix.data.scan import scan
from mlfix.errors import SettingsError
from mlfix.training.finetune import (FINETUNE_QUALITIES, FinetuneResult, FinetuneSettings, finetune, quality_options,
                                    training_plan)
from mlfix.training.finetune_model import TRAIN_CHOICES
from mlfix.training.loop import TrainingStopped

SIZE = 64


def blob(rng: np.random.Generator, top: bool) -> Image.Image:
    """A disc of a random colour in the top or the bottom half of a noisy background. The class is the
    half only: the pooled features of a frozen network are nearly blind to where a thing is, a
    network trained on the labels is not."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy = rng.uniform(0.15, 0.35) * SIZE if top else rng.uniform(0.65, 0.85) * SIZE
    cx, radius = rng.uniform(0.2, 0.8) * SIZE, rng.uniform(0.1, 0.16) * SIZE
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2)[..., None]
    background = rng.uniform(0, 0.6, 3) + rng.normal(0, 0.15, (SIZE, SIZE, 3))
    pixels = np.where(disc, rng.uniform(0.3, 1, 3), background)
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def blobs_folder(root: Path, n: int, error_every: int = 10) -> Path:
    """``n`` images, half "top", half "bottom"; every ``error_every``-th sits in the wrong class
    folder. The true class is in the file name (``0003_t.png``)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        top = i % 2 == 0
        true = "t" if top else "b"
        given = ("b" if top else "t") if i % error_every == 3 else true
        (root / given).mkdir(parents=True, exist_ok=True)
        blob(rng, top).save(root / given / f"{i:04d}_{true}.png")
    return root


def backbone():
    from mlfix.pipeline.backbone import create_backbone

    return create_backbone("efficientnet_lite0", weights="offline")


@pytest.fixture(scope="module")
def blobs_set(tmp_path_factory):
    folder = blobs_folder(tmp_path_factory.mktemp("blobs") / "images", 120)
    samples = scan(folder).samples
    truth = samples["path"].str.extract(r"_(\w)\.png$")[0].to_numpy(dtype=object)
    return DataRoot(folder), samples, samples["label"].to_numpy(dtype=object), truth


def small_settings(**changes) -> FinetuneSettings:
    return FinetuneSettings(**{"folds": 3, "epochs": 2, "image_size": SIZE, "batch_size": 16, "train": "last",
                               **changes})


def run(blobs_set, folder: Path, labels=None, **changes) -> FinetuneResult:
    root, samples, given, _ = blobs_set
    return finetune(root, samples, given if labels is None else labels, backbone, folder,
                    small_settings(**changes), workers=0)


@pytest.fixture(scope="module")
def trained(blobs_set, tmp_path_factory) -> FinetuneResult:
    return run(blobs_set, tmp_path_factory.mktemp("ft") / "run", epochs=10)


def test_planted_errors_rank_first_and_beat_the_frozen_probe(blobs_set, trained):
    from sklearn.metrics import roc_auc_score

    from mlfix.pipeline.features import extract
    from mlfix.scoring.probe import aligned_out_of_fold
    from mlfix.scoring.registry import compute_scores

    root, samples, given, truth = blobs_set
    wrong = given != truth
    frozen_x = np.asarray(extract(root, samples, backbone().eval(), SIZE, workers=0).pooled, dtype=np.float32)
    oof = aligned_out_of_fold(trained.probs, trained.classes, trained.fold, given)
    tuned = compute_scores(frozen_x, given, samples["sample_id"], methods=["loss"], probabilities=oof)
    frozen = compute_scores(frozen_x, given, samples["sample_id"], methods=["loss"])
    tuned_auroc, frozen_auroc = roc_auc_score(wrong, tuned["score_loss"]), roc_auc_score(wrong, frozen["score_loss"])
    print(f"AUROC fine-tuned {tuned_auroc:.3f}, frozen probe {frozen_auroc:.3f}")
    assert tuned_auroc > frozen_auroc + 0.1
    top = np.argsort(-tuned["score_loss"].to_numpy())[:2 * wrong.sum()]
    assert wrong[top].sum() >= 0.75 * wrong.sum()  # most planted errors in a queue twice their number
    assert trained.summary["oof_accuracy"] > 0.75


def test_the_same_seed_gives_the_same_probabilities(blobs_set, tmp_path):
    first = run(blobs_set, tmp_path / "a", epochs=1)
    second = run(blobs_set, tmp_path / "b", epochs=1)
    np.testing.assert_array_equal(first.probs, second.probs)
    np.testing.assert_array_equal(first.fold, second.fold)


class Interrupt:
    """A progress object that stops the run once fold ``fold`` reaches step ``step``."""

    def __init__(self, fold: str, step: int, error: type[BaseException]):
        self.fold, self.step, self.error = fold, step, error

    def stage(self, name: str):
        def report(done: int, total: int, **extra) -> None:
            if name == self.fold and done >= self.step:
                raise self.error()
        return report

    def note(self, text: str) -> None:
        pass


class Notes:
    """A progress object that keeps the notes."""

    def __init__(self):
        self.notes = []

    def stage(self, name: str):
        return lambda done, total, **extra: None

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "killed"])
def test_a_run_stopped_mid_fold_resumes_to_the_uninterrupted_result(blobs_set, tmp_path, error):
    whole = run(blobs_set, tmp_path / "whole")
    root, samples, given, _ = blobs_set
    folder = tmp_path / "stopped"
    # fold 2 has 5 steps per epoch: stop in its second epoch (after the epoch-1 checkpoint)
    with pytest.raises(TrainingStopped if error is KeyboardInterrupt else RuntimeError):
        finetune(root, samples, given, backbone, folder, small_settings(), workers=0,
                 progress=Interrupt("fold 2/3", 7, error))
    assert (folder / "fold0.done.pt").exists() and (folder / "fold1.pt").exists()
    notes = Notes()
    resumed = finetune(root, samples, given, backbone, folder, small_settings(), workers=0, progress=notes)
    np.testing.assert_allclose(resumed.probs, whole.probs, atol=1e-6)
    assert any(n.startswith("resuming fold 2/3 from its checkpoint: epoch 2, step") for n in notes.notes)


def test_ctrl_c_while_the_trunk_cache_fills_keeps_the_images_done(blobs_set, tmp_path):
    import json

    from mlfix.training.finetune_cache import TrunkCache

    root, samples, given, _ = blobs_set
    with pytest.raises(KeyboardInterrupt):  # after the first batch of 64
        finetune(root, samples, given, backbone, tmp_path / "run", small_settings(), workers=0,
                 progress=Interrupt("finetune cache", 32, KeyboardInterrupt))
    key = json.loads((tmp_path / "run" / "trunk.json").read_text())["key"]
    assert TrunkCache(tmp_path / "run", key).missing(len(samples)) <= len(samples) - 32
    again = finetune(root, samples, given, backbone, tmp_path / "run", small_settings(), workers=0)
    whole = run(blobs_set, tmp_path / "whole")
    np.testing.assert_allclose(again.probs, whole.probs, atol=1e-6)


def test_a_time_estimate_is_said_before_the_work_and_shrinks_with_what_is_done(blobs_set, tmp_path):
    import json

    from mlfix.progress import Progress

    root, samples, given, _ = blobs_set
    progress = Progress("finetune", tmp_path / "progress", terminal=False)
    result = finetune(root, samples, given, backbone, tmp_path / "run", small_settings(epochs=1), workers=0,
                      progress=progress)
    records = [json.loads(line) for line in (tmp_path / "progress" / "finetune.jsonl").read_text().splitlines()]
    first_note = next(i for i, r in enumerate(records) if str(r.get("note", "")).startswith("estimate: about"))
    first_cache = next(i for i, r in enumerate(records) if r.get("stage") == "finetune cache")
    assert first_note < first_cache
    assert "trunk cache" in records[first_note]["note"] and "3 fold(s) left" in records[first_note]["note"]
    assert result.summary["estimate_s"] > 0
    again = finetune(root, samples, given, backbone, tmp_path / "run", small_settings(epochs=1), workers=0,
                     progress=Progress("finetune", tmp_path / "again", terminal=False))
    assert again.summary["estimate_s"] == 0
    assert "nothing left to do" in (tmp_path / "again" / "finetune.jsonl").read_text()


def test_a_class_smaller_than_the_folds_is_trained_on_by_every_fold(blobs_set, tmp_path):
    labels = blobs_set[2].copy()
    labels[:2] = "rare"
    result = run(blobs_set, tmp_path / "rare", labels=labels, epochs=1)
    assert any("fewer labeled images than the 3 folds" in note for note in result.summary["notes"])
    assert (result.fold[:2] == -1).all() and (result.fold[2:] >= 0).all()
    assert "rare" in result.classes
    # every fold trained on them, so no prediction is out-of-fold: none is given (the scores keep the probe's)
    assert np.isnan(result.probs[:2]).all() and np.isfinite(result.probs[2:]).all()


def test_unlabeled_samples_are_predicted_by_the_fold_models(blobs_set, tmp_path):
    labels = blobs_set[2].copy()
    labels[::4] = None
    result = run(blobs_set, tmp_path / "missing", labels=labels, epochs=1)
    assert (result.fold[::4] == -1).all()
    np.testing.assert_allclose(result.probs.sum(axis=1), 1, atol=1e-5)
    assert result.classes == ["b", "t"]


def test_one_class_is_refused_with_a_message(blobs_set, tmp_path):
    with pytest.raises(SettingsError, match="at least two classes"):
        run(blobs_set, tmp_path / "one", labels=np.array(["t"] * len(blobs_set[2]), dtype=object))


@pytest.mark.parametrize("changes, message", [({"folds": 1}, "folds must be 2 to 20"),
                                              ({"train": "middle"}, "train must be one of"),
                                              ({"image_size": 8}, "image size must be 32"),
                                              ({"max_train": 3}, "max_train must be a whole number, at least"),
                                              ({"max_train": 7.5}, "max_train must be a whole number"),
                                              ({"lr": float("inf")}, "lr must be above 0 and at most 1"),
                                              ({"lr": float("nan")}, "lr must be above 0 and at most 1"),
                                              ({"lr": 2.0}, "lr must be above 0 and at most 1"),
                                              ({"weight_decay": -1}, "weight decay must be 0 to 10"),
                                              ({"flip": "false"}, "flip must be True or False"),
                                              ({"epochs": True}, "epochs must be 1 to 200"),
                                              ({"batch_size": 10 ** 9}, "batch size must be 2 to 65536")])
def test_bad_settings_say_what_is_allowed(changes, message):
    with pytest.raises(SettingsError, match=message):
        FinetuneSettings(**changes)


def test_an_unknown_option_is_refused_with_the_known_ones():
    with pytest.raises(SettingsError, match="unknown fine-tuning option.* foo; choose from backbone, folds"):
        quality_options("fast", foo=1)


@pytest.mark.parametrize("workers, device, message", [(-1, None, "workers must be 0 or more"),
                                                      (0, "tpu", "device must be cpu, cuda or cuda:N"),
                                                      (0, "cuda:99", "cuda")])
def test_bad_workers_or_device_are_refused_before_any_work(blobs_set, tmp_path, workers, device, message):
    root, samples, given, _ = blobs_set
    with pytest.raises(SettingsError, match=message):
        finetune(root, samples, given, lambda: pytest.fail("a network was built"), tmp_path / "run",
                 small_settings(), workers=workers, device=device)


def test_a_sample_smaller_than_the_classes_is_refused():
    codes = np.repeat(np.arange(10), 10)
    with pytest.raises(SettingsError, match=r"max_train \(7\) must be at least the number of classes .* \(10\)"):
        training_plan(codes, np.zeros(100, dtype=bool), folds=3, max_train=7, seed=0)


def test_a_diverged_fold_stops_with_a_message_and_saves_no_result(blobs_set, tmp_path, monkeypatch):
    from mlfix.training import finetune_fold

    monkeypatch.setattr(finetune_fold, "predict_views", lambda model, views, rows, device: np.full((len(rows), 2),
                                                                                                  np.nan))
    with pytest.raises(SettingsError, match="diverged in fold 1/3.*lower the learning rate"):
        run(blobs_set, tmp_path / "run", epochs=1)
    assert not list((tmp_path / "run").glob("fold*.done.pt")) and not (tmp_path / "run" / "result.npz").exists()


@pytest.mark.parametrize("quality", sorted(FINETUNE_QUALITIES))
def test_each_quality_preset_is_valid_settings_and_explicit_options_win(quality):
    preset = FinetuneSettings(**{k: v for k, v in quality_options(quality).items() if k != "backbone"})
    assert preset.train in ("last", "last2") and preset.folds in (3, 5)
    assert quality_options(quality, folds=4, train="head", epochs=None)["folds"] == 4
    assert quality_options(quality, train="head")["train"] == "head"


def test_the_presets_order_cost_fast_default_best():
    options = {q: quality_options(q) for q in ("fast", "default", "best")}
    fast, default, best = (FinetuneSettings(**{k: v for k, v in o.items() if k != "backbone"}) for o in options.values())
    assert TRAIN_CHOICES[fast.train] < TRAIN_CHOICES[default.train] == TRAIN_CHOICES[best.train]
    assert FinetuneSettings() == default and best.folds >= default.folds
    assert options["best"]["backbone"] == "efficientnet_lite1"  # a larger network than the index's Lite0


def test_an_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(SettingsError, match="fast, default, best"):
        quality_options("great")


def test_mlfix_finetune_passes_the_preset_and_the_options_over_it(monkeypatch):
    from mlfix.cli import main
    from mlfix.project import Project

    seen = {}
    monkeypatch.setattr(Project, "open", classmethod(lambda cls, path: Project.__new__(Project)))
    monkeypatch.setattr(Project, "finetune", lambda self, **kw: seen.update(kw) or (_ for _ in ()).throw(
        KeyboardInterrupt))
    assert main(["finetune", "--project", "p", "--quality", "best", "--epochs", "2", "--image-size", "224",
                 "--backbone", "efficientnet_lite1"]) == 130
    assert seen["quality"] == "best" and seen["epochs"] == 2 and seen["folds"] is None
    assert seen["backbone"] == "efficientnet_lite1" and seen["flip"] is None  # not given: the project decides
    for flag, flip in (("--no-flip", False), ("--flip", True)):
        assert main(["finetune", "--project", "p", "--image-size", "224", flag]) == 130
        assert seen["flip"] is flip


def test_the_sample_based_mode_cross_validates_a_stratified_subset():
    codes = np.repeat([0, 1], [80, 20])
    cv, always, notes = training_plan(codes, np.zeros(100, dtype=bool), folds=5, max_train=50, seed=0)
    assert len(cv) == 50 and len(always) == 0
    assert np.bincount(codes[cv]).tolist() == [40, 10]  # the class balance is kept
    assert "sample-based mode" in notes[0]


def test_project_scores_use_the_fine_tuned_probabilities(demo_project, tmp_path):
    from mlfix.project import Project

    shutil.copytree(demo_project.dir, tmp_path / "project")
    project = Project.open(tmp_path / "project")
    before = project.scores()
    result = project.finetune(folds=2, epochs=1, image_size=32, batch_size=16, train="last", workers=0)
    after = project.scores()
    assert result.probs.shape[0] == int(project.readable().sum())
    assert not np.allclose(before.set_index("sample_id")["score_loss"],
                           after.set_index("sample_id").loc[before["sample_id"], "score_loss"])
    assert project.cached_scores() is not None
    from mlfix.cli.status import status_lines

    line = next(line for line in status_lines(project) if line.startswith("finetune  out-of-fold accuracy"))
    assert line.endswith("; the scores use it")
    sample = before["sample_id"].iloc[0]
    other = next(c for c in result.classes if c != before["label"].iloc[0])
    project.reviews.decide([sample], "relabel", other, reviewer="ann")  # a label it did not train on
    assert "the labels changed since it trained" in project.finetune_use()
    covered = FinetuneResult.load(project.dir / "finetune")
    FinetuneResult(covered.sample_ids[1:], covered.probs[1:], covered.classes, covered.fold[1:],
                   covered.summary).save(project.dir / "finetune")  # as if an image was added since
    assert project.finetune_use().startswith("the scores do not use it")


def test_an_image_that_fails_to_decode_is_reported_and_left_out(tmp_path):
    folder = blobs_folder(tmp_path / "images", 40)
    samples = scan(folder).samples
    broken = samples["path"].iloc[5]
    (folder / broken).write_bytes(b"not an image any more")
    result = finetune(DataRoot(folder), samples, samples["label"].to_numpy(dtype=object), backbone,
                      tmp_path / "run", small_settings(epochs=1), workers=0)
    assert list(result.summary["failed"]) == [samples["sample_id"].iloc[5]]
    assert result.fold[5] == -1 and (np.delete(result.fold, 5) >= 0).all()
    assert np.isnan(result.probs[5]).all()  # no prediction: not one from a black image
    np.testing.assert_allclose(np.delete(result.probs, 5, axis=0).sum(axis=1), 1, atol=1e-5)
    from mlfix.training.finetune import summary_text

    assert "1 image(s) could not be read" in summary_text(result.summary)


def test_training_keeps_pretrained_batch_norm_statistics_and_learns_fresh_ones():
    import torch

    from mlfix.training.finetune_fold import train_keeping_batch_norm_statistics

    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    model[0].running_mean.fill_(2.0)  # learned statistics, as in pretrained weights
    train_keeping_batch_norm_statistics(model)
    model(torch.randn(8, 3) * 5 + 1).sum().backward()
    assert torch.all(model[0].running_mean == 2.0)
    assert not model[0].training and model[1].training and model.training
    assert not torch.all(model[1].running_mean == 0)  # a layer that never saw data learns them
    assert model[0].weight.grad is not None  # scale and shift still train
