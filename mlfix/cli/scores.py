"""``mlfix scores``: the suspected label errors of a project, most suspect first."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

TOP = 20  # rows printed without -o
COLUMNS = ["sample_id", "label", "suggested_label", "score"]


def add_parser(commands) -> None:
    p = commands.add_parser("scores", help="rank suspected label errors (most suspect first)")
    p.add_argument("--project", required=True)
    p.add_argument("-o", "--output", help="CSV to write (default: print the top 20)")
    p.add_argument("--pred-probs", metavar="FILE",
                   help="your own model's out-of-sample predicted probabilities, used instead of mlfix's probe "
                        "(kept in the project): .npy (N x classes, rows in the order of the project's samples, "
                        "columns the sorted class names unless --classes) or CSV/parquet (sample_id + one "
                        "column per class)")
    p.add_argument("--classes", type=_names, help="the class of each column of --pred-probs, comma-separated")
    p.add_argument("--logits", action="store_true", help="--pred-probs holds raw scores: apply a softmax")
    p.add_argument("--no-pred-probs", action="store_true",
                   help="forget the predictions added before (the probe again)")
    p.set_defaults(run=run)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_user_predictions(project, args) -> None:
    """``--pred-probs`` / ``--no-pred-probs``: store or forget the user's predictions, and say so."""
    if getattr(args, "no_pred_probs", False):
        project.remove_predictions(probabilities=True, embeddings=False)
        print("predictions removed: the scores use mlfix's probe again")
    if getattr(args, "pred_probs", None):
        table = project.add_predictions(args.pred_probs, classes=args.classes, logits=args.logits)
        print(f"predictions of {len(table)} samples in {table.shape[1] - 1} classes added "
              f"({project.dir}/predictions/user.parquet): the scores use them instead of the probe")


def run(args) -> int:
    from mlfix.errors import NotEnoughLabelsError
    from mlfix.project import Project

    project = Project.open(args.project)
    add_user_predictions(project, args)
    try:
        table = project.scores()
    except NotEnoughLabelsError as err:  # an unlabeled folder: one line on what works instead
        print(f"mlfix scores: {err}", file=sys.stderr)
        return 2
    trust = table.attrs.get("trust") or {}
    if trust.get("verdict") in ("untrusted", "weak"):  # the probe near chance: say so first
        print(f"mlfix scores: warning: {trust['message']}", file=sys.stderr)
    if args.output:
        from mlfix.atomic import atomic_path
        from mlfix.review.export import safe_csv  # text that a spreadsheet would run: quoted

        with atomic_path(args.output) as tmp:
            tmp.write_bytes(safe_csv(table))
        print(f"{len(table)} rows, most suspect first -> {args.output}")
    else:
        print_top(table, TOP, project.dir)
    return 0


def print_top(table: pd.DataFrame, n: int, project_dir) -> None:
    """The ``n`` most suspect samples (label, suggested label, score) and where the full table is."""
    scored = table[table["score"].notna()]
    print(f"The {min(n, len(scored))} most suspect of {len(scored)} scored samples:")
    from mlfix.ui.text import visible  # a label's escape sequences would drive the terminal: shown as [U+001B]

    top = scored[COLUMNS].head(n).assign(score=lambda t: t["score"].map("{:.3f}".format))
    top = top.map(lambda v: visible(v) if isinstance(v, str) else v)
    print(top.to_string(index=False))
    unscored = len(table) - len(scored)
    note = f"; {unscored} unlabeled samples have no score" if unscored else ""
    print(f"All {len(table)} rows: {project_dir}/scores.parquet, or as CSV: "
          f"mlfix scores --project {project_dir} -o scores.csv{note}")
