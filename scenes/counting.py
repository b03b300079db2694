"""Counting diagnostics for the embedded model: ``python -m scenes.counting``.

Counting is the hardest of the embedded model's quality targets (its model card), and these are the
measurements that check the two parts of the recipe that serve it (``scenes.train``: the stage-1
anchor target and the count shares of head ``COUNT_HEAD``):

- ``confusion``: what the model answers to "How many {shape}s are there?" per true count, from
  the answers ``python -m scenes.evaluate --json`` wrote.
- ``attention``: where one head of each supervised decoder layer looks from the token that
  predicts a count, per true count: its attention on ``<s>`` and on the named shape's patches.
  The default ``--head`` is the recipe's ``scenes.train.COUNT_HEAD`` (1), whose share target asks
  for 1 / (n + 1) on ``<s>``.
- ``anchors``: how well a stage-1 tower trained with an anchor target marks one patch per object:
  per complexity level, how often the patch its anchor head scores highest within an object is
  that object's anchor (``scenes.data.patch_anchors``). Reads a checkpoint from or after stage 1
  (``--run-dir``/checkpoint.pt), whose heads are thrown away at export.

Examples::

    python -m scenes.evaluate --n 500 --json /tmp/eval.json && python -m scenes.counting confusion /tmp/eval.json
    python -m scenes.counting attention --model assets/models/prunelens-tiny-llava --n 200
    python -m scenes.counting anchors runs/prunelens-tiny-llava/checkpoint.pt --n 200
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast

from scenes.data import pack_sequences, patch_labels, patch_owners, pixel_tensor, vision_batch
from scenes.evaluate import COUNT_LIMIT, eval_scenes
from scenes.generate import Scene
from scenes.model import ModelConfig, build_model
from scenes.tasks import Sample, count_prompt
from scenes.tokenizer import build_tokenizer
from scenes.train import COUNT_HEAD, AttentionInputs, VisionHeads, feature_states, head_attention

__all__ = ["anchor_accuracy", "count_attention", "count_confusion", "main"]


def count_confusion(answers: Iterable[dict], max_objects: int = COUNT_LIMIT) -> dict[str, Counter]:
    """{true count: Counter of predictions} over the count answers of scenes with at most
    ``max_objects`` objects; ``answers`` are the records of ``scenes.evaluate``'s ``--json``."""
    table: dict[str, Counter] = defaultdict(Counter)
    for a in answers:
        missing = {"task", "n_objects", "answer", "prediction"} - set(a)
        if missing:
            raise ValueError(f"answer record lacks {sorted(missing)}: {a}")
        if a["task"] == "count" and a["n_objects"] <= max_objects:
            table[a["answer"]][a["prediction"]] += 1
    return dict(sorted(table.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 99))


@torch.no_grad()
def count_attention(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerFast,
    scenes: Sequence[Scene],
    max_objects: int = COUNT_LIMIT,
    head: int = COUNT_HEAD,
) -> dict[tuple[int, int], dict[str, float]]:
    """One head's attention at each count question's answer-predicting token, all tokens kept.

    One question per shape present in each scene with at most ``max_objects`` objects. Returns
    ``{(layer, n): {"questions", "sink", "shape"}}``: the mean attention on ``<s>`` and on the
    named shape's patches, for the supervised layers (1 onwards) and true count n (4 means 4+).
    """
    layers = model.model.language_model.layers
    supervised = [layer.self_attn for layer in (layers[1:] or layers)]
    first = len(layers) - len(supervised)
    heads = model.config.text_config.num_attention_heads
    if not 0 <= head < heads:
        raise ValueError(f"head must be in [0, {heads}), got {head}")
    sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for scene in scenes:
        if not scene.objects or len(scene.objects) > max_objects:
            continue
        feats = model.model.vision_tower(pixel_tensor([scene]), output_hidden_states=True).hidden_states[
            model.config.vision_feature_layer
        ][0, 1:]  # (N, C)
        image = model.model.multi_modal_projector(feats)  # (N, D)
        targets = (*patch_labels(scene), patch_owners(scene))
        for shape in sorted({o.shape for o in scene.objects}):
            n = scene.count(shape)
            sample = Sample("count", count_prompt(shape), str(n))
            batch = pack_sequences(tokenizer, [[sample]], len(image), [targets])
            embeds = model.get_input_embeddings()(batch.input_ids)
            embeds = embeds.masked_scatter((batch.input_ids == model.config.image_token_id)[..., None], image)
            with AttentionInputs(supervised) as taps:
                model.model.language_model(
                    inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
                )
            for i, attn in enumerate(supervised):
                p = head_attention(attn, *taps.inputs[i], batch, head=head)[0]  # (L,)
                row = sums[(first + i, min(n, 4))]
                row[0] += 1
                row[1] += float(p[0])
                row[2] += float((p * batch.ground_mask[0]).sum() - p[0])
    return {k: {"questions": v[0], "sink": v[1] / v[0], "shape": v[2] / v[0]} for k, v in sorted(sums.items())}


