"""FlashU for understanding vs the KV-cached baseline, side by side in one process.

Every configuration answers the same image/question pairs with exactly ``--tokens`` greedy tokens
(``answer(..., ignore_eos=True)``). After one warm-up answer per configuration, the configurations are run
interleaved (A B C … A B C …) ``--repeats`` times over every pair; the table reports medians over all those runs.

Configurations:

* ``none`` — the baseline (KV-cached greedy decoding, last-position logits only in prefill).
* ``paper`` — ``flashu.accelerate(bundle, "paper")`` for understanding (understanding calibration on the default
  shapes-world pairs, ``--calibration-samples``); the generation side of the preset is left out of this benchmark
  (it does not change the understanding plan and its calibration would only add minutes).
* ``paper/random``, ``paper/knorm``, ``paper/attention`` — the same accelerated model and budget, other token scorers.
* with ``--what-if``: variants showing what the speed targets would take.

The model is accelerated (its FFN neurons permuted, a function-preserving change) before the timed runs, so the
baseline is timed on the permuted weights; its reference answers for the agreement columns are computed before
accelerating, on the original weights.

Timings: ``e2e`` is the wall time of ``answer()`` (VAE encode + SigLIP/fusion + backbone prefill + decode);
``e2e−VAE`` leaves the VAE encode out (identical in every configuration and outside what FlashU touches);
``prefill`` is the backbone prefill (``timings["prefill_backbone"]``), ``+vision`` adds SigLIP + fusion.

Agreement with the baseline answer: token agreement over the ``--tokens`` positions, exact-match count, and the mean
KL(p_base ‖ p_acc) of the next-token distributions along the answer (only over steps whose preceding tokens agree,
i.e. teacher-forced). With random weights (the ``small`` preset) the greedy answers are nearly constant, so
the KL column is the informative one.

Usage::

    python benchmarks/bench_mmu.py [--model small] [--repeats 3] [--pairs 3] [--json out.json] [--what-if]
    python benchmarks/bench_mmu.py --sweep      # ρ × K sweep (token pruning only) used to choose the defaults
    python benchmarks/bench_mmu.py --profile    # where one baseline decode step / prefill spends its time
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import flashu
from flashu.accel.config import accel_preset
from flashu.accel.understanding import FlashUUnderstandingPolicy
from flashu.model import BASELINE, KVCache, omni_attention_mask
from flashu.pipelines.mmu import BaselineUnderstanding, answer, build_understanding_inputs, prefill_embeddings


# ------------------------------------------------------------------------------------------------ inputs
def benchmark_pairs(bundle, count: int) -> list[tuple[object, str, str]]:
    """(image, question, label): shapes-world test scenes rendered at the model's resolution."""
    size = bundle.config.image_size
    try:
        from flashu.testbed.world import iter_split
    except ImportError:  # pragma: no cover - the testbed ships with flashu
        iter_split = None
    pairs = []
    if iter_split is not None:
        for i, ex in enumerate(iter_split("test", count, size=size)):
            qa = ex.qas[i % len(ex.qas)]
            pairs.append((ex.image, qa.question, f"test/{ex.index}"))
        return pairs
    from PIL import Image, ImageDraw

    for i in range(count):
        img = Image.new("RGB", (size, size), "white")
        d = ImageDraw.Draw(img)
        d.ellipse((10 + 9 * i, 20, size // 2, size // 2 + 9 * i), fill=(255, 0, 0))
        d.rectangle((size // 2 + 5, 30, size - 20, size - 40 - 7 * i), fill=(0, 64, 255))
        pairs.append((img, "what is left of the square?", f"synthetic/{i}"))
    return pairs


# ------------------------------------------------------------------------------------------------ recording
class _Recording:
    """Wraps a policy to keep every step's last-position logits (quality passes only, never timed)."""

    def __init__(self, inner):
        self.inner, self.name, self.logits = inner, getattr(inner, "name", "?"), []

    def start(self, bundle, inputs):
        session = self.inner.start(bundle, inputs)
        outer = self

        class Session:
            def prefill_plan(self):
                return session.prefill_plan()

            def decode_plan(self, index):
                return session.decode_plan(index)

            def observe(self, index, output):
                outer.logits.append(output.logits[0, -1].float().clone())
                session.observe(index, output)

            def stats(self):
                return session.stats()

        return Session()


def quality_run(bundle, policy, image, question, tokens):
    rec = _Recording(policy)
    a = answer(bundle, image, question, max_new_tokens=tokens, ignore_eos=True, policy=rec)
    return a.token_ids, rec.logits, a.stats


def agreement(ref_ids, ref_logits, ids, logits) -> dict:
    same = [a == b for a, b in zip(ref_ids, ids)]
    kls = []
    for i, (p, q) in enumerate(zip(ref_logits, logits)):
        if i > 0 and not all(same[:i]):
            break  # after a divergence the contexts differ: not comparable
        lp, lq = p.log_softmax(-1), q.log_softmax(-1)
        kls.append(float((lp.exp() * (lp - lq)).sum()))
    return {"token_agreement": sum(same) / len(same), "exact": all(same) and len(ids) == len(ref_ids),
            "kl": statistics.mean(kls) if kls else float("nan"), "kl_steps": len(kls)}


# ------------------------------------------------------------------------------------------------ main benchmark
def configurations(acc, what_if: bool):
    und = acc.config.understanding
    ranges = acc.layout.ffn_ranges["mmu"]
    configs = {"none": BaselineUnderstanding(), "paper": FlashUUnderstandingPolicy(und, ranges, name="paper")}
    for scorer in ("random", "knorm", "attention"):
        configs[f"paper/{scorer}"] = FlashUUnderstandingPolicy(dataclasses.replace(und, token_scorer=scorer), ranges,
                                                               name=f"paper/{scorer}")
    if what_if:
        configs["paper ρ=0.75"] = FlashUUnderstandingPolicy(dataclasses.replace(und, token_prune_ratio=0.75),
                                                            ranges, name="paper ρ=0.75")
        configs["paper r_LS=0.4"] = FlashUUnderstandingPolicy(dataclasses.replace(und, layer_skip_ratio=0.4),
                                                              ranges, name="paper r_LS=0.4")
        configs["paper ρ=0.75 r_LS=0.5 T=0"] = FlashUUnderstandingPolicy(
            dataclasses.replace(und, token_prune_ratio=0.75, layer_skip_ratio=0.5, layer_skip_interval=0), ranges,
            name="paper ρ=0.75 r_LS=0.5 T=0")
    return configs


def run_benchmark(args) -> dict:
    torch.manual_seed(0)
    bundle = flashu.load_model(args.model)
    pairs = benchmark_pairs(bundle, args.pairs)
    print(f"# {args.model}: {len(pairs)} image/question pairs, {args.tokens} greedy tokens, "
          f"{args.repeats} interleaved repeats, torch threads {torch.get_num_threads()}", file=sys.stderr)

    # reference answers on the original (unpermuted) weights
    refs = [quality_run(bundle, BaselineUnderstanding(), img, q, args.tokens) for img, q, _ in pairs]

    cfg = accel_preset("paper")
    cfg.generation = None  # understanding only (see the module docstring)
    t0 = time.perf_counter()
    acc = flashu.accelerate(bundle, cfg, progress=False, calibration_samples=args.calibration_samples)
    calib_s = time.perf_counter() - t0
    print(f"# accelerate(paper, understanding): {calib_s:.1f} s (calibration on {args.calibration_samples} "
          f"default pairs)", file=sys.stderr)
    try:
        configs = configurations(acc, args.what_if)
        quality = {}
        for name, policy in configs.items():
            rows = []
            for (img, q, _), (ref_ids, ref_logits, _) in zip(pairs, refs):
                ids, logits, stats = quality_run(bundle, policy, img, q, args.tokens)
                rows.append({**agreement(ref_ids, ref_logits, ids, logits), "stats": stats})
            quality[name] = rows

        for name, policy in configs.items():  # warm-up
            answer(bundle, pairs[0][0], pairs[0][1], max_new_tokens=args.tokens, ignore_eos=True, policy=policy)
        runs = {name: [] for name in configs}
        for _ in range(args.repeats):
            for img, q, _ in pairs:
                for name, policy in configs.items():
                    t = time.perf_counter()
                    a = answer(bundle, img, q, max_new_tokens=args.tokens, ignore_eos=True, policy=policy)
                    wall = time.perf_counter() - t
                    assert len(a.token_ids) == args.tokens
                    runs[name].append({"e2e": wall, **a.timings, "decode_tok_s": a.decode_tokens_per_s,
                                       "kept_tokens": a.kept_tokens, "prompt_tokens": a.prompt_tokens})
    finally:
        flashu.restore(bundle)

    summary = {}
    for name, rs in runs.items():
        med = lambda key: statistics.median(r[key] for r in rs)  # noqa: E731
        e2e, enc = med("e2e"), med("encode")
        q = quality[name]
        stats = q[0]["stats"]
        summary[name] = {
            "e2e_s": e2e, "e2e_minus_vae_s": statistics.median(r["e2e"] - r["encode"] for r in rs),
            "encode_s": enc, "prefill_vision_s": med("prefill_vision"), "prefill_backbone_s": med("prefill_backbone"),
            "prefill_s": med("prefill"), "decode_s": med("decode"), "decode_tok_s": med("decode_tok_s"),
            "kept_tokens": rs[0]["kept_tokens"], "prompt_tokens": rs[0]["prompt_tokens"],
            "token_agreement": statistics.mean(r["token_agreement"] for r in q),
            "exact": sum(r["exact"] for r in q), "answers": len(q),
            "kl": statistics.mean(r["kl"] for r in q),
            "mean_layers_skipped_per_step": stats.get("mean_layers_skipped_per_step", 0.0),
            "runs": len(rs),
        }
    return {"model": args.model, "tokens": args.tokens, "repeats": args.repeats, "pairs": [p[2] for p in pairs],
            "threads": torch.get_num_threads(), "accelerate_s": calib_s, "config": cfg.to_dict(),
            "summary": summary, "runs": runs,
            "quality": quality}


def print_table(result: dict) -> None:
    s = result["summary"]
    base = s["none"]
    print(f"\n{result['model']}, prefill + {result['tokens']} greedy tokens, median of {base['runs']} runs "
          f"({len(result['pairs'])} pairs × {result['repeats']} interleaved repeats), {result['threads']} threads\n")
    print("| config | e2e s | × | e2e−VAE s | × | prefill (backbone) ms | × | +vision ms | × | VAE enc ms | "
          "decode tok/s | × | kept / prompt | skipped/step | token agr. | exact | KL |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in s.items():
        pv = r["prefill_s"]
        print(f"| {name} | {r['e2e_s']:.3f} | {base['e2e_s'] / r['e2e_s']:.2f} | {r['e2e_minus_vae_s']:.3f} | "
              f"{base['e2e_minus_vae_s'] / r['e2e_minus_vae_s']:.2f} | {1e3 * r['prefill_backbone_s']:.1f} | "
              f"{base['prefill_backbone_s'] / r['prefill_backbone_s']:.2f} | {1e3 * pv:.1f} | "
              f"{base['prefill_s'] / pv:.2f} | {1e3 * r['encode_s']:.0f} | {r['decode_tok_s']:.1f} | "
              f"{r['decode_tok_s'] / base['decode_tok_s']:.2f} | {r['kept_tokens']} / {r['prompt_tokens']} | "
              f"{r['mean_layers_skipped_per_step']:.2f} | {r['token_agreement']:.3f} | {r['exact']}/{r['answers']} | "
              f"{r['kl']:.2e} |")


# ------------------------------------------------------------------------------------------------ sweep
def run_sweep(args) -> dict:
    """Token pruning alone (no FFN pruning, no skipping): ρ × K → backbone prefill time and answer fidelity."""
    from flashu.accel.config import UnderstandingAccelConfig

    bundle = flashu.load_model(args.model)
    pairs = benchmark_pairs(bundle, args.pairs)
    refs = [quality_run(bundle, BaselineUnderstanding(), img, q, args.tokens) for img, q, _ in pairs]
    prepared = []
    with torch.no_grad():
        for img, q, _ in pairs:
            inputs = build_understanding_inputs(bundle, img, q)
            e = prefill_embeddings(bundle, inputs)
            L = e.shape[1]
            mask = omni_attention_mask(L, torch.tensor([inputs.block_offset]), inputs.block_len, bundle.dtype)
            prepared.append((inputs, e, mask, torch.arange(L)[None]))
    grid = [(None, None)] + [(rho, K) for K in (1, 2, 4) for rho in (0.25, 0.5, 0.75)
                             if K < bundle.config.llm.num_layers]
    policies = {}
    for rho, K in grid:
        if rho is None:
            policies[(rho, K)] = BaselineUnderstanding()
        else:
            cfg = UnderstandingAccelConfig(prune_ratio=0.0, layer_skip_ratio=0.0, token_prune_ratio=rho,
                                           token_prune_layer=K)
            policies[(rho, K)] = FlashUUnderstandingPolicy(cfg, None, name=f"rho={rho},K={K}")
    times = {key: [] for key in grid}
    n = bundle.config.llm.num_layers
    with torch.no_grad():
        for rep in range(args.repeats + 1):
            for inputs, e, mask, pos in prepared:
                for key, policy in policies.items():
                    plan = policy.start(bundle, inputs).prefill_plan()
                    t = time.perf_counter()
                    bundle.model.run_backbone(e, pos, mask, plan, KVCache(n))
                    if rep:  # rep 0 is the warm-up
                        times[key].append(time.perf_counter() - t)
    rows = []
    base_t = statistics.median(times[(None, None)])
    for key, policy in policies.items():
        q = []
        for (img, qq, _), (ref_ids, ref_logits, _) in zip(pairs, refs):
            ids, logits, _ = quality_run(bundle, policy, img, qq, args.tokens)
            q.append(agreement(ref_ids, ref_logits, ids, logits))
        t = statistics.median(times[key])
        rows.append({"rho": key[0], "K": key[1], "prefill_backbone_ms": 1e3 * t, "speedup": base_t / t,
                     "token_agreement": statistics.mean(r["token_agreement"] for r in q),
                     "exact": sum(r["exact"] for r in q), "kl": statistics.mean(r["kl"] for r in q)})
    print(f"\n{args.model}: token pruning only (V-norm), backbone prefill median of {args.repeats}×{len(pairs)}, "
          f"agreement over {args.tokens} greedy tokens\n")
    print("| ρ | K | prefill (backbone) ms | × | token agr. | exact | mean KL |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rho'] if r['rho'] is not None else '—'} | {r['K'] if r['K'] is not None else '—'} | "
              f"{r['prefill_backbone_ms']:.1f} | {r['speedup']:.2f} | {r['token_agreement']:.3f} | "
              f"{r['exact']}/{len(pairs)} | {r['kl']:.2e} |")
    return {"model": args.model, "sweep": rows}


# ------------------------------------------------------------------------------------------------ profile
def run_profile(args) -> dict:
    """Component times of one baseline answer and the op breakdown of one decode step."""
    from torch.profiler import ProfilerActivity, profile

    bundle = flashu.load_model(args.model)
    img, q, _ = benchmark_pairs(bundle, 1)[0]
    n = bundle.config.llm.num_layers

    def med(f, k=7):
        f()
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    with torch.no_grad():
        inputs = build_understanding_inputs(bundle, img, q)
        from flashu.io.images import preprocess_image

        pixels = preprocess_image(img, bundle.config.image_size)[None]
        t_vae = med(lambda: bundle.codec.encode(pixels), 3)
        t_vis = med(lambda: bundle.model.image_tokens(inputs.latents))
        e = prefill_embeddings(bundle, inputs)
        L = e.shape[1]
        mask = omni_attention_mask(L, torch.tensor([inputs.block_offset]), inputs.block_len, bundle.dtype)
        pos = torch.arange(L)[None]
        t_pre = med(lambda: bundle.model.run_backbone(e, pos, mask, BASELINE.with_(logits="last"), KVCache(n)))
        cache = KVCache(n)
        bundle.model.run_backbone(e, pos, mask, BASELINE.with_(logits="last"), cache)
        one = e[:, :1]

        def step(layers=None):
            c = KVCache(n)
            c.keys, c.values = list(cache.keys), list(cache.values)
            bundle.model.run_backbone(one, torch.tensor([[L]]), None, BASELINE.with_(logits="last", layers=layers), c)

        t_step = med(step, 21)
        t_half = med(lambda: step(list(range(n // 2))), 21)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                step()
    per_layer = (t_step - t_half) / (n - n // 2)
    print(f"\n{args.model} baseline components (median): VAE encode {1e3 * t_vae:.1f} ms | SigLIP + fusion "
          f"{1e3 * t_vis:.1f} ms | backbone prefill ({L} tokens) {1e3 * t_pre:.1f} ms | decode step "
          f"{1e3 * t_step:.2f} ms = {1e3 * per_layer:.3f} ms per decoder layer × {n} + "
          f"{1e3 * (t_step - n * per_layer):.2f} ms fixed")
    print("\nOne decode step, top ops by self CPU time (10 steps):\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {"vae_encode_s": t_vae, "vision_s": t_vis, "backbone_prefill_s": t_pre, "decode_step_s": t_step,
            "decode_per_layer_s": per_layer, "prompt_tokens": L}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pairs", type=int, default=3, help="image/question pairs (shapes-world test split)")
    p.add_argument("--calibration-samples", type=int, default=20)
    p.add_argument("--what-if", action="store_true", help="add variants showing what the speed targets need")
    p.add_argument("--sweep", action="store_true", help="ρ × K sweep of V-norm token pruning alone")
    p.add_argument("--profile", action="store_true", help="component times and a decode-step op profile")
    p.add_argument("--json", type=Path, help="write every measurement to this file")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.tokens < 1 or args.pairs < 1:
        p.error("--repeats, --tokens and --pairs must be positive")
    if args.sweep:
        result = run_sweep(args)
    elif args.profile:
        result = run_profile(args)
    else:
        result = run_benchmark(args)
        print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
