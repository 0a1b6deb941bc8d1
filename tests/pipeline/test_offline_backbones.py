"""Offline ImageNet backbones (EfficientNet-Lite0/1/2 from pip packages) and input normalisation."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from PIL import Image

from mlfix.pipeline.backbone import (IMAGENET_MEAN, IMAGENET_STD, OFFLINE_WEIGHTS, create_backbone, image_transform,
                            offline_classifier)
from tests.conftest import shared_data


def daisy() -> Image.Image:
    archive = shared_data("flowers17") / "images.zip"
    with zipfile.ZipFile(archive) as z:
        return Image.open(io.BytesIO(z.read("10_daisy/image_0801.jpg"))).convert("RGB")


@pytest.mark.shared_data
@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_offline_lite_backbones_know_a_daisy(name, size):
    # efficientnet_lite0's twin is tests/training/test_barlow_twins.py::test_offline_imagenet_backbone_knows_a_daisy
    with torch.no_grad():
        logits = offline_classifier(name)(image_transform(size)(daisy())[None])
    assert int(logits.argmax()) == 985  # ImageNet class 985: daisy


@pytest.mark.parametrize("name", sorted(OFFLINE_WEIGHTS))
def test_offline_weights_fill_the_same_network_as_random_init(name):
    """A checkpoint trained from either start loads into the other: one architecture per name."""
    offline, random = create_backbone(name, weights="offline"), create_backbone(name, weights="random")
    assert offline.describe() == {**random.describe(), "weights": "offline"}
    assert {k: v.shape for k, v in offline.model.state_dict().items()} == {
        k: v.shape for k, v in random.model.state_dict().items()}
    assert not all(torch.equal(a, b) for a, b in zip(offline.model.state_dict().values(),
                                                     random.model.state_dict().values()))


def test_tensorflow_weights_see_their_own_input_statistics():
    """The TF-trained weights expect (x - 0.5) / 0.5; the backbone takes ImageNet-normalised input."""
    backbone = create_backbone("efficientnet_lite0", weights="offline").eval()
    assert (backbone.mean, backbone.std) == ((0.5,) * 3, (0.5,) * 3)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    imagenet = (pixels - mean) / std
    with torch.no_grad():
        _, pooled = backbone(imagenet)
        direct = backbone.model((pixels - 0.5) / 0.5)
    torch.testing.assert_close(pooled, direct, atol=1e-4, rtol=1e-4)


def test_imagenet_statistics_pass_through_untouched():
    backbone = create_backbone("resnet18", weights="random").eval()
    assert (backbone.mean, backbone.std) == (IMAGENET_MEAN, IMAGENET_STD)
    x = torch.randn(1, 3, 32, 32)
    assert backbone.normalise(x) is x


def test_offline_weights_for_another_backbone_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite1"):
        create_backbone("resnet18", weights="offline")
