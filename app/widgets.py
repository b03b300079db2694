"""Image intake at the page's edge: what gradio hands over is passed on undecoded, with limits checked.

``gr.Image`` opens (and for ``type="pil"`` fully decodes) an upload before any event handler
runs, so an unreadable file or a decompression bomb fails inside gradio, where the user sees a
bare "Error". The page's image events therefore run with ``preprocess=False`` and pass the raw
payload through ``upload_value``: the uploaded file's path untouched, or the bytes of a ``data:``
URL after checking its length. ``app.runtime.images.load_image`` then applies every limit from the
header and words every refusal. (gradio still checks that an uploaded path lies in its own
upload folder before the handler sees it.)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .runtime.images import MAX_IMAGE_BYTES

__all__ = ["RefusedUpload", "upload_value"]


class RefusedUpload(str):
    """The reason an upload was refused before any handler saw it (a ``str``, so it serialises)."""


def upload_value(payload: Any) -> str | bytes | RefusedUpload | None:
    """A path for uploads, checked bytes for ``data:`` URLs; nothing is decoded here.

    Args:
        payload: an image component's raw value: None, a FileData dict (``path``, ``url``) or an
            object with those attributes.
    """
    if payload is None:
        return None
    if isinstance(payload, Mapping):
        url, path = payload.get("url"), payload.get("path")
    else:
        url, path = getattr(payload, "url", None), getattr(payload, "path", None)
    if isinstance(url, str) and url.startswith("data:"):
        return _data_url_bytes(url)
    if not isinstance(path, str) or not path:
        return RefusedUpload("the image arrived without a file: upload it again")
    return path


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
