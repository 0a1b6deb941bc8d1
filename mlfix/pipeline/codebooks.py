"""The project's codebook, chosen by its ``codebook`` setting: one factory for every engine and route.

``create_codebook`` makes it (timm's ``create_model`` style: a name and the settings), the engines fit
it (:func:`fit_codebook`) and assign words with it (:func:`assign_words`), :func:`save_codebook` /
:func:`load_codebook` keep it in a project's ``codebook/`` folder, and :func:`codebook_state` /
:func:`codebook_from_state` are what the Ray engine ships to its actors. Two kinds:

- ``"kmeans"``: :class:`~mlfix.pipeline.codebook.Codebook` (faiss KMeans), the seed's method; its
  files are exactly those of projects made before this setting (``centroids.npy``, ``fit.json``);
- ``"vq"``: :class:`~mlfix.pipeline.vq.VQCodebook`, a VQ-VAE codebook learned on the cells; also
  ``vq.npz`` (its state). When the backbone's weights file carries a codebook trained with it
  (``mlfix train --vq-words``, key ``"vq"``), :func:`trained_codebook` uses that one without fitting.

A VQ codebook fits and assigns float16-rounded cells: the cell-cache route stores its cells as
float16, the two-pass route and the Ray engine see them as float32, and a VQ-VAE's training (hundreds
of minibatch steps, each a nearest-code choice) may carry a rounding difference far; rounded, every
route fits on the same numbers and gives the same words. KMeans keeps its unrounded cells, as before.

Example:
    >>> rng = np.random.default_rng(0)
    >>> cells = rng.normal(size=(1000, 16)).astype(np.float32)
    >>> kmeans = create_codebook("kmeans", k=16, seed=0, niter=5)
    >>> fit_codebook(kmeans, cells)
    >>> sorted(codebook_state(kmeans)), kmeans.centroids_.shape
    (['centroids'], (16, 16))
    >>> vq = VQCodebook(k=16, steps=20, seed=0)                 # create_codebook("vq", ...) trains longer
    >>> fit_codebook(vq, cells)
    >>> again = codebook_from_state(codebook_state(vq))
    >>> type(again).__name__, bool((assign_words(again, cells) == assign_words(vq, cells)).all())
    ('VQCodebook', True)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import numpy as np

from mlfix.atomic import atomic_path, write_json_atomic
from mlfix.pipeline.artifacts import atomic_save_npy
from mlfix.pipeline.codebook import Codebook
from mlfix.pipeline.vq import VQCodebook
from mlfix.settings import CODEBOOKS, Weights

AnyCodebook = Union[Codebook, VQCodebook]
VQ_STATE = ("codes", "encoder", "bias", "mean", "scale", "centroids")  # VQCodebook.state()'s arrays
TRAINED_SOURCE = "trained with the backbone (mlfix train --vq-words)"
FITTED_SOURCE = "fitted on the cells"
VQ_STEPS = 400  # the VQ codebook's training steps (VQCodebook's default; tests lower it)


def create_codebook(kind: str, *, k: int, seed: int, niter: int) -> AnyCodebook:
    """An unfitted codebook of ``k`` words: ``kind`` ``"kmeans"`` (``niter`` KMeans iterations) or
    ``"vq"`` (:data:`VQ_STEPS` training steps of :class:`~mlfix.pipeline.vq.VQCodebook`)."""
    if kind == "kmeans":
        return Codebook(k=k, seed=seed, niter=niter)
    if kind == "vq":
        return VQCodebook(k=k, seed=seed, steps=VQ_STEPS)
    raise ValueError(f"unknown codebook {kind!r}: use one of {', '.join(CODEBOOKS)}")


def is_fitted(codebook: AnyCodebook) -> bool:
    """Whether ``codebook`` can assign words already (fitted, loaded or trained with the backbone)."""
    return hasattr(codebook, "centroids_")


def fit_codebook(codebook: AnyCodebook, cells: np.ndarray) -> None:
    """Fit on the (M, C) sample cells; a VQ codebook on them rounded to float16 (see the module)."""
    if isinstance(codebook, VQCodebook):
        codebook.fit(_as_cached(cells))
        codebook.fit_info_["source"] = FITTED_SOURCE
    else:
        codebook.fit(cells)


def assign_words(codebook: AnyCodebook, cells: np.ndarray) -> np.ndarray:
    """(..., C) cells -> (...) uint16 words; a VQ codebook's from the cells rounded to float16."""
    return codebook.assign(_as_cached(cells) if isinstance(codebook, VQCodebook) else cells)


def _as_cached(cells: np.ndarray) -> np.ndarray:
    """The cells as the cell cache holds them: float16, back as float32."""
    return np.asarray(cells).astype(np.float16).astype(np.float32)


