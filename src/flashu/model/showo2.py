"""Show-o2 in PyTorch, with the official parameter names, executed under an explicit :class:`ExecutionPlan`.

The modules are parameter containers (transformers' ``Qwen2ForCausalLM`` and ``SiglipEncoder`` give the exact
official key names); the forward passes below are ours, so that a plan can choose layers, FFN neuron ranges,
kept positions and reused head features without patching anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from ..config import Showo2Config
from ..errors import ConfigError
from .cache import KVCache, PrefixEntry, additive_mask, omni_attention_mask
from .layers import (
    FinalLayer, FP32LayerNorm, LinearKernels, ModulatedAttentionBlock, PatchEmbed, RMSNorm, TimestepEmbedder,
    apply_rope, attention, default_inv_freq, linear, llama3_inv_freq, rope_tables, swiglu,
)
from .flow_head import FlowHead
from .plan import BASELINE, ExecutionPlan
from .visual import VisualBranches


@dataclass
class BackboneOutput:
    hidden: torch.Tensor  # post-norm final states [B, L', H] (L' < L after token pruning)
    logits: torch.Tensor | None
    positions: torch.Tensor  # positions of the surviving rows [B, L']
    # per decoder layer, mean cos(input, output) over the tokens ``plan.similarity`` chose (NaN: not executed)
    similarity: torch.Tensor | None = None


@dataclass
class GenerationInputs:
    """One batch of text-to-image rows (CFG rows included): token ids with placeholders for the image block."""

    input_ids: torch.Tensor  # [B, L]
    block_offsets: torch.Tensor  # [B] index of the time token
    block_len: int  # 1 time token + image tokens
    mask: torch.Tensor  # [B, 1, L, L] additive

    @property
    def used_length(self) -> int:
        """Positions up to the end of the last row's image block; later ones cannot influence any block."""
        return int(self.block_offsets.max()) + self.block_len


UNDERSTANDING_LAYOUTS = ("official", "training")


@dataclass
class UnderstandingInputs:
    """Understanding rows (one image each): token ids with placeholders where the time token and the image tokens go.

    ``layout`` says which positions form the bidirectional attention block (the rest is causal):

    * ``"official"`` — the official ``inference_mmu.py``: the block starts at the first image token and spans
      ``block_len`` positions, i.e. the image tokens and ``<|vision_end|>``; the time token is causal;
    * ``"training"`` — the official training data (``datasets/mmu_dataset.py``): the block is the time token and
      the image tokens.
    """

    input_ids: torch.Tensor  # [B, L]
    time_offset: int  # index of the time token; the image tokens follow it
    block_len: int  # 1 time token + image tokens
    latents: torch.Tensor  # [B, C, h, w]
    layout: str = "official"

    def __post_init__(self) -> None:
        if self.layout not in UNDERSTANDING_LAYOUTS:
            raise ConfigError(f"unknown understanding layout {self.layout!r}; use one of {UNDERSTANDING_LAYOUTS}")

    @property
    def image_start(self) -> int:
        return self.time_offset + 1

    @property
    def image_count(self) -> int:
        return self.block_len - 1

    @property
    def attention_block(self) -> tuple[int, int]:
        """``(start, length)`` of the bidirectional block."""
        start = self.time_offset + 1 if self.layout == "official" else self.time_offset
        return start, self.block_len


@dataclass
class GenerationOutput:
    velocity: torch.Tensor  # [B, C, h, w] (unguided, per row)
    head_features: torch.Tensor  # flow-head block outputs at the image-block positions [B, block_len, D]
    backbone: BackboneOutput | None  # None when the backbone did not run
    prefix: PrefixEntry | None = None  # the text prefix's keys/values this forward computed (prefix reuse), to keep


