"""Evaluation runs: images for external text-to-image scorers, accuracy on understanding data; resumable, sharded.

**Text to image** (:func:`eval_t2i`). Prompt sources (``fmt="auto"`` picks by the path):

* ``text`` — a plain file, one prompt per line (or a list of strings);
* ``dpg`` — DPG-Bench: a directory of ``<item_id>.txt`` prompt files (as DPG-Bench ships them), a JSON object
  ``{item_id: prompt}``, or its ``.csv`` (columns ``item_id`` and ``text``; repeated rows collapse);
* ``geneval`` — GenEval's ``evaluation_metadata.jsonl`` (one JSON object per line with ``prompt``, ``tag``, …).

Layout under ``out_dir/<config>/`` — exactly what each scorer reads, nothing else (``<config>`` is the config
name with characters other than letters, digits, ``.``, ``-``, ``_`` and ``=`` replaced by ``_``):

* ``text``: ``00000.png`` … (``00000_0.png``, ``00000_1.png`` … with several samples) and ``prompts.jsonl``
  (``{"index", "prompt", "files"}`` per line);
* ``dpg``: ``<item_id>.png``, the samples tiled two per row (2×2 for 4, as ``compute_dpg_bench.py --pic-num 4
  --resolution <image size>`` crops them);
* ``geneval``: ``<index 5 digits>/metadata.jsonl`` (the prompt's metadata line) and
  ``<index>/samples/<k 4 digits>.png`` (``evaluation/evaluate_images.py out_dir/<config>``).

Samples per prompt default to 1 for ``text`` and to 4 for ``dpg``/``geneval`` (their protocols). Item ``i`` is
generated alone with seed ``seed + i`` (all its samples in one batch), the same for every configuration and
independent of sharding and resumption.

**Understanding** (:func:`eval_mmu`): JSONL lines ``{"image", "question", "answer"}`` (optional ``"id"``; relative
image paths are relative to the file), answered greedily; a prediction is correct when it equals the answer after
:func:`flashu.observe.metrics.normalise_answer` (lower case, punctuation dropped, digits spelled). Predictions go to
``out_dir/<config>/predictions.jsonl``; accuracy per configuration to the report.

**Configurations** are acceleration specs (:mod:`flashu.accel.spec`: ``none``, ``exact``, presets, presets with
overrides, JSON files). FlashU importance scores are calibrated once per task (rank 0, cached in
``out_dir/.flashu/scores-<task>-<samples>.safetensors``) and shared by every configuration and rank.

**Resuming**: an item whose files exist and are valid images (GenEval: and whose ``metadata.jsonl`` matches), or
whose prediction was recorded, is not redone; images are written to a hidden temporary name and renamed, and
predictions are appended a line at a time, so an interrupted run loses at most the items in flight. The settings
of a configuration's directory (model, prompts/data, steps, guidance, seed, samples, image size…) are recorded in
``out_dir/.flashu/<task>/<config>/run.json``; resuming with other settings is refused.

**Sharding** (:mod:`flashu.observe.distributed`): under ``torchrun``/``accelerate launch`` each rank takes every
``world_size``-th item, writes its partial results (``out_dir/.flashu/<task>/<config>/…-rank<r>…``), and after a barrier
rank 0 merges them into the report, ``out_dir/eval_t2i.json`` / ``out_dir/eval_mmu.json`` (schema
``flashu-eval`` v1), which every rank returns. One process needs no launcher.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm.auto import tqdm

from . import distributed
from ..accel.api import accelerated
from ..accel.importance import ImportanceScores
from ..accel.spec import resolve_accel, split_specs
from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from ..io.files import WriteError, save_image, write_cause, write_json, write_text

SCHEMA = "flashu-eval"
SCHEMA_VERSION = 1
BOOKKEEPING = ".flashu"
T2I_FORMATS = ("text", "dpg", "geneval")
DEFAULT_SAMPLES = {"text": 1, "dpg": 4, "geneval": 4}


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class PromptItem:
    index: int  # position in the source (GenEval's folder number)
    id: str  # DPG-Bench item id (file stem); the 5-digit index otherwise
    prompt: str
    metadata: dict | None = None  # GenEval: the metadata line, written back verbatim


@dataclass
class MMUItem:
    index: int
    id: str
    image: str
    question: str
    answer: str


def detect_format(source: str | Path) -> str:
    path = Path(source)
    if path.is_dir():
        return "dpg"
    suffix = path.suffix.lower()
    return {".jsonl": "geneval", ".json": "dpg", ".csv": "dpg"}.get(suffix, "text")


def read_t2i_prompts(source: str | Path | Sequence[str], fmt: str = "auto") -> tuple[str, list[PromptItem]]:
    """``(format, items)`` from a prompt source (see the module docstring)."""
    from ..accel.calibration import read_prompts

    if not isinstance(source, (str, Path)):
        prompts = [str(p).strip() for p in source]
        if not prompts or not all(prompts):
            raise FlashuError("give at least one non-empty prompt")
        return "text", [PromptItem(i, f"{i:05d}", p) for i, p in enumerate(prompts)]
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in T2I_FORMATS:
        raise FlashuError(f"unknown prompt format {fmt!r}; use one of auto, {', '.join(T2I_FORMATS)}")
    path = Path(source)
    if not path.exists():
        raise FlashuError(f"prompt source {path} does not exist")
    if fmt == "text":
        return fmt, [PromptItem(i, f"{i:05d}", p) for i, p in enumerate(read_prompts(path))]
    if fmt == "geneval":
        items = []
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            try:
                meta = json.loads(line)
                prompt = str(_text_field(meta["prompt"])).strip()
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
                raise FlashuError(f"{path}:{n}: expected a GenEval metadata object with a text 'prompt'") from None
            items.append(PromptItem(len(items), f"{len(items):05d}", prompt, meta))
        return fmt, _nonempty(items, path)
    # DPG-Bench
    if path.is_dir():
        pairs = [(f.stem, _read_text(f).strip()) for f in sorted(path.glob("*.txt"))]
    elif path.suffix.lower() == ".csv":
        pairs, seen = [], set()
        text = _read_text(path, "utf-8-sig")  # DPG-Bench's CSV may start with a BOM
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"item_id", "text"} <= set(reader.fieldnames):
            raise FlashuError(f"{path}: a DPG-Bench CSV needs the columns item_id and text")
        for row in reader:
            if row["item_id"] not in seen:
                seen.add(row["item_id"])
                pairs.append((row["item_id"], row["text"].strip()))
    else:
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise FlashuError(f"{path}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise FlashuError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise FlashuError(f"{path}: expected a JSON object {{item_id: prompt}}")
        if any(not _is_text(v) for v in data.values()):
            raise FlashuError(f"{path}: every prompt must be text (null, lists and objects are not prompts)")
        pairs = [(str(k), str(v).strip()) for k, v in data.items()]
    for item_id, prompt in pairs:
        if not item_id or item_id.startswith(".") or "/" in item_id or "\\" in item_id:
            raise FlashuError(f"{path}: item id {item_id!r} cannot be a file name")
        if not prompt:
            raise FlashuError(f"{path}: item {item_id!r} has an empty prompt")
    if len({i for i, _ in pairs}) != len(pairs):
        raise FlashuError(f"{path}: duplicate item ids")
    return fmt, _nonempty([PromptItem(i, item_id, p) for i, (item_id, p) in enumerate(pairs)], path)


def read_mmu_data(path: str | Path) -> list[MMUItem]:
    """``{"image", "question", "answer"}`` per line (optional ``"id"``); image paths relative to the file."""
    path = Path(path)
    items = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, question, answer = (str(_text_field(row[k])) for k in ("image", "question", "answer"))
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            raise FlashuError(f"{path}:{n}: expected a JSON object with text 'image', 'question' and 'answer'") from None
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        items.append(MMUItem(len(items), str(row.get("id", len(items))), str(image_path), question, answer))
    return _nonempty(items, path)


def _is_text(value) -> bool:
    """A JSON value that reads as text: a string or a number, never null, a list or an object."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _text_field(value):
    if not _is_text(value):
        raise TypeError(f"not text: {value!r}")  # the readers turn this into their one-line error
    return value


