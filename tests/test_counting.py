"""Counting diagnostics (``scenes.counting``) on hand-made answers and tiny smoke models."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from scenes.counting import anchor_accuracy, count_attention, count_confusion, main
from scenes.evaluate import eval_scenes
from scenes.model import build_model
from scenes.tokenizer import build_tokenizer
from scenes.train import SMOKE, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _answer(truth, prediction, n_objects=3, task="count"):
    return {"task": task, "n_objects": n_objects, "answer": truth, "prediction": prediction}


def test_confusion_counts_answers_per_true_count(tmp_path, capsys):
    answers = [
        _answer("2", "2"),
        _answer("2", "1"),
        _answer("2", "1"),
        _answer("10", "3"),
        _answer("1", "1"),
        _answer("1", "2", n_objects=9),  # more objects than counting is scored on
        _answer("Yes", "No", task="exists"),
    ]
    table = count_confusion(answers)
    assert list(table) == ["1", "2", "10"]  # numeric order
    assert table["2"] == {"2": 1, "1": 2} and table["1"] == {"1": 1} and table["10"] == {"3": 1}
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"metrics": {}, "answers": answers}))
    assert main(["confusion", str(path)]) == table
    assert "true 2: 1/3 right" in capsys.readouterr().out
    with pytest.raises(ValueError, match="lacks"):
        count_confusion([{"task": "count"}])
    with pytest.raises(SystemExit):
        main(["confusion", str(tmp_path / "missing.json")])


def test_count_attention_is_a_distribution_per_count():
    tokenizer = build_tokenizer()
    model = build_model(dataclasses.replace(SMOKE.model, text_layers=2), tokenizer, seed=5).eval()
    scenes = [s for s in eval_scenes(12) if s.objects and len(s.objects) <= 6][:3]
    stats = count_attention(model, tokenizer, scenes, head=0)
    questions = sum(len({o.shape for o in s.objects}) for s in scenes)
    assert {layer for layer, _ in stats} == {1}  # the supervised layers: all but the first
    assert sum(row["questions"] for row in stats.values()) == questions
    for (_, n), row in stats.items():
        assert 1 <= n <= 4
        assert 0 < row["sink"] < 1 and 0 < row["shape"] < 1 and row["sink"] + row["shape"] <= 1 + 1e-6
    other = count_attention(model, tokenizer, scenes, head=1)
    assert other.keys() == stats.keys()
    assert any(abs(other[k]["shape"] - stats[k]["shape"]) > 1e-5 for k in stats)  # another head's weights
    with pytest.raises(ValueError, match="head"):
        count_attention(model, tokenizer, scenes, head=SMOKE.model.text_heads)


def test_anchor_accuracy_reads_a_stage_one_checkpoint(tmp_path):
    cfg = dataclasses.replace(SMOKE, vision_steps=2, text_steps=2, checkpoint_every=100)
    train(cfg, tmp_path / "m", tmp_path / "run", progress=False, stop_after=2)  # ends after stage 1
    scenes = eval_scenes(8)
    stats = anchor_accuracy(tmp_path / "run" / "checkpoint.pt", scenes, batch_size=3)
    levels = {s.complexity for s in scenes if s.objects}
    assert set(stats) == levels
    assert sum(row["objects"] for row in stats.values()) == sum(len(s.objects) for s in scenes)
    assert all(0.0 <= row["top_is_anchor"] <= 1.0 for row in stats.values())
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a scenes.train checkpoint"):
        anchor_accuracy(tmp_path / "other.pt", scenes)
