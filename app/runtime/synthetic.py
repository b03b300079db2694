"""Random-weight LLaVA models built in memory: tiny ones for the tests, 7B-shaped ones for benchmarks.

Nothing is downloaded: the tokenizer is a word-level vocabulary built with the ``tokenizers``
library and the chat template mimics LLaVA-1.5's (``USER: <image>\\n{text} ASSISTANT:``).
``build_model`` gives the tests' tiny model (a CLIP tower on 56 px images with 14 px patches: a
4 x 4 grid, N = 16, and a two-layer Llama); ``llava7b_shaped`` gives LLaVA-1.5-7B's shapes with as
few decoder layers as asked, for timing prefill without a checkpoint. Both go through ``random_llava``.
``tiny_family(family)`` gives the other families' tiny models with their processors (LLaVA-NeXT:
56 px crops on up to 2 x 2 pinpoints, N <= 80; LLaVA-OneVision: a SigLIP tower on up to 3 x 3
crops, shrunk beyond 4 crops' worth, and a Qwen2 decoder; Qwen2.5-VL: dynamic resolution up to 64
merged tokens of 28 px, window attention with full-attention blocks 1 and 3, and M-RoPE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForImageTextToText,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    SiglipVisionConfig,
)

from .adapters import ImageTextProcessor

IMAGE_SIZE = 56
PATCH_SIZE = 14
GRID = (IMAGE_SIZE // PATCH_SIZE, IMAGE_SIZE // PATCH_SIZE)  # (4, 4)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = (
    "USER ASSISTANT : . , ? ! a an the is are what where which how many colour color of in on at "
    "image picture photo describe this that please detail cat dog car red green blue sky tree "
    "house person left right top bottom small large one two three four there here and or not"
).split()

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def word_level_tokenizer(
    tokens: Sequence[str], *, chat_template: str, cleanup: bool, **settings: Any
) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``tokens`` (``<unk> <s> </s> <pad> <image>`` first).

    ``cleanup`` is the decoder's clean-up of spaces before punctuation; ``settings`` go to
    ``PreTrainedTokenizerFast`` (e.g. ``add_bos_token``, ``model_max_length``). The one tokenizer
    builder of the tests' tiny model and the embedded model (``scenes.tokenizer``).
    """
    core = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(tokens)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=cleanup)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        **settings,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The tests' word-level tokenizer over ``SPECIAL_TOKENS + WORDS``; it prepends ``<s>``."""
    return word_level_tokenizer(SPECIAL_TOKENS + WORDS, chat_template=CHAT_TEMPLATE, cleanup=False, add_bos_token=True)


def llava_processor(
    tokenizer: PreTrainedTokenizerFast, *, image_size: int, patch_size: int, chat_template: str
) -> LlavaProcessor:
    """A LlavaProcessor: CLIP image processing at ``image_size`` (resize the short side, centre
    crop) and ``tokenizer``, [CLS] dropped; the one processor builder of the tests, the benchmarks
    and the embedded model (``scenes.tokenizer``)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        do_resize=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
) -> LlavaProcessor:
    """A LlavaProcessor with a CLIP image processor at ``image_size`` and the tiny tokenizer."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    return llava_processor(tokenizer, image_size=image_size, patch_size=patch_size, chat_template=CHAT_TEMPLATE)


def random_llava(
    tokenizer: PreTrainedTokenizerFast,
    vision: dict,
    text: dict,
    *,
    seed: int = 0,
    select_strategy: str = "default",
    attn_implementation: str | None = None,
) -> LlavaForConditionalGeneration:
    """A LLaVA with random weights: a CLIP tower of ``vision`` and a Llama LM of ``text`` (config kwargs).

    Feature layer -2, the image token and the special ids from ``tokenizer``; float32, eval mode.
    """
    vision_config = CLIPVisionConfig(**vision)
    text_config = LlamaConfig(
        **text,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    side = vision_config.image_size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=side * side,
        vision_feature_layer=-2,
        vision_feature_select_strategy=select_strategy,
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.eval()


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    vision_layers: int = 3,
    text_layers: int = 2,
    select_strategy: str = "default",
    attn_implementation: str = "sdpa",
) -> LlavaForConditionalGeneration:
    """The tests' tiny random LLaVA: a 4 x 4-patch CLIP tower and a small Llama LM, float32, eval mode.

    The text initialiser range is large so that greedy decoding has clear logit margins.
    """
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": 4,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "projection_dim": 32,
    }
    text = {
        "hidden_size": 48,
        "intermediate_size": 96,
        "num_hidden_layers": text_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 256,
        "initializer_range": 0.3,
    }
    return random_llava(
        tokenizer, vision, text, seed=seed, select_strategy=select_strategy, attn_implementation=attn_implementation
    )


