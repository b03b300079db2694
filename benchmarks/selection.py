"""Selection speed: every registered method next to its plain per-token counterpart.

    python -m benchmarks.selection                 # CPU, and CUDA when present
    python -m benchmarks.selection --sizes 576 --repeats 21
    python -m benchmarks.selection --sizes 5x576 1225 --images 1

Cases (``--sizes``), K = N / 9 in each (LLaVA-1.5's 64 of 576):

* ``576``: one 24 x 24 grid, C = 1024, D = 4096 (LLaVA-1.5-7B);
* ``2880``: LLaVA-NeXT-7B's N as one 48 x 60 grid;
* ``5x576``: LLaVA-NeXT-7B as PruneLens runs it, per crop: base image + 4 crops of 24 x 24, the
  budget split over the grids and the method run in each (``app.runtime.grids.select_grids``),
  against the plain implementation run grid by grid with the documented split;
* ``1225``: Qwen2.5-VL-7B's merged grid of 35 x 35 tokens (its budgets' 1225), V = the merger's
  input (4 x 1280 = 5120), D = 3584, keys of one 80-wide head.

For each case it builds a few synthetic encodings (clustered patches, peaked attention: see
``benchmarks/synthetic.py``; with a synthetic question, ``with_query``, for the methods that need
one), checks that PruneLens picks exactly the plain implementation's tokens on every one, and prints
the median milliseconds per image of both, with their ratio. It exits non-zero if any selection
differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

import pruning
from app.runtime.adapters import ImageGeometry
from app.runtime.grids import select_grids
from app.runtime.records import GridPart
from benchmarks.plain import plain_dart_llm, plain_fastv, plain_picks, plain_select
from benchmarks.synthetic import synthetic_inputs


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark case: N tokens in one or more patch grids, with a model's feature widths.

    Attributes:
        grids: (rows, cols) of each grid; more than one runs per grid through ``select_grids``.
        dim_pre: C, the width of V (the projector's input).
        dim: D, the width of F (the LLM's).
        key_dim: the width of the head-averaged keys Kv.
    """

    grids: tuple[tuple[int, int], ...]
    dim_pre: int
    dim: int
    key_dim: int

    @property
    def n(self) -> int:
        return sum(rows * cols for rows, cols in self.grids)

    @property
    def label(self) -> str:
        """The N column: the token count, and the grids when there are several."""
        sizes = {rows * cols for rows, cols in self.grids}
        return str(self.n) if len(self.grids) == 1 else f"{self.n} ({len(self.grids)} × {'/'.join(map(str, sizes))})"


CASES = {
    "576": Case(((24, 24),), 1024, 4096, 64),  # LLaVA-1.5-7B
    "2880": Case(((48, 60),), 1024, 4096, 64),  # LLaVA-NeXT-7B's N as one grid
    "5x576": Case(((24, 24),) * 5, 1024, 4096, 64),  # LLaVA-NeXT-7B per crop: base + 2 x 2 crops
    "1225": Case(((35, 35),), 5120, 3584, 80),  # Qwen2.5-VL-7B: 35 x 35 merged tokens
}


def plain_split(budget: int, sizes: Sequence[int]) -> list[int]:
    """docs/models.md's budget split, transcribed plainly: ⌊K·nᵢ/N⌋ each, then one more token to
    the grids with the largest remainders, ties to the earlier grid."""
    total = sum(sizes)
    budget = min(budget, total)
    shares = [math.floor(budget * size / total) for size in sizes]
    remainders = [budget * size / total - share for size, share in zip(sizes, shares)]
    for _ in range(budget - sum(shares)):
        best = 0
        for i in range(len(sizes)):
            if remainders[i] > remainders[best]:
                best = i
        shares[best] += 1
        remainders[best] = -1.0
    return shares


def select_image(parts: Sequence[GridPart], method: str, k: int) -> pruning.Selection:
    """PruneLens's selection on one synthetic image: ``pruning.select`` on its one grid, else
    ``select_grids`` (the budget split, the method in every grid), as ``Runner.select`` does."""
    if len(parts) == 1:
        return pruning.select(method, parts[0].inputs, k)
    return select_grids(parts, method, k)


