"""FlashU for understanding: the per-answer session that composes the techniques into one plan per forward.

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

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..model import BackboneOutput, ExecutionPlan
from ..model.layers import LinearKernels
from .config import UnderstandingAccelConfig
from .layer_skip import active_layers, least_important_layers, skip_count
from .speculative import DraftLedger, SelfSpeculation
from .quantization import for_session
from .token_pruning import make_selector


@dataclass
class UnderstandingCounters:
    decode_steps: int = 0
    rankings: int = 0  # ranking passes (the prefill included)
    ranking_steps: list = field(default_factory=list)  # -1: prefill, -2: calibration prior, i: decode step i
    skip_sets: list = field(default_factory=list)  # (step, skipped layers) after each ranking
    skipped_per_step: list = field(default_factory=list)  # layers skipped on decode step 1, 2, …
    prefill_layers_skipped: int = 0
    prefill_tokens_kept: int | None = None


class FlashUUnderstandingSession:
    """Per-answer decisions (never stored on the model). Implements ``UnderstandingSession``; it only returns plans
    and reads what the forward returned."""

    def __init__(self, cfg: UnderstandingAccelConfig, num_layers: int, inputs, ffn_ranges, name: str = "flashu",
                 calibrated_similarity: list[float] | None = None, ledger: DraftLedger | None = None,
                 linears: LinearKernels | None = None):
        self.cfg = cfg
        self.linears = linears
        self.name = name
        self.inputs = inputs
        self.num_layers = num_layers
        self.ffn_ranges = ffn_ranges
        self.image_count = inputs.image_count
        self.selector = None
        if cfg.token_prune_ratio > 0:
            self.selector = make_selector(cfg, inputs.image_start, inputs.image_count)
        self.skip_count = skip_count(cfg.layer_skip_ratio, num_layers, "understanding.layer_skip_ratio")
        self.skipped: list[int] = []
        self.counters = UnderstandingCounters()
        self._prefill_layers = None
        if self.skip_count > 0 and cfg.skip_in_prefill:
            if calibrated_similarity is None:
                raise ConfigError("understanding.skip_in_prefill needs the layer similarity that understanding "
                                  "calibration records; recalibrate ('flashu calibrate --task mmu')")
            self._rank(-2, dict(enumerate(calibrated_similarity)))
            self._prefill_layers = active_layers(self.skipped, num_layers)
            self.counters.prefill_layers_skipped = len(self.skipped)
        self._ranking = False
        self.speculation = SelfSpeculation(cfg, num_layers, ffn_ranges, ledger, linears) \
            if cfg.speculative_decoding else None

    def __repr__(self) -> str:
        kept = self.image_count if self.selector is None else self.selector.keep
        return (f"FlashUUnderstandingSession({self.name!r}, image tokens {kept}/{self.image_count}, "
                f"{self.skip_count} layers skipped per step, speculation {'on' if self.speculation else 'off'})")

    # -- decisions ----------------------------------------------------------------------------------------
    def ranks_at(self, index: int) -> bool:
        """Whether decode step ``index`` (≥ 1) runs at full depth and re-ranks the layers."""
        interval = self.cfg.layer_skip_interval
        return self.skip_count > 0 and interval > 0 and index % interval == 0

    def prefill_plan(self) -> ExecutionPlan:
        self._ranking = self.skip_count > 0 and not self.cfg.skip_in_prefill
        measure = self._ranking or self.speculation is not None
        # a layer skipped in prefill still writes the prompt's keys/values, or it would later decode blind
        return ExecutionPlan(layers=self._prefill_layers, ffn_ranges=self.ffn_ranges, token_selector=self.selector,
                             logits="last", fill_skipped_kv=True, similarity="last" if measure else None,
                             linears=self.linears)

    def decode_plan(self, index: int) -> ExecutionPlan:
        self._ranking = self.ranks_at(index)
        return ExecutionPlan(layers=None if self._ranking else active_layers(self.skipped, self.num_layers),
                             ffn_ranges=self.ffn_ranges, logits="last", fill_skipped_kv=self.cfg.fill_skipped_kv,
                             similarity="last" if self._ranking else None, linears=self.linears)

    def observe(self, index: int, output: BackboneOutput) -> None:
        c = self.counters
        if index < 0:
            c.prefill_tokens_kept = int(output.hidden.shape[1])
            if self.speculation is not None:
                self.speculation.rank(output.similarity)
        else:
            c.decode_steps += 1
            c.skipped_per_step.append(0 if self._ranking else len(self.skipped))
        if self._ranking:
            self._rank(index, output.similarity)

    def _rank(self, step: int, similarity) -> None:
        self.skipped = least_important_layers(similarity, self.skip_count, self.num_layers,
                                              self.cfg.protect_first_last)
        c = self.counters
        c.rankings += 1
        c.ranking_steps.append(step)
        c.skip_sets.append((step, list(self.skipped)))

    def stats(self) -> dict:
        c = self.counters
        kept_image = self.image_count if self.selector is None else self.selector.keep
        steps = c.skipped_per_step
        return {
            "policy": self.name,
            "quantized": self.linears is not None,
            "ffn_pruned": self.ffn_ranges is not None,
            "ffn_neurons_kept": None if self.ffn_ranges is None else [b - a for a, b in self.ffn_ranges],
            "image_tokens": self.image_count,
            "image_tokens_kept": kept_image,
            "token_scorer": None if self.selector is None else self.selector.name,
            "token_prune_layer": None if self.selector is None else self.cfg.token_prune_layer,
            "prefill_tokens": int(self.inputs.input_ids.shape[1]),
            "prefill_tokens_kept": c.prefill_tokens_kept,
            "layers_to_skip": self.skip_count,
            "prefill_layers_skipped": c.prefill_layers_skipped,
            "skipped_layers_fill_kv": self.cfg.fill_skipped_kv,
            "layer_rankings": c.rankings,
            "ranking_steps": list(c.ranking_steps),
            "skip_sets": [(s, list(layers)) for s, layers in c.skip_sets],
            # target-model decode forwards, whichever loop ran them (a speculative round verifies several tokens)
            "decode_steps": c.decode_steps + (0 if self.speculation is None else self.speculation.rounds),
            "full_depth_decode_steps": sum(1 for s in c.ranking_steps if s >= 1),
            "layers_skipped_per_step": list(steps),
            "mean_layers_skipped_per_step": (sum(steps) / len(steps)) if steps else 0.0,
            **({} if self.speculation is None else self.speculation.stats()),
        }


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
