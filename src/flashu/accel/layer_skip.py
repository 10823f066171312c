"""Dynamic layer skipping: rank decoder layers by how little they change their input, skip the least important.

Importance of layer ℓ is ``I_ℓ = 1 − cos(h_in, h_out)``, measured by the model on a full-depth forward over the
tokens a plan names (``ExecutionPlan.similarity``: the image block for generation, the last position for
understanding) and returned in ``BackboneOutput.similarity``. The skip set is the ``⌊r_LS·L⌋`` layers with the
smallest importance (ties: the lower index is skipped first); a skipped layer is an identity for the residual stream.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model import ExecutionPlan
from .technique import RequestContext, Step, Technique


def skip_count(ratio: float, num_layers: int, field: str) -> int:
    """``⌊ratio · L⌋`` layers; a positive ratio that skips nothing on this model is refused (never silently 0)."""
    count = math.floor(ratio * num_layers)
    if ratio > 0 and count == 0:
        smallest = math.ceil(100 / num_layers) / 100
        raise ConfigError(f"{field} {ratio} skips no layer of this {num_layers}-layer model; use 0 (off) or at "
                          f"least {smallest}")
    if count >= num_layers:
        raise ConfigError(f"{field} {ratio} would skip all {num_layers} layers")
    return count


def least_important_layers(similarity: torch.Tensor | dict, count: int, num_layers: int,
                           protect_first_last: bool) -> list[int]:
    """The ``count`` layers with the smallest importance ``1 − cos`` (i.e. the largest similarity); layers without a
    measurement (NaN, or missing from a dict) are never chosen."""
    if isinstance(similarity, torch.Tensor):
        values = similarity.detach().float().cpu().tolist()
        similarity = {i: v for i, v in enumerate(values) if not math.isnan(v)}
    candidates = [i for i in similarity if not (protect_first_last and i in (0, num_layers - 1))]
    ranked = sorted(candidates, key=lambda i: (1.0 - similarity[i], i))
    return sorted(ranked[:count])


def active_layers(skipped: list[int], num_layers: int) -> list[int] | None:
    """The executed layers when ``skipped`` are skipped (``None``: all of them)."""
    return [i for i in range(num_layers) if i not in skipped] if skipped else None


class GenerationLayerSkip(Technique):
    """Text-to-image: skip the ``⌊r_LS·L⌋`` least important layers outside the full-network phase, re-ranked at full
    depth (over the image blocks, or every position with ``layer_skip_scope`` "all") every ``T_LS`` evaluations."""

    name = "layer-skip"

    def __init__(self, cfg, num_layers: int):
        self.cfg = cfg
        self.num_layers = num_layers
        self.skip_count = skip_count(cfg.layer_skip_ratio, num_layers, "generation.layer_skip_ratio")
        self.scope = "image" if cfg.layer_skip_scope == "image" else "all"
        self.skipped: list[int] = []
        self.rankings = 0
        self.layers_skipped = 0  # summed over evaluations
        self.skip_sets: list = []  # (evaluation, skipped layers) at each ranking

    @classmethod
    def start(cls, ctx: RequestContext) -> "GenerationLayerSkip":
        return cls(ctx.cfg, ctx.num_layers)  # always: its counters are part of every generation's stats

    def engaged(self) -> bool:
        return self.skip_count > 0

    def ranks(self, step: Step) -> bool:
        return self.skip_count > 0 and not step.full and step.index % self.cfg.layer_skip_interval == 0

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if step.full:
            return plan
        if self.ranks(step):  # full depth, measured; the backbone runs even where the head reuses its features
            return plan.with_(layers=None, similarity=self.scope, recompute_backbone=True)
        return plan.with_(layers=active_layers(self.skipped, self.num_layers))

    def observe(self, step: Step, output) -> None:
        if self.ranks(step):
            self.skipped = least_important_layers(output.backbone.similarity, self.skip_count, self.num_layers,
                                                  self.cfg.protect_first_last)
            self.rankings += 1
            self.skip_sets.append((step.index, list(self.skipped)))
        elif not step.full and output.backbone is not None:
            self.layers_skipped += len(self.skipped)

    def stats(self) -> dict:
        return {"layer_rankings": self.rankings, "layer_evaluations_skipped": self.layers_skipped,
                "skip_sets": self.skip_sets}


class UnderstandingLayerSkip(Technique):
    """Understanding: skip ``⌊r_LS·L⌋`` layers while decoding, ranked by the last token's similarity in the prefill
    (or, with ``skip_in_prefill``, by calibration's prior, the prefill then skipping them too) and re-ranked at full
    depth every ``T_LS`` decode steps. A layer skipped in the prefill still writes the prompt's keys/values;
    ``fill_skipped_kv`` does the same for decode steps."""

    name = "layer-skip"

    def __init__(self, cfg, num_layers: int, calibrated_similarity: list[float] | None):
        self.cfg = cfg
        self.num_layers = num_layers
        self.skip_count = skip_count(cfg.layer_skip_ratio, num_layers, "understanding.layer_skip_ratio")
        self.skipped: list[int] = []
        self.rankings = 0
        self.ranking_steps: list = []  # -1: prefill, -2: calibration prior, i: decode step i
        self.skip_sets: list = []  # (step, skipped layers) after each ranking
        self.skipped_per_step: list = []  # layers skipped on decode step 1, 2, …
        self.prefill_layers: list[int] | None = None
        self.prefill_layers_skipped = 0
        self._ranking = False
        if self.skip_count > 0 and cfg.skip_in_prefill:
            if calibrated_similarity is None:
                raise ConfigError("understanding.skip_in_prefill needs the layer similarity that understanding "
                                  "calibration records; recalibrate ('flashu calibrate --task mmu')")
            self._rank(-2, dict(enumerate(calibrated_similarity)))
            self.prefill_layers = active_layers(self.skipped, num_layers)
            self.prefill_layers_skipped = len(self.skipped)

    @classmethod
    def start(cls, ctx: RequestContext) -> "UnderstandingLayerSkip":
        return cls(ctx.cfg, ctx.num_layers, ctx.calibrated_similarity)  # always: its counters are in the stats

    def engaged(self) -> bool:
        return self.skip_count > 0

    def ranks_at(self, index: int) -> bool:
        """Whether decode step ``index`` (≥ 1) runs at full depth and re-ranks the layers."""
        interval = self.cfg.layer_skip_interval
        return self.skip_count > 0 and interval > 0 and index % interval == 0

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if step.kind == "prefill":
            self._ranking = self.skip_count > 0 and not self.cfg.skip_in_prefill
            plan = plan.with_(layers=self.prefill_layers, fill_skipped_kv=True)
        elif step.kind == "decode":
            self._ranking = self.ranks_at(step.index)
            plan = plan.with_(layers=None if self._ranking else active_layers(self.skipped, self.num_layers),
                              fill_skipped_kv=self.cfg.fill_skipped_kv)
        else:
            return plan
        return plan.with_(similarity="last") if self._ranking else plan

    def observe(self, step: Step, output) -> None:
        if step.kind == "decode":
            self.skipped_per_step.append(0 if self._ranking else len(self.skipped))
        if self._ranking:
            self._rank(step.index, output.similarity)

    def _rank(self, step: int, similarity) -> None:
        self.skipped = least_important_layers(similarity, self.skip_count, self.num_layers,
                                              self.cfg.protect_first_last)
        self.rankings += 1
        self.ranking_steps.append(step)
        self.skip_sets.append((step, list(self.skipped)))

    def stats(self) -> dict:
        steps = self.skipped_per_step
        return {
            "layers_to_skip": self.skip_count,
            "prefill_layers_skipped": self.prefill_layers_skipped,
            "skipped_layers_fill_kv": self.cfg.fill_skipped_kv,
            "layer_rankings": self.rankings,
            "ranking_steps": list(self.ranking_steps),
            "skip_sets": [(s, list(layers)) for s, layers in self.skip_sets],
            "full_depth_decode_steps": sum(1 for s in self.ranking_steps if s >= 1),
            "layers_skipped_per_step": list(steps),
            "mean_layers_skipped_per_step": (sum(steps) / len(steps)) if steps else 0.0,
        }
