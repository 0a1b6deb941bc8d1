"""Visual words learned with the backbone (`mlfix train --vq-words K`, mlfix.training.vq_head): the
checkpoint's codebook assigns the trained backbone's cells as the head does, a seed gives the same
codes, a resumed run goes on from the saved VQ state, 0 leaves training as it was, bad K is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlfix.cli import main
from mlfix.data.images import load_image
from mlfix.errors import CheckpointError
from mlfix.pipeline.backbone import create_backbone, image_transform
from mlfix.pipeline.vq import VQCodebook
from mlfix.training.barlow_twins import train_barlow_twins
from mlfix.training.checkpoints import check_vq_words, checkpoint_summary
from mlfix.training.vq_head import STATE_NAMES, VQHead
from tests.training.tiny_runs import FAST, Killed, KillAt, copy_models, make_shapes, train_records

WORDS = 16
PLAIN_KEYS = {"backbone", "head", "optimizer", "scheduler", "epoch", "batch", "step", "settings", "loss"}


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    """One finished 1-epoch run with 16 learned words: (root, samples, models folder, progress folder)."""
    base = tmp_path_factory.mktemp("worded")
    root, samples = make_shapes(base / "images")
    train_barlow_twins(root, samples, base / "models", epochs=1, vq_words=WORDS, progress=KillAt(base / "log"),
                       **FAST)
    return root, samples, base / "models", base / "log"


def eval_cells(models, root, samples) -> np.ndarray:
    """(N, h, w, C) eval-mode cells of the trained backbone, as an index extracts them."""
    backbone = create_backbone("resnet18", weights=models / "last.pt").eval()
    transform = image_transform(FAST["image_size"])
    x = torch.stack([transform(load_image(root, row, target_size=FAST["image_size"]))
                     for row in samples.to_dict("records")])
    with torch.no_grad():
        return backbone(x)[0].permute(0, 2, 3, 1).numpy()


def head_of(saved: dict) -> VQHead:
    head = VQHead(saved["vq"]["mean"].shape[0], WORDS)
    head.load_state_dict(saved["vq_head"])
    return head


def test_the_checkpoint_codebook_assigns_the_trained_cells_as_the_head_does(worded):
    root, samples, models, logs = worded
    saved = torch.load(models / "last.pt", weights_only=True)
    vq = saved["vq"]
    shapes = {name: tuple(tensor.shape) for name, tensor in vq.items()}
    assert shapes == {"codes": (WORDS, 64), "encoder": (64, 256), "bias": (64,), "mean": (256,),
                      "scale": (256,), "centroids": (WORDS, 256)}  # resnet18's stride-16 cells: 256 channels
    assert list(vq) == list(STATE_NAMES)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in vq.values())
    head = head_of(saved)
    with torch.no_grad():
        assert torch.allclose(vq["centroids"], head.decoder(vq["codes"]) * vq["scale"] + vq["mean"])

    cells = eval_cells(models, root, samples)
    assert cells.shape == (24, 2, 2, 256)
    # the statistics were re-estimated on these eval-mode cells (the images an index sees)
    flat = cells.reshape(-1, 256).astype(np.float64)
    assert np.allclose(vq["mean"].numpy(), flat.mean(axis=0), atol=1e-4)
    assert np.allclose(vq["scale"].numpy(), flat.std(), rtol=1e-4)
    words = VQCodebook.from_state({k: v.numpy() for k, v in vq.items()}).assign(cells)
    assert words.shape == (24, 2, 2) and words.dtype == np.uint16
    assert np.array_equal(words, head.nearest(torch.from_numpy(cells)).numpy())
    assert len(np.unique(words)) >= 2

    info = checkpoint_summary(models)["vq"]
    assert info == saved["vq_info"] and (info["words"], info["dim"], info["steps"]) == (WORDS, 64, 3)
    assert all(np.isfinite(r["vq_loss"]) for r in train_records(logs))


def test_a_seed_gives_the_same_codes(worded, tmp_path):
    root, samples, models, _ = worded
    again = train_barlow_twins(root, samples, tmp_path / "models", epochs=1, vq_words=WORDS, **FAST)
    first, second = torch.load(models / "last.pt", weights_only=True), torch.load(again, weights_only=True)
    for name in STATE_NAMES:
        assert torch.equal(first["vq"][name], second["vq"][name]), name
    for name, tensor in first["vq_head"].items():
        assert torch.equal(tensor, second["vq_head"][name]), name


def test_a_resumed_run_goes_on_from_the_saved_vq_state(shapes, tmp_path, monkeypatch):
    root, samples = shapes
    models = tmp_path / "models"
    with pytest.raises(Killed):  # checkpoint_minutes=0: a checkpoint after every step; dies in step 5
        train_barlow_twins(root, samples, models, epochs=2, vq_words=WORDS, checkpoint_minutes=0,
                           progress=KillAt(tmp_path / "a", step=5), **FAST)
    saved = torch.load(models / "last.pt", weights_only=True)
    assert saved["step"] == 4 and int(saved["vq_head"]["steps"]) == 4

    with pytest.raises(CheckpointError, match="vq_words: saved 16, asked 0"):  # part of the run's settings
        train_barlow_twins(root, samples, models, epochs=2, **FAST)
    loaded = []
    monkeypatch.setattr(VQHead, "_start", lambda *_: pytest.fail("the resumed head was initialised again"))
    original = VQHead.load_state_dict
    monkeypatch.setattr(VQHead, "load_state_dict", lambda self, state, *a, **k: (
        loaded.append({n: t.clone() for n, t in state.items()}), original(self, state, *a, **k))[1])
    train_barlow_twins(root, samples, models, epochs=2, vq_words=WORDS, progress=KillAt(tmp_path / "b"), **FAST)
    assert [r["step"] for r in train_records(tmp_path / "b")] == [5, 6]
    assert len(loaded) == 1 and all(torch.equal(loaded[0][n], t) for n, t in saved["vq_head"].items())
    final = torch.load(models / "last.pt", weights_only=True)
    assert int(final["vq_head"]["steps"]) == 6 and final["vq_info"]["steps"] == 6
    assert not torch.equal(final["vq"]["codes"], saved["vq"]["codes"])  # the codes went on learning


def test_no_words_leaves_the_run_as_it_was(worded, tmp_path):
    """vq_words=0: no VQ keys, records or summary, the same losses as a run that does not name it; with
    words the first step's Barlow Twins loss is the plain run's (the head leaves the seeded stream
    alone) and the later ones differ (the VQ losses train the backbone too)."""
    root, samples, models, word_logs = worded
    runs = {}
    for name, extra in (("default", {}), ("off", {"vq_words": 0})):
        path = train_barlow_twins(root, samples, tmp_path / name, epochs=1, progress=KillAt(tmp_path / f"log-{name}"),
                                  **extra, **FAST)
        runs[name] = [r["loss"] for r in train_records(tmp_path / f"log-{name}")]
        saved = torch.load(path, weights_only=True)
        assert set(saved) == PLAIN_KEYS and saved["settings"]["vq_words"] == 0
        assert "vq" not in checkpoint_summary(tmp_path / name)
        assert all("vq_loss" not in r for r in train_records(tmp_path / f"log-{name}"))
    assert runs["off"] == runs["default"] and len(runs["off"]) == 3
    worded_losses = [r["loss"] for r in train_records(word_logs)]
    assert worded_losses[0] == runs["off"][0] and worded_losses[1:] != runs["off"][1:]


def test_a_checkpoint_from_before_vq_words_still_resumes(trained, tmp_path):
    root, samples, project = trained
    models = copy_models(project, tmp_path)
    saved = torch.load(models / "last.pt", weights_only=True)
    del saved["settings"]["vq_words"]
    torch.save(saved, models / "last.pt")
    said = []
    train_barlow_twins(root, samples, models, epochs=2, say=said.append, **FAST)
    assert said and said[0].startswith("resuming") and checkpoint_summary(models)["step"] == 6


@pytest.mark.parametrize("bad", ["12", "-8", "65536", "eight"])
def test_a_bad_vq_words_exits_2_and_says_what_is_allowed(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--project", "nowhere", "--vq-words", bad])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --vq-words" in err
    assert ("multiple of 8 in [8, 65535]" in err) if bad != "eight" else ("whole number" in err)
    with pytest.raises(ValueError, match="multiple of 8"):
        check_vq_words(True)


@settings(max_examples=60, deadline=None)
@given(st.integers(-100, 70_000))
def test_vq_words_accepted_are_0_and_multiples_of_8_up_to_65535(k):
    valid = k == 0 or (8 <= k <= 65_535 and k % 8 == 0)
    if valid:
        assert check_vq_words(k) == k
    else:
        with pytest.raises(ValueError, match=f"got {k}"):
            check_vq_words(k)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([8, 16, 40]), st.integers(1, 5))
def test_the_exported_codebook_assigns_as_the_head_on_any_cells(seed, k, steps):
    """After any number of training steps on random grids, VQCodebook.from_state(codebook_state)
    gives every cell the head's own nearest code."""
    generator = torch.Generator().manual_seed(seed)
    head = VQHead(24, k, seed=seed)
    for _ in range(steps):
        head(torch.randn(4, 24, 3, 3, generator=generator) * 3 + 1, torch.randn(4, 24, 3, 3, generator=generator))
    cells = torch.randn(50, 24, generator=generator) * 3
    state = {name: tensor.numpy() for name, tensor in head.codebook_state().items()}
    assert np.array_equal(VQCodebook.from_state(state).assign(cells.numpy()), head.nearest(cells).numpy())


