"""Procedural scenes with exact ground truth, their tasks and scorers, for PruneLens' tiny LLaVA.

``generate_scene(seed, complexity)`` draws a scene; ``scenes.tasks`` turns it into canonical
(prompt, answer) samples and scores captions (CHAIR, recall) with the ``scoring`` package.
"""

from scenes.generate import Scene, SceneObject, generate_scene
from scenes.vocabulary import COLORS, COMPLEXITIES, SHAPES, SIZES, WORDS

__all__ = ["COLORS", "COMPLEXITIES", "SHAPES", "SIZES", "WORDS", "Scene", "SceneObject", "generate_scene"]