def plain_image(parts: Sequence[GridPart], method: str, k: int) -> list[int]:
    """The plain implementation's picks on one synthetic image: on its one grid, else grid by grid
    with the documented split, in the image's token numbering."""
    if len(parts) == 1:
        return plain_picks(method, parts[0].inputs, k).tolist()
    picked = []
    for part, share in zip(parts, plain_split(k, [p.n_tokens for p in parts])):
        if share:
            picked.extend(i + part.offset for i in plain_select(method, part.inputs, share))
    return picked


def grid_parts(case: Case, seed: int, device: str) -> tuple[GridPart, ...]:
    """One synthetic image of ``case`` as ``GridPart``s: each grid its own encoding (own seed)."""
    parts, offset = [], 0
    for g, grid in enumerate(case.grids):
        inputs = synthetic_inputs(
            grid, case.dim_pre, case.dim, seed=seed * 100 + g, key_dim=case.key_dim, device=device
        )
        inputs = with_query(inputs, seed=seed * 100 + g)
        side = 14 * max(grid)
        geometry = ImageGeometry((side, side), (0.0, 0.0, float(side), float(side)), (side, side), 14, grid)
        parts.append(GridPart(f"grid {g}", inputs, geometry, offset, pruning.effective_rank(inputs.feats)))
        offset += inputs.n_tokens
    return tuple(parts)


