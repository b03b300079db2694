"""Start-up checks of the ``--model`` argument, with the standard library only (no torch, no transformers).

``python app.py`` runs ``check_model`` before it imports anything heavy, so a missing folder, an
unreadable config, an unsupported architecture or truncated weights are reported in about a second
instead of after the model libraries have loaded. A hub id (``owner/name``) passes: loading decides.
``fail`` reports any start-up error the same way: one line on stderr, exit status 2.

``SUPPORTED_ARCHITECTURES`` is the one list of supported model types: ``app.runtime.adapters`` refuses to
register an adapter whose model type is missing from it.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path
from typing import NoReturn

__all__ = [
    "DTYPES",
    "SUPPORTED_ARCHITECTURES",
    "PreflightError",
    "check_model",
    "check_safetensors",
    "fail",
    "model_name",
]

# config.json's model_type -> the transformers architecture its adapter (app.runtime.adapters) runs.
SUPPORTED_ARCHITECTURES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
DTYPES = ("auto", "float32", "bfloat16", "float16")  # what runtime.load_runner accepts by name
# owner/name as huggingface_hub validates it: at most 96 characters of [A-Za-z0-9_.-], no edge '-' or '.'.
HUB_ID = re.compile(r"(?=.{3,96}$)\w(?:[\w.-]*\w)?/\w(?:[\w.-]*\w)?", re.ASCII)
SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the safetensors library refuses larger headers
MAX_MESSAGE = 2000  # characters of one error line


class PreflightError(ValueError):
    """The model argument cannot work; the message is one line naming the model and what is wrong."""


def model_name(model: str) -> str:
    """How the app shows ``model``: a local folder by its folder name, a hub id as given."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve().name or str(path.resolve())
    return model


def check_model(model: str) -> str:
    """Check a hub id or local model folder without loading it; returns its ``model_name``.

    Raises:
        PreflightError: the folder is missing, is a file, has no readable ``config.json``, declares
            an unsupported architecture, or holds missing, truncated or corrupt weights.
    """
    if not isinstance(model, str) or not model.strip():
        raise PreflightError(f"model must be a hub id or a folder path, got {model!r}")
    path = Path(model).expanduser()
    if path.exists() and not path.is_dir():
        raise PreflightError(f"model path {model!r} is a file, not a folder (expected a model folder or a hub id)")
    if not path.exists():
        if model.startswith((".", "/", "~")) or "\\" in model or not HUB_ID.fullmatch(model):
            raise PreflightError(
                f"model folder {model!r} does not exist (and it is not a hub id of the form owner/name)"
            )
        if "--" in model or ".." in model or model.endswith(".git"):
            raise PreflightError(f"{model!r} is not a valid hub id (no '--', '..' or trailing '.git')")
        return model
    _check_config(path, model)
    _check_weights(path, model)
    return model_name(model)


def _check_config(folder: Path, model: str) -> None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise PreflightError(f"model folder {model!r} has no config.json (is it a model checkpoint folder?)")
    try:
        text = config_path.read_bytes()
    except OSError as err:
        raise PreflightError(f"{str(config_path)!r} cannot be read ({err.strerror or err})") from None
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreflightError(f"{str(config_path)!r} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise PreflightError(f"{str(config_path)!r} holds a {type(config).__name__}, expected a JSON object")
    supported = ", ".join(f"{arch} (model_type {kind!r})" for kind, arch in SUPPORTED_ARCHITECTURES.items())
    model_type = config.get("model_type")
    declared = config.get("architectures")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise PreflightError(
            f"model {model!r} is a {model_type!r} model (architectures {declared}), which PruneLens does not "
            f"support; supported: {supported}"
        )
    architecture = SUPPORTED_ARCHITECTURES[model_type]
    if declared and (not isinstance(declared, list) or architecture not in declared):
        raise PreflightError(
            f"model {model!r} has architectures {declared}, which PruneLens does not support; supported: {supported}"
        )


def _check_weights(folder: Path, model: str) -> None:
    shards = set(folder.glob("*.safetensors"))
    for index in sorted(folder.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_bytes())["weight_map"]
            listed = {folder / name for name in weight_map.values()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise PreflightError(f"weights index {str(index)!r} is unreadable ({type(err).__name__}: {err})") from None
        missing = sorted(p.name for p in listed if not p.is_file())
        if missing:
            raise PreflightError(f"weights index {str(index)!r} lists shard(s) missing from {model!r}: {missing}")
        shards |= {p for p in listed if p.suffix == ".safetensors"}
    if not shards and not any(folder.glob("pytorch_model*.bin")):
        raise PreflightError(f"model folder {model!r} holds no weights (*.safetensors or pytorch_model*.bin)")
    for shard in sorted(shards):
        check_safetensors(shard)


def check_safetensors(path: str | Path) -> None:
    """Refuse a safetensors file whose size or header does not match what its header describes.

    The format: an 8-byte little-endian header length, that many bytes of JSON header
    (``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the
    tensor data, whose offsets tile ``[0, end)`` without gaps; the file is exactly that long.
    """
    path = Path(path)
    problem = f"weights file {str(path)!r} is truncated or corrupt"
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size < 8:
                raise PreflightError(f"{problem}: {size} bytes, shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > SAFETENSORS_MAX_HEADER or 8 + header_len > size:
                raise PreflightError(f"{problem}: it declares a {header_len}-byte header but holds {size} bytes")
            raw = f.read(header_len)
    except OSError as err:
        raise PreflightError(f"weights file {str(path)!r} cannot be read ({err.strerror or err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PreflightError(f"{problem}: its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise PreflightError(f"{problem}: its header is a {type(header).__name__}, expected a JSON object")
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(v) is int for v in offsets)):
            raise PreflightError(f"{problem}: tensor {name!r} has no valid data_offsets ({offsets!r})")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end or stop < begin:
            raise PreflightError(
                f"{problem}: tensor {name!r} has data_offsets [{begin}, {stop}], expected to start at {end}"
            )
        end = stop
    expected = 8 + header_len + end
    if size != expected:
        raise PreflightError(f"{problem}: {size} bytes on disk, its header describes {expected}")


def fail(error: BaseException | str) -> NoReturn:
    """Report a start-up error as one line on stderr (``prunelens: error: ...``) and exit with status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    print(f"prunelens: error: {message}", file=sys.stderr)
    raise SystemExit(2)
