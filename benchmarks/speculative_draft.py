"""Choosing the draft of self-speculative decoding by measurement: acceptance on the trained testbed, cost on ``small``.

``python benchmarks/speculative_draft.py [--questions 100] [--ratios 0.25,0.5,0.75] [--json F]``

* **Acceptance** (trained ``testbed``, test questions, greedy answers of up to 16 tokens): for each
  ``draft_skip_ratio``, the share of drafted tokens the full-depth plan accepted, and whether every answer equals the
  baseline's token for token (it must: the method is lossless).
* **Cost** (``small``, 1.5B proportions, random weights): the decode tokens/s of the draft plan alone (layer skipping
  at that ratio for every token, i.e. what one draft token costs) against the full-depth plan's, in one process,
  interleaved, median of ``--repeats``; a draft that costs 80 % of a step cannot pay.

Only flashu's public API.
"""

from __future__ import annotations

import argparse
import json
import statistics

from PIL import Image

import flashu
from flashu.testbed.evaluate import split_items

OFF = "understanding.prune_ratio=0,understanding.token_prune_ratio=0"


def acceptance(ratios: list[float], questions: int) -> list[dict]:
    bundle = flashu.load_model("testbed", progress=False)
    items = split_items("test", 0, questions, bundle.config.mmu_image_size).qas
    base = [flashu.answer(bundle, image, q, max_new_tokens=16).token_ids for image, q, _, _ in items]
    rows = []
    for ratio in ratios:
        spec = f"paper:{OFF},understanding.layer_skip_ratio=0,understanding.speculative_decoding=true," \
               f"understanding.draft_skip_ratio={ratio}"
        drafted = accepted = 0
        same = True
        with flashu.accelerated(bundle, spec, task="mmu", progress=False):
            for (image, q, _, _), ref in zip(items, base):
                reply = flashu.answer(bundle, image, q, max_new_tokens=16)
                same &= reply.token_ids == ref
                drafted += reply.stats.get("drafted_tokens", 0)
                accepted += reply.stats.get("accepted_tokens", 0)
        rows.append({"draft_skip_ratio": ratio, "drafted": drafted, "accepted": accepted,
                     "acceptance_rate": accepted / drafted if drafted else None, "same_tokens_as_baseline": same,
                     "mean_answer_tokens": statistics.mean(len(t) for t in base)})
    return rows


def cost(ratios: list[float], repeats: int, tokens: int) -> list[dict]:
    bundle = flashu.load_model("small", progress=False)
    image = Image.linear_gradient("L").convert("RGB")
    specs = {0.0: "none", **{r: f"paper:{OFF},understanding.layer_skip_ratio={r}" for r in ratios}}
    speeds = {r: [] for r in specs}
    for round_ in range(repeats + 1):  # the first round warms up
        for ratio, spec in specs.items():
            with flashu.accelerated(bundle, spec, task="mmu", progress=False):
                reply = flashu.answer(bundle, image, "Describe the image.", max_new_tokens=tokens, ignore_eos=True)
            if round_:
                speeds[ratio].append(reply.decode_tokens_per_s)
    full = statistics.median(speeds[0.0])
    return [{"draft_skip_ratio": r, "decode_tokens_per_s": statistics.median(speeds[r]),
             "cost_per_token_vs_full_step": full / statistics.median(speeds[r])} for r in ratios]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=100)
    p.add_argument("--ratios", default="0.25,0.5,0.75")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ratios = [float(r) for r in args.ratios.split(",")]
    report = {"acceptance": acceptance(ratios, args.questions), "cost": cost(ratios, args.repeats, args.tokens)}
    print("| draft_skip_ratio | acceptance (testbed) | same tokens as baseline | draft cost per token (small) |")
    print("|---|---|---|---|")
    for a, c in zip(report["acceptance"], report["cost"]):
        print(f"| {a['draft_skip_ratio']} | {a['acceptance_rate']:.2f} ({a['accepted']}/{a['drafted']}) | "
              f"{a['same_tokens_as_baseline']} | {c['cost_per_token_vs_full_step']:.2f} of a full step |")
    if args.json:
        from flashu.io.files import write_json

        write_json(args.json, report, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