class Showo2(VisualBranches, FlowHead, nn.Module):
    """The Show-o2 network (``Showo2Qwen2_5``). Build from a :class:`Showo2Config` alone."""

    def __init__(self, config: Showo2Config):
        super().__init__()
        from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoder

        config.validate()
        self.config = config
        llm, vis, head = config.llm, config.vision, config.head
        qwen = Qwen2Config(
            vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
            num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
            num_key_value_heads=llm.num_kv_heads, head_dim=llm.head_dim, rms_norm_eps=llm.rms_norm_eps,
            tie_word_embeddings=llm.tie_word_embeddings, rope_theta=llm.rope_theta,
        )
        self.showo = Qwen2ForCausalLM(qwen)
        C, p = config.latent_channels, config.patch_size
        self.image_embedder_und = PatchEmbed(C, vis.hidden_size, p)
        self.image_embedder_gen = PatchEmbed(C, llm.hidden_size, p)
        self.position_embedding = nn.Embedding(vis.position_grid ** 2, vis.hidden_size)
        self.und_trans = SiglipEncoder(SiglipVisionConfig(
            hidden_size=vis.hidden_size, intermediate_size=vis.intermediate_size, num_hidden_layers=vis.num_layers,
            num_attention_heads=vis.num_heads, layer_norm_eps=vis.layer_norm_eps, hidden_act="gelu_pytorch_tanh",
        ))
        for layer in self.und_trans.layers:  # the vendored SigLIP LayerNorm computes in fp32 (same parameters)
            layer.layer_norm1.__class__ = layer.layer_norm2.__class__ = FP32LayerNorm
        fused = vis.hidden_size + llm.hidden_size
        self.fusion_proj = nn.Sequential(
            RMSNorm(fused, 1e-6), nn.Linear(fused, llm.hidden_size), nn.GELU(), nn.Linear(llm.hidden_size, llm.hidden_size)
        )
        D = head.hidden_size
        self.time_embed = TimestepEmbedder(D, head.time_frequency_dim)
        if llm.hidden_size != D:  # upstream only has the projections when the widths differ
            self.time_embed_proj = nn.Linear(D, llm.hidden_size)
            self.diff_proj = nn.Sequential(nn.Linear(llm.hidden_size, D), nn.GELU(), nn.Linear(D, D))
        self.diffusion_head_a = nn.ModuleList([
            ModulatedAttentionBlock(D, head.num_heads, head.num_kv_heads, head.head_dim, head.intermediate_size,
                                    head.block_norm_eps, head.qk_norm_eps)
            for _ in range(head.num_layers)
        ])
        self.diffusion_head_b = FinalLayer(D, config.patch_dim, head.final_norm_eps)
        self.register_buffer("llm_inv_freq", torch.empty(llm.head_dim // 2), persistent=False)
        self.register_buffer("head_inv_freq", torch.empty(head.head_dim // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the non-persistent rotary tables, e.g. after ``to_empty`` when loading from the meta device."""
        llm, head = self.config.llm, self.config.head
        if self.llm_inv_freq.is_meta:
            return
        with torch.device("cpu"):
            llm_freq = default_inv_freq(llm.head_dim, llm.rope_theta)
            head_freq = llama3_inv_freq(head.head_dim, head.rope_theta, head.rope_factor, head.rope_low_freq_factor,
                                        head.rope_high_freq_factor, head.rope_original_max_position)
        self.llm_inv_freq = llm_freq.to(self.llm_inv_freq.device)
        self.head_inv_freq = head_freq.to(self.head_inv_freq.device)

    # ------------------------------------------------------------------ helpers
    @property
    def layers(self) -> nn.ModuleList:
        return self.showo.model.layers

    @property
    def dtype(self) -> torch.dtype:
        return self.showo.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the forward runs: the embeddings' device, or the execution device of an offload hook (whose
        weights wait on the meta device between calls)."""
        embed = self.showo.model.embed_tokens
        if embed.weight.device.type == "meta":
            hook = getattr(embed, "_hf_hook", None)
            device = getattr(hook, "execution_device", None)
            if device is not None:
                return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        return embed.weight.device

    # the forward pieces ``flashu.compile`` may replace with compiled versions of themselves
    COMPILABLE = ("image_tokens", "run_backbone", "run_head_blocks", "velocity_from_features")

    def use_compiled(self, pieces: Mapping[str, Callable] | None) -> None:
        """Run ``pieces`` (compiled versions of :attr:`COMPILABLE` methods) in their place; ``None``: the eager
        methods again. An instance attribute shadows the method, so every caller, inside the model too, gets it."""
        for name in self.COMPILABLE:
            self.__dict__.pop(name, None)
        for name, fn in (pieces or {}).items():
            if name not in self.COMPILABLE:
                raise ValueError(f"{name!r} is not a compilable piece of the model ({', '.join(self.COMPILABLE)})")
            self.__dict__[name] = fn

    def tie_weights_if_needed(self) -> None:
        if self.config.llm.tie_word_embeddings:
            self.showo.lm_head.weight = self.showo.model.embed_tokens.weight

    @torch.no_grad()
    def init_random_weights(self, seed: int = 0, std: float = 0.02) -> None:
        """Seeded random weights for the random presets: every linear/conv/embedding ~ N(0, std²), norms at 1.

        Unlike upstream's zero-init of adaLN and the output layer (a training choice), this gives a network whose
        outputs depend on every component, which is what tests and speed measurements need.
        """
        gen = torch.Generator().manual_seed(seed)
        for name, param in self.named_parameters():
            if param.ndim == 1 and ("norm" in name or "layer_norm" in name or name.endswith("_norm.weight")):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * std)
        # layer norm biases back to zero (SigLIP LayerNorm has weight and bias)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                module.bias.zero_()
        self.tie_weights_if_needed()

    def place_image_block(self, embeds: torch.Tensor, block_offsets: torch.Tensor, time_token: torch.Tensor,
                          image_tokens: torch.Tensor) -> torch.Tensor:
        """Write [time token, image tokens] into ``embeds`` at each row's block offset."""
        block = torch.cat([time_token[:, None].to(embeds.dtype), image_tokens.to(embeds.dtype)], dim=1)
        index = block_offsets[:, None] + torch.arange(block.shape[1], device=embeds.device)
        return embeds.scatter(1, index[..., None].expand(-1, -1, embeds.shape[-1]), block)

    # ------------------------------------------------------------------ LLM backbone
    def run_backbone(self, embeds: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                     plan: ExecutionPlan = BASELINE, cache: KVCache | None = None,
                     prefix: KVCache | None = None, image_block: torch.Tensor | None = None) -> BackboneOutput:
        """The Qwen2 decoder under ``plan``.

        ``mask``: additive [B, 1, L, L] over the new positions (the prefill's omni mask); ``None`` with a ``cache``:
        the new positions see the whole cache and, causally, each other (decoding); ``None`` without a cache: full
        attention. With ``cache``, each executed layer writes its new keys/values into it. ``prefix``: keys/values of
        earlier positions computed once (text-to-image prefix reuse), attended before the new ones; ``mask`` then
        spans [prefix slots, new positions].

        The baseline plan runs every layer through its modules (``layer.mlp.gate_proj(x)``…), so hooks that
        offload or dispatch weights see every call; a plan with neuron or head ranges slices the weights instead.
        """
        cfg = self.config.llm
        cos, sin = rope_tables(self.llm_inv_freq, positions, embeds.dtype)
        x = embeds
        probe, selector = plan.probe, plan.token_selector
        selected = selector is None
        executed = range(cfg.num_layers) if plan.layers is None else plan.layers
        fill = ()
        if plan.fill_skipped_kv and cache is not None and plan.layers is not None:
            fill = sorted(set(range(cfg.num_layers)) - set(plan.layers))
        similarity, scope = None, plan.similarity
        if scope is not None:
            similarity = torch.full((cfg.num_layers,), float("nan"), device=x.device)
            if scope == "image":
                if image_block is None:
                    raise ValueError("similarity over the image block needs image_block (the block's positions)")
                scope = image_block
        if cache is not None:
            cache.reserve(x.shape[1])
        for i in sorted(set(executed) | set(fill)):
            layer = self.layers[i]
            if i in fill:
                self._write_skipped_kv(i, x, cos, sin, plan, cache)
                continue
            x_in = x
            h = layer.input_layernorm(x)
            if probe is not None and probe.wants_linear_inputs:
                probe.linear_inputs(i, "qkv", h)
            q, k, v = self._qkv(layer.self_attn, h, cos, sin, plan.attention_range(i), plan.linears)
            if not selected and i >= selector.layer:
                keep = selector.select(v, k, x, q if getattr(selector, "needs_queries", False) else None)
                selected = True
                x, x_in, q, k, v, cos, sin, positions, mask = _gather_positions(
                    keep, x, x_in, q, k, v, cos, sin, positions, mask)
            layer_mask = mask
            if prefix is not None:
                k = torch.cat([prefix.keys[i][:, :, :prefix.capacity], k], dim=2)
                v = torch.cat([prefix.values[i][:, :, :prefix.capacity], v], dim=2)
            if cache is not None:
                start = cache.write(i, k, v)
                if mask is None:  # decoding: attend to the cache
                    k, v, width = cache.span(i)
                    layer_mask = cache.attend_mask(start, q.shape[2], width, q.dtype)
            B, n = q.shape[0], q.shape[2]
            o = attention(q, k, v, layer_mask).transpose(1, 2).reshape(B, n, -1)
            if probe is not None and probe.wants_linear_inputs:
                probe.linear_inputs(i, "o", o)
            x = x + self._o_proj(layer.self_attn, o, plan.attention_range(i), plan.linears)
            h = layer.post_attention_layernorm(x)
            hook = None
            if probe is not None and probe.wants_linear_inputs:
                probe.linear_inputs(i, "gate_up", h)
                hook = lambda act, i=i: probe.linear_inputs(i, "down", act)  # noqa: E731
            x = x + swiglu(layer.mlp, h, plan.ffn_range(i), hook, plan.linears)
            if similarity is not None:
                similarity[i] = _mean_cosine(x_in, x, scope)
            if probe is not None:
                probe.layer_io(i, x_in, x)
        hidden = self.showo.model.norm(x)
        logits = None
        if plan.logits == "last":
            logits = self.showo.lm_head(hidden[:, -1:])
        elif plan.logits == "all":
            logits = self.showo.lm_head(hidden)
        return BackboneOutput(hidden=hidden, logits=logits, positions=positions, similarity=similarity)

    def _qkv(self, attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             groups: tuple[int, int] | None, kernels: LinearKernels | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys (both after RoPE) and values [B, heads, L, d] of one decoder layer (the KV-group range
        ``groups`` only, if given)."""
        B, L, _ = h.shape
        d = self.config.llm.head_dim
        q_rows, kv_rows = _group_rows(groups, self.config.llm)
        q = linear(attn.q_proj, h, q_rows, kernels=kernels)
        k, v = linear(attn.k_proj, h, kv_rows, kernels=kernels), linear(attn.v_proj, h, kv_rows, kernels=kernels)
        q = apply_rope(q.view(B, L, -1, d).transpose(1, 2), cos, sin)
        k = apply_rope(k.view(B, L, -1, d).transpose(1, 2), cos, sin)
        return q, k, v.view(B, L, -1, d).transpose(1, 2)

    def _o_proj(self, attn: nn.Module, o: torch.Tensor, groups: tuple[int, int] | None,
                kernels: LinearKernels | None = None) -> torch.Tensor:
        return linear(attn.o_proj, o, cols=_group_rows(groups, self.config.llm)[0], kernels=kernels)

    def _write_skipped_kv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, plan: ExecutionPlan,
                          cache: KVCache) -> None:
        """Keys/values of skipped layer ``i`` from its input ``x``, written to ``cache`` (``fill_skipped_kv``): the
        exact keys/values the layer would have made from that input."""
        layer = self.layers[i]
        h = layer.input_layernorm(x)
        B, L, _ = h.shape
        d = self.config.llm.head_dim
        kv_rows = _group_rows(plan.attention_range(i), self.config.llm)[1]
        k = linear(layer.self_attn.k_proj, h, kv_rows, kernels=plan.linears)
        v = linear(layer.self_attn.v_proj, h, kv_rows, kernels=plan.linears)
        k = apply_rope(k.view(B, L, -1, d).transpose(1, 2), cos, sin)
        cache.write(i, k, v.view(B, L, -1, d).transpose(1, 2))

    # ------------------------------------------------------------------ one text-to-image evaluation
    def forward_generation(self, latents: torch.Tensor, t: torch.Tensor, inputs: GenerationInputs,
                           plan: ExecutionPlan = BASELINE) -> GenerationOutput:
        """One denoising evaluation: v(x_t, t) for every row (CFG rows are ordinary rows here).

        ``plan.share_cfg_visual``: the rows are [conditional; unconditional] with the same x_t, so the visual
        branches run on the first half and their output is used for both (exact: it is the same function)."""
        grid = latents.shape[-1] // self.config.patch_size
        c = self.time_conditioning(t)
        backbone, computed = None, None
        features = plan.head_features
        if features is None or plan.recompute_backbone:
            if plan.share_cfg_visual:
                image_tokens = self.visual_tokens(latents[: latents.shape[0] // 2]).repeat(2, 1, 1)
            else:
                image_tokens = self.visual_tokens(latents)
            if plan.prefix_reuse:
                prefix = plan.prefix if plan.prefix is not None else self._text_prefix(inputs, plan)
                computed = prefix if plan.prefix is None else None
                backbone, block_features = self._generation_after_prefix(image_tokens, c, inputs, plan, prefix)
            else:
                backbone, block_features = self._generation_full(image_tokens, c, inputs, plan)
            features = block_features if features is None else features
        with record_function("flashu.flow_head"):
            velocity = self.velocity_from_features(features, c, grid)
        return GenerationOutput(velocity=velocity, head_features=features, backbone=backbone, prefix=computed)

    def _generation_full(self, image_tokens, c, inputs: GenerationInputs, plan: ExecutionPlan):
        """The whole sequence (up to ``keep_positions``) through the backbone and the head blocks."""
        length = inputs.input_ids.shape[1] if plan.keep_positions is None else plan.keep_positions
        ids = inputs.input_ids[:, :length]
        mask = inputs.mask[..., :length, :length]
        embeds = self.place_image_block(self.showo.model.embed_tokens(ids), inputs.block_offsets, self.time_token(c),
                                        image_tokens)
        positions = torch.arange(length, device=ids.device).expand(ids.shape[0], -1)
        block = _block_mask(length, inputs.block_offsets, inputs.block_len) if plan.similarity == "image" else None
        with record_function("flashu.llm"):
            backbone = self.run_backbone(embeds, positions, mask, plan, image_block=block)
        if plan.head_features is not None:
            return backbone, None
        with record_function("flashu.flow_head"):
            full = self.run_head_blocks(backbone.hidden, c, positions, mask, inputs.block_offsets, inputs.block_len)
        index = inputs.block_offsets[:, None] + torch.arange(inputs.block_len, device=full.device)
        return backbone, full.gather(1, index[..., None].expand(-1, -1, full.shape[-1]))

    def _generation_after_prefix(self, image_tokens, c, inputs: GenerationInputs, plan: ExecutionPlan,
                                 prefix: PrefixEntry):
        """Only the image-block positions, attending to the text prefix's keys/values ``prefix``.

        Every position before a row's block is causal text that never sees the image, in the LLM and in the head
        (whose adaLN is the identity outside the block): its keys/values are the same at every evaluation, so
        they are computed once per distinct backbone configuration (layers, FFN and head ranges) and reused."""
        offsets, n = inputs.block_offsets, inputs.block_len
        B = offsets.shape[0]
        embeds = torch.cat([self.time_token(c)[:, None].to(image_tokens.dtype), image_tokens], dim=1)
        positions = offsets[:, None] + torch.arange(n, device=offsets.device)
        slots = torch.arange(prefix.length + n, device=offsets.device)
        allowed = (slots[None, :] < offsets[:, None]) | (slots[None, :] >= prefix.length)  # [B, P + n]
        mask = additive_mask(allowed[:, None, None, :].expand(B, 1, n, -1), embeds.dtype)
        if plan.similarity == "image":
            plan = plan.with_(similarity="all")  # every position here is an image-block position
        with record_function("flashu.llm"):
            backbone = self.run_backbone(embeds, positions, mask, plan, prefix=prefix.llm)
        if plan.head_features is not None:
            return backbone, None
        with record_function("flashu.flow_head"):
            features = self.run_head_blocks(backbone.hidden, c, positions, mask, torch.zeros_like(offsets), n,
                                            prefix=prefix.head)
        return backbone, features

    def _text_prefix(self, inputs: GenerationInputs, plan: ExecutionPlan) -> PrefixEntry:
        """The text prefix's keys/values under ``plan``'s backbone configuration: the positions before the last
        row's block, every row causal (a shorter row's extra positions are masked out when used)."""
        P = int(inputs.block_offsets.max())
        ids = inputs.input_ids[:, :P]
        B = ids.shape[0]
        positions = torch.arange(P, device=ids.device).expand(B, -1)
        allowed = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        embeds = self.showo.model.embed_tokens(ids)
        mask = additive_mask(allowed[None, None], embeds.dtype)
        llm = KVCache.for_model(self, B, P)
        only = ExecutionPlan(layers=plan.layers, ffn_ranges=plan.ffn_ranges, attention_ranges=plan.attention_ranges,
                             linears=plan.linears)
        with record_function("flashu.llm"):
            hidden = self.run_backbone(embeds, positions, mask, only, cache=llm).hidden
        head: list = []
        c = self.time_conditioning(torch.zeros(B, device=ids.device))  # unused: no prefix position is modulated
        with record_function("flashu.flow_head"):
            self.run_head_blocks(hidden, c, positions, mask, torch.full((B,), P, device=ids.device), 1, capture=head)
        return PrefixEntry(P, llm, head)

    # ------------------------------------------------------------------ understanding
    def understanding_embeddings(self, inputs: UnderstandingInputs) -> torch.Tensor:
        """Token embeddings with the time token (t = 1, a clean image) and the fused image tokens in place."""
        ids = inputs.input_ids
        B = ids.shape[0]
        c = self.time_conditioning(torch.ones(B, device=ids.device))
        embeds = self.showo.model.embed_tokens(ids)
        offsets = torch.full((B,), inputs.time_offset, dtype=torch.long, device=ids.device)
        return self.place_image_block(embeds, offsets, self.time_token(c), self.visual_tokens(inputs.latents))

    def forward_understanding(self, inputs: UnderstandingInputs, plan: ExecutionPlan = BASELINE,
                              cache: KVCache | None = None, *, positions: torch.Tensor | None = None,
                              mask: torch.Tensor | None = None, embeds: torch.Tensor | None = None
                              ) -> BackboneOutput:
        """The understanding prefill: the whole prompt through the backbone with the omni mask of
        ``inputs.layout`` and positions ``0 … L − 1`` (``positions``/``mask`` override both, e.g. for packed
        training rows; ``embeds``: :meth:`understanding_embeddings` computed beforehand). With ``cache`` the
        keys/values are stored for decoding."""
        if embeds is None:
            embeds = self.understanding_embeddings(inputs)
        B, L = embeds.shape[:2]
        if mask is None:
            start, length = inputs.attention_block
            starts = torch.full((B,), start, dtype=torch.long, device=embeds.device)
            mask = omni_attention_mask(L, starts, length, embeds.dtype)
        if positions is None:
            positions = torch.arange(L, device=embeds.device).expand(B, -1)
        with record_function("flashu.llm"):
            return self.run_backbone(embeds, positions, mask, plan, cache)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, plan: ExecutionPlan,
                    cache: KVCache) -> BackboneOutput:
        """One KV-cached decoding step: ``tokens`` [B, n] at ``positions`` [B, n] attend to the cache and, causally,
        to each other (``n`` > 1: several tokens at once, e.g. drafts being verified)."""
        embeds = self.showo.model.embed_tokens(tokens)
        return self.run_backbone(embeds, positions, None, plan, cache)

def _group_rows(groups: tuple[int, int] | None, cfg) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """The q_proj and k/v_proj output rows of the KV-group range ``groups`` (``None``: all groups)."""
    if groups is None:
        return None, None
    g0, g1 = groups
    q_rows = cfg.num_heads // cfg.num_kv_heads * cfg.head_dim
    return (g0 * q_rows, g1 * q_rows), (g0 * cfg.head_dim, g1 * cfg.head_dim)


def _block_mask(length: int, block_offsets: torch.Tensor, block_len: int) -> torch.Tensor:
    """Bool [B, L]: the image-block positions (time token + image tokens) of each row."""
    pos = torch.arange(length, device=block_offsets.device)
    return (pos[None] >= block_offsets[:, None]) & (pos[None] < block_offsets[:, None] + block_len)


def _mean_cosine(a: torch.Tensor, b: torch.Tensor, tokens) -> torch.Tensor:
    """Mean cos(a, b) over positions: ``"all"``, ``"last"`` or a bool mask [B, L] (no data-dependent shapes)."""
    cos = F.cosine_similarity(a.float(), b.float(), dim=-1)  # [B, L]
    if isinstance(tokens, str):
        return cos[:, -1].mean() if tokens == "last" else cos.mean()
    weights = tokens[:, : cos.shape[1]].to(cos.dtype)
    return (cos * weights).sum() / weights.sum()


def _gather_positions(keep, x, x_in, q, k, v, cos, sin, positions, mask):
    """Restrict every per-position tensor to the kept positions [B, n] (visual-token pruning)."""
    def rows(t, dim):
        shape = [1] * t.ndim
        shape[0], shape[dim] = keep.shape[0], keep.shape[1]
        idx = keep.view(shape).expand(*[s if d != dim else keep.shape[1] for d, s in enumerate(t.shape)])
        return t.gather(dim, idx)
    x, x_in = rows(x, 1), rows(x_in, 1)
    q, k, v = rows(q, 2), rows(k, 2), rows(v, 2)
    cos, sin, positions = rows(cos, 1), rows(sin, 1), rows(positions, 1)
    if mask is not None:
        mask = rows(rows(mask, 2), 3)
    return x, x_in, q, k, v, cos, sin, positions, mask
