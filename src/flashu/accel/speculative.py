"""Lossless self-speculative decoding (Draft & Verify, arXiv 2309.08168; LayerSkip, arXiv 2404.16710; SWIFT,
arXiv 2410.06916): the model with some decoder layers skipped drafts ``k`` tokens, the target plan verifies all of
them in one forward, and the longest agreeing prefix plus the target's own next token are emitted — exactly the
tokens the target plan's greedy decoding would emit (up to float rounding), in fewer target forwards.

* **Draft plan**: the target's FFN range with the ``⌊draft_skip_ratio · L⌋`` layers skipped that changed the last
  prompt token least in the prefill (ranked by ``1 − cos(h_in, h_out)``, first and last layers kept). A skipped
  layer writes no keys/values: the draft's cache entries are overwritten by the verification anyway.
* **Verification**: the target plan on ``[last accepted token, d₁ … d_k]`` at their positions, logits at every one.
  The cache is first rolled back to before the drafts, so the verification writes the exact keys/values; after it,
  each layer keeps the entries of the accepted tokens only.
* **Adaptive k**: all ``k`` accepted → ``k + 1`` (up to ``max_draft_tokens``); fewer than half → ``k − 1`` (≥ 1).
* **Break-even**: from the second round on, when the tokens emitted by speculative rounds fall below their cost in
  full decode steps (a draft token costs ``DRAFT_OVERHEAD + (1 − DRAFT_OVERHEAD)·share of layers run``, fitted on
  ``small``), speculation stops for the rest of the answer (``k = 0``: plain greedy steps) — a model whose draft
  disagrees too often is not slowed down. The tokens are the same either way.
* **Ledger**: the same account kept across the answers of one accelerated model (:class:`DraftLedger`, on the
  ``Acceleration``): once it holds enough evidence that speculation does not pay there, new answers start with plain
  steps (every ``PROBE_EVERY``-th still speculates, to notice a change).

This module only decides (plans, depth); ``pipelines/mmu`` runs the loop.
"""

from __future__ import annotations

import threading

from ..model import ExecutionPlan
from .config import UnderstandingAccelConfig
from .layer_skip import active_layers, least_important_layers, skip_count
from .technique import RequestContext, Step, Technique


# A draft token costs DRAFT_OVERHEAD + (1 - DRAFT_OVERHEAD) * (share of layers it runs) full decode steps: fitted to
# the costs `python benchmarks/speculative_draft.py` measures on `small` (quoted in docs/testbed.md).
DRAFT_OVERHEAD = 0.3
BREAK_EVEN_ROUNDS = 2  # rounds observed before speculation may be switched off for the rest of the answer


LEDGER_EVIDENCE = 24.0  # step-units of speculation observed before the ledger may turn speculation off up front
PROBE_EVERY = 16  # while off, every this many answers speculate anyway (the inputs may have changed)


