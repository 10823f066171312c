"""What both evaluation tasks share: configuration directories, run settings (resume checks), bookkeeping, the
importance scores every configuration and rank uses, and append-only records."""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from PIL import Image
from tqdm.auto import tqdm

from .. import distributed
from ...accel.api import accelerated
from ...accel.importance import ImportanceScores
from ...accel.spec import resolve_accel, split_specs
from ...bundle import Showo2Bundle
from ...errors import FlashuError
from ...io.files import WriteError, write_cause, write_json

SCHEMA = "flashu-eval"
SCHEMA_VERSION = 1
BOOKKEEPING = ".flashu"


def config_dir_name(spec: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._=-]+", "_", spec).strip("_")
    if not name or name.startswith("."):
        raise FlashuError(f"configuration name {spec!r} cannot be a directory name")
    return name


def config_dirs(specs: Sequence[str]) -> dict[str, str]:
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


def append_record(fh, path: Path, row: dict) -> None:
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


def digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def bookkeeping_dir(out: Path, task: str, name: str) -> Path:
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


def start_runs(bundle: Showo2Bundle, task: str, parsed: dict, dirs: dict, out: Path, common: dict,
                scores: dict | None, calibration_samples: int, shard: distributed.Shard, progress: bool) -> dict:
    """Check every configuration's run settings (all ranks, before any write), get the shared importance scores,
    then record the settings (rank 0). Returns the scores."""
    for spec in parsed:
        _check_run(bookkeeping_dir(out, task, dirs[spec]), {**common, "config": spec}, shard)
    scores = _shared_scores(bundle, task, parsed, scores, out, calibration_samples, shard, progress)
    if shard.is_main:
        for spec in parsed:
            write_json(bookkeeping_dir(out, task, dirs[spec]) / "run.json", {**common, "config": spec})
    return scores


@contextmanager
def configured(bundle: Showo2Bundle, task: str, config, scores: dict, calibration_samples: int,
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
            from ...accel.calibration import cached_scores

            cached = cached_scores(bundle, task, samples=samples, progress=progress)
            cached.save(path)
        scores[task] = cached
    shard.barrier()
    if not shard.is_main:
        scores[task] = ImportanceScores.load(path)
    return scores


def prepare(bundle: Showo2Bundle, task: str, configs: Sequence[str] | str, out_dir, shard):
    if bundle.acceleration is not None:
        raise FlashuError("evaluate an unaccelerated model (call flashu.restore first); name the configurations "
                          "instead")
    specs = split_specs(configs) if isinstance(configs, str) else [str(c).strip() for c in configs]
    specs = [s for s in specs if s]
    if not specs:
        raise FlashuError("no configuration to evaluate")
    parsed = {spec: resolve_accel(spec, task) for spec in specs}
    dirs = config_dirs(specs)
    shard = shard if shard is not None else distributed.init()
    return parsed, dirs, Path(out_dir), shard


def progress_bar(shard: distributed.Shard, total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="item", disable=not progress or not shard.is_main or total == 0)