def _limited(items: list, limit: int | None) -> list:
    """The first ``limit`` items (``None``: all); 0 or a negative limit (which slicing would read as "all but the
    last") is refused."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise FlashuError(f"limit must be a positive integer, got {limit!r}")
    return items[:limit]


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise FlashuError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FlashuError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _nonempty(items: list, path: Path) -> list:
    if not items:
        raise FlashuError(f"{path} has no items")
    return items


# ---------------------------------------------------------------------------------------------- files
def config_dir_name(spec: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec).strip("_")
    if not name or name.startswith("."):
        raise FlashuError(f"configuration name {spec!r} cannot be a directory name")
    return name


def _config_dirs(specs: Sequence[str]) -> dict[str, str]:
    dirs = {spec: config_dir_name(spec) for spec in specs}
    if len(set(dirs.values())) != len(dirs):
        raise FlashuError(f"configurations {', '.join(specs)} map to the same directory names")
    return dirs


def image_valid(path: Path) -> bool:
    """The file exists and is a complete, decodable image."""
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # missing, truncated, not an image: PIL raises several types
        return False


def _append_record(fh, path: Path, row: dict) -> None:
    """One JSON line, flushed at once: every record written before a failure is kept (a torn last line is
    skipped on resume); a full disk or a quota becomes one line naming the file."""
    try:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
    except OSError as exc:
        found = write_cause(exc)
        if found is None:
            raise
        raise WriteError(path, found[1] + " (the records written so far are kept: rerun the same command to "
                         "resume)", found[0]) from None


def _tile(images: list[Image.Image], columns: int = 2) -> Image.Image:
    if len(images) == 1:
        return images[0]
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (w * min(columns, len(images)), h * rows), "white")
    for k, image in enumerate(images):
        grid.paste(image, ((k % columns) * w, (k // columns) * h))
    return grid


def t2i_files(fmt: str, config_dir: Path, item: PromptItem, samples: int) -> list[Path]:
    """The image files of ``item`` in ``fmt``'s layout."""
    if fmt == "geneval":
        return [config_dir / f"{item.index:05d}" / "samples" / f"{k:04d}.png" for k in range(samples)]
    if fmt == "dpg":
        return [config_dir / f"{item.id}.png"]
    if samples == 1:
        return [config_dir / f"{item.index:05d}.png"]
    return [config_dir / f"{item.index:05d}_{k}.png" for k in range(samples)]


