"""Finding and loading a model: a local folder, the local hub cache, or (online) a download.

``load_runner`` is the one way from a model name to a ``Runner``. Offline (``HF_HUB_OFFLINE`` or no
route to the hub, probed once with a short timeout) a model missing from the cache fails at once
with ``ModelNotAvailableError`` saying where it looked and how to make it available.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from pathlib import Path

import torch
from transformers import AutoConfig

from .adapters import check_config, load_pretrained, supported_models
from .calibration import Calibration, read_calibration
from .records import ModelNotAvailableError
from .runner import DEFAULT_CACHE_SIZE, Runner
from .texttower import load_text_tower

__all__ = ["load_runner", "resolve_device_dtype"]

HUB_PROBE_TIMEOUT_S = 3.0  # how long to wait for the hub before declaring the machine offline
_TRUTHY = {"1", "on", "yes", "true"}


def resolve_device_dtype(device: str | torch.device, dtype: str | torch.dtype) -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but CUDA is not available on this machine")
    if dtype == "auto":
        if device.type != "cuda":
            return device, torch.float32
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype not in names.values():
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return device, dtype


def _offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(v.strip().lower() in _TRUTHY for v in env)


def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within ``HUB_PROBE_TIMEOUT_S`` (DNS included)."""
    url = urllib.parse.urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    reachable = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            reachable.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return reachable.is_set()


def _unavailable(model: str, cache: str, reason: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model {model!r} is not in the local Hugging Face cache ({cache}) and {reason}. "
        f"To make it available, either run `huggingface-cli download {model}` (or `hf download {model}`) "
        f"on a connected machine and copy its cache folder to {cache} (or point HF_HUB_CACHE at a copy), "
        "or pass the path of a local folder holding the model's files "
        "(config.json, *.safetensors, tokenizer and processor files)."
    )


def _locate(model: str, cache_dir: str | os.PathLike | None) -> Path:
    """The local folder of ``model``: the folder itself, the cached snapshot, or a fresh download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotAvailableError(f"model path {model!r} is not a folder (expected a hub id or a model folder)")
    try:
        validate_repo_id(model)
    except HFValidationError as err:
        raise ValueError(f"{model!r} is neither a model folder nor a valid hub id ({err})") from None
    cache = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    try:
        return Path(snapshot_download(model, cache_dir=cache, local_files_only=True))
    except Exception:
        pass
    if _offline():
        raise _unavailable(model, cache, "offline mode is on (HF_HUB_OFFLINE)")
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    if not _hub_reachable(endpoint):
        raise _unavailable(model, cache, f"the hub ({endpoint}) cannot be reached from this machine")
    try:
        return Path(
            snapshot_download(
                model,
                cache_dir=cache,
                etag_timeout=HUB_PROBE_TIMEOUT_S,
                ignore_patterns=["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf"],
            )
        )
    except Exception as err:
        raise _unavailable(model, cache, f"downloading it failed ({type(err).__name__}: {err})") from None


def load_runner(
    model: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    cache_dir: str | os.PathLike | None = None,
    calibration: str | os.PathLike | Calibration | None = None,
    cache_size: int = DEFAULT_CACHE_SIZE,
    text_tower: str | os.PathLike | None = None,
) -> Runner:
    """Load a supported model from a hub id or a local folder and wrap it in a ``Runner``.

    Args:
        model: a Hugging Face id (``llava-hf/llava-1.5-7b-hf``) or a local folder.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"auto"`` (bfloat16 on CUDA, float16 where bf16 is unsupported, float32 on CPU),
            ``"float32"``, ``"bfloat16"``, ``"float16"`` or a torch dtype.
        cache_dir: the hub cache to look in (default: huggingface_hub's).
        calibration: a ``Calibration`` or the path of a calibration JSON; by default
            ``prunelens_calibration.json`` beside a local folder's weights, or a hub id's file in
            the user's calibration store, else the paper's values (flagged).
        cache_size: how many encodings the runner keeps.
        text_tower: the CLIP checkpoint (hub id or folder) the model's vision tower came from, for
            CDPruner's question relevance (``texttower``); found like the model, refused unless its
            vision weights are the tower's.
    Returns:
        a runner named after the model as people know it: a local folder by its folder name
        (``prunelens-tiny-llava``, never the server's path), a hub id as given.
    Raises:
        ModelNotAvailableError: not a folder and not cached, and offline or the download failed;
            fails fast (no retries) and says how to make the model available.
        ValueError: an unsupported model (the message lists what is supported) or bad arguments.
    """
    from ..preflight import model_name

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a hub id or a folder path, got {model!r}")
    device, dtype = resolve_device_dtype(device, dtype)
    if text_tower is not None and (not isinstance(text_tower, (str, os.PathLike)) or not str(text_tower).strip()):
        raise ValueError(f"text_tower must be a hub id or a folder path, got {text_tower!r}")
    if calibration is not None and not isinstance(calibration, (Calibration, str, os.PathLike)):
        raise ValueError(f"calibration must be a Calibration or a JSON path, got {type(calibration).__name__}")
    folder = _locate(model, cache_dir)
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        supported = "; ".join(supported_models())
        raise ValueError(
            f"{model!r} ({folder}) holds no model config transformers can read without remote code "
            f"({type(err).__name__}: {err}). Supported models: {supported}"
        ) from None
    check_config(config, model)
    net, processor = load_pretrained(config, folder, dtype)
    net.to(device).eval()
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    hub_id = None if Path(model).exists() else model
    runner = Runner.from_model(
        net,
        processor,
        name=model_name(model),
        model_dir=folder,
        calibration=calibration,
        cache_size=cache_size,
        hub_id=hub_id,
    )
    if text_tower is not None:
        tower = getattr(runner.adapter, "vision_tower", None)
        where = _locate(str(text_tower), cache_dir)
        family = runner.adapter.family
        runner.text_tower = load_text_tower(text_tower, where, tower, model=runner.name, family=family, device=device)
    return runner
