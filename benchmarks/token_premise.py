"""Does a visual-token scorer's premise hold on a model? Per decoder layer, over a set of questions: the Spearman
rank correlation between each image token's value norm (the paper's V-norm proxy), key norm, and the attention it
receives — from the text after the image block (FastV's measure) and from the last prompt position (what the first
answer token sees). FlashU's V-norm pruning drops the largest value norms as the least attended, so its premise is
a *negative* correlation between value norm and received attention.

A probe selector at layer K keeps every token (the forward is unchanged) and reads that layer's K, V and queries;
one prefill per layer and question.

    python benchmarks/token_premise.py --model testbed --questions 60 [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flashu.accel.token_pruning import VisualTokenSelector, _attention_logits
from flashu.model import ExecutionPlan
from flashu.pipelines.mmu import build_understanding_inputs
from flashu.testbed.evaluate import load_testbed, split_items


class Probe(VisualTokenSelector):
    """Keeps every image token; records per image token: value norm, key norm, attention received from the text
    after the block and from the last position."""

    name = "probe"
    needs_queries = True

    def __init__(self, layer: int, image_start: int, image_count: int):
        super().__init__(layer, image_start, image_count, image_count)
        self.record: dict[str, torch.Tensor] = {}

    def priority(self, values, keys, hidden, queries):
        L = keys.shape[2]
        logits = _attention_logits(queries, keys, self.image_stop, self.name)  # [B, Hq, Nq, L]
        rows = torch.arange(self.image_stop, L, device=logits.device)
        allowed = torch.arange(L, device=logits.device)[None, :] <= rows[:, None]
        probs = logits.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        self.record = {
            "vnorm": self._image(values).float().pow(2).sum(dim=(1, 3)).sqrt()[0],
            "knorm": self._image(keys).float().pow(2).sum(dim=(1, 3)).sqrt()[0],
            "attn_text": probs[..., self.image_start:self.image_stop].mean(dim=(1, 2))[0],
            "attn_last": probs[:, :, -1, self.image_start:self.image_stop].mean(dim=1)[0],
        }
        return torch.zeros(values.shape[0], self.image_count, device=values.device)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


@torch.no_grad()
def premise(bundle, items, layers: list[int]) -> dict:
    pairs = (("vnorm", "attn_text"), ("vnorm", "attn_last"), ("knorm", "attn_text"), ("knorm", "attn_last"))
    out = {"questions": len(items), "layers": {}}
    for layer in layers:
        sums = {f"{a}~{b}": 0.0 for a, b in pairs}
        overlap = 0.0
        for image, question, _, _ in items:
            inputs = build_understanding_inputs(bundle, image, question)
            probe = Probe(layer, inputs.image_start, inputs.image_count)
            bundle.model.forward_understanding(inputs, ExecutionPlan(token_selector=probe, logits="last"))
            r = probe.record
            for a, b in pairs:
                sums[f"{a}~{b}"] += spearman(r[a], r[b])
            half = r["vnorm"].numel() // 2  # of the half V-norm pruning drops (largest norms), how much is the
            dropped = set(r["vnorm"].topk(half).indices.tolist())  # most-attended half (by the text)?
            attended = set(r["attn_text"].topk(half).indices.tolist())
            overlap += len(dropped & attended) / half
        n = len(items)
        out["layers"][layer] = {**{k: v / n for k, v in sums.items()}, "vnorm_drops_attended": overlap / n}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="testbed", help="the shipped testbed, a save_pretrained dir or a training run")
    p.add_argument("--questions", type=int, default=60)
    p.add_argument("--split", default="test")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    bundle = load_testbed(args.model)
    items = split_items(args.split, 0, args.questions, bundle.config.image_size, bundle.config).qas
    layers = list(range(bundle.config.llm.num_layers))
    result = premise(bundle, items, layers)
    result.update(model=args.model, split=args.split, image_tokens=build_understanding_inputs(
        bundle, items[0][0], items[0][1]).image_count)
    print(f"{result['questions']} questions, {result['image_tokens']} image tokens; Spearman rank correlation per "
          "layer (V-norm's premise: vnorm~attn negative); last column: share of the largest-V-norm half that is in "
          "the most-attended half (0.5 = unrelated)")
    print("| layer | vnorm~attn_text | vnorm~attn_last | knorm~attn_text | knorm~attn_last | V-norm drops attended |")
    print("|---|---|---|---|---|---|")
    for layer, row in result["layers"].items():
        print(f"| {layer} | {row['vnorm~attn_text']:+.2f} | {row['vnorm~attn_last']:+.2f} | "
              f"{row['knorm~attn_text']:+.2f} | {row['knorm~attn_last']:+.2f} | {row['vnorm_drops_attended']:.2f} |")
    if args.json:
        from flashu.io.files import write_json

        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
