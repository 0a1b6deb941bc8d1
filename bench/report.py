"""Build the README's figures table from the latest benchmark results (bench/results/*.jsonl).

    python -m bench.report            # prints a markdown table, newest line per (bench, metric, n)
"""

from __future__ import annotations

import json

from bench.common import RESULTS_DIR


def latest_lines() -> list[dict]:
    latest: dict[tuple, dict] = {}
    for path in sorted(RESULTS_DIR.glob("*.jsonl")):
        for text in path.read_text().splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if line.get("setup", {}).get("quick"):
                continue  # smoke-test figures are not quoted
            latest[(line["bench"], line["metric"], line.get("n"), describe(line))] = line
    return list(latest.values())


DISTINGUISHING = ("data", "backend", "method", "backbone", "weights", "image_size", "init", "model", "sessions")


def describe(line: dict) -> str:
    """The setup keys that tell apart two figures of the same metric and n."""
    setup = line.get("setup", {})
    return ", ".join(f"{k}={setup[k]}" for k in DISTINGUISHING if k in setup)


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def main() -> None:
    print("| bench | metric | value | unit | n | setup | date |")
    print("|---|---|---|---|---|---|---|")
    for line in latest_lines():
        setup = line.get("setup", {})
        print(f"| {line['bench']} | {line['metric']} | {fmt(line['value'])} | {line['unit']} | "
              f"{fmt(line.get('n') or '')} | {describe(line)} | {setup.get('date', '')} |")


if __name__ == "__main__":
    main()
