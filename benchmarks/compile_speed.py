"""Compiled vs eager in one process: understanding decode tokens/s and text-to-image time per evaluation.

``python benchmarks/compile_speed.py --model small [--tokens 32] [--steps 6] [--repeats 3] [--json F]``

One model, one process. Warm-up: an eager answer and generation, then :func:`flashu.compile` and a first compiled
answer and generation (their wall time is the **compile time** reported). Then ``--repeats`` interleaved rounds —
eager (``flashu.compile(bundle, enabled=False)``), compiled (``enabled=True``: the graphs compiled during the warm-up
are reused, nothing recompiles) — of the same baseline plan on the same inputs: an answer of exactly ``--tokens``
tokens (``ignore_eos``) and a ``--steps``-point generation. Reported: median decode tokens/s (decode phase only,
prefill excluded), median seconds per text-to-image evaluation, their ratios, the compile times and the number of
graphs compiled; the compiled answer's tokens are checked against eager's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from PIL import Image

import flashu
from flashu.compiled import compile_stats


def _answer(bundle, image, question, tokens):
    reply = flashu.answer(bundle, image, question, max_new_tokens=tokens, ignore_eos=True)
    return reply.token_ids, reply.decode_tokens_per_s


def _generate(bundle, prompt, steps):
    t0 = time.perf_counter()
    flashu.generate(bundle, prompt, steps=steps, guidance=bundle.config.default_guidance, seed=0)
    return (time.perf_counter() - t0) / (steps - 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small")
    p.add_argument("--tokens", type=int, default=32, help="decoded tokens per answer (eos ignored)")
    p.add_argument("--steps", type=int, default=6, help="text-to-image grid points (N - 1 evaluations)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="inductor")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    bundle = flashu.load_model(args.model, progress=False)
    image = Image.linear_gradient("L").convert("RGB")  # resized to the model's understanding size by answer()
    question, prompt = "What is in the image?", "a red circle above a blue square"

    eager_tokens, _ = _answer(bundle, image, question, args.tokens)
    _generate(bundle, prompt, args.steps)
    flashu.compile(bundle, backend=args.backend)
    t0 = time.perf_counter()
    compiled_tokens, _ = _answer(bundle, image, question, args.tokens)
    compile_mmu = time.perf_counter() - t0
    t0 = time.perf_counter()
    _generate(bundle, prompt, args.steps)
    compile_t2i = time.perf_counter() - t0
    graphs = compile_stats()

    runs = {"eager": {"tok_s": [], "s_per_eval": []}, "compiled": {"tok_s": [], "s_per_eval": []}}
    for _ in range(args.repeats):
        for mode in ("eager", "compiled"):
            flashu.compile(bundle, backend=args.backend, enabled=mode == "compiled")
            _, tok_s = _answer(bundle, image, question, args.tokens)
            runs[mode]["tok_s"].append(tok_s)
            runs[mode]["s_per_eval"].append(_generate(bundle, prompt, args.steps))
    med = {mode: {k: statistics.median(v) for k, v in r.items()} for mode, r in runs.items()}
    report = {
        "model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(), "backend": args.backend,
        "tokens": args.tokens, "steps": args.steps, "repeats": args.repeats, "runs": runs, "median": med,
        "decode_speedup": med["compiled"]["tok_s"] / med["eager"]["tok_s"],
        "t2i_eval_speedup": med["eager"]["s_per_eval"] / med["compiled"]["s_per_eval"],
        "compile_seconds": {"first_answer": compile_mmu, "first_generation": compile_t2i},
        "graphs": graphs, "same_tokens": eager_tokens == compiled_tokens,
    }
    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, backend {args.backend}")
    print("| mode | decode tok/s (median) | s per t2i evaluation (median) |\n|---|---|---|")
    for mode in ("eager", "compiled"):
        print(f"| {mode} | {med[mode]['tok_s']:.1f} | {med[mode]['s_per_eval']:.3f} |")
    print(f"decode: compiled {report['decode_speedup']:.2f}x eager; t2i evaluation: compiled "
          f"{report['t2i_eval_speedup']:.2f}x eager; compile time {compile_mmu:.0f} s (first answer) + "
          f"{compile_t2i:.0f} s (first generation); same tokens: {report['same_tokens']}; graphs: {graphs}")
    if args.json:
        from flashu.io.files import write_json

        write_json(args.json, report, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
