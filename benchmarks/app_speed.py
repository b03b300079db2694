"""App responsiveness on the embedded model: the fast path (budget/method changes) and a full comparison.

    python -m benchmarks.app_speed                       # embedded model, CPU
    python -m benchmarks.app_speed --model PATH_OR_ID    # any supported model

Fast path: the image is encoded once; then every budget change re-runs only selection, overlays and
figures (``Handlers.view``). The script checks that no encoding happens after the first and prints
the median and worst time per change. Slow path: a three-method comparison plus the full-model
answer (one ``generate_many`` call, at most 48 new tokens each), end to end from a new image.
Targets: < 300 ms per change, < 5 s per comparison. Last, how ``generate_many`` should share its
rows between generate calls on this device: all in one left-padded batch, grouped by length (the
runner's default on CPU, ``Runner.padding_share``), or one by one; the answers must be identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from app.compare import ComparePipeline
from app.handlers import Handlers
from app.launch import EMBEDDED_MODEL
from app.runtime import GenerationOptions, load_runner
from scenes.tasks import SCENE_VOCABULARY

METHODS = ["attention", "diversity", "adaptive"]


class CountingRunner:
    """The runner, counting calls to ``encode`` (the fast path must make none)."""

    def __init__(self, runner):
        self.runner, self.encodes = runner, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def encode(self, image, **kwargs):
        self.encodes += 1
        return self.runner.encode(image, **kwargs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--changes", type=int, default=12, help="budget changes to time")
    parser.add_argument("--comparisons", type=int, default=3, help="full comparisons to time")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    from scenes import generate_scene

    runner = CountingRunner(load_runner(args.model, device="cpu"))
    pipeline = ComparePipeline(runner, vocabulary=SCENE_VOCABULARY, max_new_tokens=args.max_new_tokens)
    h = Handlers(pipeline)
    params = [slot.default for slot in h.slots]
    n = h.info["n_tokens"]

    key = h.load(generate_scene(7, "complex").image)[0]
    encodes_after_load = runner.encodes
    budgets = [max(1, round(n * f)) for f in (0.33, 0.22, 0.11, 0.055)] * (args.changes // 4 + 1)
    times = []
    for budget in budgets[: args.changes]:
        start = time.perf_counter()
        h.view(key, METHODS, budget, params, "order")
        times.append((time.perf_counter() - start) * 1e3)
    re_encodes = runner.encodes - encodes_after_load

    totals, answer_only, prefill_only = [], [], []
    for seed in range(args.comparisons):
        image = generate_scene(1000 + seed, "complex").image
        start = time.perf_counter()
        k = h.load(image)[0]
        h.view(k, METHODS, 64 if n >= 576 else max(1, n // 9), params, None)
        mid = time.perf_counter()
        out = pipeline.answer(
            k, "Describe the image.", METHODS, 64 if n >= 576 else max(1, n // 9), measure_prefill=False
        )
        end = time.perf_counter()
        totals.append((end - start) * 1e3)
        answer_only.append((end - mid) * 1e3)
        t0 = time.perf_counter()
        for sel in [None, *pipeline.select(k, METHODS, 64 if n >= 576 else max(1, n // 9)).values()]:
            runner.generate(runner.encode(image), "Describe the image.", sel, GenerationOptions(max_new_tokens=1))
        prefill_only.append((time.perf_counter() - t0) * 1e3)
        longest = max(o["n_new_tokens"] for o in out.values())

    print(f"model {runner.name}, {n} visual tokens, CPU threads: {__import__('torch').get_num_threads()}\n")
    print("| step | median ms | worst ms | target |")
    print("|---|---:|---:|---|")
    print(
        f"| budget change (select + overlays + figures, {len(METHODS)} methods) | {statistics.median(times):.0f} | "
        f"{max(times):.0f} | < 300 ms |"
    )
    print(
        f"| full comparison: load + view + {len(METHODS)} methods + full answer (one generate_many, <= "
        f"{args.max_new_tokens} tokens; longest {longest}) | {statistics.median(totals):.0f} | {max(totals):.0f} | "
        "< 5000 ms |"
    )
    print(f"| of which the batched answers | {statistics.median(answer_only):.0f} | {max(answer_only):.0f} | |")
    print(
        f"| per-row prefill measurement (4 one-token runs, optional) | {statistics.median(prefill_only):.0f} | "
        f"{max(prefill_only):.0f} | |"
    )
    print(f"\nre-encodings during budget changes: {re_encodes} (must be 0)")
    same = batching(runner.runner, h, args)
    return 0 if re_encodes == 0 and same else 1


def batching(runner, h, args) -> bool:
    """Time ``generate_many`` over the full row and three pruned rows, sharing calls three ways."""
    from scenes import generate_scene

    n = h.info["n_tokens"]
    budget = 64 if n >= 576 else max(1, n // 9)
    encoding = runner.encode(generate_scene(1000, "complex").image)
    rows = [None, *(runner.select(encoding, m, budget) for m in METHODS)]
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    default = runner.padding_share
    ways = {"one batch (padding_share 1.0)": 1.0, f"grouped by length ({default})": default, "one by one": -1.0}
    answers, rows_md = {}, []
    for label, share in ways.items():
        runner.padding_share = share
        times = []
        for _ in range(3):
            start = time.perf_counter()
            gens = runner.generate_many(encoding, "Describe the image.", rows, options)
            times.append((time.perf_counter() - start) * 1e3)
        answers[label] = [g.token_ids for g in gens]
        sizes = sorted({g.timings["batch_size"] for g in gens}, reverse=True)
        rows_md.append(f"| {label} | {statistics.median(times):.0f} | {max(times):.0f} | batch sizes {sizes} |")
    runner.padding_share = default
    print(
        f"\ngenerate_many: the full row + {len(METHODS)} rows at {budget} tokens, <= {args.max_new_tokens} new tokens"
    )
    print("| rows share calls | median ms | worst ms | |")
    print("|---|---:|---:|---|")
    print("\n".join(rows_md))
    same = len({tuple(a) for a in answers.values()}) == 1
    print(f"answers identical across the three: {same}")
    return same


if __name__ == "__main__":
    sys.exit(main())
