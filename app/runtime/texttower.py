"""The question in a CLIP tower's joint image–text space: what CDPruner weighs the visual tokens by.

CDPruner scores each visual token by how it relates to the question in the space where CLIP
trained its image and text towers to meet. A LLaVA checkpoint holds only CLIP's vision half, and
not its projection into that space, so the text half and both projections come from the CLIP
checkpoint the tower came from (``openai/clip-vit-large-patch14-336`` for LLaVA-1.5 and
LLaVA-NeXT): ``load_runner(..., text_tower=...)``, ``python app.py --text-tower ...``.

* **Patch embeddings E** (``PruneInputs.patch_embeds``): the feature layer's patch states V (the
  tower's own, [CLS] dropped) through CLIP's vision post-layernorm and visual projection, in
  float32, as the authors compute them. Added to every encoding the runner makes.
* **Text embeddings T** (``PruneInputs.text_embeds``): the question tokenised whole by CLIP's
  tokenizer (no truncation), right-padded with id 0 (attention mask 0) to a multiple of the text
  model's positions (77 for CLIP) and cut into segments of that length, each through the text model
  and its projection: one row per segment, as the authors do it.
* **The question** is the prompt as typed, less LLaVA's short-answer instruction ("Answer the
  question using a single word or phrase."), which the authors remove before encoding it.

``load_text_tower`` refuses a checkpoint that is not a CLIP model, a model whose tower is not a
CLIP tower (SigLIP, Qwen2.5-VL's), and a CLIP whose vision weights are not the model's tower: a
tower trained on after CLIP has left the joint space, and CDPruner's relevance would mean nothing.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["SHORT_ANSWER", "TextTower", "check_same_tower", "load_text_tower", "question_text"]

SHORT_ANSWER = "Answer the question using a single word or phrase."
_SHORT_ANSWER = re.compile(r"\s*" + re.escape(SHORT_ANSWER))
CACHE_SIZE = 64  # questions whose text embeddings a tower keeps


def question_text(prompt: str) -> str:
    """The text CDPruner encodes for ``prompt``: the prompt less the short-answer instruction, stripped."""
    if not isinstance(prompt, str):
        raise ValueError(f"the question must be a string, got {type(prompt).__name__}")
    text = _SHORT_ANSWER.sub("", prompt).strip()
    if not text:
        raise ValueError("the question is empty: CDPruner needs a question to weigh the visual tokens by")
    return text


def check_same_tower(clip_vision: torch.nn.Module, tower: torch.nn.Module, text_tower: str, model: str) -> None:
    """Refuse ``clip_vision`` (a CLIP checkpoint's vision half) unless its weights are ``tower``'s.

    Every weight the two share by name must have one shape and the same values, up to the rounding
    of the model's dtype (relative 1e-2, absolute 1e-3: float16 and bfloat16 copies of CLIP pass, a
    tower trained any further does not); the patch embedding must be among them.
    """
    own, theirs = tower.state_dict(), clip_vision.state_dict()
    shared = sorted(set(own) & set(theirs))
    if "embeddings.patch_embedding.weight" not in shared:
        raise ValueError(
            f"the text tower {text_tower!r} has no vision weights in common with {model!r}'s tower: "
            "give the CLIP checkpoint the tower came from"
        )
    for key in shared:
        a, b = own[key], theirs[key]
        same = a.shape == b.shape and torch.allclose(
            a.detach().float().cpu(), b.detach().float().cpu(), rtol=1e-2, atol=1e-3
        )
        if not same:
            what = f"shape {tuple(b.shape)} against {tuple(a.shape)}" if a.shape != b.shape else "other values"
            raise ValueError(
                f"the text tower {text_tower!r} is not the CLIP {model!r}'s vision tower came from: its {key} has "
                f"{what}. CDPruner needs the joint image-text space of the very tower the model uses "
                "(for LLaVA-1.5 and LLaVA-NeXT: openai/clip-vit-large-patch14-336)"
            )


class TextTower:
    """CLIP's text half and its projections, for the CDPruner inputs of one model.

    Thread-safe: the only shared mutable state is the cache of text embeddings per question.

    Attributes:
        name: the checkpoint as given (a hub id, or a folder's name).
        positions: the text model's positions: the segment length of a long question.
    """

    def __init__(self, clip: Any, tokenizer: Any, *, name: str, device: torch.device) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.text_model = clip.text_model.to(device=device, dtype=torch.float32).eval()
        self.text_projection = clip.text_projection.to(device=device, dtype=torch.float32).eval()
        self.post_layernorm = clip.vision_model.post_layernorm.to(device=device, dtype=torch.float32).eval()
        self.visual_projection = clip.visual_projection.to(device=device, dtype=torch.float32).eval()
        self.positions = int(clip.config.text_config.max_position_embeddings)
        self.device = device
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @torch.inference_mode()
    def patch_embeds(self, feats_pre: torch.Tensor) -> torch.Tensor:
        """E: (N, C) feature-layer patch states -> (N, P) float32 in the joint space."""
        return self.visual_projection(self.post_layernorm(feats_pre.to(self.device, torch.float32)))

    @torch.inference_mode()
    def text_embeds(self, prompt: str) -> torch.Tensor:
        """T: (M, P) float32, one row per ``positions``-token segment of ``question_text(prompt)``. Cached."""
        question = question_text(prompt)
        with self._lock:
            hit = self._cache.get(question)
            if hit is not None:
                self._cache.move_to_end(question)
                return hit
        enc = self.tokenizer(text=question, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (1, L)
        n_segments = (ids.shape[1] - 1) // self.positions + 1
        pad = n_segments * self.positions - ids.shape[1]
        ids, mask = (torch.cat([t, t.new_zeros((1, pad))], dim=1).reshape(-1, self.positions) for t in (ids, mask))
        pooled = self.text_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).pooler_output
        embeds = self.text_projection(pooled)  # (M, P)
        with self._lock:
            self._cache[question] = embeds
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return embeds


def load_text_tower(
    source: str | Path, folder: Path, tower: torch.nn.Module, *, model: str, family: str, device: torch.device
) -> TextTower:
    """CLIP's text half for ``model``'s vision ``tower``, from ``folder`` (where ``source``, a hub id or
    a folder, lies on disk). Named like a model: a folder by its name, a hub id as given.

    Raises ``ValueError`` when the model's tower is not a CLIP tower, when the checkpoint is not a
    CLIP model, or when its vision half is not the model's tower (``check_same_tower``).
    """
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    if type(tower).__name__ != "CLIPVisionModel":
        raise ValueError(
            f"a text tower needs a CLIP vision tower; {model!r} ({family}) has {type(tower).__name__}, whose "
            "text half PruneLens does not load: CDPruner cannot run on it"
        )
    where = Path(folder)
    name = Path(source).name if Path(source).is_dir() else str(source)
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"the text tower {str(source)!r} has no readable model config: {err}") from None
    if config.model_type != "clip":
        raise ValueError(
            f"the text tower must be a CLIP checkpoint (model_type 'clip', both halves), got {config.model_type!r} "
            f"from {str(source)!r}"
        )
    clip = CLIPModel.from_pretrained(where, local_files_only=True, dtype=torch.float32)
    check_same_tower(clip.vision_model, tower, name, model)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    return TextTower(clip, tokenizer, name=name, device=device)
