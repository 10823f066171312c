"""Two exact text-to-image techniques (same images up to float rounding):

* **exact trims** (``exact_trims``): the positions after the image blocks cannot influence them (causal attention),
  so the forward keeps only the sequence up to the last image block (``GenerationInputs.used_length``);
* **CFG visual sharing** (``share_cfg_visual``): the conditional and unconditional rows carry the same latents, so
  the SigLIP branch and the fusion run on the first half of the batch only (with guidance > 0, when there are two
  halves).
"""

from __future__ import annotations

from ..model import ExecutionPlan
from .technique import RequestContext, Step, Technique


class ExactTrims(Technique):
    name = "exact-trims"

    def __init__(self, keep: int):
        self.keep = keep

    @classmethod
    def start(cls, ctx: RequestContext) -> "ExactTrims | None":
        return cls(ctx.inputs.used_length) if ctx.cfg.exact_trims else None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        return plan.with_(keep_positions=self.keep)


class ShareCfgVisual(Technique):
    name = "share-cfg-visual"

    @classmethod
    def start(cls, ctx: RequestContext) -> "ShareCfgVisual | None":
        return cls() if ctx.cfg.share_cfg_visual and ctx.guidance > 0 else None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        return plan.with_(share_cfg_visual=True)