CLIP_SPECIALS = ["!", "<unk>", "<|startoftext|>", "<|endoftext|>"]  # CLIP pads with id 0 ("!")


def build_clip(llava: LlavaForConditionalGeneration, *, seed: int = 1, positions: int = 8) -> tuple[Any, Any]:
    """A tiny random CLIP (model, tokenizer) whose vision half is ``llava``'s tower, weight for weight.

    The text half is random, with ``positions`` text positions (CLIP has 77), so the tests' longer
    questions span several segments. The tokenizer is word-level over ``WORDS`` and wraps a text in
    ``<|startoftext|>`` and ``<|endoftext|>`` as CLIP's does; the text model pools at the latter.
    """
    tokens = CLIP_SPECIALS + WORDS
    core = Tokenizer(models.WordLevel(vocab={tok: i for i, tok in enumerate(tokens)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokens.index(bos)), (eos, tokens.index(eos))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos, unk_token="<unk>")
    vision = llava.config.vision_config.to_dict() | {"projection_dim": 16}
    text = {"hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "vocab_size": len(tokens), "max_position_embeddings": positions, "bos_token_id": tokens.index(bos),
            "eos_token_id": tokens.index(eos), "pad_token_id": 0, "projection_dim": 16}  # fmt: skip
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    clip = CLIPModel(config).eval()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    return clip, tokenizer


# LLaVA-1.5-7B's shapes (llava-hf/llava-1.5-7b-hf config): CLIP ViT-L/14 at 336 px, a 7B Llama.
VISION_7B = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "image_size": 336,
             "patch_size": 14, "projection_dim": 768}  # fmt: skip
TEXT_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096}  # fmt: skip


def llava7b_shaped(layers: int, vision_layers: int) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(model, processor): random weights in LLaVA-1.5-7B's shapes, ``layers`` decoder layers only."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, image_size=VISION_7B["image_size"], patch_size=VISION_7B["patch_size"])
    model = random_llava(
        tokenizer, {**VISION_7B, "num_hidden_layers": vision_layers}, {**TEXT_7B, "num_hidden_layers": layers}
    )
    return model, processor


# -- the other families' tiny models -------------------------------------------------------------

NEXT_PINPOINTS = ((56, 112), (112, 56), (112, 112))  # (height, width): up to 2 x 2 crops of 56 px

TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "image_size": IMAGE_SIZE,
               "patch_size": PATCH_SIZE}  # fmt: skip
TINY_TEXT = {"hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 512, "initializer_range": 0.3}  # fmt: skip


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _finish(model: Any, tokenizer: PreTrainedTokenizerFast) -> Any:
    for key, value in _special_ids(tokenizer).items():
        setattr(model.generation_config, key, value)
    return model.eval()


def llava_next_processor(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    pinpoints: Sequence[Sequence[int]] = NEXT_PINPOINTS,
) -> LlavaNextProcessor:
    """A LlavaNextProcessor: anyres crops of ``image_size`` on ``pinpoints``, [CLS] dropped."""
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=[list(p) for p in pinpoints],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_next_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    vision_layers: int = 3,
    text_layers: int = 2,
    pinpoints: Sequence[Sequence[int]] = NEXT_PINPOINTS,
) -> LlavaNextForConditionalGeneration:
    """A tiny random LLaVA-NeXT: a 4 x 4-patch CLIP tower per 56 px crop and a small Llama, float32."""
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION, num_hidden_layers=vision_layers, projection_dim=32),
        text_config=LlamaConfig(
            **TINY_TEXT, num_hidden_layers=text_layers, vocab_size=len(tokenizer), **_special_ids(tokenizer)
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[list(p) for p in pinpoints],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    return _finish(AutoModelForImageTextToText.from_config(config), tokenizer)


TINY_FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_5_vl")
ONEVISION_PINPOINTS = ((56, 56), (56, 112), (112, 56), (112, 112), (56, 168), (168, 56), (168, 168))
ONEVISION_ASPECT = "anyres_max_4"  # a 3 x 3 grid of crops is shrunk to about 4 crops' worth


def onevision_processor(
    tokenizer: PreTrainedTokenizerFast,
    *,
    image_size: int = IMAGE_SIZE,
    pinpoints: Sequence[Sequence[int]] = ONEVISION_PINPOINTS,
) -> ImageTextProcessor:
    """LLaVA-OneVision's image processor at ``image_size`` and the tokenizer (the processor class itself
    needs torchvision for its video half)."""
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=[list(p) for p in pinpoints]
    )
    return ImageTextProcessor(image_processor, tokenizer, CHAT_TEMPLATE)


