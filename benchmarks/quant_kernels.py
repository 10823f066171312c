"""Where int8 kernels pay on this machine: one linear map, fp32 against each int8 kernel, by width and row count.

    OMP_NUM_THREADS=1 python benchmarks/quant_kernels.py [--torchao] [--json out.json]

Rows are what one call sees: a decoding step has 1 row, an understanding prefill a few hundred, a text-to-image
evaluation (two CFG rows) about twice its sequence. Each cell is fp32 time / kernel time (best of N, warmed up), so
above 1 the kernel wins. ``flashu.accel.quantization`` routes calls by these figures (``FEW_ROWS``,
``FEW_ROWS_MIN_WEIGHTS``); docs/quantization.md quotes a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch
import torch.nn.functional as F

# (in, out) of the maps that dominate: q/o and gate/up of each preset's decoder (down is the transpose of gate)
SHAPES = {"testbed": (128, 640), "small": (192, 1120), "small-7b": (448, 2368), "medium / 1.5B": (1536, 8960)}
ROWS = (1, 4, 8, 64, 300, 650)


def best_of(fn, repeats: int) -> float:
    with torch.inference_mode():
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchao", action="store_true", help="also time torchao's int8 configs (pip install "
                        "'flashu[quant]')")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args(argv)
    from flashu.accel.quantization import _fbgemm_kernel, _torchao_kernel

    kernels = {"fbgemm int8-dynamic": lambda w: _fbgemm_kernel(w, None)}
    if args.torchao:
        kernels["torchao int8-dynamic"] = lambda w: _torchao_kernel(w, None, "int8-dynamic")
        kernels["torchao int8-weight"] = lambda w: _torchao_kernel(w, None, "int8-weight")
    warnings.filterwarnings("ignore")
    table = []
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}; fp32 time / kernel time")
    print("| map (in × out) | kernel | " + " | ".join(f"{r} rows" for r in ROWS) + " |")
    print("|---|---|" + "---|" * len(ROWS))
    for name, (d_in, d_out) in SHAPES.items():
        weight = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(0)) / d_in ** 0.5
        for label, make in kernels.items():
            kernel = make(weight)
            cells = []
            for rows in ROWS:
                x = torch.randn(1, rows, d_in)
                fp32 = best_of(lambda: F.linear(x, weight), args.repeats)
                quant = best_of(lambda: kernel(x), args.repeats)
                cells.append(fp32 / quant)
                table.append({"map": name, "in": d_in, "out": d_out, "kernel": label, "rows": rows,
                              "fp32_s": fp32, "kernel_s": quant})
            print(f"| {name} ({d_in} × {d_out}) | {label} | " + " | ".join(f"{c:.2f}×" for c in cells) + " |",
                  flush=True)
    if args.json:
        from flashu.io.files import write_json

        write_json(args.json, {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
