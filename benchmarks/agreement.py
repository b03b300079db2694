"""How much two methods agree: the share of one method's kept tokens that another also keeps.

    python -m benchmarks.agreement                                  # adaptive vs attention
    python -m benchmarks.agreement --other diversity --budgets 128 64 32 --n 50

On ``--n`` held-out built-in scenes per level (seeds from 1 000 003 000, disjoint from the
benchmark configs), with the model's own calibration, it prints for each level and budget the
mean over scenes of |other ∩ base| / |base|: 1.0 means the other method keeps every token the
base method keeps. It explains, for instance, why adaptive's numbers sit so close to attention's
on a model whose erank_avg puts its τ schedule high.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from app.runtime import load_runner
from pruning import list_methods
from scenes.generate import generate_scene
from scenes.vocabulary import COMPLEXITIES

SEED_BASE = 1_000_003_000


def agreement(
    model: str | Path, base: str, other: str, budgets: Sequence[int], levels: Sequence[str], n: int
) -> dict[tuple[str, int], float]:
    """Mean share of ``base``'s kept tokens that ``other`` also keeps, per (level, budget)."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    unknown = [lv for lv in levels if lv not in COMPLEXITIES]
    if unknown:
        raise ValueError(f"unknown levels {unknown}; choose from {list(COMPLEXITIES)}")
    runner = load_runner(str(model))
    shares: dict[tuple[str, int], list[float]] = {(lv, k): [] for lv in levels for k in budgets}
    for level in levels:
        for i in range(n):
            encoding = runner.encode(generate_scene(SEED_BASE + i, level).image)
            for k in budgets:
                kept = set(runner.select(encoding, base, k).keep.tolist())
                also = set(runner.select(encoding, other, k).keep.tolist())
                shares[(level, k)].append(len(kept & also) / len(kept))
    return {key: statistics.fmean(values) for key, values in shares.items()}


def main(argv: Sequence[str] | None = None) -> dict[tuple[str, int], float]:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/models/prunelens-tiny-llava")
    parser.add_argument("--base", default="attention", choices=list_methods())
    parser.add_argument("--other", default="adaptive", choices=list_methods())
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--levels", nargs="+", default=["simple", "complex"])
    parser.add_argument("--n", type=int, default=20, help="scenes per level")
    args = parser.parse_args(argv)
    result = agreement(args.model, args.base, args.other, args.budgets, args.levels, args.n)
    print(f"share of {args.base}'s kept tokens that {args.other} also keeps ({args.n} scenes per level)")
    print(f"{'level':<10}" + "".join(f"{'K=' + str(k):>8}" for k in args.budgets))
    for level in args.levels:
        print(f"{level:<10}" + "".join(f"{result[(level, k)]:>8.3f}" for k in args.budgets))
    return result


if __name__ == "__main__":
    main()
