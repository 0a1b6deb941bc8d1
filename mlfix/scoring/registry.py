"""One registry of checks, and :func:`compute_scores`, which runs them and shares what they need.

After cleanlab's ``datalab.internal.issue_manager_factory.REGISTRY``: a check is a function of
:class:`Inputs`, registered under a name with :func:`register`, that returns the table of
:mod:`mlfix.scoring.contract` (a score per sample, higher = worse, and a suggested label; any extra
column, like ``flag``, comes out of :func:`compute_scores` as ``<column>_<name>``). It declares what
it needs, from :data:`RESOURCES`:

==============  =====================================================================================
``embeddings``  the pooled vectors (always given)
``words``       the bags of visual words (``bags=``); a check that needs them is left out by default
                when there are none
``neighbours``  the kNN graph of the embeddings (:func:`mlfix.scoring.neighbours.embedding_neighbours`)
``probe``       the out-of-fold probe fit (:func:`mlfix.scoring.probe.out_of_fold_probabilities`)
``scores``      other checks' tables (the combined score reads the checks named by ``combine``)
==============  =====================================================================================

:class:`Inputs` computes each shared resource at most once, on first use: ``knn`` alone never fits
the probe, and ``cleanlab``, ``loss`` and ``combined`` share one fit. The registered checks, in the
order of their columns in ``scores.parquet``:

>>> list(REGISTRY)
['knn', 'words', 'cleanlab', 'loss', 'combined']

A new check (duplicates, outliers, image quality) is a function in its own module, registered here
next to the others so that importing the registry registers every check::

    @register("outlier", needs=("neighbours",))
    def _outlier(inputs: Inputs) -> pd.DataFrame:
        \"\"\"Mean cosine distance to the nearest neighbours.\"\"\"
        return outlier_score(inputs.neighbours, inputs.sample_ids)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.combine import COMBINED_DEFAULT, COMBINED_WEIGHTS, combined
from mlfix.scoring.contract import SCORE_COLUMNS, check_embeddings, check_ids, check_trusted, encode_labels
from mlfix.scoring.neighbours import DEFAULT_K, Neighbours, embedding_neighbours, knn_vote, word_vote
from mlfix.scoring.probe import OutOfFold, confident_learning, out_of_fold_probabilities, probe_loss
from mlfix.scoring.trust import label_trust

RESOURCES = ("embeddings", "words", "neighbours", "probe", "scores")
DEFAULT_CHECK = "combined"  # the queue reviewers see: ``score`` and ``suggested_label`` come from it
_MISSING = {"words": "bags of visual words (bags=...)"}  # what to pass for a resource that may be absent


@dataclass(frozen=True)
class Check:
    """A registered check: ``run(inputs) -> DataFrame[sample_id, score, suggested_label, ...]``."""

    name: str
    run: Callable[["Inputs"], pd.DataFrame]
    needs: frozenset[str]

    @property
    def description(self) -> str:
        """The first line of the check's docstring."""
        return (self.run.__doc__ or "").strip().split("\n")[0]


REGISTRY: dict[str, Check] = {}


def register(name: str, *, needs: Iterable[str] = ()) -> Callable:
    """Decorator: register ``run(inputs)`` as the check ``name``, needing ``needs`` (:data:`RESOURCES`)."""
    needs = frozenset(needs)
    unknown = needs - set(RESOURCES)
    if unknown:
        raise ValueError(f"check {name!r} needs unknown resources {sorted(unknown)}; "
                         f"choose from {list(RESOURCES)}")

    def decorate(run: Callable[[Inputs], pd.DataFrame]) -> Callable[[Inputs], pd.DataFrame]:
        old = REGISTRY.get(name)
        if old is not None and old.run.__qualname__ != run.__qualname__:  # a module reload is fine
            raise ValueError(f"a check named {name!r} is already registered ({old.run.__qualname__}); "
                             "register yours under another name")
        REGISTRY[name] = Check(name, run, needs)
        return run
    return decorate


def get_check(name: str) -> Check:
    """The registered check ``name``, or ValueError listing the known names."""
    if name not in REGISTRY:
        raise ValueError(f"unknown score method {name!r}; choose from {list(REGISTRY)}")
    return REGISTRY[name]


