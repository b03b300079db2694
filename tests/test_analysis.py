"""The analysis CLI: scoring fixtures, an end-to-end run, resume, sharding, bad input."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pruning
from app.analysis.config import parse_config
from app.analysis.report import _disagreement, _task_table, summarise
from app.analysis.results import read_rows
from app.analysis.run import items_for, run_analysis
from app.analysis.scoring import aggregate, chair_scores, pope_scores, score_answer
from app.analysis.sources import Problem, coco_items, pope_items
from app.analyze import main
from app.runtime import GenerationOptions, Runner, load_runner
from app.runtime.images import load_image
from app.runtime.synthetic import build_clip, build_model, build_processor, build_tokenizer, tiny_family
from app.selection_numbers import selection_numbers
from scenes.tasks import SCENE_VOCABULARY
from scoring import COCO_VOCABULARY, normalize_words

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"select_ms", "batch_ms"}
KEPT = ("n_visual_tokens", "kept_erank", "retained_attention")  # a row's numbers of the tokens it kept


@pytest.fixture(scope="module")
def runner():
    tokenizer = build_tokenizer()
    return Runner.from_model(build_model(tokenizer), build_processor(tokenizer), name="tiny")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny LLaVA folder ``llava`` and ``clip``, a tiny CLIP whose vision half is its tower (``build_clip``)."""
    root, tokenizer = tmp_path_factory.mktemp("models"), build_tokenizer()
    model = build_model(tokenizer)
    for name, parts in (("llava", (model, build_processor(tokenizer))), ("clip", build_clip(model, positions=8))):
        for part in parts:
            part.save_pretrained(root / name)
    return root


def config(tmp_path, **extra):
    raw = {"model": "tiny", "output": str(tmp_path / "out"), "methods": ["attention", "diversity"], "budgets": [4],
           "source": {"kind": "scenes", "per_complexity": 3, "levels": ["simple", "complex"]},
           "tasks": ["caption", "exists"], "max_new_tokens": 4}  # fmt: skip
    raw.update(extra)
    return parse_config(raw)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# -- scoring -------------------------------------------------------------------------------------


def test_chair_against_hand_computed_values():
    rows = [
        {
            "task": "caption",
            **score_answer("caption", "A red circle and a blue star.", None, ["circle"], SCENE_VOCABULARY),
        },
        {
            "task": "caption",
            **score_answer("caption", "Two squares and a circle.", None, ["square", "circle"], SCENE_VOCABULARY),
        },
        {"task": "caption", **score_answer("caption", "Nothing here.", None, ["heart"], SCENE_VOCABULARY)},
    ]
    # caption 1: mentions circle, star (star hallucinated); caption 2: square, circle (none); caption 3: none.
    scores = chair_scores(rows)
    assert scores["chair_s"] == pytest.approx(1 / 3)
    assert scores["chair_i"] == pytest.approx(1 / 4)
    assert scores["recall"] == pytest.approx((1 + 1 + 0) / 3)
    assert rows[0]["hallucinated"] == ["star"] and rows[1]["mentioned"] == ["circle", "square"]


def test_chair_with_coco_synonyms():
    s = score_answer("caption", "Two men walk their puppies past a sofa.", None, ["person", "dog"], COCO_VOCABULARY)
    assert s["mentioned"] == ["couch", "dog", "person"] and s["hallucinated"] == ["couch"]
    assert s["recall"] == 1.0


def test_pope_against_hand_computed_values():
    preds = ["Yes, there is.", "No.", "yes", "Yes", "I think not", "no"]
    gold = ["yes", "yes", "no", "yes", "no", "no"]
    rows = [
        {"task": "pope", "gold": g, **score_answer("pope", p, g, None, COCO_VOCABULARY)} for p, g in zip(preds, gold)
    ]
    s = pope_scores(rows)
    # preds: yes, no, yes, yes, other, no -> TP 2, FP 1, FN 1, TN 1 (+ the "other" counts as wrong)
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["yes_ratio"] == pytest.approx(3 / 6)


# -- runs ----------------------------------------------------------------------------------------


