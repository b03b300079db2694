"""The in-LLM methods (FastV, DART at layer K) in the app: offered, placeheld, answered, drawn, gone stale.

On tiny random models: a 4-layer LLaVA (the methods' default layer 2 is one of its layers) and a
Qwen2.5-VL, whose M-RoPE positions the in-LLM loop refuses.
"""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

import pruning
from app.choices import IN_LLM_NOTE, IN_LLM_PENDING, check_methods, pending_line
from app.compare import ComparePipeline
from app.handlers import Handlers
from app.replay import replay_frame
from app.runtime import GenerationOptions, Runner
from app.runtime.synthetic import build_model, build_processor, build_tokenizer, tiny_family
from app.ui import build_demo
from app.ui.columns import build_columns
from scoring import COCO_VOCABULARY

PROMPT = "what is in this image ?"
MAX_NEW = 5
IN_LLM = pruning.list_methods("in-llm")


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def runner() -> Runner:
    tokenizer = build_tokenizer()
    return Runner.from_model(build_model(tokenizer, text_layers=4), build_processor(tokenizer), name="tiny-llava-4")


@pytest.fixture
def pipeline(runner) -> ComparePipeline:
    return ComparePipeline(runner, vocabulary=COCO_VOCABULARY, max_new_tokens=MAX_NEW)


@pytest.fixture
def handlers(pipeline) -> Handlers:
    return Handlers(pipeline)


def defaults(h: Handlers, **changed) -> list:
    """The parameter boxes' defaults, with ``{"fastv · layer": 1}``-style changes (by label)."""
    values = [slot.default for slot in h.slots]
    labels = [slot.label for slot in h.slots]
    for label, value in changed.items():
        values[labels.index(label)] = value
    return values


def test_the_in_llm_methods_are_offered_and_described(pipeline, handlers):
    info = pipeline.info()
    assert IN_LLM == ["dart-llm", "fastv"] and set(IN_LLM) <= set(info["methods"])
    assert check_methods(["attention", "fastv"]) == ["attention", "fastv"]
    for method in IN_LLM:
        described = info["method_info"][method]
        assert described["stage"] == "in-llm" and described["note"] == IN_LLM_NOTE
        assert described["pending"] == IN_LLM_PENDING and not described["replayable"]  # fastv's registry says True
        assert info["params"][method]["layer"] == 2
    assert info["method_info"]["attention"]["note"] is None and info["default_replay"] == "adaptive"
    assert {"fastv · layer", "dart-llm · layer", "dart-llm · pivots"} <= {s.label for s in handlers.slots}
    json.dumps(info)

    demo = build_demo(pipeline)
    boxes = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "methods"]
    choices = [tuple(c) for c in boxes[0].choices]
    assert ("fastv (in-LLM)", "fastv") in choices and ("cdpruner (per question)", "cdpruner") in choices
    assert "In-LLM (dart-llm, fastv): each prunes inside the LLM at layer K" in boxes[0].info
    assert "Per question (cdpruner): each selects before the LLM by the question's CLIP text embedding" in boxes[0].info
    radios = [b for b in demo.blocks.values() if getattr(b, "label", None) == "Method"]
    assert "fastv" not in [value for _, value in radios[0].choices]  # no pre-LLM walk to step through


def test_before_an_answer_the_column_is_a_placeholder_and_nothing_is_selected(pipeline, handlers, monkeypatch):
    key = pipeline.load(picture(0))["key"]
    asked = []
    select = pipeline.runner.select
    monkeypatch.setattr(pipeline.runner, "select", lambda enc, m, *a, **kw: asked.append(m) or select(enc, m, *a, **kw))
    views = pipeline.view(key, ["attention", "fastv", "dart-llm"], 4)
    assert asked == ["attention"]
    for method in IN_LLM:
        v = views[method]
        assert v["overlay"] is None and v["pending"] == IN_LLM_PENDING and v["refused"] is None
        assert v["layer"] == 2 and v["n_visual_tokens"] is None and v["kept_erank"] is None
    assert isinstance(views["attention"]["overlay"], Image.Image)

    cards, bars, _taus, record = handlers.view(key, ["attention", "fastv"], 4, defaults(handlers), None)
    fastv = cards[1]
    assert fastv["overlay"] is None and "Chosen inside the LLM from the question" in fastv["stats"]
    assert "(layer 2)" in fastv["stats"] and record["selection"]["fastv"]["pending"]
    assert list(bars.data[0].x) == ["attention"]  # nothing to plot for it yet