@torch.no_grad()
def anchor_accuracy(checkpoint: Path, scenes: Sequence[Scene], batch_size: int = 16) -> dict[str, dict[str, float]]:
    """Per complexity level: objects, and the share whose top-scoring patch (stage-1 anchor head,
    over the object's own patches) is its anchor. ``checkpoint`` is a ``scenes.train`` checkpoint
    from or after stage 1."""
    saved = torch.load(checkpoint, weights_only=False)
    cfg = saved.get("config", {}) if isinstance(saved, dict) else {}
    if "anchor_weight" not in cfg or "heads" not in saved:
        raise ValueError(f"{checkpoint}: not a scenes.train checkpoint")
    model_cfg = ModelConfig(**cfg["model"])
    model = build_model(model_cfg, build_tokenizer(), seed=cfg["seed"]).eval()
    model.load_state_dict(saved["model"])
    heads = VisionHeads(model_cfg.vision_hidden, cfg["anchor_weight"]).eval()
    heads.load_state_dict(saved["heads"])
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for start in range(0, len(scenes), batch_size):
        chunk = [s for s in scenes[start : start + batch_size] if s.objects]
        if not chunk:
            continue
        batch = vision_batch(chunk)
        feature, _ = feature_states(model, batch.pixels)
        logits = heads.anchor(feature[:, 1:])[..., 0]  # (B, N)
        for scene, scores, anchors in zip(chunk, logits, batch.patch_anchor, strict=True):
            owners = torch.from_numpy(patch_owners(scene))
            for index in range(1, len(scene.objects) + 1):
                mine = owners == index
                if mine.any():
                    hits[scene.complexity][0] += 1
                    hits[scene.complexity][1] += int(anchors[mine][scores[mine].argmax()])
    return {level: {"objects": n, "top_is_anchor": right / n} for level, (n, right) in sorted(hits.items())}


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point (see the module docstring); prints a table and returns its data."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    conf = sub.add_parser("confusion", help="predicted against true counts, from scenes.evaluate --json")
    conf.add_argument("answers", type=Path)
    att = sub.add_parser("attention", help="one head's attention at count questions")
    att.add_argument("--head", type=int, default=COUNT_HEAD, help="attention head of the supervised layers")
    att.add_argument("--model", type=Path, default=Path("assets/models/prunelens-tiny-llava"))
    att.add_argument("--n", type=int, default=200, help="held-out scenes")
    anc = sub.add_parser("anchors", help="a stage-1 anchor head's accuracy per level")
    anc.add_argument("checkpoint", type=Path)
    anc.add_argument("--n", type=int, default=200, help="held-out scenes")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.command == "confusion":
        if not args.answers.is_file():
            parser.error(f"{args.answers}: no such file (write it with python -m scenes.evaluate --json)")
        table = count_confusion(json.loads(args.answers.read_text())["answers"])
        for truth, preds in table.items():
            total = sum(preds.values())
            print(f"true {truth}: {preds[truth]}/{total} right; answers {dict(sorted(preds.items()))}")
        return table
    if args.command == "attention":
        model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
        stats = count_attention(model, build_tokenizer(), eval_scenes(args.n), head=args.head)
        for (layer, n), row in stats.items():
            print(
                f"layer {layer} n={n}{'+' if n == 4 else ''}: {row['questions']:.0f} questions, "
                f"<s> {row['sink']:.3f} (share target {1 / (n + 1):.3f}), shape {row['shape']:.3f}"
            )
        return stats
    stats = anchor_accuracy(args.checkpoint, eval_scenes(args.n))
    for level, row in stats.items():
        print(f"{level}: {row['objects']} objects, top-scoring patch is the anchor {row['top_is_anchor']:.2f}")
    return stats


if __name__ == "__main__":
    main()
