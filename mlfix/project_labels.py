"""The label side of a :class:`~mlfix.project.Project`: suspected errors and the health checks, fine-tuning,
suggestions, clusters.

:class:`ProjectLabels` is a mixin of :class:`~mlfix.project.Project` (which gives it ``dir``,
``samples``, ``settings``, ``reviews``, the index arrays and ``_require_index``); it composes the
scoring layer (:mod:`mlfix.scoring`), fine-tuning (:mod:`mlfix.training.finetune`) and the review's
decisions, and caches what it computes in the project folder with a key file, as the index does.
Use it through ``Project``: ``project.scores()``, ``project.health()``, ``project.finetune()``,
``project.suggest()``, ``project.clusters()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mlfix.errors import NotEnoughLabelsError
from mlfix.pipeline.artifacts import atomic_parquet, read_key, same_key, write_key
from mlfix.progress import Progress

HEALTH_SAMPLES = "health_samples.parquet"  # the health checks per sample, for a set whose labels allow no scores

if TYPE_CHECKING:
    from mlfix.training.finetune import FinetuneResult


# Part of the scores cache key: bump it when a check's results change for the same inputs (a new
# default threshold, a fixed bug), so that a project scored by an older mlfix is scored again.
SCORES_VERSION = 3


class ProjectLabels:
    """Scores, fine-tuning, suggestions and clusters of a project (a mixin of ``Project``)."""

    def scores(self, methods=None) -> pd.DataFrame:
        """Suspected label errors and the health checks, one row per readable sample, most suspect first
        (see mlfix.scoring.registry).

        Columns: sample_id, path, label, score, suggested_label, then ``score_<check>`` and
        ``suggested_<check>`` per check, then each check's extra columns as ``<column>_<check>``
        (``flag_duplicates``, ``reason_dark``, ``group_duplicates``...). Rows are sorted by ``score``
        (the combined label score; members of a duplicates group whose labels conflict first),
        highest (most suspect) first; ties keep the sample order; unlabeled samples have no score
        (NaN) and come last (their ``suggested_label`` is still a guess). ``table.attrs["trust"]``:
        whether the labels can be trusted (:mod:`mlfix.scoring.trust`; a dict with a ``verdict``);
        ``table.attrs["skipped"]``: the checks left out and why (no splits: no leak check). The review
        loop learns: labels are the corrected ones and samples a reviewer relabeled or confirmed are
        trusted. The user's own predictions and embeddings (:meth:`add_predictions`,
        :meth:`add_embeddings`) replace the probe's and the pooled vectors. Recomputed only when the
        index, the image statistics, the decisions or the user's predictions changed since the last
        call; :meth:`cached_scores` never recomputes. Without ``methods`` it also stores the
        :meth:`health` summary.

        Raises :class:`~mlfix.errors.NotEnoughLabelsError` when the readable samples' labels name
        fewer than two classes (an unlabeled folder): the message says what works instead (the
        similarity order; :meth:`health`, the checks that need no labels).
        """
        from mlfix.scoring.contract import most_suspect_first
        from mlfix.scoring.trust import TRUST_FILE, read_trust, write_trust

        self._require_index()
        samples = self.samples
        state, trusted = self._label_state()
        key = self._scores_key(methods)
        path = self.dir / "scores.parquet"
        if same_key(self.dir / "scores.key.json", key) and path.exists():
            table = pd.read_parquet(path)  # sorted again: a table written unsorted by an older mlfix
            table = most_suspect_first(table, pd.Index(samples["sample_id"]).get_indexer(table["sample_id"]))
            table.attrs["trust"] = read_trust(self.dir / TRUST_FILE)
            return table
        rows = np.flatnonzero(self.readable())
        classes = self._classes(state["label"].to_numpy(), rows)
        if len(rows) and len(classes) < 2:
            raise NotEnoughLabelsError(self._too_few_classes(sorted(map(str, classes))))
        table = self._compute_scores(rows, state["label"].to_numpy(), trusted, methods)
        table.insert(1, "path", samples["path"].to_numpy()[rows])
        trust, skipped, notes = table.attrs.get("trust"), table.attrs.get("skipped"), table.attrs.get("notes")
        table = most_suspect_first(table, rows)
        table.attrs = {"skipped": skipped, "notes": notes}  # kept in the parquet file: read back with the table
        atomic_parquet(table, path)
        write_trust(self.dir / TRUST_FILE, trust)  # read back by the Review page and `mlfix scores`
        if methods is None:
            self._write_health(table, key)
        write_key(self.dir / "scores.key.json", key)
        table.attrs["trust"] = trust
        return table

    def health(self) -> pd.DataFrame:
        """The dataset's health: one row per check (:func:`mlfix.scoring.health.health_summary`:
        ``check, kind, flagged, samples, threshold, description, skipped``), like cleanlab Datalab's
        issue summary. Runs without labels: the label checks are then rows whose ``skipped`` says
        ``no labels: ...`` and the health checks (duplicates, leaks, outliers, image quality) run.
        With labels it comes with :meth:`scores`; cached on the same key."""
        self._require_index()
        key, path = self._scores_key(None), self.dir / "health.parquet"
        per_sample = any((self.dir / name).exists() for name in ("scores.parquet", HEALTH_SAMPLES))
        if not (same_key(self.dir / "health.key.json", key) and path.exists() and per_sample):
            state, trusted = self._label_state()
            rows = np.flatnonzero(self.readable())
            if len(self._classes(state["label"].to_numpy(), rows)) >= 2:
                table = self.scores()  # stores the summary when it computes
            else:  # no label checks: the health checks alone; their per-sample table shows which samples
                table = self._compute_scores(rows, state["label"].to_numpy(), trusted, None)
                table.insert(1, "path", self.samples["path"].to_numpy()[rows])
                kept = table.copy()
                kept.attrs = {"skipped": table.attrs.get("skipped"), "notes": table.attrs.get("notes")}
                atomic_parquet(kept, self.dir / HEALTH_SAMPLES)
            if not (same_key(self.dir / "health.key.json", key) and path.exists()):
                self._write_health(table, key)
        return pd.read_parquet(path)

    def cached_health(self) -> pd.DataFrame | None:
        """The last health summary :meth:`health` or :meth:`scores` stored (possibly stale), or None."""
        path = self.dir / "health.parquet"
        return pd.read_parquet(path) if path.exists() else None

    def health_samples(self) -> pd.DataFrame | None:
        """Which samples the last health checks flagged: one row per readable sample with
        ``score_<check>``, ``flag_<check>``, ``reason_<check>``... (the scores table, or for a set without
        two classes the table :meth:`health` stored in ``health_samples.parquet``; the newer of the
        two), or None before either was computed."""
        held = [name for name in ("scores.parquet", HEALTH_SAMPLES) if (self.dir / name).exists()]
        if not held:
            return None
        return self._load_parquet(max(held, key=lambda name: (self.dir / name).stat().st_mtime_ns))

    def _write_health(self, table: pd.DataFrame, key: dict) -> None:
        from mlfix.scoring.health import health_summary

        atomic_parquet(health_summary(table), self.dir / "health.parquet")
        write_key(self.dir / "health.key.json", key)

    def _scores_key(self, methods) -> dict:
        """What the scores (and the health summary) depend on: a change to any recomputes them."""
        stamp = getattr(self, "predictions_stamp", None)
        return {"index": read_key(self.dir / "orders" / "orders.key.json"), "decisions": self.reviews.last_id(),
                "checks": SCORES_VERSION,
                "methods": sorted(methods) if methods else None, "finetune": self.finetune_stamp(),
                "quality": read_key(self.dir / "features" / "quality.key.json"),
                "predictions": stamp() if stamp is not None else None}

    @staticmethod
    def _classes(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The distinct labels of ``rows``."""
        return pd.Series(np.asarray(labels, dtype=object)[rows], dtype=object).dropna().unique()

    def _compute_scores(self, rows: np.ndarray, labels: np.ndarray, trusted: np.ndarray, methods) -> pd.DataFrame:
        """:func:`~mlfix.scoring.registry.compute_scores` on ``rows``, with the image metadata, and the
        user's probabilities and embeddings when added (else the probe, fine-tuned when it was, and
        the pooled vectors)."""
        from mlfix.scoring.registry import compute_scores

        labeled = len(self._classes(labels, rows)) >= 2
        user_probabilities = getattr(self, "user_probabilities", None)
        probabilities = user_probabilities(rows, labels) if user_probabilities and labeled else None
        user_embeddings = getattr(self, "user_embeddings", None)
        x = user_embeddings(rows) if user_embeddings else None
        finetuned = self._finetuned_probabilities(rows, labels) if probabilities is None and labeled else None
        table = compute_scores(np.asarray(self.pooled()[rows] if x is None else x, dtype=np.float32), labels[rows],
                               self.samples["sample_id"].to_numpy()[rows], bags=np.asarray(self.bags()[rows]),
                               trusted=trusted[rows], methods=methods, seed=self.settings.seed,
                               probabilities=probabilities, finetuned=finetuned, meta=self.image_meta(rows))
        if probabilities is not None:  # the trust verdict measured the user's model, not the probe
            from mlfix.scoring.trust import with_source

            table.attrs["trust"] = with_source(table.attrs.get("trust"), "your model")
        return table

    # ---- fine-tuning (mlfix.training.finetune) ---------------------------------------------------

    def finetune(self, progress: Progress | None = None, device: str | None = None, workers: int | None = None,
                 quality: str | None = None, **options) -> "FinetuneResult":
        """Cross-validated fine-tuning of the backbone on the current labels (reviewed ones trusted);
        from then on :meth:`scores` takes the probe-based checks from its out-of-fold probabilities.
        ``quality``: ``fast``, ``default`` or ``best`` (:data:`~mlfix.training.finetune.FINETUNE_QUALITIES`);
        ``options`` given explicitly win over it: ``backbone`` (the network), ``folds``, ``epochs``,
        ``image_size``, ``train``, ``max_train``... (see :class:`~mlfix.training.finetune.FinetuneSettings`
        and :func:`~mlfix.training.finetune_project.preset_options`). A rerun resumes an unfinished run."""
        from mlfix.training.finetune_project import finetune_project

        self._require_index()
        rows = np.flatnonzero(self.readable())
        state, trusted = self._label_state()
        return finetune_project(self.dir, self.settings, self.root, self.samples.iloc[rows],
                                state["label"].to_numpy()[rows], trusted[rows], self.image_size,
                                progress or Progress("finetune", self.dir / "progress"), device, workers,
                                options, quality)

    def _label_state(self) -> tuple[pd.DataFrame, np.ndarray]:
        """(the review's current state of every sample: label, status..., the trusted mask: samples a
        reviewer relabeled or confirmed)."""
        state = self.reviews.current_state(self.samples[["sample_id", "label"]])
        return state, state["status"].isin(["ok", "relabeled"]).to_numpy()

    def finetune_use(self) -> str | None:
        """How the scores use the saved fine-tuning result, for ``mlfix status`` and the Training page:
        ``"the scores use it"``, with a warning when the labels changed since it trained (a review, a
        new labels file: a rerun learns them), or why they cannot (images added since); None without
        a result."""
        from mlfix.data.labels import encode_labels
        from mlfix.training.finetune import labels_digest
        from mlfix.training.finetune_project import FOLDER, finetuned_result

        if self.finetune_stamp() is None:
            return None
        rows = np.flatnonzero(self.readable())
        if finetuned_result(self.dir, self.samples["sample_id"].to_numpy()[rows]) is None:
            return ("the scores do not use it: it does not cover every image (added since?); rerun "
                    "`mlfix finetune`")
        state, _ = self._label_state()
        trained_on = read_key(self.dir / FOLDER / "run.json") or {}
        if trained_on.get("labels") != labels_digest(encode_labels(state["label"].to_numpy()[rows]).codes):
            return ("the scores use it, but the labels changed since it trained (reviews or a new labels file): "
                    "rerun `mlfix finetune` to learn them")
        return "the scores use it"

    def finetune_stamp(self) -> str | None:
        """What changes when a fine-tuning run saves a new result (None: there is none)."""
        path = self.dir / "finetune" / "result.json"
        return str(path.stat().st_mtime_ns) if path.exists() else None

    def _finetuned_probabilities(self, rows: np.ndarray, labels: np.ndarray):
        """The fine-tuned out-of-fold probabilities of ``rows``, columns as the labels' classes (None
        without a result that covers them all)."""
        from mlfix.scoring.probe import aligned_out_of_fold
        from mlfix.training.finetune_project import finetuned_result

        result = finetuned_result(self.dir, self.samples["sample_id"].to_numpy()[rows])
        if result is None:
            return None
        return aligned_out_of_fold(result.probs, result.classes, result.fold, labels[rows])

    def scores_unavailable(self) -> str | None:
        """Why :meth:`scores` cannot rank label errors here (the given labels name fewer than two
        classes), saying what works instead; None when the labels allow it. Labels made in the review
        count (read only when the given labels name fewer than two classes)."""
        labels = self.labels
        if len(labels) < 2:
            labels = sorted(map(str, self.corrected_labels()["corrected_label"].dropna().unique()))
        return self._too_few_classes(labels) if len(labels) < 2 else None

    def _too_few_classes(self, classes: list[str]) -> str:
        found = "no labels" if not classes else f"one class only ({classes[0]!r})"
        return (f"{found}: label-error scores need at least two classes; the similarity order works: "
                f"open the Review page (`mlfix serve --project {self.dir}`); so do the checks that need no "
                f"labels (duplicates, leaks, outliers, image quality): `project.health()`, "
                f"`mlfix status --health --project {self.dir}` or the app's Dataset page")

    def cached_scores(self) -> pd.DataFrame | None:
        """The last computed scores table, most suspect first as :meth:`scores` wrote it (possibly
        older than the latest decisions), or None."""
        path = self.dir / "scores.parquet"
        return self._load_parquet("scores.parquet") if path.exists() else None

    def suggest(self, method: str = "auto", scope: str = "auto", k: int | None = None) -> pd.DataFrame:
        """Suggested labels with a confidence, learned from the labels there are (given, relabeled,
        confirmed): ``DataFrame[sample_id, suggested_label, confidence, source]``, most confident first.

        ``scope``: ``unlabeled``, ``all`` (every unreviewed sample), or ``auto`` (``all`` when the last
        scores found the given labels untrusted: then only reviewed labels are learned from).
        ``method``: ``knn``, ``probe`` or ``auto`` (see :mod:`mlfix.scoring.suggest`). Fewer than two
        classes: an empty table, ``attrs["reason"]`` says why. Cached until the index or decisions change.
        """
        from mlfix.scoring.suggest import DEFAULT_K, cached_suggestions

        self._require_index()
        key = {"index": read_key(self.dir / "orders" / "orders.key.json"), "decisions": self.reviews.last_id()}
        return cached_suggestions(self.dir, self.pooled(), np.flatnonzero(self.readable()), self.corrected_labels(),
                                  key, method=method, scope=scope, k=k or DEFAULT_K, seed=self.settings.seed)

    def clusters(self, k: int | None = None) -> pd.DataFrame:
        """The readable images grouped by cluster of the pooled embedding (:mod:`mlfix.pipeline.clusters`):
        ``DataFrame[sample_id, cluster, similarity]``, cluster 0 (the largest) first, each cluster most
        typical first (the odd ones out last). Cached in ``clusters/`` until the index or ``k`` change."""
        from mlfix.pipeline.clusters import cached_clusters, member_order

        self._require_index()
        found = cached_clusters(self.dir, self.pooled(), self.readable(),
                                read_key(self.dir / "orders" / "orders.key.json"), k=k, seed=self.settings.seed)
        rows = member_order(found)
        return pd.DataFrame({"sample_id": self.samples["sample_id"].to_numpy()[rows],
                             "cluster": found.assign[rows], "similarity": found.similarity[rows]})
