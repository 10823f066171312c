"""Quality and speed of a (possibly accelerated) model on the shapes world's test split.

* **Generation**: images generated from the captions of the first ``n_gen`` scenes of the split, judged by
  :func:`~flashu.testbed.checker.check_generation` — ``accuracy`` is the fraction with every attribute right, and
  each attribute of :data:`~flashu.testbed.checker.ATTRIBUTES` is also reported on its own.
* **Understanding**: the first ``n_mmu`` question/answer pairs of the split's scenes (in scene order, every
  question of a scene), answered greedily, scored by exact match (:func:`~flashu.testbed.checker.score_answer`);
  also per question kind (colour, shape, count, relation).
* **Speed**: wall time per image (at ``batch_size`` prompts per call, CFG rows included) and per answer.

Acceleration: ``none`` (baseline), ``exact`` (the lossless position trim), or any FlashU preset / config. FlashU's
importance scores are calibrated on the shapes world's *train* split (captions for ``t2i``, image/question pairs
for ``mmu``), never on the evaluated split; pass ``scores`` to reuse them across configs.

``flashu eval testbed --accel none --accel paper`` runs this from the command line.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..accel.config import FlashUConfig
from ..accel.spec import resolve_accel
from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from . import world
from .checker import ATTRIBUTES, check_generation, score_answer



def load_testbed(model: str = "testbed", device: str = "cpu", dtype: str = "float32") -> Showo2Bundle:
    """The shipped testbed (``"testbed"``), a ``save_pretrained`` directory, or a training run (its directory or
    ``checkpoint.pt``: the latest checkpoint of ``python -m flashu.testbed.train``)."""
    path = Path(model)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    if ckpt.suffix == ".pt" and ckpt.is_file():
        from ..config import Showo2Config
        from .train import build_bundle

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        bundle = build_bundle(Showo2Config.from_dict(state["model_config"]), 0)
        bundle.model.load_state_dict(state["model"])
        bundle.model.tie_weights_if_needed()
        bundle.model.eval()
        bundle.source = str(ckpt)
        return bundle
    from ..loading import load_model

    return load_model(model, device=device, dtype=dtype)


def calibration_scores(bundle: Showo2Bundle, samples: int = 20, progress: bool = False) -> dict:
    """FlashU importance scores for both tasks from the model's calibration data (the world's train split),
    through the calibration cache."""
    from ..accel.calibration import cached_scores

    return {task: cached_scores(bundle, task, samples=samples, progress=progress) for task in ("t2i", "mmu")}


@dataclass
class _Items:
    captions: list[str]
    qas: list[tuple[object, str, str, str]]  # image, question, answer, kind
    topics: list[str] | None = None  # the VQA world: each question's topic (its kind within a family)


def split_items(split: str, n_gen: int, n_mmu: int, size: int, config=None) -> _Items:
    """The first ``n_gen`` captions (shapes world) and ``n_mmu`` questions of ``split``: from the VQA world when
    ``config`` is a v2 testbed's (:func:`flashu.testbed.vqa.asks`), else from the shapes world at ``size`` px."""
    from . import vqa

    captions = world.prompts(split, n_gen)
    if config is not None and vqa.asks(config):
        if split not in vqa.SPLITS:
            raise FlashuError(f"the VQA world has no split {split!r}; use one of {', '.join(vqa.SPLITS)}")
        asked = vqa.questions_of(split, n_mmu)
        return _Items(captions, [(image, qa.question, qa.answer, qa.kind) for image, qa in asked],
                      [qa.topic for _, qa in asked])
    qas, index = [], 0
    while len(qas) < n_mmu:
        example = world.sample(split, index, size)
        for qa in example.qas:
            if len(qas) < n_mmu:
                qas.append((example.image, qa.question, qa.answer, qa.kind))
        index += 1
    return _Items(captions, qas)