class DraftLedger:
    """What speculation has earned on this accelerated model so far, across answers (thread-safe): tokens emitted by
    speculative rounds vs their cost in full decode steps. Answers are short for benchmark questions (a few tokens),
    too short for one answer's break-even rule to learn in time; the ledger lets a new answer start without
    speculation when it has not paid on this model — it changes speed only, never tokens."""

    def __init__(self) -> None:
        self.gained = self.spent = 0.0
        self.answers = 0
        self._lock = threading.Lock()

    def begin(self) -> bool:
        """Whether the next answer should speculate."""
        with self._lock:
            self.answers += 1
            paying = self.spent < LEDGER_EVIDENCE or self.gained >= self.spent
            return paying or self.answers % PROBE_EVERY == 0

    def record(self, gained: float, spent: float) -> None:
        with self._lock:
            self.gained += gained
            self.spent += spent

    def __getstate__(self) -> dict:  # copies and pickles of an accelerated bundle get a lock of their own
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class SelfSpeculation(Technique):
    """Per-answer state of self-speculative decoding (a registered technique: it asks the prefill for the last
    token's layer similarity, ranks the draft's layers from it, and keeps the answer's target plan; the session
    exposes it as ``speculation`` and ``pipelines/mmu`` runs the loop)."""

    name = "speculative-decoding"

    def __init__(self, cfg: UnderstandingAccelConfig, num_layers: int, ledger: DraftLedger | None = None):
        self.num_layers = num_layers
        self.target = ExecutionPlan()  # the answer's full-depth decode plan (FFN range, kernels): set by the session
        self.skip = skip_count(cfg.draft_skip_ratio, num_layers, "understanding.draft_skip_ratio")
        self.k = cfg.draft_tokens
        self.max_k = cfg.max_draft_tokens
        self.draft_layers: list[int] | None = None
        self.rounds = self.drafted = self.accepted = 0  # rounds: target forwards (a k = 0 round is a plain step)
        self.speculative_rounds = 0  # rounds that drafted at least one token
        self.gained = self.spent = 0.0  # tokens emitted by speculative rounds / their cost in full decode steps
        self.stopped_at: int | None = None  # the round after which plain decoding was cheaper (speculation off)
        self.ledger = ledger
        if ledger is not None and not ledger.begin():
            self.stopped_at, self.k = 0, 0  # it has not paid on this model: plain steps from the start

    @classmethod
    def start(cls, ctx: RequestContext) -> "SelfSpeculation | None":
        return cls(ctx.cfg, ctx.num_layers, ctx.ledger) if ctx.cfg.speculative_decoding else None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if step.kind == "target":
            self.target = plan
        elif step.kind == "prefill":
            return plan.with_(similarity="last")
        return plan

    def observe(self, step: Step, output) -> None:
        if step.kind == "prefill":
            self.rank(output.similarity)

    def rank(self, similarity) -> None:
        """Choose the draft's skipped layers from the prefill's last-token similarity."""
        skipped = least_important_layers(similarity, self.skip, self.num_layers, protect_first_last=True)
        self.draft_layers = active_layers(skipped, self.num_layers)

    def depth(self, remaining: int) -> int:
        """Drafts for the next round when ``remaining`` tokens may still be emitted (a round emits up to k + 1)."""
        return max(0, min(self.k, remaining - 1))

    def draft_plan(self) -> ExecutionPlan:
        return self.target.with_(layers=self.draft_layers, logits="last")

    def verify_plan(self) -> ExecutionPlan:
        return self.target.with_(logits="all")

    def draft_cost(self) -> float:
        """One draft token's cost in full decode steps: ``DRAFT_OVERHEAD + (1 − DRAFT_OVERHEAD) · layers run``."""
        return DRAFT_OVERHEAD + (1 - DRAFT_OVERHEAD) * len(self.draft_layers or ()) / self.num_layers

    def update(self, drafted: int, accepted: int) -> None:
        self.rounds += 1
        self.speculative_rounds += drafted > 0
        self.drafted += drafted
        self.accepted += accepted
        if drafted and self.stopped_at is None:
            gained, spent = accepted + 1, drafted * self.draft_cost() + 1  # the verification costs about one step
            self.gained += gained
            self.spent += spent
            if self.ledger is not None:
                self.ledger.record(gained, spent)
            if self.speculative_rounds >= BREAK_EVEN_ROUNDS and self.gained < self.spent:
                self.stopped_at, self.k = self.speculative_rounds, 0  # slower than plain decoding: plain from here (lossless)
                return
        if self.stopped_at is not None:
            return
        if drafted and accepted == drafted:
            self.k = min(self.k + 1, self.max_k)
        elif accepted < drafted / 2:
            self.k = max(1, self.k - 1)

    def stats(self) -> dict:
        return {"speculative_rounds": self.speculative_rounds, "drafted_tokens": self.drafted,
                "accepted_tokens": self.accepted,
                "acceptance_rate": self.accepted / self.drafted if self.drafted else None,
                "speculation_stopped_after_round": self.stopped_at,
                "draft_layers": None if self.draft_layers is None else len(self.draft_layers)}
