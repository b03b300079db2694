"""Runtime parity: pruned generation through ``app.runtime`` against stock transformers paths.

Every check runs a tiny random LLaVA built in memory (``app.runtime.synthetic``) with greedy decoding
in float32 on CPU, where the paths must agree token for token.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

import pruning
from app.runtime import Calibration, Encoding, GenerationOptions, Runner
from app.runtime.synthetic import GRID, build_model, build_processor, build_tokenizer

PROMPT = "what is in this image ?"
MAX_NEW = 10
N = GRID[0] * GRID[1]


def random_image(seed: int, size: tuple[int, int] = (70, 40)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer)
    return model, processor


@pytest.fixture(scope="module")
def runner(tiny) -> Runner:
    model, processor = tiny
    return Runner.from_model(model, processor, name="tiny-llava")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return random_image(0)


@pytest.fixture(scope="module")
def encoding(runner, image) -> Encoding:
    return runner.encode(image)


def stock_generate(model, processor, runner, image, prompt=PROMPT, max_new_tokens=MAX_NEW) -> list[int]:
    """Greedy tokens of ``model.generate(**processor(images=..., text=...))``, prompt stripped."""
    text = runner.adapter.render_prompt(prompt)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def reference_generate(model, processor, runner, visual: torch.Tensor, max_new_tokens=MAX_NEW) -> list[int]:
    """Stock ``generate`` on a prompt with exactly K image placeholders and K given features."""
    k = visual.shape[0]
    text = runner.adapter.render_prompt(PROMPT).replace("<image>", "<image>" * k)
    ids = processor.tokenizer(text, return_tensors="pt")["input_ids"]
    assert int((ids == model.config.image_token_id).sum()) == k
    features = BaseModelOutputWithPooling(pooler_output=[visual])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_encoder_outputs={"image": features},
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return out[0, ids.shape[1] :].tolist()


def stock_features(model, processor, image) -> torch.Tensor:
    """F as the stock model computes it: ``get_image_features`` with the config's defaults."""
    pixels = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        return model.get_image_features(pixel_values=pixels).pooler_output[0]  # (N, D)


def test_unpruned_and_keep_all_match_stock_generate(tiny, runner, image, encoding):
    model, processor = tiny
    expected = stock_generate(model, processor, runner, image)
    full = runner.generate(encoding, PROMPT, None, GenerationOptions(max_new_tokens=MAX_NEW))
    keep_all = runner.select(encoding, "attention", N)
    assert keep_all.n_output_tokens == N
    kept = runner.generate(encoding, PROMPT, keep_all, GenerationOptions(max_new_tokens=MAX_NEW))
    assert list(full.token_ids) == expected
    assert list(kept.token_ids) == expected
    assert full.n_visual_tokens == kept.n_visual_tokens == N
    assert full.method == "full" and kept.method == "attention"


def test_encoding_matches_stock_features(tiny, encoding, image):
    model, processor = tiny
    torch.testing.assert_close(encoding.inputs.feats, stock_features(model, processor, image), rtol=0, atol=0)
    pixels = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
    torch.testing.assert_close(encoding.inputs.feats_pre, hidden[-2][0, 1:], rtol=0, atol=0)
    torch.testing.assert_close(encoding.inputs.cls_feat, hidden[-2][0, 0], rtol=0, atol=0)
    assert encoding.grid == GRID
    # 70 x 40 image: shortest edge 40 -> 56 px (x1.4), centre crop 56 x 56 = the middle 40 x 40 square
    assert encoding.geometry.original_size == (70, 40)
    assert encoding.geometry.crop_box == pytest.approx((15.0, 0.0, 55.0, 40.0))
    assert encoding.geometry.patch_box(5) == pytest.approx((25.0, 10.0, 35.0, 20.0))
    assert encoding.image_erank == pytest.approx(pruning.effective_rank(encoding.inputs.feats))
    assert encoding.attention_entropy == pytest.approx(pruning.attention_entropy(encoding.inputs.cls_attn))


