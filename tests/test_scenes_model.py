"""The embedded tiny LLaVA in ``assets/``: offline loading and its quality on held-out scenes.

Skipped if the weights are missing from ``assets/models/prunelens-tiny-llava``. The quality test runs
full 576 tokens, greedy decoding, held-out seeds balanced across complexity, on a fixed sample of
100 scenes so that it fits in CI time; where the shipped model meets the model card's thresholds they are
asserted, elsewhere a floor just under its measured value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from app.runtime import CALIBRATION_FILE, load_runner
from benchmarks.agreement import agreement
from scenes.data import pixel_tensor
from scenes.evaluate import MAX_NEW_TOKENS, eval_samples, eval_scenes, evaluate, greedy_answers, summarize

MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "models" / "prunelens-tiny-llava"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "model.safetensors").exists(), reason=f"no trained weights in {MODEL_DIR}"
)


@pytest.fixture(scope="module")
def loaded():
    processor = AutoProcessor.from_pretrained(MODEL_DIR, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR, local_files_only=True).eval()
    return processor, model


@pytest.fixture(scope="module")
def runner():
    return load_runner(str(MODEL_DIR), device="cpu", dtype="float32")


def test_weights_are_small_and_llava_shaped(loaded):
    _, model = loaded
    assert (MODEL_DIR / "model.safetensors").stat().st_size <= 40 * 2**20
    assert (MODEL_DIR / "tokenizer.json").exists()
    assert model.config.vision_config.image_size == 336 and model.config.vision_config.patch_size == 14
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"


def test_processor_round_trip_matches_training_inputs(loaded):
    processor, _ = loaded
    scene = eval_scenes(3)[2]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<s>USER: <image>\nDescribe the image. ASSISTANT:"
    batch = processor(images=scene.image, text=text, return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 576
    assert int((batch["input_ids"] == processor.tokenizer.bos_token_id).sum()) == 1
    torch.testing.assert_close(batch["pixel_values"], pixel_tensor([scene]), atol=1e-5, rtol=0)
    words = "Two yellow squares, a green heart and a blue moon."
    ids = processor.tokenizer(words, add_special_tokens=False)["input_ids"]
    assert processor.tokenizer.unk_token_id not in ids
    assert processor.tokenizer.decode(ids) == words


def test_standard_generate_path_gives_the_training_format_answers(loaded, runner):
    """``processor`` + ``model.generate`` (what any user does) == the evaluator's decoding through the runtime."""
    processor, model = loaded
    scene = eval_scenes(6)[5]
    prompts = [s.prompt for s in eval_samples(scene)][:3]
    expected = greedy_answers(runner, runner.encode(scene.image), prompts)
    for prompt, want in zip(prompts, expected, strict=True):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        batch = processor(images=scene.image, text=text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        got = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        assert got == want, (prompt, got, want)


def test_runner_uses_the_shipped_calibration(runner):
    cal = runner.calibration
    assert cal.source == "file" and Path(cal.path) == MODEL_DIR / CALIBRATION_FILE
    assert cal.n_images is not None and cal.n_images >= 500
    assert 1.0 < cal.erank_p10 < cal.erank_avg < cal.erank_p90 < 576


def test_full_token_quality_on_100_held_out_scenes(runner):
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        scenes = eval_scenes(100)
        m = summarize(evaluate(runner, scenes), scenes)
    finally:
        torch.set_num_threads(threads)
    # The model card's targets where the shipped model meets them with room on this sample, floors
    # under its measured value elsewhere (greedy answers can flip on another CPU's arithmetic). On
    # this sample it measures existence 0.988 (positives 0.977), random / popular / adversarial /
    # wrong-colour negatives 1.000 each, recall 0.905, CHAIR_i 0.055, CHAIR_s 0.100, colour 0.965,
    # counting (at most 6 objects) 0.716, word 1.000.
    assert m["existence_acc"] >= 0.95, m
    for kind in ("random", "popular", "adversarial", "attribute"):
        assert m[f"existence_{kind}_acc"] >= 0.90, m
    assert m["caption_recall"] >= 0.88, m  # target 0.90 (0.916 on 500 scenes)
    assert m["chair_i"] <= 0.07, m  # target 0.05 (0.044 on 500 scenes)
    assert m["chair_s"] <= 0.15, m
    assert m["color_acc"] >= 0.90, m
    assert m["count_acc_le6"] >= 0.68, m  # target 0.75 (0.781 on 500 scenes)
    assert m["word_exact"] >= 0.80, m


def test_agreement_benchmark_measures_overlap():
    same = agreement(MODEL_DIR, "attention", "attention", [32], ["simple"], 2)
    assert same == {("simple", 32): 1.0}
    other = agreement(MODEL_DIR, "attention", "diversity", [32], ["complex"], 2)
    assert 0.0 <= other[("complex", 32)] < 1.0  # the two rules keep different tokens on crowded scenes
    with pytest.raises(ValueError, match="unknown levels"):
        agreement(MODEL_DIR, "attention", "adaptive", [32], ["busy"], 1)
    with pytest.raises(ValueError, match="at least 1"):
        agreement(MODEL_DIR, "attention", "adaptive", [32], ["simple"], 0)