def test_cli_end_to_end_six_scenes(tmp_path, runner):
    cfg = config(tmp_path)
    result = run_analysis(cfg, runner=runner, progress=False)
    rows = read_rows(Path(cfg.output) / "results.jsonl")
    assert len({r["item_id"] for r in rows}) == 6
    assert {r["label"] for r in rows} == {"full", "attention", "diversity"}
    assert result["rows"] == len(rows) and result["merged"]
    assert all(r["n_visual_tokens"] == (16 if r["label"] == "full" else 4) for r in rows)
    for name in ("results.csv", "summary.md", "report.html", "config.json"):
        assert (Path(cfg.output) / name).stat().st_size > 0
    summary = (Path(cfg.output) / "summary.md").read_text()
    assert "Table 1" in summary and "CHAIR_s" in summary and "| attention | 4 |" in summary
    assert "Agreement with the full model" in summary and "Methods disagree" in summary
    full = {(r["item_id"], r["prompt"]): r["answer"] for r in rows if r["label"] == "full"}
    for r in rows:
        assert r["agrees"] == (normalize_words(r["answer"]) == normalize_words(full[(r["item_id"], r["prompt"])]))
        assert 0.0 <= r["overlap"] <= 1.0 and (r["overlap"] == 1.0 or not r["agrees"])
        if r["task"] == "caption":  # built-in scenes: exact objects, so attributes are scored
            assert isinstance(r["attribute_errors"], list) and r["present_mentions"] >= len(r["attribute_errors"])
            assert r["full_length"] == len(full[(r["item_id"], r["prompt"])].split())
    # a rerun finds everything done and adds nothing
    assert run_analysis(cfg, runner=runner, progress=False)["rows"] == 0


class Crash(Exception):
    pass


