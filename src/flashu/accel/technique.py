"""What a FlashU technique is to the sessions: the contract every entry of the registry (:mod:`.registry`) keeps.

A technique decides one thing. When a request starts, ``start(ctx)`` builds the technique's per-request state from
the task's config section and what ``accelerate`` prepared (:class:`RequestContext`), or returns ``None`` when the
config leaves it off. For every forward the session starts from the trivial plan and lets each technique of its
task's registry, in order, change it (:meth:`Technique.plan`); after the forward each one reads the output
(:meth:`Technique.observe`) and, at the end, says what it did (:meth:`Technique.stats`). A technique never runs the
model, and the session never knows what a technique does: adding one is its own file, its registry line and its
lines in the invariant suite (``docs/architecture.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

from ..model import ExecutionPlan
from ..model.layers import LinearKernels

StepKind = Literal["evaluation", "prefill", "decode", "target"]


@dataclass(frozen=True)
class Step:
    """The forward a plan is for.

    ``evaluation`` (text-to-image): evaluation ``index`` of the denoising schedule, ``full`` in the final
    full-network phase. ``prefill`` (understanding, ``index`` −1) and ``decode`` (answer token ``index`` ≥ 1).
    ``target`` (understanding, once per answer): the full-depth decode plan that self-speculative decoding drafts
    from and verifies with — techniques that change every forward (FFN range, kernels) act on it, per-step ones
    (layer skipping, token pruning) leave it alone.
    """

    kind: StepKind
    index: int = 0
    full: bool = False


class Ledger(Protocol):
    """An account kept across requests of one accelerated model (``speculative.DraftLedger``)."""

    def begin(self) -> bool:
        """Whether the next request should use the technique."""

    def record(self, gained: float, spent: float) -> None:
        ...


@dataclass(frozen=True)
class RequestContext:
    """What a technique may read when a request starts (read-only; shared model-level objects included)."""

    cfg: Any  # the task's section: GenerationAccelConfig or UnderstandingAccelConfig
    num_layers: int
    inputs: Any  # GenerationInputs or UnderstandingInputs of this request
    ffn_ranges: Sequence | None = None  # the task's FFN neuron range per layer (pruning layout), if pruned
    attention_ranges: Sequence | None = None  # the task's KV-group range per layer, if pruned
    linears: LinearKernels | None = None  # quantized kernels, if the task is quantized
    quantize_full_phase: bool = False  # text-to-image: the full-network phase runs the kernels too
    guidance: float = 0.0  # text-to-image: the requested guidance scale
    calibrated_similarity: list[float] | None = None  # understanding calibration's last-token similarity per layer
    ledger: Ledger | None = None  # self-speculation's account across answers (model-level)


class Technique:
    """Base of a registered technique: every hook is a no-op (override what the technique decides)."""

    name: str = "technique"

    @classmethod
    def start(cls, ctx: RequestContext) -> "Technique | None":
        """This request's state, or ``None`` when ``ctx.cfg`` leaves the technique off."""
        raise NotImplementedError

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        """The plan for ``step`` with this technique's decision applied (plans are immutable: ``plan.with_``)."""
        return plan

    def observe(self, step: Step, output) -> None:
        """See what the forward of ``step`` returned."""

    def stats(self) -> dict:
        """What this technique did in the request, for ``Answer.stats`` / the generation's stats."""
        return {}

    def engaged(self) -> bool:
        """Whether it changes anything in this request (a technique that always starts, for its counters, says
        here whether its config switched it on)."""
        return True


def start_all(registry: Sequence[type[Technique]], ctx: RequestContext) -> list[Technique]:
    """The started techniques of ``registry`` for one request, in registry order."""
    return [t for t in (entry.start(ctx) for entry in registry) if t is not None]


def compose(techniques: Sequence[Technique], step: Step, plan: ExecutionPlan) -> ExecutionPlan:
    for technique in techniques:
        plan = technique.plan(step, plan)
    return plan


def observe_all(techniques: Sequence[Technique], step: Step, output) -> None:
    for technique in techniques:
        technique.observe(step, output)


def find(techniques: Sequence[Technique], kind: type) -> Any:
    """The started technique of class ``kind`` (``None`` when it is off)."""
    return next((t for t in techniques if isinstance(t, kind)), None)