@pytest.mark.parametrize(
    ("method", "budget"),
    [("attention", 5), ("diversity", 4), ("adaptive", 6), ("vispruner", 7), ("uniform", 4), ("visionzip", 6)],
)
def test_pruned_run_matches_k_placeholder_reference(tiny, runner, image, encoding, method, budget):
    model, processor = tiny
    selection = runner.select(encoding, method, budget)
    features = stock_features(model, processor, image)
    if selection.tokens is None:
        visual = features[selection.keep]  # (K, D), raster order
    else:
        assert selection.tokens_space == "pre_projector"
        with torch.inference_mode():
            visual = model.model.multi_modal_projector(selection.tokens.to(features.dtype))
    assert torch.equal(selection.keep, torch.sort(selection.keep).values)
    expected = reference_generate(model, processor, runner, visual)
    got = runner.generate(encoding, PROMPT, selection, GenerationOptions(max_new_tokens=MAX_NEW))
    assert got.n_visual_tokens == visual.shape[0] == budget
    assert list(got.token_ids) == expected


def test_pruning_changes_the_answer(runner, encoding):
    """Sanity check that the parity tests are not vacuous: the visual tokens matter."""
    full = runner.generate(encoding, PROMPT, None, GenerationOptions(max_new_tokens=MAX_NEW))
    few = runner.generate(
        encoding, PROMPT, runner.select(encoding, "attention", 2), GenerationOptions(max_new_tokens=MAX_NEW)
    )
    assert full.token_ids != few.token_ids


def test_cls_attention_row_equals_eager_attention(tiny, runner, encoding, image):
    model, processor = tiny
    eager = build_model(processor.tokenizer, attn_implementation="eager")  # same seed, same weights
    eager.load_state_dict(model.state_dict())
    pixels = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    layer_index = runner.adapter.feature_index - 1  # encoder layer whose output is V
    captured = {}
    k_proj = eager.model.vision_tower.encoder.layers[layer_index].self_attn.k_proj
    handle = k_proj.register_forward_hook(lambda module, args, out: captured.setdefault("keys", out))
    try:
        with torch.inference_mode():
            out = eager.model.vision_tower(pixels, output_attentions=True)
    finally:
        handle.remove()
    attn = out.attentions[layer_index][0]  # (heads, 1 + N, 1 + N)
    expected_row = attn[:, 0, 1:].mean(dim=0)  # (N,), not renormalised
    torch.testing.assert_close(encoding.inputs.cls_attn, expected_row, rtol=1e-5, atol=1e-6)
    assert float(encoding.inputs.cls_attn.sum()) < 1.0  # the [CLS] column was dropped, no renormalisation
    heads = attn.shape[0]
    keys = captured["keys"][0].view(1 + N, heads, -1).mean(dim=1)[1:]  # (N, hd)
    torch.testing.assert_close(encoding.inputs.keys, keys, rtol=1e-5, atol=1e-6)


def test_generate_many_equals_separate_calls(runner, encoding):
    selections = [
        None,
        runner.select(encoding, "attention", 3),
        runner.select(encoding, "adaptive", 8),
        runner.select(encoding, "visionzip", 5),
        runner.select(encoding, "diversity", 12),
    ]
    share = runner.padding_share
    try:
        from app.runtime.generation import group_rows

        lengths = [runner._prepare_row(encoding, PROMPT, s, GenerationOptions()).embeds.shape[0] for s in selections]
        grouped = {i: len(g) for g in group_rows(lengths, share) for i in g}
        assert max(grouped.values()) < len(selections)  # the CPU default really splits these rows
        for runner.padding_share, expected_sizes in ((1.0, [5] * 5), (share, [grouped[i] for i in range(5)])):
            batched = runner.generate_many(encoding, PROMPT, selections, GenerationOptions(max_new_tokens=MAX_NEW))
            assert len(batched) == len(selections)
            for selection, many in zip(selections, batched, strict=True):
                single = runner.generate(encoding, PROMPT, selection, GenerationOptions(max_new_tokens=MAX_NEW))
                assert many.token_ids == single.token_ids
                assert many.text == single.text
                assert many.n_visual_tokens == single.n_visual_tokens
            assert [g.timings["batch_size"] for g in batched] == expected_sizes
    finally:
        runner.padding_share = share