def test_an_answer_runs_the_plan_and_then_draws_what_it_kept(pipeline, runner):
    image = picture(1)
    key = pipeline.load(image)["key"]
    params = {"fastv": {"layer": 1}}
    out = pipeline.answer(key, PROMPT, ["attention", "fastv", "dart-llm"], 4, params)
    assert set(out) == {"full", "attention", "fastv", "dart-llm"}

    encoding = runner.encode(image)
    alone = runner.generate(encoding, PROMPT, runner.plan(encoding, "fastv", 4, layer=1), GenerationOptions(MAX_NEW))
    fastv = out["fastv"]
    assert fastv["text"] == alone.text and fastv["layer"] == 1 and out["dart-llm"]["layer"] == 2
    assert fastv["selection"]["keep"] == alone.selection.keep.tolist()
    assert fastv["selection"]["n_visual_tokens"] == 4 and fastv["n_visual_tokens"] == 4

    views = pipeline.view(key, ["attention", "fastv"], 4, params, colour_by="order")
    v = views["fastv"]
    assert isinstance(v["overlay"], Image.Image) and v["overlay"].size == views["attention"]["overlay"].size
    assert v["keep"] == alone.selection.keep.tolist() and len(v["keep"]) == v["n_visual_tokens"] == 4
    assert v["layer"] == 1 and v["prompt"] == PROMPT and v["kept_erank"] >= 1
    assert v["retained_attention"] == pytest.approx(
        pruning.retained_attention(encoding.inputs.cls_attn, alone.selection.keep)
    )


def test_what_it_kept_goes_stale_with_the_request_it_answered(pipeline, handlers):
    key = pipeline.load(picture(2))["key"]
    pipeline.answer(key, PROMPT, ["fastv"], 4)
    assert pipeline.view(key, ["fastv"], 4)["fastv"]["n_visual_tokens"] == 4
    assert pipeline.view(key, ["fastv"], 5)["fastv"]["pending"]  # another budget
    assert pipeline.view(key, ["fastv"], 4, {"fastv": {"layer": 3}})["fastv"]["pending"]  # another layer
    other = pipeline.load(picture(3))["key"]
    assert pipeline.view(other, ["fastv"], 4)["fastv"]["pending"]  # another image
    assert pipeline.view(key, ["fastv"], 4)["fastv"]["keep"] is not None  # the answered request again
    assert pipeline.view(key, ["fastv"], 4, {"fastv": {"layer": 2}})["fastv"]["keep"] is not None  # its default

    # on the page: once the answers are cleared, the selection made for them is gone too
    methods = ["attention", "fastv"]
    assert handlers.load(picture(2), "page")[0] == key
    handlers.view(key, methods, 4, defaults(handlers), None, "page")
    _full, cards, summary, rec = handlers.answer(key, PROMPT, methods, 4, defaults(handlers), "", session="page")
    assert rec["current"] and isinstance(cards[1]["overlay"], Image.Image) and "**4** tokens" in cards[1]["stats"]
    assert "kept at LLM layer **2**" in cards[1]["stats"] and "pruned inside the LLM at layer 2" in cards[1]["speed"]
    assert "3 answers generated together" in summary
    cards, *_ = handlers.view(key, methods, 4, defaults(handlers), "attention", "page")  # colouring only: kept
    assert isinstance(cards[1]["overlay"], Image.Image)
    cards, _bars, _taus, rec = handlers.view(key, methods, 5, defaults(handlers), None, "page")
    assert rec["answers_stale"] and cards[1]["overlay"] is None and "ask to see" in cards[1]["stats"]
    cards, *_ = handlers.view(key, methods, 4, defaults(handlers), None, "page")  # back: the answers are gone
    assert cards[1]["overlay"] is None

    handlers.answer(key, PROMPT, methods, 4, defaults(handlers), "", session="page")
    assert handlers.forget_answers("page")  # the prompt was edited
    assert handlers.view(key, methods, 4, defaults(handlers), None, "page")[0][1]["overlay"] is None

    handlers.answer(key, PROMPT, methods, 4, defaults(handlers), "", session="page")
    handlers.pipeline.store.start_answer("page", None)  # Compare again (then Stop): the page cleared them
    assert handlers.view(key, methods, 4, defaults(handlers), None, "page")[0][1]["overlay"] is None


