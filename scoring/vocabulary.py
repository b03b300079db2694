"""Vocabularies: which surface forms (singular, plural, synonyms, multi-word names) name which category.

A ``Vocabulary`` is plain data; ``build_vocabulary`` makes one from a category table, generating
English plurals (``plural``) unless an irregular one is listed. ``COCO_VOCABULARY`` holds the 80 COCO
categories with common synonyms, for real models. Vocabularies of other closed worlds are built by
their owners (the built-in scenes' shapes: ``scenes.tasks.SCENE_VOCABULARY``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["COCO_VOCABULARY", "Vocabulary", "build_vocabulary", "plural"]


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


def plural(word: str) -> str:
    """The regular English plural: ``box`` -> ``boxes``, ``berry`` -> ``berries``, ``knife`` -> ``knives``."""
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith("fe"):
        return word[:-2] + "ves"
    return word + "s"


def build_vocabulary(
    name: str, table: Mapping[str, Iterable[str]], irregular: Mapping[str, str] | None = None
) -> Vocabulary:
    """A vocabulary from ``{category: synonyms}``: every category and synonym, and its plural
    (``irregular[form]`` when listed, else ``plural(form)``), names the category; the first
    category to claim a form keeps it."""
    irregular = irregular or {}
    forms: dict[str, str] = {}
    for category, synonyms in table.items():
        for form in (category, *synonyms):
            forms.setdefault(form, category)
            forms.setdefault(irregular.get(form, plural(form)), category)
    return Vocabulary(name=name, forms=forms)


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
COCO_VOCABULARY = build_vocabulary("coco", _COCO, _COCO_IRREGULAR)
