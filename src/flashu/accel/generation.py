"""FlashU for text-to-image: the per-generation session that composes the techniques into one plan per evaluation.

Evaluations k = 0 … E − 1 (see ``accel/config.py`` for the step semantics). Phases:

* *accelerated* (k < E − n_full): pruned FFN (the t2i neuron range, :mod:`.pruning`), layer skipping
  (:mod:`.layer_skip`, re-ranked at full depth every T_LS evaluations), diffusion-head cache (:mod:`.head_cache`);
* *full* (last n_full evaluations, low noise): full network, no skipping, no cache.

Step count and guidance come from :mod:`.guidance`. With ``lazy_backbone`` a head-reuse evaluation does not run the
SigLIP branch, fusion, LLM or head blocks at all (their output is discarded under the paper's semantics), unless it
is also a ranking evaluation. The exact techniques: ``exact_trims`` drops the positions after the image blocks (they
cannot influence them), ``prefix_reuse`` keeps the text prefix's keys/values for the whole generation (a
:class:`~flashu.model.cache.PrefixCache` of the entries the model returns, one per backbone configuration) and
``share_cfg_visual`` runs the visual branches once for both CFG rows. The session only returns plans and reads what
the forward returned; it never runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model import ExecutionPlan, GenerationInputs, GenerationOutput
from ..model.cache import PrefixCache
from ..model.layers import LinearKernels
from .config import GenerationAccelConfig
from .guidance import denoising_schedule, full_phase_start
from .head_cache import HeadCache
from .layer_skip import active_layers, least_important_layers, skip_count
from .quantization import for_session


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
    """Per-request decisions and state of one generation (implements ``GenerationSession``)."""

    def __init__(self, cfg: GenerationAccelConfig, num_layers: int, ffn_ranges, attention_ranges,
                 inputs: GenerationInputs, steps: int, guidance: float, linears: LinearKernels | None = None,
                 quantize_full_phase: bool = False):
        self.cfg = cfg
        self.linears = linears
        self.quantize_full_phase = quantize_full_phase
        self.num_layers = num_layers
        self.schedule = denoising_schedule(cfg, steps, guidance)
        self.full_start = full_phase_start(cfg, self.schedule.num_evaluations)
        self.ffn_ranges = ffn_ranges
        self.attention_ranges = attention_ranges
        self.skip_count = skip_count(cfg.layer_skip_ratio, num_layers, "generation.layer_skip_ratio")
        self.keep = inputs.used_length if cfg.exact_trims else None
        self.token_scope = "image" if cfg.layer_skip_scope == "image" else "all"
        self.skipped: list[int] = []
        self.head = HeadCache(cfg.head_cache_interval)
        self.prefix = PrefixCache() if cfg.prefix_reuse else None
        self.share_cfg_visual = cfg.share_cfg_visual and guidance > 0
        self.counters = GenerationCounters()

    def __repr__(self) -> str:
        return (f"FlashUGenerationSession({self.schedule.num_evaluations} evaluations, full FFN from evaluation "
                f"{self.full_start}, {self.skip_count} layers skipped, {self.counters.evaluations} run so far)")

    def in_full_phase(self, k: int) -> bool:
        return k >= self.full_start

    def ranks_layers(self, k: int) -> bool:
        return self.skip_count > 0 and not self.in_full_phase(k) and k % self.cfg.layer_skip_interval == 0

    def plan(self, k: int) -> ExecutionPlan:
        full = self.in_full_phase(k)
        rank = self.ranks_layers(k)
        reuse = self.head.reuses(k, full)
        plan = ExecutionPlan(
            layers=None if full or rank else active_layers(self.skipped, self.num_layers),
            ffn_ranges=None if full else self.ffn_ranges,
            attention_ranges=None if full else self.attention_ranges,
            head_features=self.head.features if reuse else None,
            recompute_backbone=not reuse or not self.cfg.lazy_backbone or rank,
            keep_positions=self.keep,
            similarity=self.token_scope if rank else None,
            prefix_reuse=self.prefix is not None,
            share_cfg_visual=self.share_cfg_visual,
            linears=None if full and not self.quantize_full_phase else self.linears,
        )
        if self.prefix is not None:  # the text prefix's K/V for this backbone configuration, if computed before
            self._prefix_key = plan.backbone_signature()
            plan = plan.with_(prefix=self.prefix.entries.get(self._prefix_key))
        return plan

    def observe(self, k: int, output: GenerationOutput) -> None:
        if output.prefix is not None:  # computed by this forward: kept for the evaluations that follow
            self.prefix.entries[self._prefix_key] = output.prefix
        c = self.counters
        full = self.in_full_phase(k)
        c.evaluations += 1
        c.full_phase += full
        c.head_reused += self.head.reuses(k, full)
        c.backbone_runs += output.backbone is not None
        if self.ranks_layers(k):
            self.skipped = least_important_layers(output.backbone.similarity, self.skip_count, self.num_layers,
                                                  self.cfg.protect_first_last)
            c.rankings += 1
            c.skip_sets.append((k, list(self.skipped)))
        elif not full and output.backbone is not None:
            c.layers_skipped += len(self.skipped)
        self.head.update(k, full, output.head_features)

    def stats(self) -> dict:
        c = self.counters
        return {"evaluations": c.evaluations, "full_phase_evaluations": c.full_phase,
                "head_reused": c.head_reused, "backbone_runs": c.backbone_runs, "layer_rankings": c.rankings,
                "layer_evaluations_skipped": c.layers_skipped, "skip_sets": c.skip_sets,
                **({} if self.prefix is None else {"prefix_computations": len(self.prefix.entries)}),
                "quantized": self.linears is not None,
                "guidance": self.schedule.guidance}


@dataclass
class FlashUGenerationPolicy:
    """Creates one :class:`FlashUGenerationSession` per request (implements ``GenerationPolicy``)."""

    config: GenerationAccelConfig
    ffn_ranges: list | None
    attention_ranges: list | None
    name: str = "flashu"
    linears: LinearKernels | None = None  # quantized kernels (model-level, read-only)
    quantize_full_phase: bool = False  # the final full-network phase runs them too

    def start(self, bundle, inputs, steps, guidance) -> FlashUGenerationSession:
        return FlashUGenerationSession(self.config, bundle.config.llm.num_layers, self.ffn_ranges,
                                       self.attention_ranges, inputs, steps, guidance,
                                       linears=for_session(self.linears, bundle.compiled),
                                       quantize_full_phase=self.quantize_full_phase)
