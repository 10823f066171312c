"""Exact checkers for the shapes world: read shapes back from an image, judge it against a prompt, score answers.

:func:`analyse` segments an image into palette colours — each pixel read as a palette colour laid over white with
some coverage, so a blurred edge keeps its place (coverage ≥ 1/2) and generated, slightly-off colours still count
while greys and in-between colours do not — splits each colour into 8-connected components, drops specks, and
classifies each component by fitting the world's three shapes to it: each shape's outline, drawn by the renderer
itself in boxes around the size whose area matches the component and placed around its centroid, scored by
intersection-over-union with the component. The component is the shape that fits best, or ``"other"`` when none fits
well (a bar, an L, an upside-down triangle) or when it has a large hole (a ring, a frame). A fit degrades gracefully
where a bounding-box rule breaks: a generated square with a notched edge and a stray pixel still overlaps a square
outline far better than a circle, though its box fill ratio looks like a circle's.

:func:`check_generation` then judges the detections against a scene or caption attribute by attribute, like GenEval:
``count`` (exactly as many objects), ``colours`` / ``shapes`` (each one asked for is there), ``binding`` (each
colour is on the right shape) and ``positions`` (the pair's relation); ``correct`` needs all of them.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..observe.metrics import normalise_answer, score_answer  # noqa: F401  (re-exported)
from .world import (
    BACKGROUND,
    COLOURS,
    PALETTE,
    Scene,
    draw_shape,
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
# Renderer images fit their own outline at IoU >= 0.92 (8 px and blurred, the worst case) and any other shape's at
# <= 0.87 (a blurred 8 px square against a circle); with 15 % of their edge pixels flipped (the ragged edges of
# generated shapes) 99 % still fit theirs at >= 0.756. Shapes that are not in the world fit worse: a 2:1 rectangle,
# an L or a T about 0.61, an upside-down or right-angled triangle 0.71. A thick plus sign (0.77) still passes.
MIN_SHAPE_FIT = 0.75
MAX_HOLE_FRACTION = 0.1  # rings and frames: 0.2-0.3; a generated shape's stray 1-2 px holes: a few per cent
_BOX_FRACTION = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area of each outline / area of its box
_SIZE_SLACK = 2  # box sides tried: the area-matched side ± this many pixels
_SHIFT_SLACK = 1  # positions tried: centroid-aligned ± this many pixels in x and y
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
    fit: float  # IoU with the best-fitting outline of ``shape`` (of the best shape when ``shape`` is "other")

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


@functools.lru_cache(maxsize=None)
def outline(shape: str, side: int) -> tuple[np.ndarray, float, float]:
    """The renderer's ``shape`` in a ``side``-pixel box, as a boolean mask, and its centroid (x, y) in the box."""
    image = Image.new("1", (side, side), 0)
    draw_shape(ImageDraw.Draw(image), shape, (0, 0, side - 1, side - 1), 1)
    mask = np.asarray(image, dtype=bool)
    ys, xs = np.nonzero(mask)
    return mask, float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def shape_fits(component: np.ndarray) -> dict[str, float]:
    """Best IoU of ``component`` with each shape's outline over box sides around the area-matched one and positions
    around the one that aligns the centroids."""
    ys, xs = np.nonzero(component)
    area = len(xs)
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    h, w = component.shape
    fits = {}
    for shape, box_fraction in _BOX_FRACTION.items():
        matched = round(float(np.sqrt(area / box_fraction)))
        best = 0.0
        for side in range(max(3, matched - _SIZE_SLACK), matched + _SIZE_SLACK + 1):
            mask, mx, my = outline(shape, side)
            outline_area = int(mask.sum())
            for dy in range(-_SHIFT_SLACK, _SHIFT_SLACK + 1):
                for dx in range(-_SHIFT_SLACK, _SHIFT_SLACK + 1):
                    x0, y0 = round(cx - mx) + dx, round(cy - my) + dy
                    # the part of the outline inside the image; what falls outside only adds to the union
                    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
                    inter = 0
                    if ix0 < ix1 and iy0 < iy1:
                        inside = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                        inter = int((component[iy0:iy1, ix0:ix1] & inside).sum())
                    best = max(best, inter / (area + outline_area - inter))
        fits[shape] = best
    return fits


def hole_fraction(component: np.ndarray) -> float:
    """Share of the component's filled area (itself plus its holes) that is hole: background it encloses."""
    x0, y0, x1, y1 = _box(component)
    crop = np.pad(component[y0 : y1 + 1, x0 : x1 + 1], 1)  # a background ring that touches every outside pixel
    background = [c for c in connected_components(~crop) if not c[0, 0]]
    holes = int(sum(c.sum() for c in background))
    return holes / (holes + int(component.sum()))


def classify(component: np.ndarray) -> tuple[str, tuple[int, int, int, int], float]:
    """Shape name, inclusive bounding box and best fit (:func:`shape_fits`) of one component mask. ``"other"`` when
    no outline fits at :data:`MIN_SHAPE_FIT`, or when :data:`MAX_HOLE_FRACTION` of it is hole (a ring or a frame
    overlaps a disc or square well, but the world's shapes are solid)."""
    fits = shape_fits(component)
    shape = max(fits, key=fits.get)
    solid = hole_fraction(component) <= MAX_HOLE_FRACTION
    return (shape if fits[shape] >= MIN_SHAPE_FIT and solid else "other"), _box(component), fits[shape]


def _box(component: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(component)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


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
            shape, box, fit = classify(component)
            ys, xs = np.nonzero(component)
            centre = ((float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h)  # pixel i covers [i, i+1)
            found.append(DetectedShape(colour, shape, centre, area, box, fit))
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