def build_onevision_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    seed: int = 0,
    vision_layers: int = 3,
    text_layers: int = 2,
    pinpoints: Sequence[Sequence[int]] = ONEVISION_PINPOINTS,
    aspect_ratio: str = ONEVISION_ASPECT,
) -> Any:
    """A tiny random LLaVA-OneVision: a 4 x 4-patch SigLIP tower per 56 px crop and a small Qwen2, float32."""
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**TINY_VISION, num_hidden_layers=vision_layers),
        text_config=Qwen2Config(
            **TINY_TEXT, num_hidden_layers=text_layers, vocab_size=len(tokenizer), **_special_ids(tokenizer)
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_WORD),
        image_grid_pinpoints=[list(p) for p in pinpoints],
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=aspect_ratio,
    )
    torch.manual_seed(seed)
    return _finish(AutoModelForImageTextToText.from_config(config), tokenizer)


VIDEO_WORD = "<video>"  # a vocabulary entry no prompt produces: OneVision's video placeholder, never used


def onevision_tokenizer() -> PreTrainedTokenizerFast:
    """The tests' tokenizer with one more entry for OneVision's (unused) video placeholder."""
    return word_level_tokenizer(
        [*SPECIAL_TOKENS, *WORDS, VIDEO_WORD], chat_template=CHAT_TEMPLATE, cleanup=False, add_bos_token=True
    )


QWEN_MAX_TOKENS = 64  # the tiny processor's pixel limit, in merged 28 px tokens


def qwen_processor(tokenizer: PreTrainedTokenizerFast, *, max_tokens: int = QWEN_MAX_TOKENS) -> ImageTextProcessor:
    """Qwen2-VL's image processor (14 px patches merged 2 x 2, at most ``max_tokens`` merged tokens)
    and the tokenizer (the processor class itself needs torchvision for its video half)."""
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=4 * 28 * 28, max_pixels=max_tokens * 28 * 28, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return ImageTextProcessor(image_processor, tokenizer, CHAT_TEMPLATE)


def build_qwen_model(
    tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, vision_layers: int = 4, text_layers: int = 2
) -> Any:
    """A tiny random Qwen2.5-VL: a 4-block window-attention tower (blocks 1 and 3 full) and a small decoder."""
    vision = {"depth": vision_layers, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 48,
              "fullatt_block_indexes": [1, vision_layers - 1]}  # fmt: skip
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]}  # head_dim 12: 6 pairs
    text = {**TINY_TEXT, "num_hidden_layers": text_layers, "vocab_size": len(tokenizer), "rope_parameters": rope}
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config={**text, **_special_ids(tokenizer)},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_WORD),
    )
    torch.manual_seed(seed)
    return _finish(AutoModelForImageTextToText.from_config(config), tokenizer)


def tiny_family(family: str, *, seed: int = 0) -> tuple[Any, Any]:
    """(model, processor) of a tiny random model of ``family`` (a registered ``config.model_type``)."""
    tokenizer = build_tokenizer()
    if family == "llava":
        return build_model(tokenizer, seed=seed), build_processor(tokenizer)
    if family == "llava_next":
        return build_next_model(tokenizer, seed=seed), llava_next_processor(tokenizer)
    if family == "llava_onevision":
        tokenizer = onevision_tokenizer()
        return build_onevision_model(tokenizer, seed=seed), onevision_processor(tokenizer)
    if family == "qwen2_5_vl":
        tokenizer = onevision_tokenizer()
        return build_qwen_model(tokenizer, seed=seed), qwen_processor(tokenizer)
    raise ValueError(f"no tiny model of family {family!r}; known: {', '.join(TINY_FAMILIES)}")
