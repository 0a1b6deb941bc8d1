"""``weights="imagenet"`` without internet fails at once and names the offline weights."""

from __future__ import annotations

import time

import pytest

from mlfix.errors import MlfixError, WeightsUnavailableError
from mlfix.pipeline import backbone, hub


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    import timm  # noqa: F401 (imported before the clock starts: the import alone is seconds on 2 cores)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_imagenet_weights_with_an_unreachable_hub_fail_fast_and_name_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.HUB_PROBE_SECONDS: False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="--weights offline") as caught:
        backbone.create_backbone("resnet18", weights="imagenet")
    assert time.perf_counter() - start < 10
    assert isinstance(caught.value, MlfixError)
    assert "--backbone efficientnet_lite0" in str(caught.value)  # resnet18 has no offline weights


def test_offline_advice_for_a_backbone_with_offline_weights_keeps_the_backbone(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.HUB_PROBE_SECONDS: False)
    with pytest.raises(WeightsUnavailableError, match="offline' instead \\(--weights offline"):
        backbone.create_backbone("efficientnet_lite0", weights="imagenet")


def test_this_machine_without_internet_fails_within_seconds(empty_hub_cache):
    """The real probe, no stand-ins: skipped where the hub answers."""
    if hub.hub_reachable():
        pytest.skip("the hub is reachable from this machine")
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        backbone.create_backbone("resnet18", weights="imagenet")
    assert time.perf_counter() - start < hub.HUB_PROBE_SECONDS + 7


def test_the_probe_gives_up_after_its_timeout(monkeypatch):
    import socket

    def hang(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 3