class Inputs:
    """What checks read: the validated inputs, and the shared resources, each computed at most once.

    ``probabilities`` and ``neighbours`` may be given precomputed (the review loop reuses them).
    ``finetuned``: out-of-fold probabilities of a network fine-tuned on the labels
    (:mod:`mlfix.training.finetune`); the probe resource is then the mean of them and the linear
    probe's (on CIFAR-10N 3k the mean beat either alone: README, ``python -m bench.finetune``).
    """

    def __init__(self, embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence, *,
                 bags: np.ndarray | None = None, trusted: np.ndarray | None = None, seed: int = 0,
                 k: int = DEFAULT_K, folds: int = 5, combine: Sequence[str] = COMBINED_DEFAULT,
                 probabilities: OutOfFold | None = None, neighbours: Neighbours | None = None,
                 finetuned: OutOfFold | None = None):
        self.embeddings = check_embeddings(embeddings)
        self.n = n = self.embeddings.shape[0]
        encode_labels(labels, n)  # one label per sample, or a message that says so
        self.labels = labels  # as given: each check encodes them (and suggests labels in their type)
        self.sample_ids, self.trusted = check_ids(sample_ids, n), check_trusted(trusted, n)
        if bags is not None and np.asarray(bags).shape[0] != n:
            raise ValueError(f"bags has {np.asarray(bags).shape[0]} rows but there are {n} samples; "
                             "pass one bag of words per embedding row")
        self.bags, self.seed, self.k, self.folds, self.combine = bags, seed, k, folds, tuple(combine)
        self.finetuned = finetuned
        given = {"probe": probabilities, "neighbours": neighbours}
        self._shared = {name: value for name, value in given.items() if value is not None}
        self._tables: dict[str, pd.DataFrame] = {}

    def has(self, resource: str) -> bool:
        """Whether ``resource`` can be had from these inputs (only the bags may be missing)."""
        return resource != "words" or self.bags is not None

    @property
    def probe(self) -> OutOfFold:
        """The out-of-fold probe fit, fitted on first use."""
        return self._once("probe", lambda: blend(out_of_fold_probabilities(
            self.embeddings, self.labels, self.folds, self.seed, self.trusted), self.finetuned))

    @property
    def neighbours(self) -> Neighbours:
        """The ``k`` nearest neighbours of each embedding, searched on first use."""
        return self._once("neighbours", lambda: embedding_neighbours(self.embeddings, self.k))

    @property
    def words(self) -> np.ndarray:
        """The bags of visual words."""
        if self.bags is None:
            raise ValueError(f"this check needs {_MISSING['words']}")
        return self.bags

    def scores(self, name: str) -> pd.DataFrame:
        """The table of the check ``name``, run on first use (so a combination reuses it)."""
        if name not in self._tables:
            self._tables[name] = _checked(name, get_check(name).run(self), self.sample_ids)
        return self._tables[name]

    def _once(self, name: str, make: Callable):
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]


def blend(probe: OutOfFold, finetuned: OutOfFold | None) -> OutOfFold:
    """The mean of the linear probe's and a fine-tuned network's out-of-fold probabilities (same
    classes; ``probe`` alone without the other). The folds are the probe's; confident learning flags
    the blend afresh."""
    if finetuned is None:
        return probe
    if list(finetuned.classes) != list(probe.classes) or finetuned.probs.shape != probe.probs.shape:
        raise ValueError("fine-tuned probabilities must cover the same samples and classes as the labels; "
                         "build them with mlfix.scoring.probe.aligned_out_of_fold")
    return OutOfFold((probe.probs + finetuned.probs) / 2, probe.classes, probe.fold)


def _checked(name: str, table: pd.DataFrame, sample_ids: np.ndarray) -> pd.DataFrame:
    """A check's table, or TypeError when it breaks the contract (a bug in the check, not the data)."""
    if not isinstance(table, pd.DataFrame) or list(table.columns[:3]) != SCORE_COLUMNS \
            or len(table) != len(sample_ids):
        raise TypeError(f"check {name!r} must return one row per sample with columns {SCORE_COLUMNS} "
                        "first; build it with mlfix.scoring.contract.score_frame")
    return table


# ---------------------------------------------------------------------------------------------
# The checks


@register("knn", needs=("embeddings", "neighbours"))
def _knn(inputs: Inputs) -> pd.DataFrame:
    """Weighted label vote of the k nearest neighbours in embedding space."""
    return knn_vote(inputs.embeddings, inputs.labels, inputs.sample_ids, k=inputs.k, trusted=inputs.trusted,
                    neighbours=inputs.neighbours)


@register("words", needs=("words",))
def _words(inputs: Inputs) -> pd.DataFrame:
    """Label vote of the k images sharing the most visual words."""
    return word_vote(inputs.words, inputs.labels, inputs.sample_ids, k=inputs.k, trusted=inputs.trusted)


@register("cleanlab", needs=("probe",))
def _confident_learning(inputs: Inputs) -> pd.DataFrame:
    """Confident learning on the probe: 1 - self-confidence, and its label-issue flags."""
    return confident_learning(None, inputs.labels, inputs.sample_ids, trusted=inputs.trusted,
                              probabilities=inputs.probe)


@register("loss", needs=("probe",))
def _loss(inputs: Inputs) -> pd.DataFrame:
    """The probe's out-of-fold cross-entropy of the given label."""
    return probe_loss(None, inputs.labels, inputs.sample_ids, trusted=inputs.trusted, probabilities=inputs.probe)


@register("combined", needs=("scores",))
def _combined(inputs: Inputs) -> pd.DataFrame:
    """Weighted rank average of the checks named by ``combine``: the default queue."""
    weights = COMBINED_WEIGHTS if inputs.combine == COMBINED_DEFAULT else None
    return combined([inputs.scores(name) for name in inputs.combine], weights)


