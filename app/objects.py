"""Object mentions in model answers, checked against a ground truth: what gets highlighted.

A ``Vocabulary`` maps surface forms (singular, plural, synonyms, multi-word names) to categories.
Two ship: the built-in scenes' shapes, and the 80 COCO categories with common synonyms for real
models. ``mark_answer`` splits an answer into plain and highlighted segments: a mentioned category
present in the truth is ``correct``, one absent is ``hallucinated``; when no truth is known, the full
model's answer can stand in, and mentions it lacks are marked ``not in full answer``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scenes.vocabulary import SHAPES

__all__ = [
    "COCO_VOCABULARY",
    "SCENE_VOCABULARY",
    "Mention",
    "Vocabulary",
    "find_mentions",
    "mark_answer",
    "parse_truth",
]

CORRECT = "correct"
HALLUCINATED = "hallucinated"
NOT_IN_REFERENCE = "not in full answer"


@dataclass(frozen=True)
class Vocabulary:
    """Surface form (lower case, single spaces) -> category, plus the category list."""

    name: str
    forms: Mapping[str, str]

    @property
    def categories(self) -> list[str]:
        return sorted(set(self.forms.values()))

    def canonical(self, word: str) -> str | None:
        """The category a typed object name refers to, or None."""
        return self.forms.get(" ".join(word.lower().split()))


@dataclass(frozen=True)
class Mention:
    """One mention of a category in a text: ``text[start:end]``."""

    start: int
    end: int
    surface: str
    category: str


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith("fe"):
        return word[:-2] + "ves"
    return word + "s"


def _vocabulary(name: str, table: Mapping[str, Iterable[str]], irregular: Mapping[str, str] = {}) -> Vocabulary:
    forms: dict[str, str] = {}
    for category, synonyms in table.items():
        for form in (category, *synonyms):
            forms.setdefault(form, category)
            forms.setdefault(irregular.get(form, _plural(form)), category)
    return Vocabulary(name=name, forms=forms)


SCENE_VOCABULARY = _vocabulary("scenes", {shape: () for shape in SHAPES})

# The 80 COCO categories with everyday synonyms (our own table). Plurals are generated; irregular
# ones are listed below.
_COCO = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "baby", "lady", "guy", "people", "player",
               "skier", "surfer", "skateboarder", "pedestrian", "rider", "adult", "toddler", "teenager"),
    "bicycle": ("bike", "cycle"),
    "car": ("automobile", "sedan", "taxi", "suv"),
    "motorcycle": ("motorbike", "scooter", "moped"),
    "airplane": ("plane", "aeroplane", "jet", "aircraft", "airliner"),
    "bus": ("minibus",),
    "train": ("locomotive", "tram", "railcar"),
    "truck": ("lorry", "pickup", "van"),
    "boat": ("ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "traffic light": ("traffic signal", "stoplight", "stop light"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": ("meter",),
    "bench": ("park bench",),
    "bird": ("pigeon", "seagull", "duck", "goose", "parrot", "sparrow", "crow", "swan", "gull"),
    "cat": ("kitten", "kitty"),
    "dog": ("puppy", "pup", "doggy"),
    "horse": ("pony", "foal"),
    "sheep": ("lamb", "ram"),
    "cow": ("cattle", "calf", "bull", "ox"),
    "elephant": (),
    "bear": ("polar bear", "grizzly"),
    "zebra": (),
    "giraffe": (),
    "backpack": ("rucksack", "knapsack"),
    "umbrella": ("parasol",),
    "handbag": ("purse", "bag", "clutch"),
    "tie": ("necktie", "bow tie"),
    "suitcase": ("luggage", "briefcase"),
    "frisbee": ("flying disc",),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("ball", "football", "soccer ball", "basketball", "baseball", "tennis ball", "volleyball"),
    "kite": (),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "skateboard": (),
    "surfboard": ("surf board",),
    "tennis racket": ("racket", "racquet"),
    "bottle": (),
    "wine glass": ("glass", "goblet"),
    "cup": ("mug", "teacup"),
    "fork": (),
    "knife": (),
    "spoon": (),
    "bowl": (),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "hamburger", "sub"),
    "orange": ("tangerine", "mandarin"),
    "broccoli": (),
    "carrot": (),
    "hot dog": ("hotdog",),
    "pizza": (),
    "donut": ("doughnut",),
    "cake": ("cupcake", "pastry"),
    "chair": ("stool", "armchair", "seat"),
    "couch": ("sofa",),
    "potted plant": ("plant", "houseplant", "flowerpot"),
    "bed": (),
    "dining table": ("table", "desk"),
    "toilet": (),
    "tv": ("television", "monitor", "tv screen"),
    "laptop": ("notebook computer", "computer"),
    "mouse": ("computer mouse",),
    "remote": ("remote control", "controller"),
    "keyboard": (),
    "cell phone": ("phone", "cellphone", "smartphone", "mobile phone"),
    "microwave": ("microwave oven",),
    "oven": ("stove",),
    "toaster": (),
    "sink": ("basin",),
    "refrigerator": ("fridge",),
    "book": ("novel",),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddy", "stuffed animal", "stuffed bear"),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("tooth brush",),
}  # fmt: skip
_COCO_IRREGULAR = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "people": "people",
    "sheep": "sheep", "mouse": "mice", "goose": "geese", "ox": "oxen", "calf": "calves", "knife": "knives",
    "skis": "skis", "scissors": "scissors", "cattle": "cattle", "luggage": "luggage", "broccoli": "broccoli",
}  # fmt: skip
COCO_VOCABULARY = _vocabulary("coco", _COCO, _COCO_IRREGULAR)


def find_mentions(text: str, vocabulary: Vocabulary) -> list[Mention]:
    """Every mention in ``text``, longest form first, on word boundaries, in text order."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    forms = sorted(vocabulary.forms, key=len, reverse=True)
    if not forms:
        return []
    pattern = re.compile(
        r"(?<![\w-])(" + "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in forms) + r")(?![\w-])",
        re.IGNORECASE,
    )
    out = []
    for m in pattern.finditer(text):
        key = " ".join(m.group(0).lower().split())
        out.append(Mention(m.start(), m.end(), m.group(0), vocabulary.forms[key]))
    return out