def with_query(inputs: pruning.PruneInputs, *, seed: int = 0, dim: int = 64, n_text: int = 2) -> pruning.PruneInputs:
    """``inputs`` plus synthetic joint-space patch and text embeddings (E and T, for CDPruner).

    E is a fixed random linear image of V (as CLIP's visual projection is one of V after its
    layer norm); each of the ``n_text`` rows of T lies near the embedding of one random patch, so
    relevance to the question varies over the image. Deterministic per seed.
    """
    g = torch.Generator().manual_seed(seed)
    v = inputs.feats_pre.float().cpu()
    patch = v @ (torch.randn(v.shape[1], dim, generator=g) / v.shape[1] ** 0.5)  # (N, P)
    anchors = torch.randperm(inputs.n_tokens, generator=g)[:n_text]
    text = patch[anchors] + 0.5 * patch.std() * torch.randn(anchors.shape[0], dim, generator=g)  # (M, P)
    to = lambda t: t.to(device=inputs.device, dtype=inputs.feats_pre.dtype)
    return dataclasses.replace(inputs, patch_embeds=to(patch), text_embeds=to(text))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_ms(fns: dict[str, Callable], images, repeats: int, device: str) -> dict[str, float]:
    """Median wall time per image of each ``fns[name](image)``, the functions taken in turn.

    Each of the ``repeats`` passes runs every function on every image, one function after the
    other (starting one function later each pass) and each after one untimed call that brings its
    data back into the caches. A slow spell of the machine (a noisy neighbour, a change of clock)
    then falls on all of them alike, so the ratios between rows stay fair even when the absolute
    figures drift, and each figure is still a warm-cache one.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fns[name](images[0])  # warm-up
            for image in images:
                _sync(device)
                start = time.perf_counter()
                fns[name](image)
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def picks(sel: pruning.Selection) -> list[int]:
    return sel.keep.tolist() if sel.tokens is not None else sel.order.tolist()


TABLE_HEAD = (
    "| N | K | method | pruning ms | plain ms | plain / pruning | same tokens |\n|---:|---:|---|---:|---:|---:|:---:|"
)


def print_row(label: str, k: int, method: str, ours: float, plain: float, same: bool) -> None:
    """One row of the table: both medians, their ratio and whether the picks agree."""
    agree = "yes" if same else "NO"
    print(f"| {label} | {k} | {method} | {ours:.2f} | {plain:.2f} | {plain / ours:.1f}x | {agree} |", flush=True)


def run(cases: Sequence[str], device: str, repeats: int, plain_repeats: int, n_images: int) -> bool:
    all_same = True
    print(f"\n## {device.upper()}  ({torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print(TABLE_HEAD)
    for name in cases:
        case = CASES[name]
        k = case.n // 9
        images = [grid_parts(case, s, device) for s in range(n_images)]  # one tuple of grids per image
        cpu_images = [tuple(dataclasses.replace(p, inputs=p.inputs.to("cpu")) for p in im) for im in images]
        methods = pruning.list_methods()
        same = {
            m: all(picks(select_image(im, m, k)) == plain_image(cpu, m, k) for im, cpu in zip(images, cpu_images))
            for m in methods
        }
        ours = interleaved_ms(
            {m: lambda im, m=m, k=k: select_image(im, m, k) for m in methods}, images, repeats, device
        )
        plain = interleaved_ms(
            {m: lambda im, m=m, k=k: plain_image(im, m, k) for m in methods}, cpu_images, plain_repeats, "cpu"
        )
        for m in methods:
            all_same &= same[m]
            print_row(case.label, k, m, ours[m], plain[m], same[m])
    return all_same


TEXT_TOKENS = 40
"""Prompt tokens after the image in the in-LLM cases (a question of a few dozen tokens)."""


def layer_inputs(case: Case, seed: int, device: str) -> pruning.LayerInputs:
    """Random layer-K state for the in-LLM methods: N visual and ``TEXT_TOKENS`` text rows of width
    D, keys of every head side by side (D wide too, as in Llama's attention), a peaked attention row."""
    g = torch.Generator().manual_seed(seed)
    n, d = case.n, case.dim
    attn = torch.softmax(3.0 * torch.randn(n, generator=g), dim=0) * 0.5  # half the row on the image
    state = pruning.LayerInputs(
        last_attn=attn,
        keys=torch.randn(n, d, generator=g),
        hidden=torch.randn(n, d, generator=g),
        text_keys=torch.randn(TEXT_TOKENS, d, generator=g),
        text_hidden=torch.randn(TEXT_TOKENS, d, generator=g),
    )
    return dataclasses.replace(state, **{f: getattr(state, f).to(device) for f in dataclasses.asdict(state)})


def plain_layer(state: pruning.LayerInputs, method: str, k: int) -> list[int]:
    """The plain transcription of an in-LLM rule on the same state, as sorted kept indices."""
    if method == "fastv":
        return sorted(plain_fastv(state.last_attn, k))
    return sorted(plain_dart_llm(state.keys, state.hidden, state.text_keys, state.text_hidden, k))


def run_in_llm(cases: Sequence[str], device: str, repeats: int, plain_repeats: int, n_images: int) -> bool:
    """The in-LLM rules (FastV, DART at layer K) on random layer-K states of each case's N, one
    sequence (they see every visual token at once, whatever the grids): the selection alone, not
    the prefill around it."""
    all_same = True
    print("\nIn-LLM rules on layer-K states (the rule only; the prefill that fills the state is not timed):\n")
    print(TABLE_HEAD)
    for n in dict.fromkeys(CASES[name].n for name in cases):  # one sequence of N: grids do not matter
        case = next(CASES[name] for name in cases if CASES[name].n == n)
        k = case.n // 9
        states = [layer_inputs(case, s, device) for s in range(n_images)]
        cpu_states = [layer_inputs(case, s, "cpu") for s in range(n_images)]
        methods = pruning.list_methods("in-llm")
        same = {
            m: all(
                pruning.select(m, st, k).keep.tolist() == plain_layer(cpu, m, k) for st, cpu in zip(states, cpu_states)
            )
            for m in methods
        }
        ours = interleaved_ms(
            {m: lambda st, m=m, k=k: pruning.select(m, st, k) for m in methods}, states, repeats, device
        )
        plain = interleaved_ms(
            {m: lambda st, m=m, k=k: plain_layer(st, m, k) for m in methods}, cpu_states, plain_repeats, "cpu"
        )
        for m in methods:
            all_same &= same[m]
            print_row(str(case.n), k, m, ours[m], plain[m], same[m])
    return all_same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selection", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="+", default=list(CASES), choices=list(CASES), help="cases to run (default: all; see above)"
    )
    parser.add_argument("--repeats", type=int, default=11, help="timed passes over the images (pruning)")
    parser.add_argument("--plain-repeats", type=int, default=3, help="timed passes for the plain versions")
    parser.add_argument("--images", type=int, default=3, help="distinct synthetic images per case")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: this machine has no CUDA device (torch {torch.__version__})")
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [args.device]
    devices = ["cpu"] if devices == ["auto"] else devices
    ok = True
    for device in devices:
        ok &= run(args.sizes, device, args.repeats, args.plain_repeats, args.images)
        ok &= run_in_llm(args.sizes, device, args.repeats, args.plain_repeats, args.images)
    if not ok:
        print("\nSome selections differ from the plain implementation.", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
