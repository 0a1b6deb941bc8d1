"""What no options mean: the backbone, weights and image size an index run picks, and the line it prints.

The rules are plain functions (mlfix/settings.py, mlfix/pipeline/defaults.py, choose_weights in
mlfix/training/checkpoints.py), tested here without indexing; one small end-to-end run checks that
``Project.index`` uses them and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlfix.errors import SettingsError
from mlfix.pipeline.defaults import Estimate, describe, resolve_image_size, typical_side
from mlfix.settings import (BEST_ENSEMBLE, CONFIG_NAME, IndexSettings, auto_image_size, forward_passes,
                            quality_settings, read_config, write_config)
from mlfix.training.checkpoints import choose_weights


def samples(sides: list[tuple[int, int]], status: list[str] | None = None, **columns) -> pd.DataFrame:
    return pd.DataFrame({"width": [w for w, _ in sides], "height": [h for _, h in sides],
                         "status": status or ["ok"] * len(sides), **columns})


def fake_checkpoint(project_dir: Path, backbone: str) -> None:
    models = project_dir / "models"
    models.mkdir(parents=True)
    (models / "last.pt").write_bytes(b"weights")
    (models / "last.json").write_text(json.dumps({"settings": {"backbone": backbone}}))


# ---- image size --------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [None, 28, 32, 35, 64, 96, 500, 4000])
def test_the_measured_rule_is_the_backbones_own_size_for_every_image_size(side):
    # bench/defaults.py: smaller inputs lost AUROC even on 32 px CIFAR-10N images (0.812 at 128 vs 0.854)
    assert auto_image_size(side) == 224


def test_fast_is_smaller_and_best_is_the_ensembles_size():
    for side in (None, 32, 96, 500):
        assert auto_image_size(side, "fast") == 128 < auto_image_size(side)
        assert auto_image_size(side, "best") == 260
    with pytest.raises(SettingsError, match="quality must be one of fast, default, best"):
        auto_image_size(32, "quick")


def test_typical_side_is_the_median_short_side_of_readable_images_or_boxes():
    assert typical_side(samples([(32, 32), (40, 30), (32, 64)])) == 32
    assert typical_side(samples([(32, 32), (1000, 1000), (1000, 1000)], status=["ok", "ok", "unreadable"])) == 516
    crops = samples([(640, 480), (640, 480)], box_w=[30.0, float("nan")], box_h=[40.0, float("nan")])
    assert typical_side(crops) == (30 + 480) / 2
    assert typical_side(samples([])) is None
    assert typical_side(pd.DataFrame({"sample_id": ["a"]})) is None


def test_auto_is_resolved_from_the_data_and_a_number_is_kept():
    small = samples([(32, 32)] * 3)
    resolved, side = resolve_image_size(IndexSettings(), small)
    assert (resolved.image_size, side) == (224, 32)
    assert resolve_image_size(IndexSettings(image_size=96), small)[0].image_size == 96
    photos = samples([(500, 375), (800, 600)])
    assert resolve_image_size(IndexSettings(), photos) == (resolved, 487.5)
    # the resolved size is in the features' cache key, 'auto' never is
    assert resolved.feature_key("d", "a", "w")["image_size"] == 224


# ---- weights -----------------------------------------------------------------------------------

def test_no_options_mean_the_offline_backbone_and_say_why(tmp_path):
    choice = choose_weights(IndexSettings(), tmp_path)
    assert (choice.weights, choice.identity) == ("offline", "offline")
    assert choice.text == "offline ImageNet weights (no trained checkpoint)"
    ensemble = choose_weights(IndexSettings(backbone=BEST_ENSEMBLE), tmp_path)
    assert ensemble.weights == "offline"


def test_resnet18_random_stays_available_by_name(tmp_path):
    choice = choose_weights(IndexSettings(backbone="resnet18"), tmp_path)
    assert choice.weights == "random"
    assert "no offline weights for resnet18" in choice.text
    assert choose_weights(IndexSettings(backbone="resnet18", weights="random"), tmp_path).text == \
        "random weights (as set)"


def test_a_fitting_trained_checkpoint_wins_and_another_backbones_does_not(tmp_path):
    fake_checkpoint(tmp_path, "efficientnet_lite0")
    choice = choose_weights(IndexSettings(), tmp_path)
    assert choice.weights == str((tmp_path / "models" / "last.pt").resolve())
    assert choice.text.startswith("trained checkpoint ") and "auto: trained for this backbone" in choice.text
    other = choose_weights(IndexSettings(backbone="efficientnet_lite1"), tmp_path)
    assert other.weights == "offline" and "checkpoint is for another backbone" in other.text


def test_offline_backbones_match_the_weights_that_ship():
    from mlfix.pipeline.backbone import OFFLINE_WEIGHTS
    from mlfix.settings import OFFLINE_BACKBONES

    assert set(OFFLINE_BACKBONES) == set(OFFLINE_WEIGHTS)


# ---- presets and the printed line --------------------------------------------------------------

def test_quality_presets():
    assert quality_settings("default") == {"backbone": "efficientnet_lite0", "weights": "auto",
                                           "image_size": "auto", "tta_flip": False}
    fast = IndexSettings().replace(**quality_settings("fast", side=32))
    best = IndexSettings().replace(**quality_settings("best", side=32))
    assert (fast.image_size, forward_passes(fast)) == (128, 1)
    assert (best.backbone, best.image_size, best.tta_flip, forward_passes(best)) == (BEST_ENSEMBLE, 260, True, 6)
    assert forward_passes(IndexSettings()) == 1  # the goal: the defaults at no more than 2 passes
    with pytest.raises(SettingsError, match="quality must be one of"):
        quality_settings("ultra")


def test_the_line_says_backbone_weights_size_and_why():
    settings = IndexSettings(image_size=224)
    line = describe(settings, "offline ImageNet weights (no trained checkpoint)", 32.0, auto_size=True)
    assert line == ("indexing with efficientnet_lite0, offline ImageNet weights (no trained checkpoint), "
                    "224 px (auto: images are about 32 px), 1 forward pass per image")
    best = IndexSettings(backbone=BEST_ENSEMBLE, image_size=260, tta_flip=True)
    line = describe(best, "offline ImageNet weights (no trained checkpoint)", 500.0, auto_size=False,
                    quality="best")
    assert line.startswith("quality best: indexing with efficientnet_lite0+efficientnet_lite1+")
    assert "260 px (as set; images are about 500 px), with the mirror image, 6 forward passes" in line


def test_the_estimate_multiplies_images_passes_and_seconds():
    estimate = Estimate(images=2000, passes=6, seconds_per_pass=0.05)
    assert estimate.seconds == 600
    assert str(estimate).startswith("estimate: about 10 min for the features (2,000 images x 6 forward passes")


# ---- old projects ------------------------------------------------------------------------------

def test_old_projects_keep_the_settings_their_mlfix_toml_names(tmp_path):
    old = ('[source]\nimages = "/data"\n\n[index]\nbackbone = "resnet18"\nweights = "auto"\nimage_size = 224\n'
           'tta_flip = false\ncell_stride = 16\nwords = 1024\nkmeans_iterations = 20\nseed = 0\n'
           'batch_size = 64\ncell_cache_gb = 4.0\nexact_order_max = 50000\n')
    (tmp_path / CONFIG_NAME).write_text(old)
    _, settings = read_config(tmp_path)
    assert (settings.backbone, settings.image_size) == ("resnet18", 224)
    assert choose_weights(settings, tmp_path).weights == "random"  # as before: resnet18 has no offline weights
    write_config(tmp_path, {"images": "/data"}, settings)  # every setting is written, so it stays so
    assert set(IndexSettings.names()) <= set(__import__("tomllib").loads((tmp_path / CONFIG_NAME).read_text())["index"])
    assert read_config(tmp_path)[1] == settings


# ---- end to end --------------------------------------------------------------------------------

def test_index_with_no_options_uses_the_defaults_and_says_so(tiny_image_folder, tmp_path):
    from mlfix.project import Project

    project = Project.create(tmp_path / "p", images=tiny_image_folder, words=16)  # 48 px images
    lines: list[str] = []
    project.index(announce=lines.append)
    assert lines == ["indexing with efficientnet_lite0, offline ImageNet weights (no trained checkpoint), "
                     "224 px (auto: images are about 48 px), 1 forward pass per image"]
    assert project.settings.image_size == "auto" and project.image_size == 224
    key = json.loads((project.dir / "features" / "words.key.json").read_text())
    assert (key["image_size"], key["weights"], key["backbone"]) == (224, "offline", "efficientnet_lite0")
    lines.clear()
    project.index(quality="fast", announce=lines.append)
    assert lines[0].startswith("quality fast: indexing with efficientnet_lite0") and "128 px (as set" in lines[0]
    assert lines[1].startswith("estimate: about ") and "40 images x 1 forward passes" in lines[1]
    assert Project.open(project.dir).settings.image_size == 128  # the preset is stored like any option


def test_the_cli_takes_auto_or_pixels_and_a_quality():
    import argparse

    from mlfix.cli.index import _image_size, add_parser

    assert _image_size("auto") == "auto" and _image_size("AUTO") == "auto" and _image_size("96") == 96
    with pytest.raises(argparse.ArgumentTypeError, match="a number of pixels or 'auto'"):
        _image_size("big")
    commands = argparse.ArgumentParser().add_subparsers()
    add_parser(commands)
    args = commands.choices["index"].parse_args(["--project", "p", "--quality", "best", "--image-size", "auto"])
    assert (args.quality, args.image_size) == ("best", "auto")
