"""Text-to-image evaluation runs: images in the layout each external scorer reads (see the package docstring)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

from PIL import Image

from .. import distributed
from ...bundle import Showo2Bundle
from ...errors import FlashuError, memory_guard
from ...io.files import save_image, write_json, write_text
from .inputs import DEFAULT_SAMPLES, PromptItem, limited, read_t2i_prompts
from .runs import (
    SCHEMA, SCHEMA_VERSION, bookkeeping_dir, configured, digest, image_valid, prepare, progress_bar, start_runs,
)

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


@memory_guard("eval t2i")
def eval_t2i(bundle: Showo2Bundle, prompts_source, configs: Sequence[str] | str, out_dir: str | Path, *,
             steps: int | None = None, guidance: float | None = None, seed: int = 0,
             samples_per_prompt: int | None = None, fmt: str = "auto", image_size: int | None = None,
             limit: int | None = None, scores: dict | None = None, calibration_samples: int = 20,
             shard: distributed.Shard | None = None, progress: bool = True) -> dict:
    """Generate every prompt of ``prompts_source`` under every configuration into ``out_dir`` (see the module
    docstring for formats, layouts, resuming and sharding). Returns the merged report (on every rank)."""
    fmt, items = read_t2i_prompts(prompts_source, fmt)
    items = limited(items, limit)
    samples = DEFAULT_SAMPLES[fmt] if samples_per_prompt is None else int(samples_per_prompt)
    if samples < 1:
        raise FlashuError(f"samples_per_prompt must be at least 1, got {samples}")
    cfg = bundle.config
    steps = cfg.default_steps if steps is None else int(steps)
    guidance = cfg.default_guidance if guidance is None else float(guidance)
    size = cfg.image_size if image_size is None else int(image_size)
    cfg.grid_for(size)
    parsed, dirs, out, shard = prepare(bundle, "t2i", configs, out_dir, shard)
    from ...accel.importance import model_fingerprint

    common = {"task": "t2i", "model": model_fingerprint(bundle.model), "format": fmt, "steps": steps,
              "guidance": guidance, "seed": seed, "samples_per_prompt": samples, "image_size": size,
              "items": digest([[it.id, it.prompt, it.metadata] for it in items])}
    scores = start_runs(bundle, "t2i", parsed, dirs, out, common, scores, calibration_samples, shard, progress)

    from ...pipelines.t2i import generate

    mine = shard.take(items)
    for spec, config in parsed.items():
        config_dir, book = out / dirs[spec], bookkeeping_dir(out, "t2i", dirs[spec])
        pending = [it for it in mine if not _t2i_done(fmt, config_dir, it, samples)]
        done, seconds, evaluations = [], 0.0, 0
        if pending:
            with configured(bundle, "t2i", config, scores, calibration_samples, progress), \
                    progress_bar(shard, len(pending), f"eval t2i [{spec}]", progress) as bar:
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
    config_dir, book = out / name, bookkeeping_dir(out, "t2i", name)
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
