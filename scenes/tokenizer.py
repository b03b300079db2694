"""The tiny model's word-level tokenizer, chat template and LLaVA processor.

The vocabulary is closed: every word of every canonical prompt and answer of ``scenes.tasks``
plus the chat words and special tokens, and ``<unk>`` for anything else. Whitespace is not a
token (the pre-tokenizer splits on spaces and punctuation), and the decoder re-joins words with
spaces and removes the space before punctuation, so decoded answers read naturally.

The chat template mimics LLaVA-1.5's ``USER: <image>\\n{prompt} ASSISTANT: {answer}</s>`` and
starts with ``<s>`` itself, so the tokenizer adds no special tokens of its own: both
``processor.apply_chat_template(..., tokenize=True)`` and ``processor(text=templated, ...)`` give
exactly one ``<s>``.
"""

from __future__ import annotations

import re

from transformers import LlavaProcessor, PreTrainedTokenizerFast

from app.runtime.synthetic import llava_processor, word_level_tokenizer
from scenes.tasks import CAPTION_PROMPT, WORD_PROMPT, color_prompt, count_prompt, existence_prompt
from scenes.vocabulary import COLORS, COUNT_WORDS, IMAGE_SIZE, MAX_OBJECTS, SHAPES, WORDS

__all__ = [
    "CHAT_TEMPLATE",
    "IMAGE_TOKEN",
    "PATCH_SIZE",
    "SPECIAL_TOKENS",
    "build_processor",
    "build_tokenizer",
]

PATCH_SIZE = 14
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""LLaVA-1.5 style: ``<s>USER: <image>\\n{text} ASSISTANT: {answer}</s>``; generation prompt
``ASSISTANT:``."""

_WORD_SPLIT = re.compile(r"\w+|[^\w\s]+")


def _words() -> list[str]:
    """Every non-special token, in a fixed order: chat words, then the sorted task vocabulary."""
    texts = [CAPTION_PROMPT, WORD_PROMPT, "The word", "Yes No", ", . ?", " ".join(WORDS)]
    for shape in SHAPES:
        texts += [existence_prompt(shape), color_prompt(shape), count_prompt(shape), shape + "s"]
        texts += [existence_prompt(shape, color) for color in COLORS]
    texts += [f"a an {c}" for c in COLORS]
    texts += [" ".join(COUNT_WORDS), " ".join(w.capitalize() for w in COUNT_WORDS) + " A An and"]
    texts += [" ".join(str(i) for i in range(MAX_OBJECTS + 1))]
    found = {tok for text in texts for tok in _WORD_SPLIT.findall(text)}
    chat = ["USER", "ASSISTANT", ":"]
    return chat + sorted(found - set(chat))


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The word-level tokenizer over ``SPECIAL_TOKENS`` + the task vocabulary, with the chat template."""
    tokens = list(SPECIAL_TOKENS) + _words()
    return word_level_tokenizer(tokens, chat_template=CHAT_TEMPLATE, cleanup=True, model_max_length=1024)


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaProcessor:
    """A ``LlavaProcessor``: CLIP image processing at 336 px (CLIP mean/std) + the tokenizer.

    ``<image>`` in the text expands to 576 image tokens (24×24 patches, [CLS] dropped).
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    return llava_processor(tokenizer, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, chat_template=CHAT_TEMPLATE)
