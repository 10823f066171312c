"""FlashU for text-to-image: the per-generation session that turns a :class:`GenerationAccelConfig` into plans.

Evaluations k = 0 … E − 1 (see ``accel/config.py`` for the step semantics). Phases:

* *accelerated* (k < E − n_full): pruned FFN (the t2i neuron range), layer skipping (re-ranked at full depth every
  T_LS evaluations), diffusion-head cache (stored when (k + 1) % T_cache == 0, reused until the next store);
* *full* (last n_full evaluations, low noise): full network, no skipping, no cache.

With ``lazy_backbone`` a head-reuse evaluation does not run the SigLIP branch, fusion, LLM or head blocks at all
(their output is discarded under the paper's semantics), unless it is also a ranking evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..model import ExecutionPlan, GenerationInputs, GenerationOutput, Probe
from ..pipelines.sampling import time_grid
from .config import GenerationAccelConfig
from ..pipelines.t2i import DenoisingSchedule


class LayerSimilarityProbe(Probe):
    """Mean cosine similarity between each decoder layer's input and output over the chosen tokens."""

    def __init__(self, token_mask: torch.Tensor | None):
        self.token_mask = token_mask  # [B, L] bool, or None for every position
        self.similarity: dict[int, float] = {}

    def layer_io(self, layer: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)  # [B, L]
        if self.token_mask is not None:
            cos = cos[self.token_mask[:, : cos.shape[1]]]
        self.similarity[layer] = float(cos.mean())


def least_important_layers(similarity: dict[int, float], count: int, num_layers: int, protect_first_last: bool) -> list[int]:
    """The ``count`` layers with the smallest importance ``1 − cos`` (i.e. the largest similarity)."""
    candidates = [i for i in similarity if not (protect_first_last and i in (0, num_layers - 1))]
    ranked = sorted(candidates, key=lambda i: (1.0 - similarity[i], i))
    return sorted(ranked[:count])


def image_block_mask(inputs: GenerationInputs) -> torch.Tensor:
    pos = torch.arange(inputs.input_ids.shape[1], device=inputs.input_ids.device)
    start = inputs.block_offsets[:, None]
    return (pos[None] >= start) & (pos[None] < start + inputs.block_len)


@dataclass
class GenerationCounters:
    evaluations: int = 0
    full_phase: int = 0
    head_reused: int = 0
    backbone_runs: int = 0
    rankings: int = 0
    layers_skipped: int = 0  # summed over evaluations
    skip_sets: list = field(default_factory=list)  # (evaluation, skipped layers) at each ranking


class FlashUGenerationSession:
    def __init__(self, cfg: GenerationAccelConfig, num_layers: int, ffn_ranges, attention_ranges,
                 inputs: GenerationInputs, steps: int, guidance: float):
        self.cfg = cfg
        self.num_layers = num_layers
        evaluations = cfg.evaluations(steps)
        grid = time_grid(evaluations + 1)
        low = round(cfg.guidance_low_fraction * evaluations)
        scales = [guidance * cfg.guidance_low_factor if k < low else guidance for k in range(evaluations)]
        self.schedule = DenoisingSchedule(grid, scales)
        self.full_start = evaluations - round(cfg.full_ffn_fraction * evaluations)
        self.ffn_ranges = ffn_ranges
        self.attention_ranges = attention_ranges
        self.skip_count = math.floor(cfg.layer_skip_ratio * num_layers)
        self.keep = inputs.used_length if cfg.exact_trims else None
        self.token_mask = image_block_mask(inputs) if cfg.layer_skip_scope == "image" else None
        self.skipped: list[int] = []
        self.head_cache: torch.Tensor | None = None
        self.counters = GenerationCounters()
        self._probe: LayerSimilarityProbe | None = None

    # -- decisions ----------------------------------------------------------------------------------------
    def in_full_phase(self, k: int) -> bool:
        return k >= self.full_start

    def ranks_layers(self, k: int) -> bool:
        return self.skip_count > 0 and not self.in_full_phase(k) and k % self.cfg.layer_skip_interval == 0

    def reuses_head(self, k: int) -> bool:
        interval = self.cfg.head_cache_interval
        return (interval > 0 and not self.in_full_phase(k) and self.head_cache is not None
                and (k + 1) % interval != 0)

    def plan(self, k: int) -> ExecutionPlan:
        full = self.in_full_phase(k)
        rank = self.ranks_layers(k)
        reuse = self.reuses_head(k)
        layers = None
        if not full and not rank and self.skipped:
            layers = [i for i in range(self.num_layers) if i not in self.skipped]
        self._probe = LayerSimilarityProbe(self.token_mask) if rank else None
        run_backbone = not reuse or not self.cfg.lazy_backbone or rank
        return ExecutionPlan(
            layers=layers,
            ffn_ranges=None if full else self.ffn_ranges,
            attention_ranges=None if full else self.attention_ranges,
            head_features=self.head_cache if reuse else None,
            run_backbone=run_backbone,
            keep_positions=self.keep,
            probe=self._probe,
        )

    def observe(self, k: int, output: GenerationOutput) -> None:
        c = self.counters
        c.evaluations += 1
        full = self.in_full_phase(k)
        reuse = self.reuses_head(k)
        c.full_phase += full
        c.head_reused += reuse
        c.backbone_runs += output.backbone is not None
        if self._probe is not None:
            self.skipped = least_important_layers(self._probe.similarity, self.skip_count, self.num_layers,
                                                  self.cfg.protect_first_last)
            c.rankings += 1
            c.skip_sets.append((k, list(self.skipped)))
        elif not full and output.backbone is not None:
            c.layers_skipped += len(self.skipped)
        interval = self.cfg.head_cache_interval
        if full:
            self.head_cache = None
        elif interval > 0 and (k + 1) % interval == 0:
            self.head_cache = output.head_features

    def stats(self) -> dict:
        c = self.counters
        return {"evaluations": c.evaluations, "full_phase_evaluations": c.full_phase,
                "head_reused": c.head_reused, "backbone_runs": c.backbone_runs, "layer_rankings": c.rankings,
                "layer_evaluations_skipped": c.layers_skipped, "skip_sets": c.skip_sets,
                "guidance": self.schedule.guidance}


@dataclass
class FlashUGenerationPolicy:
    config: GenerationAccelConfig
    ffn_ranges: list | None
    attention_ranges: list | None
    name: str = "flashu"

    def start(self, bundle, inputs, steps, guidance) -> FlashUGenerationSession:
        return FlashUGenerationSession(self.config, bundle.config.llm.num_layers, self.ffn_ranges,
                                       self.attention_ranges, inputs, steps, guidance)
