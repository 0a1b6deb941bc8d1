"""The terminal bars: rates in images/s, no absurd first rate, an overall estimate, notes."""

from __future__ import annotations

import re
import time

from mlfix.progress import Progress, _duration, read_progress


def bars(capsys) -> str:
    return capsys.readouterr().err.replace("\r", "\n")


def test_image_stages_count_images_per_second_and_the_first_report_has_no_absurd_rate(capsys):
    progress = Progress("index", terminal=True)
    progress.update("features", 5000, 10_000)  # work done before the first report is not timed
    first = bars(capsys)
    assert "images" in first and "it/s" not in first
    assert not re.search(r"\d{4,}(\.\d+)? images/s", first)
    for done in (5100, 5200, 5300):
        time.sleep(0.15)
        progress.update("features", done, 10_000)
    text = bars(capsys)
    rates = [float(r) for r in re.findall(r"([\d.]+) images/s", text)]
    assert rates and max(rates) < 5000  # about 100 images per 0.15 s, not millions
    progress.close()


def test_a_one_step_stage_shows_no_rate(capsys):
    progress = Progress("index", terminal=True)
    progress.update("codebook", 0, 1)
    time.sleep(0.05)
    progress.update("codebook", 1, 1)
    text = bars(capsys)
    assert "index: codebook" in text and "/s" not in text and "it" not in text.split("codebook", 1)[1]


def test_a_planned_image_stage_gives_an_overall_estimate(capsys):
    progress = Progress("index", terminal=True)
    progress.plan("features", 1000)
    progress.update("codebook sample", 0, 100)
    for done in (10, 20, 30):
        time.sleep(0.15)
        progress.update("codebook sample", done, 100)
    left = progress.seconds_left("codebook sample", 30, 100)
    assert left is not None
    rate = progress._bars["codebook sample"].format_dict["rate"]
    assert abs(left - (70 + 1000) / rate) < 1e-6 * left + 1e-9  # this stage's rest and the full pass
    assert "all=~" in bars(capsys)
    progress.update("features", 0, 1000)  # the planned stage started: no longer counted twice
    assert progress._planned == {}
    progress.close()


def test_a_note_is_printed_above_the_bars_and_logged(tmp_path, capsys):
    progress = Progress("index", tmp_path, terminal=True)
    progress.note("visual words: use --words 16", stage="codebook")
    assert "index: visual words: use --words 16" in capsys.readouterr().err
    assert read_progress(tmp_path / "index.jsonl")[-1]["note"] == "visual words: use --words 16"


def test_durations_read_as_minutes_and_hours():
    assert (_duration(8), _duration(75), _duration(4000)) == ("8s", "1m15s", "1h06m")
