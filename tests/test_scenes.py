"""Scenes: determinism, ground truth against pixels, tasks, tokenizer coverage and the scorers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scenes import COLORS, COMPLEXITIES, SHAPES, SIZES, generate_scene
from scenes.data import EVAL_SEED_BASE, PATCH_SIZE, patch_anchors, patch_labels, patch_owners, training_scene
from scenes.generate import (
    BACKGROUND_MAX_SPREAD,
    BACKGROUND_MAX_VALUE,
    BACKGROUNDS,
    MIN_GAP,
    TEXT_ID,
    pattern_color,
)
from scenes.tasks import (
    CAPTION_PROMPT,
    NEGATIVE_TYPES,
    WORD_PROMPT,
    ShapeMention,
    caption,
    chair,
    make_samples,
    parse_objects,
)
from scenes.tokenizer import build_processor, build_tokenizer
from scenes.vocabulary import IMAGE_SIZE, SHAPE_FREQUENCY, THEME_SHAPE_PROB, THEMES, WORDS
from scoring import exact_match, yes_no_accuracy

SEEDS = range(12)
CASES = [(seed, level) for level in COMPLEXITIES for seed in SEEDS]


def test_vocabulary_sizes():
    assert len(SHAPES) >= 8 and len(set(SHAPES)) == len(SHAPES)
    assert len(COLORS) >= 7 and len(set(COLORS.values())) == len(COLORS)
    assert 2 <= len(SIZES) <= 3
    assert not set(WORDS) & (set(SHAPES) | set(COLORS))


@pytest.mark.parametrize("level", [*COMPLEXITIES, None])
def test_deterministic_per_seed(level):
    a, b = generate_scene(123, level), generate_scene(123, level)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.objects == b.objects and a.text == b.text and a.complexity == b.complexity
    assert np.array_equal(a.label_map, b.label_map)
    c = generate_scene(124, level)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_unseeded_complexity_covers_all_levels_and_rejects_unknown():
    assert {generate_scene(s).complexity for s in range(40)} == set(COMPLEXITIES)
    with pytest.raises(ValueError, match="unknown complexity"):
        generate_scene(0, "hard")


@pytest.mark.parametrize(("seed", "level"), CASES)
def test_ground_truth_matches_pixels(seed, level):
    scene = generate_scene(seed, level)
    img = np.asarray(scene.image)
    assert scene.image.mode == "RGB" and img.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    counts = {"text": (0, 0), "simple": (1, 2), "medium": (3, 5), "complex": (6, 12)}[level]
    assert counts[0] <= len(scene.objects) <= counts[1]
    for i, obj in enumerate(scene.objects, start=1):
        x0, y0, x1, y1 = obj.bbox
        assert 0 <= x0 < x1 <= IMAGE_SIZE and 0 <= y0 < y1 <= IMAGE_SIZE
        mask = scene.label_map == i
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == obj.bbox
        # every pixel of the object is its colour or that colour's pattern shade, mostly the colour,
        # the pattern follows the shape's rule, and the object is clearly visible
        pixels = img[mask]
        base = (pixels == COLORS[obj.color]).all(axis=-1)
        shade = (pixels == pattern_color(obj.color)).all(axis=-1)
        assert (base | shade).all()
        assert base.mean() >= 0.4
        assert mask.sum() >= 150
        crop = img[y0:y1, x0:x1]
        assert (crop == COLORS[obj.color]).all(axis=-1).sum() == base.sum()
        assert shade.mean() >= 0.08
        assert SIZES[obj.size][0] <= obj.radius <= SIZES[obj.size][1]
    for a, b in itertools.combinations(scene.objects, 2):
        gap = max(b.bbox[0] - a.bbox[2], a.bbox[0] - b.bbox[2], b.bbox[1] - a.bbox[3], a.bbox[1] - b.bbox[3])
        assert gap >= MIN_GAP, f"objects {a} and {b} closer than the overlap limit"
    background = img[scene.label_map == 0].astype(int)
    assert (background.max(axis=1) - background.min(axis=1)).max() <= BACKGROUND_MAX_SPREAD  # muted
    assert background.max() <= BACKGROUND_MAX_VALUE
    assert scene.background in BACKGROUNDS
    if level == "text":
        text_mask = scene.label_map == TEXT_ID
        assert scene.text in WORDS and text_mask.sum() >= 500 and scene.theme is None
        x0, y0, x1, y1 = scene.text_bbox
        assert (x1 - x0) * (y1 - y0) <= 0.12 * IMAGE_SIZE**2  # a word of moderate size, not a poster
        assert (img[text_mask] == COLORS[scene.text_color]).all()
    else:
        assert scene.text is None and scene.theme in THEMES


def test_no_background_pixel_can_look_like_an_attribute_colour():
    for colour in COLORS:
        for rgb in (COLORS[colour], pattern_color(colour)):
            assert max(rgb) - min(rgb) > BACKGROUND_MAX_SPREAD or min(rgb) > BACKGROUND_MAX_VALUE, colour


def test_backgrounds_are_varied_not_duplicate_patches():
    """Backgrounds vary as a photograph's do: every kind occurs, and no two background patches of a
    scene are (nearly) the same, so a diversity rule can spend budget on them."""
    kinds = set()
    for seed in range(40):
        scene = generate_scene(seed, "simple")
        kinds.add(scene.background)
        owners = patch_owners(scene)
        img = np.asarray(scene.image, dtype=np.float32)
        side = IMAGE_SIZE // PATCH_SIZE
        patches = img.reshape(side, PATCH_SIZE, side, PATCH_SIZE, 3).transpose(0, 2, 1, 3, 4).reshape(side * side, -1)
        back = patches[owners == 0]
        back = (back - back.mean(axis=1, keepdims=True)).astype(np.float64)
        sq = (back**2).sum(axis=1)
        mean_sq = (sq[:, None] + sq[None, :] - 2 * back @ back.T) / back.shape[1]
        distance = np.sqrt(np.maximum(mean_sq, 0))  # RMS difference per pixel value
        np.fill_diagonal(distance, np.inf)
        assert distance.min() > 2.0, (seed, scene.background)  # grain alone keeps patches apart
    assert kinds == set(BACKGROUNDS)


def test_objects_co_occur_by_theme():
    """A scene's objects come mostly from its theme, so a theme-mate of a present shape is far more
    likely present than its marginal frequency says: the prior a decoder can hallucinate from."""
    in_theme = total = 0
    star_given = {"moon": [0, 0], "heart": [0, 0]}  # [scenes with the shape, of them with a star]
    for seed in range(300):
        scene = generate_scene(seed, "medium")
        shapes, _, _ = THEMES[scene.theme]
        in_theme += sum(o.shape in shapes for o in scene.objects)
        total += len(scene.objects)
        for given, row in star_given.items():
            if given in scene.shapes:
                row[0] += 1
                row[1] += "star" in scene.shapes
    assert in_theme / total > THEME_SHAPE_PROB  # the theme's shapes, plus repeats and chance
    with_moon, with_heart = (row[1] / row[0] for row in star_given.values())
    assert with_moon > 3 * with_heart  # a moon's theme-mate, a heart's not
    assert sum(SHAPE_FREQUENCY) == pytest.approx(1.0)


def test_patch_labels_follow_objects():
    scene = generate_scene(5, "medium")
    shape, color, word = patch_labels(scene)
    assert shape.shape == color.shape == word.shape == (576,)
    assert set(shape[shape > 0] - 1) == {SHAPES.index(o.shape) for o in scene.objects}
    assert not word.any()
    text = generate_scene(5, "text")
    _, _, word = patch_labels(text)
    assert set(word[word > 0] - 1) == {WORDS.index(text.text)}


@pytest.mark.parametrize("level", ["simple", "medium", "complex"])
def test_every_object_has_one_anchor_patch(level):
    side = IMAGE_SIZE // PATCH_SIZE
    for seed in range(6):
        scene = generate_scene(seed, level)
        owners = patch_owners(scene)
        firsts = patch_anchors(scene)
        assert firsts.sum() == len(scene.objects)
        for index in range(1, len(scene.objects) + 1):
            mine = np.flatnonzero(owners == index)
            (first,) = np.flatnonzero(firsts & (owners == index))  # exactly one, owned by the object
            assert first == mine.min()  # the first of its patches in raster order
            row, _ = divmod(int(first), side)
            assert row == (mine // side).min() and not (owners[row * side : first] == index).any()
    assert not patch_anchors(generate_scene(0, "text")).any()


def test_training_and_eval_seeds_are_disjoint():
    with pytest.raises(ValueError, match="training seed"):
        training_scene(EVAL_SEED_BASE)
    assert training_scene(3).seed == 3


@pytest.mark.parametrize(("seed", "level"), CASES)
def test_samples_have_exact_answers(seed, level):
    scene = generate_scene(seed, level)
    samples = make_samples(scene, np.random.default_rng(seed))
    pairs = {(o.color, o.shape) for o in scene.objects}
    assert samples[0].prompt == CAPTION_PROMPT and samples[0].answer == caption(scene)
    for s in samples:
        if s.task == "exists":
            assert s.answer in ("Yes", "No")
            words = s.prompt.split()
            shape = words[-4]
            color = words[-5] if words[-5] in COLORS else None
            present = any(shape == sh and color in (None, c) for c, sh in pairs)
            assert present == (s.answer == "Yes") == (s.kind == "positive"), s
            assert s.prompt in (
                f"Is there a {shape} in the image?",
                f"Is there a {color} {shape} in the image?",
            )
        elif s.task == "color":
            shape = s.prompt.removeprefix("What color is the ").removesuffix("?")
            assert {c for c, sh in pairs if sh == shape} == {s.answer}
        elif s.task == "count":
            shape = s.prompt.removeprefix("How many ").removesuffix("s are there?")
            assert int(s.answer) == scene.count(shape)
        elif s.task == "word":
            assert s.prompt == WORD_PROMPT and s.answer == scene.text
    kinds = {s.kind for s in samples if s.task == "exists"}
    if level != "text" and len(scene.shapes) < len(SHAPES):
        assert set(NEGATIVE_TYPES) <= kinds and "positive" in kinds
        (adversarial,) = [s for s in samples if s.kind == "adversarial"]
        shapes, _, _ = THEMES[scene.theme]
        absent_mates = [sh for sh in shapes if sh not in scene.shapes]
        if absent_mates:  # POPE's adversarial negative: the absent object that co-occurs most
            assert adversarial.prompt == f"Is there a {absent_mates[0]} in the image?"


@pytest.mark.parametrize(("seed", "level"), CASES)
def test_caption_parses_back_to_ground_truth(seed, level):
    scene = generate_scene(seed, level)
    mentions = parse_objects(caption(scene))
    got = sorted((m.color, m.shape) for m in mentions for _ in range(m.count))
    assert got == sorted((o.color, o.shape) for o in scene.objects)


def test_caption_format():
    assert parse_objects("A red circle, an orange square and two green triangles.") == [
        ShapeMention("red", "circle", 1),
        ShapeMention("orange", "square", 1),
        ShapeMention("green", "triangle", 2),
    ]
    assert parse_objects("There is a star. The word cat.") == [ShapeMention(None, "star", 1)]
    assert caption(generate_scene(0, "text")).startswith("The word ")


def test_chair_on_hand_computed_fixture():
    captions = [
        "A red circle and a blue star.",  # truth circle, square: star hallucinated, square missed
        "Two green squares.",  # truth square: perfect
        "A white heart, a red heart and a yellow arrow.",  # truth heart, arrow, circle
    ]
    truths = [["circle", "square"], ["square", "square"], ["heart", "arrow", "circle"]]
    scores = chair(captions, truths)
    # distinct shapes mentioned: 2 + 1 + 2 = 5, hallucinated 1
    # distinct ground-truth shapes: 2 + 1 + 3 = 6, of which mentioned 1 + 1 + 2
    assert scores.chair_i == pytest.approx(1 / 5)
    assert scores.chair_s == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(4 / 6)
    assert scores.n_captions == 3


def test_answer_scorers():
    assert yes_no_accuracy(["Yes", "no.", "Yes, there is", "maybe"], ["Yes", "No", "No", "No"]) == 0.5
    assert exact_match(["red.", " Blue", "cat"], ["red", "blue", "dog"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="predictions"):
        exact_match(["a"], [])


def test_tokenizer_covers_every_prompt_and_answer():
    tokenizer = build_tokenizer()
    for seed, level in CASES[::3]:
        scene = generate_scene(seed, level)
        for s in make_samples(scene, np.random.default_rng(seed)):
            ids = tokenizer(f"{s.prompt} {s.answer}", add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids, s
            answer_ids = tokenizer(s.answer, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(answer_ids) == s.answer


def test_processor_chat_template_and_image_tokens():
    processor = build_processor()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<s>USER: <image>\nDescribe the image. ASSISTANT:"
    enc = processor(images=generate_scene(1).image, text=text, return_tensors="pt")
    ids = enc["input_ids"][0].tolist()
    tok = processor.tokenizer
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 576
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tuple(enc["pixel_values"].shape) == (1, 3, 336, 336)


def test_samples_for_a_shape_drawn_in_every_colour():
    """No wrong-colour question exists then; the other samples are still made (a crash in training)."""
    import dataclasses

    from scenes.tasks import make_samples

    base = generate_scene(7, "complex")
    template = base.objects[0]
    objects = tuple(dataclasses.replace(template, color=c) for c in COLORS)
    scene = dataclasses.replace(base, objects=objects, text=None)
    for seed in range(20):
        samples = make_samples(scene, np.random.default_rng(seed))
        assert not [s for s in samples if s.kind == "attribute"]
        assert any(s.task == "caption" for s in samples)


def test_evaluation_scores_wrong_colours_and_counts_in_captions():
    from scenes.evaluate import Answer, summarize

    scene = next(s for s in (generate_scene(seed, "medium") for seed in range(50)) if len(s.shapes) == len(s.objects))
    first, second = scene.objects[:2]
    wrong_colour = next(c for c in COLORS if c != first.color)

    def answer(prediction):
        return Answer(
            scene.seed, "medium", len(scene.objects), "caption", None, CAPTION_PROMPT, caption(scene), prediction
        )

    captions = [
        f"A {wrong_colour} {first.shape} and two {second.color} {second.shape}s.",  # both mentions wrong
        caption(scene),  # every mention right
    ]
    m = summarize([answer(c) for c in captions], [scene])
    mentions = 2 + len(scene.objects)  # present shapes named by the two captions
    assert m["caption_attr_i"] == pytest.approx(2 / mentions)
    assert m["caption_attr_s"] == pytest.approx(1 / 2)
    word = generate_scene(0, "text")
    m = summarize([Answer(word.seed, "text", 0, "caption", None, CAPTION_PROMPT, caption(word), caption(word))], [word])
    assert np.isnan(m["caption_attr_i"]) and np.isnan(m["caption_attr_s"])  # nothing to get wrong
