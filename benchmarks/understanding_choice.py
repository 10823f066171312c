"""Which understanding configuration may `plus` use? Reads the JSON of a testbed sweep
(`benchmarks/testbed_understanding_sweep.sh`, or any `flashu eval testbed --json` with `none` among its configs) and
lists every configuration with its accuracy per question family, its retention (accuracy / `none`'s, per family), the
answers it lost and gained against `none` on the same questions, and the share of the decoder's work on image tokens
it keeps in prefill. A configuration qualifies when every family keeps at least ``--keep`` of the baseline; the
qualifying ones are listed cheapest first.

    python benchmarks/understanding_choice.py docs/results/testbed-v2-stage4-understanding-sweep.json [--keep 0.97]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashu.accel.spec import resolve_accel
from flashu.testbed import vqa


def families_of(report: dict) -> list[str]:
    """The family of every question of an understanding report (recorded since the choice script; older reports:
    the VQA world's test questions in order)."""
    part = report["understanding"]
    if "question_kinds" in part:
        return part["question_kinds"]
    return [qa.kind for _, qa in vqa.questions_of(report["split"], part["n"])]


def image_work(accel: str, layers: int) -> float:
    """Share of the decoder's prefill work on image tokens that a configuration keeps: all layers up to the pruning
    layer K, then 1 − ρ of the tokens (FFN pruning and the rest are not counted)."""
    cfg = resolve_accel(accel).understanding
    if cfg is None or not cfg.token_prune_ratio:
        return 1.0
    k = min(cfg.token_prune_layer, layers)
    return (k + (layers - k) * (1 - cfg.token_prune_ratio)) / layers


def label(accel: str) -> str:
    """A short name: the sweep's token-pruning rows as ``tokens:ratio=…,scorer=…,layer=…``."""
    text = accel.replace("understanding.", "")
    off = "paper:prune_ratio=0,layer_skip_ratio=0,"
    rest = text[len(off):].split(",")
    if text.startswith(off) and all(p.split("=")[0] in ("token_prune_ratio", "token_scorer", "token_prune_layer")
                                    for p in rest):
        text = "tokens:" + ",".join(rest).replace("token_prune_", "").replace("token_", "")
    return text


def rows(reports: list[dict], layers: int) -> list[dict]:
    base = next((r for r in reports if r["accel"] == "none"), None)
    if base is None:
        raise SystemExit("the sweep has no 'none' row to measure retention against; run it with --accel none,…")
    families = families_of(base)
    names = sorted(set(families))
    base_hits = base["understanding"]["correct"]
    out = []
    for r in reports:
        hits = r["understanding"]["correct"]
        if len(hits) != len(base_hits):
            raise SystemExit(f"{r['accel']!r} answered {len(hits)} questions, 'none' {len(base_hits)}: not the same set")
        row = {"accel": r["accel"], "label": label(r["accel"]), "families": {}, "work": image_work(r["accel"], layers),
               "seconds_per_answer": r["understanding"]["seconds_per_answer"]}
        for name in names:
            idx = [i for i, f in enumerate(families) if f == name]
            n, ok, ok0 = len(idx), sum(hits[i] for i in idx), sum(base_hits[i] for i in idx)
            row["families"][name] = {
                "n": n, "accuracy": ok / n, "retention": ok / ok0 if ok0 else None,
                "lost": sum(base_hits[i] and not hits[i] for i in idx),
                "gained": sum(hits[i] and not base_hits[i] for i in idx)}
        row["min_retention"] = min((f["retention"] for f in row["families"].values() if f["retention"] is not None),
                                   default=None)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", type=Path, nargs="+", help="JSON written by flashu eval testbed --json (several: merged)")
    p.add_argument("--keep", type=float, default=0.97, help="retention every family must keep")
    p.add_argument("--layers", type=int, default=10, help="decoder layers of the swept model")
    p.add_argument("--json", type=Path, default=None, help="write the table here")
    args = p.parse_args(argv)
    reports = [r for path in args.sweep for r in json.loads(path.read_text()) if r.get("understanding")]
    table = rows(reports, args.layers)
    names = sorted(table[0]["families"])
    table.sort(key=lambda r: (not (r["min_retention"] or 0) >= args.keep, r["work"]))
    width = max(len(r["label"]) for r in table) + 2
    print(f"{'config':<{width}}{'image work':>11}" + "".join(f"{n + ' % (ret, -/+)':>24}" for n in names)
          + f"{'min ret':>9}  ok")
    for r in table:
        cells = "".join(
            f"{f['accuracy'] * 100:>8.1f} ({(f['retention'] or 0) * 100:5.1f}, -{f['lost']}/+{f['gained']})"
            .rjust(24) for f in (r["families"][n] for n in names))
        ok = "yes" if (r["min_retention"] or 0) >= args.keep else ""
        print(f"{r['label']:<{width}}{r['work']:>11.2f}{cells}{(r['min_retention'] or 0) * 100:>8.1f}%  {ok}")
    if args.json is not None:
        args.json.write_text(json.dumps({"keep": args.keep, "rows": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
