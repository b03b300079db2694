"""The PruneLens page: layout and wiring only. Handlers live in ``app.handlers``.

``build_demo(pipeline)`` returns a ``gr.Blocks``. Events follow one rule: the image loads (encode),
then every change of budget, methods, parameters or colouring re-runs only selection and drawing;
the Compare button adds generation as a second, slower step. The page keeps only small values in
session state (the image key and a summary for export); the heavy encoding lives in the pipeline's
bounded cache.

One module per panel builds its components and returns them as a small dataclass: ``inputs`` (the
left column), ``plots`` (the image's facts and the method plots), ``columns`` (overlays and answers
side by side), ``step`` (the greedy-walk replay), ``export`` and ``api`` (the ``/compare``
endpoint); ``events`` wires the events that span panels, ``page`` lays the panels out. Event
functions return ``{component: value}`` dicts (a component left out keeps its value).
"""

from ..messages import MAX_MESSAGE_CHARS, markdown_text, message
from .guard import gpu, guard
from .page import build_demo

__all__ = ["MAX_MESSAGE_CHARS", "build_demo", "gpu", "guard", "markdown_text", "message"]
