"""The paper's calibration of LLaVA-1.5-7B: the image-erank statistics the erank-aware methods default to.

methods.md: ``erank_avg`` (adaptive, §3) is the mean image erank over typical images of the model;
``erank_lo`` / ``erank_hi`` (hybrid-erank, §7) are its simple- and complex-image ends (the 10th and
90th percentiles when a model is calibrated). They are properties of the *model*: pass your model's
own (``app.calibrate`` measures them); these values are what the methods use when none is given.
"""

from __future__ import annotations

__all__ = ["ERANK_AVG_LLAVA15_7B", "ERANK_HI_LLAVA15_7B", "ERANK_LO_LLAVA15_7B", "LLAVA15_7B"]

ERANK_AVG_LLAVA15_7B = 90.0  # methods.md §3: mean image erank of LLaVA-1.5-7B
ERANK_LO_LLAVA15_7B = 60.0  # methods.md §7: simple-image erank of LLaVA-1.5-7B
ERANK_HI_LLAVA15_7B = 120.0  # methods.md §7: complex-image erank of LLaVA-1.5-7B

# The same, under the method parameter names.
LLAVA15_7B = {"erank_avg": ERANK_AVG_LLAVA15_7B, "erank_lo": ERANK_LO_LLAVA15_7B, "erank_hi": ERANK_HI_LLAVA15_7B}
