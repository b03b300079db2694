"""Model-family adapters: what the runtime needs from a vision-language model, in one place per family.

An adapter wraps one loaded model and its processor and answers, for that model only: how an image
becomes pixels (and which part of the image the patch grid covers), how the pruning inputs
(V, F, a, Kv, [CLS]) are read out of the vision tower, how merged tokens are projected, how a prompt
becomes token ids around one image placeholder, and how ids become input embeddings. Every
model-specific constant and transformers-version quirk lives in the family's own file
(``llava.py``); the runtime and the UI never see them. ``base.py`` holds the
``Adapter`` protocol the runtime types against, the records adapters return and the registry.

Families register themselves by ``config.model_type``; ``adapter_for(model, processor)`` picks one
or refuses the model with a message that lists what is supported. A family's model type must also be
listed in ``app.preflight.SUPPORTED_ARCHITECTURES``, the torch-free list the app checks a model
folder against at start-up.
"""

from . import llava  # noqa: F401  (registers the LLaVA family)
from .base import (
    Adapter,
    ImageGeometry,
    VisualFeatures,
    adapter_for,
    check_config,
    load_pretrained,
    register_adapter,
    registered_adapters,
    supported_models,
)

__all__ = [
    "Adapter",
    "ImageGeometry",
    "VisualFeatures",
    "adapter_for",
    "check_config",
    "load_pretrained",
    "register_adapter",
    "registered_adapters",
    "supported_models",
]
