"""Image intake for the runtime: any user image becomes a safe RGB PIL image, or a clear refusal.

Accepts PIL images, paths, raw bytes and uint8 arrays; converts every PIL mode to RGB; refuses what
would be unsafe or meaningless to encode (over ``MAX_IMAGE_PIXELS``, extreme aspect ratios, files
that are not images). ``image_digest`` is the content half of the runtime's encoding-cache key.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["MAX_ASPECT_RATIO", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "ImageFileMissing", "image_digest", "load_image"]

MAX_IMAGE_PIXELS = 50_000_000  # larger images are refused (decoding them alone takes gigabytes)
MAX_ASPECT_RATIO = 50  # longer/shorter side; beyond it a shortest-edge resize would explode in size
MAX_IMAGE_BYTES = 20 * 2**20  # larger files are refused before they are opened


class ImageFileMissing(ValueError):
    """An image path that names no file (deleted, or never there)."""


def load_image(image: Any) -> Image.Image:
    """An RGB PIL image from a PIL image, a path, raw bytes or a (H, W[, C]) uint8 array.

    Alpha is composited on white, palette/CMYK/grey modes are converted, 16-bit and float images
    are rescaled to 8 bits, EXIF orientation is applied and animations give their first frame.
    Files over ``MAX_IMAGE_BYTES`` are refused unopened; images over ``MAX_IMAGE_PIXELS`` or beyond
    ``MAX_ASPECT_RATIO`` are refused from their header, before any pixel is decoded; empty,
    truncated or non-image files raise ``ValueError`` saying which. Messages name a file by its
    base name only (never the server's folders).
    """
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageFileMissing(f"the image file {_short(path.name)!r} does not exist or is not a file")
        _check_bytes(path.stat().st_size, "the image file")
        img = _open_image(path, "the image file")
    elif isinstance(image, (bytes, bytearray)):
        _check_bytes(len(image), "the image data")
        img = _open_image(io.BytesIO(bytes(image)), f"the image data ({len(image)} bytes)")
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array must be uint8 (H, W) or (H, W, 1|3|4), got {image.dtype} {image.shape}")
        img = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    else:
        raise ValueError(f"expected a PIL image, a path, bytes or a uint8 array, got {type(image).__name__}")
    _check_size(img.size, "the image")
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
    except Image.DecompressionBombError:
        raise ValueError(
            f"the image is too large to decode; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = _short(str(err).splitlines()[0] if str(err) else type(err).__name__, 80)
        raise ValueError(f"the image could not be decoded: it is truncated or corrupt ({reason})") from None
    return _to_rgb(img)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_bytes(n: int, what: str) -> None:
    if n == 0:
        raise ValueError(f"{what} is empty (0 bytes)")
    if n > MAX_IMAGE_BYTES:
        raise ValueError(f"{what} is {n / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES / 2**20:.0f} MB")


def _open_image(source: Any, what: str) -> Image.Image:
    try:
        img = Image.open(source)  # reads the header only
    except Image.DecompressionBombError:
        raise ValueError(f"{what} is too large to open; the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{what} is not an image this app can read (PNG, JPEG, WebP, GIF, BMP, TIFF)") from None
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    return img


def _check_size(size: tuple[int, int], what: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"{what} is empty ({width} x {height} pixels)")
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{what} has {width} x {height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: downscale it first"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{what} is {width} x {height} pixels; aspect ratios beyond {MAX_ASPECT_RATIO}:1 are refused")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha over white, wide integer/float greys rescaled to 8 bits)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        values = np.asarray(img, dtype=np.float64)  # (H, W)
        if img.mode.startswith("I;16"):
            grey = values / 257.0  # 16-bit full range -> 8-bit
        else:
            lo, hi = float(values.min()), float(values.max())
            grey = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_digest(img: Image.Image) -> str:
    """SHA-256 of an image's mode, size and pixels."""
    digest = hashlib.sha256()
    digest.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    digest.update(img.tobytes())
    return digest.hexdigest()