def _geneval_metadata(config_dir: Path, item: PromptItem) -> Path:
    return config_dir / f"{item.index:05d}" / "metadata.jsonl"


def _t2i_done(fmt: str, config_dir: Path, item: PromptItem, samples: int) -> bool:
    if not all(image_valid(p) for p in t2i_files(fmt, config_dir, item, samples)):
        return False
    if fmt == "geneval":
        try:
            return json.loads(_geneval_metadata(config_dir, item).read_text(encoding="utf-8")) == item.metadata
        except (OSError, json.JSONDecodeError):
            return False
    return True


def _write_t2i_item(fmt: str, config_dir: Path, item: PromptItem, images: list[Image.Image]) -> None:
    files = t2i_files(fmt, config_dir, item, len(images))
    if fmt == "geneval":
        write_text(_geneval_metadata(config_dir, item), json.dumps(item.metadata) + "\n")
    if fmt == "dpg":
        save_image(_tile(images), files[0], format="PNG")
        return
    for image, path in zip(images, files):
        save_image(image, path, format="PNG")


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def _book(out: Path, task: str, name: str) -> Path:
    """Bookkeeping of one task's configuration (run settings, rank partials), out of the scorers' way."""
    return out / BOOKKEEPING / task / name


def _check_run(book: Path, settings: dict, shard: distributed.Shard) -> None:
    """Refuse to resume into a directory written with other settings (every rank checks, before any writes)."""
    path = book / "run.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous is not None and previous != settings:
            diff = ", ".join(f"{k}: {previous.get(k)!r} → {v!r}" for k, v in settings.items()
                             if previous.get(k) != v)
            raise FlashuError(f"{book.parents[2] / book.name} holds results of another run ({diff}); use "
                              "another output directory or delete it")


def _start_runs(bundle: Showo2Bundle, task: str, parsed: dict, dirs: dict, out: Path, common: dict,
                scores: dict | None, calibration_samples: int, shard: distributed.Shard, progress: bool) -> dict:
    """Check every configuration's run settings (all ranks, before any write), get the shared importance scores,
    then record the settings (rank 0). Returns the scores."""
    for spec in parsed:
        _check_run(_book(out, task, dirs[spec]), {**common, "config": spec}, shard)
    scores = _shared_scores(bundle, task, parsed, scores, out, calibration_samples, shard, progress)
    if shard.is_main:
        for spec in parsed:
            write_json(_book(out, task, dirs[spec]) / "run.json", {**common, "config": spec})
    return scores


