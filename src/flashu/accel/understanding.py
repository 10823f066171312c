"""FlashU for understanding: the per-answer session that turns an :class:`UnderstandingAccelConfig` into plans.

Three techniques, each off when its ratio is 0:

**Static understanding FFN (r_p).** Every backbone forward of the answer (prefill, every decode step, the optional
scout pass) runs the understanding neuron range of each decoder layer (``layout.ffn_ranges["mmu"]``): a slice of the
permuted full weights, computed from understanding calibration (``calibrate(bundle, "mmu")``) independently of
generation's range. No hybrid phase: understanding is single-pass.

**Layer skipping while decoding (r_LS, T_LS), ranked by the last token.** ``s = ⌊r_LS·L⌋`` layers are skipped.

* Answer token 0 comes from the prefill; decode step ``i`` (i ≥ 1) produces answer token ``i``.
* *Ranking passes* run at full depth (all L layers, still the pruned FFN) with a probe that records, per layer,
  ``cos(h_in, h_out)`` of the **last sequence position** only (the position whose logits are used); importance
  ``I_ℓ = 1 − cos``. The new skip set is the ``s`` layers with the smallest ``I_ℓ`` (ties: lower index first);
  with ``protect_first_last`` layers 0 and L − 1 are never candidates. ``h_out`` is the residual stream before the
  final RMSNorm (unlike the reference generation code, which compares the last layer against a normed state).
* The prefill is a ranking pass. Decode step ``i`` is a ranking pass when ``T_LS > 0`` and ``i % T_LS == 0``
  (T_LS = 8: steps 8, 16, 24, …); every other decode step skips the current set (a skipped layer is an identity).
  ``T_LS = 0``: the prefill's ranking is kept for the whole answer.
* A layer skipped on a decode step is an identity for the residual stream but, with ``fill_skipped_kv`` (default),
  still appends that token's key/value, computed from its input (its input norm and the thin GQA k/v projections,
  ~2 % of a layer's weights on ``small``); keys and values depend only on a layer's input, so these are exactly
  the ones it would have made, and when the layer runs again after a re-ranking it attends to the whole answer so
  far. Without it, a
  skipped layer appends nothing and per-layer KV-cache lengths differ (``KVCache`` allows this). Keys are cached
  after RoPE and decode positions continue from the original prompt length, so positions stay exact whatever was
  skipped or pruned.
* ``skip_in_prefill`` (off by default): the prefill itself skips ``s`` layers. No full-depth pass exists before the
  prefill, so the set comes from **understanding calibration**: ``calibrate(bundle, "mmu")`` also records each
  layer's last-token ``cos(h_in, h_out)`` averaged over the calibration pairs (``ImportanceScores.layer_similarity``),
  and the prefill skips the ``s`` most similar layers. Without that prior (scores from an older file) a **scout
  pass** ranks them: a full-depth forward (no cache, pruned FFN) of the prompt without its image tokens, ranked by
  its last token. Layers skipped in prefill always write the prompt's keys/values (as above), or they would decode
  blind after the first re-ranking. Decoding starts from the prefill's set until its first ranking pass.

**Visual-token pruning at layer K (ρ, ``token_scorer``).** At the first executed layer ≥ K of the prefill, after
q/k/v (+RoPE) are computed for all positions, the ``grid²`` image tokens (positions ``block_offset + 1 …
block_offset + grid²``; never the time token at ``block_offset``, never text) are scored and the
``⌊ρ·grid²⌋`` with the highest drop priority are removed. Kept positions stay in their original order with their
original positions (RoPE, mask rows/columns and positions are gathered by ``run_backbone``); layers < K keep every
token, layers ≥ K and their KV caches hold only kept tokens, so decoding attends to the shorter cache. Scorers
(same budget):

* ``vnorm`` (default, the paper's proxy): ‖v_i‖₂ at layer K, heads combined as the L2 norm of the concatenation of
  all KV heads' value vectors (``sqrt(Σ_h ‖v_{h,i}‖²)``, fp32); **largest norms dropped**. Uses only V, which the
  layer computes anyway: no attention map, works with SDPA/fused kernels.
* ``knorm``: the same on the keys (post-RoPE; RoPE is a rotation, so the norm equals the pre-RoPE norm); largest
  dropped.
* ``random``: a seeded (``seed``) uniform subset; the same subset for every request of the same image size.
* ``attention`` (FastV-style, eager): the attention map of layer K is materialised for the **text queries after
  the image block** (``<|vision_end|>``, the question and the assistant suffix — the rows whose omni-mask row is
  purely causal, so ``softmax(q·kᵀ/√d + causal)`` is their exact attention): the probability each image token
  receives, averaged over all query heads and those queries; **least attended dropped**.

Defaults (``token_prune_ratio`` ρ = 0.5, ``token_prune_layer`` K = 2, ``layer_skip_interval`` T_LS = 8). Measured
with ``python benchmarks/bench_mmu.py --sweep --threads 1`` on the ``small`` preset, which has **random weights**:
3 shapes-world test images (``flashu.testbed.world``) at 256 px = 256 image tokens of a 342-token prompt, token
pruning alone, backbone prefill time and the mean KL(p_base ‖ p_pruned) of the next-token distributions along 32
greedy tokens (the greedy tokens of a random model are nearly constant, so token agreement is 100 % everywhere and
says nothing)::

    ρ \ K      1                 2                 4
    0.25   1.21×  KL 4.0e-4   1.24×  KL 3.0e-4   1.21×  KL 1.7e-4
    0.50   1.57×  KL 2.5e-3   1.49×  KL 1.9e-3   1.43×  KL 1.1e-3
    0.75   2.14×  KL 9.0e-3   2.00×  KL 7.1e-3   1.85×  KL 4.6e-3

The saving is set by ρ (the backbone prefill is compute-bound and roughly linear in the kept length); a deeper K
costs a little speed and perturbs less; the perturbation grows faster than linearly in ρ (KL ×6 from 0.25 to 0.5,
×3.8 from 0.5 to 0.75). The random model does not look at image content (swapping the image changes its output by
< 0.1 %), so *which* tokens a scorer keeps cannot be judged here — all four scorers give the same KL; only *how
many* are kept matters. So these measurements fix the cost side only.

The quality side was then measured on the trained ``testbed`` (``benchmarks/testbed_understanding.py``,
``docs/testbed.md``), and it does not pick a V-norm operating point either: there the largest value norms belong to
the tokens that show the shapes (a shape token outranks a background token with probability 0.99), so V-norm
pruning loses most answers at every ρ (0.25/0.5/0.75: 32/23/25 % vs 99.5 %) and every K tried (2/4/6), worse than
random. We therefore keep the paper's K = 2 and FastV's ρ = 0.5 operating point (reported near-lossless on trained
LVLMs with real photographs), not ρ = 0.75, which is what the issue's "prefill ≥ 2×" target needs on ``small``
(backbone prefill 2.00× alone, 2.11× with the pruned FFN) at ~3.8× the perturbation; and we document that V-norm
pruning should not be used on images whose content is a few tokens on a blank background. T_LS = 8 re-ranks three
times in a 32-token answer (4.52 instead of 5 layers skipped per decode step on average, ~2 % of the decode work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..model import ExecutionPlan, BackboneOutput, omni_attention_mask
from .config import UnderstandingAccelConfig
from .generation import LayerSimilarityProbe, least_important_layers


# ---------------------------------------------------------------------------------------------------- probes
class LastTokenSimilarityProbe(LayerSimilarityProbe):
    """``cos(h_in, h_out)`` of the last sequence position at each executed layer (prefill or decode step)."""

    def __init__(self):
        super().__init__(None)

    def layer_io(self, layer: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        super().layer_io(layer, hidden_in[:, -1:], hidden_out[:, -1:])


# ---------------------------------------------------------------------------------------------------- selectors
class VisualTokenSelector:
    """Base of the visual-token selectors: keeps every non-image position and the ``keep`` image tokens with the
    lowest drop priority (:meth:`priority`, larger = dropped first; ties: the lower position is dropped first).

    ``image_start``/``image_count``: the image tokens' positions ``[image_start, image_start + image_count)`` in the
    sequence the selector sees (the full prefill sequence: nothing is pruned before it).
    """

    name = "base"
    needs_queries = False

    def __init__(self, layer: int, image_start: int, image_count: int, keep: int):
        if not 0 < keep <= image_count:
            raise ConfigError(f"visual-token pruning must keep between 1 and {image_count} image tokens, got {keep}")
        self.layer = layer
        self.image_start = image_start
        self.image_count = image_count
        self.keep = keep
        self.priorities: torch.Tensor | None = None  # [B, image_count] from the last select
        self.kept: torch.Tensor | None = None  # kept sequence positions [B, L_kept] from the last select

    @property
    def image_stop(self) -> int:
        return self.image_start + self.image_count

    def priority(self, values: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor,
                 queries: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def select(self, values: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor,
               queries: torch.Tensor | None) -> torch.Tensor:
        B, L = values.shape[0], values.shape[2]
        if L < self.image_stop:
            raise ValueError(f"selector expects the image tokens at [{self.image_start}, {self.image_stop}) "
                             f"but the sequence has {L} positions")
        priority = self.priority(values, keys, hidden, queries).float()
        drop = self.image_count - self.keep
        order = torch.argsort(priority, dim=1, descending=True, stable=True)
        kept_image = order[:, drop:].sort(dim=1).values + self.image_start
        device = kept_image.device
        before = torch.arange(self.image_start, device=device).expand(B, -1)
        after = torch.arange(self.image_stop, L, device=device).expand(B, -1)
        keep = torch.cat([before, kept_image, after], dim=1)
        self.priorities, self.kept = priority, keep
        return keep

    def _image(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, :, self.image_start:self.image_stop]


class ValueNormSelector(VisualTokenSelector):
    """The paper's V-norm proxy: ``sqrt(Σ_h ‖v_{h,i}‖²)`` over all KV heads; the largest norms are dropped."""

    name = "vnorm"

    def priority(self, values, keys, hidden, queries):
        return self._image(values).float().pow(2).sum(dim=(1, 3)).sqrt()


