"""What every page event passes through: errors become on-page messages, the request names the
session, image payloads arrive undecoded, and model work runs under ZeroGPU when it is there."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..messages import message
from ..sessions import DEFAULT_SESSION
from ..widgets import RefusedUpload, upload_value

__all__ = ["gpu", "guard", "image_value", "session_of"]

log = logging.getLogger("prunelens")


def gpu(fn: Callable) -> Callable:
    """``spaces.GPU`` (ZeroGPU on HuggingFace Spaces) when that package is installed, else ``fn``."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)


def _as_page_error(fn: Callable, err: Exception) -> gr.Error:
    if isinstance(err, gr.Error):
        return gr.Error(message(err.message if hasattr(err, "message") else err), print_exception=False)
    if isinstance(err, (ValueError, MemoryError, RuntimeError)):
        return gr.Error(message(err), print_exception=False)
    log.exception("unexpected error in %s", getattr(fn, "__name__", "handler"), exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}); the server is still running.")


def guard(fn: Callable) -> Callable:
    """Bad input becomes an on-page error message; anything else is logged, never shown raw.

    A generator function stays one (gradio streams it), its errors guarded while it runs.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streamed(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise _as_page_error(fn, err) from None

        return streamed

    @functools.wraps(fn)  # keeps the name and signature: gradio reads it to pass ``gr.Request``
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _as_page_error(fn, err) from None

    return wrapped


def session_of(request: gr.Request | None) -> str:
    """The page session an event belongs to (gradio's session hash)."""
    session = getattr(request, "session_hash", None)
    return session if isinstance(session, str) and session else DEFAULT_SESSION


def image_value(payload: Any) -> Any:
    """An image event's raw payload (``preprocess=False``) as a handler input, or a ``ValueError``."""
    value = upload_value(payload)
    if isinstance(value, RefusedUpload):
        raise ValueError(str(value))
    return value
