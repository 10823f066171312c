"""The real-dimension figures on one GPU, in a few minutes: ``python benchmarks/gpu.py --out gpu-results``.

Random weights at the official dimensions (speed does not depend on the weights), bf16:

* Show-o2 **1.5B text-to-image**, 50 steps, ``none`` / ``exact`` / ``paper`` / ``plus``, eager and compiled
  (``torch.compile``, every configuration of a run compiled: never mixed);
* Show-o2 **7B understanding**, short answers (≤ 2 tokens, eos honoured: the paper's latency protocol),
  ``none`` / ``paper`` / ``plus``, with the official cache-less loop beside them;
* both again for ``plus`` beside ``plus`` with torchao's int8 and fp8 kernels (text-to-image compiled, as torchao's
  kernels are meant to run; fp8 needs compute capability 8.9+, and ``pip install 'flashu[quant]'``).

Writes ``gpu-<part>.json`` (the ``flashu bench`` report) and ``gpu.md`` (its tables) into ``--out``, for
``docs/benchmarks.md``. ``--dry-run`` runs the same code on the CPU with the ``tiny`` preset in seconds (CI does).
Only flashu's public API is used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import flashu
from flashu.accel.spec import split_specs
from flashu.io.files import write_json, write_text
from flashu.observe.bench import TaskInputs, markdown, run_benchmark, strict_json

PARTS = {  # name: (model, task, configs, compiled)
    "t2i-eager": ("1.5b", "t2i", "none,exact,paper,plus", False),
    "t2i-compiled": ("1.5b", "t2i", "none,exact,paper,plus", True),
    "mmu-short": ("7b", "mmu", "none,paper,plus", False),
    "t2i-quant": ("1.5b", "t2i", "plus,plus-int8,plus:quantization.mode=fp8", True),
    "mmu-quant": ("7b", "mmu", "plus,plus-int8,plus:quantization.mode=fp8", False),
}
DRY_RUN_FP8 = "plus:quantization.backend=torchao"  # fp8 needs a GPU: the dry run checks the torchao path instead


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the JSON reports and gpu.md")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    p.add_argument("--steps", type=int, default=50, help="text-to-image grid points")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calibration-samples", type=int, default=8)
    p.add_argument("--dry-run", action="store_true", help="tiny preset on the CPU, a few steps: checks the script")
    args = p.parse_args(argv)
    parts = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    device, dtype = ("cpu", "float32") if args.dry_run else ("cuda", "bfloat16")
    steps, repeats = (4, 1) if args.dry_run else (args.steps, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = [f"# flashu on {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (dry run)'}", ""]
    for name in parts:
        model, task, configs, compiled = PARTS[name]
        model = "tiny" if args.dry_run else model
        t0 = time.perf_counter()
        bundle = flashu.load_model(model, device=device, dtype=dtype)
        if compiled:
            flashu.compile(bundle, backend="eager" if args.dry_run else "inductor")
        inputs = TaskInputs(steps=steps, max_new_tokens=32)
        specs = split_specs(configs)
        if args.dry_run:
            specs = [DRY_RUN_FP8 if "fp8" in spec else spec for spec in specs]
        report = run_benchmark(bundle, task, specs, repeats=repeats, inputs=inputs,
                               mmu_workloads=("short",), calibration_samples=args.calibration_samples,
                               instrument=False, progress=False)
        report["part"], report["wall_s"] = name, time.perf_counter() - t0
        write_json(args.out / f"gpu-{name}.json", strict_json(report), allow_nan=False)
        tables += [f"## {name} ({report['wall_s']:.0f} s including loading, calibration and compilation)", "",
                   markdown(report), ""]
        print(f"{name}: {report['wall_s']:.0f} s", file=sys.stderr, flush=True)
        del bundle
        if device == "cuda":
            torch.cuda.empty_cache()
    write_text(args.out / "gpu.md", "\n".join(tables))
    print(f"wrote {args.out / 'gpu.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
