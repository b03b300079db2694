"""`python -m app.analyze CONFIG [--output DIR]`: reproduce the paper's measurements on a model.

See ``app/analysis/config.py`` for the config format (any registered method, the in-LLM ones
FastV and DART at layer K among them: ``configs/inllm.toml``; CDPruner with the CLIP text tower the
model's vision tower came from: ``configs/cdpruner.toml``). Results are written as they are produced
and an interrupted run resumes where it stopped; the summary is printed and saved at the end.
"""

from __future__ import annotations

import argparse
import sys

from .analysis.config import load_config
from .analysis.run import run_analysis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.analyze", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="analysis config (.toml or .json)")
    parser.add_argument("--output", help="output folder (overrides the config's)")
    parser.add_argument("--model", help="model id or folder (overrides the config's)")
    parser.add_argument(
        "--text-tower", help="CLIP checkpoint (hub id or folder) for CDPruner (overrides the config's text_tower)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, output=args.output, model=args.model, text_tower=args.text_tower)
        result = run_analysis(config, progress=not args.quiet)  # a method the model refuses stops it here
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in result["problems"]:
        print(f"skipped {problem.where}: {problem.message}", file=sys.stderr)
    print(f"{result['rows']} new rows in {result['seconds']:.0f} s; {result['skipped']} item(s) skipped.")
    if result["summary"]:
        print(result["summary"])
    else:
        print("This shard is done; the last process to finish merges the results and writes the report.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
