"""Exact checkers for the shapes world: read shapes back from an image, judge it against a prompt, score answers.

:func:`analyse` segments an image into palette colours — each pixel read as a palette colour laid over white with
some coverage, so a blurred edge keeps its place (coverage ≥ 1/2) and generated, slightly-off colours still count
while greys and in-between colours do not — splits each colour into 8-connected components, drops specks, and
classifies each component from its bounding box:

* vertical skew of the centroid in the box: an upward triangle is bottom-heavy (1/6 of its height), circles and
  squares are symmetric — this survives blur, which makes a small triangle's fill ratio look like a circle's;
* fill ratio (pixels / box area) of the symmetric ones: square ≈ 1.0, circle ≈ π/4 ≈ 0.78;
* aspect ratio: a box much longer than wide is none of them; anything unclassifiable is ``"other"``.

:func:`check_generation` then judges the detections against a scene or caption attribute by attribute, like GenEval:
``count`` (exactly as many objects), ``colours`` / ``shapes`` (each one asked for is there), ``binding`` (each
colour is on the right shape) and ``positions`` (the pair's relation); ``correct`` needs all of them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .world import (
    BACKGROUND,
    COLOURS,
    PALETTE,
    Scene,
    number_word,
    parse_caption,
    position_of,
    relation_between,
)

# How far (RGB Euclidean) a pixel may lie from the nearest white→palette-colour line and still count as that colour.
# Palette colours are >= 127 apart, so 64 tolerates generated colours that drift by a fair margin (e.g. a red of
# (255, 60, 0) is still red, not orange) yet ignores greys and colours between two palette entries.
MAX_COLOUR_RESIDUAL = 64.0
MAX_ALPHA = 1.5  # coverage above 1 is a darker shade of the colour; cap it so black is not "very dark blue"
# Components smaller than this fraction of the image are noise (10 px at 32×32); the smallest rendered shape,
# an 8 px triangle, has about 36 px.
MIN_AREA_FRACTION = 0.01
SQUARE_MIN_FILL = 0.88  # rendered squares fill 1.0; blur rounds their corners a little
CIRCLE_MIN_FILL = 0.66  # rendered circles fill 0.75-0.81 from 8 px up (a square's inscribed circle: π/4)
TRIANGLE_MIN_SKEW = 0.06  # circles/squares: 0; rendered triangles 0.095 (8 px, blurred) to 0.16 (1/6 in the limit)
MAX_ASPECT = 1.5  # rendered shapes have square boxes
ATTRIBUTES: tuple[str, ...] = ("count", "colours", "shapes", "binding", "positions")

_WHITE = np.array(BACKGROUND, dtype=np.float32)
_DIRECTIONS = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32) - _WHITE  # white → each palette colour
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


@dataclass(frozen=True)
class DetectedShape:
    """One object found in an image; ``centre`` is (x, y) as fractions of the image side, like ``ShapeSpec``."""

    colour: str
    shape: str  # "circle", "square", "triangle" or "other"
    centre: tuple[float, float]
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # inclusive pixel box (x0, y0, x1, y1)
    fill: float  # area / bounding-box area

    @property
    def position(self) -> str:
        return position_of(self.centre)


@dataclass(frozen=True)
class GenerationVerdict:
    """Per-attribute judgement of a generated image against its prompt (GenEval-style)."""

    count: bool
    colours: bool
    shapes: bool
    binding: bool
    positions: bool
    expected: Scene
    detected: tuple[DetectedShape, ...]

    @property
    def correct(self) -> bool:
        return all(self.attributes().values())

    def attributes(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def segment(image: Image.Image, max_residual: float = MAX_COLOUR_RESIDUAL) -> np.ndarray:
    """Per-pixel palette index (into ``COLOURS``); ``-1`` for background and for pixels that fit no palette colour.

    Each pixel is modelled as a palette colour laid over white with some coverage ``alpha`` (what blur and
    anti-aliasing produce at an edge): for each colour, ``alpha`` is the projection of the pixel onto the
    white→colour line and the residual its distance from that line. The best colour is the one with the smallest
    residual; the pixel belongs to it when ``alpha >= 0.5`` (the edge of a blurred shape stays where it was) and the
    residual is at most ``max_residual`` (generated colours may drift; greys and unrelated colours are ignored).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    offset = pixels[:, :, None, :] - _WHITE  # (H, W, 1, 3)
    alpha = (offset * _DIRECTIONS).sum(-1) / (_DIRECTIONS**2).sum(-1)  # (H, W, C)
    alpha = np.clip(alpha, 0.0, MAX_ALPHA)
    residual = np.linalg.norm(offset - alpha[..., None] * _DIRECTIONS, axis=-1)
    best = residual.argmin(axis=-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]
    return np.where((best_alpha >= 0.5) & (best_residual <= max_residual), best, -1)


