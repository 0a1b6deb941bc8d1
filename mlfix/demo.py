"""The built-in demo: scikit-learn's handwritten digits with 5% planted label errors.

``python -m mlfix.demo --project DIR`` writes the 1,797 8x8 digits as 64x64 PNGs in an ImageFolder
(``DIR/images/<digit>/<n>.png``), flips 5% of the labels with a fixed seed (the truth is kept in
``DIR/truth.csv``: ``sample_id, label, true_label``), creates the project and indexes it with the
offline ImageNet backbone. Works with no network and no other data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEMO_SETTINGS = {"backbone": "efficientnet_lite0", "weights": "offline", "image_size": 128,
                 "words": 256, "batch_size": 64}


def write_digits(folder: Path, flip_rate: float = 0.05, seed: int = 0, limit: int | None = None) -> pd.DataFrame:
    """Write the digits as an ImageFolder with planted errors; return the truth table."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, truth = digits.images, digits.target
    if limit is not None:
        images, truth = images[:limit], truth[:limit]
    rng = np.random.default_rng(seed)
    given = truth.copy()
    flipped = rng.choice(len(truth), int(round(flip_rate * len(truth))), replace=False)
    given[flipped] = (truth[flipped] + rng.integers(1, 10, len(flipped))) % 10
    rows = []
    for i, (pixels, label, true_label) in enumerate(zip(images, given, truth)):
        path = f"{NAMES[label]}/{i:04d}.png"
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        grey = (255 - pixels * (255 / 16)).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(grey, "L").resize((64, 64), Image.Resampling.BICUBIC).save(target)
        rows.append({"sample_id": path, "label": NAMES[label], "true_label": NAMES[true_label]})
    return pd.DataFrame(rows)


def digits_samples(folder: Path, limit: int | None = None):
    """(DataRoot, samples table) of the demo's digits written to ``folder``: the data side of a project
    without the project, for examples of the pipeline's parts (training, fine-tuning)."""
    from mlfix.data.images import DataRoot
    from mlfix.data.scan import scan

    write_digits(Path(folder), limit=limit)
    return DataRoot(folder), scan(folder).samples


def build_demo(project_dir: str | Path, limit: int | None = None, index: bool = True, **settings):
    """Create (or reuse) the demo project; returns the :class:`~mlfix.project.Project`."""
    from mlfix.project import Project

    project_dir = Path(project_dir).resolve()
    images = project_dir / "images"
    truth_path = project_dir / "truth.csv"
    if not truth_path.exists():
        truth = write_digits(images, limit=limit)
        project_dir.mkdir(parents=True, exist_ok=True)
        truth.to_csv(truth_path, index=False)
    if Project.is_project(project_dir):
        project = Project.open(project_dir)
    else:
        project = Project.create(project_dir, images=images, **{**DEMO_SETTINGS, **settings})
    if index:
        project.index(**settings)
        project.scores()
    return project


def demo_report(project) -> dict:
    """How well the scores and the orderings reveal the planted errors (uses the kept truth)."""
    truth = pd.read_csv(project.dir / "truth.csv").set_index("sample_id")
    planted = truth.index[truth["label"] != truth["true_label"]]
    queue = project.scores().sort_values("score", ascending=False)["sample_id"]
    found = int(queue.iloc[: len(planted)].isin(planted).sum())
    true_class = truth["true_label"]
    same, pairs = 0, 0
    for label in project.labels:
        ordered = true_class.reindex(project.order(label)).to_numpy()
        same += int((ordered[1:] == ordered[:-1]).sum())
        pairs += max(0, len(ordered) - 1)
    return {"planted": len(planted), "found_in_top": found,
            "neighbour_purity": round(same / pairs, 3) if pairs else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the mlfix demo project (digits, 5% planted errors).")
    parser.add_argument("--project", default="demo-project", help="project folder to create")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N digits")
    args = parser.parse_args(argv)
    project = build_demo(args.project, limit=args.limit)
    report = demo_report(project)
    print(f"demo project ready: {project.dir} ({len(project.samples)} images, {report['planted']} planted "
          f"label errors)\n{report['found_in_top']} of the {report['planted']} planted errors are in the "
          f"top {report['planted']} of the score queue; {report['neighbour_purity']:.0%} of the neighbours "
          "in the similarity order share their true class")


if __name__ == "__main__":
    main()
