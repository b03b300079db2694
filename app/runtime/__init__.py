"""Model runtime: run a LLaVA-family model with any ``pruning`` selection through stock transformers.

    from app.runtime import load_runner
    runner = load_runner("llava-hf/llava-1.5-7b-hf")      # or a local folder
    enc = runner.encode(image)                            # once per image (bounded LRU cache)
    sel = runner.select(enc, "adaptive", 64)              # cheap; the model's calibration is filled in
    gen = runner.generate(enc, "What is shown?", sel)     # gen.text, gen.token_ids, gen.timings

Encode once, select many times, generate from only the kept tokens: the kept (or merged) visual
tokens are spliced, in raster order, into ``inputs_embeds`` in place of the prompt's one image
placeholder, and the model's public ``generate`` does the rest. Nothing in transformers is patched.
Model-specific knowledge lives in ``app.runtime.adapters``; the rest of the package is model-agnostic.
"""

from .calibration import CALIBRATION_FILE, Calibration, calibration_home, read_calibration, stored_calibration_path
from .generation import GenerationStream
from .images import load_image
from .loading import load_runner, resolve_device_dtype
from .records import Encoding, Generation, GenerationOptions, ModelNotAvailableError, OutOfMemoryError
from .runner import Runner

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "Encoding",
    "Generation",
    "GenerationOptions",
    "GenerationStream",
    "ModelNotAvailableError",
    "OutOfMemoryError",
    "Runner",
    "calibration_home",
    "load_image",
    "load_runner",
    "read_calibration",
    "resolve_device_dtype",
    "stored_calibration_path",
]
