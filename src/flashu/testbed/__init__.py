"""The shapes-world testbed: a procedural world of tiny images with exactly checkable content.

:mod:`.world` generates seeded scenes (one or two coloured shapes), their images, captions and question/answer
pairs, in disjoint splits with held-out colour–shape compositions; :mod:`.checker` reads shapes back from an image
and judges it against a caption attribute by attribute, and scores answers by exact match.
"""

from .checker import (
    ATTRIBUTES,
    DetectedShape,
    GenerationVerdict,
    analyse,
    check_generation,
    normalise_answer,
    score_answer,
)
from .world import (
    COLOURS,
    DEFAULT_SIZE,
    HELD_OUT,
    PALETTE,
    QA,
    SHAPES,
    SIZES,
    SPLITS,
    Example,
    Scene,
    ShapeSpec,
    caption,
    iter_split,
    parse_caption,
    prompts,
    questions,
    read_understanding_set,
    render,
    sample,
    sample_scene,
    write_understanding_set,
)

__all__ = [
    "ATTRIBUTES", "COLOURS", "DEFAULT_SIZE", "HELD_OUT", "PALETTE", "QA", "SHAPES", "SIZES", "SPLITS",
    "DetectedShape", "Example", "GenerationVerdict", "Scene", "ShapeSpec",
    "analyse", "caption", "check_generation", "iter_split", "normalise_answer", "parse_caption", "prompts",
    "questions", "read_understanding_set", "render", "sample", "sample_scene", "score_answer",
    "write_understanding_set",
]
