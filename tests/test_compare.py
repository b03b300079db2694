"""The comparison pipeline on a tiny random LLaVA: fast path, slow path, API payload, bad input."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

import pruning
from app.choices import IN_LLM_PENDING, QUESTION_PENDING
from app.compare import ComparePipeline, Example, budget_presets
from app.runtime import GenerationOptions, Runner
from app.runtime.synthetic import build_model, build_processor, build_tokenizer
from scoring import COCO_VOCABULARY, normalize_words, word_overlap


@pytest.fixture(scope="module")
def pipeline():
    tokenizer = build_tokenizer()
    runner = Runner.from_model(build_model(tokenizer), build_processor(tokenizer), name="tiny")
    rng = np.random.default_rng(0)
    example = Example("noise", Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)), truth=("cat",))
    return ComparePipeline(runner, vocabulary=COCO_VOCABULARY, examples=[example], max_new_tokens=6)


def image(seed=1, size=(70, 50)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_budget_presets_scale_with_token_count():
    assert budget_presets(576) == [192, 128, 64, 32]
    assert budget_presets(16) == [5, 4, 2, 1]


def test_info_lists_every_method_with_calibrated_defaults(pipeline):
    info = pipeline.info()
    assert info["methods"] == pruning.list_methods("all")  # pre-LLM and in-LLM methods alike
    assert info["default_methods"] == ["attention", "diversity", "adaptive"]
    assert info["params"]["adaptive"]["erank_avg"] == pipeline.runner.calibration.erank_avg
    assert info["n_tokens"] == 16 and info["default_budget"] == 2  # the third preset: 64 of 576, scaled
    assert "generator" not in info["params"]["random"]  # no widget holds one
    described = info["method_info"]
    replayable = [m for m in info["methods"] if described[m]["replayable"]]
    assert replayable == ["attention", "diversity", "adaptive"]  # cdpruner's walk waits for a question
    assert described["cdpruner"]["pending"] == QUESTION_PENDING and described["fastv"]["pending"] == IN_LLM_PENDING
    assert info["default_replay"] == "adaptive" and described["adaptive"]["tau_schedule"] == "tau_max"
    assert [m for m in info["methods"] if described[m]["merges"]] == ["visionzip", "downsample", "prumerge+"]
    assert described["vispruner"]["ranges"]["r"] == {
        "kind": "number", "wants": "a number in [0, 1]", "lo": 0.0, "hi": 1.0, "step": 0.05, "choices": None
    }  # fmt: skip
    json.dumps(info)  # plain values only


def test_load_then_view_is_the_fast_path(pipeline):
    summary = pipeline.load(image())
    assert summary["n_tokens"] == 16 and summary["truth"] is None
    views = pipeline.view(summary["key"], ["attention", "diversity", "visionzip"], 5)
    assert set(views) == {"attention", "diversity", "visionzip"}
    for v in views.values():
        assert v["n_visual_tokens"] == 5
        assert isinstance(v["overlay"], Image.Image) and v["overlay"].size == (336, 336)
        assert 0 <= v["retained_attention"] <= 1
        assert v["kept_erank"] >= 1
    assert views["attention"]["keep"] != views["diversity"]["keep"] or True
    again = pipeline.view(summary["key"], ["attention"], 6)
    assert again["attention"]["n_visual_tokens"] == 6


def test_example_images_carry_their_truth(pipeline):
    summary = pipeline.load(pipeline.examples[0].image)
    assert summary["truth"] == ["cat"] and summary["example"] == "noise"


def test_answer_batches_every_method_and_marks_mentions(pipeline):
    key = pipeline.load(image(2))["key"]
    out = pipeline.answer(key, "describe this image", ["attention", "adaptive"], 4, truth_text="cat, dog")
    assert set(out) == {"full", "attention", "adaptive"}
    assert out["full"]["n_visual_tokens"] == 16 and out["attention"]["n_visual_tokens"] == 4
    for row in out.values():
        assert "".join(text for text, _ in row["segments"]) == row["text"]
        assert row["basis"] == "ground truth"
        assert row["prefill_ms"] > 0
    single = pipeline.runner.generate(
        pipeline.runner.encode(image(2)),
        "describe this image",
        pipeline.runner.select(pipeline.runner.encode(image(2)), "attention", 4),
        GenerationOptions(max_new_tokens=6),
    )
    assert out["attention"]["text"] == single.text
    # every answer says whether it is the full model's, and how many words it shares with it
    assert out["full"]["same_as_full"] and out["full"]["overlap_with_full"] == 1.0
    for name in ("attention", "adaptive"):
        row = out[name]
        assert row["same_as_full"] == (normalize_words(row["text"]) == normalize_words(out["full"]["text"]))
        assert row["overlap_with_full"] == word_overlap(row["text"], out["full"]["text"])


def test_step_through_adaptive(pipeline):
    key = pipeline.load(image(3))["key"]
    first = pipeline.step_through(key, "adaptive", 6, 1, {"adaptive": {"tau_max": 0.9, "step": 1.0}})
    assert first["picked"] == [first["pick"]] and first["tau"] is not None
    last = pipeline.step_through(key, "adaptive", 6, first["n_steps"], {"adaptive": {"tau_max": 0.9, "step": 1.0}})
    assert len(last["picked"]) == 6
    with pytest.raises(ValueError, match="step must be an integer from 1 to 6"):
        pipeline.step_through(key, "adaptive", 6, 7)


def test_sweep_is_monotone_in_retained_attention(pipeline):
    key = pipeline.load(image(4))["key"]
    sweep = pipeline.sweep(key, ["attention", "random"])
    budgets = sweep["attention"]["budget"]
    assert budgets[0] == 8 and budgets[-1] == 16
    retained = sweep["attention"]["retained_attention"]
    assert all(a <= b + 1e-6 for a, b in itertools.pairwise(retained))
    assert retained[-1] == pytest.approx(1.0)


def test_compare_payload_is_json(pipeline):
    payload = pipeline.compare(image(5), "what is in the image", ["attention", "diversity"], 4)
    text = json.dumps(payload)
    assert "attention" in text and payload["full"]["n_visual_tokens"] == 16
    assert payload["methods"]["diversity"]["answer"]["n_visual_tokens"] == 4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, k: p.view(k, ["nope"], 4), "unknown pruning method 'nope'"),
        (lambda p, k: p.view(k, ["attention"], 0), "budget must be a whole number from 1 to 16, got 0"),
        (lambda p, k: p.view(k, ["attention"], 17), "budget must be a whole number from 1 to 16, got 17"),
        (lambda p, k: p.view(k, ["attention"], 4.0), "budget must be a whole number from 1 to 16, got 4.0"),
        (lambda p, k: p.view(k, [], 4), "pick at least one pruning method"),
        (lambda p, k: p.view(k, ["attention", "attention"], 4), "each method may be chosen once"),
        (lambda p, k: p.view(k, "attention", 4), "methods must be a list"),
        (lambda p, k: p.view(k, ["adaptive"], 4, {"adaptive": {"tau": 1}}), "no parameter"),
        (lambda p, k: p.view(k, ["adaptive"], 4, {"adaptive": {"tau_max": -1}}), "tau_max must be a positive"),
        (lambda p, k: p.answer(k, "   ", ["attention"], 4), "prompt is empty"),
        (lambda p, k: p.answer(k, "hi", ["attention"], 4, truth_text="cat, unicorn"), "unknown object name"),
        (lambda p, k: p.view("missing", ["attention"], 4), "no longer in memory"),
    ],
)
def test_bad_requests(pipeline, call, message):
    key = pipeline.load(image(6))["key"]
    with pytest.raises(ValueError, match=message):
        call(pipeline, key)


def test_compare_checks_the_request_before_encoding(pipeline):
    encodes = []
    real = pipeline.runner.encode
    pipeline.runner.encode = lambda *a, **k: encodes.append(1) or real(*a, **k)
    try:
        for call, message in [
            (lambda: pipeline.compare(image(9), "", ["attention"], 4), "prompt is empty"),
            (lambda: pipeline.compare(image(9), "hi", ["nope"], 4), "unknown pruning method 'nope'"),
            (lambda: pipeline.compare(image(9), "hi", ["attention"], 99), "from 1 to 16, got 99"),
            (lambda: pipeline.compare(image(9), "hi", ["attention"], 4, truth_text="unicorn"), "unknown object"),
        ]:
            with pytest.raises(ValueError, match=message):
                call()
    finally:
        pipeline.runner.encode = real
    assert encodes == []


def test_bad_images(pipeline):
    with pytest.raises(ValueError):
        pipeline.load(b"not an image")
    with pytest.raises(ValueError):
        pipeline.load(None)
