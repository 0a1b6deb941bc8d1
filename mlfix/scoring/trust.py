"""Whether the label-based scores can be trusted: the probe's cross-validated accuracy against chance.

The label-error scores (the probe's loss, confident learning, the neighbour votes) assume that most
labels are right: they find the few that disagree with the many. When most labels are wrong (an
image-search set with 80% wrong labels, labels shuffled by a bad join), the probe learns the noise,
its out-of-fold predictions agree with the given labels about as often as guessing the most common
class would, and every score is noise. :func:`label_trust` measures that on the probe fit the scores
already made (no extra fit) and gives a verdict:

=============  ========================================================================================
``ok``         the probe's skill over chance is at least :data:`WEAK_SKILL`: the scores rank errors
``weak``       some skill, below :data:`WEAK_SKILL`: many labels are wrong; the scores are rough
``untrusted``  skill below :data:`UNTRUSTED_SKILL` (accuracy near chance): the labels are mostly wrong
               or meaningless; use the similarity order and runs, or the Clusters page, instead
=============  ========================================================================================

``skill = (accuracy - chance) / (1 - chance)``, where ``accuracy`` is the share of labelled, unreviewed
samples whose out-of-fold prediction equals their label, and ``chance`` the share of the most common
class among them (what always guessing it would score).

Example (labels shuffled at random: near chance):
    >>> from mlfix.scoring.probe import out_of_fold_probabilities
    >>> rng = np.random.default_rng(0)
    >>> x = np.repeat(np.eye(4, 8) * 4, 25, axis=0) + rng.normal(0, 1, (100, 8))
    >>> shuffled = rng.permutation(np.repeat(list("abcd"), 25))
    >>> label_trust(out_of_fold_probabilities(x, shuffled, refit_without_suspects=False), shuffled).verdict
    'untrusted'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mlfix.scoring.contract import check_trusted
from mlfix.scoring.probe import OutOfFold

UNTRUSTED_SKILL = 0.25  # below: accuracy near chance
WEAK_SKILL = 0.5
VERDICTS = ("ok", "weak", "untrusted")
TRUST_FILE = "scores.trust.json"  # beside scores.parquet in a project


@dataclass(frozen=True)
class Trust:
    """The probe's out-of-fold ``accuracy`` on the given labels, ``chance`` (the majority-class rate),
    ``skill`` over chance, the ``verdict`` (:data:`VERDICTS`) and ``n`` samples it was measured on."""

    accuracy: float
    chance: float
    skill: float
    verdict: str
    n: int
    source: str = "the probe"  # whose predictions were measured: "your model" for the user's own

    @property
    def message(self) -> str:
        """One line for the user; empty when the verdict is ``ok``."""
        figures = f"{self.source} agrees with {self.accuracy:.0%} of the labels, chance is {self.chance:.0%}"
        if self.verdict == "untrusted":
            return (f"Label-based scores are not to be trusted: {figures}, so most labels look wrong. "
                    "Use the similarity order (runs) or the Clusters page to relabel instead.")
        if self.verdict == "weak":
            return f"Label-based scores are rough: {figures}; many labels look wrong."
        return ""

    def as_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


def verdict_of(skill: float) -> str:
    """``ok``, ``weak`` or ``untrusted`` for a skill over chance.

    >>> verdict_of(0.1), verdict_of(0.3), verdict_of(0.8)
    ('untrusted', 'weak', 'ok')
    """
    return "untrusted" if skill < UNTRUSTED_SKILL else "weak" if skill < WEAK_SKILL else "ok"


def label_trust(probabilities: OutOfFold, labels: Sequence, trusted: np.ndarray | None = None) -> Trust | None:
    """The :class:`Trust` of ``labels`` from the probe's out-of-fold fit; None when no labelled,
    unreviewed sample has an out-of-fold prediction (nothing to measure)."""
    classes = list(probabilities.classes)
    index = {c: i for i, c in enumerate(classes)}
    given = np.array([index.get(v, -1) for v in labels], dtype=np.int64)
    rows = np.flatnonzero((given >= 0) & ~check_trusted(trusted, len(given)))
    if len(rows) == 0 or len(classes) < 2:
        return None
    accuracy = float(np.mean(probabilities.probs[rows].argmax(axis=1) == given[rows]))
    chance = float(np.bincount(given[rows], minlength=len(classes)).max() / len(rows))
    skill = (accuracy - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    return Trust(round(accuracy, 4), round(chance, 4), round(skill, 4), verdict_of(skill), int(len(rows)))


def with_source(trust: dict | None, source: str) -> dict | None:
    """A trust summary (``Trust.as_dict()``) measured on ``source``'s predictions, its message saying so.

    >>> with_source(Trust(0.3, 0.25, 0.07, "untrusted", 40).as_dict(), "your model")["message"][:58]
    'Label-based scores are not to be trusted: your model agree'
    """
    if trust is None:
        return None
    fields = {name: trust[name] for name in ("accuracy", "chance", "skill", "verdict", "n")}
    return Trust(**fields, source=source).as_dict()


def write_trust(path: Path, trust: dict | None) -> None:
    """Store a trust summary (``Trust.as_dict()``) as JSON at ``path``; None removes it."""
    from mlfix.atomic import write_json_atomic

    if trust is None:
        Path(path).unlink(missing_ok=True)
    else:
        write_json_atomic(path, trust, sort_keys=True)


def read_trust(path: Path) -> dict | None:
    """The trust summary stored at ``path`` (a project's :data:`TRUST_FILE`), or None."""
    try:
        found = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("verdict") in VERDICTS else None
