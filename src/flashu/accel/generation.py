"""FlashU for text-to-image: the per-generation session that composes the registered techniques into one plan per
evaluation.

Evaluations k = 0 … E − 1 (see ``accel/config.py`` for the step semantics). The session owns the schedule: step
count and guidance from :mod:`.guidance`, and the phases — *accelerated* (k < E − n_full) and *full* (the last
n_full evaluations, low noise: full network, no skipping, no cache). Everything else is a technique of
``registry.GENERATION`` (hybrid FFN, quantized kernels, head cache, layer skipping, exact trims, CFG visual sharing,
prefix reuse), each told the evaluation and whether it is in the full phase. The session only returns plans and
reads what the forward returned; it never runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import ExecutionPlan, GenerationInputs, GenerationOutput
from ..model.layers import LinearKernels
from .config import GenerationAccelConfig
from .guidance import denoising_schedule, full_phase_start
from .quantization import for_session
from .registry import GENERATION
from .technique import RequestContext, Step, Technique, compose, find, observe_all, start_all


class FlashUGenerationSession:
    """Per-request decisions and state of one generation (implements ``GenerationSession``)."""

    def __init__(self, cfg: GenerationAccelConfig, num_layers: int, ffn_ranges, attention_ranges,
                 inputs: GenerationInputs, steps: int, guidance: float, linears: LinearKernels | None = None,
                 quantize_full_phase: bool = False, registry=GENERATION):
        self.cfg = cfg
        self.schedule = denoising_schedule(cfg, steps, guidance)
        self.full_start = full_phase_start(cfg, self.schedule.num_evaluations)
        ctx = RequestContext(cfg, num_layers, inputs, ffn_ranges=ffn_ranges, attention_ranges=attention_ranges,
                             linears=linears, quantize_full_phase=quantize_full_phase, guidance=guidance)
        self.techniques: list[Technique] = start_all(registry, ctx)
        self.evaluations = self.full_phase = self.backbone_runs = 0

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.techniques if t.engaged()) or "no technique"
        return (f"FlashUGenerationSession({self.schedule.num_evaluations} evaluations, full network from evaluation "
                f"{self.full_start}, {names}; {self.evaluations} run so far)")

    def technique(self, kind: type) -> Technique | None:
        """This request's technique of class ``kind`` (``None`` when the config leaves it off)."""
        return find(self.techniques, kind)

    def in_full_phase(self, k: int) -> bool:
        return k >= self.full_start

    def step(self, k: int) -> Step:
        return Step("evaluation", k, full=self.in_full_phase(k))

    def plan(self, k: int) -> ExecutionPlan:
        return compose(self.techniques, self.step(k), ExecutionPlan())

    def observe(self, k: int, output: GenerationOutput) -> None:
        step = self.step(k)
        self.evaluations += 1
        self.full_phase += step.full
        self.backbone_runs += output.backbone is not None
        observe_all(self.techniques, step, output)

    def stats(self) -> dict:
        out = {"evaluations": self.evaluations, "full_phase_evaluations": self.full_phase,
               "backbone_runs": self.backbone_runs}
        for technique in self.techniques:
            out.update(technique.stats())
        return {**out, "guidance": self.schedule.guidance}


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
