"""Task-specific calibration: real forwards of each task with an activation-norm probe, computed once and cached.

* ``t2i``: real denoising evaluations (noisy latents along the sampler's trajectory, time token, CFG rows) on
  calibration prompts that are not benchmark prompts;
* ``mmu``: the real understanding prefill on image + question pairs.

**Calibration data.** A model names its calibration source in ``Showo2Config.calibration_source``; sources are
registered with :func:`register_calibration_source` or declared by installed packages under the entry-point group
``flashu.calibration`` (the shapes-world testbed declares ``shapes-world`` that way). Without one, ``t2i`` uses the
prompts shipped with flashu and ``mmu`` synthetic images (gradients and coloured shapes) with generic questions —
pass your own (``flashu calibrate --prompts/--data``) for a real checkpoint.

**Cache.** :func:`cached_scores` stores every computed score file under the user cache directory
(``$FLASHU_CACHE_DIR``, else ``$XDG_CACHE_HOME/flashu`` or ``~/.cache/flashu``), keyed by the model's weight
fingerprint and dtype, the task, the calibration items and settings: a second run on the same model starts at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import warnings
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from ..io.files import WriteError
from ..model import ExecutionPlan
from ..pipelines.mmu import build_understanding_inputs
from ..pipelines.t2i import generate
from .importance import SCORES_FORMAT, ActivationNormProbe, ImportanceScores, check_task, model_fingerprint, \
    scores_from_norms

CALIBRATION_STEPS = 10  # grid points per calibration prompt: 9 evaluations spread over the whole trajectory
ENTRY_POINT_GROUP = "flashu.calibration"
_SOURCES: dict[str, Callable[[str, int], list]] = {}


# ---------------------------------------------------------------------------------------------------- data
def register_calibration_source(name: str, items: Callable[[str, int], list]) -> None:
    """``items(task, count)`` returns ``count`` calibration items: prompts (``t2i``) or ``(image, question)``
    pairs (``mmu``). Models name their source in ``Showo2Config.calibration_source``."""
    _SOURCES[name] = items


def _source(name: str) -> Callable[[str, int], list]:
    if name not in _SOURCES:
        found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            raise FlashuError(f"the model's calibration source {name!r} is not installed (no registered source and "
                              f"no '{ENTRY_POINT_GROUP}' entry point of that name); pass calibration data explicitly")
        _SOURCES[name] = found[0].load()
    return _SOURCES[name]


def default_prompts() -> list[str]:
    text = resources.files("flashu").joinpath("data/calibration_prompts.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


SYNTHETIC_QUESTIONS = ("What is in the image?", "Describe the image briefly.", "What colours do you see?",
                       "How many objects are there?")


def synthetic_pairs(count: int, size: int = 256, seed: int = 0) -> list[tuple[object, str]]:
    """Generic understanding calibration: seeded images of a gradient background with a few coloured ellipses
    and rectangles, each with a generic question."""
    from PIL import Image, ImageDraw

    rng = random.Random(f"flashu-calibration:{seed}")
    pairs = []
    for n in range(count):
        top, bottom = [tuple(rng.randrange(256) for _ in range(3)) for _ in range(2)]
        image = Image.new("RGB", (size, size))
        draw = ImageDraw.Draw(image)
        for y in range(size):
            f = y / max(size - 1, 1)
            draw.line([(0, y), (size, y)], fill=tuple(round(a + (b - a) * f) for a, b in zip(top, bottom)))
        for _ in range(rng.randint(1, 4)):
            x0, y0 = rng.randrange(size * 3 // 4), rng.randrange(size * 3 // 4)
            x1, y1 = x0 + rng.randint(size // 8, size // 3), y0 + rng.randint(size // 8, size // 3)
            colour = tuple(rng.randrange(256) for _ in range(3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
        pairs.append((image, SYNTHETIC_QUESTIONS[n % len(SYNTHETIC_QUESTIONS)]))
    return pairs


def calibration_items(bundle: Showo2Bundle, task: str, samples: int) -> tuple[str, list]:
    """``(source name, items)``: the model's registered source, else flashu's built-in defaults."""
    check_task(task)
    name = bundle.config.calibration_source
    if name:
        items = list(_source(name)(task, samples))[:samples]
    elif task == "t2i":
        name, items = "flashu-prompts", default_prompts()[:samples]
    else:
        name, items = "flashu-synthetic", synthetic_pairs(samples, bundle.config.image_size)
    if not items:
        raise FlashuError(f"calibration source {name!r} gave no items for {task}")
    return name, items


def read_prompts(path: str | Path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashuError(f"cannot read prompt file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise FlashuError(f"prompt file {path} has no prompts (one prompt per line)")
    return prompts


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``{"image": path, "question": text}`` per line; relative image paths are relative to the file."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlashuError(f"cannot read calibration file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            image, question = item["image"], item["question"]
            if not isinstance(image, str) or not isinstance(question, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            raise FlashuError(f"{path}:{n}: expected a JSON object with string 'image' and 'question'") from None
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        pairs.append((str(image_path), question))
    if not pairs:
        raise FlashuError(f"calibration file {path} has no image/question pairs")
    return pairs


# ---------------------------------------------------------------------------------------------------- running
@dataclass
class AttachProbe:
    """Pipeline step observer attaching ``probe`` to every forward (and collecting the measured similarity)."""

    probe: object
    similarity: str | None = None

    def __post_init__(self):
        self.sums: torch.Tensor | None = None
        self.count = 0

    def plan(self, step: int, plan: ExecutionPlan) -> ExecutionPlan:
        return plan.with_(probe=self.probe, similarity=self.similarity if step < 0 else None)

    def observe(self, step: int, plan: ExecutionPlan, output) -> None:
        if step < 0 and self.similarity is not None:
            value = output.similarity.double().cpu()
            self.sums = value if self.sums is None else self.sums + value
            self.count += 1


@memory_guard("calibration")
def calibrate(bundle: Showo2Bundle, task: str, *, samples: int = 20, prompts: list[str] | None = None,
              pairs: list[tuple[object, str]] | None = None, steps: int = CALIBRATION_STEPS,
              guidance: float | None = None, progress: bool = True) -> ImportanceScores:
    """Wanda importance of ``bundle``'s decoder for ``task`` from ``samples`` calibration items (the model's
    default source unless ``prompts``/``pairs`` are given); for ``mmu`` also the mean last-token similarity of
    every layer over the pairs (``ImportanceScores.layer_similarity``). Not cached: see :func:`cached_scores`."""
    check_task(task)
    if bundle.acceleration is not None:
        raise FlashuError("calibrate the unaccelerated model: call flashu.restore(bundle) first")
    items = prompts if task == "t2i" else pairs
    items = list(items)[:samples] if items else calibration_items(bundle, task, samples)[1]
    return _run(bundle, task, items, steps, guidance, progress)


def _run(bundle: Showo2Bundle, task: str, items: list, steps: int, guidance: float | None,
         progress: bool) -> ImportanceScores:
    """Calibration forwards run eagerly even on a compiled model: the probe's Python counters would otherwise be
    guarded on and recompile the graph at every call."""
    with torch.compiler.set_stance("force_eager"):
        return _run_eager(bundle, task, items, steps, guidance, progress)


def _run_eager(bundle: Showo2Bundle, task: str, items: list, steps: int, guidance: float | None,
               progress: bool) -> ImportanceScores:
    probe = ActivationNormProbe(bundle.config.llm.num_layers)
    if task == "t2i":
        observer = AttachProbe(probe)
        for prompt in tqdm(items, desc="calibrating t2i", unit="prompt", disable=not progress):
            generate(bundle, prompt, steps=steps, guidance=guidance, progress=False, decode=False, observer=observer)
        return scores_from_norms(bundle.model, probe, task, len(items))
    observer = AttachProbe(probe, similarity="last")
    with torch.no_grad():
        for image, question in tqdm(items, desc="calibrating mmu", unit="pair", disable=not progress):
            inputs = build_understanding_inputs(bundle, image, question)
            plan = observer.plan(-1, ExecutionPlan())
            observer.observe(-1, plan, bundle.model.forward_understanding(inputs, plan))
    scores = scores_from_norms(bundle.model, probe, task, len(items))
    scores.layer_similarity = (observer.sums / max(observer.count, 1)).float()
    return scores


# ---------------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Where computed importance scores are kept (``$FLASHU_CACHE_DIR``, else the user cache directory)."""
    if os.environ.get("FLASHU_CACHE_DIR"):
        return Path(os.environ["FLASHU_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flashu"


def _digest(items: list) -> str:
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, str):
            h.update(b"p" + item.encode())
            continue
        image, question = item
        if isinstance(image, (str, Path)):
            h.update(b"f" + str(image).encode())
            try:
                h.update(Path(image).read_bytes())
            except OSError:
                pass
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            h.update(b"i" + buffer.getvalue())
        h.update(b"q" + str(question).encode())
    return h.hexdigest()


def cached_scores(bundle: Showo2Bundle, task: str, *, samples: int = 20, items: list | None = None,
                  source: str | None = None, progress: bool = True, use_cache: bool = True) -> ImportanceScores:
    """Importance scores for ``task``: from the cache when this model, dtype, task and calibration set were seen
    before, else calibrated once (with progress) and stored."""
    check_task(task)
    if items is None:
        source, items = calibration_items(bundle, task, samples)
    items = list(items)[:samples]
    settings = {"format": SCORES_FORMAT, "task": task, "fingerprint": model_fingerprint(bundle.model),
                "dtype": str(bundle.dtype), "source": source or "given", "items": _digest(items),
                "samples": len(items)}
    if task == "t2i":
        settings.update(steps=CALIBRATION_STEPS, guidance=bundle.config.default_guidance)
    else:
        settings.update(layout=bundle.config.understanding_layout)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / "scores" / f"{task}-{key}.safetensors"
    if use_cache and path.is_file():
        try:
            scores = ImportanceScores.load(path)
            scores.check_model(bundle.model, task)
            return scores
        except FlashuError:
            pass  # a damaged or stale entry: recompute and overwrite it
    scores = calibrate(bundle, task, samples=len(items), prompts=items if task == "t2i" else None,
                       pairs=items if task == "mmu" else None, progress=progress)
    if use_cache:
        try:
            scores.save(path)  # atomic: a full disk leaves no partial entry
        except OSError as exc:  # WriteError included: the cache is optional, the work goes on
            cause = exc.cause if isinstance(exc, WriteError) else (exc.strerror or exc)
            warnings.warn(f"could not cache importance scores in {path.parent}: {cause}; continuing without the "
                          "cache (set FLASHU_CACHE_DIR to a writable directory with space)", stacklevel=2)
    return scores
