"""How the app words a refusal: what a user sent is quoted short, and messages reach the page cut and escaped.

``brief`` is the one way messages quote user input (the pipeline's and the handlers' alike);
``message`` and ``markdown_text`` turn any message into text the page shows as text, never as HTML
or Markdown, whatever the user typed.
"""

from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["MAX_MESSAGE_CHARS", "brief", "markdown_text", "message"]

MAX_MESSAGE_CHARS = 300  # error pop-ups are cut to this length


def brief(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: how messages quote what a user sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message(err: BaseException) -> str:
    """An exception as a pop-up line: one line, at most MAX_MESSAGE_CHARS, HTML-escaped.

    Gradio renders ``gr.Error`` text as HTML; escaping makes anything a user typed show as text.
    """
    text = html.escape(" ".join((str(err) or type(err).__name__).split()), quote=False)
    if len(text) > MAX_MESSAGE_CHARS:
        text = re.sub(r"&[a-z]*$", "", text[: MAX_MESSAGE_CHARS - 1]) + "…"  # never half an entity
    return text


def markdown_text(text: str) -> str:
    """``text`` for a Markdown component: cut like ``message`` and with Markdown syntax escaped."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~-])", r"\\\1", message(ValueError(text)))