def test_rows_share_a_call_only_while_padding_stays_small():
    from app.runtime.generation import group_rows

    # LLaVA-1.5 at 64 tokens: the full row (576 + 20) runs apart from the three pruned rows (64 + 20)
    assert group_rows([596, 84, 84, 84]) == [[0], [1, 2, 3]]
    assert group_rows([596, 84, 84, 84], 1.0) == [[0, 1, 2, 3]]
    assert group_rows([10, 10, 10], 0.0) == [[0, 1, 2]]
    assert group_rows([100, 90, 50, 80], 0.1) == [[0, 1, 3], [2]]
    assert group_rows([100, 90, 50, 80], 0.25) == [[0, 1, 2, 3]]
    assert group_rows([]) == []


def test_cancel_stops_at_the_next_token_and_later_calls_never_start(runner, encoding):
    import threading

    stop = threading.Event()
    rows = [None, runner.select(encoding, "attention", 1)]  # 16 vs 1 visual tokens: two calls on CPU
    gens = runner.generate_many(
        encoding, PROMPT, rows, GenerationOptions(max_new_tokens=200), cancel=stop, progress=lambda i, t: stop.set()
    )
    assert len(gens[0].token_ids) <= 2 and gens[0].finish_reason in ("cancelled", "eos")
    assert gens[1].token_ids == () and gens[1].finish_reason == "cancelled"
    assert gens[1].timings["prefill_ms"] is None and gens[1].n_visual_tokens == 1


