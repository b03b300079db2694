"""Model-family adapters: what the runtime needs from a vision-language model, in one place per family.

An adapter wraps one loaded model and its processor and answers, for that model only: how an image
becomes the pruning inputs (V, F, a, Kv, [CLS]) of one or more patch grids, where each grid lies on
the image, where tokens (and newlines, and 3-D positions) sit in the LLM's sequence
(``ImageReadout``), how merged tokens are projected, how a prompt becomes token ids around one image
placeholder, and how ids become input embeddings. Every model-specific constant and
transformers-version quirk lives in the family's own file (``llava.py``, ``llava_next.py``,
``llava_onevision.py``, ``qwen2_5_vl.py``); the runtime and the UI never see them. ``base.py`` holds
the ``Adapter`` protocol the runtime types against, the records adapters return and the registry;
``prompts.py`` the chat-prompt half every family shares. docs/models.md says what stands for
[CLS] attention on each family.

Families register themselves by ``config.model_type``; ``adapter_for(model, processor)`` picks one
or refuses the model with a message that lists what is supported. A family's model type must also be
listed in ``app.preflight.SUPPORTED_ARCHITECTURES``, the torch-free list the app checks a model
folder against at start-up.
"""

from . import llava, llava_next, llava_onevision, qwen2_5_vl  # noqa: F401  (registers each family)
from .base import (
    Adapter,
    ImageGeometry,
    ImageReadout,
    ImageTextProcessor,
    RopePositions,
    VisualFeatures,
    VisualLayout,
    adapter_for,
    check_config,
    load_pretrained,
    register_adapter,
    registered_adapters,
    scaled_budgets,
    supported_models,
)

__all__ = [
    "Adapter",
    "ImageGeometry",
    "ImageReadout",
    "ImageTextProcessor",
    "RopePositions",
    "VisualFeatures",
    "VisualLayout",
    "adapter_for",
    "check_config",
    "load_pretrained",
    "register_adapter",
    "registered_adapters",
    "scaled_budgets",
    "supported_models",
]
