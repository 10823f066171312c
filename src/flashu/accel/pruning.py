"""Zero-copy task-specific pruning: permute each layer so every task's kept set is one contiguous range.

Per decoder layer, FFN neurons are reordered as ``[gen only | both | und only | neither]`` (a permutation of the
intermediate dimension — gate/up rows and down columns together — preserves the function exactly). Then
generation's kept neurons are ``[0, |G|)`` and understanding's ``[|G∖U|, |G∪U|)``: a pruned FFN is a weight
slice, so the full network and both pruned networks are resident at once with no extra weight memory.
GQA KV groups (with their query heads) are handled the same way at group granularity.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..model import ExecutionPlan, Showo2
from .importance import ImportanceScores
from .technique import RequestContext, Step, Technique


def kept_count(total: int, ratio: float, alignment: int) -> int:
    """``⌊(1 − ratio)·total / alignment⌋·alignment``, never zero: at least one alignment unit, or all of a
    layer smaller than the alignment."""
    if ratio <= 0:
        return total
    keep = int((1 - ratio) * total) // alignment * alignment
    return max(keep, min(alignment, total))


def top_set(scores: torch.Tensor, count: int) -> set[int]:
    order = torch.argsort(scores, descending=True, stable=True)
    return set(order[:count].tolist())


def two_task_order(total: int, gen: set[int] | None, und: set[int] | None):
    """The permutation ``[gen only | both | und only | neither]`` and each task's contiguous range."""
    gen = gen if gen is not None else set()
    und = und if und is not None else set()
    gen_only = sorted(gen - und)
    both = sorted(gen & und)
    und_only = sorted(und - gen)
    rest = sorted(set(range(total)) - gen - und)
    order = gen_only + both + und_only + rest
    gen_range = (0, len(gen_only) + len(both))
    und_range = (len(gen_only), len(gen_only) + len(both) + len(und_only))
    return torch.tensor(order, dtype=torch.long), gen_range, und_range


@dataclass
class PruningLayout:
    """The permutation applied to each layer and the contiguous kept ranges per task (``None``: full)."""

    ffn_order: list[torch.Tensor]  # per layer: new position p holds original neuron ffn_order[p]
    group_order: list[torch.Tensor]  # per layer: KV group permutation
    ffn_ranges: dict[str, list[tuple[int, int]] | None]  # task → per-layer range
    group_ranges: dict[str, list[tuple[int, int]] | None]

    def kept_neurons(self, task: str) -> list[int] | None:
        ranges = self.ffn_ranges.get(task)
        return None if ranges is None else [b - a for a, b in ranges]


def plan_layout(model: Showo2, scores: dict[str, ImportanceScores], ffn_ratio: dict[str, float],
                group_ratio: dict[str, float], alignment: dict[str, int]) -> PruningLayout:
    """Decide (without touching the model) the permutations and ranges for the tasks in ``scores``."""
    cfg = model.config.llm
    ffn_order, group_order = [], []
    ffn_ranges = {t: ([] if ffn_ratio.get(t, 0) > 0 else None) for t in ("t2i", "mmu")}
    group_ranges = {t: ([] if group_ratio.get(t, 0) > 0 else None) for t in ("t2i", "mmu")}
    for i in range(cfg.num_layers):
        sets = {}
        for task in ("t2i", "mmu"):
            if ffn_ranges[task] is not None:
                n = kept_count(cfg.intermediate_size, ffn_ratio[task], alignment[task])
                sets[task] = top_set(scores[task].ffn[i], n)
        order, g_range, u_range = two_task_order(cfg.intermediate_size, sets.get("t2i"), sets.get("mmu"))
        ffn_order.append(order)
        for task, rng in (("t2i", g_range), ("mmu", u_range)):
            if ffn_ranges[task] is not None:
                ffn_ranges[task].append(rng)
        gsets = {}
        for task in ("t2i", "mmu"):
            if group_ranges[task] is not None:
                n = cfg.num_kv_heads - int(group_ratio[task] * cfg.num_kv_heads)
                gsets[task] = top_set(scores[task].attention_groups[i], max(n, 1))
        gorder, gg, gu = two_task_order(cfg.num_kv_heads, gsets.get("t2i"), gsets.get("mmu"))
        group_order.append(gorder)
        for task, rng in (("t2i", gg), ("mmu", gu)):
            if group_ranges[task] is not None:
                group_ranges[task].append(rng)
    return PruningLayout(ffn_order, group_order, ffn_ranges, group_ranges)


