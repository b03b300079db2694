"""The one gradio component PruneLens changes: an image input that the app, not gradio, decodes.

``gr.Image`` opens (and for ``type="pil"`` fully decodes) an upload before any event handler
runs, so an unreadable file or a decompression bomb fails inside gradio, where the user sees a
bare "Error". ``checked_image`` makes a stock ``gr.Image`` whose value reaches handlers as the
uploaded file's path untouched, or the bytes of a ``data:`` URL after checking its length, so that
``app.images.load_image`` applies every limit from the header and words every refusal. Only that
instance's ``preprocess`` is replaced (a subclass would make gradio write a ``.pyi`` stub beside
this file); in the browser it is the stock image widget.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import gradio as gr

from .images import MAX_IMAGE_BYTES

__all__ = ["RefusedUpload", "checked_image", "upload_value"]


class RefusedUpload(str):
    """The reason an upload was refused before any handler saw it (a ``str``, so it serialises)."""


def upload_value(payload: Any) -> str | bytes | RefusedUpload | None:
    """A path for uploads, checked bytes for ``data:`` URLs; nothing is decoded here."""
    if payload is None:
        return None
    url = getattr(payload, "url", None)
    if isinstance(url, str) and url.startswith("data:"):
        return _data_url_bytes(url)
    path = getattr(payload, "path", None)
    if not path:
        return RefusedUpload("the image arrived without a file: upload it again")
    return str(path)


def checked_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` (``type="filepath"``) whose handlers receive ``upload_value``'s result."""
    image = gr.Image(type="filepath", **kwargs)
    image.preprocess = upload_value  # this instance only: its payload is passed on, undecoded
    return image


def _data_url_bytes(url: str) -> bytes | RefusedUpload:
    head, sep, data = url.partition(",")
    if not sep or ";base64" not in head:
        return RefusedUpload("an image data URL must be base64-encoded (data:image/...;base64,...)")
    if len(data) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        return RefusedUpload(
            f"the image data URL holds about {len(data) * 3 // 4 / 2**20:.1f} MB; the limit is "
            f"{MAX_IMAGE_BYTES / 2**20:.0f} MB"
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return RefusedUpload("the image data URL is not valid base64")