def connected_components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, as boolean masks (in order of their first pixel).

    Label propagation: every pixel takes the smallest label among itself and its masked neighbours until nothing
    changes. Each sweep is vectorised, and the number of sweeps is bounded by the longest path inside a component,
    which for the compact shapes here is about their diameter — fast without scipy.
    """
    h, w = mask.shape
    big = h * w  # label of unmasked pixels: larger than any real label, so it never wins the minimum
    labels = np.where(mask, np.arange(h * w).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        best = labels.copy()
        for dy, dx in _NEIGHBOURS:
            best = np.minimum(best, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
        best = np.where(mask, best, big)
        if np.array_equal(best, labels):
            break
        labels = best
    return [labels == value for value in np.unique(labels[mask])]


def classify(component: np.ndarray) -> tuple[str, tuple[int, int, int, int], float]:
    """Shape name, inclusive bounding box and fill ratio of one component mask."""
    ys, xs = np.nonzero(component)
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    w, h = x1 - x0 + 1, y1 - y0 + 1
    fill = float(component.sum()) / (w * h)
    box = (x0, y0, x1, y1)
    # How far the centroid sits below the middle of the box, in box heights: an upward triangle's centroid is at
    # 2/3 of its height (skew 1/6), circles and squares are symmetric (0). Blur rounds a small triangle until its
    # fill ratio looks like a circle's, but it stays bottom-heavy, so skew is what separates triangles.
    skew = ((float(ys.mean()) + 0.5) - (y0 + y1 + 1) / 2) / h
    if max(w, h) / min(w, h) > MAX_ASPECT:
        shape = "other"
    elif skew >= TRIANGLE_MIN_SKEW and fill < SQUARE_MIN_FILL:
        shape = "triangle"
    elif abs(skew) < TRIANGLE_MIN_SKEW and fill >= SQUARE_MIN_FILL:
        shape = "square"
    elif abs(skew) < TRIANGLE_MIN_SKEW and fill >= CIRCLE_MIN_FILL:
        shape = "circle"
    else:
        shape = "other"
    return shape, box, fill


def analyse(image: Image.Image, max_residual: float = MAX_COLOUR_RESIDUAL) -> list[DetectedShape]:
    """Objects in ``image``: one per connected component of a palette colour that is not a speck.

    Sorted left to right, then top to bottom, so the output order is stable.
    """
    labels = segment(image, max_residual)
    h, w = labels.shape
    min_area = max(1, round(MIN_AREA_FRACTION * h * w))
    found = []
    for index, colour in enumerate(COLOURS):
        mask = labels == index
        if not mask.any():
            continue
        for component in connected_components(mask):
            area = int(component.sum())
            if area < min_area:
                continue
            shape, box, fill = classify(component)
            ys, xs = np.nonzero(component)
            centre = ((float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h)  # pixel i covers [i, i+1)
            found.append(DetectedShape(colour, shape, centre, area, box, fill))
    return sorted(found, key=lambda d: (d.centre[0], d.centre[1]))


def _identify(expected: Scene, detected: list[DetectedShape]) -> list[DetectedShape] | None:
    """The detection standing for each expected shape: the unique one with its colour and shape, else the unique
    one with its shape, else with its colour. None when any cannot be told apart or two map to the same one.

    Shape before colour, as GenEval locates objects by class and treats colour as an attribute: in an image with
    the colours swapped between the two shapes, the relation is judged between the shapes (only binding fails)."""
    chosen = []
    for spec in expected.shapes:
        for same in (
            lambda d: (d.colour, d.shape) == (spec.colour, spec.shape),
            lambda d: d.shape == spec.shape,
            lambda d: d.colour == spec.colour,
        ):
            matches = [d for d in detected if same(d)]
            if len(matches) == 1:
                chosen.append(matches[0])
                break
        else:
            return None
    return chosen if len({id(d) for d in chosen}) == len(chosen) else None


def _contains(found: Counter, wanted: Counter) -> bool:
    return all(found[k] >= n for k, n in wanted.items())


def check_generation(image: Image.Image, scene_or_caption: Scene | str) -> GenerationVerdict:
    """Judge ``image`` against a scene or a caption (parsed with :func:`parse_caption`).

    ``colours``/``shapes``/``binding`` ask that each requested colour / shape / coloured shape be present; extra
    objects are the business of ``count``. ``positions`` is the relation of a pair (True for a single shape: its
    caption states no position) and is judged on the detections identified by :func:`_identify`, so a wrong colour
    does not also count as a wrong position.
    """
    expected = parse_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
    detected = analyse(image)
    specs = expected.shapes
    positions = True
    if len(specs) == 2:
        pair = _identify(expected, detected)
        positions = pair is not None and relation_between(pair[0].centre, pair[1].centre) == expected.relation
    return GenerationVerdict(
        count=len(detected) == len(specs),
        colours=_contains(Counter(d.colour for d in detected), Counter(s.colour for s in specs)),
        shapes=_contains(Counter(d.shape for d in detected), Counter(s.shape for s in specs)),
        binding=_contains(Counter((d.colour, d.shape) for d in detected), Counter((s.colour, s.shape) for s in specs)),
        positions=positions,
        expected=expected,
        detected=tuple(detected),
    )


_NUMBERS = {str(i): number_word(i) for i in range(10)}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed, a digit spelled as its word ("2" -> "two")."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(word, word) for word in words)


def score_answer(predicted: str, expected: str) -> bool:
    """Exact match after :func:`normalise_answer` on both sides: ``"Red."`` matches ``"red"``; ``"dark red"`` not."""
    return normalise_answer(predicted) == normalise_answer(expected)
