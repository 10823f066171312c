"""Diffusion-head cache: the flow head's block features are recomputed every ``T_cache`` evaluations and reused in
between; the final adaLN layer always runs with the current time step (the paper's Sec. 3.4, the reference code's
rule: store when ``(k + 1) % T_cache == 0``, reuse on the following evaluations until the next store, nothing in
the full-network phase)."""

from __future__ import annotations

import torch

from ..model import ExecutionPlan
from .technique import RequestContext, Step, Technique


class HeadCache:
    """Per-generation cache state (lives in the generation session, never on the model)."""

    def __init__(self, interval: int):
        self.interval = interval
        self.features: torch.Tensor | None = None

    def reuses(self, k: int, full_phase: bool) -> bool:
        """Whether evaluation ``k`` reuses the cached features instead of running the head blocks."""
        return (self.interval > 0 and not full_phase and self.features is not None
                and (k + 1) % self.interval != 0)

    def update(self, k: int, full_phase: bool, features: torch.Tensor) -> None:
        """After evaluation ``k``: store its features on store evaluations, drop the cache in the full phase."""
        if full_phase:
            self.features = None
        elif self.interval > 0 and (k + 1) % self.interval == 0:
            self.features = features


class HeadCacheReuse(Technique):
    """Text-to-image: the plan reuses the cached head features where :class:`HeadCache` says so; with
    ``lazy_backbone`` such an evaluation does not run the backbone either (its output would be discarded)."""

    name = "head-cache"

    def __init__(self, interval: int, lazy_backbone: bool):
        self.cache = HeadCache(interval)
        self.lazy_backbone = lazy_backbone
        self.reused = 0

    @classmethod
    def start(cls, ctx: RequestContext) -> "HeadCacheReuse":
        return cls(ctx.cfg.head_cache_interval, ctx.cfg.lazy_backbone)  # always: "head_reused" is in the stats

    def engaged(self) -> bool:
        return self.cache.interval > 0

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if not self.cache.reuses(step.index, step.full):
            return plan
        return plan.with_(head_features=self.cache.features, recompute_backbone=not self.lazy_backbone)

    def observe(self, step: Step, output) -> None:
        self.reused += self.cache.reuses(step.index, step.full)
        self.cache.update(step.index, step.full, output.head_features)

    def stats(self) -> dict:
        return {"head_reused": self.reused}