# ---------------------------------------------------------------------------------------------- configurations
@contextmanager
def _configured(bundle: Showo2Bundle, task: str, config, scores: dict, calibration_samples: int,
                progress: bool) -> Iterator[None]:
    """``config`` applied to ``bundle`` through the front door for the block; restored afterwards."""
    with accelerated(bundle, config, task=task, scores=scores, progress=progress,
                     calibration_samples=calibration_samples):
        yield


def _shared_scores(bundle: Showo2Bundle, task: str, configs: dict, scores: dict | None, out: Path,
                   samples: int, shard: distributed.Shard, progress: bool) -> dict:
    """Importance scores for ``task`` when a configuration needs them: given, cached in ``out``, or from the
    calibration cache / calibrated once on rank 0 (the other ranks load rank 0's file after a barrier)."""
    scores = dict(scores or {})
    needs = any(c.needs_scores(task) for c in configs.values())
    if not needs or task in scores:
        shard.barrier()  # keep the ranks in step either way
        return scores
    path = out / BOOKKEEPING / f"scores-{task}-{samples}.safetensors"
    if shard.is_main:
        cached = None
        if path.is_file():
            try:
                cached = ImportanceScores.load(path)
                cached.check_model(bundle.model, task)
            except FlashuError:
                cached = None
        if cached is None:
            from ..accel.calibration import cached_scores

            cached = cached_scores(bundle, task, samples=samples, progress=progress)
            cached.save(path)
        scores[task] = cached
    shard.barrier()
    if not shard.is_main:
        scores[task] = ImportanceScores.load(path)
    return scores


def _prepare(bundle: Showo2Bundle, task: str, configs: Sequence[str] | str, out_dir, shard):
    if getattr(bundle, "acceleration", None) is not None:
        raise FlashuError("evaluate an unaccelerated model (call flashu.restore first); name the configurations "
                          "instead")
    specs = split_specs(configs) if isinstance(configs, str) else [str(c).strip() for c in configs]
    specs = [s for s in specs if s]
    if not specs:
        raise FlashuError("no configuration to evaluate")
    parsed = {spec: resolve_accel(spec, task) for spec in specs}
    dirs = _config_dirs(specs)
    shard = shard if shard is not None else distributed.init()
    return parsed, dirs, Path(out_dir), shard


def _bar(shard: distributed.Shard, total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="item", disable=not progress or not shard.is_main or total == 0)


# ---------------------------------------------------------------------------------------------- text to image
@memory_guard("eval t2i")
def eval_t2i(bundle: Showo2Bundle, prompts_source, configs: Sequence[str] | str, out_dir: str | Path, *,
             steps: int | None = None, guidance: float | None = None, seed: int = 0,
             samples_per_prompt: int | None = None, fmt: str = "auto", image_size: int | None = None,
             limit: int | None = None, scores: dict | None = None, calibration_samples: int = 20,
             shard: distributed.Shard | None = None, progress: bool = True) -> dict:
    """Generate every prompt of ``prompts_source`` under every configuration into ``out_dir`` (see the module
    docstring for formats, layouts, resuming and sharding). Returns the merged report (on every rank)."""
    fmt, items = read_t2i_prompts(prompts_source, fmt)
    items = _limited(items, limit)
    samples = DEFAULT_SAMPLES[fmt] if samples_per_prompt is None else int(samples_per_prompt)
    if samples < 1:
        raise FlashuError(f"samples_per_prompt must be at least 1, got {samples}")
    cfg = bundle.config
    steps = cfg.default_steps if steps is None else int(steps)
    guidance = cfg.default_guidance if guidance is None else float(guidance)
    size = cfg.image_size if image_size is None else int(image_size)
    cfg.grid_for(size)
    parsed, dirs, out, shard = _prepare(bundle, "t2i", configs, out_dir, shard)
    from ..accel.importance import model_fingerprint

    common = {"task": "t2i", "model": model_fingerprint(bundle.model), "format": fmt, "steps": steps,
              "guidance": guidance, "seed": seed, "samples_per_prompt": samples, "image_size": size,
              "items": _digest([[it.id, it.prompt, it.metadata] for it in items])}
    scores = _start_runs(bundle, "t2i", parsed, dirs, out, common, scores, calibration_samples, shard, progress)

    from ..pipelines.t2i import generate

    mine = shard.take(items)
    for spec, config in parsed.items():
        config_dir, book = out / dirs[spec], _book(out, "t2i", dirs[spec])
        pending = [it for it in mine if not _t2i_done(fmt, config_dir, it, samples)]
        done, seconds, evaluations = [], 0.0, 0
        if pending:
            with _configured(bundle, "t2i", config, scores, calibration_samples, progress), \
                    _bar(shard, len(pending), f"eval t2i [{spec}]", progress) as bar:
                for item in pending:
                    t0 = time.perf_counter()
                    result = generate(bundle, [item.prompt] * samples, steps=steps, guidance=guidance,
                                      seed=seed + item.index, image_size=size, progress=False)
                    seconds += time.perf_counter() - t0
                    evaluations += result.evaluations
                    _write_t2i_item(fmt, config_dir, item, result.images)
                    done.append(item.index)
                    bar.update()
        write_json(book / f"t2i-rank{shard.rank}.json",
                    {"rank": shard.rank, "generated": done, "seconds": seconds, "evaluations": evaluations})
    shard.barrier()

    report = None
    if shard.is_main:
        report = {"schema": SCHEMA, "version": SCHEMA_VERSION, "task": "t2i", "model": bundle.source,
                  "source": str(prompts_source) if isinstance(prompts_source, (str, Path)) else "<list>",
                  **{k: common[k] for k in ("format", "steps", "guidance", "seed", "samples_per_prompt",
                                            "image_size")},
                  "world_size": shard.world_size, "configs": {}}
        for spec in parsed:
            report["configs"][spec] = _merge_t2i(fmt, out, dirs[spec], items, samples, size)
        write_json(out / "eval_t2i.json", report)
    return shard.broadcast(report)


