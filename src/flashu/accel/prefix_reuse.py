"""Text-to-image prefix reuse (``prefix_reuse``, exact up to float rounding): the text prefix does not depend on the
noisy latents, so its keys/values are computed once per backbone configuration (executed layers, FFN and attention
ranges, kernels: :meth:`~flashu.model.ExecutionPlan.backbone_signature`) and every later evaluation with that
configuration runs only the image-block positions, attending to them. The entries are what the model returned
(``GenerationOutput.prefix``), kept here, per request.

Registered last among the generation techniques: the configuration it keys on is the one the others decided.
"""

from __future__ import annotations

from ..model import ExecutionPlan
from ..model.cache import PrefixEntry
from .technique import RequestContext, Step, Technique


class PrefixReuse(Technique):
    name = "prefix-reuse"

    def __init__(self) -> None:
        self.entries: dict[tuple, PrefixEntry] = {}  # by backbone signature: a handful per generation
        self._key: tuple | None = None

    @classmethod
    def start(cls, ctx: RequestContext) -> "PrefixReuse | None":
        return cls() if ctx.cfg.prefix_reuse else None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        self._key = plan.backbone_signature()
        return plan.with_(prefix_reuse=True, prefix=self.entries.get(self._key))

    def observe(self, step: Step, output) -> None:
        if output.prefix is not None:  # computed by this forward: kept for the evaluations that follow
            self.entries[self._key] = output.prefix

    def stats(self) -> dict:
        return {"prefix_computations": len(self.entries)}
