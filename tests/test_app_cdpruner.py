"""CDPruner in the app: refused per column without a text tower, placeheld until an answer with one,
then drawn from the tokens it kept for that question, and stale again on another request.

On a tiny random LLaVA with and without a tiny CLIP whose vision half is its tower (``synthetic.build_clip``).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.choices import QUESTION_NOTE, QUESTION_PENDING
from app.compare import ComparePipeline
from app.handlers import Handlers
from app.runtime import GenerationOptions, Runner
from app.runtime.synthetic import build_clip, build_model, build_processor, build_tokenizer
from app.runtime.texttower import load_text_tower
from app.ui import build_demo
from scoring import COCO_VOCABULARY

PROMPT = "what colour is the car ?"
OTHER = "where is the dog in this picture ?"
MAX_NEW = 5


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    tokenizer = build_tokenizer()
    model, processor = build_model(tokenizer), build_processor(tokenizer)
    clip, clip_tokenizer = build_clip(model)
    folder = tmp_path_factory.mktemp("clip")
    clip.save_pretrained(folder)
    clip_tokenizer.save_pretrained(folder)
    plain = Runner.from_model(model, processor, name="tiny")
    tower = load_text_tower(
        "tiny-clip", folder, plain.adapter.vision_tower, model="tiny", family="llava", device=plain.device
    )
    return plain, Runner.from_model(model, processor, name="tiny", text_tower=tower)


def handlers_for(runner: Runner) -> Handlers:
    return Handlers(ComparePipeline(runner, vocabulary=COCO_VOCABULARY, max_new_tokens=MAX_NEW))


def defaults(h: Handlers) -> list:
    return [slot.default for slot in h.slots]


def test_without_a_text_tower_only_its_column_is_refused(runners):
    h = handlers_for(runners[0])
    pipeline = h.pipeline
    key = pipeline.load(picture(0))["key"]
    v = pipeline.view(key, ["attention", "cdpruner"], 4)["cdpruner"]
    assert v["overlay"] is None and v["pending"] is None and "--text-tower" in v["refused"]
    out = pipeline.answer(key, PROMPT, ["attention", "cdpruner"], 4)
    assert "loaded without a text tower" in out["cdpruner"]["refused"] and out["attention"]["text"]
    cards, *_ = h.view(key, ["attention", "cdpruner"], 4, defaults(h), None)
    assert cards[1]["stats"].startswith("**Cannot run here:**") and "text tower" in cards[1]["stats"]


def test_it_waits_for_the_question_then_draws_what_it_kept(runners):
    runner = runners[1]
    h = handlers_for(runner)
    pipeline = h.pipeline
    assert (
        pipeline.info()["text_tower"] == "tiny-clip" and handlers_for(runners[0]).pipeline.info()["text_tower"] is None
    )
    described = pipeline.info()["method_info"]["cdpruner"]
    assert described["note"] == QUESTION_NOTE and not described["replayable"]
    blocks = build_demo(pipeline).blocks.values()
    labels = {
        b.elem_id: b.label for b in blocks if getattr(b, "elem_id", None) in ("overlay-cdpruner", "overlay-fastv")
    }
    assert labels == {
        "overlay-cdpruner": "cdpruner overlay · per question",
        "overlay-fastv": "fastv overlay · in-LLM, per question",
    }
    image = picture(1)
    key = pipeline.load(image)["key"]
    v = pipeline.view(key, ["cdpruner"], 4)["cdpruner"]
    assert v["overlay"] is None and v["pending"] == QUESTION_PENDING and v["layer"] == 0
    cards, *_ = h.view(key, ["attention", "cdpruner"], 4, defaults(h), None)
    assert "Chosen from the question before the LLM" in cards[1]["stats"] and "(layer" not in cards[1]["stats"]

    out = pipeline.answer(key, PROMPT, ["attention", "cdpruner"], 4)
    encoding = runner.encode(image)
    explicit = runner.select(encoding, "cdpruner", 4, prompt=PROMPT)
    alone = runner.generate(encoding, PROMPT, explicit, GenerationOptions(MAX_NEW))
    assert out["cdpruner"]["text"] == alone.text and out["cdpruner"]["layer"] == 0
    assert out["cdpruner"]["selection"]["keep"] == explicit.keep.tolist()
    drawn = pipeline.view(key, ["cdpruner"], 4)["cdpruner"]
    assert isinstance(drawn["overlay"], Image.Image) and drawn["keep"] == explicit.keep.tolist()
    assert drawn["prompt"] == PROMPT and drawn["n_visual_tokens"] == 4
    assert pipeline.view(key, ["cdpruner"], 5)["cdpruner"]["pending"]  # another budget
    pipeline.answer(key, OTHER, ["cdpruner"], 4)
    assert (
        pipeline.view(key, ["cdpruner"], 4)["cdpruner"]["keep"]
        == runner.select(encoding, "cdpruner", 4, prompt=OTHER).keep.tolist()
    )

    key = h.load(image, "page")[0]
    _full, cards, _summary, _rec = h.answer(key, PROMPT, ["attention", "cdpruner"], 4, defaults(h), "", session="page")
    assert isinstance(cards[1]["overlay"], Image.Image) and "kept before the LLM for this question" in cards[1]["stats"]
    assert "pruned inside the LLM" not in cards[1]["speed"]


def test_sweeps_and_the_step_through_leave_it_out(runners):
    h = handlers_for(runners[1])
    key = h.pipeline.load(picture(2))["key"]
    assert set(h.pipeline.sweep(key, ["attention", "cdpruner"], points=3)) == {"attention"}
    with pytest.raises(ValueError, match="cdpruner selects, from the question: it has no pre-LLM walk"):
        h.pipeline.step_through(key, "cdpruner", 4, 1)
