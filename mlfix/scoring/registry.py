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
``meta``        per-sample image metadata (``meta=``, :meth:`mlfix.project.Project.image_meta`): width,
                height, split, content hash, image statistics; a check names the columns it reads
``groups``      the duplicates check's group per sample (computed once; the leak check reads it)
==============  =====================================================================================

A check also says whether it needs labels of at least two classes (``labels=True``: the label
checks); the health checks (duplicates, leaks, outliers, image quality) run without labels. By
default :func:`compute_scores` runs every check the inputs can serve and says why it left the others
out in ``table.attrs["skipped"]`` (``{"leak": "no split column: ...", "knn": "no labels: ..."}``).

:class:`Inputs` computes each shared resource at most once, on first use: ``knn`` alone never fits
the probe, and ``cleanlab``, ``loss`` and ``combined`` share one fit. The registered checks, in the
order of their columns in ``scores.parquet``:

>>> list(REGISTRY)  # doctest: +NORMALIZE_WHITESPACE
['knn', 'words', 'cleanlab', 'loss', 'combined', 'duplicates', 'leak', 'outlier', 'class_outlier',
 'dark', 'overexposed', 'blurry', 'low_information', 'odd_aspect', 'tiny', 'grayscale']

The label checks are registered here, then the health checks of :mod:`mlfix.scoring.health_checks`
(so importing the registry registers every check). A new check
is a function in its own module, registered the same way::

    @register("outlier", needs=("neighbours",), labels=False)
    def _outlier(inputs: Inputs) -> pd.DataFrame:
        \"\"\"Mean cosine distance to the nearest neighbours.\"\"\"
        return outlier_check(inputs.neighbours, inputs.sample_ids)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mlfix.scoring.blend import blend, blend_weight
from mlfix.scoring.combine import COMBINED_DEFAULT, combined, default_weights
from mlfix.scoring.contract import (SCORE_COLUMNS, check_embeddings, check_ids, check_meta, check_trusted,
                                    encode_labels)
from mlfix.scoring.health_checks import HEALTH_CHECKS, queue_conflicts
from mlfix.scoring.neighbours import DEFAULT_K, Neighbours, embedding_neighbours, knn_vote, word_vote
from mlfix.scoring.probe import OutOfFold, confident_learning, out_of_fold_probabilities, probe_loss
from mlfix.scoring.trust import label_trust

RESOURCES = ("embeddings", "words", "neighbours", "probe", "scores", "meta", "groups")
DEFAULT_CHECK = "combined"  # the queue reviewers see: ``score`` and ``suggested_label`` come from it
_MISSING = {"words": "bags of visual words (bags=...)",  # what to pass for a resource that may be absent
            "meta": "image metadata (meta=..., e.g. Project.image_meta())"}
# Why a check whose metadata columns are absent was left out, and what to do (the first that applies).
_META_HINTS = {"split": "no split column: give a `split` column in the labels CSV (or train/, val/, test/ "
                        "folders) to find leaks between splits",
               "width": "no image sizes: rescan the project (`mlfix index` after `Project.create`)",
               "height": "no image sizes: rescan the project (`mlfix index` after `Project.create`)"}
_STATS_HINT = "no image statistics ({}): run `mlfix index` again to measure them (the features are reused)"


@dataclass(frozen=True)
class Check:
    """A registered check: ``run(inputs) -> DataFrame[sample_id, score, suggested_label, ...]``.

    ``labels``: it needs labels of at least two classes (the label checks). ``meta``: the columns of
    the ``meta`` resource it reads (a tuple, or a function returning one: resolved on use, so a
    check's module is imported only when it runs)."""

    name: str
    run: Callable[["Inputs"], pd.DataFrame]
    needs: frozenset[str]
    labels: bool = True
    meta: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()

    @property
    def description(self) -> str:
        """The first line of the check's docstring."""
        return (self.run.__doc__ or "").strip().split("\n")[0]

    @property
    def meta_columns(self) -> tuple[str, ...]:
        """The columns of the ``meta`` resource the check reads."""
        return tuple(self.meta() if callable(self.meta) else self.meta)


REGISTRY: dict[str, Check] = {}


