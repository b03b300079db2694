"""Page handlers on a real (tiny, random) model: plain values in, plain values and figures out."""

import json

import numpy as np
import pytest
from PIL import Image

from app.compare import ComparePipeline
from app.handlers import Handlers
from app.runtime import Runner
from app.runtime.synthetic import build_model, build_processor, build_tokenizer
from scoring import COCO_VOCABULARY


@pytest.fixture(scope="module")
def handlers():
    tokenizer = build_tokenizer()
    runner = Runner.from_model(build_model(tokenizer), build_processor(tokenizer), name="tiny")
    return Handlers(ComparePipeline(runner, vocabulary=COCO_VOCABULARY, max_new_tokens=5))


def picture(seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def defaults(h):
    return [slot.default for slot in h.slots]


def test_widget_values_become_plain_values(handlers):
    assert handlers.budget(4.0) == 4 and handlers.budget("4") == 4 and handlers.budget(2.5) == 2.5
    assert (
        handlers.methods("attention, adaptive")
        == ["attention", "adaptive"]
        == handlers.methods(("attention", "adaptive"))
    )
    values = defaults(handlers)
    labels = [s.label for s in handlers.slots]
    values[labels.index("random · seed")] = 3.0
    values[labels.index("hybrid-erank · inverse")] = "true"
    values[labels.index("adaptive · tau_max")] = "0.5"
    assert handlers.params(values) == {
        "random": {"seed": 3},
        "hybrid-erank": {"inverse": True},
        "adaptive": {"tau_max": 0.5},
    }
    values[labels.index("adaptive · tau_max")] = True
    with pytest.raises(ValueError, match="adaptive · tau_max must be a number, got True"):
        handlers.params(values)


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
    # the tiny model has no calibration file: the page says so in words, and how to calibrate it
    assert "Uncalibrated: LLaVA-1.5-7B's erank statistics stand in" in md
    assert "`python -m app.calibrate MODEL IMAGE_FOLDER`" in md
    cards, _bars, taus, record = handlers.view(key, ["attention", "adaptive"], 4, defaults(handlers), "order")
    assert [c["method"] for c in cards] == ["attention", "adaptive"]
    assert "**4** tokens" in cards[0]["stats"]
    assert taus is not None and len(taus.data[0].y) == 4
    assert record["budget"] == 4 and set(record["selection"]) == {"attention", "adaptive"}
    full, method_cards, summary, answers = handlers.answer(
        key, "describe this image", ["attention", "adaptive"], 4, defaults(handlers), "cat"
    )
    assert len(method_cards) == 2 and "3 answers generated together" in summary
    assert "".join(t for t, _ in full["segments"]) == full["text"]
    for card, name in zip(method_cards, ["attention", "adaptive"], strict=True):  # agreement with full, in words
        row = answers["answers"][name]
        said = (
            "same answer as full" if row["same_as_full"] else f"{row['overlap_with_full']:.0%} word overlap with full"
        )
        assert said in card["speed"]
    assert "with full" not in full["speed"] and "same answer" not in full["speed"]
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
        (lambda h, k: h.view(k, ["magic"], 4, defaults(h), None), "unknown pruning method 'magic'"),
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


@pytest.fixture
def registered_walk():
    """A method registered by a test, with capabilities, removed again afterwards."""
    import pruning.registry as registry
    from pruning.methods.attention import attention_order, selection_from_order

    @registry.register(
        "test-walk",
        checks={"share": registry.unit_interval, "cap": registry.positive},
        replayable=True,
        tau_schedule="cap",
    )
    def select_test_walk(inputs, budget, *, share=0.5, cap=0.3, loud=False):
        """Test walk: attention order, a flat τ schedule."""
        order = attention_order(inputs.cls_attn)[:budget]
        return selection_from_order("test-walk", inputs, order, {"taus": [cap] * budget})

    yield "test-walk"
    registry._REGISTRY.pop("test-walk")


def test_a_newly_registered_method_reaches_the_page_unedited(handlers, registered_walk):
    from app.ui import build_demo

    pipeline = ComparePipeline(handlers.pipeline.runner, vocabulary=COCO_VOCABULARY, max_new_tokens=5)
    h = Handlers(pipeline)
    described = h.info["method_info"]["test-walk"]
    assert described["replayable"] and described["tau_schedule"] == "cap" and not described["merges"]
    slots = {s.label: s for s in h.slots if s.method == "test-walk"}
    assert set(slots) == {"test-walk · share", "test-walk · cap", "test-walk · loud"}
    share = slots["test-walk · share"]
    assert (share.kind, share.lo, share.hi, share.step, share.wants) == ("number", 0.0, 1.0, 0.05, "a number in [0, 1]")
    assert slots["test-walk · loud"].kind == "bool" and slots["test-walk · cap"].default == 0.3

    key = h.load(picture(4))[0]
    values = defaults(h)
    values[[s.label for s in h.slots].index("test-walk · cap")] = 0.2
    cards, _bars, taus, _record = h.view(key, ["attention", "test-walk"], 4, values, None)
    assert [c["method"] for c in cards] == ["attention", "test-walk"]
    assert taus.data[0].name == "test-walk" and list(taus.data[0].y) == [0.2] * 4
    assert "Pick **2** of 4" in h.step(key, "test-walk", 4, 2, values)[1]
    values[[s.label for s in h.slots].index("test-walk · share")] = 1.5
    with pytest.raises(ValueError, match=r"share must be a number in \[0, 1\], got 1.5"):
        h.view(key, ["test-walk"], 4, values, None)

    demo = build_demo(pipeline)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"col-test-walk", "overlay-test-walk", "answer-test-walk"} <= ids
    radios = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Method"]
    assert ["test-walk", "test-walk"] in [list(c) for c in radios[0].choices]


def test_the_page_code_names_no_model_library_and_no_method():
    """app.handlers and app.ui import neither torch nor pruning, and name no method: the registry,
    through pipeline.info(), says what there is (app.choices holds the app's default methods)."""
    import ast
    from pathlib import Path

    import pruning

    root = Path(__file__).resolve().parents[1] / "app"
    for path in [root / "handlers.py", *sorted((root / "ui").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"torch", "pruning", "transformers"}, path
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        strings -= {"attention"}  # also a colouring mode ("colour kept patches by attention")
        assert not strings & set(pruning.list_methods()), (path, strings & set(pruning.list_methods()))


def test_an_upload_note_is_said_of_uploads_not_of_gallery_examples():
    from app.compare import Example

    tokenizer = build_tokenizer()
    runner = Runner.from_model(build_model(tokenizer), build_processor(tokenizer), name="tiny")
    scene = picture(40)
    pipeline = ComparePipeline(
        runner,
        vocabulary=COCO_VOCABULARY,
        examples=[Example("scene", scene, truth=("cat",))],
        upload_note="this model knows only scenes",
    )
    h = Handlers(pipeline)
    assert "**Note:** this model knows only scenes" in h.load(picture(41), "s")[1]
    assert "Note:" not in h.load(scene, "s")[1]


def test_the_embedded_page_offers_scenes_only():
    from app.launch import EMBEDDED_UPLOAD_NOTE, gallery

    embedded, real = [ex.name for ex in gallery(True)], [ex.name for ex in gallery(False)]
    assert embedded and not any(name.startswith("photo") for name in embedded)
    assert set(embedded) < set(real) and any(name.startswith("photo") for name in real)
    assert "mean nothing" in EMBEDDED_UPLOAD_NOTE
