"""FlashU for understanding: the per-answer session that composes the registered techniques
(``registry.UNDERSTANDING``) into one plan per forward.

Each technique is off when its ratio is 0 (or its flag false):

**Static understanding FFN (r_p,** :mod:`.pruning` **).** Every forward of the answer runs the understanding neuron
range of each decoder layer (``layout.ffn_ranges["mmu"]``): a slice of the permuted full weights, from understanding
calibration, independent of generation's range. No hybrid phase: understanding is single-pass.

**Layer skipping while decoding (r_LS, T_LS,** :mod:`.layer_skip` **), ranked by the last token.** ``s = ⌊r_LS·L⌋``
layers are skipped. Answer token 0 comes from the prefill; decode step ``i`` produces token ``i``. The prefill is a
full-depth ranking pass that measures each layer's ``cos(h_in, h_out)`` at the last position (the model returns it
in ``BackboneOutput.similarity``); decode step ``i`` is a ranking pass when ``T_LS > 0`` and ``i % T_LS == 0``; every
other step skips the current set. A skipped layer still writes that token's keys/values from its input
(``fill_skipped_kv``): exactly those it would have made, so when it runs again it sees the whole answer.
``skip_in_prefill`` also skips ``s`` layers in the prefill, chosen by understanding calibration's mean last-token
similarity (``ImportanceScores.layer_similarity``); those layers still write the prompt's keys/values.

**Visual-token pruning at layer K (ρ, scorer,** :mod:`.token_pruning` **).** At the first executed layer ≥ K of the
prefill the ``⌊ρ·grid²⌋`` image tokens with the highest drop priority are removed (never the time token or text);
layers ≥ K and their cache entries hold only the kept tokens, with their original positions.

**Self-speculative decoding (** :mod:`.speculative` **).** Instead of lossy skipping, a layer-skipping draft proposes
tokens the target plan (full depth, the FFN range above) verifies in one forward: the same tokens as the target's
greedy decoding, in fewer target forwards.

Where this costs accuracy and what it buys is measured on the trained testbed (``docs/testbed.md``) and with
``flashu bench`` (``docs/benchmarks.md``). The session only returns plans and reads what the forward returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import BackboneOutput, ExecutionPlan
from ..model.layers import LinearKernels
from .config import UnderstandingAccelConfig
from .quantization import for_session
from .registry import UNDERSTANDING
from .speculative import DraftLedger, SelfSpeculation
from .technique import RequestContext, Step, Technique, compose, find, observe_all, start_all


class FlashUUnderstandingSession:
    """Per-answer decisions (never stored on the model). Implements ``UnderstandingSession``; it only returns plans
    and reads what the forward returned."""

    def __init__(self, cfg: UnderstandingAccelConfig, num_layers: int, inputs, ffn_ranges, name: str = "flashu",
                 calibrated_similarity: list[float] | None = None, ledger: DraftLedger | None = None,
                 linears: LinearKernels | None = None, registry=UNDERSTANDING):
        self.cfg = cfg
        self.name = name
        self.inputs = inputs
        ctx = RequestContext(cfg, num_layers, inputs, ffn_ranges=ffn_ranges, linears=linears,
                             calibrated_similarity=calibrated_similarity, ledger=ledger)
        self.techniques: list[Technique] = start_all(registry, ctx)
        self.speculation: SelfSpeculation | None = find(self.techniques, SelfSpeculation)
        self.decode_steps = 0
        self.prefill_tokens_kept: int | None = None
        compose(self.techniques, Step("target"), ExecutionPlan(logits="last"))  # speculation keeps it

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.techniques if t.engaged()) or "no technique"
        return f"FlashUUnderstandingSession({self.name!r}: {names})"

    def technique(self, kind: type) -> Technique | None:
        """This answer's technique of class ``kind`` (``None`` when the config leaves it off)."""
        return find(self.techniques, kind)

    def prefill_plan(self) -> ExecutionPlan:
        return compose(self.techniques, Step("prefill", -1), ExecutionPlan(logits="last"))

    def decode_plan(self, index: int) -> ExecutionPlan:
        return compose(self.techniques, Step("decode", index), ExecutionPlan(logits="last"))

    def observe(self, index: int, output: BackboneOutput) -> None:
        if index < 0:
            self.prefill_tokens_kept = int(output.hidden.shape[1])
        else:
            self.decode_steps += 1
        observe_all(self.techniques, Step("prefill", -1) if index < 0 else Step("decode", index), output)

    def stats(self) -> dict:
        spec = self.speculation
        out = {"policy": self.name, "image_tokens": self.inputs.image_count,
               "prefill_tokens": int(self.inputs.input_ids.shape[1]), "prefill_tokens_kept": self.prefill_tokens_kept,
               # target-model decode forwards, whichever loop ran them (a speculative round verifies several tokens)
               "decode_steps": self.decode_steps + (0 if spec is None else spec.rounds)}
        for technique in self.techniques:
            out.update(technique.stats())
        return out


@dataclass
class FlashUUnderstandingPolicy:
    """Implements ``UnderstandingPolicy``: one :class:`FlashUUnderstandingSession` per answer.

    ``calibrated_similarity``: per-layer last-token similarity from understanding calibration, the prefill's skip
    set when ``skip_in_prefill``."""

    config: UnderstandingAccelConfig
    ffn_ranges: list | None
    name: str = "flashu"
    calibrated_similarity: list[float] | None = None
    ledger: DraftLedger | None = None  # speculation's account across answers (model-level, see accel/speculative)
    linears: LinearKernels | None = None  # quantized kernels (model-level, read-only)

    def start(self, bundle, inputs) -> FlashUUnderstandingSession:
        return FlashUUnderstandingSession(self.config, bundle.config.llm.num_layers, inputs, self.ffn_ranges,
                                          name=self.name, calibrated_similarity=self.calibrated_similarity,
                                          ledger=self.ledger, linears=for_session(self.linears, bundle.compiled))
