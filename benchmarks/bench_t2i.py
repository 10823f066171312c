"""Side-by-side text-to-image speed and fidelity of FlashU configurations, in one process.

    python benchmarks/bench_t2i.py --model small --steps 50 --repeats 3 [--json out.json]

All configurations share one loaded model (accelerated once: the permutation preserves the baseline's function, so
``none``/``exact`` run the same mathematics on the permuted weights). Runs are interleaved (A B C D A B C D …)
after a warm-up; the table reports the median and spread of the denoising+decode wall time, the speedup against
``none`` and ``exact``, evaluations, backbone runs, and fidelity against ``none`` (relative L2 of the final latents,
PSNR of the decoded images).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import flashu
from flashu.accel.config import accel_preset
from flashu.pipelines.t2i import BaselinePolicy

PROMPTS = ["a red circle left of a blue square", "a lighthouse on a cliff at sunset"]


def psnr(a, b) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="none,exact,paper,plus")
    parser.add_argument("--calibration-samples", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    bundle = flashu.load_model(args.model)
    params_before = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    names = args.configs.split(",")
    accelerated = [n for n in names if n not in ("none", "exact")]
    policies = {"none": BaselinePolicy(), "exact": BaselinePolicy(exact=True)}
    if accelerated:
        cfg = accel_preset(accelerated[0])
        cfg.understanding = None
        t0 = time.perf_counter()
        acc = flashu.accelerate(bundle, cfg, calibration_samples=args.calibration_samples)
        calibration_s = time.perf_counter() - t0
        for name in accelerated:
            ncfg = accel_preset(name)
            policies[name] = type(acc.generation_policy())(ncfg.generation, acc.layout.ffn_ranges["t2i"],
                                                           acc.layout.group_ranges["t2i"], name=name)
    else:
        calibration_s = 0.0
    params_after = sum(p.numel() * p.element_size() for p in bundle.model.parameters())

    def run(name, steps):
        t0 = time.perf_counter()
        result = flashu.generate(bundle, PROMPTS[:1], steps=steps, guidance=args.guidance, seed=0,
                                 policy=policies[name], progress=False)
        return time.perf_counter() - t0, result

    for name in names:  # warm-up
        run(name, 4)
    times = {n: [] for n in names}
    results = {}
    for _ in range(args.repeats):
        for name in names:
            seconds, result = run(name, args.steps)
            times[name].append(seconds)
            results[name] = result

    ref = results["none"] if "none" in results else None
    rows = []
    for name in names:
        med = statistics.median(times[name])
        row = {"config": name, "median_s": med, "min_s": min(times[name]), "max_s": max(times[name]),
               "evaluations": results[name].evaluations,
               "backbone_runs": results[name].stats.get("backbone_runs", results[name].evaluations),
               "head_reused": results[name].stats.get("head_reused", 0)}
        if "none" in times:
            row["speedup_vs_none"] = statistics.median(times["none"]) / med
        if "exact" in times:
            row["speedup_vs_exact"] = statistics.median(times["exact"]) / med
        if ref is not None:
            a, b = results[name].latents, ref.latents
            row["latent_rel_l2"] = float((a - b).norm() / b.norm())
            row["psnr_db"] = psnr(results[name].images[0], ref.images[0])
        rows.append(row)

    print(f"\n{args.model}, {args.steps} steps (baseline {args.steps - 1} evaluations), guidance {args.guidance}, "
          f"{args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}")
    print(f"weight memory: baseline {params_before / 2**20:.1f} MiB, accelerated {params_after / 2**20:.1f} MiB "
          f"({params_after / params_before:.4f}×); calibration {calibration_s:.1f} s")
    print("| config | median s (min–max) | × vs none | × vs exact | evals | backbone runs | head reused | "
          "latent rel-L2 | PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['median_s']:.2f} ({r['min_s']:.2f}–{r['max_s']:.2f}) | "
              f"{r.get('speedup_vs_none', float('nan')):.2f} | {r.get('speedup_vs_exact', float('nan')):.2f} | "
              f"{r['evaluations']} | {r['backbone_runs']} | {r['head_reused']} | "
              f"{r.get('latent_rel_l2', float('nan')):.4f} | {r.get('psnr_db', float('nan')):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "steps": args.steps, "repeats": args.repeats,
                       "weight_bytes": {"baseline": params_before, "accelerated": params_after},
                       "calibration_s": calibration_s, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
