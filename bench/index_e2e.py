"""End to end: `mlfix index` on real data sets, time per stage and peak memory.

    python -m bench.index_e2e [--quick] [--cifar-n 20000]

Runs the CLI in a subprocess per data set (flowers17: 1,360 photos; the first N of cifar10n),
reads the stage timings from the project's progress log and the peak resident memory of the
indexing process (and its decoding workers) from the kernel.
"""

from __future__ import annotations

import csv
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import emit, parser, require_shared, timer


def subset_csv(folder: Path, n: int, out: Path) -> Path:
    """labels.csv restricted to its first n rows (path, label)."""
    with open(folder / "labels.csv") as f, open(out, "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.writer(g)
        writer.writerow(["path", "label"])
        for i, row in enumerate(reader):
            if i >= n:
                break
            writer.writerow([row["path"], row["label"]])
    return out


def stage_seconds(project: Path) -> dict[str, float]:
    from mlfix.progress import read_progress

    spans: dict[str, list[float]] = {}
    records = read_progress(project / "progress" / "index.jsonl")
    previous_end = records[0]["time"] if records else 0.0
    for record in records:
        span = spans.setdefault(record["stage"], [previous_end, record["time"]])
        span[1] = record["time"]
        previous_end = record["time"]
    return {stage: round(end - start, 2) for stage, (start, end) in spans.items()}


def run_index(name: str, images: Path, labels: Path | None, n: int, settings: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        command = [sys.executable, "-m", "mlfix.cli", "index", "--images", str(images), "--project", str(project)]
        command += ["--labels", str(labels)] if labels else []
        for key, value in settings.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        with timer() as took:
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        setup = {"data": name, **settings}
        emit("index_e2e", "total_seconds", round(took(), 1), "s", n, **setup)
        for stage, seconds in stage_seconds(project).items():
            emit("index_e2e", f"stage_{stage}_seconds", seconds, "s", n, **setup)
        emit("index_e2e", "peak_rss_mb", round(peak, 1), "MiB", n, **setup)


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--cifar-n", type=int, default=20_000)
    args = p.parse_args()
    flowers, cifar = require_shared("flowers17"), require_shared("cifar10n")
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            if cifar is not None:
                labels = subset_csv(cifar, 300, Path(tmp) / "labels.csv")
                run_index("cifar10n", cifar / "images.zip", labels, 300,
                          {"image_size": 64, "words": 64, "weights": "random"})
            return
        if flowers is not None:
            run_index("flowers17", flowers / "images.zip", flowers / "labels.csv", 1360,
                      {"image_size": 224, "words": 1024, "weights": "random"})
        if cifar is not None:
            labels = subset_csv(cifar, args.cifar_n, Path(tmp) / "labels.csv")
            run_index("cifar10n", cifar / "images.zip", labels, args.cifar_n,
                      {"image_size": 224, "words": 1024, "weights": "random"})


if __name__ == "__main__":
    main()
