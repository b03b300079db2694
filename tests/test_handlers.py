"""Page handlers on a real (tiny, random) model: plain values in, plain values and figures out."""

import json

import numpy as np
import pytest
from PIL import Image

from app.compare import ComparePipeline
from app.handlers import Handlers
from app.objects import COCO_VOCABULARY
from app.runtime import Runner
from app.runtime.synthetic import build_model, build_processor, build_tokenizer


@pytest.fixture(scope="module")
def handlers():
    tokenizer = build_tokenizer()
    runner = Runner.from_model(build_model(tokenizer), build_processor(tokenizer), name="tiny")
    return Handlers(ComparePipeline(runner, vocabulary=COCO_VOCABULARY, max_new_tokens=5))


def picture(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def defaults(h):
    return [slot.default for slot in h.slots]


def test_parameter_slots_cover_every_numeric_parameter(handlers):
    labels = {slot.label for slot in handlers.slots}
    assert {"adaptive · tau_max", "adaptive · erank_avg", "vispruner · r", "hybrid-erank · inverse"} <= labels
    assert handlers.params(defaults(handlers)) == {}
    values = defaults(handlers)
    values[[s.label for s in handlers.slots].index("adaptive · tau_max")] = 0.5
    assert handlers.params(values) == {"adaptive": {"tau_max": 0.5}}


def test_load_view_answer_round_trip(handlers):
    key, md, fig, heat = handlers.load(picture())
    assert key and "Image complexity" in md and fig is not None and heat is not None
    cards, _bars, taus, record = handlers.view(key, ["attention", "adaptive"], 4, defaults(handlers), "order")
    assert [c["method"] for c in cards] == ["attention", "adaptive"]
    assert "**4** tokens" in cards[0]["stats"]
    assert taus is not None and len(taus.data[0].y) == 4
    assert record["budget"] == 4 and set(record["selection"]) == {"attention", "adaptive"}
    full, method_cards, summary, answers = handlers.answer(
        key, "describe this image", ["attention", "adaptive"], 4, defaults(handlers), "cat"
    )
    assert len(method_cards) == 2 and "one batch" in summary
    assert "".join(t for t, _ in full["segments"]) == full["text"]
    path = handlers.export_json({**record, **answers})
    data = json.loads(open(path).read())
    assert data["model"] == "tiny" and data["answers"]["full"]["n_visual_tokens"] == 16


def test_sweep_and_step(handlers):
    key = handlers.load(picture(1))[0]
    fig = handlers.sweep(key, ["attention", "diversity"], defaults(handlers))
    assert len(fig.data) == 4
    image, md = handlers.step(key, "adaptive", 5, 2, defaults(handlers))
    assert isinstance(image, Image.Image) and "Pick **2** of 5" in md


def test_export_png_tiles_overlays(handlers):
    key = handlers.load(picture(2))[0]
    cards = handlers.view(key, ["attention", "uniform"], 3, defaults(handlers), None)[0]
    path = handlers.export_png([(c["method"], c["overlay"]) for c in cards] + [("unused", None)])
    sheet = Image.open(path)
    assert sheet.size == (2 * 336, 336 + 28)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h, k: h.load(None), "no image"),
        (lambda h, k: h.view("", ["attention"], 4, defaults(h), None), "load an image first"),
        (lambda h, k: h.view(k, [], 4, defaults(h), None), "at least one"),
        (lambda h, k: h.view(k, ["magic"], 4, defaults(h), None), "unknown method"),
        (lambda h, k: h.view(k, ["attention"], 2.5, defaults(h), None), "whole number from 1 to 16"),
        (lambda h, k: h.view(k, ["attention"], 99, defaults(h), None), "whole number from 1 to 16"),
        (lambda h, k: h.view(k, ["attention"], "many", defaults(h), None), "budget must be a number"),
        (lambda h, k: h.view(k, ["attention"], 4, defaults(h)[:-1], None), "parameter values"),
        (lambda h, k: h.view(k, ["attention"], 4, [None] * len(h.slots), None), "is empty"),
        (lambda h, k: h.answer(k, "", ["attention"], 4, defaults(h), ""), "prompt is empty"),
        (lambda h, k: h.answer(k, "x" * 3000, ["attention"], 4, defaults(h), ""), "limit is 2000"),
        (lambda h, k: h.export_json({}), "nothing to export"),
        (lambda h, k: h.export_png([]), "nothing to export"),
    ],
)
def test_bad_input_is_a_readable_value_error(handlers, call, message):
    key = handlers.load(picture(3))[0]
    with pytest.raises(ValueError, match=message):
        call(handlers, key)


def test_bad_images_are_refused(handlers, tmp_path):
    with pytest.raises(ValueError):
        handlers.load(b"GIF89a not really")
    huge = Image.new("L", (1, 1))
    assert handlers.load(huge)[0]  # a 1x1 grey image still works
