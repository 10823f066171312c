"""Diffusion-head cache: the flow head's block features are recomputed every ``T_cache`` evaluations and reused in
between; the final adaLN layer always runs with the current time step (the paper's Sec. 3.4, the reference code's
rule: store when ``(k + 1) % T_cache == 0``, reuse on the following evaluations until the next store, nothing in
the full-network phase)."""

from __future__ import annotations

import torch


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
