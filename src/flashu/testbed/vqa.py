"""The VQA world (testbed v2): scenes that look more like a VLM's input, asked the way MME and MMBench ask.

Each image is 64×64 px (256 image tokens at the testbed's 4 px per token) and shows one to four shapes of the
shapes world (:mod:`flashu.testbed.world`: its palette, its shapes, its renderer) on a **background that carries
pixels but no answer**: a two-tone gradient, a texture (stripes or a checkerboard) or per-pixel noise, always in
pale, unsaturated tones far from every palette colour. Most image tokens are therefore background — redundant but
not blank, as in photographs — which is what visual-token pruning meets on a real model.

Questions come in three families, each with one-word answers that exact match can score:

* ``yesno`` (MME-style): "is there a red circle in the image? answer yes or no." — existence (half of the negatives
  share a colour or a shape with the scene), count and relation questions, answered ``yes`` or ``no`` in equal
  measure.
* ``choice`` (MMBench-style): a question, lettered options on their own lines and "answer with the letter." —
  colour of a shape, shape of a colour, count, relation; the answer is the option's letter.
* ``open``: the same four topics asked directly ("what color is the circle?"), answered with the word itself —
  the shapes world's question style, which also teaches the model to read the new scenes (testbed v2 starts from
  v1's weights).

Every question has exactly one right answer by construction: colours are distinct within a scene (so "the red
shape" names one), a shape is asked about by kind only when it is the only one of its kind, and relations are asked
only between shapes whose displacement is clearly horizontal or vertical. Splits are disjoint by a content hash,
and everything is derived from ``sha256`` seeds as in the shapes world, so ``sample(split, i)`` is the same bytes on
any machine.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .world import COLOURS, PALETTE, QA, SHAPES, _stable_int, draw_shape, number_word, seed_stream

SIZE = 64  # pixels per side: 16×16 = 256 image tokens at the testbed's 4 px per token
SPLITS: tuple[str, ...] = ("train", "validation", "test")
FAMILIES: tuple[str, ...] = ("yesno", "choice", "open")
TOPICS: tuple[str, ...] = ("exist", "colour", "shape", "count", "relation")
BACKGROUNDS: tuple[str, ...] = ("gradient", "texture", "noise")
SIDES: tuple[int, ...] = (12, 16)  # shape sides in pixels (the shapes world's 8/12 px at 32 px, scaled ×1.33)
MAX_SHAPES = 4
LETTERS = "ABCD"
_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}
_REL_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_YESNO_TAIL = " answer yes or no."
_CHOICE_TAIL = "\nanswer with the letter."


@dataclass(frozen=True)
class Item:
    """One shape in a scene: kind, colour, side in px and the top-left corner of its box."""

    shape: str
    colour: str
    side: int
    x: int
    y: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + (self.side - 1) / 2, self.y + (self.side - 1) / 2

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Background:
    kind: str
    tones: tuple[tuple[int, int, int], tuple[int, int, int]]
    param: int  # gradient direction (0..3) / texture period and style / noise seed

    def render(self) -> np.ndarray:
        a, b = (np.array(t, dtype=np.float32) for t in self.tones)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
        if self.kind == "gradient":
            w = (xx, yy, (xx + yy) / 2, (xx + 1 - yy) / 2)[self.param % 4]
        elif self.kind == "texture":
            period = 4 + 2 * (self.param % 3)  # 4, 6 or 8 px
            iy, ix = np.mgrid[0:SIZE, 0:SIZE] // period
            w = ((iy, ix, ix + iy)[(self.param // 3) % 3] % 2).astype(np.float32)  # stripes ─, stripes │, checker
        else:  # noise
            w = np.random.default_rng(self.param).random((SIZE, SIZE), dtype=np.float32)
        pixels = a[None, None] * (1 - w[..., None]) + b[None, None] * w[..., None]
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    background: Background

    def key(self) -> str:
        parts = sorted(f"{i.colour}/{i.shape}/{i.side}/{i.x},{i.y}" for i in self.items)
        return ";".join(parts) + f"|{self.background}"


@dataclass(frozen=True)
class Example:
    split: str
    index: int
    scene: Scene
    image: Image.Image
    qas: tuple[QA, ...]  # QA.kind is the family: "yesno", "choice" or "open"


# ------------------------------------------------------------------------------------------------ scenes


def _pale(rng: random.Random) -> tuple[int, int, int]:
    """An unsaturated light tone: grey 175–235 with a tint of at most ±15 per channel (palette colours have a
    channel at 0 or a spread of ≥ 128, so no background pixel reads as a shape)."""
    grey = rng.randint(175, 235)
    return tuple(max(0, min(255, grey + rng.randint(-15, 15))) for _ in range(3))  # type: ignore[return-value]


def _random_background(rng: random.Random) -> Background:
    kind = rng.choice(BACKGROUNDS)
    return Background(kind, (_pale(rng), _pale(rng)), rng.randrange(1 << 30))


def _overlaps(a: Item, b: Item, gap: int = 3) -> bool:
    return not (a.x + a.side + gap <= b.x or b.x + b.side + gap <= a.x
                or a.y + a.side + gap <= b.y or b.y + b.side + gap <= a.y)


def _random_scene(rng: random.Random) -> Scene:
    n = rng.choice((1, 2, 2, 3, 3, 4))
    colours = rng.sample(COLOURS, n)
    items: list[Item] = []
    for colour in colours:
        for _ in range(200):
            side = rng.choice(SIDES)
            item = Item(rng.choice(SHAPES), colour, side, rng.randint(2, SIZE - side - 2), rng.randint(2, SIZE - side - 2))
            if not any(_overlaps(item, other) for other in items):
                items.append(item)
                break
    return Scene(tuple(items), _random_background(rng))


def render(scene: Scene) -> Image.Image:
    image = Image.fromarray(scene.background.render(), "RGB")
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        draw_shape(draw, item.shape, (item.x, item.y, item.x + item.side - 1, item.y + item.side - 1),
                   PALETTE[item.colour])
    return image


def clear_relation(a: Item, b: Item) -> str | None:
    """Relation of ``a`` to ``b`` when their displacement is clearly along one axis (the dominant component at
    least twice the other and at least 8 px), else None."""
    (ax, ay), (bx, by) = a.centre, b.centre
    dx, dy = ax - bx, ay - by
    if abs(dx) >= max(8, 2 * abs(dy)):
        return "left" if dx < 0 else "right"
    if abs(dy) >= max(8, 2 * abs(dx)):
        return "above" if dy < 0 else "below"
    return None


# ------------------------------------------------------------------------------------------------ questions


def _choice(question: str, right: str, wrong: list[str], rng: random.Random) -> tuple[str, str]:
    options = [right] + rng.sample(wrong, min(len(wrong), len(LETTERS) - 1))
    rng.shuffle(options)
    lines = "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return question + lines + _CHOICE_TAIL, LETTERS[options.index(right)]


def _unique_by_shape(scene: Scene) -> list[Item]:
    kinds = [i.shape for i in scene.items]
    return [i for i in scene.items if kinds.count(i.shape) == 1]


def _related_pairs(scene: Scene) -> list[tuple[Item, Item, str]]:
    return [(a, b, r) for a in scene.items for b in scene.items
            if a is not b and (r := clear_relation(a, b)) is not None]


def yesno_question(scene: Scene, rng: random.Random, answer: str) -> QA:
    """An MME-style question whose answer is ``answer`` ("yes" or "no")."""
    topics = ["exist", "count"] + (["relation"] if _related_pairs(scene) else [])
    topic = rng.choice(topics)
    yes = answer == "yes"
    if topic == "exist":
        present = {(i.colour, i.shape) for i in scene.items}
        if yes:
            colour, shape = rng.choice(sorted(present))
        else:
            absent = sorted({(c, s) for c in COLOURS for s in SHAPES} - present)
            near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
            colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
        text = f"is there {'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} in the image?"
    elif topic == "count":
        n = len(scene.items)
        k = n if yes else rng.choice([m for m in (n - 1, n + 1) if 1 <= m <= MAX_SHAPES + 1])
        text = f"are there {number_word(k)} shapes in the image?" if k > 1 else "is there one shape in the image?"
    else:
        a, b, rel = rng.choice(_related_pairs(scene))
        rel = rel if yes else _OPPOSITE[rel]
        text = f"is the {a.name} {_REL_WORDS[rel]} the {b.name}?"
    return QA(text + _YESNO_TAIL, answer, "yesno", topic)


def _direct_question(scene: Scene, rng: random.Random) -> tuple[str, str, list[str], str]:
    """A question about one topic (colour of a shape, shape of a colour, count, relation): its text, its one-word
    answer, the other words of that topic (the wrong options of a lettered choice) and the topic."""
    topics = ["shape", "count"] + (["colour"] if _unique_by_shape(scene) else []) \
        + (["relation"] if _related_pairs(scene) else [])
    topic = rng.choice(topics)
    if topic == "colour":
        item = rng.choice(_unique_by_shape(scene))
        return f"what color is the {item.shape}?", item.colour, [c for c in COLOURS if c != item.colour], topic
    if topic == "shape":
        item = rng.choice(scene.items)
        return f"what shape is the {item.colour} object?", item.shape, [s for s in SHAPES if s != item.shape], topic
    if topic == "count":
        n = len(scene.items)
        return "how many shapes are there?", number_word(n), [number_word(m) for m in range(1, MAX_SHAPES + 2)
                                                              if m != n], topic
    a, b, rel = rng.choice(_related_pairs(scene))
    return f"where is the {a.name} relative to the {b.name}?", rel, [r for r in _REL_WORDS if r != rel], topic


def choice_question(scene: Scene, rng: random.Random) -> QA:
    """An MMBench-style question with lettered options; the answer is a letter."""
    question, right, wrong, topic = _direct_question(scene, rng)
    return QA(*_choice(question, right, wrong, rng), "choice", topic)


def open_question(scene: Scene, rng: random.Random) -> QA:
    """A direct question answered with one word (colour, shape, number word or relation)."""
    question, answer, _, topic = _direct_question(scene, rng)
    return QA(question, answer, "open", topic)


def family_question(scene: Scene, rng: random.Random, family: str) -> QA:
    """One question of ``family`` (a yes/no question's answer is yes or no with equal probability)."""
    if family == "yesno":
        return yesno_question(scene, rng, rng.choice(("yes", "no")))
    return choice_question(scene, rng) if family == "choice" else open_question(scene, rng)


def questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One question of each family: yes/no, lettered choice, open."""
    return [family_question(scene, rng, family) for family in FAMILIES]


def more_questions(scene: Scene, rng: random.Random, asked: list[QA], count: int,
                   families: tuple[str, ...] = FAMILIES, topic_weights: dict[str, float] | None = None) -> list[QA]:
    """``asked`` extended to ``count`` distinct questions about the same scene, the families taken in turn (a
    training row then reads its 256 image tokens once for several answers). ``topic_weights``: a drawn question
    of topic t is kept with probability ``topic_weights.get(t, 1)`` (fewer questions of a topic already learnt)."""
    out, seen = list(asked), {qa.question for qa in asked}
    for attempt in range(16 * count):
        if len(out) >= count:
            break
        qa = family_question(scene, rng, families[attempt % len(families)])
        if topic_weights and rng.random() >= topic_weights.get(qa.topic, 1.0):
            continue
        if qa.question not in seen:
            seen.add(qa.question)
            out.append(qa)
    return out


# ------------------------------------------------------------------------------------------------ splits


def _bucket(scene: Scene) -> int:
    return _stable_int("vqa-bucket:" + scene.key()) % 100


def sample(split: str, index: int) -> Example:
    """Deterministic example ``index`` of ``split``: the image and one question of each family."""
    rng = seed_stream("flashu-vqa-world", SPLITS, split, index)
    while True:
        scene = _random_scene(rng)
        if _bucket(scene) in _BUCKETS[split]:
            break
    return Example(split, index, scene, render(scene), tuple(questions(scene, rng)))


def iter_split(split: str, n: int, start: int = 0) -> Iterator[Example]:
    for index in range(start, start + n):
        yield sample(split, index)


def questions_of(split: str, n: int) -> list[tuple[Image.Image, QA]]:
    """The first ``n`` (image, question) of ``split``, every question of a scene in turn."""
    items: list[tuple[Image.Image, QA]] = []
    index = 0
    while len(items) < n:
        example = sample(split, index)
        items += [(example.image, qa) for qa in example.qas][: n - len(items)]
        index += 1
    return items


def question_items(split: str, n: int) -> list[tuple[Image.Image, str, str, str]]:
    """The first ``n`` (image, question, answer, family) of ``split``."""
    return [(image, qa.question, qa.answer, qa.kind) for image, qa in questions_of(split, n)]


def calibration_items(task: str, count: int) -> list:
    """Calibration data of testbed v2 (entry point ``vqa-world``): shapes-world captions for ``t2i`` (v2 draws
    the shapes world) and VQA-world image/question pairs of the train split for ``mmu``."""
    from . import world

    if task == "t2i":
        return world.prompts("train", count)
    return [(image, question) for image, question, _, _ in question_items("train", count)]


SOURCE = "vqa-world"  # the calibration source (and understanding world) a v2 testbed config names


def asks(config) -> bool:
    """True when a model config's understanding world is this one (testbed v2), False for the shapes world."""
    return getattr(config, "calibration_source", "") == SOURCE
