"""FlashU for understanding on the trained testbed: what each technique and each token scorer costs in accuracy.

Every variant answers the same test-split questions as the baseline; the table gives exact-match accuracy, the
agreement of its answers with the baseline's, and accuracy per question kind. Variants switch the understanding
techniques of the ``paper`` preset on one at a time (FFN pruning, decode layer skipping with and without
``fill_skipped_kv`` / ``skip_in_prefill``) and compare the four token scorers at the same budgets (ρ 0.25/0.5/0.75 at
K = 2, ρ 0.5 at K = 4 and 6). Importance scores are calibrated once on the train split and shared.

``--where`` adds what the V-norm and key-norm scorers rank first: the share of shape tokens (image tokens whose 4×4
pixel patch is not background) among the dropped half, and the probability that a shape token outranks a
background token.

Usage::

    python benchmarks/testbed_understanding.py [--model testbed] [--questions 200] [--threads 1] [--json F] [--where]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from flashu.accel.config import accel_preset
from flashu.accel.understanding import KeyNormSelector, ValueNormSelector
from flashu.model import ExecutionPlan
from flashu.pipelines.mmu import build_understanding_inputs, prefill_backbone, prefill_embeddings
from flashu.testbed import world
from flashu.testbed.evaluate import calibration_scores, evaluate, load_testbed

NOTHING = dict(prune_ratio=0.0, layer_skip_ratio=0.0, token_prune_ratio=0.0)


def variants() -> list[tuple[str, dict]]:
    rows = [("paper", {}), ("paper + skip_in_prefill", dict(skip_in_prefill=True)),
            ("paper, fill_skipped_kv off", dict(fill_skipped_kv=False)),
            ("FFN pruning only", {**NOTHING, "prune_ratio": 0.2}),
            ("layer skipping only", {**NOTHING, "layer_skip_ratio": 0.2}),
            ("layer skipping only, fill off", {**NOTHING, "layer_skip_ratio": 0.2, "fill_skipped_kv": False}),
            ("layer skipping only + prefill", {**NOTHING, "layer_skip_ratio": 0.2, "skip_in_prefill": True})]
    for ratio in (0.25, 0.5, 0.75):
        for scorer in ("vnorm", "random", "knorm", "attention"):
            rows.append((f"tokens ρ {ratio} K 2 {scorer}", {**NOTHING, "token_prune_ratio": ratio,
                                                             "token_scorer": scorer}))
    for layer in (4, 6):
        for scorer in ("vnorm", "random"):
            rows.append((f"tokens ρ 0.5 K {layer} {scorer}", {**NOTHING, "token_prune_ratio": 0.5,
                                                               "token_prune_layer": layer, "token_scorer": scorer}))
    return rows


def understanding_only(name: str, changes: dict):
    cfg = accel_preset("paper")
    cfg.name, cfg.generation = name, None
    for key, value in changes.items():
        setattr(cfg.understanding, key, value)
    return cfg.validate()


@torch.no_grad()
def where_scorers_drop(bundle, images: int) -> list[dict]:
    grid = bundle.config.grid
    patch = bundle.config.image_size // grid
    out = []
    for layer in (2, 4):
        for cls in (ValueNormSelector, KeyNormSelector):
            dropped_shape, share, above = [], [], []
            for index in range(images):
                example = world.sample("test", index)
                inputs = build_understanding_inputs(bundle, example.image, example.qas[0].question)
                selector = cls(layer, inputs.block_offset + 1, grid * grid, grid * grid // 2)
                prefill_backbone(bundle, inputs, prefill_embeddings(bundle, inputs),
                                 ExecutionPlan(token_selector=selector, logits="last"))
                priority = selector.priorities[0].numpy()
                pixels = np.asarray(example.image.convert("RGB"), dtype=np.int32)
                shape = (np.abs(pixels - 255).sum(-1) > 30).reshape(grid, patch, grid, patch).any(axis=(1, 3))
                shape = shape.reshape(-1)
                drop = np.argsort(-priority, kind="stable")[: grid * grid // 2]
                share.append(shape.mean())
                dropped_shape.append(shape[drop].mean())
                if 0 < shape.sum() < shape.size:
                    above.append(float((priority[shape][:, None] > priority[~shape][None, :]).mean()))
            out.append({"scorer": cls.name, "layer": layer, "shape_token_share": float(np.mean(share)),
                        "shape_share_of_dropped_half": float(np.mean(dropped_shape)),
                        "p_shape_ranked_above_background": float(np.mean(above))})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="testbed")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--where", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_testbed(args.model)
    scores = calibration_scores(bundle, 20)
    base = evaluate(bundle, "none", n_gen=0, n_mmu=args.questions, progress=False)["understanding"]
    report = {"model": bundle.source, "questions": args.questions,
              "layer_prior": [float(v) for v in scores["mmu"].layer_similarity],
              "rows": [{"variant": "none", "changes": {}, "accuracy": base["accuracy"], "agreement": 1.0,
                        "by_kind": base["by_kind"]}]}
    print("| variant | accuracy | agreement with none | colour | count | relation | shape |\n|---|---|---|---|---|---|---|")
    for name, changes in [("none", None)] + variants():
        if changes is None:
            r, agree = base, 1.0
        else:
            r = evaluate(bundle, understanding_only(name, changes), n_gen=0, n_mmu=args.questions, progress=False,
                         scores=scores)["understanding"]
            agree = sum(a == b for a, b in zip(r["answers"], base["answers"])) / args.questions
            report["rows"].append({"variant": name, "changes": changes, "accuracy": r["accuracy"],
                                   "agreement": agree, "by_kind": r["by_kind"]})
        kinds = " | ".join(f"{r['by_kind'].get(k, float('nan')):.2f}" for k in ("colour", "count", "relation", "shape"))
        print(f"| {name} | {r['accuracy']:.1%} | {agree:.1%} | {kinds} |", flush=True)
    if args.where:
        report["where"] = where_scorers_drop(bundle, 100)
        for w in report["where"]:
            print(f"{w['scorer']} K={w['layer']}: shape tokens {w['shape_token_share']:.1%} of the image, "
                  f"{w['shape_share_of_dropped_half']:.1%} of the dropped half, "
                  f"P(shape ranked above background) {w['p_shape_ranked_above_background']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