@torch.no_grad()
def permute_model(model: Showo2, ffn_order: list[torch.Tensor], group_order: list[torch.Tensor]) -> None:
    """Apply the per-layer permutations in place (function-preserving), all layers or none: an error or an
    interrupt (Ctrl-C is held until the end) part-way puts the layers already permuted back."""
    done: list[int] = []
    with _interrupts_deferred():
        try:
            for i, (order, gorder) in enumerate(zip(ffn_order, group_order)):
                _permute_layer(model, i, order, gorder)
                done.append(i)
        except BaseException:
            for i in reversed(done):
                _permute_layer(model, i, inverse(ffn_order[i]), inverse(group_order[i]))
            raise


def _permute_layer(model: Showo2, i: int, order: torch.Tensor, gorder: torch.Tensor) -> None:
    """One layer: its FFN neurons (gate/up rows, down columns) and KV groups. Each weight is replaced in one copy."""
    cfg = model.config.llm
    layer = model.layers[i]
    mlp = layer.mlp
    dev = mlp.gate_proj.weight.device
    order = order.to(dev)
    mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[order])
    mlp.up_proj.weight.copy_(mlp.up_proj.weight[order])
    mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])
    if torch.equal(gorder, torch.arange(len(gorder))):
        return
    per_group_q = cfg.num_heads // cfg.num_kv_heads * cfg.head_dim
    attn = layer.self_attn
    q_idx = _expand(gorder, per_group_q).to(dev)
    kv_idx = _expand(gorder, cfg.head_dim).to(dev)
    attn.q_proj.weight.copy_(attn.q_proj.weight[q_idx])
    attn.q_proj.bias.copy_(attn.q_proj.bias[q_idx])
    for proj in (attn.k_proj, attn.v_proj):
        proj.weight.copy_(proj.weight[kv_idx])
        proj.bias.copy_(proj.bias[kv_idx])
    attn.o_proj.weight.copy_(attn.o_proj.weight[:, q_idx])


@contextmanager
def _interrupts_deferred():
    """Hold SIGINT (Ctrl-C) until the block ends, then raise it (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def inverse(order: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(order)
    inv[order] = torch.arange(len(order))
    return inv


def _expand(group_order: torch.Tensor, width: int) -> torch.Tensor:
    """Group permutation → row permutation of ``width`` rows per group."""
    return (group_order[:, None] * width + torch.arange(width)).reshape(-1)


class HybridFfn(Technique):
    """Text-to-image: the pruned FFN (and attention) ranges outside the final full-network phase (the hybrid
    pruned/full FFN; the phase boundary comes from :mod:`.guidance`)."""

    name = "hybrid-ffn"

    def __init__(self, ffn_ranges, attention_ranges):
        self.ffn_ranges = ffn_ranges
        self.attention_ranges = attention_ranges

    @classmethod
    def start(cls, ctx: RequestContext) -> "HybridFfn | None":
        if ctx.ffn_ranges is None and ctx.attention_ranges is None:
            return None
        return cls(ctx.ffn_ranges, ctx.attention_ranges)

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if step.full:
            return plan
        return plan.with_(ffn_ranges=self.ffn_ranges, attention_ranges=self.attention_ranges)


class StaticFfn(Technique):
    """Understanding: every forward of the answer (draft and verification included) runs the understanding
    neuron range of each layer; no hybrid phase (understanding is single-pass)."""

    name = "ffn-pruning"

    def __init__(self, ffn_ranges):
        self.ffn_ranges = ffn_ranges

    @classmethod
    def start(cls, ctx: RequestContext) -> "StaticFfn":
        return cls(ctx.ffn_ranges)  # always: the FFN fields are in every answer's stats

    def engaged(self) -> bool:
        return self.ffn_ranges is not None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        return plan if self.ffn_ranges is None else plan.with_(ffn_ranges=self.ffn_ranges)

    def stats(self) -> dict:
        return {"ffn_pruned": self.ffn_ranges is not None,
                "ffn_neurons_kept": None if self.ffn_ranges is None else [b - a for a, b in self.ffn_ranges]}
