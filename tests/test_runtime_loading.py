"""Loading models (local folders, the hub cache, offline failures) and calibration files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image
from transformers import LlamaConfig

from app import calibrate
from app.runtime import (
    CALIBRATION_FILE,
    GenerationOptions,
    ModelNotAvailableError,
    Runner,
    load_runner,
    read_calibration,
)
from app.runtime.synthetic import build_model, build_processor, build_tokenizer

PROMPT = "what is in this image ?"
OFFLINE_DEADLINE_S = 10.0


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return build_model(tokenizer), build_processor(tokenizer)


def save_tiny(tiny, folder):
    model, processor = tiny
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    return save_tiny(tiny, tmp_path_factory.mktemp("models") / "tiny-llava")


def image(seed: int) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(30, 40, 3) * 255).astype(np.uint8))


def test_local_folder_loads_and_generates_like_the_in_memory_model(tiny, tiny_folder):
    runner = load_runner(str(tiny_folder), device="cpu", dtype="auto")
    assert runner.dtype.is_floating_point and str(runner.device) == "cpu"
    reference = Runner.from_model(*tiny, name="tiny")
    img = image(0)
    got = runner.generate(runner.encode(img), PROMPT, None, GenerationOptions(max_new_tokens=6))
    expected = reference.generate(reference.encode(img), PROMPT, None, GenerationOptions(max_new_tokens=6))
    assert got.token_ids == expected.token_ids
    meta = runner.metadata
    assert meta["model"] == "tiny-llava" and meta["grid"] == (4, 4) and meta["feature_layer"] == -2
    assert meta["calibration_source"] == "default-llava-1.5"
    assert "app.calibrate" in meta["calibration"]["note"]


def test_llava15_is_recognised_from_its_config_not_its_name():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, MistralConfig

    from app.runtime.adapters.llava import is_llava15_config

    clip = CLIPVisionConfig(
        hidden_size=1024, num_attention_heads=16, num_hidden_layers=24, image_size=336, patch_size=14
    )
    llava15_7b = LlavaConfig(vision_config=clip, text_config=LlamaConfig(hidden_size=4096, num_hidden_layers=32))
    llava15_13b = LlavaConfig(vision_config=clip, text_config=LlamaConfig(hidden_size=5120, num_hidden_layers=40))
    bakllava = LlavaConfig(vision_config=clip, text_config=MistralConfig(hidden_size=4096, num_hidden_layers=32))
    other_layer = LlavaConfig(
        vision_config=clip, text_config=LlamaConfig(hidden_size=4096, num_hidden_layers=32), vision_feature_layer=-1
    )
    assert is_llava15_config(llava15_7b) and is_llava15_config(llava15_13b)
    assert not is_llava15_config(bakllava) and not is_llava15_config(other_layer)


def test_calibration_sources(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path / "home"))
    llava15 = save_tiny(tiny, tmp_path / "llava-1.5-tiny")
    assert load_runner(str(llava15)).calibration.source == "default-llava-1.5"  # a name proves nothing
    values = {"erank_avg": 9.5, "erank_p10": 7.0, "erank_p90": 12.0, "n_images": 4}
    (llava15 / CALIBRATION_FILE).write_text(json.dumps(values))
    calibration = load_runner(str(llava15)).calibration
    assert (calibration.erank_avg, calibration.erank_p10, calibration.erank_p90) == (9.5, 7.0, 12.0)
    assert calibration.source == "file" and calibration.n_images == 4
    (llava15 / CALIBRATION_FILE).write_text(json.dumps({**values, "erank_p10": 20.0}))
    with pytest.raises(ValueError, match="inconsistent"):
        load_runner(str(llava15))


def test_cached_hub_model_loads_offline(tiny_folder, monkeypatch, tmp_path):
    """A hub id found in the local cache loads with no network (HF cache layout built by hand)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--prunelens-tests--tiny-llava"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in tiny_folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    runner = load_runner("prunelens-tests/tiny-llava", cache_dir=tmp_path / "hub")
    assert runner.name == "prunelens-tests/tiny-llava" and runner.model_dir == snapshot
    assert (
        runner.generate(runner.encode(image(0)), PROMPT, None, GenerationOptions(max_new_tokens=2)).n_visual_tokens
        == 16
    )


def test_offline_missing_model_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        load_runner("prunelens-tests/no-such-model", cache_dir=tmp_path / "hub")
    assert time.perf_counter() - start < OFFLINE_DEADLINE_S
    message = str(info.value)
    assert "prunelens-tests/no-such-model" in message
    assert str(tmp_path / "hub") in message
    assert "huggingface-cli download prunelens-tests/no-such-model" in message
    assert "local folder" in message


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        load_runner("prunelens-tests/no-such-model", cache_dir=tmp_path / "hub")
    assert time.perf_counter() - start < OFFLINE_DEADLINE_S