def codebook_state(codebook: AnyCodebook) -> dict[str, np.ndarray]:
    """What :func:`codebook_from_state` rebuilds the codebook from (KMeans: ``{"centroids": ...}``)."""
    return codebook.state()


def codebook_from_state(state) -> AnyCodebook:
    """The codebook whose :func:`codebook_state` is ``state`` (a VQ one when it has ``"codes"``)."""
    return VQCodebook.from_state(state) if "codes" in state else Codebook.from_state(state)


def save_codebook(codebook: AnyCodebook, folder: Path) -> None:
    """``centroids.npy`` and ``fit.json`` (as before the setting), and for a VQ codebook ``vq.npz``;
    a KMeans codebook removes a VQ codebook's ``vq.npz`` (so :func:`load_codebook` reads it back)."""
    folder = Path(folder)
    if isinstance(codebook, VQCodebook):
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "vq.npz", suffix=".npz") as tmp:
            np.savez(tmp, **codebook_state(codebook))
    else:
        (folder / "vq.npz").unlink(missing_ok=True)
    atomic_save_npy(folder / "centroids.npy", codebook.centroids_)
    write_json_atomic(folder / "fit.json", codebook.fit_info_, indent=1)


def load_codebook(folder: Path) -> AnyCodebook | None:
    """The codebook :func:`save_codebook` wrote to ``folder``, with its ``fit_info_``; None when absent."""
    folder = Path(folder)
    try:
        if (folder / "vq.npz").is_file():
            with np.load(folder / "vq.npz", allow_pickle=False) as data:
                codebook = codebook_from_state({name: data[name] for name in data.files})
        else:
            codebook = Codebook.from_centroids(np.load(folder / "centroids.npy"))
        codebook.fit_info_ = json.loads((folder / "fit.json").read_text())
    except (FileNotFoundError, ValueError, KeyError):  # absent, or cut short by a crash: fit again
        return None
    return codebook


def trained_codebook_state(weights: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The VQ codebook trained with the backbone: the ``"vq"`` dict of the weights file ``weights``
    (an mlfix checkpoint) as float32 arrays named as :meth:`VQCodebook.state`; None when ``weights``
    is a keyword, not a file, unreadable, or carries no complete ``"vq"`` state."""
    path = _weights_file(weights)
    if path is None:
        return None
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # the backbone reports an unreadable file in its own words
        return None
    state = saved.get("vq") if isinstance(saved, dict) else None
    if not isinstance(state, dict) or any(name not in state for name in VQ_STATE):
        return None
    return {name: np.asarray(_numpy(state[name]), dtype=np.float32) for name in VQ_STATE}


def _weights_file(weights: str | os.PathLike | None) -> Path | None:
    """``weights`` as a file's path, None for a keyword (``random``, ``offline``...) or no file."""
    if weights is None or str(weights) in Weights.KEYWORDS:
        return None
    path = Path(weights).expanduser()
    return path if path.is_file() else None


def _numpy(value):
    return value.detach().cpu().float().numpy() if hasattr(value, "detach") else value


def trained_codebook(codebook: AnyCodebook, weights: str | os.PathLike,
                     channels: int) -> tuple[AnyCodebook, str | None]:
    """``(codebook to use, progress note or None)`` for a ``"vq"`` ``codebook`` about to be fitted.

    The codebook trained with the backbone (:func:`trained_codebook_state`) replaces it when its number
    of words is ``codebook.k`` and it was made for cells of ``channels`` channels; otherwise
    ``codebook`` is fitted as usual and the note says why (None when ``weights`` is no file).
    """
    state = trained_codebook_state(weights)
    if state is None:
        return codebook, (f"codebook vq: the weights file carries no VQ codebook trained with the backbone; "
                          f"fitting one on the cells (`mlfix train --vq-words {codebook.k}` trains one)"
                          if _weights_file(weights) else None)
    words, expects = len(state["codes"]), state["encoder"].shape[1]
    if words != codebook.k:
        return codebook, (f"codebook vq: the one trained with the backbone has {words:,} words, the project "
                          f"asks for {codebook.k:,}; fitting one on the cells instead (set --words {words} "
                          "to use the trained one)")
    if expects != channels:
        return codebook, (f"codebook vq: the one trained with the backbone takes cells of {expects} channels, "
                          f"this backbone's cells have {channels}; fitting one on the cells instead")
    trained = VQCodebook.from_state(state)
    trained.seed = codebook.seed
    trained.fit_info_ = {"k": words, "dim": int(state["codes"].shape[1]), "codebook": "vq",
                         "source": TRAINED_SOURCE, "cells_total": 0, "cells_used": 0, "seconds": 0.0}
    return trained, f"codebook vq: {words:,} words {TRAINED_SOURCE}, no fit"
