"""Backbone ensembles (``a+b`` names) and flip test-time augmentation in feature extraction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mlfix.pipeline.backbone import BackboneEnsemble, architecture, create_backbone
from mlfix.data.images import DataRoot
from mlfix.pipeline.features import extract


def test_an_ensemble_returns_the_first_members_cells_and_every_members_pooled_vector():
    torch.manual_seed(0)
    ensemble = create_backbone("resnet18+efficientnet_lite0", weights="random").eval()
    assert isinstance(ensemble, BackboneEnsemble)
    first, second = ensemble.members
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        cells, pooled = ensemble(x)
        first_cells, first_pooled = first(x)
        _, second_pooled = second(x)
    torch.testing.assert_close(cells, first_cells)
    torch.testing.assert_close(pooled, torch.cat([first_pooled, second_pooled], dim=1))
    assert ensemble.pooled_dim == 512 + 1280 == pooled.shape[1]
    assert ensemble.grid_size(64) == first.grid_size(64) == cells.shape[-1]
    assert ensemble.architecture == architecture(ensemble.name) == "resnet18+tf_efficientnet_lite0"
    assert [m["name"] for m in ensemble.describe()["members"]] == ["resnet18", "efficientnet_lite0"]


def test_an_offline_ensemble_loads_every_members_weights():
    ensemble = create_backbone("efficientnet_lite0+efficientnet_lite1", weights="offline")
    for member, name in zip(ensemble.members, ("efficientnet_lite0", "efficientnet_lite1")):
        alone = create_backbone(name, weights="offline")
        torch.testing.assert_close(member.model.conv_stem.weight, alone.model.conv_stem.weight)


@pytest.mark.parametrize("name, weights, message", [
    ("resnet18+", "random", "empty member"),
    ("resnet18+resnet18", "some/checkpoint.pt", "a weights file fits one backbone"),
    ("resnet18+no_such_net", "random", "unknown backbone 'no_such_net'"),
    ("resnet18+efficientnet_lite0", "offline", "no offline weights ship for 'resnet18'"),
])
def test_bad_ensembles_are_refused_with_what_to_do(name, weights, message):
    with pytest.raises(ValueError, match=message):
        create_backbone(name, weights=weights)


def _one_image_and_its_mirror(folder) -> tuple[DataRoot, pd.DataFrame]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)  # a red band on the left makes the two images clearly different
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(folder / "b.png")
    samples = pd.DataFrame({"sample_id": ["a", "b"], "path": ["a.png", "b.png"]})
    for column in ("box_x", "box_y", "box_w", "box_h"):
        samples[column] = np.nan
    return DataRoot(folder), samples


def test_flip_tta_gives_an_image_and_its_mirror_the_same_pooled_vector(tmp_path):
    root, samples = _one_image_and_its_mirror(tmp_path)
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", weights="random")
    plain = extract(root, samples, backbone, 64, workers=0, device="cpu")
    cells = {}
    tta = extract(root, samples, backbone, 64, workers=0, device="cpu", tta_flip=True,
                  on_cells=lambda rows, grid: cells.update(zip(rows.tolist(), grid)))
    a, b = tta.pooled.astype(np.float32)
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)
    assert np.abs(plain.pooled[0].astype(np.float32) - plain.pooled[1]).max() > 10 * np.abs(a - b).max()
    # the cells are mirrored back before averaging: b's grid is a's grid read right to left
    np.testing.assert_allclose(cells[1], cells[0][:, ::-1], rtol=1e-3, atol=1e-3)


def test_the_detection_bench_measures_what_mlfix_index_computes():
    """bench/detect.py builds an ensemble's flip-averaged features from per-member caches; mlfix's
    extraction with the ensemble and ``tta_flip`` must give the same vectors (on 8 CIFAR images)."""
    from bench.detect_features import _extract, load_labels
    from tests.conftest import shared_data

    folder = shared_data("cifar10n")
    table = load_labels("cifar10n", 8)
    members = ["efficientnet_lite0", "efficientnet_lite1"]
    quiet = lambda *args, **kwargs: None  # noqa: E731
    per_member = []
    for member in members:
        plain, mirrored = (_extract("cifar10n", table, 64, flip, member, 8, quiet)["pooled"].astype(np.float32)
                           for flip in (False, True))
        per_member.append((plain + mirrored) / 2)
    bench_vectors = np.hstack(per_member)
    samples = table.assign(box_x=np.nan, box_y=np.nan, box_w=np.nan, box_h=np.nan)
    product = extract(DataRoot(folder / "images.zip"), samples, create_backbone("+".join(members), "offline"), 64,
                      batch_size=8, workers=0, device="cpu", tta_flip=True)
    assert product.ok.all()
    np.testing.assert_allclose(product.pooled.astype(np.float32), bench_vectors, rtol=2e-2, atol=2e-2)