def test_sweeps_and_the_step_through_skip_in_llm_methods(pipeline, handlers, runner):
    key = pipeline.load(picture(4))["key"]
    assert set(pipeline.sweep(key, ["attention", "fastv"], points=3)) == {"attention"}
    fig = handlers.sweep(key, ["attention", "fastv", "dart-llm"], defaults(handlers))
    assert len(fig.data) == 2 and "not swept: fastv, dart-llm (in-LLM" in fig.layout.title.text
    image, md = handlers.step(key, "fastv", 4, 2, defaults(handlers))
    assert image is None and md == f"*fastv is not replayed: it {IN_LLM_NOTE}.*"
    with pytest.raises(ValueError, match="fastv prunes inside the LLM, from the question: it has no pre-LLM walk"):
        pipeline.step_through(key, "fastv", 4, 2)

    encoding = runner.encode(picture(4))
    kept = runner.generate(encoding, PROMPT, runner.plan(encoding, "fastv", 4), GenerationOptions(2)).selection
    with pytest.raises(ValueError, match="no pre-LLM walk to replay"):
        replay_frame(pipeline.view_image(key), encoding.inputs.grid, kept, 1)


def test_a_layer_the_model_lacks_is_that_columns_refusal(pipeline, handlers):
    key = pipeline.load(picture(5))["key"]
    params = {"fastv": {"layer": 9}}
    views = pipeline.view(key, ["attention", "fastv"], 4, params)
    assert "layer must be in [1, 3]" in views["fastv"]["refused"] and views["fastv"]["pending"] is None
    out = pipeline.answer(key, PROMPT, ["attention", "fastv", "dart-llm"], 4, params)
    assert out["fastv"] == {"refused": views["fastv"]["refused"]}
    assert out["attention"]["n_visual_tokens"] == 4 and out["dart-llm"]["layer"] == 2


def test_a_model_that_refuses_in_llm_methods_says_so_per_column():
    model, processor = tiny_family("qwen2_5_vl")
    qwen = Runner.from_model(model, processor, name="tiny-qwen")
    h = Handlers(ComparePipeline(qwen, vocabulary=COCO_VOCABULARY, max_new_tokens=3))
    key = h.load(picture(6, (56, 56)))[0]
    methods = ["attention", "fastv"]
    cards, *_ = h.view(key, methods, 2, defaults(h), None)
    assert cards[1]["overlay"] is None and cards[1]["stats"].startswith("**Cannot run here:**")
    assert "M\\-RoPE" in cards[1]["stats"] and "\n" not in cards[1]["stats"]
    full, method_cards, summary, record = h.answer(key, PROMPT, methods, 2, defaults(h), "")
    assert full["text"] == record["answers"]["full"]["text"] and method_cards[0]["segments"] is not None
    assert record["answers"]["attention"]["n_visual_tokens"] == 2
    assert "cannot run on 'tiny-qwen' (qwen2_5_vl)" in record["answers"]["fastv"]["refused"]
    assert method_cards[1]["segments"] is None and "Cannot run here" in method_cards[1]["stats"]
    assert "2 answers generated together" in summary and "Not run here: fastv" in summary


