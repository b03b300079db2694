"""The results files of an analysis run: their columns, their paths per process, and reading them back.

``run`` writes them, ``report`` reads them; both import this module, so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CSV_COLUMNS", "read_rows", "shard_paths"]

CSV_COLUMNS = (
    "item_id", "complexity", "complexity_bin", "image_erank", "attention_entropy", "label", "method", "budget",
    "kept_per", "n_visual_tokens", "kept_erank", "retained_attention", "task", "kind", "prompt", "answer", "gold",
    "pred", "correct", "mentioned", "hallucinated", "recall", "length", "full_length", "attribute_errors",
    "present_mentions", "agrees", "overlap", "select_ms", "batch_ms",
)  # fmt: skip


def shard_paths(output: Path, rank: int, world: int) -> tuple[Path, Path]:
    """(jsonl, csv) this process writes."""
    stem = "results" if world == 1 else f"results.rank{rank}-of-{world}"
    return output / f"{stem}.jsonl", output / f"{stem}.csv"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a results file; a torn last line (an interrupted write) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
