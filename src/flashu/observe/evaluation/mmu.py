"""Understanding evaluation runs: answers, exact-match accuracy, resumable predictions (see the package docstring)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from .. import distributed
from ...bundle import Showo2Bundle
from ...errors import FlashuError, memory_guard
from ...io.files import write_json, write_text
from .inputs import MMUItem, limited, read_mmu_data
from .runs import (
    SCHEMA, SCHEMA_VERSION, append_record, bookkeeping_dir, configured, digest, prepare, progress_bar, start_runs,
)

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
    return [out / name / "predictions.jsonl", *sorted(bookkeeping_dir(out, "mmu", name).glob("predictions-rank*.jsonl"))]


@memory_guard("eval mmu")
def eval_mmu(bundle: Showo2Bundle, data_jsonl: str | Path, configs: Sequence[str] | str, out_dir: str | Path, *,
             max_new_tokens: int = 32, limit: int | None = None, scores: dict | None = None,
             calibration_samples: int = 20, shard: distributed.Shard | None = None, progress: bool = True) -> dict:
    """Answer every question of ``data_jsonl`` under every configuration; accuracy per configuration (exact match
    after normalisation). Predictions in ``out_dir/<config>/predictions.jsonl``; report ``out_dir/eval_mmu.json``
    (returned on every rank). Resumable and sharded like :func:`eval_t2i`."""
    from ...accel.importance import model_fingerprint
    from ...pipelines.mmu import answer
    from ..metrics import score_answer

    items = read_mmu_data(data_jsonl)
    items = limited(items, limit)
    if int(max_new_tokens) <= 0:
        raise FlashuError(f"max_new_tokens must be positive, got {max_new_tokens}")
    parsed, dirs, out, shard = prepare(bundle, "mmu", configs, out_dir, shard)
    common = {"task": "mmu", "model": model_fingerprint(bundle.model), "max_new_tokens": int(max_new_tokens),
              "image_size": bundle.config.image_size,
              "items": digest([[it.id, it.image, it.question, it.answer] for it in items])}
    scores = start_runs(bundle, "mmu", parsed, dirs, out, common, scores, calibration_samples, shard, progress)

    for spec in parsed:  # the merged predictions are written there at the end: refuse before any work
        target = out / dirs[spec] / "predictions.jsonl"
        if target.exists() and not target.is_file():
            raise FlashuError(f"{target} exists and is not a file; remove it (or choose another --out)")
    mine = shard.take(items)
    for spec, config in parsed.items():
        name = dirs[spec]
        recorded = _read_predictions(_prediction_files(out, name))
        pending = [it for it in mine if it.index not in recorded]
        part = bookkeeping_dir(out, "mmu", name) / f"predictions-rank{shard.rank}.jsonl"
        part.parent.mkdir(parents=True, exist_ok=True)
        generated, seconds = 0, 0.0
        if pending:
            with configured(bundle, "mmu", config, scores, calibration_samples, progress), \
                    progress_bar(shard, len(pending), f"eval mmu [{spec}]", progress) as bar, \
                    part.open("a", encoding="utf-8") as fh:
                if part.stat().st_size and not part.read_bytes().endswith(b"\n"):
                    fh.write("\n")  # after a torn last line (interrupted write): start a fresh line
                for item in pending:
                    t0 = time.perf_counter()
                    reply = answer(bundle, item.image, item.question, max_new_tokens=max_new_tokens)
                    row = {"index": item.index, "id": item.id, "question": item.question, "answer": item.answer,
                           "prediction": reply.text, "correct": score_answer(reply.text, item.answer),
                           "tokens": len(reply.token_ids), "seconds": time.perf_counter() - t0}
                    append_record(fh, part, row)
                    generated += 1
                    seconds += row["seconds"]
                    bar.update()
        write_json(bookkeeping_dir(out, "mmu", name) / f"mmu-rank{shard.rank}.json",
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
    for part in sorted(bookkeeping_dir(out, "mmu", name).glob("mmu-rank*.json")):
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