def register(name: str, *, needs: Iterable[str] = (), labels: bool = True,
             meta: tuple[str, ...] | Callable[[], tuple[str, ...]] = ()) -> Callable:
    """Decorator: register ``run(inputs)`` as the check ``name``, needing ``needs`` (:data:`RESOURCES`),
    labels of two classes or more (``labels``) and the ``meta`` columns (see :class:`Check`)."""
    needs = frozenset(needs) | ({"meta"} if meta else set())
    unknown = needs - set(RESOURCES)
    if unknown:
        raise ValueError(f"check {name!r} needs unknown resources {sorted(unknown)}; "
                         f"choose from {list(RESOURCES)}")

    def decorate(run: Callable[[Inputs], pd.DataFrame]) -> Callable[[Inputs], pd.DataFrame]:
        old = REGISTRY.get(name)
        if old is not None and old.run.__qualname__ != run.__qualname__:  # a module reload is fine
            raise ValueError(f"a check named {name!r} is already registered ({old.run.__qualname__}); "
                             "register yours under another name")
        REGISTRY[name] = Check(name, run, needs, labels, meta)
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
    (:mod:`mlfix.training.finetune`); the probe resource is then their weighted mean with the linear
    probe's, each weighted by how well it predicts the given labels (:func:`mlfix.scoring.blend.blend`).
    ``meta``: one row of image metadata per sample (:func:`mlfix.scoring.contract.check_meta`).
    """

    def __init__(self, embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence, *,
                 bags: np.ndarray | None = None, trusted: np.ndarray | None = None, seed: int = 0,
                 k: int = DEFAULT_K, folds: int = 5, combine: Sequence[str] = COMBINED_DEFAULT,
                 probabilities: OutOfFold | None = None, neighbours: Neighbours | None = None,
                 finetuned: OutOfFold | None = None, meta: pd.DataFrame | None = None):
        self.embeddings = check_embeddings(embeddings)
        self.n = n = self.embeddings.shape[0]
        self.classes = encode_labels(labels, n).classes  # one label per sample, or a message that says so
        self.labels = labels  # as given: each check encodes them (and suggests labels in their type)
        self.sample_ids, self.trusted = check_ids(sample_ids, n), check_trusted(trusted, n)
        if bags is not None and np.asarray(bags).shape[0] != n:
            raise ValueError(f"bags has {np.asarray(bags).shape[0]} rows but there are {n} samples; "
                             "pass one bag of words per embedding row")
        self.bags, self.seed, self.k, self.folds, self.combine = bags, seed, k, folds, tuple(combine)
        self.finetuned = finetuned
        self.meta = None if meta is None else check_meta(meta, n)
        given = {"probe": probabilities, "neighbours": neighbours}
        self._shared = {name: value for name, value in given.items() if value is not None}
        self._probe_given = probabilities is not None  # then it is used as it is, blended with nothing
        self._tables: dict[str, pd.DataFrame] = {}

    def has(self, resource: str) -> bool:
        """Whether ``resource`` can be had from these inputs (the bags and the metadata may be missing)."""
        return {"words": self.bags is not None, "meta": self.meta is not None}.get(resource, True)

    @property
    def probe(self) -> OutOfFold:
        """The out-of-fold probe fit (blended with the fine-tuned probabilities), fitted on first use."""
        return self._once("probe", lambda: blend(self._frozen_probe, self.finetuned, self._judged_codes,
                                                 self.finetuned_share))

    @property
    def finetuned_share(self) -> float:
        """The fine-tuned probabilities' weight in :attr:`probe` (:func:`mlfix.scoring.blend.blend_weight`);
        0 without them, or when the probe's probabilities were given."""
        if self.finetuned is None or self._probe_given:
            return 0.0
        return self._once("finetuned_share", lambda: blend_weight(self._frozen_probe, self.finetuned,
                                                                  self._judged_codes))

    @property
    def _frozen_probe(self) -> OutOfFold:
        return self._once("frozen_probe", lambda: out_of_fold_probabilities(
            self.embeddings, self.labels, self.folds, self.seed, self.trusted))

    @property
    def _judged_codes(self) -> np.ndarray:
        """The label codes the blend weight is judged on: trusted samples (every fold trained on them) -1."""
        return np.where(self.trusted, -1, encode_labels(self.labels, self.n).codes)

    @property
    def neighbours(self) -> Neighbours:
        """The ``k`` nearest neighbours of each embedding, searched on first use."""
        return self._once("neighbours", lambda: embedding_neighbours(self.embeddings, self.k))

    @property
    def groups(self) -> np.ndarray:
        """(N,) int64 duplicates group of each sample (-1: in none), from the duplicates check's table."""
        return self._once("groups", lambda: self.scores("duplicates")["group"].to_numpy(dtype=np.int64))

    @property
    def words(self) -> np.ndarray:
        """The bags of visual words."""
        if self.bags is None:
            raise ValueError(f"this check needs {_MISSING['words']}")
        return self.bags

    def column(self, name: str) -> pd.Series | None:
        """The metadata column ``name``, or None when there is no metadata or no such column."""
        return None if self.meta is None or name not in self.meta.columns else self.meta[name]

    def scores(self, name: str) -> pd.DataFrame:
        """The table of the check ``name``, run on first use (so a combination reuses it)."""
        if name not in self._tables:
            self._tables[name] = _checked(name, get_check(name).run(self), self.sample_ids)
        return self._tables[name]

    def unavailable(self, check: Check) -> str | None:
        """Why these inputs cannot serve ``check`` (a reason saying what to give), or None."""
        missing = [resource for resource in sorted(check.needs) if not self.has(resource)]
        if missing:
            return "no " + " and no ".join(_MISSING[m] for m in missing)
        if check.labels and len(self.classes) < 2:
            return too_few_classes(self.classes, "it needs")
        absent = [c for c in check.meta_columns if self.column(c) is None or self.column(c).isna().all()]
        if absent:
            return next((_META_HINTS[c] for c in absent if c in _META_HINTS), _STATS_HINT.format(", ".join(absent)))
        return None  # (a combination's parts are checked by _check_combine, which says what to pass)

    def _once(self, name: str, make: Callable):
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]


