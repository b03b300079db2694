"""Architecture of the embedded tiny LLaVA: one documented config dataclass and its builder.

The structure is exactly LLaVA-1.5's: a CLIP vision tower at 336 px with 14 px patches (577 tokens:
[CLS] + a 24×24 grid), ``vision_feature_layer=-2`` with the ``default`` select strategy (576 patch
tokens reach the LLM), LLaVA's two-layer GELU MLP projector, and a Llama decoder. Only the widths
and depths are small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from scenes.tokenizer import IMAGE_TOKEN, PATCH_SIZE
from scenes.vocabulary import IMAGE_SIZE

__all__ = ["ModelConfig", "build_model", "grid_size"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the tiny LLaVA.

    Attributes:
        vision_hidden: CLIP hidden width C.
        vision_layers: CLIP encoder layers (the LLM reads layer ``vision_layers - 1``'s output).
        vision_heads: CLIP attention heads.
        text_hidden: Llama hidden width D (the projector maps C → D).
        text_layers: Llama decoder layers.
        text_heads: Llama attention heads (also its key/value heads).
        text_intermediate: Llama MLP width.
        max_positions: Llama maximum sequence length.
    """

    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 688
    max_positions: int = 1024


def grid_size() -> tuple[int, int]:
    """(rows, cols) of the patch grid: (24, 24)."""
    side = IMAGE_SIZE // PATCH_SIZE
    return side, side


def build_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, *, seed: int = 0
) -> LlavaForConditionalGeneration:
    """A freshly initialised float32 ``LlavaForConditionalGeneration`` of sizes ``cfg``.

    Initialisation is seeded with ``seed`` through a local ``torch.Generator`` fork, so the global
    RNG state of the caller is left as it was.
    """
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=4 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=cfg.vision_hidden,
        hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    rows, cols = grid_size()
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=rows * cols,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model