def _merge_t2i(fmt: str, out: Path, name: str, items: list[PromptItem], samples: int, size: int) -> dict:
    config_dir, book = out / name, _book(out, "t2i", name)
    generated, seconds, evaluations = 0, 0.0, 0
    for part in sorted(book.glob("t2i-rank*.json")):
        data = json.loads(part.read_text(encoding="utf-8"))
        generated += len(data["generated"])
        seconds += data["seconds"]
        evaluations += data["evaluations"]
        part.unlink()
    missing = [it.id for it in items if not _t2i_done(fmt, config_dir, it, samples)]
    if fmt == "text":
        lines = [json.dumps({"index": it.index, "prompt": it.prompt,
                             "files": [p.name for p in t2i_files(fmt, config_dir, it, samples)]})
                 for it in items]
        write_text(config_dir / "prompts.jsonl", "\n".join(lines) + "\n")
    scorer = {
        "geneval": f"python evaluation/evaluate_images.py {config_dir} --outfile {config_dir}_results.jsonl",
        "dpg": f"compute_dpg_bench.py --image-root-path {config_dir} --resolution {size} --pic-num {samples}",
        "text": None,
    }[fmt]
    return {"dir": str(config_dir), "items": len(items), "images": len(items) * samples,
            "complete": not missing, "missing": missing, "generated": generated,
            "resumed": len(items) - len(missing) - generated, "seconds": seconds,
            "seconds_per_image": seconds / (generated * samples) if generated else None,
            "evaluations": evaluations, "scorer": scorer}


# ---------------------------------------------------------------------------------------------- understanding
def _read_predictions(paths: Sequence[Path]) -> dict[int, dict]:
    """Records by item index; a torn last line (interrupted write) is ignored."""
    records = {}
    for path in paths:
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # damaged line: redone
                continue
            if _valid_prediction(row):
                records[row["index"]] = row
    return records


def _valid_prediction(row) -> bool:
    """A complete prediction record; anything else (hand-edited, torn, from another version) is redone."""
    return (isinstance(row, dict) and isinstance(row.get("index"), int) and not isinstance(row.get("index"), bool)
            and isinstance(row.get("prediction"), str) and isinstance(row.get("correct"), bool))


def _prediction_files(out: Path, name: str) -> list[Path]:
    return [out / name / "predictions.jsonl", *sorted(_book(out, "mmu", name).glob("predictions-rank*.jsonl"))]