def test_bad_model_arguments(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="not a folder"):
        load_runner(str(tmp_path / "missing" / "folder"))
    with pytest.raises(ValueError, match="valid hub id"):
        load_runner("not a valid id!")
    with pytest.raises(ValueError, match="dtype"):
        load_runner(str(tmp_path), dtype="float8")
    with pytest.raises(ValueError, match="device"):
        load_runner(str(tmp_path), device="tpu")


def test_folder_without_a_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)no model config.*Supported models: llava"):
        load_runner(str(tmp_path))


def test_unsupported_folder_is_refused_before_loading_weights(tmp_path):
    LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)model_type 'llama'.*not supported.*llava"):
        load_runner(str(tmp_path))  # no weights in the folder: refusal comes from the config alone


def test_calibrate_command_writes_a_file_the_runner_reads(tiny, tmp_path, capsys):
    folder = save_tiny(tiny, tmp_path / "model")
    images = tmp_path / "images" / "nested"
    images.mkdir(parents=True)
    for seed in range(5):
        image(seed).save(images / f"img{seed}.png")
    (images / "readme.txt").write_text("not an image, not picked up")
    (images / "broken.jpg").write_text("not an image, reported as skipped")
    assert calibrate.main([str(folder), str(tmp_path / "images")]) == 0
    out = folder / CALIBRATION_FILE
    data = json.loads(out.read_text())
    assert data["n_images"] == 5 and data["n_skipped"] == 1 and data["model"] == "model"
    runner = load_runner(str(folder))
    eranks = [runner.encode(image(seed)).image_erank for seed in range(5)]
    assert data["erank_avg"] == pytest.approx(float(np.mean(eranks)), rel=1e-6)
    assert data["erank_p10"] == pytest.approx(float(np.percentile(eranks, 10)), rel=1e-6)
    assert data["erank_p90"] == pytest.approx(float(np.percentile(eranks, 90)), rel=1e-6)
    assert runner.calibration.source == "file" and runner.metadata["calibration_source"] == "file"
    assert read_calibration(out).erank_avg == pytest.approx(data["erank_avg"])
    assert "image erank mean" in capsys.readouterr().out


def test_calibrate_to_an_explicit_file_and_load_it(tiny, tmp_path):
    folder = save_tiny(tiny, tmp_path / "model")
    for seed in range(3):
        image(seed).save(tmp_path / f"{seed}.jpg")
    target = tmp_path / "elsewhere" / "cal.json"
    assert calibrate.main([str(folder), str(tmp_path), "--out", str(target), "--limit", "3"]) == 0
    assert not (folder / CALIBRATION_FILE).exists()
    runner = load_runner(str(folder), calibration=target)
    assert runner.calibration.source == "file" and runner.calibration.n_images == 3


def test_calibration_needs_varied_images():
    with pytest.raises(ValueError, match="at least 2"):
        calibrate.summarize([50.0])
    with pytest.raises(ValueError, match="barely vary"):
        calibrate.summarize([50.0, 50.0, 50.0])
    result = calibrate.summarize([10.0, 20.0, 30.0, 40.0, 50.0])
    assert (result.erank_avg, result.erank_p10, result.erank_p90) == (30.0, 14.0, 46.0)


def test_calibrate_command_reports_errors_without_a_traceback(tiny_folder, tmp_path, capsys):
    assert calibrate.main([str(tiny_folder), str(tmp_path / "no-images")]) == 1
    assert "does not exist" in capsys.readouterr().err
    image(0).save(tmp_path / "only.png")
    assert calibrate.main([str(tiny_folder), str(tmp_path)]) == 1
    assert "at least 2" in capsys.readouterr().err


def test_a_hub_models_calibration_lives_in_the_users_store(tiny, tmp_path, monkeypatch):
    from app.runtime import stored_calibration_path

    monkeypatch.setenv("PRUNELENS_HOME", str(tmp_path / "home"))
    path = stored_calibration_path("some-org/some-llava")
    assert path.parent == tmp_path / "home" / "calibration" and "/" not in path.name
    assert calibrate.default_output("some-org/some-llava") == path
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"erank_avg": 9.5, "erank_p10": 7.0, "erank_p90": 12.0, "n_images": 4}))
    runner = Runner.from_model(*tiny, name="some-org/some-llava", hub_id="some-org/some-llava")
    assert runner.calibration.source == "file" and runner.calibration.erank_avg == 9.5
    assert Runner.from_model(*tiny, name="other").calibration.source == "default-llava-1.5"
