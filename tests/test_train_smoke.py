"""Training pipeline: a tiny smoke run learns, resumes exactly, and its pieces match transformers.

The smoke config (``scenes.train.SMOKE``) keeps LLaVA-1.5's geometry (336 px, 576 patches) with
tiny widths, so each test runs in seconds on one CPU thread.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from app.runtime import Runner
from scenes.data import (
    pack_sequences,
    patch_anchors,
    patch_labels,
    patch_owners,
    pixel_tensor,
    random_keep,
    training_scene,
    vision_batch,
)
from scenes.evaluate import eval_samples, eval_scenes, greedy_answers
from scenes.model import build_model
from scenes.tasks import (
    Sample,
    caption,
    color_prompt,
    count_prompt,
    existence_prompt,
    make_samples,
    parse_objects,
    wrong_colour_question,
)
from scenes.tokenizer import build_processor, build_tokenizer
from scenes.train import (
    COUNT_HEAD,
    READ_HEADS,
    SMOKE,
    AttentionInputs,
    TrainConfig,
    anchor_loss,
    grounding_loss,
    head_attention,
    main,
    text_loss,
    text_row,
    train,
    wrong_colour_questions,
)
from scenes.vocabulary import COUNT_WORDS, SHAPES

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_run_loss_falls_and_model_loads_offline(tmp_path):
    out = tmp_path / "model"
    result = main(["--smoke", "--out", str(out), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    for stage in (1, 2):
        losses = [r["loss"] for r in result["history"] if r["stage"] == stage]
        assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), (stage, losses)
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    processor = AutoProcessor.from_pretrained(out, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(out, local_files_only=True)
    assert model.config.vision_feature_layer == -2
    assert model.config.vision_feature_select_strategy == "default"
    assert model.config.image_seq_length == 576
    assert processor.tokenizer.chat_template == build_processor().tokenizer.chat_template


def test_removed_ablation_switches_are_gone_from_the_command_line(tmp_path):
    """Only the shipped recipe is in the code: the switches of experiments that did not ship are
    refused, as any unknown option is."""
    for gone in ("--anchor-weight=0", "--count-share=none", "--count-head=0", "--no-count-absent", "--anchor-rule=x"):
        with pytest.raises(SystemExit):
            main(["--smoke", "--steps", "1", "--out", str(tmp_path / "m"), "--run-dir", str(tmp_path / "r"), gone])
    shipped = TrainConfig()
    assert shipped.anchor_weight > 0 and 0 < shipped.token_dropout < 1 and shipped.wrong_colour_questions == 2


def test_token_dropout_keeps_the_full_image_answers():
    """Training is LLaVA's: a row that keeps only some patches is still taught the whole image's
    answers, never answers rewritten to what the kept patches show."""
    cfg = TrainConfig()
    rows = {"full": 0, "dropped": 0}
    for seed in range(60):
        scene = training_scene(seed)
        samples, keep, targets = text_row(scene, cfg)
        assert samples == text_row(scene, cfg)[0]  # a pure function of the scene's seed
        assert samples[0].answer == caption(scene)  # the caption of the whole scene
        assert np.all(np.diff(keep) > 0) and 16 <= len(keep) <= 576
        assert all(len(part) == len(keep) for part in targets)
        rows["full" if len(keep) == 576 else "dropped"] += 1
        assert len(targets) == (4 if len(keep) == 576 else 3)  # count shares only with every patch
        if len(keep) < 576 and scene.objects:
            # every present shape is still asked about as present, whatever was dropped
            for s in samples:
                if s.task == "count":
                    assert int(s.answer) == scene.count(s.prompt.removeprefix("How many ").removesuffix("s are there?"))
    assert rows["dropped"] >= 8 and rows["full"] >= 30


def test_random_keep_sizes_and_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        keep = random_keep(rng, (24, 24))
        assert 16 <= len(keep) <= 576 and np.all(np.diff(keep) > 0) and keep[-1] < 576


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    cfg = dataclasses.replace(SMOKE, vision_steps=4, text_steps=4, checkpoint_every=100)
    full = train(cfg, tmp_path / "a", tmp_path / "run_a", progress=False)
    part = train(cfg, tmp_path / "b", tmp_path / "run_b", progress=False, stop_after=3)
    assert not part["done"]
    part = train(cfg, tmp_path / "b", tmp_path / "run_b", progress=False, resume=True, stop_after=3)
    assert not part["done"]  # stopped inside stage 2
    rest = train(cfg, tmp_path / "b", tmp_path / "run_b", progress=False, resume=True)
    assert rest["done"]
    expected = [r["loss"] for r in full["history"]]
    assert [r["loss"] for r in rest["history"]] == pytest.approx(expected, rel=1e-5)
    a = LlavaForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_stage_two_from_an_exported_tower_equals_the_full_run(tmp_path):
    cfg = dataclasses.replace(SMOKE, vision_steps=3, text_steps=3, checkpoint_every=100)
    full = train(cfg, tmp_path / "a", tmp_path / "run_a", progress=False)
    half = train(cfg, tmp_path / "b", tmp_path / "run_b", progress=False, vision_from=tmp_path / "a")
    assert [r["stage"] for r in half["history"]] == [2, 2, 2]  # stage 1 skipped
    expected = [r["loss"] for r in full["history"] if r["stage"] == 2]
    assert [r["loss"] for r in half["history"]] == pytest.approx(expected, rel=1e-6)
    a = LlavaForConditionalGeneration.from_pretrained(tmp_path / "a").state_dict()
    b = LlavaForConditionalGeneration.from_pretrained(tmp_path / "b").state_dict()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="no config.json"):
        train(cfg, tmp_path / "c", tmp_path / "run_c", progress=False, vision_from=tmp_path / "run_a")


def _random_model():
    tokenizer = build_tokenizer()
    model = build_model(SMOKE.model, tokenizer, seed=3).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)  # clear logit margins, so greedy paths cannot tie
    return tokenizer, model


@torch.no_grad()
def test_packed_training_equals_single_turn_chat():
    """Shared-prefix packing gives the same answer logits as the processor + model forward."""
    tokenizer, model = _random_model()
    processor = build_processor(tokenizer)
    scene = training_scene(5)
    samples = make_samples(scene, np.random.default_rng(0))[:4]
    batch = pack_sequences(tokenizer, [samples], 576)
    tower = model.model.vision_tower(pixel_tensor([scene]), output_hidden_states=True)
    feats = tower.hidden_states[-2][:, 1:]  # (1, N, C)
    embeds = model.get_input_embeddings()(batch.input_ids)
    image_mask = (batch.input_ids == model.config.image_token_id)[..., None]
    embeds = embeds.masked_scatter(image_mask, model.model.multi_modal_projector(feats))
    hidden = model.model.language_model(
        inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
    ).last_hidden_state
    keep = batch.labels[0] != -100
    packed = model.lm_head(hidden[0, keep])

    reference, targets = [], []
    for s in samples:
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.prompt}]}
        reply = {"role": "assistant", "content": [{"type": "text", "text": s.answer}]}
        full_text = processor.apply_chat_template([user, reply])
        enc = processor(images=scene.image, text=full_text, return_tensors="pt")
        assert torch.equal(enc["pixel_values"], pixel_tensor([scene]))
        prompt = processor.apply_chat_template([user], add_generation_prompt=True)
        start = len(processor(images=scene.image, text=prompt)["input_ids"][0])
        ids = enc["input_ids"][0]
        reference.append(model(**enc).logits[0, start - 1 : len(ids) - 1])
        targets.append(ids[start:])
    assert batch.labels[0, keep].tolist() == torch.cat(targets).tolist()
    torch.testing.assert_close(packed, torch.cat(reference), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_greedy_answers_match_generate():
    tokenizer, model = _random_model()
    processor = build_processor(tokenizer)
    scene = eval_scenes(2)[1]
    prompts = [s.prompt for s in eval_samples(scene)][:3]
    runner = Runner.from_model(model, processor, name="smoke")
    mine = greedy_answers(runner, runner.encode(scene.image), prompts, max_new_tokens=6)
    for prompt, answer in zip(prompts, mine, strict=True):
        user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        text = processor.apply_chat_template([user], add_generation_prompt=True)
        enc = processor(images=scene.image, text=text, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
        assert answer == tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer  # the scaled random head does not stop at once


def test_packing_with_per_row_image_counts():
    tokenizer = build_tokenizer()
    scene = training_scene(2)
    samples = make_samples(scene, np.random.default_rng(0))[:3]
    batch = pack_sequences(tokenizer, [samples, samples[:1]], [576, 40])
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (batch.input_ids == image_id).sum(dim=1).tolist() == [576, 40]
    assert batch.attention_mask.shape == (2, 1, batch.input_ids.shape[1], batch.input_ids.shape[1])
    with pytest.raises(ValueError, match="image token counts"):
        pack_sequences(tokenizer, [samples], [576, 40])


def test_sample_weights_give_every_sample_equal_weight():
    tokenizer = build_tokenizer()
    scene = training_scene(2)
    samples = make_samples(scene, np.random.default_rng(0))[:5]
    batch = pack_sequences(tokenizer, [samples, samples[:2]], 16)
    labelled = batch.labels != -100
    assert torch.equal(batch.weights > 0, labelled)
    assert batch.weights.sum(dim=1).tolist() == pytest.approx([5.0, 2.0])
    # within a row, each answer's tokens share one unit: the caption's many tokens weigh as one
    row = batch.weights[0][labelled[0]].tolist()
    n_caption = len(tokenizer(f" {samples[0].answer}</s>", add_special_tokens=False)["input_ids"])
    assert row[:n_caption] == pytest.approx([1 / n_caption] * n_caption)
    assert sum(row[n_caption:]) == pytest.approx(4.0)


def test_sample_weighted_loss_is_the_mean_of_per_sample_losses():
    tokenizer, model = _random_model()
    scene = training_scene(3)
    samples = make_samples(scene, np.random.default_rng(1))[:3]
    batch = pack_sequences(tokenizer, [samples], 8)
    features = torch.randn(8, model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weighted = text_loss(model, features, batch)
        per_sample = [text_loss(model, features, pack_sequences(tokenizer, [[s]], 8)) for s in samples]
    assert float(weighted) == pytest.approx(float(sum(per_sample) / 3), rel=1e-4)
    # not the token mean: the caption's many tokens would dominate that
    sizes = [len(tokenizer(f" {s.answer}</s>", add_special_tokens=False)["input_ids"]) for s in samples]
    token_mean = sum(float(x) * n for x, n in zip(per_sample, sizes, strict=True)) / sum(sizes)
    assert float(weighted) != pytest.approx(token_mean, rel=1e-3)


def _anchor_units(scene):
    """The count units training uses: each instance's number on its anchor patch, 0 elsewhere."""
    return np.where(patch_anchors(scene), patch_owners(scene), 0)