def test_in_eval_mode_the_running_statistics_standardise_and_nothing_moves():
    from torch.nn import functional as F

    from mlfix.training.vq_head import BETA

    generator = torch.Generator().manual_seed(0)
    head = VQHead(8, 8, seed=0)
    head(torch.randn(2, 8, 4, 4, generator=generator))
    before = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    grid = torch.randn(2, 8, 4, 4, generator=generator) * 5 + 3  # other statistics than the batch seen
    with torch.no_grad():
        loss = head.eval()(grid)
        assert all(torch.equal(before[name], tensor) for name, tensor in head.state_dict().items())
        x = (grid.permute(0, 2, 3, 1).reshape(-1, 8) - head.mean) / head.scale
        z = head.encoder(x)
        quantised = head.codes[torch.cdist(z, head.codes).argmin(dim=1)]
        assert torch.allclose(loss, F.mse_loss(head.decoder(quantised), x) + BETA * F.mse_loss(z, quantised))


def test_the_cli_trains_words_and_a_resumed_run_keeps_them(tmp_path, capsys):
    from mlfix.project import Project

    make_shapes(tmp_path / "images")
    project = tmp_path / "p"
    Project.create(project, images=tmp_path / "images", backbone="resnet18")
    command = ["train", "--project", str(project), "--batch-size", "8", "--image-size", "32", "--head-dim", "64",
               "--workers", "0", "--device", "cpu"]
    assert main([*command, "--epochs", "1", "--vq-words", "16"]) == 0
    assert main([*command, "--epochs", "2"]) == 0  # resumes: the saved run's settings, words included
    saved = torch.load(project / "models" / "last.pt", weights_only=True)
    assert saved["settings"]["vq_words"] == 16 and saved["step"] == 6 and saved["vq"]["codes"].shape == (16, 64)
    assert "resuming" in capsys.readouterr().out
