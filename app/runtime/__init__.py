"""Model runtime: run a vision-language model with any ``pruning`` selection through stock transformers.

    from app.runtime import load_runner
    runner = load_runner("llava-hf/llava-1.5-7b-hf")      # or a local folder
    enc = runner.encode(image)                            # once per image (bounded LRU cache)
    sel = runner.select(enc, "adaptive", 64)              # cheap; the model's calibration is filled in
    gen = runner.generate(enc, "What is shown?", sel)     # gen.text, gen.token_ids, gen.timings

Encode once, select many times, generate from only the kept tokens: the kept (or merged) visual
tokens are spliced, in the stock order, into ``inputs_embeds`` in place of the prompt's one image
placeholder, and the model's public ``generate`` does the rest. Nothing in transformers is patched.
Families: LLaVA, LLaVA-NeXT and LLaVA-OneVision (several grids per image: ``grids``), Qwen2.5-VL
(M-RoPE positions kept); docs/models.md.

One job per module: ``records`` (Encoding, Generation, GenerationOptions, errors), ``calibration``,
``images`` (safe image intake), ``adapters`` (one file per model family, behind a typed
``Adapter`` protocol), ``grids`` (budget split and per-grid selection for multi-grid images),
``generation`` (one batched generate call: splicing, padding, positions, timing, cancelling,
reporting every token), ``runner`` (the ``Runner``), ``loading`` (``load_runner``) and
``synthetic`` (random-weight models of each family for tests and benchmarks). The names below are imported on
first use, so ``app.runtime.images`` alone does not pull in torch's model stack.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CALIBRATION_FILE": "calibration",
    "Calibration": "calibration",
    "calibration_home": "calibration",
    "read_calibration": "calibration",
    "stored_calibration_path": "calibration",
    "load_image": "images",
    "load_runner": "loading",
    "resolve_device_dtype": "loading",
    "Encoding": "records",
    "Generation": "records",
    "GenerationOptions": "records",
    "ModelNotAvailableError": "records",
    "OutOfMemoryError": "records",
    "Runner": "runner",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value