MAX_TRUTH_CHARS = 1000  # a typed ground truth longer than this is refused, not echoed


def parse_truth(text: str, vocabulary: Vocabulary) -> set[str]:
    """Categories from a user's comma-separated object list (empty when it names none).

    Unknown names are a ``ValueError`` quoting at most a few of them, each cut short.
    """
    if not isinstance(text, str):
        raise ValueError("ground truth must be a comma-separated string of object names")
    if len(text) > MAX_TRUTH_CHARS:
        raise ValueError(f"the ground truth has {len(text)} characters; the limit is {MAX_TRUTH_CHARS}")
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if vocabulary.canonical(n) is None]
    if unknown:
        shown = ", ".join(repr(n if len(n) <= 30 else n[:29] + "…") for n in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(
            f"unknown object name(s) {shown}{more} for the {vocabulary.name} vocabulary; "
            f"known categories include {', '.join(vocabulary.categories[:12])}, ..."
        )
    return {vocabulary.canonical(n) for n in names}


def mark_answer(
    text: str, vocabulary: Vocabulary, *, truth: Iterable[str] | None = None, reference: str | None = None
) -> dict:
    """Segments of ``text`` with labels, and the truth categories the answer missed.

    Args:
        truth: the ground-truth categories, when known.
        reference: otherwise, the full model's answer: its mentions act as the truth and the label
            for the others is ``"not in full answer"`` instead of ``"hallucinated"``.
    Returns:
        ``{"segments": [(text, label | None), ...], "mentioned": [...], "hallucinated": [...],
        "not_in_full_answer": [...], "missed": [...], "basis": "ground truth" | "full answer" |
        "none"}``; concatenating the segments' texts gives back ``text``. ``hallucinated`` is
        filled only against a ground truth; against the full answer the mentions it lacks are in
        ``not_in_full_answer`` (they may well be in the image).
    """
    mentions = find_mentions(text, vocabulary)
    if truth is not None:
        known, wrong, basis = set(truth), HALLUCINATED, "ground truth"
    elif reference is not None:
        known, wrong, basis = (
            {m.category for m in find_mentions(reference, vocabulary)},
            NOT_IN_REFERENCE,
            "full answer",
        )
    else:
        known, wrong, basis = None, None, "none"
    segments, pos = [], 0
    for m in mentions:
        if m.start > pos:
            segments.append((text[pos : m.start], None))
        label = None if known is None else (CORRECT if m.category in known else wrong)
        segments.append((text[m.start : m.end], label))
        pos = m.end
    if pos < len(text):
        segments.append((text[pos:], None))
    mentioned = sorted({m.category for m in mentions})
    absent = sorted(c for c in mentioned if known is not None and c not in known)
    return {
        "segments": segments,
        "mentioned": mentioned,
        "hallucinated": absent if wrong == HALLUCINATED else [],
        "not_in_full_answer": absent if wrong == NOT_IN_REFERENCE else [],
        "missed": sorted(known - set(mentioned)) if known is not None else [],
        "basis": basis,
    }
