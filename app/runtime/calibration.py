"""A model's pruning calibration: where it comes from, where it is stored, and how it bins an image.

One ``Calibration`` per model: the mean and the 10th/90th percentile of its image erank over typical
images (``python -m app.calibrate`` measures them). It fills the erank-aware methods' parameters
(``method_params``) and says whether an image is simple, intermediate or complex (``bin``).

Where it is found, in order: a file given explicitly; ``prunelens_calibration.json`` beside the
weights of a local folder; for a hub id, the user's calibration store (``calibration_home()``,
outside the hub cache, so a new snapshot or a cache clean-up does not lose it); otherwise the
paper's LLaVA-1.5-7B values (``pruning.LLAVA15_7B``), flagged as standing in unless the model is a
LLaVA-1.5 checkpoint (recognised from its config by the adapter).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pruning

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "calibration_home",
    "find_calibration",
    "paper_calibration",
    "read_calibration",
    "stored_calibration_path",
]

CALIBRATION_FILE = "prunelens_calibration.json"  # written by `python -m app.calibrate`, beside the weights


def calibration_home() -> Path:
    """The user's calibration store: ``$PRUNELENS_HOME/calibration`` (default ``~/.config/prunelens``)."""
    base = os.environ.get("PRUNELENS_HOME") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "prunelens"
    )
    return Path(base) / "calibration"


def stored_calibration_path(model: str) -> Path:
    """Where the calibration of hub id ``model`` (``owner/name``) is kept in the user's store."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "--", model.strip("/"))
    return calibration_home() / f"{safe}.json"


@dataclass(frozen=True)
class Calibration:
    """A model's pruning calibration: statistics of its image erank over typical images.

    Attributes:
        erank_avg: mean image erank (adaptive's ``erank_avg``).
        erank_p10: 10th percentile (hybrid-erank's ``erank_lo``).
        erank_p90: 90th percentile (hybrid-erank's ``erank_hi``).
        source: ``"file"`` (calibrated for this model), ``"paper-llava-1.5-7b"`` (a LLaVA-1.5 checkpoint
            without a file: methods.md's values) or ``"default-llava-1.5"`` (another model without a
            file: LLaVA-1.5-7B's values stand in and may not fit; see ``note``).
        n_images: how many images the statistics came from (None for paper values).
        path: the calibration file, when there is one.
        note: one human-readable sentence about where the numbers come from.
    """

    erank_avg: float
    erank_p10: float
    erank_p90: float
    source: str
    n_images: int | None = None
    path: str | None = None
    note: str = ""

    def method_params(self) -> dict[str, float]:
        """The calibration under the parameter names the pruning methods use."""
        return {"erank_avg": self.erank_avg, "erank_lo": self.erank_p10, "erank_hi": self.erank_p90}

    def bin(self, image_erank: float) -> str:
        """The image's complexity bin on this model's scale: ``"simple"`` at or below the 10th
        percentile, ``"complex"`` at or above the 90th, ``"intermediate"`` between (the paper's
        simple/complex split)."""
        if image_erank <= self.erank_p10:
            return "simple"
        if image_erank >= self.erank_p90:
            return "complex"
        return "intermediate"


def paper_calibration(name: str, is_llava15: bool) -> Calibration:
    """methods.md's LLaVA-1.5-7B values, flagged by whether they really belong to ``name``."""
    paper = pruning.LLAVA15_7B
    values = {"erank_avg": paper["erank_avg"], "erank_p10": paper["erank_lo"], "erank_p90": paper["erank_hi"]}
    if is_llava15:
        note = "LLaVA-1.5 checkpoint without a calibration file: methods.md's LLaVA-1.5-7B values"
        return Calibration(**values, source="paper-llava-1.5-7b", note=note)
    note = (
        f"{name!r} has no {CALIBRATION_FILE}: LLaVA-1.5-7B's values stand in and may not fit this model; "
        "run `python -m app.calibrate MODEL IMAGE_FOLDER` (MODEL: its hub id or folder) to calibrate it"
    )
    return Calibration(**values, source="default-llava-1.5", note=note)


def read_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration JSON written by ``app.calibrate``; a malformed file is a ``ValueError``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        values = {key: float(data[key]) for key in ("erank_avg", "erank_p10", "erank_p90")}
        n_images = int(data["n_images"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"calibration file {str(path)!r} is unreadable or incomplete ({err!r})") from None
    if not all(math.isfinite(v) and v >= 1 for v in values.values()) or not (values["erank_p10"] < values["erank_p90"]):
        raise ValueError(f"calibration file {str(path)!r} holds inconsistent values {values}")
    note = f"calibrated on {n_images} images ({path})"
    return Calibration(**values, source="file", n_images=n_images, path=str(path), note=note)


def find_calibration(model_dir: str | os.PathLike | None, adapter: Any, hub_id: str | None = None) -> Calibration:
    """The calibration beside the weights, else the user's store for ``hub_id``, else the paper's."""
    candidates = []
    if model_dir is not None:
        candidates.append(Path(model_dir) / CALIBRATION_FILE)
    if hub_id is not None:
        candidates.append(stored_calibration_path(hub_id))
    for path in candidates:
        if path.is_file():
            return read_calibration(path)
    return paper_calibration(adapter.name, adapter.is_llava15())
