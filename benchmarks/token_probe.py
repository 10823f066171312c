"""What do a testbed model's image tokens know? Linear probes on the residual stream at the image-token positions:
the token's own column and row in the grid (can the model tell left from right?) and, on the VQA world, the kind of
shape covering the token (can a question find "the triangle"?). One understanding prefill per scene; probes are
logistic regressions trained on the first 80 % of the scenes and scored on the rest.

    python benchmarks/token_probe.py --model checkpoints/testbed-v2-stage3-mix [--scenes 260] [--json out.json]

Layer "in" is the decoder's input (the fused image tokens); the others are decoder layer outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from flashu.model import ExecutionPlan, Probe
from flashu.pipelines.mmu import build_understanding_inputs
from flashu.testbed import vqa, world
from flashu.testbed.evaluate import load_testbed


class Residuals(Probe):
    """Keeps the first row's residual stream entering layer 0 and leaving every layer."""

    def __init__(self) -> None:
        self.states: dict[str, torch.Tensor] = {}

    def layer_io(self, layer: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        if layer == 0:
            self.states["in"] = hidden_in[0].detach()
        self.states[str(layer)] = hidden_out[0].detach()


def shape_labels(scene: vqa.Scene, grid: int, cell: int) -> torch.Tensor:
    """Per token: the index in ``world.SHAPES`` of the shape whose box holds the token's centre, else len(SHAPES)."""
    labels = torch.full((grid * grid,), len(world.SHAPES), dtype=torch.long)
    for item in scene.items:
        for r in range(grid):
            for c in range(grid):
                cx, cy = c * cell + (cell - 1) / 2, r * cell + (cell - 1) / 2
                if item.x <= cx < item.x + item.side and item.y <= cy < item.y + item.side:
                    labels[r * grid + c] = world.SHAPES.index(item.shape)
    return labels


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int, keep: torch.Tensor | None = None,
                   train_share: float = 0.8, steps: int = 300) -> float:
    """Held-out accuracy of a logistic regression from ``features`` [S, N, H] to ``labels`` [S, N] (scenes split)."""
    cut = int(train_share * features.shape[0])
    parts = []
    for part in (slice(None, cut), slice(cut, None)):
        x, y = features[part].flatten(0, 1), labels[part].flatten()
        if keep is not None:
            m = keep[part].flatten()
            x, y = x[m], y[m]
        parts.append((x, y))
    (x_train, y_train), (x_test, y_test) = parts
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(features.shape[-1], classes)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(linear(x_train), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((linear(x_test).argmax(-1) == y_test).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/testbed-v2-stage3-mix")
    p.add_argument("--scenes", type=int, default=260)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.scenes < 10:
        p.error("--scenes must be at least 10")
    bundle = load_testbed(args.model)
    model = bundle.model.float().eval()
    is_vqa = vqa.asks(bundle.config)
    size = bundle.config.mmu_image_size
    states, kinds = {}, []
    for index in range(args.scenes):
        example = vqa.sample("train", index) if is_vqa else world.sample("train", index, size)
        inputs = build_understanding_inputs(bundle, example.image, example.qas[0].question)
        probe = Residuals()
        with torch.no_grad():
            model.forward_understanding(inputs, ExecutionPlan(probe=probe))
        start, count = inputs.image_start, inputs.image_count
        for name, h in probe.states.items():
            states.setdefault(name, []).append(h[start:start + count])
        grid = int(round(count ** 0.5))
        if is_vqa:
            kinds.append(shape_labels(example.scene, grid, size // grid))
    columns = (torch.arange(grid * grid) % grid).expand(args.scenes, -1)
    rows = (torch.arange(grid * grid) // grid).expand(args.scenes, -1)
    report = {"model": args.model, "scenes": args.scenes, "grid": grid, "layers": {}}
    if is_vqa:
        kind = torch.stack(kinds)
        on_shape = kind < len(world.SHAPES)
        report["shape_kind_majority"] = float(torch.bincount(kind[on_shape]).max() / on_shape.sum())
    print(f"{args.model}: {grid}x{grid} image tokens, {args.scenes} scenes; held-out linear-probe accuracy "
          f"(chance: column/row {1 / grid:.2f}" + (f", shape kind {report['shape_kind_majority']:.2f})" if is_vqa
                                                    else ")"))
    for name, values in states.items():
        features = torch.stack(values).float()
        row = {"column": probe_accuracy(features, columns, grid), "row": probe_accuracy(features, rows, grid)}
        if is_vqa:
            row["shape_kind"] = probe_accuracy(features, kind, len(world.SHAPES) + 1, on_shape)
        report["layers"][name] = row
        print(f"  layer {name:>3}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
