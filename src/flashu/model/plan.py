"""The explicit per-call execution plan.

Model code executes, acceleration code decides: every forward of the backbone and the flow head takes an
:class:`ExecutionPlan` saying which decoder layers run, how much of each FFN runs, whether the flow-head block
features are recomputed or supplied, which sequence positions survive and whether logits are needed. The default
plan is the exact baseline; accelerated runs go through the same code with a different plan.

Observers (:class:`Probe`) and token selectors (:class:`TokenSelector`) are how calibration, layer-importance
measurement and visual-token pruning see inside a forward without patching it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, Sequence

import torch

from .cache import PrefixEntry
from .layers import LinearKernels

LogitsMode = Literal["none", "last", "all"]
SimilarityScope = Literal["all", "last", "image"]


class Probe:
    """Observer of a backbone forward. Override what you need; every hook is a no-op by default.

    Hooks receive tensors that are in use by the forward: do not modify them in place.
    """

    wants_linear_inputs: bool = False

    def layer_io(self, layer: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        """Called after each executed decoder layer with its input and output residual streams [B, L, H]."""

    def linear_inputs(self, layer: int, name: str, x: torch.Tensor) -> None:
        """Called (when ``wants_linear_inputs``) with the input of each linear map of a decoder layer.

        ``name`` is one of ``qkv`` (input of q/k/v_proj), ``o`` (input of o_proj), ``gate_up`` (input of
        gate/up_proj) and ``down`` (the intermediate activation, input of down_proj).
        """


class ProbeGroup(Probe):
    """Several probes observing one forward (each sees only the hooks it asked for)."""

    def __init__(self, *probes: Probe):
        self.probes = probes
        self.wants_linear_inputs = any(p.wants_linear_inputs for p in probes)

    def layer_io(self, layer: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> None:
        for p in self.probes:
            p.layer_io(layer, hidden_in, hidden_out)

    def linear_inputs(self, layer: int, name: str, x: torch.Tensor) -> None:
        for p in self.probes:
            if p.wants_linear_inputs:
                p.linear_inputs(layer, name, x)


class TokenSelector(Protocol):
    """Drops sequence positions once, inside the backbone (visual-token pruning).

    At decoder layer ``layer`` the model computes the keys and values of all positions, then calls
    :meth:`select` and continues, from that layer on, with the returned positions only.
    """

    layer: int

    def select(self, values: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor,
               queries: torch.Tensor | None) -> torch.Tensor:
        """``values``/``keys``: [B, kv_heads, L, head_dim]; ``hidden``: [B, L, H]; ``queries`` only when
        ``needs_queries``. Returns sorted kept positions [B, L_kept] (same count for every row)."""
        ...


@dataclass(frozen=True)
class ExecutionPlan:
    """What one forward computes. The default is the exact baseline.

    Attributes:
        layers: decoder layers to run, in order (``None``: all). A layer not listed is an identity.
        ffn_ranges: per decoder layer, the FFN neuron range ``(start, stop)`` that runs (``None`` or a ``None``
            entry: the full FFN). Ranges are contiguous so a pruned FFN is a slice of the full weights.
        attention_ranges: per decoder layer, the range of GQA KV groups that run (with their query heads).
        head_features: flow-head block outputs to reuse, [B, block_len, D] at the image-block positions
            (``None``: recompute them). The final layer always runs with the current time step.
        recompute_backbone: when ``head_features`` is supplied, whether the backbone still runs (its output then
            only serves measurements). ``False`` skips the SigLIP branch, fusion, LLM and flow-head blocks.
        keep_positions: sequence positions [0, n) kept from the start (``None``: all). Used to drop the tail
            after the image block, which cannot influence it.
        token_selector: visual-token pruning inside the backbone.
        logits: which LM logits to compute: none (generation), the last position (prefill) or all.
        fill_skipped_kv: with a KV cache, a layer left out of ``layers`` still appends its keys/values, computed
            from its input (the residual stream it would have read: exactly the keys/values it would have made),
            so that when it runs again later it attends to the whole context. Costs its input norm and the thin
            k/v projections.
        similarity: measure, per executed decoder layer, the mean cos(input, output) over ``"all"`` positions,
            the ``"last"`` one or the ``"image"`` blocks (text-to-image); returned in ``BackboneOutput.similarity``
            (layer skipping ranks layers by it).
        prefix_reuse: text-to-image prefix reuse: only the image-block positions run, attending to the text
            prefix's keys/values — ``prefix`` when given (computed by an earlier forward with the same backbone
            configuration), else computed by this forward and returned in ``GenerationOutput.prefix`` for the
            session to keep. Exact up to float rounding.
        prefix: the text prefix's keys/values to reuse (a :class:`~flashu.model.cache.PrefixEntry`).
        share_cfg_visual: the rows are [conditional; unconditional] with the same latents: run the visual
            branches on the first half only.
        probe: observer of the backbone, for tools (calibration, analysis); deciders read outputs instead.
        linears: other kernels for the decoder's linear maps (quantization; ``None``: the weights as they are).
    """

    layers: Sequence[int] | None = None
    ffn_ranges: Sequence[tuple[int, int] | None] | None = None
    attention_ranges: Sequence[tuple[int, int] | None] | None = None
    head_features: torch.Tensor | None = None
    recompute_backbone: bool = True
    keep_positions: int | None = None
    token_selector: TokenSelector | None = None
    logits: LogitsMode = "none"
    fill_skipped_kv: bool = False
    similarity: SimilarityScope | None = field(default=None, compare=False)
    prefix_reuse: bool = False
    prefix: PrefixEntry | None = field(default=None, compare=False)
    share_cfg_visual: bool = False
    probe: Probe | None = field(default=None, compare=False)
    linears: LinearKernels | None = field(default=None, compare=False)

    def with_(self, **changes) -> "ExecutionPlan":
        return replace(self, **changes)

    def backbone_signature(self) -> tuple:
        """What determines the backbone's function: executed layers, FFN and attention ranges, the kernels."""
        return (id(self.linears) if self.linears is not None else None,
                None if self.layers is None else tuple(self.layers),
                None if self.ffn_ranges is None else tuple(self.ffn_ranges),
                None if self.attention_ranges is None else tuple(self.attention_ranges))

    def ffn_range(self, layer: int) -> tuple[int, int] | None:
        return None if self.ffn_ranges is None else self.ffn_ranges[layer]

    def attention_range(self, layer: int) -> tuple[int, int] | None:
        return None if self.attention_ranges is None else self.attention_ranges[layer]


BASELINE = ExecutionPlan()
