"""CDPruner in the runtime: CLIP's text half loaded beside a model, checked against its tower, and
its embeddings and selections against a transcription of the authors' forward, on tiny random
models built here (``synthetic.build_clip``: a CLIP whose vision half is the LLaVA model's tower)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTextModelWithProjection

from app.runtime import GenerationOptions, ModelNotAvailableError, Runner, load_runner
from app.runtime.checks import QuestionPlan
from app.runtime.synthetic import build_clip, build_model, build_processor, build_tokenizer, tiny_family
from app.runtime.texttower import SHORT_ANSWER, load_text_tower, question_text
from benchmarks.plain import plain_cdpruner

POSITIONS = 8  # the tiny CLIP's text positions: the longer questions below span several segments
SHORT = "what colour is the car ?"
LONG = "what colour is the car on the left of the house and where is the dog in this picture please"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-tower")
    tokenizer = build_tokenizer()
    model, processor = build_model(tokenizer), build_processor(tokenizer)
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    clip, clip_tokenizer = build_clip(model, positions=POSITIONS)
    clip.save_pretrained(root / "clip")
    clip_tokenizer.save_pretrained(root / "clip")
    other, other_tokenizer = build_clip(build_model(tokenizer, seed=5), positions=POSITIONS)  # another tower
    other.save_pretrained(root / "other-clip")
    other_tokenizer.save_pretrained(root / "other-clip")
    return root


@pytest.fixture(scope="module")
def runner(folders):
    return load_runner(str(folders / "llava"), "cpu", "float32", text_tower=str(folders / "clip"))


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 75, 3), dtype=np.uint8))


def authors_patch_embeds(clip_folder, pixel_values, feature_layer):
    """The authors' image embeds: the feature layer's patches through post-layernorm and the visual projection."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_folder).eval()
    with torch.no_grad():
        hidden = clip.vision_model(pixel_values, output_hidden_states=True).hidden_states[feature_layer][:, 1:]
        return clip.visual_projection(clip.vision_model.post_layernorm(hidden).float())[0]


def authors_text_embeds(clip_folder, tokenizer, question):
    """The authors' text embeds: the question tokenised whole, zero-padded to whole segments, each encoded."""
    tower = CLIPTextModelWithProjection.from_pretrained(clip_folder).eval()
    positions = tower.config.max_position_embeddings
    inputs = tokenizer(text=question, return_tensors="pt")
    segments = (inputs.input_ids.shape[1] - 1) // positions + 1
    padding = positions * segments - inputs.input_ids.shape[1]
    inputs = {
        k: torch.cat([v, v.new_zeros((v.shape[0], padding))], dim=1).reshape(-1, positions) for k, v in inputs.items()
    }
    with torch.no_grad():
        return tower(**inputs).text_embeds


def test_embeddings_and_selection_match_the_authors_forward(folders, runner, image):
    encoding = runner.encode(image)
    pixel_values, _ = runner.adapter.preprocess(image)
    layer = runner.adapter.model.config.vision_feature_layer
    torch.testing.assert_close(
        encoding.inputs.patch_embeds, authors_patch_embeds(folders / "clip", pixel_values, layer), rtol=1e-5, atol=1e-5
    )
    for question in (SHORT, LONG):
        text = authors_text_embeds(folders / "clip", runner.text_tower.tokenizer, question)
        torch.testing.assert_close(runner.text_tower.text_embeds(question), text, rtol=1e-5, atol=1e-5)
        for budget in (1, 5, 11, 15):  # at N = 16 every method keeps every token
            sel = runner.select(encoding, "cdpruner", budget, prompt=question)
            ref = plain_cdpruner(encoding.inputs.feats, encoding.inputs.patch_embeds, text, budget)
            assert sel.order.tolist() == ref
            assert sel.keep.tolist() == sorted(ref)


