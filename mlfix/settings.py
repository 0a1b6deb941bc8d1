"""Typed index settings: defaults in one place, read from and written to ``mlfix.toml``, validated.

A project's ``mlfix.toml`` has two tables: ``[source]`` (where the images and labels are) and
``[index]`` (how to index them). :class:`IndexSettings` is the ``[index]`` table as a frozen
dataclass: every field has its default here and nowhere else, every value is checked when the
settings are made (a wrong one raises :class:`~mlfix.errors.SettingsError` naming the setting and
what it accepts), and the cache keys of the pipeline's stages are built from it
(:meth:`IndexSettings.feature_key` ...), so a stage reruns exactly when a setting it depends on
changed.

``weights`` is parsed once into a :class:`Weights` value (after timm's ``parse_model_name``, which
splits ``"hf-hub:name"`` into a source and a name): a keyword (``auto``, ``random``, ``imagenet``,
``offline``, ``trained``) or a file. Input that could mean both is refused.

    >>> settings = IndexSettings(image_size=96, words=256)
    >>> settings.image_size, settings.backbone, str(settings.weights)
    (96, 'efficientnet_lite0', 'auto')
    >>> IndexSettings().image_size                # resolved from the images at index time
    'auto'
    >>> auto_image_size(500)
    224
    >>> settings.replace(words=64).words
    64
    >>> IndexSettings(words=1)
    Traceback (most recent call last):
    ...
    mlfix.errors.SettingsError: words must be an integer from 2 to 65536, got 1
    >>> Weights.parse("offline")
    Weights(kind='offline', path=None)
    >>> Weights.parse("file:models/last.pt").kind
    'file'
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from mlfix.atomic import write_text_atomic
from mlfix.errors import NotAProjectError, SettingsError

CONFIG_NAME = "mlfix.toml"
SOURCE_KEYS = ("images", "labels", "coco", "padding")  # the [source] table, as data.scan writes it
AUTO = "auto"
MIN_SIDE, MAX_SIDE = 16, 4096
FILE_PREFIX = "file:"
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
ENGINES = ("local", "ray")
CODEBOOKS = ("kmeans", "vq")  # how cells become visual words: mlfix.pipeline.codebooks.create_codebook
# A Ray address: "auto", "host:6379", "[::1]:6379", "ray://host:10001". It reaches ray.init and a
# subprocess argv (the app's background job), so only characters an address needs are accepted.
RAY_ADDRESS = re.compile(r"[A-Za-z0-9\[][A-Za-z0-9._:/\[\]@%+~-]{0,499}")


@dataclass(frozen=True)
class Weights:
    """Which weights the backbone starts from.

    ``kind`` is one of:

    - ``auto``: the project's trained checkpoint when there is one for this backbone, else the
      offline ImageNet weights when the backbone has them (EfficientNet-Lite0/1/2), else random;
    - ``random``: random initialisation (seeded);
    - ``imagenet``: timm's hub weights (needs the internet);
    - ``offline``: ImageNet weights shipped in pip packages (EfficientNet-Lite0/1/2);
    - ``trained``: the project's Barlow Twins checkpoint (``models/last.pt``), an error when absent;
    - ``file``: a weights file at ``path``.
    """

    KEYWORDS: ClassVar[tuple[str, ...]] = ("auto", "random", "imagenet", "offline", "trained")

    kind: str
    path: Path | None = None

    @classmethod
    def parse(cls, value: "str | os.PathLike | Weights") -> "Weights":
        """A keyword, ``file:PATH``, or a path (it must contain a folder separator or end in a
        weights suffix such as ``.pt``). A keyword always means the keyword (a file named ``offline``
        is ``./offline`` or ``file:offline``); a bare word that is neither is ambiguous and refused.
        A file path is made absolute here, against the current folder, so a project's ``mlfix.toml``
        names the same file from wherever mlfix runs later."""
        if isinstance(value, Weights):
            return value
        if isinstance(value, os.PathLike):
            return cls("file", Path(value).expanduser().absolute())
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(f"weights must be a keyword ({', '.join(cls.KEYWORDS)}) or a file path, "
                                f"got {value!r}")
        text = value.strip()
        if text.startswith(FILE_PREFIX):
            name = text[len(FILE_PREFIX):]
            if not name:
                raise SettingsError("weights 'file:' needs a path after it, e.g. file:models/last.pt")
            return cls("file", Path(name).expanduser().absolute())
        if text in cls.KEYWORDS:
            return cls(text)
        if "/" in text or os.sep in text or text.startswith("~") or text.lower().endswith(WEIGHT_FILE_SUFFIXES):
            return cls("file", Path(text).expanduser().absolute())
        raise SettingsError(f"unknown weights {text!r}: use one of {', '.join(cls.KEYWORDS)}, "
                            f"or a file path (file:{text} if it is a file in the current folder)")

    def __str__(self) -> str:
        """The form stored in ``mlfix.toml`` (parses back to the same value)."""
        if self.kind != "file":
            return self.kind
        text = str(self.path)
        return text if ("/" in text or text.lower().endswith(WEIGHT_FILE_SUFFIXES)) else FILE_PREFIX + text


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or not low <= int(value) <= high:
        raise SettingsError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return int(value)


def _check_image_size(value: Any) -> int | str:
    if isinstance(value, str) and value.strip() == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or not MIN_SIDE <= int(value) <= MAX_SIDE:
        raise SettingsError(f"image_size must be 'auto' (chosen from the images) or an integer from {MIN_SIDE} "
                            f"to {MAX_SIDE}, got {value!r}")
    return int(value)


def _check_engine(value: Any) -> str:
    if not isinstance(value, str) or value.strip() not in ENGINES:
        raise SettingsError(f"engine must be one of {', '.join(ENGINES)}, got {value!r}")
    return value.strip()


def _check_codebook(value: Any) -> str:
    if not isinstance(value, str) or value.strip() not in CODEBOOKS:
        raise SettingsError(f"codebook must be one of {', '.join(CODEBOOKS)} (kmeans: faiss KMeans; vq: a "
                            f"learned vector-quantisation codebook), got {value!r}")
    return value.strip()


def _check_ray_address(value: Any) -> str | None:
    """``None`` or ``""`` (start or join a local Ray) or an address for ``ray.init(address=...)``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not RAY_ADDRESS.fullmatch(value.strip()):
        raise SettingsError(f"ray_address must be 'auto', HOST:PORT or ray://HOST:PORT (letters, digits and "
                            f".:/_-[]@%+~ only), or empty for a local Ray, got {value!r}")
    return value.strip()


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class IndexSettings:
    """How a project is indexed (the ``[index]`` table of ``mlfix.toml``).

    Args:
        backbone: a timm model name, or members joined by ``+`` for an ensemble. The default,
            EfficientNet-Lite0, is the best measured backbone with weights that need no internet
            (README, "Figures"; ``python -m bench.defaults``).
        weights: see :class:`Weights` (a string is parsed).
        image_size: the side images are resized to before the backbone (small images are scaled up);
            ``"auto"``: chosen at index time from the images' typical side (:func:`auto_image_size`).
        tta_flip: average each image's features with its mirror image's (twice the extraction).
        cell_stride: stride of the backbone stage whose output is the cell grid (8, 16 or 32).
        words: visual words in the codebook (the grid is stored as uint16, so at most 65536).
        kmeans_iterations: KMeans iterations for the codebook.
        codebook: how cells become words: ``"kmeans"`` (faiss KMeans, the seed's method) or ``"vq"``
            (a VQ-VAE codebook learned on the cells, :mod:`mlfix.pipeline.vq`; the one trained with
            the backbone when the weights file carries it, ``mlfix train --vq-words``).
        seed: seed of random init, KMeans and the probe's folds.
        batch_size: images per forward pass.
        cell_cache_gb: keep all cell vectors on disk (float16) when they fit; then a new number of
            words costs no forward pass.
        exact_order_max: groups up to this size are ordered exactly, larger ones approximately.
        engine: where the features are extracted: ``"local"`` (this process) or ``"ray"`` (Ray Data,
            on the cluster at ``ray_address``). The results are the same, so no cache key holds it.
        ray_address: passed to ``ray.init(address=...)`` (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``); ``None`` starts or joins a Ray on this machine. Stored as ``""``
            in ``mlfix.toml`` (TOML has no null).
    """

    backbone: str = "efficientnet_lite0"
    weights: Weights = field(default_factory=lambda: Weights("auto"))
    image_size: int | str = AUTO
    tta_flip: bool = False
    cell_stride: int = 16
    words: int = 1024
    kmeans_iterations: int = 20
    codebook: str = "kmeans"
    seed: int = 0
    batch_size: int = 64
    cell_cache_gb: float = 4.0
    exact_order_max: int = 50_000
    engine: str = "local"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise the values once, here
        if not isinstance(self.backbone, str) or not self.backbone.strip() \
                or any(not part for part in self.backbone.split("+")):
            raise SettingsError(f"backbone must be a timm model name (or names joined by '+'), got {self.backbone!r}")
        set_(self, "backbone", self.backbone.strip())
        set_(self, "weights", Weights.parse(self.weights))
        set_(self, "image_size", _check_image_size(self.image_size))
        set_(self, "tta_flip", _check_bool("tta_flip", self.tta_flip))
        if self.cell_stride not in (8, 16, 32) or isinstance(self.cell_stride, bool):
            raise SettingsError(f"cell_stride must be 8, 16 or 32, got {self.cell_stride!r}")
        set_(self, "cell_stride", int(self.cell_stride))
        set_(self, "words", _check_int("words", self.words, 2, 65536))
        set_(self, "kmeans_iterations", _check_int("kmeans_iterations", self.kmeans_iterations, 1, 10_000))
        set_(self, "codebook", _check_codebook(self.codebook))
        set_(self, "seed", _check_int("seed", self.seed, 0, 2**32 - 1))
        set_(self, "batch_size", _check_int("batch_size", self.batch_size, 1, 65536))
        gb = self.cell_cache_gb
        if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not 0 <= gb <= 1e6:
            raise SettingsError(f"cell_cache_gb must be a number of GiB >= 0, got {gb!r}")
        set_(self, "cell_cache_gb", float(gb))
        set_(self, "exact_order_max", _check_int("exact_order_max", self.exact_order_max, 0, 10**9))
        set_(self, "engine", _check_engine(self.engine))
        set_(self, "ray_address", _check_ray_address(self.ray_address))

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "settings") -> "IndexSettings":
        """Settings from a mapping (a TOML table, CLI options); ``None`` values mean "the default"."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise SettingsError(f"unknown settings {unknown} in {where}; known: {cls.names()}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    def replace(self, **changes: Any) -> "IndexSettings":
        """A copy with some settings changed (``None`` keeps the current value), validated."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise SettingsError(f"unknown settings {unknown}; known: {self.names()}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The TOML table: plain values, ``weights`` as its string form, no ``ray_address`` as ``""``."""
        table = {f.name: getattr(self, f.name) for f in fields(self)}
        table["weights"] = str(self.weights)
        table["ray_address"] = self.ray_address or ""
        return table

    # ---- cache keys -----------------------------------------------------------------------------

    def feature_key(self, samples_digest: str, architecture: str, weights_id: Any) -> dict[str, Any]:
        """What the pooled vectors and cells depend on. ``architecture`` is what timm builds for the
        backbone name (so a changed mapping recomputes); ``weights_id`` identifies the resolved weights."""
        if self.image_size == AUTO:
            raise SettingsError("image_size 'auto' must be resolved before the features' cache key: use "
                                "settings.replace(image_size=auto_image_size(side)) with the images' typical side")
        key = {"samples": samples_digest, "backbone": self.backbone, "architecture": architecture,
               "weights": weights_id, "image_size": self.image_size, "cell_stride": self.cell_stride}
        if self.tta_flip:  # only when on: projects indexed before the setting keep their features
            key["tta_flip"] = True
        return key

    def words_key(self, feature_key: dict[str, Any]) -> dict[str, Any]:
        """What the codebook, the word grids and the bags depend on. ``codebook`` is in it only when it
        is not ``"kmeans"``: projects indexed before the setting keep their keys and artifacts."""
        key = {**feature_key, "words": self.words, "seed": self.seed, "kmeans_iterations": self.kmeans_iterations}
        if self.codebook != "kmeans":
            key["codebook"] = self.codebook
        return key

    def order_key(self, words_key: dict[str, Any], labels_digest: str) -> dict[str, Any]:
        """What the similarity orderings depend on."""
        return {**words_key, "labels": labels_digest, "exact_order_max": self.exact_order_max}


# ---- what no options mean: the image size from the data, quality presets -------------------------

# Backbones whose ImageNet weights ship in pip packages (mlfix.pipeline.backbone.OFFLINE_WEIGHTS, kept
# equal by tests/pipeline/test_defaults.py): ``weights = "auto"`` uses them when no trained checkpoint fits.
OFFLINE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BEST_ENSEMBLE = "+".join(OFFLINE_BACKBONES)
QUALITIES = ("fast", "default", "best")
# The measured rule (python -m bench.defaults; README, "Figures"): EfficientNet-Lite0 at its own input
# size, 224 px, for every image size. Smaller inputs lost detection quality even on 32 px images
# (CIFAR-10N, the same 300 images: AUROC 0.854 at 224 px, 0.812 at 128, 0.817 at 96; GTSRB 35 px crops
# and flower photos lost less: 0.971 at 96 vs 0.969 at 128, 0.995 at 224 vs 0.992 at 128), so only
# ``fast`` goes smaller (about half the time of 224 px). ``best`` is the ensemble's size.
FULL_SIZE, FAST_SIZE, BEST_SIZE = 224, 128, 260


def auto_image_size(side: float | None, quality: str = "default") -> int:
    """The input size for images whose typical (median) short side is ``side`` px (None: unknown).

    The measured rule does not depend on ``side`` yet (see above): small images are scaled up to the
    backbone's own size, which found more errors than any smaller size we measured.

        >>> auto_image_size(32), auto_image_size(1000), auto_image_size(None)
        (224, 224, 224)
        >>> auto_image_size(32, "fast"), auto_image_size(32, "best")
        (128, 260)
    """
    if quality not in QUALITIES:
        raise SettingsError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    return {"fast": FAST_SIZE, "default": FULL_SIZE, "best": BEST_SIZE}[quality]


def quality_settings(quality: str, side: float | None = None) -> dict[str, Any]:
    """The settings a ``--quality`` preset stands for (explicit options given with it win).

    ``default``: the defaults (EfficientNet-Lite0, auto weights, the image size from the data, one
    forward pass per image). ``fast``: the same backbone at a smaller size. ``best``: the best measured
    offline setting, the three EfficientNet-Lite backbones at 260 px with the mirror image (6 passes).

        >>> quality_settings("best")["backbone"]
        'efficientnet_lite0+efficientnet_lite1+efficientnet_lite2'
        >>> quality_settings("fast", side=32)["image_size"]
        128
    """
    if quality not in QUALITIES:
        raise SettingsError(f"quality must be one of {', '.join(QUALITIES)}, got {quality!r}")
    if quality == "best":
        return {"backbone": BEST_ENSEMBLE, "weights": "auto", "image_size": BEST_SIZE, "tta_flip": True}
    size: int | str = AUTO if quality == "default" else auto_image_size(side, "fast")
    return {"backbone": IndexSettings.backbone, "weights": "auto", "image_size": size, "tta_flip": False}


def forward_passes(settings: IndexSettings) -> int:
    """Forward passes per image: one per ensemble member, twice with the mirror image."""
    return len(settings.backbone.split("+")) * (2 if settings.tta_flip else 1)


# ---- mlfix.toml ---------------------------------------------------------------------------------

def read_config(directory: str | os.PathLike) -> tuple[dict[str, Any], IndexSettings]:
    """``([source] table, IndexSettings)`` of a project folder; :class:`NotAProjectError` if it has none."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise NotAProjectError(f"{Path(directory)} is not an mlfix project (no {CONFIG_NAME}); "
                               "create one with `mlfix index --images PATH --project DIR`")
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise NotAProjectError(f"{path} is not a valid mlfix.toml: {err}") from None
    source = config.get("source", {})
    table = config.get("index", {})
    if not isinstance(source, dict) or not isinstance(table, dict):
        raise NotAProjectError(f"{path}: [source] and [index] must be tables")
    _check_known(sorted(set(config) - {"source", "index"}), "table(s)", ["source", "index"], path)
    _check_known(sorted(set(source) - set(SOURCE_KEYS)), "[source] key(s)", list(SOURCE_KEYS), path)
    for key in ("images", "labels", "coco"):
        if key in source and not isinstance(source[key], str):
            raise SettingsError(f"[source] {key} must be a path (a string), got {source[key]!r} (fix it in {path})")
    padding = source.get("padding", 0.0)
    if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0 <= padding <= 10:
        raise SettingsError(f"[source] padding must be a fraction of the box from 0 to 10, got {padding!r} "
                            f"(fix it in {path})")
    try:
        return source, IndexSettings.from_dict(table, where=str(path))
    except SettingsError as err:
        raise SettingsError(f"{err} (fix it in {path})") from None


def _check_known(unknown: list[str], what: str, known: list[str], path: Path) -> None:
    if unknown:
        raise SettingsError(f"unknown {what} {unknown} in {path}; known: {known}")


def write_config(directory: str | os.PathLike, source: dict[str, Any], settings: IndexSettings) -> None:
    """Write ``mlfix.toml`` atomically (``None`` values of ``source`` are left out)."""
    import tomli_w

    clean_source = {k: v for k, v in source.items() if v is not None}
    text = tomli_w.dumps({"source": clean_source, "index": settings.to_dict()})
    write_text_atomic(Path(directory) / CONFIG_NAME, text)
