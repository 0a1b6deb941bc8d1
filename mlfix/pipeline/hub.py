"""ImageNet weights from the Hugging Face hub (``--weights imagenet``), and failing fast without it.

timm downloads hub weights on first use; offline, its client retries for about a minute and then
prints a raw error. :func:`pretrained_from_hub` tries the local cache first (no request), then a
short TCP probe (:func:`hub_reachable`), and says at once what works instead: the ``offline``
weights that pip packages ship.

    >>> "--weights offline" in offline_advice(True)
    True
"""

from __future__ import annotations

from torch import nn

HUB_PROBE_SECONDS = 3.0  # how long to wait for the hub before saying it cannot be reached


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``HF_ENDPOINT``) opens within ``timeout`` s.

    Run in a thread so that a name lookup that hangs cannot hold the caller past ``timeout``.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except Exception:  # any failure means "not reachable"; a thread must not raise
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def pretrained_from_hub(name: str, arch: str, offline_available: bool) -> nn.Module:
    """timm's ImageNet weights: from the local cache when there (no network), else from the hub;
    :class:`~mlfix.errors.WeightsUnavailableError` at once when the hub cannot be reached (instead of
    the hub client's minute of retries)."""
    import timm
    from huggingface_hub import constants

    from mlfix.errors import WeightsUnavailableError

    offline_before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # the cache only: no request, no retries
    try:
        return timm.create_model(arch, pretrained=True, num_classes=0)
    except Exception:  # not cached (or not a hub model): try the network below
        pass
    finally:
        constants.HF_HUB_OFFLINE = offline_before
    if not hub_reachable():
        host = constants.ENDPOINT.split("://")[-1]
        raise WeightsUnavailableError(f"ImageNet weights for {name!r} come from the Hugging Face hub, "
                                      f"which cannot be reached from here ({host}), and they are not in the "
                                      f"local cache. {offline_advice(offline_available)}")
    try:
        return timm.create_model(arch, pretrained=True, num_classes=0)
    except Exception as err:
        raise WeightsUnavailableError(f"cannot download ImageNet weights for {name!r}: {err}. "
                                      f"{offline_advice(offline_available)}") from None


def offline_advice(offline_available: bool) -> str:
    """What to use instead of hub weights: the same backbone's offline weights, or an offline backbone."""
    if offline_available:
        return ("Use the weights 'offline' instead (--weights offline; for mlfix train --init offline): the same "
                "ImageNet weights, shipped in a pip package, no internet needed; or 'random'.")
    return ("Use --backbone efficientnet_lite0 --weights offline instead (for mlfix train: --init offline): "
            "ImageNet weights shipped in a pip package, no internet needed; or the weights 'random'.")