def test_a_long_question_is_one_row_per_segment_and_the_short_answer_line_is_dropped(runner):
    ids = runner.text_tower.tokenizer(text=LONG)["input_ids"]  # start and end tokens included
    assert len(ids) > 2 * POSITIONS
    assert runner.text_tower.text_embeds(LONG).shape == (-(-len(ids) // POSITIONS), 16)
    assert runner.text_tower.text_embeds(SHORT).shape == (1, 16)
    assert question_text(f"{SHORT}\n{SHORT_ANSWER}") == SHORT
    torch.testing.assert_close(
        runner.text_tower.text_embeds(f"{SHORT}\n{SHORT_ANSWER}"), runner.text_tower.text_embeds(SHORT)
    )
    with pytest.raises(ValueError, match="the question is empty"):
        runner.text_tower.text_embeds(f"  {SHORT_ANSWER} ")


def test_the_selection_follows_the_question(runner, image):
    encoding = runner.encode(image)
    short = runner.select(encoding, "cdpruner", 6, prompt=SHORT)
    long = runner.select(encoding, "cdpruner", 6, prompt=LONG)
    assert not torch.equal(short.info["relevance"], long.info["relevance"])
    assert short.info["text_ms"] >= 0 and short.info["select_ms"] > 0


def test_a_question_plan_answers_as_its_selection_does(runner, image):
    encoding = runner.encode(image)
    plan = runner.plan(encoding, "cdpruner", 5)
    assert isinstance(plan, QuestionPlan) and plan.layer == 0 and plan.params == {"theta": None}
    options = GenerationOptions(max_new_tokens=6)
    full, planned, other = runner.generate_many(
        encoding, SHORT, [None, plan, runner.plan(encoding, "cdpruner", 9)], options
    )
    explicit = runner.select(encoding, "cdpruner", 5, prompt=SHORT)
    alone = runner.generate(encoding, SHORT, explicit, options)
    assert planned.selection.keep.tolist() == explicit.keep.tolist()
    assert planned.token_ids == alone.token_ids and planned.n_visual_tokens == 5
    assert other.selection.keep.numel() == 9 and full.selection is None


def test_without_a_text_tower_cdpruner_is_refused_naming_what_to_load(folders, image):
    plain = load_runner(str(folders / "llava"), "cpu", "float32")
    encoding = plain.encode(image)
    assert encoding.inputs.patch_embeds is None and plain.metadata["text_tower"] is None
    for call in (
        lambda: plain.select(encoding, "cdpruner", 4, prompt=SHORT),
        lambda: plain.plan(encoding, "cdpruner", 4),
    ):
        with pytest.raises(
            ValueError,
            match=r"'cdpruner' needs the question's embedding .* 'llava' was loaded without a text tower.*--text-tower",
        ):
            call()


def test_bad_requests_are_refused_in_words(runner, image):
    encoding = runner.encode(image)
    with pytest.raises(ValueError, match="selects from the question: pass the prompt"):
        runner.select(encoding, "cdpruner", 4)
    with pytest.raises(ValueError, match="selects before the language model: use Runner.select"):
        runner.plan(encoding, "attention", 4)
    with pytest.raises(ValueError, match="theta must be None or a number"):
        runner.plan(encoding, "cdpruner", 4, theta=2.0)
    with pytest.raises(ValueError, match="budget"):
        runner.plan(encoding, "cdpruner", 0)


def test_a_text_tower_that_is_not_the_models_clip_is_refused(folders):
    llava = str(folders / "llava")
    with pytest.raises(
        ValueError, match=r"'other-clip' is not the CLIP 'llava''s vision tower came from: its .* other values"
    ):
        load_runner(llava, "cpu", "float32", text_tower=str(folders / "other-clip"))
    with pytest.raises(ValueError, match=r"must be a CLIP checkpoint \(model_type 'clip', both halves\), got 'llava'"):
        load_runner(llava, "cpu", "float32", text_tower=llava)
    with pytest.raises(ValueError, match="text_tower must be a hub id or a folder path"):
        load_runner(llava, "cpu", "float32", text_tower=" ")


def test_a_missing_text_tower_fails_fast_offline(folders, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError):
        load_runner(str(folders / "llava"), "cpu", "float32", cache_dir=tmp_path, text_tower="nobody/no-such-clip")


def test_a_tower_without_clip_is_refused_naming_the_model(folders):
    model, processor = tiny_family("llava_onevision")
    onevision = Runner.from_model(model, processor, name="tiny-onevision")
    with pytest.raises(
        ValueError, match=r"needs a CLIP vision tower; 'tiny-onevision' \(llava_onevision\) has SiglipVisionModel"
    ):
        load_text_tower(
            "clip", folders / "clip", onevision.adapter.vision_tower, model="tiny-onevision",
            family="llava_onevision", device=torch.device("cpu"),
        )  # fmt: skip


def test_llava_next_selects_per_grid_from_the_question(folders, image):
    model, processor = tiny_family("llava_next")
    clip, clip_tokenizer = build_clip(model, positions=POSITIONS)
    clip.save_pretrained(folders / "next-clip")
    clip_tokenizer.save_pretrained(folders / "next-clip")
    runner = Runner.from_model(model, processor, name="tiny-next")
    runner.text_tower = load_text_tower(
        "next-clip", folders / "next-clip", runner.adapter.vision_tower, model="tiny-next",
        family="llava_next", device=torch.device("cpu"),
    )  # fmt: skip
    encoding = runner.encode(image)
    assert len(encoding.parts) > 1
    text = runner.text_tower.text_embeds(SHORT)
    sel = runner.select(encoding, "cdpruner", 12, prompt=SHORT)
    assert sel.keep.numel() == 12
    for part, grid in zip(encoding.parts, sel.info["grids"]):
        own = runner.text_tower.patch_embeds(part.inputs.feats_pre)
        torch.testing.assert_close(part.inputs.patch_embeds, own)
        if grid["budget"]:
            picked = [i - part.offset for i in sel.keep.tolist() if part.offset <= i < part.offset + part.n_tokens]
            assert picked == sorted(plain_cdpruner(part.inputs.feats, own, text, grid["budget"]))
    gen = runner.generate(encoding, SHORT, runner.plan(encoding, "cdpruner", 12), GenerationOptions(max_new_tokens=3))
    assert gen.n_visual_tokens == 12 and gen.selection.keep.tolist() == sel.keep.tolist()