METHODS = tuple(REGISTRY)  # the built-in checks, in column order


# ---------------------------------------------------------------------------------------------
# All checks at once


def compute_scores(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence,
                   bags: np.ndarray | None = None, trusted: np.ndarray | None = None,
                   methods: Iterable[str] | None = None, seed: int = 0, k: int = DEFAULT_K, folds: int = 5,
                   combine: Sequence[str] = COMBINED_DEFAULT,
                   probabilities: OutOfFold | None = None,
                   neighbours: Neighbours | None = None, finetuned: OutOfFold | None = None) -> pd.DataFrame:
    """Every requested check in one wide table.

    Columns: ``sample_id, label, score, suggested_label`` (the combined check, the default queue;
    else the first check run), then ``score_<name>, suggested_<name>`` for each check run, in
    registry order, then each check's extra columns as ``<column>_<name>`` (``flag_cleanlab``).
    ``methods``: names from :data:`REGISTRY` (default: every check the inputs allow; ``words`` needs
    ``bags``). Shared resources are computed once (see :class:`Inputs`). Unlabeled samples (None/NaN)
    get a NaN score; fewer than two classes among the labels is a ValueError that says so. When the
    probe was fitted, ``table.attrs["trust"]`` says whether the labels can be trusted
    (:func:`mlfix.scoring.trust.label_trust`).

    Example:
        >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, .1, (40, 2))
        >>> table = compute_scores(x, ["a"] * 20 + ["b"] * 20, range(40), k=5)
        >>> list(table.columns[:6])
        ['sample_id', 'label', 'score', 'suggested_label', 'score_knn', 'suggested_knn']
    """
    inputs = Inputs(embeddings, labels, sample_ids, bags=bags, trusted=trusted, seed=seed, k=k, folds=folds,
                    combine=combine, probabilities=probabilities, neighbours=neighbours,
                    finetuned=finetuned)
    classes = encode_labels(inputs.labels).classes
    if len(classes) < 2:  # every score would be NaN (no labels) or 0 (one class): say so instead
        found = "no labels" if not classes else f"one class only ({classes[0]!r})"
        raise ValueError(f"{found}: label-error scores need labels of at least two classes; without them, "
                         "order the images by similarity instead (mlfix.pipeline.ordering)")
    wanted = select_checks(methods, inputs)
    table = _wide_table(inputs, {name: inputs.scores(name) for name in wanted})
    if "probe" in inputs._shared:  # the probe was fitted: say whether its labels can be trusted
        found = label_trust(inputs.probe, inputs.labels, inputs.trusted)
        table.attrs["trust"] = found.as_dict() if found is not None else None
    return table


def select_checks(methods: Iterable[str] | None, inputs: Inputs) -> list[str]:
    """The checks to run, in registry order; ValueError naming the known checks or what to pass."""
    if methods is None:
        wanted = [name for name, check in REGISTRY.items() if all(map(inputs.has, check.needs))]
    else:
        asked = set(methods)
        if not asked:
            raise ValueError(f"methods is empty; choose from {list(REGISTRY)}")
        unknown = asked - set(REGISTRY)
        if unknown:
            raise ValueError(f"unknown score methods {sorted(unknown)}; choose from {list(REGISTRY)}")
        wanted = [name for name in REGISTRY if name in asked]
        for name in wanted:
            _require(inputs, REGISTRY[name], f"the {name!r} method")
    if any("scores" in REGISTRY[name].needs for name in wanted):
        _check_combine(inputs)
    return wanted


def _require(inputs: Inputs, check: Check, who: str) -> None:
    missing = [resource for resource in sorted(check.needs) if not inputs.has(resource)]
    if missing:
        raise ValueError(f"{who} needs " + " and ".join(_MISSING[m] for m in missing))


def _check_combine(inputs: Inputs) -> None:
    parts = [name for name, check in REGISTRY.items() if "scores" not in check.needs]
    if not inputs.combine or set(inputs.combine) - set(parts):
        raise ValueError(f"combine must name methods from {parts}, got {list(inputs.combine)}")
    for name in inputs.combine:
        _require(inputs, REGISTRY[name], f"the combined score uses {name!r}, which")


def _wide_table(inputs: Inputs, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    default = tables[DEFAULT_CHECK] if DEFAULT_CHECK in tables else next(iter(tables.values()))
    out = pd.DataFrame({"sample_id": inputs.sample_ids,
                        "label": pd.Series(list(inputs.labels), dtype=object),
                        "score": default["score"], "suggested_label": default["suggested_label"]})
    for name, table in tables.items():
        out[f"score_{name}"] = table["score"]
        out[f"suggested_{name}"] = table["suggested_label"]
    for name, table in tables.items():
        for column in table.columns[len(SCORE_COLUMNS):]:
            out[f"{column}_{name}"] = table[column]
    return out
