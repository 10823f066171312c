"""Visual-token pruning at layer K: score the image tokens, drop the ρ fraction with the highest drop priority.

At the first executed layer ≥ K of the prefill, after q/k/v (+RoPE) are computed for all positions, the model asks
the plan's selector which positions to keep (``ExecutionPlan.token_selector``); only the ``grid²`` image tokens are
candidates (never the time token, never text). Kept positions stay in order with their original positions (RoPE,
mask rows/columns); layers < K keep every token, layers ≥ K and their KV caches hold only kept ones. Selectors are
pure functions of what the layer computed (no state): every scorer works with SDPA/fused kernels except
``attention``, which materialises the rows of the attention map it needs.

* ``vnorm`` (the paper's proxy): ‖v_i‖₂ over all KV heads; **largest norms dropped**;
* ``knorm``: the same on the keys; largest dropped;
* ``random``: a seeded uniform subset (the same for every request of the same image size);
* ``attention`` (FastV-style, eager): the attention each image token receives from the text queries after the
  image block, averaged over heads and those queries; least attended dropped;
* ``query``: the attention from the last prompt position alone (one query row); least attended dropped;
* ``dart``: duplication-aware — a few pivots (largest key norms) kept, the tokens most similar to a pivot dropped.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..model import ExecutionPlan
from .config import UnderstandingAccelConfig
from .technique import RequestContext, Step, Technique


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
        return torch.cat([before, kept_image, after], dim=1)

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


def _attention_logits(queries, keys, first_row: int, scorer: str) -> torch.Tensor:
    """``q·kᵀ/√d`` of the query rows from ``first_row`` on against every key, KV heads repeated for the query heads:
    ``[B, Hq, L − first_row, L]`` in fp32."""
    if queries is None:
        raise ValueError(f"the {scorer} scorer needs the layer's queries")
    d = queries.shape[-1]
    q = queries[:, :, first_row:].float()
    k = keys.float().repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)
    return q @ k.transpose(-1, -2) / math.sqrt(d)


class AttentionSelector(VisualTokenSelector):
    """FastV-style: attention received by each image token at layer K from the text queries after the image block,
    averaged over query heads and those queries; the least attended are dropped. Materialises those rows of the
    attention map explicitly (eager), with the causal mask those rows have under the omni mask."""

    name = "attention"
    needs_queries = True

    def priority(self, values, keys, hidden, queries):
        L = keys.shape[2]
        logits = _attention_logits(queries, keys, self.image_stop, self.name)  # [B, Hq, Nq, L]
        if logits.shape[2] == 0:
            raise ValueError("the attention scorer needs text after the image block")
        rows = torch.arange(self.image_stop, L, device=logits.device)
        allowed = torch.arange(L, device=logits.device)[None, :] <= rows[:, None]  # causal: [Nq, L]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = logits.softmax(dim=-1)
        received = probs[..., self.image_start:self.image_stop].mean(dim=(1, 2))  # [B, N]
        return -received  # least attended first


class LastQuerySelector(VisualTokenSelector):
    """Question-aware and cheap: the attention each image token receives from the **last prompt position** alone
    (the one whose next-token distribution the prefill produces), averaged over query heads: one query row, no map.
    The least attended are dropped."""

    name = "query"
    needs_queries = True

    def priority(self, values, keys, hidden, queries):
        # the last row is causal: it sees everything, no mask needed
        probs = _attention_logits(queries, keys, keys.shape[2] - 1, self.name).softmax(dim=-1)  # [B, Hq, 1, L]
        return -probs[:, :, 0, self.image_start:self.image_stop].mean(dim=1)


class DuplicationSelector(VisualTokenSelector):
    """Duplication-aware (in the spirit of DART, arXiv 2502.11494): a few pivot tokens — the image tokens with the
    largest key norms — are always kept, and the tokens whose keys are most similar (cosine, all KV heads
    concatenated) to some pivot are dropped first: they repeat what a kept token already carries. Uses only K, no
    attention map."""

    name = "dart"
    pivots = 8

    def priority(self, values, keys, hidden, queries):
        k = self._image(keys).float().permute(0, 2, 1, 3).flatten(2)  # [B, N, kv_heads·d]
        k = torch.nn.functional.normalize(k, dim=-1)
        count = min(self.pivots, self.keep)
        pivots = self._image(keys).float().pow(2).sum(dim=(1, 3)).topk(count, dim=1).indices  # [B, P]
        similarity = k @ k.gather(1, pivots[..., None].expand(-1, -1, k.shape[-1])).transpose(1, 2)  # [B, N, P]
        priority = similarity.max(dim=-1).values
        return priority.scatter(1, pivots, float("-inf"))  # pivots are never dropped


SELECTORS = {cls.name: cls for cls in (ValueNormSelector, KeyNormSelector, RandomSelector, AttentionSelector,
                                       LastQuerySelector, DuplicationSelector)}


def make_selector(cfg: UnderstandingAccelConfig, image_start: int, image_count: int) -> VisualTokenSelector | None:
    """The configured selector for one request, or ``None`` when ρ drops no token."""
    keep = cfg.kept_image_tokens(image_count)  # ConfigError when ρ keeps nothing
    if keep == image_count:
        return None
    cls = SELECTORS[cfg.token_scorer]
    if cls is RandomSelector:
        return RandomSelector(cfg.token_prune_layer, image_start, image_count, keep, seed=cfg.seed)
    return cls(cfg.token_prune_layer, image_start, image_count, keep)


class TokenPruning(Technique):
    """Understanding: the prefill's plan carries the configured selector (none when ρ is 0 or drops no token)."""

    name = "token-pruning"

    def __init__(self, cfg: UnderstandingAccelConfig, image_count: int, selector: VisualTokenSelector | None):
        self.cfg = cfg
        self.image_count = image_count
        self.selector = selector

    @classmethod
    def start(cls, ctx: RequestContext) -> "TokenPruning":
        inputs = ctx.inputs
        selector = make_selector(ctx.cfg, inputs.image_start, inputs.image_count) \
            if ctx.cfg.token_prune_ratio > 0 else None
        return cls(ctx.cfg, inputs.image_count, selector)  # always: the kept-token count is in every answer's stats

    def engaged(self) -> bool:
        return self.selector is not None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        return plan.with_(token_selector=self.selector) if step.kind == "prefill" and self.selector else plan

    def stats(self) -> dict:
        return {"image_tokens_kept": self.image_count if self.selector is None else self.selector.keep,
                "token_scorer": None if self.selector is None else self.selector.name,
                "token_prune_layer": None if self.selector is None else self.cfg.token_prune_layer}
