"""Which codebook made a project's words, in the pages' words (the Codebook and Training pages).

The project's ``codebook`` setting (:mod:`mlfix.pipeline.codebooks`) is KMeans or a learned VQ
codebook; ``codebook/fit.json`` records how it was made. No Streamlit here: plain text for the pages.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlfix.project import Project

CODEBOOK_NAMES = {"kmeans": "KMeans", "vq": "learned VQ codebook"}  # the project's ``codebook`` setting


def codebook_fit(project: Project) -> dict:
    """What made the project's words: ``codebook/fit.json`` (``{}`` before the first index). A KMeans
    codebook's has no ``codebook`` key (as before the setting); a VQ codebook's says ``"vq"``."""
    try:
        return json.loads((project.dir / "codebook" / "fit.json").read_text())
    except (OSError, ValueError):
        return {}


def codebook_caption(fit: dict, words: int, used: int) -> str:
    """One line: which codebook made the words, how many there are and how many occur in an image.

    >>> codebook_caption({"codebook": "vq"}, 1024, 1019)
    'Words: learned VQ codebook (1,024 words, 1,019 used)'
    >>> codebook_caption({}, 16, 16)
    'Words: KMeans (16 words, 16 used)'
    """
    name = CODEBOOK_NAMES.get(fit.get("codebook", "kmeans"), str(fit.get("codebook")))
    return f"Words: {name} ({words:,} words, {used:,} used)"


def vq_fit_text(fit: dict) -> str | None:
    """The VQ codebook's fit in a sentence (None for KMeans): source, codes used, restarts, error.

    >>> vq_fit_text({"codebook": "vq", "source": "fitted on the cells", "k": 16, "words_used": 15,
    ...              "cells_used": 900, "restarts": 3})
    'VQ codebook fitted on the cells: 15 of 16 codes used on 900 training cells, 3 dead codes restarted.'
    >>> vq_fit_text({"codebook": "vq", "source": "trained with the backbone"})
    'VQ codebook trained with the backbone.'
    """
    if fit.get("codebook") != "vq":
        return None
    parts = []
    if "words_used" in fit:
        parts.append(f"{fit['words_used']:,} of {fit.get('k', 0):,} codes used on {fit.get('cells_used', 0):,} "
                     "training cells")
    if "restarts" in fit:
        parts.append(f"{fit['restarts']:,} dead codes restarted")
    if "reconstruction" in fit:
        parts.append(f"reconstruction error {fit['reconstruction']:.3g} (standardised cells)")
    if fit.get("seconds"):
        parts.append(f"{fit['seconds']:,} s")
    source = fit.get("source", "fitted on the cells")
    return f"VQ codebook {source}" + (f": {', '.join(parts)}." if parts else ".")