def test_generation_record_and_timings(runner, encoding):
    gen = runner.generate(
        encoding, PROMPT, runner.select(encoding, "attention", 4), GenerationOptions(max_new_tokens=MAX_NEW)
    )
    assert isinstance(gen.text, str) and len(gen.token_ids) == MAX_NEW
    assert gen.finish_reason == "length"
    t = gen.timings
    assert t["encode_ms"] == encoding.encode_ms > 0
    assert t["select_ms"] > 0 and t["prefill_ms"] > 0 and t["decode_ms_per_token"] > 0
    assert t["total_ms"] >= t["encode_ms"] + t["select_ms"] + t["prefill_ms"]
    assert t["peak_memory_mb"] is None  # CPU
    assert t["n_new_tokens"] == MAX_NEW and t["batch_size"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        gen.text = "changed"


def test_encode_cache_is_bounded_lru(tiny):
    model, processor = tiny
    runner = Runner.from_model(model, processor, name="tiny-llava", cache_size=2)
    a, b, c = (random_image(seed) for seed in (1, 2, 3))
    enc_a = runner.encode(a)
    assert runner.encode(a.copy()) is enc_a  # keyed by content, not identity
    enc_b = runner.encode(b)
    assert runner.encode(a) is enc_a  # a is now the most recent
    runner.encode(c)  # evicts b
    assert runner.encode(a) is enc_a
    assert runner.encode(b) is not enc_b
    assert runner.encode(a, use_cache=False) is not enc_a
    assert enc_a.key != enc_b.key


def test_select_fills_in_the_model_calibration(tiny, encoding):
    model, processor = tiny
    calibration = Calibration(erank_avg=7.0, erank_p10=5.0, erank_p90=11.0, source="file", n_images=3)
    runner = Runner.from_model(model, processor, name="tiny-llava", calibration=calibration)
    enc = runner.encode(random_image(0))
    adaptive = runner.select(enc, "adaptive", 6)
    assert adaptive.info["erank_avg"] == 7.0
    assert adaptive.info["calibration_source"] == "file"
    explicit = runner.select(enc, "adaptive", 6, erank_avg=3.0)
    assert explicit.info["erank_avg"] == 3.0
    hybrid = runner.select(enc, "hybrid-erank", 6)
    direct = pruning.select("hybrid-erank", enc.inputs, 6, erank_lo=5.0, erank_hi=11.0)
    assert hybrid.info["ratio"] == direct.info["ratio"]
    assert torch.equal(hybrid.keep, direct.keep)
    assert "calibration_source" not in runner.select(enc, "attention", 4).info


def test_sampling_is_reproducible_with_a_seed(runner, encoding):
    options = {"do_sample": True, "temperature": 1.5, "top_k": 20, "seed": 7, "max_new_tokens": MAX_NEW}
    first = runner.generate(encoding, PROMPT, None, GenerationOptions(**options))
    again = runner.generate(encoding, PROMPT, None, GenerationOptions(**options))
    assert first.token_ids == again.token_ids


def test_full_select_strategy_feeds_cls_first(tiny):
    """With ``vision_feature_select_strategy="full"`` the LLM also sees [CLS]: N + 1 visual tokens."""
    _, processor = tiny
    model = build_model(processor.tokenizer, select_strategy="full", seed=3)
    full_processor = build_processor(processor.tokenizer)
    full_processor.vision_feature_select_strategy = "full"
    runner = Runner.from_model(model, full_processor, name="tiny-llava-full")
    image = random_image(4)
    enc = runner.encode(image)
    assert enc.n_tokens == N and enc.prefix.shape[0] == 1
    gen = runner.generate(enc, PROMPT, None, GenerationOptions(max_new_tokens=MAX_NEW))
    assert gen.n_visual_tokens == N + 1
    assert list(gen.token_ids) == stock_generate(model, full_processor, runner, image)
    pruned = runner.generate(enc, PROMPT, runner.select(enc, "attention", 4), GenerationOptions(max_new_tokens=MAX_NEW))
    assert pruned.n_visual_tokens == 5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runtime_matches_stock_and_reports_memory(tiny, image):
    model_cpu, processor = tiny
    model = build_model(processor.tokenizer)
    model.load_state_dict(model_cpu.state_dict())
    model.to("cuda")
    runner = Runner.from_model(model, processor, name="tiny-llava-cuda")
    enc = runner.encode(image)
    assert enc.inputs.device.type == "cuda"
    text = runner.adapter.render_prompt(PROMPT)
    inputs = processor(images=image, text=text, return_tensors="pt").to("cuda")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    expected = out[0, inputs["input_ids"].shape[1] :].tolist()
    gen = runner.generate(enc, PROMPT, None, GenerationOptions(max_new_tokens=MAX_NEW))
    assert list(gen.token_ids) == expected
    assert gen.timings["peak_memory_mb"] > 0
    selections = [runner.select(enc, "attention", 4), runner.select(enc, "visionzip", 6)]
    many = runner.generate_many(enc, PROMPT, selections, GenerationOptions(max_new_tokens=MAX_NEW))
    for selection, batched in zip(selections, many, strict=True):
        assert (
            batched.token_ids
            == runner.generate(enc, PROMPT, selection, GenerationOptions(max_new_tokens=MAX_NEW)).token_ids
        )


def test_progress_reports_every_rows_answer_as_it_grows(runner, encoding):
    selections = [None, runner.select(encoding, "attention", 3), runner.select(encoding, "diversity", 12)]
    seen: dict[int, list[str]] = {0: [], 1: [], 2: []}
    gens = runner.generate_many(
        encoding,
        PROMPT,
        selections,
        GenerationOptions(max_new_tokens=MAX_NEW),
        progress=lambda i, text: seen[i].append(text),
    )
    for i, gen in enumerate(gens):
        assert len(seen[i]) == len(gen.token_ids)  # one report per new token, none after the end
        assert seen[i][-1] == gen.text
        assert all(later.startswith(earlier) for earlier, later in zip(seen[i], seen[i][1:]))


def test_a_method_needing_a_text_tower_is_refused_in_words_without_one(runner, encoding):
    with pytest.raises(ValueError, match=r"'cdpruner' needs the question's embedding") as err:
        runner.select(encoding, "cdpruner", 4, prompt=PROMPT)
    assert "loaded without a text tower" in str(err.value) and "attention signal" not in str(err.value)