class CrashingRunner:
    """Wraps a runner and fails on the n-th encoding, like a run killed mid-way."""

    def __init__(self, runner, crash_at):
        self.runner, self.crash_at, self.calls = runner, crash_at, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def encode(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Crash
        return self.runner.encode(*args, **kwargs)


def test_resume_after_interruption_gives_identical_results(tmp_path, runner):
    whole = config(tmp_path / "a")
    run_analysis(whole, runner=runner, progress=False)
    interrupted = config(tmp_path / "b")
    with pytest.raises(Crash):
        run_analysis(interrupted, runner=CrashingRunner(runner, crash_at=4), progress=False)
    partial = read_rows(Path(interrupted.output) / "results.jsonl")
    assert len({r["item_id"] for r in partial}) == 3  # three complete images survived
    # a torn half-written line is dropped too
    with open(Path(interrupted.output) / "results.jsonl", "a") as f:
        f.write('{"item_id": "scene-compl')
    run_analysis(interrupted, runner=runner, progress=False)
    assert strip(read_rows(Path(interrupted.output) / "results.jsonl")) == strip(
        read_rows(Path(whole.output) / "results.jsonl")
    )


def test_two_process_sharding_equals_single_process(tmp_path, folders):
    raw = {
        "model": str(folders / "llava"), "output": str(tmp_path / "sharded"),
        "source": {"kind": "scenes", "per_complexity": 2, "levels": ["simple", "complex"]},
        "methods": ["attention", "adaptive"], "budgets": [4], "tasks": ["caption"], "max_new_tokens": 3,
        "device": "cpu",
    }  # fmt: skip
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def launch(output, rank, world):
        return subprocess.Popen(
            [sys.executable, "-m", "app.analyze", str(path), "--quiet", "--output", str(output)],
            cwd=ROOT,
            env={**env, "RANK": str(rank), "WORLD_SIZE": str(world)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    procs = [launch(tmp_path / "sharded", r, 2) for r in range(2)] + [launch(tmp_path / "single", 0, 1)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert (tmp_path / "sharded" / "results.rank1-of-2.jsonl").exists()
    sharded = read_rows(tmp_path / "sharded" / "results.jsonl")
    assert len({r["item_id"] for r in sharded}) == 4
    assert strip(sharded) == strip(read_rows(tmp_path / "single" / "results.jsonl"))


def test_in_llm_methods_answer_per_question_beside_pre_llm_ones(tmp_path, runner):
    # the tiny model has 2 decoder layers: FastV prunes from layer 1, reading layer 0
    fastv = {"method": "fastv", "params": {"layer": 1}}
    cfg = config(tmp_path, methods=["attention", fastv], source={"kind": "scenes", "per_complexity": 1,
                 "levels": ["simple", "complex"]})  # fmt: skip
    run_analysis(cfg, runner=runner, progress=False)
    rows = read_rows(Path(cfg.output) / "results.jsonl")
    assert {r["label"] for r in rows} == {"full", "attention", "fastv"}
    assert {r["kept_per"] for r in rows if r["label"] != "fastv"} == {"image"}
    ours = [r for r in rows if r["label"] == "fastv"]
    assert len(ours) == len(rows) // 3 and all(r["kept_per"] == "question" for r in ours)
    options = GenerationOptions(max_new_tokens=cfg.max_new_tokens)
    for item in items_for(cfg, []):
        encoding = runner.encode(load_image(item.load()), use_cache=False)
        for r in (r for r in ours if r["item_id"] == item.item_id):
            gen = runner.generate(encoding, r["prompt"], runner.plan(encoding, "fastv", 4, layer=1), options)
            assert r["answer"] == gen.text and r["n_visual_tokens"] == 4 == gen.selection.n_output_tokens
            kept = runner.visual_tokens(encoding, gen.selection)[encoding.prefix.shape[0] :]
            assert r["kept_erank"] == pytest.approx(pruning.effective_rank(kept))
            assert r["select_ms"] is not None and 0.0 <= r["retained_attention"] <= 1.0
    summary = (Path(cfg.output) / "summary.md").read_text()
    assert "| fastv | 4 |" in summary and "In-LLM methods: fastv (from decoder layer 1)" in summary
    assert run_analysis(cfg, runner=runner, progress=False)["rows"] == 0  # resumes on rows, as the others


def test_in_llm_kept_erank_is_averaged_per_image_over_its_questions():
    rows = [
        {"item_id": "a", "task": "word", "kept_erank": 2.0}, {"item_id": "a", "task": "word", "kept_erank": 4.0},
        {"item_id": "b", "task": "word", "kept_erank": 6.0},
    ]  # fmt: skip
    assert aggregate(rows)["kept_erank"] == pytest.approx((3.0 + 6.0) / 2)


def test_in_llm_methods_the_model_refuses_stop_the_run_before_any_answer(tmp_path, runner, monkeypatch, capsys):
    scenes = {"kind": "scenes", "per_complexity": 1, "levels": ["simple"]}
    too_deep = config(tmp_path / "deep", methods=["attention", "fastv"], source=scenes)  # layer 2 of 2
    with pytest.raises(ValueError, match=r"fastv at K=4: layer must be in \[1, 1\] for 'tiny'"):
        run_analysis(too_deep, runner=runner, progress=False)
    assert read_rows(Path(too_deep.output) / "results.jsonl") == []
    qwen = Runner.from_model(*tiny_family("qwen2_5_vl"), name="tiny-qwen")
    raw = {"model": "tiny-qwen", "output": str(tmp_path / "qwen"), "source": scenes, "budgets": [4],
           "methods": ["attention", {"method": "dart-llm", "params": {"layer": 1}}], "max_new_tokens": 2}  # fmt: skip
    path = tmp_path / "qwen.json"
    path.write_text(json.dumps(raw))
    monkeypatch.setattr("app.runtime.load_runner", lambda *args, **kwargs: qwen)
    assert main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: dart-llm at K=4: method 'dart-llm' cannot run on 'tiny-qwen' (qwen2_5_vl)" in err
    assert "M-RoPE" in err and read_rows(tmp_path / "qwen" / "results.jsonl") == []


def test_cdpruner_rows_keep_each_questions_own_set_from_the_configs_text_tower(tmp_path, folders):
    llava, clip = str(folders / "llava"), str(folders / "clip")
    scenes = {"kind": "scenes", "per_complexity": 1, "levels": ["simple", "complex"]}
    cfg = config(tmp_path, model=llava, text_tower=clip, methods=["attention", "cdpruner"], source=scenes,
                 device="cpu", dtype="float32")  # fmt: skip
    run_analysis(cfg, progress=False)  # loads the model with the config's text tower
    rows = read_rows(Path(cfg.output) / "results.jsonl")
    ours = [r for r in rows if r["label"] == "cdpruner"]
    assert len(ours) == len(rows) // 3 and {r["kept_per"] for r in ours} == {"question"}
    assert {r["kept_per"] for r in rows if r["label"] != "cdpruner"} == {"image"}
    direct, options = load_runner(llava, "cpu", "float32", text_tower=clip), GenerationOptions(max_new_tokens=4)
    for item in items_for(cfg, []):
        encoding, kept = direct.encode(load_image(item.load()), use_cache=False), set()
        for r in (r for r in ours if r["item_id"] == item.item_id):  # one image, each of its questions
            sel = direct.select(encoding, "cdpruner", 4, prompt=r["prompt"])
            numbers = selection_numbers(direct, encoding, sel)
            assert r["answer"] == direct.generate(encoding, r["prompt"], sel, options).text
            assert [r[k] for k in KEPT] == pytest.approx([numbers[k] for k in KEPT])
            kept.add(tuple(sel.keep.tolist()))
        assert len(kept) > 1  # the image's questions keep different sets
    summary = (Path(cfg.output) / "summary.md").read_text()
    assert "| cdpruner | 4 |" in summary and "cdpruner (selects before the LLM, from the question's CLIP" in summary


def test_cdpruner_without_a_text_tower_is_refused_before_any_answer(tmp_path, runner, monkeypatch):
    cfg = config(tmp_path, methods=["attention", "cdpruner"], source={"kind": "scenes", "per_complexity": 1})
    monkeypatch.setattr(runner, "generate_many", lambda *args, **kwargs: pytest.fail("answered"))
    with pytest.raises(ValueError, match=r"cdpruner at K=4: method 'cdpruner' needs .* without a text tower"):
        run_analysis(cfg, runner=runner, progress=False)
    assert read_rows(Path(cfg.output) / "results.jsonl") == []


def test_the_text_tower_option_overrides_the_configs(tmp_path, monkeypatch):
    raw = {"model": "tiny", "output": str(tmp_path / "o"), "text_tower": "a", "budgets": [4],
           "source": {"kind": "scenes", "per_complexity": 1}, "methods": ["cdpruner"]}  # fmt: skip
    path, seen, done = tmp_path / "c.json", [], {"problems": [], "rows": 0, "seconds": 0.0, "skipped": 0, "summary": ""}
    path.write_text(json.dumps(raw))
    monkeypatch.setattr("app.analyze.run_analysis", lambda cfg, **kwargs: seen.append(cfg.text_tower) or done)
    assert main([str(path), "--quiet"]) == 0 == main([str(path), "--quiet", "--text-tower", "b"]) and seen == ["a", "b"]


# -- sources and bad input -----------------------------------------------------------------------


def write_coco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(images / f"{i}.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    ann = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(3)]
        + [{"id": 9, "file_name": "broken.jpg"}, {"file_name": "no-id.jpg"}],
        "annotations": [
            {"image_id": 0, "category_id": 18},
            {"image_id": 1, "category_id": 1},
            {"image_id": 1, "category_id": 18},
            {"image_id": 5, "category_id": 999},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
    }
    (tmp_path / "instances.json").write_text(json.dumps(ann))
    return images, tmp_path / "instances.json"


def test_coco_source_reports_bad_entries(tmp_path):
    images, ann = write_coco(tmp_path)
    problems: list[Problem] = []
    items = list(coco_items(images=str(images), annotations=str(ann), n_images=500, seed=0, problems=problems))
    assert len(items) == 4
    truth = {i.item_id: i.truth for i in items}
    assert truth["coco-1"] == ("dog", "person") and truth["coco-2"] == ()
    assert any("images[4]" in p.where for p in problems)
    assert any("annotations[3]" in p.where for p in problems)
    with pytest.raises(ValueError, match="not a COCO instances file"):
        bad = tmp_path / "bad.json"
        bad.write_text("[]")
        list(coco_items(images=str(images), annotations=str(bad), n_images=5, seed=0, problems=[]))
    with pytest.raises(ValueError, match="line 1: not valid JSON"):
        bad.write_text("{oops")
        list(coco_items(images=str(images), annotations=str(bad), n_images=5, seed=0, problems=[]))


def test_coco_run_skips_unreadable_images(tmp_path, runner):
    images, ann = write_coco(tmp_path)
    cfg = config(tmp_path, source={"kind": "coco", "images": str(images), "annotations": str(ann)}, tasks=["caption"])
    result = run_analysis(cfg, runner=runner, progress=False)
    assert result["skipped"] >= 1
    assert any("broken" in p.where or "coco-9" in p.where for p in result["problems"])
    assert len({r["item_id"] for r in read_rows(Path(cfg.output) / "results.jsonl")}) == 3


def test_pope_source_reports_bad_lines(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    lines = [
        json.dumps({"image": "a.jpg", "text": "Is there a dog in the image?", "label": "yes"}),
        "not json",
        json.dumps({"image": "a.jpg", "text": "Is there a cat?", "label": "maybe"}),
        json.dumps({"image": "a.jpg", "label": "no"}),
        json.dumps({"image": "b.jpg", "text": "Is there a car?", "label": "no", "category": "adversarial"}),
    ]
    (tmp_path / "q.jsonl").write_text("\n".join(lines))
    problems: list[Problem] = []
    items = list(pope_items(questions=str(tmp_path / "q.jsonl"), images=str(tmp_path), problems=problems))
    assert [len(i.queries) for i in items] == [1, 1]
    assert [p.where.rsplit(":", 1)[1] for p in problems] == ["2", "3", "4"]
    assert items[1].queries[0].kind == "adversarial"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["nope"]}, "unknown pruning method"),
        ({"methods": [{"method": "adaptive", "params": {"tau_max": -1}}]}, "tau_max must be a positive"),
        ({"methods": [{"method": "adaptive", "params": {"tau": 1}}]}, "no parameter"),
        ({"methods": ["attention", "attention"]}, "unique"),
        ({"methods": [{"method": "fastv", "params": {"layer": 0}}]}, r"\(fastv\): layer must be a positive int"),
        ({"methods": [{"method": "dart-llm", "params": {"layer": "2"}}]}, "layer must be a positive int"),
        ({"methods": [{"method": "fastv", "params": {"pivots": 2}}]}, "no parameter"),
        ({"budgets": [0]}, "positive ints"),
        ({"tasks": ["dance"]}, "tasks must be"),
        ({"source": {"kind": "flickr"}}, "source.kind"),
        ({"source": {"kind": "coco", "images": "/nope", "annotations": "/nope"}}, "does not exist"),
        ({"source": {"kind": "scenes", "per_complexity": 2, "levels": ["easy"]}}, "levels"),
        ({"colour": "blue"}, "unknown key"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"dtype": "float8"}, r"dtype must be one of auto, float32, bfloat16, float16, got 'float8'"),
        ({"text_tower": 3}, r"text_tower must be a CLIP checkpoint folder or hub id \(a string\), got 3"),
        ({"methods": [{"method": "cdpruner", "params": {"theta": 1}}]}, r"\(cdpruner\): theta must be None"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, change, message):
    raw = {"model": "tiny", "output": str(tmp_path / "o"), "source": {"kind": "scenes", "per_complexity": 1},
           "methods": ["attention"], "budgets": [4], **change}  # fmt: skip
    with pytest.raises(ValueError, match=message):
        parse_config(raw)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    assert main([str(path)]) == 2
    assert not (tmp_path / "o").exists()


def test_output_folder_with_another_config_is_refused(tmp_path, runner):
    run_analysis(config(tmp_path, tasks=["exists"], budgets=[3]), runner=runner, progress=False)
    with pytest.raises(ValueError, match="different config"):
        run_analysis(config(tmp_path, tasks=["exists"], budgets=[5]), runner=runner, progress=False)


def test_dtype_defaults_to_auto_and_reaches_the_saved_config(tmp_path):
    assert config(tmp_path).dtype == "auto"
    chosen = config(tmp_path, dtype="bfloat16")
    assert chosen.dtype == "bfloat16" and json.loads(chosen.to_json())["dtype"] == "bfloat16"


def test_a_run_saved_before_the_dtype_and_text_tower_keys_resumes(tmp_path, runner):
    cfg = config(tmp_path, tasks=["exists"], source={"kind": "scenes", "per_complexity": 1, "levels": ["simple"]})
    output = Path(cfg.output)
    output.mkdir(parents=True)
    old = {k: v for k, v in json.loads(cfg.to_json()).items() if k not in ("dtype", "text_tower")}
    (output / "config.json").write_text(json.dumps(old))
    assert run_analysis(cfg, runner=runner, progress=False)["rows"] > 0
    with pytest.raises(ValueError, match="different config"):
        run_analysis(dataclasses.replace(cfg, dtype="float16"), runner=runner, progress=False)


@pytest.mark.parametrize("name", ["scenes.toml", "hybrid-study.toml", "inllm.toml", "cdpruner.toml"])
def test_shipped_configs_are_valid(name):
    from app.analysis.config import load_config

    cfg = load_config(ROOT / "configs" / name)
    assert cfg.source["kind"] == "scenes" and cfg.methods


def test_task_table_scores_each_task_per_level():
    def row(label, budget, level, task, correct, gold="", pred=""):
        return {"item_id": f"{level}-{task}-{correct}", "label": label, "budget": budget, "complexity": level,
                "complexity_bin": "simple", "task": task, "correct": correct, "gold": gold, "pred": pred,
                "kept_erank": 1.0, "retained_attention": 0.5}  # fmt: skip

    rows = [
        row("attention", 8, "simple", "color", True),
        row("attention", 8, "simple", "color", False),
        row("attention", 8, "simple", "color", True),
        row("attention", 8, "simple", "count", False),
        row("attention", 8, "complex", "exists", True, "yes", "yes"),
        row("attention", 8, "complex", "exists", False, "no", "yes"),
    ]
    stats = summarise(rows)
    assert stats[("level", "attention", 8, "simple")]["task_accuracy"] == {"color": 2 / 3, "count": 0.0}
    lines = _task_table(stats, ["full", "attention"], [8], ["complex", "simple"])
    table = "\n".join(lines)
    assert "| attention | 8 | simple | 1.00 | – | – | – | – | – | – | – | 66.7 | 0.0 |" in table
    assert "| attention | 8 | complex | 1.00 | 50.0 | – | – | – | – | – | – | – | – |" in table


def test_wrong_colour_questions_are_scored_apart_from_pope():
    def row(kind, gold, pred):
        return {"task": "exists", "kind": kind, "gold": gold, "pred": pred, "correct": gold.lower() == pred}

    rows = [row("positive", "Yes", "yes"), row("random", "No", "no"), row("attribute", "No", "yes")]
    pope = pope_scores(rows)
    assert pope["n"] == 2 and pope["accuracy"] == 1.0 and pope["yes_ratio"] == 0.5
    agg = aggregate(rows)
    assert agg["pope"]["accuracy"] == 1.0
    assert agg["task_accuracy"] == {"wrong colour": 0.0}


def test_attribute_length_and_agreement_scores_hand_computed():
    from app.analysis.run import _caption_extras
    from app.analysis.sources import Item

    item = Item("s", lambda: None, (), truth=("circle", "star"), objects=(("circle", "red"), ("star", "blue")))
    # "two red circles": wrong count; "a green star": wrong colour; "a heart": absent (CHAIR's business)
    wrong = _caption_extras(
        "Two red circles, a green star and a heart.", "A red circle and a blue star.", item, SCENE_VOCABULARY
    )
    assert wrong == {"full_length": 7, "attribute_errors": wrong["attribute_errors"], "present_mentions": 2}
    assert len(wrong["attribute_errors"]) == 2 and "not 2" in wrong["attribute_errors"][0]
    right = _caption_extras("A red circle and a blue star.", "A red circle and a blue star.", item, SCENE_VOCABULARY)
    assert right["attribute_errors"] == [] and right["present_mentions"] == 2
    rows = [
        {"task": "caption", "mentioned": ["circle", "heart", "star"], "hallucinated": ["heart"], "recall": 1.0,
         "length": 8, **wrong, "agrees": False, "overlap": 0.5},
        {"task": "caption", "mentioned": ["circle", "star"], "hallucinated": [], "recall": 1.0,
         "length": 7, **right, "agrees": True, "overlap": 1.0},
    ]  # fmt: skip
    scores = chair_scores(rows)
    assert scores["attr_i"] == pytest.approx(2 / 4) and scores["attr_s"] == pytest.approx(1 / 2)
    assert scores["any_s"] == pytest.approx(1 / 2) and scores["length_ratio"] == pytest.approx(15 / 14)
    agg = aggregate(rows)
    assert agg["agreement"] == pytest.approx(0.5) and agg["overlap"] == pytest.approx(0.75)
    # COCO rows have no exact objects: no attribute scores, rather than zeros
    coco = [{k: v for k, v in r.items() if k not in ("attribute_errors", "present_mentions")} for r in rows]
    assert chair_scores(coco)["attr_i"] is None and chair_scores(coco)["any_s"] is None


def test_disagreement_counts_images_whose_method_captions_differ():
    def row(label, item, level, answer):
        return {"task": "caption", "label": label, "budget": 8, "item_id": item, "complexity": level, "answer": answer}

    rows = [
        row("a", "x", "simple", "A red circle."), row("b", "x", "simple", "A red circle."),
        row("a", "y", "complex", "A red circle."), row("b", "y", "complex", "A blue star."),
        row("a", "z", "complex", "Two stars."), row("b", "z", "complex", "two stars"),
        row("full", "z", "complex", "Three stars."),
    ]  # fmt: skip
    table = "\n".join(_disagreement(rows, ["a", "b"], [8]))
    assert "| K | complex | simple | all |" in table and "| 8 | 50.0 | 0.0 | 33.3 |" in table
    assert _disagreement(rows, ["a"], [8]) == []