@memory_guard("the testbed evaluation")
def evaluate(bundle: Showo2Bundle, accel: str | FlashUConfig = "none", *, n_gen: int = 100, n_mmu: int = 200,
             split: str = "test", steps: int | None = None, guidance: float | None = None, seed: int = 0,
             batch_size: int = 10, max_new_tokens: int = 16, scores: dict | None = None,
             calibration_samples: int = 20, progress: bool = True, keep_images: bool = False) -> dict:
    """Accuracy and speed of ``bundle`` under ``accel`` (see the module docstring). Returns a JSON-able dict;
    with ``keep_images`` the generated PIL images are under ``"images"`` (not JSON-able)."""
    from tqdm.auto import tqdm

    from ..accel.api import accelerated
    from ..pipelines.mmu import answer
    from ..pipelines.t2i import generate

    if n_gen < 0 or n_mmu < 0:
        raise FlashuError("n_gen and n_mmu must be >= 0")
    if batch_size <= 0:
        raise FlashuError(f"batch_size must be positive, got {batch_size}")
    if bundle.acceleration is not None:
        raise FlashuError("evaluate an unaccelerated bundle (call flashu.restore first); pass accel= instead")
    cfg = resolve_accel(accel)
    name = cfg.name
    steps = bundle.config.default_steps if steps is None else int(steps)
    guidance = bundle.config.default_guidance if guidance is None else float(guidance)
    items = split_items(split, n_gen, n_mmu, bundle.config.image_size, bundle.config)
    report: dict = {"accel": name, "split": split, "model": bundle.source, "steps": steps, "guidance": guidance,
                    "seed": seed, "batch_size": batch_size, "threads": torch.get_num_threads()}
    if (cfg.needs_generation_scores or cfg.needs_understanding_scores) and scores is None:
        t0 = time.perf_counter()
        scores = calibration_scores(bundle, calibration_samples, progress=progress)
        report["calibration_s"] = time.perf_counter() - t0
    context = accelerated(bundle, cfg, scores=scores, progress=progress)

    with context:
        # ---------------------------------------------------------------- generation
        verdicts, images, gen_time, evaluations = [], [], 0.0, 0
        for start in tqdm(range(0, n_gen, batch_size), desc=f"generate [{name}]", unit="batch",
                          disable=not progress or n_gen == 0):
            batch = items.captions[start:start + batch_size]
            t0 = time.perf_counter()
            result = generate(bundle, batch, steps=steps, guidance=guidance, seed=seed + start, progress=False)
            gen_time += time.perf_counter() - t0
            evaluations += result.evaluations
            for image, caption in zip(result.images, batch):
                verdicts.append(check_generation(image, caption))
                if keep_images:
                    images.append(image)
        if n_gen:
            per_attr = {a: sum(v.attributes()[a] for v in verdicts) / n_gen for a in ATTRIBUTES}
            correct = sum(v.correct for v in verdicts)
            report["generation"] = {
                "n": n_gen, "accuracy": correct / n_gen, "ci95": list(wilson_interval(correct, n_gen)),
                "attributes": per_attr,
                "accuracy_single": _mean([v.correct for v in verdicts if len(v.expected.shapes) == 1]),
                "accuracy_pair": _mean([v.correct for v in verdicts if len(v.expected.shapes) == 2]),
                "seconds_per_image": gen_time / n_gen, "evaluations_per_batch": evaluations / len(
                    range(0, n_gen, batch_size)),
                "correct": [v.correct for v in verdicts],
            }
        if keep_images:
            report["images"] = images

        # ---------------------------------------------------------------- understanding
        hits, kinds, topics, answers, mmu_time = [], defaultdict(list), defaultdict(list), [], 0.0
        for number, (image, question, expected, kind) in enumerate(tqdm(items.qas, desc=f"answer [{name}]",
                                                                         unit="q", disable=not progress or n_mmu == 0)):
            t0 = time.perf_counter()
            reply = answer(bundle, image, question, max_new_tokens=max_new_tokens)
            mmu_time += time.perf_counter() - t0
            ok = score_answer(reply.text, expected)
            hits.append(ok)
            kinds[kind].append(ok)
            if items.topics is not None:
                topics[f"{kind}/{items.topics[number]}"].append(ok)
            answers.append(reply.text)
        if n_mmu:
            report["understanding"] = {
                "n": n_mmu, "accuracy": sum(hits) / n_mmu, "ci95": list(wilson_interval(sum(hits), n_mmu)),
                "by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
                "kinds": {k: summary(v) for k, v in sorted(kinds.items())},
                **({"topics": {k: summary(v) for k, v in sorted(topics.items())}} if topics else {}),
                "seconds_per_answer": mmu_time / n_mmu, "answers": answers, "correct": hits,
                "questions": [q for _, q, _, _ in items.qas], "expected": [e for _, _, e, _ in items.qas],
                "question_kinds": [k for _, _, _, k in items.qas],
                **({"question_topics": list(items.topics)} if items.topics is not None else {}),
            }
    return report


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (``z`` = 1.96); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def summary(hits: list[bool]) -> dict:
    """Count, accuracy and 95 % Wilson interval of a list of verdicts."""
    n, k = len(hits), sum(hits)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def evaluate_many(bundle: Showo2Bundle, accels: list[str], **kwargs) -> list[dict]:
    """:func:`evaluate` for several configs with one calibration (shared importance scores)."""
    reports, scores = [], kwargs.pop("scores", None)
    for accel in accels:
        cfg = resolve_accel(accel)
        if scores is None and (cfg.needs_generation_scores or cfg.needs_understanding_scores):
            scores = calibration_scores(bundle, kwargs.get("calibration_samples", 20),
                                        progress=kwargs.get("progress", True))
        reports.append(evaluate(bundle, cfg, scores=scores, **kwargs))
    return reports