def _complex_scene():
    scene = next(training_scene(s) for s in range(100) if training_scene(s).complexity == "complex")
    assert len({o.shape for o in scene.objects}) >= 3
    return scene


def _only_grounding(tokenizer, scene, sample):
    batch = pack_sequences(tokenizer, [[sample]], 576, [patch_labels(scene)])
    return batch, [tokenizer.convert_ids_to_tokens(int(batch.input_ids[0, p])) for _, p in batch.ground_index]


def test_grounding_targets_are_the_named_objects_patches():
    tokenizer = build_tokenizer()
    scene = _complex_scene()
    owners = patch_owners(scene)
    obj = scene.objects[0]
    of_shape = np.isin(owners, [i + 1 for i, o in enumerate(scene.objects) if o.shape == obj.shape])
    of_pair = np.isin(
        owners, [i + 1 for i, o in enumerate(scene.objects) if (o.shape, o.color) == (obj.shape, obj.color)]
    )
    prefix = len(tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"])
    wrong = next(c for c in ("red", "green", "blue", "white") if c not in {o.color for o in scene.objects})
    absent = next(s for s in ("circle", "square", "triangle", "star", "heart", "moon") if scene.count(s) == 0)
    cases = [
        (Sample("color", color_prompt(obj.shape), obj.color), of_shape),
        (Sample("count", count_prompt(obj.shape), str(scene.count(obj.shape))), of_shape),
        (Sample("exists", existence_prompt(obj.shape), "Yes", "positive"), of_shape),
        (Sample("exists", existence_prompt(obj.shape, obj.color), "Yes", "positive"), of_pair),
        (Sample("exists", existence_prompt(obj.shape, wrong), "No", "attribute"), of_shape),  # look, then say no
    ]
    for sample, expected in cases:
        batch, tokens = _only_grounding(tokenizer, scene, sample)
        assert tokens == [":"], sample  # the token that predicts the answer
        assert int(batch.labels[0, batch.ground_index[0, 1]]) == tokenizer(f" {sample.answer}")["input_ids"][0]
        mask = batch.ground_mask[0]
        assert not mask[:prefix].any() and not mask[prefix + 576 :].any()
        assert np.array_equal(mask[prefix : prefix + 576].numpy(), expected), sample
    for sample in (
        Sample("exists", existence_prompt(absent), "No", "random"),
        Sample("count", count_prompt(absent), "0"),
    ):
        batch, _ = _only_grounding(tokenizer, scene, sample)
        assert len(batch.ground_index) == 0 and batch.ground_mask.shape == (0, batch.input_ids.shape[1])


def test_count_questions_ask_for_an_equal_share_per_instance():
    tokenizer = build_tokenizer()
    prefix = len(tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"])
    seen = set()
    for seed in range(200):
        scene = training_scene(seed)
        repeated = [s for s in {o.shape for o in scene.objects} if scene.count(s) > 1]
        if not repeated or scene.count(repeated[0]) in seen:
            continue
        shape = repeated[0]
        n = scene.count(shape)
        seen.add(n)
        owners = patch_owners(scene)
        sample = Sample("count", count_prompt(shape), str(n))
        batch = pack_sequences(tokenizer, [[sample]], 576, [(*patch_labels(scene), owners)])
        (share,) = batch.ground_share
        (mask,) = batch.ground_mask
        mine = [i + 1 for i, o in enumerate(scene.objects) if o.shape == shape]
        assert mask[0] and np.array_equal(mask[prefix : prefix + 576].numpy(), np.isin(owners, mine))
        assert torch.equal(share > 0, mask)  # the distribution covers exactly the mask
        assert float(share.sum()) == pytest.approx(1.0)
        assert float(share[0]) == pytest.approx(1 / (n + 1))  # <s>
        patches = share[prefix : prefix + 576].numpy()
        for owner in mine:
            mass = patches[owners == owner]
            assert mass.sum() == pytest.approx(1 / (n + 1)) and np.allclose(mass, mass[0])  # even inside
        # without owners the same question keeps the plain mass target
        plain = pack_sequences(tokenizer, [[sample]], 576, [patch_labels(scene)])
        assert not plain.ground_share.any() and not plain.ground_mask[0, 0]
        if len(seen) >= 2:
            break
    assert len(seen) >= 2, seen
    assert not batch.ground_share[:, prefix + 576 :].any()


def test_count_questions_about_absent_shapes_put_everything_on_bos():
    tokenizer = build_tokenizer()
    scene = _complex_scene()
    absent = next(s for s in SHAPES if scene.count(s) == 0)
    samples = [Sample("count", count_prompt(absent), "0"), Sample("color", color_prompt(scene.objects[0].shape), "x")]
    targets = [(*patch_labels(scene), _anchor_units(scene))]
    off = pack_sequences(tokenizer, [samples[1:]], 576, targets)
    on = pack_sequences(tokenizer, [samples], 576, targets)
    assert len(on.ground_index) == len(off.ground_index) + 1  # the count question has one query
    (at,) = torch.nonzero(on.ground_share[:, 0] == 1.0)[:, 0].tolist()
    assert float(on.ground_share[at, 0]) == 1.0 and float(on.ground_share[at].sum()) == 1.0
    assert on.ground_mask[at].sum() == 1 and on.ground_mask[at, 0]
    # the query is the count question's last prompt token, before its answer
    assert tokenizer.convert_ids_to_tokens(int(on.input_ids[0, on.ground_index[at, 1] + 1])) == "0"
    # without count units (a pruned row) it has none
    plain = pack_sequences(tokenizer, [samples], 576, [patch_labels(scene)])
    assert len(plain.ground_index) == len(off.ground_index)
    p = torch.zeros_like(on.ground_share)
    p[:, 0] = 1.0  # every query's head all on <s>: the absent count query is satisfied exactly
    loss_all_on_bos = grounding_loss([p], on)
    assert float(loss_all_on_bos) > 0  # the colour query is not
    p[at, 0], p[at, 1] = 0.5, 0.5
    assert float(grounding_loss([p], on)) > float(loss_all_on_bos)


def test_count_units_on_anchors_put_one_share_on_each_anchor_patch():
    tokenizer = build_tokenizer()
    prefix = len(tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"])
    scene = _complex_scene()
    shape = next(s for s in {o.shape for o in scene.objects} if scene.count(s) > 1)
    n = scene.count(shape)
    owners = patch_owners(scene)
    units = np.where(patch_anchors(scene), owners, 0)
    sample = Sample("count", count_prompt(shape), str(n))
    batch = pack_sequences(tokenizer, [[sample]], 576, [(*patch_labels(scene), units)])
    patches = batch.ground_share[0, prefix : prefix + 576].numpy()
    mine = [i + 1 for i, o in enumerate(scene.objects) if o.shape == shape]
    assert np.flatnonzero(patches).tolist() == np.flatnonzero(patch_anchors(scene) & np.isin(owners, mine)).tolist()
    assert np.allclose(patches[patches > 0], 1 / (n + 1))
    assert float(batch.ground_share[0, 0]) == pytest.approx(1 / (n + 1))
    assert torch.equal(batch.ground_mask[0], batch.ground_share[0] > 0)
    # a kept subset without the shape's anchors falls back to the plain target: the shape's patches
    keep = np.flatnonzero(~patch_anchors(scene))
    cut = tuple(part[keep] for part in (*patch_labels(scene), units))
    plain = pack_sequences(tokenizer, [[sample]], len(keep), [cut])
    assert not plain.ground_share.any()
    assert np.array_equal(plain.ground_mask[0, prefix : prefix + len(keep)].numpy(), np.isin(owners[keep], mine))


def test_anchor_loss_weighs_anchors_and_the_rest_of_the_objects_equally():
    scene = _complex_scene()
    batch = vision_batch([scene])
    objects, anchor = batch.patch_shape > 0, batch.patch_anchor
    assert anchor.sum() == len(scene.objects) and not (anchor & ~objects).any()
    logits = torch.where(anchor, 5.0, -5.0)
    assert float(anchor_loss(logits, batch)) < 0.01  # right everywhere on object patches
    logits = logits.masked_fill(~objects, 5.0)  # background is not scored
    assert float(anchor_loss(logits, batch)) < 0.01
    # all anchors missed: half the loss weight is on them, whatever their number
    softplus5 = float(np.log1p(np.exp(5.0)))  # −log sigmoid(−5)
    expected = 0.5 * softplus5 + 0.5 * float(np.log1p(np.exp(-5.0)))
    assert float(anchor_loss(torch.full_like(logits, -5.0), batch)) == pytest.approx(expected, rel=1e-4)


def test_recipe_settings_are_checked(tmp_path):
    for bad in (
        dataclasses.replace(SMOKE, anchor_weight=0.0),
        dataclasses.replace(SMOKE, token_dropout=1.5),
        dataclasses.replace(SMOKE, wrong_colour_questions=0),
        dataclasses.replace(SMOKE, model=dataclasses.replace(SMOKE.model, text_heads=1)),
    ):
        with pytest.raises(ValueError, match="anchor_weight|token_dropout|wrong_colour|attention heads"):
            train(bad, tmp_path / "m", tmp_path / "run", progress=False)


def test_anchor_target_and_anchor_shares_train(tmp_path):
    cfg = dataclasses.replace(SMOKE, vision_steps=3, text_steps=3, checkpoint_every=100)
    result = train(cfg, tmp_path / "m", tmp_path / "run", progress=False)
    assert all("patch_anchor" in r for r in result["history"] if r["stage"] == 1)
    assert all(np.isfinite(r["loss"]) for r in result["history"])


def _count_and_colour_batch():
    """A full-token row asking how many of a repeated shape there are (a share query, its units
    every patch of an instance, so the share has many cells) and its colour (a mass query)."""
    tokenizer = build_tokenizer()
    scene = _complex_scene()
    shape = next(s for s in {o.shape for o in scene.objects} if scene.count(s) > 1)
    obj = next(o for o in scene.objects if o.shape == shape)
    samples = [
        Sample("count", count_prompt(shape), str(scene.count(shape))),
        Sample("color", color_prompt(shape), obj.color),
    ]
    batch = pack_sequences(tokenizer, [samples], 576, [(*patch_labels(scene), patch_owners(scene))])
    return batch


def test_grounding_loss_is_kl_for_count_queries_and_mass_for_the_rest():
    batch = _count_and_colour_batch()
    share, mask = batch.ground_share, batch.ground_mask
    assert share[0].sum() > 0 and share[1].sum() == 0
    exact = torch.stack([share[0], mask[1] / mask[1].sum()])  # both queries fully satisfied
    assert float(grounding_loss([exact], batch)) == pytest.approx(0.0, abs=1e-4)
    # the colour query only asks for mass on the mask; the count query also for how it is shared
    lopsided = mask.float() * torch.rand(mask.shape, generator=torch.Generator().manual_seed(0))
    lopsided = lopsided / lopsided.sum(-1, keepdim=True)
    kl = float((share[0][share[0] > 0] * (share[0][share[0] > 0] / lopsided[0][share[0] > 0]).log()).sum())
    assert float(grounding_loss([lopsided], batch)) == pytest.approx(kl / 2, rel=1e-3, abs=1e-4)
    assert kl > 0.05
    # two heads: the mean over heads
    assert float(grounding_loss([exact, lopsided], batch)) == pytest.approx(kl / 4, rel=1e-3, abs=1e-4)


def test_count_queries_can_supervise_a_head_of_their_own():
    batch = _count_and_colour_batch()
    share, mask = batch.ground_share, batch.ground_mask
    exact = torch.stack([share[0], mask[1] / mask[1].sum()])
    uniform = torch.full_like(exact, 1.0 / exact.shape[1])
    # the count query reads the count head only, the colour query head 0 only
    assert float(grounding_loss([uniform], batch, [exact])) > 0.5
    mixed = torch.stack([uniform[0], exact[1]])
    assert float(grounding_loss([mixed], batch, [exact])) == pytest.approx(0.0, abs=1e-4)
    assert float(grounding_loss([mixed], batch)) > 0.5
    with pytest.raises(ValueError, match="layers"):
        grounding_loss([mixed, mixed], batch, [exact])


def test_count_head_routes_the_count_share_gradient(monkeypatch):
    import scenes.train

    grounding = []  # the grounding term text_loss adds, to differentiate it alone
    original = scenes.train.grounding_loss
    monkeypatch.setattr(scenes.train, "grounding_loss", lambda *a: grounding.append(original(*a)) or grounding[-1])
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    cfg = dataclasses.replace(SMOKE.model, text_layers=2)
    model = build_model(cfg, tokenizer, seed=0)
    scene = _complex_scene()
    shape = next(s for s in {o.shape for o in scene.objects} if scene.count(s) > 1)
    samples = [Sample("count", count_prompt(shape), str(scene.count(shape)))]
    batch = pack_sequences(tokenizer, [samples], 576, [(*patch_labels(scene), _anchor_units(scene))])
    assert batch.ground_share.sum() > 0
    features = torch.randn(576, cfg.vision_hidden)
    text_loss(model, features, batch, ground_weight=1.0)
    attn = model.model.language_model.layers[1].self_attn
    (q,) = torch.autograd.grad(grounding[0], attn.q_proj.weight)
    d = model.model.language_model.layers[1].self_attn.head_dim
    per_head = [float(q[h * d : (h + 1) * d].abs().sum()) for h in range(cfg.text_heads)]
    # only the count head's query rows of the supervised layer get a grounding gradient
    assert per_head[COUNT_HEAD] > 0
    assert all(g == 0 for h, g in enumerate(per_head) if h != COUNT_HEAD)


def test_extra_wrong_colour_questions_name_a_present_shape_in_a_colour_it_lacks():
    scene = _complex_scene()
    questions = wrong_colour_questions(scene, np.random.default_rng(3), 40)
    assert len(questions) == 40
    for q in questions:
        assert (q.task, q.answer, q.kind) == ("exists", "No", "attribute")
        (named,) = parse_objects(q.prompt)
        colours = {o.color for o in scene.objects if o.shape == named.shape}
        assert colours and named.color not in colours
    assert len({q.prompt for q in questions}) > 5  # drawn, not one question repeated
    assert wrong_colour_questions(scene, np.random.default_rng(3), 0) == []
    empty = next(training_scene(s) for s in range(200) if not training_scene(s).objects)
    assert wrong_colour_questions(empty, np.random.default_rng(3), 4) == []
    with pytest.raises(ValueError, match="objects"):
        wrong_colour_question(empty, np.random.default_rng(3))


def test_caption_grounding_points_each_group_phrase_at_its_group():
    tokenizer = build_tokenizer()
    scene = _complex_scene()
    sample = make_samples(scene, np.random.default_rng(0))[0]
    batch, tokens = _only_grounding(tokenizer, scene, sample)
    groups = {(o.color, o.shape) for o in scene.objects}
    # three queries per group: the tokens that choose its count, its colour and its shape
    assert len(tokens) == 3 * len(groups)
    owners = patch_owners(scene)
    prefix = len(tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"])
    index = batch.ground_index.tolist()
    for g in range(0, len(index), 3):
        positions = [at for _, at in index[g : g + 3]]
        assert positions == list(range(positions[0], positions[0] + 3))
        before, count, colour = tokens[g : g + 3]
        assert before in {":", ",", "and"}, before  # ":" ends the prompt, before the first group
        assert count.lower() in {"a", "an", *COUNT_WORDS}, count
        assert colour in {c for c, _ in groups}
        shape = tokenizer.convert_ids_to_tokens(int(batch.input_ids[0, positions[2] + 1])).removesuffix("s")
        ids = [i + 1 for i, o in enumerate(scene.objects) if (o.color, o.shape) == (colour, shape)]
        assert ids, (colour, shape)
        for mask in batch.ground_mask[g : g + 3]:
            assert np.array_equal(mask[prefix : prefix + 576].numpy(), np.isin(owners, ids))


def test_grounding_follows_kept_patches_and_word_scenes():
    tokenizer = build_tokenizer()
    word_scene = next(training_scene(s) for s in range(100) if training_scene(s).text is not None)
    keep = np.arange(0, 576, 3)
    shape, color, word = (labels[keep] for labels in patch_labels(word_scene))
    sample = Sample("word", "What word is written in the image?", word_scene.text)
    batch = pack_sequences(tokenizer, [[sample]], len(keep), [(shape, color, word)])
    prefix = len(tokenizer("<s>USER: ", add_special_tokens=False)["input_ids"])
    assert np.array_equal(batch.ground_mask[0, prefix : prefix + len(keep)].numpy(), word > 0)
    with pytest.raises(ValueError, match="patch_targets"):
        pack_sequences(tokenizer, [[sample]], 576, [(shape, color, word)])


def test_recomputed_head_attention_equals_eager_attention():
    tokenizer = build_tokenizer()
    model = build_model(dataclasses.replace(SMOKE.model, text_layers=2, text_heads=4), tokenizer, seed=3)
    lm = model.model.language_model
    lm.set_attn_implementation("eager")
    scenes = [training_scene(5), training_scene(9)]
    samples = [make_samples(s, np.random.default_rng(0))[:6] for s in scenes]
    batch = pack_sequences(tokenizer, samples, 576, [patch_labels(s) for s in scenes])
    assert len(batch.ground_index) >= 4
    embeds = model.get_input_embeddings()(batch.input_ids)
    # eager attention is given the packing mask in additive form (0 allowed, most-negative otherwise)
    additive = torch.zeros(batch.attention_mask.shape).masked_fill(~batch.attention_mask, torch.finfo().min)
    with torch.no_grad(), AttentionInputs([layer.self_attn for layer in lm.layers]) as taps:
        out = lm(inputs_embeds=embeds, attention_mask=additive, position_ids=batch.position_ids, output_attentions=True)
    rows, pos = batch.ground_index[:, 0], batch.ground_index[:, 1]
    for i, layer in enumerate(lm.layers):
        for head in range(4):
            mine = head_attention(layer.self_attn, *taps.inputs[i], batch, head=head)
            torch.testing.assert_close(mine, out.attentions[i][rows, head, pos], atol=1e-6, rtol=1e-5)


def test_grounding_loss_pulls_attention_onto_the_object():
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(SMOKE.model, text_layers=2), tokenizer, seed=4)
    scene = _complex_scene()
    samples = [s for s in make_samples(scene, np.random.default_rng(2)) if s.task in ("color", "count", "exists")]
    batch = pack_sequences(tokenizer, [samples], 576, [patch_labels(scene)])
    features = torch.randn(576, model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(1))
    labels = torch.from_numpy(patch_labels(scene)[0]).float()
    features[:, 0] += 3 * labels  # the shape is readable from each patch's feature
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    grounds = []
    for _ in range(25):
        parts: dict[str, float] = {}
        loss = text_loss(model, features, batch, ground_weight=1.0, parts=parts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert loss.item() == pytest.approx(parts["text"] + parts["ground"], rel=1e-5)
        grounds.append(parts["ground"])
    assert np.mean(grounds[-3:]) < 0.5 * np.mean(grounds[:3]), grounds
    no_ground: dict[str, float] = {}
    text_loss(model, features, batch, parts=no_ground)
    assert set(no_ground) == {"text"}


def test_reading_queries_point_the_last_prompt_token_at_the_named_words():
    tokenizer = build_tokenizer()
    scene = _complex_scene()
    obj = scene.objects[0]
    cases = [
        (Sample("exists", existence_prompt(obj.shape, obj.color), "Yes", "positive"), [obj.shape, obj.color]),
        (Sample("exists", existence_prompt(obj.shape, "purple"), "No", "attribute"), [obj.shape, "purple"]),
        (Sample("exists", existence_prompt("moon"), "No", "random"), ["moon"]),  # absent shapes are read too
        (Sample("color", color_prompt(obj.shape), obj.color), [obj.shape]),
        (Sample("count", count_prompt(obj.shape), str(scene.count(obj.shape))), [obj.shape + "s"]),
    ]
    for sample, words in cases:
        # the sample packed second, after a caption: positions are the row's, not the segment's
        batch = pack_sequences(tokenizer, [[Sample("caption", "Describe the image.", "a red star."), sample]], 576)
        tokens = tokenizer.convert_ids_to_tokens(batch.input_ids[0])
        queries = [tokens[p] for p in batch.read_index[:, 1]]
        assert queries == [":"] * len(words), sample
        assert int(batch.labels[0, batch.read_index[0, 1]]) == tokenizer(f" {sample.answer}")["input_ids"][0]
        assert batch.read_index[:, 2].tolist() == list(range(len(words)))  # shape word, then colour word
        read = [tokens[int(i)] for i in batch.read_mask.nonzero()[:, 1]]
        assert read == words and batch.read_mask.sum(-1).tolist() == [1] * len(words), sample
        # the word is in the query's own segment, before it
        assert all(
            batch.attention_mask[0, 0, p, w] for p, w in zip(batch.read_index[:, 1], batch.read_mask.nonzero()[:, 1])
        )
    for sample in (
        Sample("caption", "Describe the image.", "a red star."),
        Sample("word", "What word is written?", "cat"),
    ):
        batch = pack_sequences(tokenizer, [[sample]], 576)
        assert batch.read_index.shape == (0, 3) and batch.read_mask.shape == (0, batch.input_ids.shape[1])


def test_reading_loss_teaches_the_first_layer_to_read_the_colour_word():
    """Trained with the reading and grounding terms together, the supervised head of the first
    layer moves its attention onto the colour word of coloured existence questions, as the
    model's own (eager) attention shows, not only the recomputed rows the loss sees."""
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    model = build_model(dataclasses.replace(SMOKE.model, text_layers=2), tokenizer, seed=5)
    lm = model.model.language_model
    lm.set_attn_implementation("eager")
    scene = _complex_scene()
    obj = scene.objects[0]
    colours = ["red", "orange", "yellow", "green", "blue", "purple", "white"]
    samples = [Sample("exists", existence_prompt(obj.shape, c), "Yes" if c == obj.color else "No") for c in colours]
    batch = pack_sequences(tokenizer, [samples], 576, [patch_labels(scene)])
    assert len(batch.ground_index) > 0
    features = torch.randn(576, model.config.vision_config.hidden_size, generator=torch.Generator().manual_seed(1))
    rows, pos, part = batch.read_index.T
    colour = part == 1
    additive = torch.zeros(batch.attention_mask.shape).masked_fill(~batch.attention_mask, torch.finfo().min)

    @torch.no_grad()
    def colour_mass() -> float:
        embeds = model.get_input_embeddings()(batch.input_ids)
        out = lm(inputs_embeds=embeds, attention_mask=additive, position_ids=batch.position_ids, output_attentions=True)
        p = out.attentions[0][rows[colour], READ_HEADS[1], pos[colour]]  # (Q, L)
        return float((p * batch.read_mask[colour]).sum(-1).mean())

    before = colour_mass()
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    reads = []
    for _ in range(30):
        parts: dict[str, float] = {}
        loss = text_loss(model, features, batch, ground_weight=1.0, read_weight=1.0, parts=parts)
        assert loss.item() == pytest.approx(parts["text"] + parts["ground"] + parts["read"], rel=1e-5)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reads.append(parts["read"])
    assert reads[-1] < 0.2 * reads[0], reads
    assert before < 0.5 < colour_mass()
    # the term is the model's own first-layer attention, whatever else text_loss taps
    with torch.no_grad():
        parts = {}
        text_loss(model, features, batch, ground_weight=1.0, read_weight=1.0, parts=parts)
        embeds = model.get_input_embeddings()(batch.input_ids)
        out = lm(inputs_embeds=embeds, attention_mask=additive, position_ids=batch.position_ids, output_attentions=True)
        heads = torch.tensor(READ_HEADS)[part]
        p = out.attentions[0][rows, heads, pos]  # (R, L)
        eager = -torch.log((p * batch.read_mask).sum(-1) + 1e-6)
    expected = torch.cat([eager[part == 0], eager[part == 1]]).mean()
    assert parts["read"] == pytest.approx(float(expected), rel=1e-4, abs=1e-6)
