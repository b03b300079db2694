"""The model card's pruned-quality table from an analysis run on built-in scenes.

    python -m app.analyze configs/scenes.toml
    python -m scenes.card_table runs/scenes-300/results.jsonl --levels simple,complex

One row per (level, method, budget): existence accuracy over the POPE question types (positives and
random, popular and adversarial negatives; wrong-colour negatives are left out, as in
``scenes.evaluate``), caption recall, CHAIR_i and CHAIR_s, colour, counting and word accuracy, and
the mean kept-token erank. Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.analysis.scoring import chair_scores

LABELS = ("full", "attention", "diversity", "adaptive")


def _acc(rows: Sequence[dict[str, Any]]) -> float | None:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else None


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def table(rows: Sequence[dict[str, Any]], levels: Sequence[str], labels: Sequence[str] = LABELS) -> str:
    """The markdown table of ``rows`` (analysis result rows) for ``levels`` and method ``labels``."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["budget"], r["complexity"])].append(r)
    lines = [
        "| level | method | K | existence | recall | CHAIR_i | CHAIR_s | colour | count | word | kept erank |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        for label in labels:
            for budget in sorted({k[1] for k in groups if k[0] == label and k[2] == level}, reverse=True):
                rs = groups[(label, budget, level)]
                exists = [r for r in rs if r["task"] == "exists" and r.get("kind") != "attribute"]
                chair = chair_scores(rs)
                erank = {r["item_id"]: r["kept_erank"] for r in rs}
                cells = [
                    _acc(exists),
                    chair["recall"],
                    chair["chair_i"],
                    chair["chair_s"],
                    *(_acc([r for r in rs if r["task"] == t]) for t in ("color", "count", "word")),
                ]
                k = "all" if label == "full" else budget
                lines.append(
                    f"| {level} | {label} | {k} | "
                    + " | ".join(_fmt(c) for c in cells)
                    + f" | {sum(erank.values()) / len(erank):.1f} |"
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.jsonl of an analysis run on built-in scenes")
    parser.add_argument("--levels", default="simple,complex", help="comma-separated scene levels")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"no such results file: {args.results}")
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(table(rows, [lv for lv in args.levels.split(",") if lv]))


if __name__ == "__main__":
    main()