def format_reports(reports: list[dict]) -> str:
    """Two tables: generation (accuracy with its 95 % interval, retention vs ``none``, per attribute, speed) and
    understanding (the same, per question kind)."""
    base = next((r for r in reports if r["accel"] == "none"), None)
    width = max([22] + [len(r["accel"]) + 2 for r in reports])
    lines = []
    if any(r.get("generation") for r in reports):
        lines += _table(reports, base, width, "generation", list(ATTRIBUTES), "seconds_per_image", "s/img",
                        lambda g, a: f"{g['attributes'][a] * 100:.1f}%")
    if any(r.get("understanding") for r in reports):
        kinds = sorted({k for r in reports for k in (r.get("understanding") or {}).get("kinds", {})})
        lines += _table(reports, base, width, "understanding", kinds, "seconds_per_answer", "s/ans",
                        lambda u, k: _acc(u["kinds"][k]) if k in u.get("kinds", {}) else "-")
    topics = sorted({k for r in reports for k in (r.get("understanding") or {}).get("topics", {})})
    if topics:  # the VQA world: accuracy per family/topic, in %
        widths = [max(len(t) + 2, 8) for t in topics]
        lines.append(f"{'by topic (%)':<{width}}" + "".join(f"{t:>{w}}" for t, w in zip(topics, widths)))
        for r in reports:
            by = (r.get("understanding") or {}).get("topics", {})
            lines.append(f"{r['accel']:<{width}}" + "".join(
                f"{by[t]['accuracy'] * 100:>{w}.1f}" if t in by else f"{'-':>{w}}" for t, w in zip(topics, widths)))
    first = reports[0] if reports else {}
    lines.append(f"split {first.get('split')}, steps {first.get('steps')}, guidance {first.get('guidance')}, "
                 f"batch {first.get('batch_size')}, threads {first.get('threads')}; accuracy in % with its 95 % "
                 "Wilson interval; ret = accuracy / baseline, x = speed-up vs baseline")
    return "\n".join(lines)


def _table(reports: list[dict], base: dict | None, width: int, task: str, columns: list[str], seconds: str,
           seconds_label: str, cell) -> list[str]:
    """One task's rows: config, accuracy [95 % CI], retention, one ``cell(part, column)`` per column, speed."""
    widths = [max(len(c) + 2, 16 if task == "understanding" else 8) for c in columns]
    lines = [f"{task:<{width}}{'accuracy [95% CI]':>20}{'ret':>8}"
             + "".join(f"{c:>{w}}" for c, w in zip(columns, widths)) + f"{seconds_label:>8}{'x':>7}"]
    for r in reports:
        part = r.get(task)
        if part:
            lines.append(f"{r['accel']:<{width}}{_acc(part):>20}" + _ret(part["accuracy"], base, task, "accuracy")
                         + "".join(f"{cell(part, c):>{w}}" for c, w in zip(columns, widths))
                         + f"{part[seconds]:>8.3f}" + _speedup(part[seconds], base, task, seconds))
    return lines


def _acc(part: dict) -> str:
    lo, hi = part.get("ci95", (None, None))
    if lo is None:
        return f"{part['accuracy'] * 100:.1f}%"
    return f"{part['accuracy'] * 100:.1f} [{lo * 100:.0f},{hi * 100:.0f}]"


def _ret(value: float, base: dict | None, task: str, key: str) -> str:
    ref = (base or {}).get(task, {}).get(key)
    return f"{value / ref * 100:>7.1f}%" if ref else f"{'-':>8}"


def _speedup(value: float, base: dict | None, task: str, key: str) -> str:
    ref = (base or {}).get(task, {}).get(key)
    return f"{ref / value:>6.2f}x" if ref and value else f"{'-':>7}"


def write_json(reports: list[dict], path: str | Path) -> Path:
    from ..io.files import write_json as write

    return write(path, [{k: v for k, v in r.items() if k != "images"} for r in reports])