def too_few_classes(classes: Sequence[str], who: str) -> str:
    """``"no labels: ..."`` / ``"one class only ('cat'): ..."``: why ``who`` cannot run.

    >>> too_few_classes([], "it needs")
    'no labels: it needs labels of at least two classes'
    """
    found = "no labels" if not len(classes) else f"one class only ({classes[0]!r})"
    return f"{found}: {who} labels of at least two classes"


def _checked(name: str, table: pd.DataFrame, sample_ids: np.ndarray) -> pd.DataFrame:
    """A check's table, or TypeError when it breaks the contract (a bug in the check, not the data)."""
    if not isinstance(table, pd.DataFrame) or list(table.columns[:3]) != SCORE_COLUMNS \
            or len(table) != len(sample_ids):
        raise TypeError(f"check {name!r} must return one row per sample with columns {SCORE_COLUMNS} "
                        "first; build it with mlfix.scoring.contract.score_frame")
    return table


# ---------------------------------------------------------------------------------------------
# The label checks (the health checks are in mlfix.scoring.health_checks)


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
    weights = default_weights(inputs.finetuned_share) if inputs.combine == COMBINED_DEFAULT else None
    return combined([inputs.scores(name) for name in inputs.combine], weights)


for _name, _check in HEALTH_CHECKS.items():  # duplicates, leaks, outliers, image quality
    register(_name, needs=_check.needs, labels=_check.labels, meta=_check.meta)(_check.run)

METHODS = tuple(REGISTRY)  # the built-in checks, in column order
LABEL_METHODS = tuple(name for name in REGISTRY if name not in HEALTH_CHECKS)  # the label-error checks


# ---------------------------------------------------------------------------------------------
# All checks at once


