"""Selection speed: every registered method next to its plain per-token counterpart.

    python -m benchmarks.selection                 # CPU, and CUDA when present
    python -m benchmarks.selection --sizes 576 --repeats 21

For each size (N tokens, D = 4096, C = 1024, K = N / 9 as LLaVA-1.5's 64 of 576) it builds a few
synthetic encodings (clustered patches, peaked attention: see ``benchmarks/synthetic.py``; with a
synthetic question, ``with_query``, for the methods that need one), checks
that ``pruning.select`` picks exactly the plain implementation's tokens on every one, and prints the
median milliseconds per image of both, with their ratio. It exits non-zero if any selection differs.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import torch

import pruning
from benchmarks.plain import plain_picks, plain_select
from benchmarks.synthetic import synthetic_inputs

GRIDS = {576: (24, 24), 2880: (48, 60)}


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


def median_ms(fn, images, repeats: int, device: str) -> float:
    """Median wall time of ``fn(image)`` per image, over ``repeats`` passes of every image."""
    for image in images:  # warm-up
        fn(image)
    times = []
    for _ in range(repeats):
        for image in images:
            _sync(device)
            start = time.perf_counter()
            fn(image)
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def picks(sel: pruning.Selection) -> list[int]:
    return sel.keep.tolist() if sel.tokens is not None else sel.order.tolist()


def run(sizes, device: str, repeats: int, plain_repeats: int, n_images: int) -> bool:
    all_same = True
    print(f"\n## {device.upper()}  ({torch.get_num_threads()} threads, torch {torch.__version__})\n")
    print("| N | K | method | pruning ms | plain ms | plain / pruning | same tokens |")
    print("|---:|---:|---|---:|---:|---:|:---:|")
    for n in sizes:
        grid = GRIDS[n]
        k = n // 9
        images = [
            with_query(synthetic_inputs(grid, 1024, 4096, seed=s, device=device), seed=s) for s in range(n_images)
        ]
        cpu_images = [im.to("cpu") for im in images]
        for method in pruning.list_methods():
            same = all(
                picks(pruning.select(method, im, k)) == plain_select(method, cpu, k)
                for im, cpu in zip(images, cpu_images)
            )
            all_same &= same
            ours = median_ms(lambda im, m=method, k=k: pruning.select(m, im, k), images, repeats, device)
            plain = median_ms(lambda im, m=method, k=k: plain_picks(m, im, k), cpu_images, plain_repeats, "cpu")
            print(
                f"| {n} | {k} | {method} | {ours:.2f} | {plain:.2f} | {plain / ours:.1f}x | "
                f"{'yes' if same else 'NO'} |",
                flush=True,
            )
    return all_same


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[576, 2880], choices=sorted(GRIDS))
    parser.add_argument("--repeats", type=int, default=11, help="timed passes over the images (pruning)")
    parser.add_argument("--plain-repeats", type=int, default=3, help="timed passes for the plain versions")
    parser.add_argument("--images", type=int, default=3, help="distinct synthetic images per size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    args = parser.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [args.device]
    devices = ["cpu"] if devices == ["auto"] else devices
    ok = True
    for device in devices:
        ok &= run(args.sizes, device, args.repeats, args.plain_repeats, args.images)
    if not ok:
        print("\nSome selections differ from the plain implementation.", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