def test_the_json_export_and_the_api_carry_what_it_kept(pipeline, handlers):
    key = pipeline.load(picture(7))["key"]
    methods = ["diversity", "fastv"]
    handlers.load(picture(7), "export")
    handlers.view(key, methods, 3, defaults(handlers), None, "export")
    handlers.answer(key, PROMPT, methods, 3, defaults(handlers), "", session="export")
    data = json.loads(open(handlers.export_json(None, "export")).read())
    answer, shown = data["answers"]["fastv"], data["selection"]["fastv"]
    assert answer["layer"] == 2 and len(answer["selection"]["keep"]) == 3 and answer["text"] is not None
    assert shown == {"n_visual_tokens": 3, "retained_attention": answer["selection"]["retained_attention"],
                     "kept_erank": answer["selection"]["kept_erank"], "select_ms": answer["selection"]["select_ms"],
                     "layer": 2}  # fmt: skip

    payload = pipeline.compare(picture(7), PROMPT, methods, 3)
    fastv = payload["methods"]["fastv"]
    assert fastv["n_visual_tokens"] == 3 and fastv["layer"] == 2 and fastv["keep"] == answer["selection"]["keep"]
    assert fastv["answer"]["text"] == answer["text"]
    json.dumps(payload)


def test_the_columns_hold_the_placeholder_until_an_answer_fills_them(pipeline):
    info = pipeline.info()
    with gr.Blocks():
        columns = build_columns(info)
    fastv = next(col for col in columns.methods if col.name == "fastv")
    attention = next(col for col in columns.methods if col.name == "attention")
    assert fastv.pending == pending_line(IN_LLM_PENDING) and attention.pending is None
    assert fastv.overlay in columns.answer_outputs and attention.overlay not in columns.answer_outputs
    outputs = columns.view_and_answer_outputs
    assert len({id(c) for c in outputs}) == len(outputs)
    cleared = columns.cleared("*Answering…*")
    assert cleared[fastv.overlay] is None and cleared[fastv.stats] == fastv.pending
    card = {"segments": [("a cat", None)], "speed": "", "missed": "", "text": "a cat", "overlay": "img", "stats": "s"}
    full = {"segments": [], "speed": "", "missed": ""}
    filled = columns.answers(full, {"fastv": card}, "done")
    assert filled[fastv.overlay] == "img" and filled[fastv.stats] == "s"


def test_the_page_shows_the_placeholder_then_what_the_answer_kept(pipeline, tmp_path):
    demo = build_demo(pipeline)
    h = Handlers(pipeline)

    def event(name):
        run = next(fn.fn for fn in demo.fns.values() if fn.name == name)
        return (lambda *a: list(run(*a))[-1]) if inspect.isgeneratorfunction(run) else run

    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    overlay, stats = by_id["overlay-fastv"], by_id["stats-fastv"]
    page = SimpleNamespace(session_hash="s")
    path = tmp_path / "picture.png"
    picture(8).save(path)
    image = {"path": str(path), "url": None, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}
    key = next(v for c, v in event("on_load")(page, image, 4).items() if isinstance(c, gr.State))
    methods = ["attention", "fastv"]
    shown = event("on_view")(page, key, methods, 4, "none", *defaults(h))
    assert shown[overlay] is None and "ask to see which tokens it kept" in shown[stats]
    answered = event("on_answer")(page, image, key, PROMPT, methods, 4, "", *defaults(h))
    assert isinstance(answered[overlay], Image.Image) and "**4** tokens" in answered[stats]
    assert answered[by_id["answer-fastv"]]
    moved = event("on_view")(page, key, methods, 3, "none", *defaults(h))
    assert moved[overlay] is None and "ask to see" in moved[stats] and moved[by_id["answer-fastv"]] is None
