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

# One job per module: inputs (prompt formats, understanding data), runs (what both tasks share: settings, resume
# checks, bookkeeping, shared scores), t2i and mmu (each task's loop and report).
from .inputs import DEFAULT_SAMPLES, T2I_FORMATS, MMUItem, PromptItem, detect_format, read_mmu_data, read_t2i_prompts
from .mmu import _read_predictions, eval_mmu
from .runs import BOOKKEEPING, SCHEMA, SCHEMA_VERSION, config_dir_name, image_valid
from .t2i import eval_t2i, t2i_files

__all__ = ["BOOKKEEPING", "DEFAULT_SAMPLES", "MMUItem", "PromptItem", "SCHEMA", "SCHEMA_VERSION", "T2I_FORMATS",
           "_read_predictions", "config_dir_name", "detect_format", "eval_mmu", "eval_t2i", "image_valid",
           "read_mmu_data", "read_t2i_prompts", "t2i_files"]
