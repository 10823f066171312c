"""The shapes world: a procedural, seeded world of tiny RGB images whose content is known exactly.

Every image shows one or two flat-coloured shapes on a white background. Everything is chosen so that an exact
checker (:mod:`flashu.testbed.checker`) can read an image back:

* **Palette** — six saturated colours at least ~127 apart in RGB from each other and from white, so colour
  segmentation still works on slightly-off generated colours.
* **Shapes** — circle, square, triangle (pointing up): solid, upright and far enough apart that the renderer's own
  outline of one overlaps another's with IoU ≤ 0.87 even at 8 px and blurred, so fitting outlines tells them apart.
* **Layout** — a single shape sits at the centre; a pair sits in the left/right halves or the top/bottom halves,
  so the relation between them is never ambiguous. Centres get a small jitter and each shape is small or large,
  which varies the images without changing the caption.
* **Held-out compositions** — :data:`HELD_OUT` (colour, shape) pairs never appear in ``train``/``validation``/
  ``test``; every ``test_heldout`` scene contains at least one of them (each colour and shape alone is still seen).

Splits are disjoint by construction: a scene's split bucket is a stable hash of its content (order-independent),
and ``train``/``validation``/``test`` only accept scenes from their own bucket, so no image can appear in two of
them; ``test_heldout`` only accepts scenes the others reject (those with a held-out composition). Everything is derived
from ``sha256`` seeds, never Python's randomised ``hash``, so ``sample(split, index)`` is the same on any machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..errors import ConfigError

DEFAULT_SIZE = 32  # the tiny testbed model's resolution

BACKGROUND: tuple[int, int, int] = (255, 255, 255)
# Saturated colours chosen far apart in RGB (closest pairs: red–orange 128, orange–yellow 127).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 255, 0),
    "green": (0, 160, 0),
    "blue": (0, 64, 255),
    "purple": (150, 0, 200),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Side of a shape's bounding box as a fraction of the image side: 8 px / 12 px at 32 px. Below 8 px a rasterised
# circle, square and triangle differ in too few pixels for the checker to tell them apart reliably.
SIZES: dict[str, float] = {"small": 0.25, "large": 0.375}
# Relation of the first shape of a pair to the second, as the caption says it and as an answer word.
RELATIONS: dict[str, str] = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
SPLITS: tuple[str, ...] = ("train", "validation", "test", "test_heldout")

# Each held-out pair's colour and its shape both appear in train in other combinations, so test_heldout measures
# composition (binding known words in a new way), not unseen words.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle")}
)

_SLOT = {"center": (0.5, 0.5), "left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
_JITTER_SINGLE = 2  # max centre jitter in 1/32 units of the side: keeps a single shape well inside "center"
_JITTER_PAIR = 1  # a large shape (12/32) in a half (16/32) has 2/32 to spare: jitter 1 keeps a 1/32 gap
_PAIR_PROBABILITY = 0.7  # pairs carry the relations and the harder questions, so most scenes are pairs
# Bucket a scene by its content hash into train / validation / test (percent); test_heldout is not bucketed.
_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: ``centre`` is (x, y) as fractions of the image side, (0, 0) the top-left corner."""

    shape: str
    colour: str
    centre: tuple[float, float]
    size: str = "large"

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.colour not in PALETTE:
            raise ConfigError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.size not in SIZES:
            raise ConfigError(f"unknown size {self.size!r}; known: {', '.join(SIZES)}")

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def indefinite(self) -> str:
        """``"a red circle"``, ``"an orange square"``."""
        return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.name}"

    @property
    def position(self) -> str:
        return position_of(self.centre)


@dataclass(frozen=True)
class Scene:
    """One or two shapes; a pair always differs in both colour and shape so every question has one answer."""

    shapes: tuple[ShapeSpec, ...]

    def __post_init__(self) -> None:
        if len(self.shapes) not in (1, 2):
            raise ConfigError(f"a scene has one or two shapes, not {len(self.shapes)}")
        if len(self.shapes) == 2:
            a, b = self.shapes
            if a.colour == b.colour or a.shape == b.shape:
                raise ConfigError(f"the two shapes must differ in colour and shape: {a.name!r}, {b.name!r}")

    @property
    def relation(self) -> str | None:
        """Where the first shape is relative to the second (``left``/``right``/``above``/``below``), or None."""
        if len(self.shapes) == 1:
            return None
        return relation_between(self.shapes[0].centre, self.shapes[1].centre)

    def key(self) -> str:
        """Canonical text of the image content, independent of the order the caption names the shapes in."""
        parts = sorted(f"{s.colour}/{s.shape}/{s.size}/{s.centre[0]!r},{s.centre[1]!r}" for s in self.shapes)
        return ";".join(parts)

    def combos(self) -> set[tuple[str, str]]:
        return {(s.colour, s.shape) for s in self.shapes}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # always one lowercase word, so exact match is meaningful
    kind: str  # "colour", "shape", "count" or "relation" (the VQA world: the family, "yesno", "choice" or "open")
    topic: str = ""  # the VQA world: what is asked ("exist", "colour", "shape", "count", "relation")


