"""Pruning inside the language model (FastV, DART at layer K): a prefill and a decode loop, layer by layer.

An in-LLM method picks its visual tokens from the language model's own state at decoder layer K
(its ``layer`` parameter), so what it keeps depends on the prompt. ``plan_request`` checks such a
request up front (an ``InLLMPlan``, what ``Runner.plan`` returns); ``run_plan`` answers it and
returns the ``Generation`` with the selection the method made (``Generation.selection``).
Everything goes through the model's public pieces: its decoder (``model.get_decoder()``) and that
decoder's layers, rotary embedding and final norm, the output embeddings, the library's
``DynamicCache`` and ``create_causal_mask``. Nothing in transformers is assigned to or replaced.

* **Prefill.** The whole prompt, every visual token in it, runs through layers 0 … K − 1, which
  cache every token. Layer K − 1's cached keys (as its attention used them, after the rotary
  embedding) and, for FastV, the last prompt token's query, recomputed from that layer's own
  input norm and q projection and the model's rotary embedding, give the attention row
  (softmax(q·kᵀ·scale) per head, in float32, averaged over heads); the hidden states leaving the
  layer, through the decoder's final norm, give DART's cosines. The method picks B visual tokens
  (B: the budget); layers K … n − 1 run on the kept sequence only (every text and prefix token,
  every newline, the B kept visual tokens, in sequence order) at their original positions:
  position ids and rotary phases are those of the whole prompt, never renumbered. Those layers
  cache only the kept tokens.
* **Decoding.** New token t sits at position L + t, L being the whole prompt's length (what the
  stock model gives it), and every layer appends it to its own cache. Layer caches differ in
  length (L + t before layer K, L' + t from it), so each step sizes two masks, one against a
  cache layer below K and one against layer K (``create_causal_mask(..., layer_idx=...)``).
  Greedy picks the largest logit; sampling applies ``generate``'s warpers (temperature, top-k,
  top-p: the options', else the model's generation config, else generate's defaults) and draws
  with ``torch.multinomial`` under the options' seed, as ``generate`` does.

Rows run one at a time: caches of different lengths per layer do not fit the one batched
``generate`` call. Models whose positions (M-RoPE: ``Runner.check_method``) or decoder
(``check_decoder``) this loop does not know are refused, naming the method, the model and why.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.streamers import BaseStreamer
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaAttention, apply_rotary_pos_emb
from transformers.models.mistral.modeling_mistral import MistralAttention
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention

import pruning

from .generation import Row, TokenClock, oom_guard, row_generation, seeded, sync
from .records import Encoding, Generation, GenerationOptions

__all__ = ["InLLMPlan", "PlanRow", "check_decoder", "plan_request", "prefill", "run_plan"]

# Decoders whose attention is the rotary-embedding one this module recomputes the query of:
# q_proj, per-head split, the Llama rotation; no q/k norm, no soft-capping.
KNOWN_ATTENTION = (LlamaAttention, MistralAttention, Qwen2Attention)
GENERATE_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # generate's when nothing sets them


@dataclass(frozen=True)
class InLLMPlan:
    """A checked request for an in-LLM method: what ``generate`` will run, before any token is chosen.

    Attributes:
        method: the registry name (an ``"in-llm"`` method).
        budget: visual tokens kept from decoder layer ``layer`` on, clipped to N.
        layer: K, the first decoder layer that sees only the kept tokens (layers before it see all N).
        params: every keyword parameter of the method, defaults filled in (``layer`` among them).
        requested_budget: the budget as asked.
        model: the runner's model name; n_tokens: N of the encoding it was made for.
    """

    method: str
    budget: int
    layer: int
    params: dict[str, Any]
    requested_budget: int
    model: str
    n_tokens: int


@dataclass(frozen=True)
class PlanRow:
    """One in-LLM request ready to run: the whole prompt, and where its visual tokens sit in it."""

    row: Row  # embeds: the prompt with every visual token; n_visual: prefix + kept (from layer K on)
    plan: InLLMPlan
    visual_at: torch.Tensor  # (N,) position of each visual token (encoding order) in row.embeds
    text_from: int  # first position after the image: DART's text tokens run from here to the end


@dataclass
class Prefill:
    """What a pruned prefill leaves for decoding (and for tests)."""

    cache: DynamicCache
    logits: torch.Tensor  # (V,) float32 next-token logits at the last prompt position
    selection: pruning.Selection
    kept: torch.Tensor  # (L',) the prompt positions layers >= K see, ascending
    length: int  # L, the whole prompt: the first new token's position
    hidden_states: tuple[torch.Tensor, ...] | None  # the input of every layer, then the final norm's output


def check_decoder(model: Any, name: str, family: str, method: str) -> None:
    """Refuse ``method`` on a model whose decoder the in-LLM loop does not know, naming both."""
    where = f"method {method!r} cannot run on {name!r} ({family}): it prunes inside the language model, and"
    decoder = model.get_decoder()
    if not all(hasattr(decoder, part) for part in ("layers", "norm", "rotary_emb")):
        raise ValueError(f"{where} this model's decoder has no layers, final norm and rotary embedding to drive")
    attention = decoder.layers[0].self_attn
    if not isinstance(attention, KNOWN_ATTENTION):
        known = ", ".join(cls.__name__ for cls in KNOWN_ATTENTION)
        raise ValueError(
            f"{where} its decoder's attention is {type(attention).__name__}, whose query PruneLens does not "
            f"recompute (it knows {known})"
        )
    kinds = set(getattr(decoder.config, "layer_types", None) or ["full_attention"])
    if kinds != {"full_attention"}:
        raise ValueError(f"{where} its decoder has {sorted(kinds)} layers; the in-LLM loop drives full attention only")


def plan_request(
    spec: pruning.MethodSpec, n_layers: int, name: str, encoding: Encoding, budget: Any, params: dict[str, Any]
) -> InLLMPlan:
    """Check an in-LLM request: the budget and parameters by the registry, the layer against the model.

    The layer must leave at least one layer before it (K >= 1: FastV reads layer K − 1) and be a
    layer of the model (K <= n_layers − 1).
    """
    requested, params = spec.check_request(budget, params)
    layer = params["layer"]
    if not 1 <= layer < n_layers:
        raise ValueError(
            f"layer must be in [1, {n_layers - 1}] for {name!r} ({n_layers} decoder layers): layer K is the first "
            f"that sees only the kept tokens and reads layer K − 1; got {layer}"
        )
    n = encoding.n_tokens
    return InLLMPlan(spec.name, min(requested, n), layer, params, requested, name, n)


def plan_row(row: Row, plan: InLLMPlan, encoding: Encoding, span: int) -> PlanRow:
    """``row`` (the prompt with the image's ``span`` embeddings: prefix, every token, newlines) as an in-LLM request.

    Visual token i sits at ``row.image_at`` + P + its place in the image's sequence (P prefix
    tokens first; with several grids, its slot in the encoding's layout, newlines between rows).
    """
    if plan.model != encoding.model or plan.n_tokens != encoding.n_tokens:
        raise ValueError(
            f"the {plan.method!r} plan was made for {plan.model!r} with N = {plan.n_tokens}; this encoding is "
            f"{encoding.model!r} with N = {encoding.n_tokens}: make the plan with Runner.plan for this encoding"
        )
    start = row.image_at + encoding.prefix.shape[0]
    if encoding.layout is None:
        visual_at = start + torch.arange(encoding.n_tokens)
    else:
        sequence = encoding.layout.sequence.cpu()  # (S,) token index, -1 at a newline
        slots = (sequence >= 0).nonzero().flatten()
        visual_at = torch.empty(encoding.n_tokens, dtype=torch.long)
        visual_at[sequence[slots]] = start + slots
    kept = dataclasses.replace(row, n_visual=encoding.prefix.shape[0] + plan.budget, method=plan.method, select_ms=None)
    return PlanRow(kept, plan, visual_at, row.image_at + span)


def _mask(decoder: Any, h: torch.Tensor, cache: DynamicCache, positions: torch.Tensor, layer: int) -> Any:
    """The causal mask for queries ``h`` against cache layer ``layer`` (its own length), in the decoder's format."""
    return create_causal_mask(
        config=decoder.config,
        inputs_embeds=h,
        attention_mask=None,
        cache=cache,
        position_ids=positions,
        layer_idx=layer,
    )


def _run_layers(
    decoder: Any,
    layers: Any,
    h: torch.Tensor,
    cache: DynamicCache,
    positions: torch.Tensor,
    first: int,
    inputs: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``h`` (1, q, D) at ``positions`` (1, q) through ``layers`` (the decoder's layers ``first``,
    ``first`` + 1, ..., all with caches of one length), appending to ``cache``.

    Returns the output and the rotary embeddings used; ``inputs`` collects each layer's input.
    """
    embeddings = decoder.rotary_emb(h, positions)
    mask = _mask(decoder, h, cache, positions, first)
    for layer in layers:
        if inputs is not None:
            inputs.append(h)
        h = layer(
            h, attention_mask=mask, position_embeddings=embeddings, position_ids=positions, cache=cache, use_cache=True
        )
    return h, embeddings


def _last_attention(layer: Any, h_in: torch.Tensor, keys: torch.Tensor, embeddings: tuple) -> torch.Tensor:
    """(L,) the last position's attention over every position in ``layer``, head-averaged, float32.

    ``h_in`` (1, L, D) is the hidden state entering the layer, ``keys`` (1, kvh, L, hd) its cached keys.
    """
    attention = layer.self_attn
    x = layer.input_layernorm(h_in[:, -1:])  # (1, 1, D)
    q = attention.q_proj(x).view(1, 1, -1, attention.head_dim).transpose(1, 2)  # (1, H, 1, hd)
    cos, sin = (e[:, -1:] for e in embeddings)
    q, _ = apply_rotary_pos_emb(q, q, cos, sin)
    keys = keys.repeat_interleave(attention.num_key_value_groups, dim=1)  # (1, H, L, hd)
    scores = (q @ keys.transpose(2, 3)).float() * attention.scaling  # (1, H, 1, L)
    return torch.softmax(scores, dim=-1).mean(dim=1)[0, 0]  # (L,)


def _layer_inputs(decoder, spec, h_in, h_out, cache, embeddings, visual_at, text_from, layer) -> pruning.LayerInputs:
    """The ``LayerInputs`` the method needs, from layer K − 1 = ``layer`` − 1 of the prefill."""
    below = decoder.layers[layer - 1]
    keys = cache.layers[layer - 1].keys  # (1, kvh, L, hd), after the rotary embedding
    fields: dict[str, torch.Tensor] = {}
    if "last_attn" in spec.needs:
        fields["last_attn"] = _last_attention(below, h_in, keys, embeddings)[visual_at]
    if {"keys", "text_keys"} & set(spec.needs):
        flat = keys[0].transpose(0, 1).flatten(1)  # (L, kvh * hd)
        fields["keys"], fields["text_keys"] = flat[visual_at], flat[text_from:]
    if {"hidden", "text_hidden"} & set(spec.needs):
        normed = decoder.norm(h_out)[0]  # (L, D)
        fields["hidden"], fields["text_hidden"] = normed[visual_at], normed[text_from:]
    return pruning.LayerInputs(**fields)


def prefill(model: Any, plan_row: PlanRow, *, keep_hidden: bool = False) -> Prefill:
    """The pruned prefill of one prompt (module docstring): selection at layer K, then only the kept tokens."""
    plan = plan_row.plan
    spec = pruning.get_method(plan.method)
    decoder = model.get_decoder()
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    k = plan.layer
    h = plan_row.row.embeds.to(model.device)[None]  # (1, L, D)
    length = h.shape[1]
    positions = torch.arange(length, device=h.device)[None]  # (1, L)
    cache = DynamicCache(config=decoder.config)
    inputs: list[torch.Tensor] | None = [] if keep_hidden else None  # every layer's input, for tests
    h_in, embeddings = _run_layers(decoder, layers[: k - 1], h, cache, positions, 0, inputs)  # (1, L, D)
    h_out, _ = _run_layers(decoder, layers[k - 1 : k], h_in, cache, positions, k - 1, inputs)  # all L cached
    visual_at = plan_row.visual_at.to(h.device)
    sync(h.device)
    start = time.perf_counter()
    state = _layer_inputs(decoder, spec, h_in, h_out, cache, embeddings, visual_at, plan_row.text_from, k)
    selection = pruning.select(plan.method, state, plan.requested_budget, **plan.params)
    kept_mask = torch.ones(length, dtype=torch.bool, device=h.device)
    kept_mask[visual_at] = False
    kept_mask[visual_at[selection.keep]] = True
    kept = kept_mask.nonzero().flatten()  # (L',) ascending: the sequence order
    sync(h.device)
    select_ms = (time.perf_counter() - start) * 1e3
    h = h_out.index_select(1, kept)  # (1, L', D)
    h, _ = _run_layers(decoder, layers[k:], h, cache, kept[None], k, inputs)  # original positions, kept only
    h = decoder.norm(h)
    logits = model.get_output_embeddings()(h[:, -1]).float()[0]  # (V,)
    lengths = [cache.get_seq_length(i) for i in range(len(layers))]
    info = {
        **selection.info,
        "layer": k,
        "select_ms": select_ms,
        "positions": visual_at[selection.keep].tolist(),
        "cache_lengths": lengths,
    }
    selection = dataclasses.replace(selection, info=info)
    return Prefill(cache, logits, selection, kept, length, None if inputs is None else (*inputs, h))


def _decode_step(model: Any, embed: Any, cache: DynamicCache, token: int, position: int, layer: int) -> torch.Tensor:
    """(V,) float32 logits after feeding ``token`` at ``position``; every layer appends it to its own cache."""
    decoder = model.get_decoder()
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    h = embed(torch.tensor([token], device=model.device))[None]  # (1, 1, D)
    positions = torch.tensor([[position]], device=h.device)
    h, _ = _run_layers(decoder, layers[:layer], h, cache, positions, 0)  # masks sized against L + t entries
    h, _ = _run_layers(decoder, layers[layer:], h, cache, positions, layer)  # ... and against L' + t
    return model.get_output_embeddings()(decoder.norm(h)[:, -1]).float()[0]


def _warpers(model: Any, options: GenerationOptions) -> LogitsProcessorList:
    """``generate``'s sampling warpers for ``options`` (unset values from the model's generation config)."""
    config = model.generation_config
    value = lambda key: next(
        v for v in (getattr(options, key), getattr(config, key, None), GENERATE_DEFAULTS[key]) if v is not None
    )
    warpers = LogitsProcessorList()
    if value("temperature") != 1.0:
        warpers.append(TemperatureLogitsWarper(value("temperature")))
    if value("top_k") != 0:
        warpers.append(TopKLogitsWarper(top_k=value("top_k"), min_tokens_to_keep=1))
    if value("top_p") < 1.0:
        warpers.append(TopPLogitsWarper(top_p=value("top_p"), min_tokens_to_keep=1))
    return warpers


def run_plan(
    adapter: Any,
    encoding: Encoding,
    plan_row: PlanRow,
    options: GenerationOptions,
    *,
    streamer: BaseStreamer | None = None,
    cancel: threading.Event | None = None,
) -> Generation:
    """Answer one in-LLM request: the pruned prefill, then one token at a time until an end token,
    ``max_new_tokens`` or ``cancel`` (checked after every token, as the stock path's stopping rule)."""
    model, device = adapter.model, adapter.device
    eos = set(adapter.eos_token_ids())
    clock = TokenClock(streamer)
    ids: list[int] = []
    length = plan_row.row.embeds.shape[0]
    with oom_guard(device, f"generating with {plan_row.plan.method} ({length} positions)"), torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        clock.start = time.perf_counter()
        try:
            with seeded(options.seed, device):
                clock.put(torch.empty(1, 0, dtype=torch.long))  # generate's streamers get the prompt first
                pre = prefill(model, plan_row)
                warpers = _warpers(model, options) if options.do_sample else None
                logits = pre.logits
                for step in range(options.max_new_tokens):
                    if warpers is None:
                        token = int(torch.argmax(logits))
                    else:
                        scores = warpers(torch.tensor([ids], dtype=torch.long, device=device), logits[None])
                        token = int(torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1))
                    ids.append(token)
                    clock.put(torch.tensor([token]))
                    stop = token in eos or (cancel is not None and cancel.is_set())
                    if stop or step + 1 == options.max_new_tokens:
                        break
                    logits = _decode_step(
                        model, adapter.embed, pre.cache, token, pre.length + step, plan_row.plan.layer
                    )
        finally:
            clock.end()
        sync(device)
        clock.stop = time.perf_counter()
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    select_ms = pre.selection.info["select_ms"]
    row = dataclasses.replace(plan_row.row, select_ms=select_ms)
    gen = row_generation(adapter, encoding, row, ids, clock, peak_mb, 1, cancel is not None and cancel.is_set())
    timings = {**gen.timings, "total_ms": encoding.encode_ms + (clock.stop - clock.start) * 1e3}  # select is inside
    return dataclasses.replace(gen, timings=timings, selection=pre.selection)
