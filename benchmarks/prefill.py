"""Prefill time against the number of visual tokens the LLM receives, through ``app.runtime``.

    python -m benchmarks.prefill                        # random LLaVA-1.5-7B-shaped model, 2 decoder layers
    python -m benchmarks.prefill --layers 4 --repeats 5
    python -m benchmarks.prefill --family llava_next    # a tiny random model of another family
    python -m benchmarks.prefill --model PATH_OR_ID     # a real checkpoint of any supported family
    python -m benchmarks.prefill --dtype float16 --json prefill.json

One image is encoded once, sized for the model's family (``image_size``: two crops wide for the
anyres families, 35 x 35 merged tokens for Qwen2.5-VL), then pruned with the ``attention`` method
to each budget K (default: the image's N and the family's presets scaled to it) and answered with
one new token; prefill time is the runtime's own ``prefill_ms`` (generate call to first token),
median over repeats. The table puts the measured speed-up over the full image next to the ideal
one from sequence lengths, (text + N + its newlines) / (text + K + the newlines of the rows K
keeps); the same ratio for a bare forward of the model on the same spliced embeddings (no generate
loop: the floor the runtime can reach, which separates runtime overhead from the hardware's lower
efficiency on short sequences); and the peak memory of each prefill: CUDA's allocator peak on a
GPU, the sampled growth of the process's resident memory on CPU. Target: measured >= 0.8 x ideal
at K = 64. The header (and ``--json``) records the device and its name, the dtype and the
attention kernel (``config._attn_implementation``) beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image

from app.preflight import DTYPES
from app.runtime import GenerationOptions, Runner, load_runner
from app.runtime.adapters import scaled_budgets
from app.runtime.synthetic import TINY_FAMILIES, llava7b_shaped, qwen_processor, tiny_family

PROMPT = "please describe this image in detail ."
TARGET_RATIO = 0.8  # the measured speed-up should reach 0.8 x the ideal one at K = 64
TARGET_K = 64
QWEN_SIDE = 35  # merged tokens per side of the Qwen2.5-VL image: 35 x 35 = 1225, the paper's N
TINY_QWEN_CONTEXT = 2048  # positions the tiny Qwen2.5-VL needs for 1225 visual tokens and the prompt
# glibc keeps freed large blocks mapped by default, so the resident size would only ever show the
# largest prefill; with a fixed mmap threshold every large tensor is unmapped when freed and the
# sampled RSS growth tracks what each prefill really holds. The harness re-executes itself with it.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def llava7b_shaped_runner(layers: int, vision_layers: int, device: str, dtype: torch.dtype) -> Runner:
    """A randomly initialised LLaVA with 7B shapes but only ``layers`` decoder layers."""
    model, processor = llava7b_shaped(layers, vision_layers)
    model = model.to(device=device, dtype=dtype).eval()
    return Runner.from_model(model, processor, name=f"random-llava-1.5-7b-shapes-{layers}-layers")


def tiny_runner(family: str, device: str, dtype: torch.dtype) -> Runner:
    """The tests' tiny random model of ``family`` (``synthetic.tiny_family``), on ``device`` in ``dtype``.

    Qwen2.5-VL gets a processor whose pixel limit allows the paper's 1225 merged tokens (the tests'
    stops at 64), and its random LM's context is raised to fit them: its rotary positions have no
    learnt limit, only the config's number, which the runtime reads as the context length.
    """
    model, processor = tiny_family(family)
    if family == "qwen2_5_vl":
        processor = qwen_processor(processor.tokenizer, max_tokens=QWEN_SIDE * QWEN_SIDE)
        model.config.text_config.max_position_embeddings = TINY_QWEN_CONTEXT
    return Runner.from_model(model.to(device=device, dtype=dtype), processor, name=f"tiny-{family}")


def _anyres_size(runner: Runner) -> tuple[int, int]:
    crop = runner.adapter.crop_size
    return 2 * crop, 3 * crop // 2


def _qwen_size(runner: Runner) -> tuple[int, int]:
    ip = runner.adapter.processor.image_processor
    side = QWEN_SIDE * ip.patch_size * ip.merge_size
    return side, side


IMAGE_SIZES: dict[str, Callable[[Runner], tuple[int, int]]] = {
    "llava": lambda runner: (640, 480),  # any size gives LLaVA-1.5 its one grid
    # 4:3, two crops wide (672 x 504 for 336 px crops): base + 2 x 2 crops with padding rows
    # dropped, which OneVision does not shrink
    "llava_next": _anyres_size,
    "llava_onevision": _anyres_size,
    "qwen2_5_vl": _qwen_size,  # 35 x 35 merged tokens (980 px at 28 px a token): N = 1225
}


def image_size(runner: Runner) -> tuple[int, int]:
    """(width, height) of the benchmark image for the runner's family, from the model's own sizes."""
    return IMAGE_SIZES[runner.adapter.family](runner)


def device_facts(runner: Runner) -> dict[str, Any]:
    """Where and how the model runs: device and its name, dtype, attention kernels, versions, threads."""
    device = runner.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    config = runner.adapter.model.config
    parts = {"text": config.get_text_config(), "vision": getattr(config, "vision_config", None)}
    return {
        "device": str(device),
        "device_name": name,
        "dtype": str(runner.dtype).removeprefix("torch."),
        "attention": getattr(config, "_attn_implementation", None),
        "attention_parts": {k: getattr(c, "_attn_implementation", None) for k, c in parts.items() if c is not None},
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@contextmanager
def peak_rss_growth(interval_s: float = 0.0005) -> Iterator[dict]:
    """Sample the resident set size in a thread; ``result["mb"]`` = peak growth over the start."""
    result: dict = {"mb": None}
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], _rss_bytes())
        result["mb"] = (peak[0] - start) / 2**20


def bare_forward_ms(runner: Runner, embeds: torch.Tensor) -> float:
    """One plain forward of the whole model on (L, D) prompt embeddings, last-token logits only.

    The floor the runtime's prefill can reach: no generate loop, no sampling, no splicing.
    """
    model = runner.adapter.model
    mask = torch.ones(1, embeds.shape[0], dtype=torch.long, device=embeds.device)
    with torch.inference_mode():
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
        start = time.perf_counter()
        model(inputs_embeds=embeds[None], attention_mask=mask, logits_to_keep=1)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
    return (time.perf_counter() - start) * 1e3


def measure(runner: Runner, image: Image.Image, budgets: list[int] | None, repeats: int) -> dict[str, Any]:
    """Median prefill ms, bare-forward ms and peak memory per budget, on one encoded ``image``.

    ``budgets`` None: the image's N and the family's presets scaled to it. A budget at or above N
    keeps every token. Returns the image's N, the text tokens and one row per budget (largest first).
    """
    enc = runner.encode(image)
    n = enc.n_tokens
    if budgets is None:
        budgets = [n, *scaled_budgets(*runner.adapter.paper_budgets, n)]
    budgets = sorted(set(budgets), reverse=True)
    selections = {k: None if k >= n else runner.select(enc, "attention", k) for k in budgets}
    ids = runner.adapter.prompt_ids(PROMPT)
    text_tokens = ids.shape[0] - 1
    at = int((ids == runner.adapter.image_token_id).nonzero()[0, 0])
    with torch.inference_mode():
        text = runner.adapter.embed(ids)  # (T, D)
        sequences = {k: runner.image_sequence(enc, selections[k]) for k in budgets}  # ((K + R, D), R)
        embeds = {k: torch.cat([text[:at], seq, text[at + 1 :]]) for k, (seq, _) in sequences.items()}  # (L, D)
    for k in budgets:  # warm-up: first calls pay for lazy initialisation
        runner.generate(enc, PROMPT, selections[k], GenerationOptions(max_new_tokens=1))
    times: dict[int, list[float]] = {k: [] for k in budgets}
    bare: dict[int, list[float]] = {k: [] for k in budgets}
    memory: dict[int, list[float]] = {k: [] for k in budgets}
    for _ in range(repeats):
        for k in budgets:
            with peak_rss_growth() as rss:
                gen = runner.generate(enc, PROMPT, selections[k], GenerationOptions(max_new_tokens=1))
            times[k].append(gen.timings["prefill_ms"])
            bare[k].append(bare_forward_ms(runner, embeds[k]))
            cuda_peak = gen.timings["peak_memory_mb"]
            memory[k].append(cuda_peak if cuda_peak is not None else rss["mb"])
    full = budgets[0]
    base, bare_base = statistics.median(times[full]), statistics.median(bare[full])
    rows = []
    for k in budgets:
        ms, bare_ms = statistics.median(times[k]), statistics.median(bare[k])
        seq, newlines = sequences[k]
        rows.append(
            {
                "k": min(k, n),
                "visual_tokens": seq.shape[0] - newlines,
                "newlines": newlines,
                "positions": embeds[k].shape[0],
                "ms": ms,
                "speedup": base / ms,
                "bare_ms": bare_ms,
                "bare_speedup": bare_base / bare_ms,
                "ideal": embeds[full].shape[0] / embeds[k].shape[0],
                "memory_mb": max(memory[k]),
            }
        )
    return {"n_tokens": n, "n_grids": len(enc.parts), "text_tokens": text_tokens, "rows": rows}


def print_report(report: dict[str, Any]) -> None:
    facts, rows = report["device"], report["rows"]
    cuda = facts["device"].startswith("cuda")
    print(
        f"model: {report['model']} ({report['family']}) | device: {facts['device']} ({facts['device_name']}) "
        f"| dtype: {facts['dtype']} | attention: {facts['attention']}"
    )
    print(
        f"torch {facts['torch']}, transformers {facts['transformers']} | torch threads: {facts['threads']} "
        f"| median of {report['repeats']} runs | 1 new token"
    )
    if not cuda:
        print(f"memory: sampled growth of the resident set during each prefill, with {MALLOC_ENV}")
    width, height = report["image_size"]
    newlines = " (+ a newline per stitched row that keeps a token)" if report["n_grids"] > 1 else ""
    print(
        f"image: {width} x {height} px -> N = {report['n_tokens']} visual tokens in {report['n_grids']} grid(s) "
        f"| prompt: {report['text_tokens']} text tokens + K visual tokens{newlines}"
    )
    print()
    memory_label = "peak CUDA MiB" if cuda else "peak RSS growth MiB"
    header = (
        f"| {'K':>4} | {'newlines':>8} | {'prefill ms':>10} | {'speed-up':>8} | {'ideal':>6} | {'measured/ideal':>14} "
        f"| {'bare fwd ms':>11} | {'bare/ideal':>10} | {memory_label} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row['k']:>4} | {row['newlines']:>8} | {row['ms']:>10.1f} | {row['speedup']:>7.2f}x "
            f"| {row['ideal']:>5.2f}x | {row['speedup'] / row['ideal']:>14.2f} | {row['bare_ms']:>11.1f} "
            f"| {row['bare_speedup'] / row['ideal']:>10.2f} | {row['memory_mb']:>{len(memory_label)}.1f} |"
        )
    target = next((row for row in rows if row["k"] == TARGET_K < report["n_tokens"]), None)
    if target is not None:
        ratio = target["speedup"] / target["ideal"]
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        print(f"\nK = {TARGET_K}: measured/ideal = {ratio:.2f}, {verdict} the >= {TARGET_RATIO} target")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prefill",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="hub id or folder of a real checkpoint (default: random 7B-shaped LLaVA)")
    source.add_argument("--family", choices=TINY_FAMILIES, help="the tests' tiny random model of this family instead")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the 7B-shaped model (default: 2)")
    parser.add_argument("--vision-layers", type=int, default=2, help="tower layers of the 7B-shaped model (default: 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto, cuda when present)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype (default: auto = float32 on CPU; bfloat16 on CUDA for the random models, "
        "load_runner's choice for --model)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per budget (median is reported)")
    parser.add_argument(
        "--budgets", type=int, nargs="+", help="visual-token budgets K (default: N and the family's presets)"
    )
    parser.add_argument(
        "--image-size",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        help="the random image's pixels (default: sized for the family: two crops wide for LLaVA-NeXT and "
        "OneVision, 35 x 35 merged tokens for Qwen2.5-VL, 640 x 480 for LLaVA-1.5)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures and the device facts to PATH")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: this machine has no CUDA device (torch {torch.__version__})")
    random_dtype = torch.float32 if device == "cpu" else torch.bfloat16
    random_dtype = random_dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.model:
        runner = load_runner(args.model, device=device, dtype=args.dtype)
    elif args.family:
        runner = tiny_runner(args.family, device, random_dtype)
    else:
        runner = llava7b_shaped_runner(args.layers, args.vision_layers, device, random_dtype)
    width, height = args.image_size or image_size(runner)
    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(height, width, 3) * 255).astype(np.uint8))
    report = {
        "model": runner.name,
        "family": runner.adapter.family,
        "device": device_facts(runner),
        "image_size": [width, height],
        "repeats": args.repeats,
        **measure(runner, image, args.budgets, args.repeats),
    }
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


def _with_malloc_env() -> None:
    """Re-execute this script with ``MALLOC_ENV`` unless it is already set (Linux only)."""
    if sys.platform == "linux" and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        argv = [sys.executable, "-m", "benchmarks.prefill", *sys.argv[1:]]
        os.execve(sys.executable, argv, {**os.environ, **MALLOC_ENV})


if __name__ == "__main__":
    _with_malloc_env()
    raise SystemExit(main())
