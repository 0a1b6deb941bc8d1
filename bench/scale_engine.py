"""The Ray engine against the local one on the same images (``python -m bench.scale --only engine``).

``Project.index`` with ``engine="local"`` and ``engine="ray"`` (a local Ray on the same 2 cores,
``ray.init(num_cpus=2)``), each in a subprocess (``python -m bench.scale_engine ENGINE IMAGES LABELS``)
so that its ``ru_maxrss`` is the driver's own peak (Ray's workers are other processes). Offline
EfficientNet-Lite0 at 64 px, 64 words, the two-pass route for both (``cell_cache_gb=0``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import emit, require_shared, timer

BENCH = "scale"
SEED = 0
LITE0 = "efficientnet_lite0"
ENGINES = ("local", "ray")


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def synthetic_images(n: int, folder: Path, size: int = 64, seed: int = SEED, chunk: int = 1000) -> Path:
    """``n`` generated JPEGs (``c<k>/<i>.jpg``, 10 classes: a class colour and a shape at a random
    place, over noise) and ``labels.csv`` in ``folder``; returns the CSV. Reused when complete."""
    from PIL import Image

    labels_csv = folder / "labels.csv"
    if labels_csv.exists() and sum(1 for _ in open(labels_csv)) == n + 1:
        return labels_csv
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (10, 3))
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for lo in range(0, n, chunk):
        m = min(n, lo + chunk) - lo
        cls = rng.integers(0, 10, m)
        cy, cx, r = rng.integers(8, size - 8, m), rng.integers(8, size - 8, m), rng.integers(6, size // 3, m)
        inside = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) < (r ** 2)[:, None, None]
        pixels = rng.integers(0, 120, (m, size, size, 3))
        pixels = np.where(inside[..., None], colours[cls][:, None, None, :], pixels).astype(np.uint8)
        for j in range(m):  # one file per image: the write is the cost, not the loop
            name = f"c{cls[j]}/{lo + j:07d}.jpg"
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[j]).save(folder / name, quality=90)
            rows.append((name, f"c{cls[j]}"))
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(labels_csv, index=False)
    return labels_csv


def engine_child(engine: str, images: str, labels: str, image_size: str = "64") -> None:
    """In a subprocess: index ``images`` with ``engine``; print one JSON line (seconds, the driver's
    peak over the whole index and at the end of the extraction passes, the engine's part)."""
    from bench.index_e2e import stage_seconds
    from mlfix.pipeline import index as index_module
    from mlfix.project import Project

    extraction = {}
    extract = index_module._features_and_words

    def extract_and_note_the_peak(*args, **kwargs):
        # the orders and bags built after it grow with N whichever engine extracted the features
        result = extract(*args, **kwargs)
        extraction["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return result

    index_module._features_and_words = extract_and_note_the_peak

    if engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    options = {} if engine == "local" else {"engine": engine}
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "project", images=images, labels=labels, backbone=LITE0,
                                 weights="offline", image_size=int(image_size), words=64, seed=SEED, cell_cache_gb=0,
                                 **options)
        with timer() as took:
            project.index()
        record = json.loads((project.dir / "features" / "engine.json").read_text()) \
            if (project.dir / "features" / "engine.json").exists() else {}
        n = int((project.samples["status"] == "ok").sum())
        stages = stage_seconds(project.dir)
    print(json.dumps({"engine": engine, "images": n, "seconds": took(), "record": record, "stages": stages,
                      "driver_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "driver_extraction_peak_mb": extraction.get("peak_mb")}), flush=True)


def run_engine(engine: str, images: Path, labels: Path, image_size: int = 64) -> dict | None:
    command = [sys.executable, "-m", "bench.scale_engine", engine, str(images), str(labels), str(image_size)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        log(f"engine {engine} failed on {images}:\n{done.stderr[-2000:]}")
        return None
    return json.loads(lines[-1])


def engine_rates(run: dict) -> dict[str, float]:
    """images/s of a run: ``index`` (the whole Project.index) and ``record`` (the features passes by
    ``features/engine.json``, which both engines write). The progress records' stage spans are not
    compared: the engines report the codebook sample's progress differently."""
    rates = {"index": run["images"] / run["seconds"]}
    if run["record"].get("seconds"):
        rates["record"] = run["images"] / run["record"]["seconds"]
    return rates


def compare_engines(name: str, images: Path, labels: Path, setup: dict, image_size: int = 64,
                    engines: tuple[str, ...] = ENGINES) -> dict:
    """Index the same images with each engine (one subprocess each); emit images/s, ray / local and the
    driver's peak; return ``{engine: driver peak MiB}``."""
    runs = {engine: run_engine(engine, images, labels, image_size) for engine in engines}
    setup = {**setup, "data": name, "backbone": f"{LITE0} offline", "image_size": image_size, "words": 64,
             "cell_cache_gb": 0, "ray": "ray.init(num_cpus=2), same machine"}
    rates = {}
    for engine, run in runs.items():
        if run is None:
            emit(BENCH, f"engine.{engine}.failed", None, "", None, **setup)
            continue
        rates[engine] = engine_rates(run)
        for what, rate in rates[engine].items():
            emit(BENCH, f"engine.{engine}.{what}_images_per_s", round(rate, 2), "img/s", run["images"],
                 seconds=round(run["seconds"], 1), stages=run.get("stages"), record=run["record"], **setup)
        emit(BENCH, f"engine.{engine}.driver_peak_mb", round(run["driver_peak_mb"], 1), "MiB", run["images"], **setup)
        if run.get("driver_extraction_peak_mb"):
            emit(BENCH, f"engine.{engine}.driver_extraction_peak_mb", round(run["driver_extraction_peak_mb"], 1), "MiB",
                 run["images"], of="the driver's peak when the extraction passes end (before bags and orders)",
                 **setup)
    if len(rates) == 2:
        for what in set(rates["ray"]) & set(rates["local"]):
            emit(BENCH, f"engine.ray_over_local.{what}", round(rates["ray"][what] / rates["local"][what], 3),
                 "ratio", runs["ray"]["images"], goal=">= 0.9", **setup)
    return {engine: run and {key: run.get(f"driver_{key}_mb") for key in ("peak", "extraction_peak")}
            for engine, run in runs.items()}


def engine(sizes: list[int], out: Path, setup: dict, image_size: int = 64, flowers: bool = True,
           engines: tuple[str, ...] = ENGINES) -> None:
    """Flowers17 (unless ``flowers`` is False), then ``sizes`` generated 64 px JPEGs, indexed at
    ``image_size`` by each of ``engines``; the driver's peak growth from the smallest to the largest size."""
    folder = require_shared("flowers17") if flowers else None
    if folder is not None:
        compare_engines("flowers17", folder / "images.zip", folder / "labels.csv", setup, image_size, engines)
    peaks = {}
    for n in sizes:
        log(f"engine: {n:,} generated images")
        labels = synthetic_images(n, out / f"images_{n}")
        peaks[n] = compare_engines(f"generated 64 px JPEG, {n:,}", out / f"images_{n}", labels, setup,
                                   image_size, engines)
    if len(sizes) >= 2:
        small, large = min(sizes), max(sizes)
        for name in ENGINES:
            for key in ("peak", "extraction_peak"):
                before, after = ((peaks[n].get(name) or {}).get(key) for n in (small, large))
                if before and after:
                    emit(BENCH, f"engine.{name}.driver_{key}_growth", round(after / before, 3), "ratio", large,
                         of=f"{large:,} over {small:,} images", goal="flat (about 1)", **setup)


def main() -> None:
    engine_child(*sys.argv[1:5])


if __name__ == "__main__":
    main()
