"""Starting the app: the torch-free model checks, one-line exit-2 errors, ``--dtype``, the model's name."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app import preflight
from app.launch import EMBEDDED_MODEL, parse_args, start_demo
from app.preflight import PreflightError, check_model, check_safetensors

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "model.safetensors"
START_DEADLINE_S = 10.0  # a bad --model must fail long before the model libraries would have loaded


@pytest.fixture(scope="module")
def embedded():
    if not EMBEDDED_MODEL.joinpath("config.json").is_file():
        pytest.skip(f"the embedded model is missing from {EMBEDDED_MODEL}")
    return EMBEDDED_MODEL


def copy_model(source: Path, folder: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


@pytest.fixture(scope="module")
def truncated(embedded, tmp_path_factory):
    """A copy of the embedded model whose weights file lost its second half."""
    folder = copy_model(embedded, tmp_path_factory.mktemp("models") / "truncated-llava")
    weights = folder / WEIGHTS
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    return folder


def write_safetensors(path: Path, tensors: dict[str, int], extra: bytes = b"") -> Path:
    """A float32 safetensors file by hand: {name: number of values}, data zero-filled."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, n in tensors.items():
        header[name] = {"dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset) + extra)
    return path


def run_app(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.run(
        [sys.executable, "app.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_DEADLINE_S,
    )


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunelens: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- preflight -------------------------------------------------------------------------------------


def test_embedded_model_passes_and_is_named_by_its_folder(embedded):
    assert check_model(str(embedded)) == "prunelens-tiny-llava"


def test_hub_ids_pass_without_network():
    assert check_model("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"


@pytest.mark.parametrize("model", ["/nonexistent/model", "./missing-model", "a/b/c", "no-owner"])
def test_missing_folder(model):
    with pytest.raises(PreflightError, match="does not exist") as info:
        check_model(model)
    assert repr(model) in str(info.value)


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        check_model(str(tmp_path / "weights.bin"))


def test_folder_without_config(tmp_path):
    with pytest.raises(PreflightError, match="has no config.json"):
        check_model(str(tmp_path))


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava",')
    with pytest.raises(PreflightError, match="config.json' is not valid JSON"):
        check_model(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(PreflightError, match=r"'bert' model \(architectures \['BertModel'\]\).*LlavaForCondition"):
        check_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlavaModel"], "model_type": "llava"}))
    with pytest.raises(PreflightError, match=r"architectures \['LlavaModel'\]"):
        check_model(str(tmp_path))


def test_truncated_weights(truncated):
    with pytest.raises(PreflightError, match=r"model.safetensors' is truncated or corrupt: \d+ bytes on disk"):
        check_model(str(truncated))


def test_folder_without_weights_or_with_a_missing_shard(embedded, tmp_path):
    shutil.copy(embedded / "config.json", tmp_path / "config.json")
    with pytest.raises(PreflightError, match="holds no weights"):
        check_model(str(tmp_path))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(PreflightError, match=r"lists shard\(s\) missing.*model-00001-of-00002.safetensors"):
        check_model(str(tmp_path))


def test_safetensors_size_and_header_checks(tmp_path):
    good = write_safetensors(tmp_path / "good.safetensors", {"a": 3, "b": 5})
    check_safetensors(good)
    with pytest.raises(PreflightError, match="its header describes"):
        check_safetensors(write_safetensors(tmp_path / "extra.safetensors", {"a": 3}, extra=b"\0"))
    (tmp_path / "short.safetensors").write_bytes(b"\1\0\0")
    with pytest.raises(PreflightError, match="shorter than the 8-byte header length"):
        check_safetensors(tmp_path / "short.safetensors")
    (tmp_path / "long-header.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(PreflightError, match="declares a 1000000-byte header but holds 10 bytes"):
        check_safetensors(tmp_path / "long-header.safetensors")
    (tmp_path / "garbled.safetensors").write_bytes(struct.pack("<Q", 4) + b"{no}")
    with pytest.raises(PreflightError, match="header is not valid JSON"):
        check_safetensors(tmp_path / "garbled.safetensors")
    gap = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    raw = json.dumps(gap).encode()
    (tmp_path / "gap.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(8))
    with pytest.raises(PreflightError, match=r"tensor 'a' has data_offsets \[4, 8\], expected to start at 0"):
        check_safetensors(tmp_path / "gap.safetensors")


def test_preflight_needs_no_heavy_imports():
    code = (
        "import sys; import app.launch, app.preflight; "
        "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'numpy', 'PIL') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_registered_adapter_is_in_the_preflight_list():
    from app.runtime.adapters import registered_adapters

    assert set(registered_adapters()) == set(preflight.SUPPORTED_ARCHITECTURES)
    for model_type, cls in registered_adapters().items():
        assert sys.modules[cls.__module__].ARCHITECTURE == preflight.SUPPORTED_ARCHITECTURES[model_type]


# -- the app's start-up errors -------------------------------------------------------------------


def test_app_with_a_missing_model_exits_2_with_one_line(tmp_path):
    result = run_app("--model", str(tmp_path / "no-such-model"))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "does not exist", str(tmp_path / "no-such-model"))


def test_app_with_truncated_weights_exits_2_with_one_line(truncated):
    result = run_app("--model", str(truncated))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "truncated or corrupt", WEIGHTS)


def test_load_errors_after_preflight_are_one_line_too(embedded, tmp_path, monkeypatch, capsys):
    """What only loading finds (here: a vision tower the adapter refuses; an uncached hub id offline)."""
    folder = copy_model(embedded, tmp_path / "siglip-llava")
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["model_type"] = "siglip_vision_model"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as info:
        start_demo(parse_args(["--model", str(folder), "--device", "cpu"]))
    assert info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "'siglip_vision_model' vision tower")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as info:
        start_demo(parse_args(["--model", "prunelens-tests/no-such-model", "--device", "cpu"]))
    assert info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, "'prunelens-tests/no-such-model' is not in the local")


# -- --dtype --------------------------------------------------------------------------------------


def test_dtype_option():
    assert parse_args([]).dtype == "auto"
    assert parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"


def test_bad_dtype_exits_2_naming_the_value_and_the_choices(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--dtype", "float8"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'float8'" in err and all(name in err for name in preflight.DTYPES)


def test_every_dtype_choice_is_one_load_runner_accepts():
    from app.runtime import resolve_device_dtype as _resolve_device_dtype

    for name in preflight.DTYPES:
        _resolve_device_dtype("cpu", name)


# -- the model's name -----------------------------------------------------------------------------


def test_a_local_folder_is_named_by_its_folder_not_its_path(embedded):
    from app.runtime import load_runner

    runner = load_runner(str(embedded), device="cpu")
    assert runner.name == "prunelens-tiny-llava" and runner.metadata["model"] == "prunelens-tiny-llava"
    assert runner.model_dir == embedded
    encoding = runner.encode(Image.new("RGB", (40, 30), "white"))
    with pytest.raises(ValueError, match="prompt is too long") as info:  # an error the page shows
        runner.generate(encoding, "word " * runner.adapter.context_length)
    assert "'prunelens-tiny-llava'" in str(info.value) and str(embedded.parent) not in str(info.value)