@dataclass(frozen=True)
class Example:
    split: str
    index: int
    scene: Scene
    image: Image.Image
    caption: str
    qas: tuple[QA, ...]


def position_of(centre: tuple[float, float]) -> str:
    """Coarse position label of a centre: ``center`` near the middle, else the dominant direction from it."""
    dx, dy = centre[0] - 0.5, centre[1] - 0.5
    if max(abs(dx), abs(dy)) < 0.125:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Relation of centre ``a`` to centre ``b`` along the dominant axis of their displacement."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def number_word(n: int) -> str:
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


# ---------------------------------------------------------------------------------------------------- rendering


def shape_box(spec: ShapeSpec, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel bounding box (x0, y0, x1, y1) of ``spec`` drawn on a ``size``×``size`` image."""
    side = max(1, round(SIZES[spec.size] * size))
    x0 = round(spec.centre[0] * size - side / 2)
    y0 = round(spec.centre[1] * size - side / 2)
    return x0, y0, x0 + side - 1, y0 + side - 1


def render(scene: Scene, size: int = DEFAULT_SIZE) -> Image.Image:
    """Draw ``scene`` on a white ``size``×``size`` RGB image.

    Pillow's ImageDraw does not anti-alias, so every pixel is exactly white or exactly a palette colour.
    """
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for spec in scene.shapes:
        draw_shape(draw, spec.shape, shape_box(spec, size), PALETTE[spec.colour])
    return image


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    """Draw one upright ``shape`` filling the inclusive pixel ``box``; the checker fits these same outlines."""
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":  # pointing up: apex at the top centre, base along the bottom edge
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


# ------------------------------------------------------------------------------------------------------- language


def caption(scene: Scene) -> str:
    """``"a red circle"`` or ``"a red circle left of an orange square"`` (relation of the first to the second)."""
    first = scene.shapes[0].indefinite
    if len(scene.shapes) == 1:
        return first
    return f"{first} {RELATIONS[scene.relation]} {scene.shapes[1].indefinite}"  # type: ignore[index]


_CAPTION_RE = re.compile(
    rf"an? (?P<c0>{'|'.join(COLOURS)}) (?P<s0>{'|'.join(SHAPES)})"
    rf"(?: (?P<rel>{'|'.join(RELATIONS.values())}) an? (?P<c1>{'|'.join(COLOURS)}) (?P<s1>{'|'.join(SHAPES)}))?"
)
_RELATION_OF_WORDS = {words: rel for rel, words in RELATIONS.items()}
# Where parse_caption puts the first shape of a pair (the second goes to the opposite slot).
_SLOT_OF_RELATION = {
    "left": ("left", "right"),
    "right": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


def parse_caption(text: str) -> Scene:
    """Inverse of :func:`caption`: the scene a caption describes, at canonical positions and ``large`` size.

    Case, surrounding whitespace and a final period are ignored; anything else not in the caption grammar raises
    :class:`~flashu.errors.ConfigError`. ``caption(parse_caption(c)) == c`` for every caption ``c``.
    """
    normal = " ".join(text.strip().lower().rstrip(".").split())
    match = _CAPTION_RE.fullmatch(normal)
    if match is None:
        raise ConfigError(
            f"cannot parse caption {text!r}: expected 'a <colour> <shape>' or "
            f"'a <colour> <shape> <left of|right of|above|below> a <colour> <shape>'"
        )
    if match["rel"] is None:
        return Scene((ShapeSpec(match["s0"], match["c0"], _SLOT["center"]),))
    slot_a, slot_b = _SLOT_OF_RELATION[_RELATION_OF_WORDS[match["rel"]]]
    return Scene(
        (ShapeSpec(match["s0"], match["c0"], _SLOT[slot_a]), ShapeSpec(match["s1"], match["c1"], _SLOT[slot_b]))
    )


def questions(scene: Scene) -> list[QA]:
    """Question/answer pairs with one-word answers: colour of each shape, shape at each position, count, and
    (for pairs) the relation of each shape to the other."""
    qas = [QA(f"what color is the {s.shape}?", s.colour, "colour") for s in scene.shapes]
    for s in sorted(scene.shapes, key=lambda s: POSITIONS.index(s.position)):
        where = "in the center" if s.position == "center" else f"on the {s.position}"
        qas.append(QA(f"what shape is {where}?", s.shape, "shape"))
    qas.append(QA("how many shapes are there?", number_word(len(scene.shapes)), "count"))
    if len(scene.shapes) == 2:
        a, b = scene.shapes
        for x, y in ((a, b), (b, a)):
            question = f"where is the {x.name} relative to the {y.name}?"
            qas.append(QA(question, relation_between(x.centre, y.centre), "relation"))
    return qas


# --------------------------------------------------------------------------------------------------------- splits


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _bucket(scene: Scene) -> int:
    return _stable_int("bucket:" + scene.key()) % 100


def _random_spec(rng: random.Random, shape: str, colour: str, slot: str, jitter: int) -> ShapeSpec:
    cx, cy = _SLOT[slot]
    dx, dy = rng.randint(-jitter, jitter) / 32, rng.randint(-jitter, jitter) / 32  # k/32: exact binary floats
    return ShapeSpec(shape, colour, (cx + dx, cy + dy), rng.choice(tuple(SIZES)))


def _random_scene(rng: random.Random) -> Scene:
    if rng.random() >= _PAIR_PROBABILITY:
        return Scene((_random_spec(rng, rng.choice(SHAPES), rng.choice(COLOURS), "center", _JITTER_SINGLE),))
    shape_a, shape_b = rng.sample(SHAPES, 2)
    colour_a, colour_b = rng.sample(COLOURS, 2)
    slot_a, slot_b = rng.choice((("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top")))
    return Scene(
        (
            _random_spec(rng, shape_a, colour_a, slot_a, _JITTER_PAIR),
            _random_spec(rng, shape_b, colour_b, slot_b, _JITTER_PAIR),
        )
    )


def _accepts(split: str, scene: Scene) -> bool:
    held_out = bool(scene.combos() & HELD_OUT)
    if split == "test_heldout":
        return held_out
    return not held_out and _bucket(scene) in _BUCKETS[split]


def seed_stream(world: str, splits: tuple[str, ...], split: str, index: int) -> random.Random:
    """The (split, index) seed stream of a world, after checking the split and the index (shared by the worlds)."""
    if split not in splits:
        raise ConfigError(f"unknown split {split!r}; known: {', '.join(splits)}")
    if index < 0:
        raise ConfigError(f"index must be >= 0, got {index}")
    return random.Random(_stable_int(f"{world}:{split}:{index}"))


def sample_scene(split: str, index: int) -> Scene:
    """The ``index``-th scene of ``split``: draws from the (split, index) seed stream until the split accepts one."""
    rng = seed_stream("flashu-shapes-world", SPLITS, split, index)
    while True:  # acceptance is >= ~5 %, so this ends after a handful of draws
        scene = _random_scene(rng)
        if _accepts(split, scene):
            return scene


def sample(split: str, index: int, size: int = DEFAULT_SIZE) -> Example:
    """Deterministic example ``index`` of ``split``: the same (split, index, size) always gives the same bytes."""
    scene = sample_scene(split, index)
    return Example(split, index, scene, render(scene, size), caption(scene), tuple(questions(scene)))


def iter_split(split: str, n: int, size: int = DEFAULT_SIZE, start: int = 0) -> Iterator[Example]:
    for index in range(start, start + n):
        yield sample(split, index, size)


def prompts(split: str, n: int, start: int = 0) -> list[str]:
    """Captions of the first ``n`` scenes of ``split``: generation prompts (e.g. for calibration)."""
    return [caption(sample_scene(split, i)) for i in range(start, start + n)]


def write_understanding_set(
    directory: str | Path, n: int, split: str = "validation", size: int = DEFAULT_SIZE
) -> Path:
    """Write ``n`` scenes of ``split`` as PNGs plus ``understanding.jsonl`` into ``directory``; return the JSONL path.

    Each line is ``{"image": ..., "question": ..., "answer": ...}``, one line per question (every question of a scene
    refers to the same image). Image paths are relative to the JSONL's directory so the set can be moved or shipped;
    :func:`read_understanding_set` resolves them.
    """
    from ..io.files import save_image, write_text

    directory = Path(directory)
    lines = []
    for example in iter_split(split, n, size):
        rel = Path("images") / f"{split}_{example.index:05d}.png"
        save_image(example.image, directory / rel)
        for qa in example.qas:
            lines.append(json.dumps({"image": rel.as_posix(), "question": qa.question, "answer": qa.answer}) + "\n")
    return write_text(directory / "understanding.jsonl", "".join(lines))


def read_understanding_set(jsonl: str | Path) -> list[dict[str, str]]:
    """Read a set written by :func:`write_understanding_set`, with image paths made absolute."""
    jsonl = Path(jsonl)
    rows = []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["image"] = str((jsonl.parent / row["image"]).resolve())
            rows.append(row)
    return rows


def calibration_items(task: str, count: int) -> list:
    """FlashU calibration data for models trained on this world (entry point ``shapes-world`` of the
    ``flashu.calibration`` group): train-split captions (``t2i``) or image/question pairs (``mmu``), never from the
    evaluated splits."""
    if task == "t2i":
        return prompts("train", count)
    pairs = []
    for example in iter_split("train", count):
        qa = example.qas[len(pairs) % len(example.qas)]
        pairs.append((example.image, qa.question))
    return pairs
