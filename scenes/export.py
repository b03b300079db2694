"""Write scenes to a folder as PNG files plus their ground truth: ``python -m scenes.export OUT``.

Used to calibrate the tiny model for image-aware pruning (``python -m app.calibrate MODEL OUT`` over
at least 500 *training* scenes) and to give the app example images. ``--split eval`` writes
held-out scenes instead. ``truth.json`` maps each file name to its scene's complexity, objects,
theme, background and word.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from scenes.data import training_scene
from scenes.evaluate import eval_scenes
from scenes.generate import Scene

__all__ = ["export_scenes", "main"]

CALIBRATION_SEED_BASE = 90_000_000
"""Training-distribution seeds used for calibration images (inside the training seed range, past
the seeds the default recipe draws)."""


def export_scenes(scenes: Sequence[Scene], out: Path) -> list[Path]:
    """Save each scene as ``scene_<seed>.png`` in ``out`` with ``truth.json``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths, truth = [], {}
    for scene in scenes:
        path = out / f"scene_{scene.seed}.png"
        scene.image.save(path)
        paths.append(path)
        truth[path.name] = {
            "seed": scene.seed,
            "complexity": scene.complexity,
            "objects": [asdict(o) for o in scene.objects],
            "text": scene.text,
            "theme": scene.theme,
            "background": scene.background,
        }
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return paths


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--split", choices=("train", "eval"), default="train")
    args = parser.parse_args(argv)
    if args.split == "train":
        scenes = [training_scene(CALIBRATION_SEED_BASE + i) for i in range(args.n)]
    else:
        scenes = eval_scenes(args.n)
    return export_scenes(scenes, args.out)


if __name__ == "__main__":
    main()
