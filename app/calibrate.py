"""Calibrate a model for image-aware pruning: image-erank statistics over its typical images.

    python -m app.calibrate llava-hf/llava-1.5-7b-hf path/to/images [--out FILE]

The adaptive method's ``erank_avg`` and hybrid-erank's ``erank_lo`` / ``erank_hi`` are properties of
the model (methods.md §3, §7): the mean and the 10th / 90th percentiles of erank(F) over images the
model typically sees. For models that read an image as several patch grids (LLaVA-NeXT's base image
and crops), the methods run in each grid, so the statistics are over every grid's own erank.
This command encodes every image in a folder (recursively), computes those
three numbers and saves them where ``load_runner`` picks them up: ``prunelens_calibration.json``
beside a local folder's weights, or, for a hub id, in the user's calibration store
(``app.runtime.calibration_home()``: ``~/.config/prunelens/calibration``, or ``$PRUNELENS_HOME``),
which a new snapshot or a hub-cache clean-up leaves alone; ``--out`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .runtime import CALIBRATION_FILE, Calibration, Runner, load_runner, stored_calibration_path

__all__ = ["IMAGE_SUFFIXES", "calibrate", "default_output", "find_images", "main", "summarize", "write_calibration"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LOW_PERCENTILE = 10  # methods.md §7: e_lo is the 10th percentile image erank
HIGH_PERCENTILE = 90  # methods.md §7: e_hi is the 90th percentile image erank
MIN_IMAGES = 2


def find_images(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursively) with an image suffix, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) < MIN_IMAGES:
        raise ValueError(
            f"{str(folder)!r} holds {len(paths)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); "
            f"calibration needs at least {MIN_IMAGES}, ideally a few hundred typical images"
        )
    return paths


def summarize(eranks: Sequence[float], *, path: str | None = None) -> Calibration:
    """Mean and 10th / 90th percentiles (linear interpolation) of per-image eranks."""
    values = np.asarray(eranks, dtype=np.float64)
    if values.size < MIN_IMAGES:
        raise ValueError(f"calibration needs at least {MIN_IMAGES} image eranks, got {values.size}")
    p10, p90 = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if not p10 < p90:
        raise ValueError(
            f"the images' eranks barely vary (10th percentile {p10:.3f}, 90th {p90:.3f}): "
            "calibrate on a more varied set of images"
        )
    return Calibration(
        erank_avg=float(values.mean()),
        erank_p10=float(p10),
        erank_p90=float(p90),
        source="file",
        n_images=int(values.size),
        path=path,
        note=f"calibrated on {values.size} images",
    )


def calibrate(runner: Runner, images: Iterable[Path], *, progress: bool = True) -> tuple[Calibration, dict]:
    """Encode each image once (bypassing the cache) and summarise the eranks of its patch grids.

    One grid per image for LLaVA-1.5 (its image erank); one per grid for multi-grid models, which
    is the erank the erank-aware methods see when they run in a grid.

    Returns:
        The calibration (``n_images``: images, not grids) and a report: ``eranks`` per image path,
        ``grid_eranks`` (every grid's, the statistics' samples) and ``skipped`` images (unreadable
        files, with the reason), which are reported rather than silently dropped.
    """
    images = list(images)
    eranks: dict[str, float] = {}
    grid_eranks: list[float] = []
    skipped: dict[str, str] = {}
    for path in tqdm(images, desc="calibrating", unit="image", disable=not progress):
        try:
            encoding = runner.encode(path, use_cache=False)
        except ValueError as err:
            skipped[str(path)] = str(err)
            tqdm.write(f"skipped {path}: {err}", file=sys.stderr)
            continue
        eranks[str(path)] = encoding.image_erank
        grid_eranks.extend(part.image_erank for part in encoding.parts)
    calibration = summarize(grid_eranks)
    if len(grid_eranks) != len(eranks):
        calibration = dataclasses.replace(
            calibration, n_images=len(eranks), note=f"calibrated on {len(grid_eranks)} grids of {len(eranks)} images"
        )
    return calibration, {"eranks": eranks, "grid_eranks": grid_eranks, "skipped": skipped}


def write_calibration(calibration: Calibration, path: str | Path, runner: Runner, report: dict) -> Path:
    """Save ``calibration`` as JSON (what ``runtime.read_calibration`` reads, plus provenance)."""
    path = Path(path)
    meta = runner.metadata
    values = np.asarray(report.get("grid_eranks") or list(report["eranks"].values()), dtype=np.float64)
    data = {
        "format": "prunelens-calibration/1",
        "model": runner.name,
        "erank_avg": calibration.erank_avg,
        "erank_p10": calibration.erank_p10,
        "erank_p90": calibration.erank_p90,
        "n_images": calibration.n_images,
        "erank_std": float(values.std()),
        "erank_min": float(values.min()),
        "erank_max": float(values.max()),
        "n_grids": int(values.size),
        "n_skipped": len(report["skipped"]),
        "feature_layer": meta["feature_layer"],
        "select_strategy": meta["select_strategy"],
        "dtype": meta["dtype"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def default_output(model: str) -> Path:
    """Where ``load_runner(model)`` looks: beside a local folder's weights, else the user's store."""
    return Path(model) / CALIBRATION_FILE if Path(model).is_dir() else stored_calibration_path(model)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="hub id or local folder of a supported model")
    parser.add_argument("images", help="folder of typical images (searched recursively)")
    parser.add_argument(
        "--out", help=f"where to write the JSON (default: {CALIBRATION_FILE} beside a folder's weights, or the store)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16 (default: auto)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many images (sorted order)")
    args = parser.parse_args(argv)

    if args.limit is not None and args.limit < MIN_IMAGES:
        parser.error(f"--limit must be at least {MIN_IMAGES}")
    try:
        images = find_images(args.images)[: args.limit]
        runner = load_runner(args.model, device=args.device, dtype=args.dtype)
        out = Path(args.out) if args.out is not None else default_output(args.model)
        calibration, report = calibrate(runner, images)
        written = write_calibration(calibration, out, runner, report)
    except (ValueError, OSError) as err:  # bad folders, unavailable or unsupported models, unwritable output
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"{runner.name}: image erank mean {calibration.erank_avg:.2f}, 10th percentile "
        f"{calibration.erank_p10:.2f}, 90th percentile {calibration.erank_p90:.2f} over "
        f"{calibration.n_images} images ({len(report['skipped'])} skipped) -> {written}"
    )
    if written.resolve() != default_output(args.model).resolve():
        print(f"load it with load_runner({args.model!r}, calibration={str(written)!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