def compute_scores(embeddings: np.ndarray, labels: Sequence, sample_ids: Sequence,
                   bags: np.ndarray | None = None, trusted: np.ndarray | None = None,
                   methods: Iterable[str] | None = None, seed: int = 0, k: int = DEFAULT_K, folds: int = 5,
                   combine: Sequence[str] = COMBINED_DEFAULT,
                   probabilities: OutOfFold | None = None,
                   neighbours: Neighbours | None = None, finetuned: OutOfFold | None = None,
                   meta: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every requested check in one wide table.

    Columns: ``sample_id, label, score, suggested_label`` (the combined check, the default queue;
    else the first check run), then ``score_<name>, suggested_<name>`` for each check run, in
    registry order, then each check's extra columns as ``<column>_<name>`` (``flag_cleanlab``,
    ``reason_dark``, ``group_duplicates``). ``methods``: names from :data:`REGISTRY` (default: every
    check the inputs can serve; ``table.attrs["skipped"]`` says why each other one was left out: no
    ``bags``, no ``meta`` or not its columns, fewer than two classes). ``meta``: image metadata, one
    row per sample (:meth:`mlfix.project.Project.image_meta`). Shared resources are computed once
    (see :class:`Inputs`). Unlabeled samples (None/NaN) get a NaN label score. In ``score``, copies
    whose label their duplicates group disagrees with come first (see
    :func:`~mlfix.scoring.health_checks.queue_conflicts`).
    ValueError when a requested check cannot run (saying why) or when none can. When the probe was
    fitted, ``table.attrs["trust"]`` says whether the labels can be trusted (:mod:`mlfix.scoring.trust`).

    Example:
        >>> x = np.r_[np.zeros((20, 2)), np.ones((20, 2))] + np.random.default_rng(0).normal(0, .1, (40, 2))
        >>> table = compute_scores(x, ["a"] * 20 + ["b"] * 20, range(40), k=5)
        >>> list(table.columns[:6])
        ['sample_id', 'label', 'score', 'suggested_label', 'score_knn', 'suggested_knn']
        >>> table.attrs["skipped"]["words"]
        'no bags of visual words (bags=...)'
    """
    inputs = Inputs(embeddings, labels, sample_ids, bags=bags, trusted=trusted, seed=seed, k=k, folds=folds,
                    combine=combine, probabilities=probabilities, neighbours=neighbours,
                    finetuned=finetuned, meta=meta)
    wanted, skipped = plan_checks(methods, inputs)
    tables = {name: inputs.scores(name) for name in wanted}
    table = _wide_table(inputs, tables)
    table.attrs["skipped"] = skipped
    # what a check that ran wants the user to know (duplicates: near copies not searched, and why)
    table.attrs["notes"] = {name: ran.attrs["note"] for name, ran in tables.items() if ran.attrs.get("note")}
    if "probe" in inputs._shared:  # the probe was fitted: say whether its labels can be trusted
        found = label_trust(inputs.probe, inputs.labels, inputs.trusted)
        table.attrs["trust"] = found.as_dict() if found is not None else None
    return table


def plan_checks(methods: Iterable[str] | None, inputs: Inputs) -> tuple[list[str], dict[str, str]]:
    """(the checks to run in registry order, ``{check: why it is left out}``). By default every check
    the inputs can serve; a requested one that cannot run is a ValueError saying why."""
    if methods is None:
        reasons = {name: inputs.unavailable(check) for name, check in REGISTRY.items()}
        wanted = [name for name, reason in reasons.items() if reason is None]
        if not wanted:
            raise ValueError(f"no check can run on these inputs: {'; '.join(sorted(set(reasons.values())))}")
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
        reasons = {name: "not requested (methods=...)" for name in REGISTRY}
    if DEFAULT_CHECK in wanted:
        _check_combine(inputs)
    return wanted, {name: reason for name, reason in reasons.items() if name not in wanted}


def _require(inputs: Inputs, check: Check, who: str) -> None:
    missing = [resource for resource in sorted(check.needs) if not inputs.has(resource)]
    if missing:
        raise ValueError(f"{who} needs " + " and ".join(_MISSING[m] for m in missing))
    if check.labels and len(inputs.classes) < 2:
        raise ValueError(too_few_classes(inputs.classes, "label-error scores need") + "; without them, order the "
                         "images by similarity (mlfix.pipeline.ordering) or run the checks that need no "
                         f"labels ({', '.join(n for n, c in REGISTRY.items() if not c.labels)})")
    reason = inputs.unavailable(check)
    if reason is not None:
        raise ValueError(f"{who} cannot run here: {reason}")


def _check_combine(inputs: Inputs) -> None:
    parts = [name for name, check in REGISTRY.items()
             if "scores" not in check.needs and check.labels and name not in HEALTH_CHECKS]
    if not inputs.combine or set(inputs.combine) - set(parts):
        raise ValueError(f"combine must name methods from {parts}, got {list(inputs.combine)}")
    for name in inputs.combine:
        _require(inputs, REGISTRY[name], f"the combined score uses {name!r}, which")


def _wide_table(inputs: Inputs, tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    default = tables[DEFAULT_CHECK] if DEFAULT_CHECK in tables else next(iter(tables.values()))
    score = default["score"]
    if "duplicates" in tables and "conflict" in tables["duplicates"]:
        score = queue_conflicts(score, tables["duplicates"], inputs.labels, inputs.trusted)
    out = pd.DataFrame({"sample_id": inputs.sample_ids,
                        "label": pd.Series(list(inputs.labels), dtype=object),
                        "score": score, "suggested_label": default["suggested_label"]})
    for name, table in tables.items():
        out[f"score_{name}"] = table["score"]
        out[f"suggested_{name}"] = table["suggested_label"]
    for name, table in tables.items():
        for column in table.columns[len(SCORE_COLUMNS):]:
            out[f"{column}_{name}"] = table[column]
    return out
