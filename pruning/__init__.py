"""PruneLens pruning core: visual-token pruning methods and their metrics, in pure torch.

    import pruning
    sel = pruning.select("adaptive", inputs, budget=64, erank_avg=90.0)
    sel.keep                      # raster-sorted kept patch indices
    pruning.list_methods()        # every method that selects before the LLM (from PruneInputs)
    pruning.list_methods("in-llm")  # those that select inside it (fastv, dart-llm: LayerInputs)
    pruning.get_method("adaptive").ranges["tau_max"]   # what a widget may offer for a parameter

Methods and metrics follow docs/methods.md; see each ``select_<name>`` docstring. The paper's
LLaVA-1.5-7B calibration, which the erank-aware methods default to, is ``pruning.LLAVA15_7B``.
"""

from . import methods  # noqa: F401  (registers every method)
from .apply import apply_selection
from .calibration import LLAVA15_7B
from .methods.adaptive import select_adaptive
from .methods.attention import select_attention
from .methods.baselines import select_random, select_uniform
from .methods.dart import select_dart, select_dart_llm
from .methods.diversity import select_diversity
from .methods.fastv import select_fastv
from .methods.hybrid import select_hybrid, select_hybrid_erank
from .methods.visionzip import select_visionzip
from .methods.vispruner import select_vispruner
from .metrics import attention_entropy, effective_rank, retained_attention
from .registry import MethodSpec, ParamRange, get_method, list_methods, method_params, select, select_batch
from .types import LayerInputs, PruneInputs, Selection

__all__ = [
    "LLAVA15_7B",
    "LayerInputs",
    "MethodSpec",
    "ParamRange",
    "PruneInputs",
    "Selection",
    "apply_selection",
    "attention_entropy",
    "effective_rank",
    "get_method",
    "list_methods",
    "method_params",
    "retained_attention",
    "select",
    "select_adaptive",
    "select_attention",
    "select_batch",
    "select_dart",
    "select_dart_llm",
    "select_diversity",
    "select_fastv",
    "select_hybrid",
    "select_hybrid_erank",
    "select_random",
    "select_uniform",
    "select_visionzip",
    "select_vispruner",
]