class KeyNormSelector(VisualTokenSelector):
    """Key norm (post-RoPE, equal to pre-RoPE), heads combined like :class:`ValueNormSelector`; largest dropped."""

    name = "knorm"

    def priority(self, values, keys, hidden, queries):
        return self._image(keys).float().pow(2).sum(dim=(1, 3)).sqrt()


class RandomSelector(VisualTokenSelector):
    """A seeded uniform random subset of the image tokens (same for every row and request of this size)."""

    name = "random"

    def __init__(self, layer, image_start, image_count, keep, seed: int = 0):
        super().__init__(layer, image_start, image_count, keep)
        self.seed = seed

    def priority(self, values, keys, hidden, queries):
        gen = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(self.image_count, generator=gen)
        return scores.to(values.device).expand(values.shape[0], -1)


class AttentionSelector(VisualTokenSelector):
    """FastV-style: attention received by each image token at layer K from the text queries after the image block,
    averaged over query heads and those queries; the least attended are dropped. Materialises those rows of the
    attention map explicitly (eager), with the causal mask those rows have under the omni mask."""

    name = "attention"
    needs_queries = True

    def priority(self, values, keys, hidden, queries):
        if queries is None:
            raise ValueError("the attention scorer needs the layer's queries")
        B, Hq, L, d = queries.shape
        q = queries[:, :, self.image_stop:].float()  # [B, Hq, Nq, d]
        if q.shape[2] == 0:
            raise ValueError("the attention scorer needs text after the image block")
        k = keys.float().repeat_interleave(Hq // keys.shape[1], dim=1)  # [B, Hq, L, d]
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # [B, Hq, Nq, L]
        rows = torch.arange(self.image_stop, L, device=q.device)
        allowed = torch.arange(L, device=q.device)[None, :] <= rows[:, None]  # causal: [Nq, L]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = logits.softmax(dim=-1)
        received = probs[..., self.image_start:self.image_stop].mean(dim=(1, 2))  # [B, N]
        return -received  # least attended first


SELECTORS = {"vnorm": ValueNormSelector, "knorm": KeyNormSelector, "random": RandomSelector,
             "attention": AttentionSelector}


def make_selector(cfg: UnderstandingAccelConfig, image_start: int, image_count: int) -> VisualTokenSelector | None:
    """The configured selector for one request, or ``None`` when ρ drops no token."""
    keep = cfg.kept_image_tokens(image_count)  # ConfigError when ρ keeps nothing
    if keep == image_count:
        return None
    cls = SELECTORS[cfg.token_scorer]
    if cls is RandomSelector:
        return RandomSelector(cfg.token_prune_layer, image_start, image_count, keep, seed=cfg.seed)
    return cls(cfg.token_prune_layer, image_start, image_count, keep)


# ---------------------------------------------------------------------------------------------------- session
@dataclass
class UnderstandingCounters:
    decode_steps: int = 0
    rankings: int = 0  # ranking passes (prefill or scout included)
    ranking_steps: list = field(default_factory=list)  # -1: prefill, -2: scout, i: decode step i
    skip_sets: list = field(default_factory=list)  # (step, skipped layers) after each ranking
    skipped_per_step: list = field(default_factory=list)  # layers skipped on decode step 1, 2, …
    prefill_layers_skipped: int = 0
    prefill_tokens_kept: int | None = None


class FlashUUnderstandingSession:
    """Per-answer decisions (never stored on the model). Implements ``UnderstandingSession``."""

    def __init__(self, cfg: UnderstandingAccelConfig, bundle, inputs, ffn_ranges, name: str = "flashu",
                 calibrated_similarity: list[float] | None = None):
        self.cfg = cfg
        self.calibrated_similarity = calibrated_similarity
        self.name = name
        self.bundle = bundle
        self.inputs = inputs
        self.num_layers = bundle.config.llm.num_layers
        self.ffn_ranges = ffn_ranges
        if cfg.token_prune_ratio > 0 and cfg.token_prune_layer >= self.num_layers:
            raise ConfigError(f"understanding.token_prune_layer {cfg.token_prune_layer} must be below the number "
                              f"of decoder layers ({self.num_layers})")
        self.image_start = inputs.image_start
        self.image_count = inputs.image_count
        self.selector = make_selector(cfg, self.image_start, self.image_count) if cfg.token_prune_ratio > 0 \
            else None
        self.skip_count = math.floor(cfg.layer_skip_ratio * self.num_layers)
        self.skipped: list[int] = []
        self.last_similarity: dict[int, float] = {}  # last-token cos per layer at the latest ranking
        self.counters = UnderstandingCounters()
        self._probe: LastTokenSimilarityProbe | None = None
        self._prefill_layers: list[int] | None = None
        self.prefill_skip_source: str | None = None  # calibration | scout, when skip_in_prefill

    # -- decisions ----------------------------------------------------------------------------------------
    def ranks_at(self, index: int) -> bool:
        """Whether decode step ``index`` (≥ 1) runs at full depth and re-ranks the layers."""
        interval = self.cfg.layer_skip_interval
        return self.skip_count > 0 and interval > 0 and index % interval == 0

    def _active_layers(self) -> list[int] | None:
        if not self.skipped:
            return None
        return [i for i in range(self.num_layers) if i not in self.skipped]

    def prefill_plan(self) -> ExecutionPlan:
        probe = None
        if self.skip_count > 0:
            if self.cfg.skip_in_prefill:
                if self._prefill_layers is None:
                    if self.calibrated_similarity is not None:
                        self.prefill_skip_source = "calibration"
                        self._rank(-2, dict(enumerate(self.calibrated_similarity)))
                    else:
                        self.prefill_skip_source = "scout"
                        self._rank(-2, self._scout_similarity())
                    self._prefill_layers = self._active_layers()
                    self.counters.prefill_layers_skipped = len(self.skipped)
            else:
                probe = LastTokenSimilarityProbe()
        self._probe = probe
        # a layer skipped in prefill still writes the prompt's keys/values, or it would later decode blind
        return ExecutionPlan(layers=self._prefill_layers, ffn_ranges=self.ffn_ranges, token_selector=self.selector,
                             logits="last", fill_skipped_kv=True, probe=probe)

    def decode_plan(self, index: int) -> ExecutionPlan:
        rank = self.ranks_at(index)
        self._probe = LastTokenSimilarityProbe() if rank else None
        return ExecutionPlan(layers=None if rank else self._active_layers(), ffn_ranges=self.ffn_ranges,
                             logits="last", fill_skipped_kv=self.cfg.fill_skipped_kv, probe=self._probe)

    def observe(self, index: int, output: BackboneOutput) -> None:
        c = self.counters
        if index < 0:
            c.prefill_tokens_kept = int(output.hidden.shape[1])
        else:
            c.decode_steps += 1
            c.skipped_per_step.append(0 if self._probe is not None else len(self.skipped))
        if self._probe is not None:
            self._rank(index, self._probe.similarity)
            self._probe = None

    def _rank(self, step: int, similarity: dict[int, float]) -> None:
        self.skipped = least_important_layers(similarity, self.skip_count, self.num_layers,
                                              self.cfg.protect_first_last)
        c = self.counters
        c.rankings += 1
        c.ranking_steps.append(step)
        c.skip_sets.append((step, list(self.skipped)))
        self.last_similarity = dict(similarity)

    @torch.no_grad()
    def _scout_similarity(self) -> dict[int, float]:
        """Full-depth forward of the prompt without its image tokens; last-token similarity per layer."""
        model, inputs = self.bundle.model, self.inputs
        ids = inputs.input_ids
        L = ids.shape[1]
        device = ids.device
        pos = torch.arange(L, device=device)
        keep = pos[(pos < self.image_start) | (pos >= self.image_start + self.image_count)]
        embeds = model.showo.model.embed_tokens(ids[:, keep])
        c = model.time_conditioning(torch.ones(1, device=device))
        embeds[:, inputs.time_offset] = model.time_token(c).to(embeds.dtype)  # time token (before the image)
        start, length = inputs.attention_block
        offsets = torch.tensor([start], device=device)
        mask = omni_attention_mask(L, offsets, length, model.dtype)[:, :, keep][:, :, :, keep]
        probe = LastTokenSimilarityProbe()
        model.run_backbone(embeds, keep[None], mask, ExecutionPlan(ffn_ranges=self.ffn_ranges, probe=probe))
        return probe.similarity

    def stats(self) -> dict:
        c = self.counters
        kept_image = self.image_count if self.selector is None else self.selector.keep
        steps = c.skipped_per_step
        return {
            "policy": self.name,
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
            "prefill_skip_source": self.prefill_skip_source,
            "skipped_layers_fill_kv": self.cfg.fill_skipped_kv,
            "layer_rankings": c.rankings,
            "ranking_steps": list(c.ranking_steps),
            "skip_sets": [(s, list(layers)) for s, layers in c.skip_sets],
            "decode_steps": c.decode_steps,
            "full_depth_decode_steps": sum(1 for s in c.ranking_steps if s >= 1),
            "layers_skipped_per_step": list(steps),
            "mean_layers_skipped_per_step": (sum(steps) / len(steps)) if steps else 0.0,
        }


@dataclass
class FlashUUnderstandingPolicy:
    """Implements ``UnderstandingPolicy``: one :class:`FlashUUnderstandingSession` per answer.

    ``calibrated_similarity``: per-layer last-token similarity from understanding calibration, the prefill's skip
    set when ``skip_in_prefill`` (``None``: a scout pass ranks the layers instead)."""

    config: UnderstandingAccelConfig
    ffn_ranges: list | None
    name: str = "flashu"
    calibrated_similarity: list[float] | None = None

    def __post_init__(self):
        self.config.validate()

    def start(self, bundle, inputs) -> FlashUUnderstandingSession:
        return FlashUUnderstandingSession(self.config, bundle, inputs, self.ffn_ranges, name=self.name,
                                          calibrated_similarity=self.calibrated_similarity)
