"""The half of an adapter every family shares: the chat prompt around one image placeholder, and embeddings.

``ChatModel`` is a mixin: an adapter calls ``bind(model, processor, name)`` once its config is checked,
and gets the prompt rendering (the user's text is data for the chat template, never a template, and
may not spell a special token), the prompt's ids with exactly one image placeholder, the input
embeddings and the end-of-answer and padding ids. What it needs from the model is only public:
``config.image_token_id``, ``config.text_config.max_position_embeddings``, ``generation_config`` and
``get_input_embeddings``; from the processor, a tokenizer and a chat template.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["ChatModel"]


class ChatModel:
    """Prompt ids and embeddings of a chat vision-language model (mixed into each family's adapter).

    Attributes (set by ``bind``): ``model``, ``processor``, ``tokenizer``, ``name``,
    ``image_token_id`` / ``image_token`` (the placeholder the chat template emits once per image),
    ``context_length`` (the language model's maximum number of positions).
    """

    model: Any
    processor: Any
    tokenizer: Any
    name: str
    image_token_id: int
    image_token: str
    context_length: int

    def bind(self, model: Any, processor: Any, name: str) -> None:
        """Take the model and its processor, refusing a processor without a tokenizer or chat template."""
        for part in ("image_processor", "tokenizer"):
            if getattr(processor, part, None) is None:
                raise ValueError(f"the processor of {name!r} has no {part}; pass the model's own processor")
        if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
            raise ValueError(f"the processor of {name!r} has no chat template; PruneLens formats prompts with it")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.image_token_id = int(model.config.image_token_id)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        processor_token = getattr(processor, "image_token", self.image_token)
        if processor_token != self.image_token:
            raise ValueError(
                f"the processor's image token {processor_token!r} is not the model's image token "
                f"{self.image_token!r} (id {self.image_token_id})"
            )
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self._reserved = sorted(
            {str(t) for t in self.tokenizer.all_special_tokens}
            | {t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special}
        )

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def eos_token_ids(self) -> list[int]:
        """Token ids that end an answer (generation config first, then the tokenizer)."""
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def pad_token_id(self) -> int:
        """Id used to pad batched generations (pad, else the first end-of-answer id, else 0)."""
        for candidate in (self.model.generation_config.pad_token_id, self.tokenizer.pad_token_id):
            if candidate is not None:
                return int(candidate)
        eos = self.eos_token_ids()
        return eos[0] if eos else 0

    # -- prompt -> ids -> embeddings -----------------------------------------------------------

    def render_prompt(self, prompt: str) -> str:
        """The chat-template text of one user turn holding the image then ``prompt``.

        The user's text is data for the template (never a template itself); text that spells one
        of the tokenizer's special tokens is refused, since it would be read as that token.
        """
        found = [tok for tok in self._reserved if tok and tok in prompt]
        if found:
            raise ValueError(
                f"the prompt contains the reserved token(s) {found} (e.g. {self.image_token!r} is where the "
                "image goes); remove them from the question"
            )
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """(T,) token ids of the rendered prompt with exactly one image placeholder."""
        text = self.render_prompt(prompt)
        bos = self.tokenizer.bos_token
        # Some templates (gemma's) already start with BOS; the tokenizer must not add a second one.
        add_special = not (bos and text.startswith(bos))
        ids = self.tokenizer(text, add_special_tokens=add_special, return_tensors="pt")["input_ids"][0]
        n_image = int((ids == self.image_token_id).sum())
        if n_image != 1:
            raise ValueError(f"the chat template of {self.name!r} produced {n_image} image placeholders, expected 1")
        return ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(T,) ids -> (T, D) input embeddings of the language model."""
        return self.model.get_input_embeddings()(ids.to(self.device))