@memory_guard("eval mmu")
def eval_mmu(bundle: Showo2Bundle, data_jsonl: str | Path, configs: Sequence[str] | str, out_dir: str | Path, *,
             max_new_tokens: int = 32, limit: int | None = None, scores: dict | None = None,
             calibration_samples: int = 20, shard: distributed.Shard | None = None, progress: bool = True) -> dict:
    """Answer every question of ``data_jsonl`` under every configuration; accuracy per configuration (exact match
    after normalisation). Predictions in ``out_dir/<config>/predictions.jsonl``; report ``out_dir/eval_mmu.json``
    (returned on every rank). Resumable and sharded like :func:`eval_t2i`."""
    from ..accel.importance import model_fingerprint
    from ..pipelines.mmu import answer
    from .metrics import score_answer

    items = read_mmu_data(data_jsonl)
    items = _limited(items, limit)
    if int(max_new_tokens) <= 0:
        raise FlashuError(f"max_new_tokens must be positive, got {max_new_tokens}")
    parsed, dirs, out, shard = _prepare(bundle, "mmu", configs, out_dir, shard)
    common = {"task": "mmu", "model": model_fingerprint(bundle.model), "max_new_tokens": int(max_new_tokens),
              "image_size": bundle.config.image_size,
              "items": _digest([[it.id, it.image, it.question, it.answer] for it in items])}
    scores = _start_runs(bundle, "mmu", parsed, dirs, out, common, scores, calibration_samples, shard, progress)

    for spec in parsed:  # the merged predictions are written there at the end: refuse before any work
        target = out / dirs[spec] / "predictions.jsonl"
        if target.exists() and not target.is_file():
            raise FlashuError(f"{target} exists and is not a file; remove it (or choose another --out)")
    mine = shard.take(items)
    for spec, config in parsed.items():
        name = dirs[spec]
        recorded = _read_predictions(_prediction_files(out, name))
        pending = [it for it in mine if it.index not in recorded]
        part = _book(out, "mmu", name) / f"predictions-rank{shard.rank}.jsonl"
        part.parent.mkdir(parents=True, exist_ok=True)
        generated, seconds = 0, 0.0
        if pending:
            with _configured(bundle, "mmu", config, scores, calibration_samples, progress), \
                    _bar(shard, len(pending), f"eval mmu [{spec}]", progress) as bar, \
                    part.open("a", encoding="utf-8") as fh:
                if part.stat().st_size and not part.read_bytes().endswith(b"\n"):
                    fh.write("\n")  # after a torn last line (interrupted write): start a fresh line
                for item in pending:
                    t0 = time.perf_counter()
                    reply = answer(bundle, item.image, item.question, max_new_tokens=max_new_tokens)
                    row = {"index": item.index, "id": item.id, "question": item.question, "answer": item.answer,
                           "prediction": reply.text, "correct": score_answer(reply.text, item.answer),
                           "tokens": len(reply.token_ids), "seconds": time.perf_counter() - t0}
                    _append_record(fh, part, row)
                    generated += 1
                    seconds += row["seconds"]
                    bar.update()
        write_json(_book(out, "mmu", name) / f"mmu-rank{shard.rank}.json",
                    {"rank": shard.rank, "generated": generated, "seconds": seconds})
    shard.barrier()

    report = None
    if shard.is_main:
        report = {"schema": SCHEMA, "version": SCHEMA_VERSION, "task": "mmu", "model": bundle.source,
                  "source": str(data_jsonl), "max_new_tokens": int(max_new_tokens),
                  "world_size": shard.world_size, "configs": {}}
        for spec in parsed:
            report["configs"][spec] = _merge_mmu(out, dirs[spec], items)
        write_json(out / "eval_mmu.json", report)
    return shard.broadcast(report)


def _merge_mmu(out: Path, name: str, items: list[MMUItem]) -> dict:
    generated, seconds = 0, 0.0
    for part in sorted(_book(out, "mmu", name).glob("mmu-rank*.json")):
        data = json.loads(part.read_text(encoding="utf-8"))
        generated += data["generated"]
        seconds += data["seconds"]
        part.unlink()
    files = _prediction_files(out, name)
    records = _read_predictions(files)
    rows = [records[it.index] for it in items if it.index in records]
    write_text(files[0], "".join(json.dumps(r) + "\n" for r in rows))
    for part in files[1:]:
        part.unlink()
    missing = [it.id for it in items if it.index not in records]
    correct = sum(bool(r["correct"]) for r in rows)
    return {"dir": str(out / name), "n": len(items), "answered": len(rows), "correct": correct,
            "accuracy": correct / len(rows) if rows else None, "complete": not missing, "missing": missing,
            "generated": generated, "resumed": len(rows) - generated, "seconds": seconds,
            "seconds_per_answer": seconds / generated if generated else None}
