"""The in-LLM methods (FastV, DART at layer K) through ``app.runtime`` on tiny random models.

Keeping every token must be the stock model exactly; pruned runs must keep the same tokens and say
the same greedy answer as the plain transcription (``benchmarks.plain.plain_inllm_run``: one stock
eager forward for the rule, then whole-sequence recomputation with dropped tokens masked from layer
K on), cache only the kept tokens from layer K on, and keep their original positions.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import pruning
from app.runtime import GenerationOptions, Runner
from app.runtime.inllm import _decode_step, _last_attention, check_decoder, prefill
from app.runtime.synthetic import GRID, build_model, build_processor, build_tokenizer, tiny_family
from benchmarks.plain import plain_inllm_run

PROMPT = "what is in this image ?"
MAX_NEW = 10
N = GRID[0] * GRID[1]
LAYERS = 4
IN_LLM = pruning.list_methods("in-llm")


def random_image(seed: int, size: tuple[int, int] = (70, 40)) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, text_layers=LAYERS)
    eager = build_model(tokenizer, text_layers=LAYERS, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    return model, eager, processor


@pytest.fixture(scope="module")
def runner(tiny) -> Runner:
    model, _, processor = tiny
    return Runner.from_model(model, processor, name="tiny-llava-4")


@pytest.fixture(scope="module")
def eager_runner(tiny) -> Runner:
    _, eager, processor = tiny
    return Runner.from_model(eager, processor, name="tiny-llava-4-eager")


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return random_image(0)


@pytest.fixture(scope="module")
def encoding(runner, image):
    return runner.encode(image)


def options(**kw) -> GenerationOptions:
    return GenerationOptions(max_new_tokens=kw.pop("max_new_tokens", MAX_NEW), **kw)


def plan_row(runner, encoding, method, budget, **params):
    """The prepared in-LLM row (the whole prompt, where its visual tokens sit) of one request."""
    return runner._prepare_row(encoding, PROMPT, runner.plan(encoding, method, budget, **params), options())


def stock_generate(model, processor, runner, image) -> list[int]:
    text = runner.adapter.render_prompt(PROMPT)
    inputs = processor(images=image, text=text, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_registry_lists_the_in_llm_methods_apart():
    assert IN_LLM == ["dart-llm", "fastv"]
    assert not set(IN_LLM) & set(pruning.list_methods())
    assert set(pruning.list_methods("all")) == set(pruning.list_methods()) | set(IN_LLM)
    for method in IN_LLM:
        spec = pruning.get_method(method)
        assert spec.stage == "in-llm" and spec.defaults["layer"] == 2
    assert pruning.method_params("dart-llm") == {"layer": 2, "pivots": 4, "text_pivots": 4}
    with pytest.raises(ValueError, match="stage must be one of"):
        pruning.list_methods("inside")


@pytest.mark.parametrize("method", IN_LLM)
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_keeping_every_token_is_the_stock_model(tiny, runner, image, encoding, method, layer):
    model, _, processor = tiny
    expected = stock_generate(model, processor, runner, image)
    full = runner.generate(encoding, PROMPT, None, options())
    gen = runner.generate(encoding, PROMPT, runner.plan(encoding, method, N, layer=layer), options())
    assert list(full.token_ids) == expected
    assert list(gen.token_ids) == expected
    assert gen.method == method and gen.n_visual_tokens == N
    assert gen.selection.info["kept_all"] and gen.selection.keep.tolist() == list(range(N))
    length = runner._prepare_row(encoding, PROMPT, None, options()).embeds.shape[0]
    assert gen.selection.info["cache_lengths"] == [length] * LAYERS


def test_keeping_every_token_gives_the_stock_hidden_states(tiny, runner, encoding):
    model, _, _ = tiny
    row = plan_row(runner, encoding, "fastv", N)
    with torch.inference_mode():
        ours = prefill(model, row, keep_hidden=True)
        stock = model.get_decoder()(inputs_embeds=row.row.embeds[None], output_hidden_states=True)
    assert len(ours.hidden_states) == len(stock.hidden_states) == LAYERS + 1
    for i, (a, b) in enumerate(zip(ours.hidden_states, stock.hidden_states, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"input of layer {i}")


def test_the_recomputed_attention_row_equals_eager_attention(tiny, runner, encoding):
    model, eager, _ = tiny
    row = plan_row(runner, encoding, "fastv", 5, layer=2)
    embeds = row.row.embeds[None]
    with torch.inference_mode():
        pre = prefill(model, row, keep_hidden=True)
        h_in = pre.hidden_states[1]  # the input of layer K − 1
        rotary = model.get_decoder().rotary_emb(h_in, torch.arange(pre.length)[None])
        ours = _last_attention(model.get_decoder().layers[1], h_in, pre.cache.layers[1].keys, rotary)
        weights = eager.get_decoder()(inputs_embeds=embeds, output_attentions=True).attentions[1]
    torch.testing.assert_close(ours, weights[0, :, -1].mean(dim=0), rtol=1e-5, atol=1e-7)


def test_visual_positions_are_where_the_tokens_sit(runner, encoding):
    row = plan_row(runner, encoding, "fastv", 4)
    assert torch.equal(row.row.embeds[row.visual_at], encoding.inputs.feats)
    assert row.text_from == int(row.visual_at[-1]) + 1


CASES = [
    ("fastv", 4, {"layer": 2}),
    ("fastv", 7, {"layer": 1}),
    ("fastv", 2, {"layer": 3}),
    ("dart-llm", 6, {"layer": 2}),
    ("dart-llm", 11, {"layer": 1}),
    ("dart-llm", 5, {"layer": 3, "pivots": 2, "text_pivots": 1}),
    ("dart-llm", 3, {"layer": 2, "text_pivots": 0}),
]


@pytest.mark.parametrize(("method", "budget", "params"), CASES)
def test_pruned_runs_match_the_plain_transcription(tiny, runner, eager_runner, encoding, method, budget, params):
    _, eager, _ = tiny
    gen = runner.generate(encoding, PROMPT, runner.plan(encoding, method, budget, **params), options())
    row = plan_row(runner, encoding, method, budget, **params)
    eos = set(runner.adapter.eos_token_ids())
    full_params = pruning.get_method(method).check_request(budget, params)[1]
    kept, tokens = plain_inllm_run(
        eager, row.row.embeds, row.visual_at.tolist(), row.text_from, method, budget, full_params, MAX_NEW, eos
    )
    assert gen.selection.keep.tolist() == kept
    assert list(gen.token_ids) == tokens
    assert gen.n_visual_tokens == budget == len(kept)
    eager_encoding = eager_runner.encode(random_image(0))
    eager_plan = eager_runner.plan(eager_encoding, method, budget, **params)
    on_eager = eager_runner.generate(eager_encoding, PROMPT, eager_plan, options())
    assert on_eager.selection.keep.tolist() == kept  # the eager masks of create_causal_mask, same answer
    assert list(on_eager.token_ids) == tokens


def test_pruning_in_the_llm_changes_the_answer(runner, encoding):
    """The parity tests are not vacuous: which tokens layers >= K see matters."""
    full = runner.generate(encoding, PROMPT, None, options())
    answers = {runner.generate(encoding, PROMPT, runner.plan(encoding, m, 2), options()).token_ids for m in IN_LLM}
    assert full.token_ids not in answers


@pytest.mark.parametrize("method", IN_LLM)
def test_layers_from_k_on_cache_only_the_kept_tokens(tiny, runner, encoding, method):
    model, _, _ = tiny
    row = plan_row(runner, encoding, method, 5)
    length = row.row.embeds.shape[0]
    with torch.inference_mode():
        pre = prefill(model, row)
        assert [pre.cache.get_seq_length(i) for i in range(LAYERS)] == [length] * 2 + [length - N + 5] * 2
        assert pre.selection.info["cache_lengths"] == [length] * 2 + [length - N + 5] * 2
        _decode_step(model, runner.adapter.embed, pre.cache, 7, length, 2)
    assert [pre.cache.get_seq_length(i) for i in range(LAYERS)] == [length + 1] * 2 + [length - N + 6] * 2
    gen = runner.generate(encoding, PROMPT, runner.plan(encoding, method, 5), options())
    assert gen.n_visual_tokens == 5 and gen.selection.n_output_tokens == 5


def test_kept_tokens_keep_their_original_positions(tiny, runner, encoding):
    model, _, _ = tiny
    row = plan_row(runner, encoding, "fastv", 5)
    with torch.inference_mode():
        pre = prefill(model, row, keep_hidden=True)
        keep = pre.selection.keep
        others = [p for p in range(pre.length) if p not in row.visual_at.tolist()]
        assert pre.kept.tolist() == sorted(others + row.visual_at[keep].tolist())
        assert pre.selection.info["positions"] == row.visual_at[keep].tolist()
        # layer K's cached keys are its k projection rotated at the original positions, not 0 .. L' - 1
        decoder = model.get_decoder()
        block = decoder.layers[2]
        x = block.input_layernorm(pre.hidden_states[2])  # (1, L', D): the input of layer K
        k = block.self_attn.k_proj(x).view(1, x.shape[1], -1, block.self_attn.head_dim).transpose(1, 2)

        def rotated(positions):
            cos, sin = decoder.rotary_emb(x, positions[None])
            return apply_rotary_pos_emb(k, k, cos, sin)[1]

        cached = pre.cache.layers[2].keys
        torch.testing.assert_close(cached, rotated(pre.kept), rtol=1e-6, atol=1e-6)
        assert not torch.allclose(cached, rotated(torch.arange(pre.kept.shape[0])), atol=1e-3)


def test_sampling_with_a_seed_is_reproducible_and_draws_as_generate_does(runner, encoding):
    sampled = options(do_sample=True, temperature=1.5, top_k=20, seed=7)
    plan = runner.plan(encoding, "fastv", 5)
    first = runner.generate(encoding, PROMPT, plan, sampled)
    assert runner.generate(encoding, PROMPT, plan, sampled).token_ids == first.token_ids
    greedy = runner.generate(encoding, PROMPT, plan, options())
    others = {runner.generate(encoding, PROMPT, plan, options(do_sample=True, seed=s)).token_ids for s in range(4)}
    assert others - {greedy.token_ids}  # sampling really samples
    # keeping every token, the seeded draws are the stock generate's, token for token
    keep_all = runner.generate(encoding, PROMPT, runner.plan(encoding, "fastv", N), sampled)
    assert keep_all.token_ids == runner.generate(encoding, PROMPT, None, sampled).token_ids


def test_cancel_stops_at_the_next_token_and_later_rows_never_start(runner, encoding):
    stop = threading.Event()
    plans = [runner.plan(encoding, "fastv", 5), runner.plan(encoding, "dart-llm", 6)]
    gens = runner.generate_many(
        encoding, PROMPT, plans, options(max_new_tokens=200), cancel=stop, progress=lambda i, t: stop.set()
    )
    assert len(gens[0].token_ids) == 1 and gens[0].finish_reason in ("cancelled", "eos")
    assert gens[0].selection is not None
    assert gens[1].token_ids == () and gens[1].finish_reason == "cancelled"
    assert gens[1].timings["prefill_ms"] is None and gens[1].n_visual_tokens == 6 and gens[1].method == "dart-llm"


def test_generate_many_mixes_plans_with_selections(runner, encoding):
    rows = [
        None,
        runner.select(encoding, "attention", 3),
        runner.plan(encoding, "fastv", 4),
        runner.plan(encoding, "dart-llm", 6),
    ]
    seen: dict[int, list[str]] = {i: [] for i in range(len(rows))}
    many = runner.generate_many(encoding, PROMPT, rows, options(), progress=lambda i, t: seen[i].append(t))
    for i, (row, gen) in enumerate(zip(rows, many, strict=True)):
        alone = runner.generate(encoding, PROMPT, row, options())
        assert gen.token_ids == alone.token_ids and gen.text == alone.text
        assert seen[i][-1] == gen.text and len(seen[i]) == len(gen.token_ids)
    assert [g.selection is None for g in many] == [True, True, False, False]
    assert [g.method for g in many] == ["full", "attention", "fastv", "dart-llm"]
    t = many[2].timings
    assert t["batch_size"] == 1 and t["prefill_ms"] > 0 and t["decode_ms_per_token"] > 0
    assert t["select_ms"] == many[2].selection.info["select_ms"] > 0
    assert t["total_ms"] >= t["encode_ms"] + t["prefill_ms"]


def test_bad_requests_are_refused_in_words(runner, encoding):
    with pytest.raises(ValueError, match=r"layer must be in \[1, 3\] for 'tiny-llava-4' \(4 decoder layers\)"):
        runner.plan(encoding, "fastv", 4, layer=4)
    with pytest.raises(ValueError, match="layer must be a positive int, got 0"):
        runner.plan(encoding, "dart-llm", 4, layer=0)
    with pytest.raises(ValueError, match=r"'fastv' has no parameter\(s\) \['pivots'\]; it takes \['layer'\]"):
        runner.plan(encoding, "fastv", 4, pivots=2)
    with pytest.raises(ValueError, match="text_pivots must be a non-negative int"):
        runner.plan(encoding, "dart-llm", 4, text_pivots=-1)
    for budget in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="budget must be"):
            runner.plan(encoding, "fastv", budget)
    above = runner.generate(encoding, PROMPT, runner.plan(encoding, "fastv", N + 5), options())
    assert above.selection.info["budget_clipped"] and above.n_visual_tokens == N  # as every method: all kept
    with pytest.raises(ValueError, match=r"selects inside the language model.*Runner.plan"):
        runner.select(encoding, "fastv", 4)
    with pytest.raises(ValueError, match="selects before the language model: use Runner.select"):
        runner.plan(encoding, "attention", 4)
    with pytest.raises(ValueError, match=r"'dart-llm' selects inside the language model.*not a PruneInputs"):
        pruning.select("dart-llm", encoding.inputs, 4)


def test_a_plan_belongs_to_its_model_and_layer_inputs_are_checked(runner, eager_runner, encoding):
    plan = runner.plan(encoding, "fastv", 4)
    other = eager_runner.encode(random_image(0))
    with pytest.raises(ValueError, match=r"plan was made for 'tiny-llava-4'.*Runner.plan for this encoding"):
        eager_runner.generate(other, PROMPT, plan, options())
    with pytest.raises(ValueError, match="hidden has 3 tokens but keys has 4"):
        pruning.LayerInputs(keys=torch.ones(4, 2), hidden=torch.ones(3, 2))
    with pytest.raises(ValueError, match="text_keys has 3 channels but keys has 2"):
        pruning.LayerInputs(keys=torch.ones(4, 2), text_keys=torch.ones(1, 3))
    with pytest.raises(ValueError, match="needs at least one of last_attn, keys or hidden"):
        pruning.LayerInputs(text_keys=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"'fastv' needs inputs.last_attn, which is None"):
        pruning.select("fastv", pruning.LayerInputs(keys=torch.ones(4, 2)), 2)


def test_models_the_loop_cannot_drive_are_refused_naming_method_and_model():
    model, processor = tiny_family("qwen2_5_vl")
    qwen = Runner.from_model(model, processor, name="tiny-qwen")
    enc = qwen.encode(random_image(1, (56, 56)))
    with pytest.raises(ValueError, match=r"'fastv' cannot run on 'tiny-qwen' \(qwen2_5_vl\).*M-RoPE"):
        qwen.plan(enc, "fastv", 4)
    bare = SimpleNamespace(get_decoder=lambda: SimpleNamespace())
    with pytest.raises(ValueError, match=r"'dart-llm' cannot run on 'odd' \(llava\).*no layers"):
        check_decoder(bare, "odd", "llava", "dart-llm")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_in_llm_runs_keep_the_stock_answer_and_report_memory(tiny):
    model_cpu, _, processor = tiny
    model = build_model(processor.tokenizer, text_layers=LAYERS)
    model.load_state_dict(model_cpu.state_dict())
    cuda = Runner.from_model(model.to("cuda"), processor, name="tiny-llava-4-cuda")
    enc = cuda.encode(random_image(0))
    full = cuda.generate(enc, PROMPT, None, options())
    for method in IN_LLM:
        assert cuda.generate(enc, PROMPT, cuda.plan(enc, method, N), options()).token_ids == full.token_ids
        pruned = cuda.generate(enc, PROMPT, cuda.plan(enc, method, 5), options())
        length = cuda._prepare_row(enc, PROMPT, None, options()).embeds.shape[0]
        assert pruned.selection.info["cache_lengths"] == [length] * 2 + [length - N + 5] * 2
        assert pruned.timings["peak_memory_mb"] > 0


def test_several_grids_keep_every_newline_and_prune_over_the_whole_image():
    model, processor = tiny_family("llava_next")  # two decoder layers: layer 1 is the only choice
    next_runner = Runner.from_model(model, processor, name="tiny-next")
    enc = next_runner.encode(random_image(2, (90, 50)))
    n = enc.n_tokens
    row = next_runner._prepare_row(enc, PROMPT, next_runner.plan(enc, "fastv", 6, layer=1), options())
    assert torch.equal(row.row.embeds[row.visual_at], enc.inputs.feats)
    full = next_runner.generate(enc, PROMPT, None, options())
    keep_all = next_runner.generate(enc, PROMPT, next_runner.plan(enc, "fastv", n, layer=1), options())
    assert keep_all.token_ids == full.token_ids and keep_all.n_layout_tokens == full.n_layout_tokens > 0
    pruned = next_runner.generate(enc, PROMPT, next_runner.plan(enc, "dart-llm", 6, layer=1), options())
    length = row.row.embeds.shape[0]
    assert pruned.selection.info["cache_lengths"] == [length, length - n + 6]
    assert pruned.n_visual_tokens == 6


@pytest.mark.parametrize("method", ["fastv", "dart-llm"])
@pytest.mark.parametrize(("grid", "k"), [((6, 6), 4), ((6, 6), 13), ((7, 5), 30), ((24, 24), 64)])
@pytest.mark.parametrize("seed", [0, 1])
def test_in_llm_rules_equal_their_plain_transcriptions_on_benchmark_states(method, grid, k, seed):
    """The states ``benchmarks.selection`` times: the registered rule keeps what the plain one does."""
    from benchmarks.selection import Case, layer_inputs, plain_layer

    state = layer_inputs(Case((grid,), 16, 48, 8), seed, "cpu")
    assert pruning.select(method, state, k).keep.tolist() == plain_layer(state, method, k)
