"""Step reduction and the time-varying guidance scale s(t) (the paper's Eq. 6), and the hybrid-FFN phase boundary.

With E evaluations: guidance ``guidance_low_factor · s₀`` for the first ``round(guidance_low_fraction · E)``,
then s₀; the last ``round(full_ffn_fraction · E)`` evaluations form the full-network phase.
"""

from __future__ import annotations

from ..pipelines.sampling import DenoisingSchedule, time_grid
from .config import GenerationAccelConfig


def denoising_schedule(cfg: GenerationAccelConfig, steps: int, guidance: float) -> DenoisingSchedule:
    """The shortened time grid and the guidance scale of every evaluation."""
    evaluations = cfg.evaluations(steps)
    low = round(cfg.guidance_low_fraction * evaluations)
    scales = [guidance * cfg.guidance_low_factor if k < low else guidance for k in range(evaluations)]
    return DenoisingSchedule(time_grid(evaluations + 1), scales)


def full_phase_start(cfg: GenerationAccelConfig, evaluations: int) -> int:
    """First evaluation of the full-network (hybrid FFN) phase."""
    return evaluations - round(cfg.full_ffn_fraction * evaluations)
