"""Parameter counts of Show-o2 from a :class:`Showo2Config` alone (nothing is built): what memory checks and FLOP
reports need below the model. :func:`parameter_counts` equals ``sum(p.numel())`` of ``Showo2(cfg)`` per component."""

from __future__ import annotations

from .config import Showo2Config


def _llm_layer_params(cfg: Showo2Config) -> int:
    llm = cfg.llm
    H, q, kv = llm.hidden_size, llm.num_heads * llm.head_dim, llm.num_kv_heads * llm.head_dim
    attention = H * q + q + 2 * (H * kv + kv) + q * H  # q/k/v have biases in Qwen2, o_proj has none
    return attention + 3 * H * llm.intermediate_size + 2 * H  # SwiGLU + two RMSNorms


def _siglip_layer_params(cfg: Showo2Config) -> int:
    d, inner = cfg.vision.hidden_size, cfg.vision.intermediate_size
    return 4 * (d * d + d) + 2 * d * inner + inner + d + 4 * d  # q/k/v/out, fc1/fc2, two LayerNorms (w + b)


def _head_block_params(cfg: Showo2Config) -> int:
    h = cfg.head
    D, q, kv = h.hidden_size, h.num_heads * h.head_dim, h.num_kv_heads * h.head_dim
    attention = D * q + 2 * D * kv + q * D + 2 * h.head_dim  # no biases; q_norm/k_norm
    return attention + 3 * D * h.intermediate_size + 2 * D + D * 6 * D + 6 * D  # SwiGLU, norms, adaLN


def has_width_projections(cfg: Showo2Config) -> bool:
    """``time_embed_proj``/``diff_proj`` exist only when the LLM and flow-head widths differ (as upstream)."""
    return cfg.llm.hidden_size != cfg.head.hidden_size


def parameter_counts(cfg: Showo2Config) -> dict[str, int]:
    """Parameters per component, equal to ``sum(p.numel())`` of ``Showo2(cfg)`` grouped by state-dict prefix.

    ``llm_embeddings`` is ``showo.model.embed_tokens``; ``lm_head`` is listed only when untied (a tied head shares
    the embedding tensor and counts once); ``llm_layers`` is the decoder stack plus the final ``model.norm``;
    ``visual_embeds`` is the SigLIP position table plus both patch embeds.
    """
    llm, vis, head = cfg.llm, cfg.vision, cfg.head
    H, D, dv, C, p = llm.hidden_size, head.hidden_size, vis.hidden_size, cfg.latent_channels, cfg.patch_size
    counts = {"llm_embeddings": llm.vocab_size * H}
    if not llm.tie_word_embeddings:
        counts["lm_head"] = llm.vocab_size * H
    counts.update({
        "llm_layers": llm.num_layers * _llm_layer_params(cfg) + H,
        "und_trans": vis.num_layers * _siglip_layer_params(cfg),
        "visual_embeds": vis.position_grid ** 2 * dv + (C * p * p * dv + dv) + (C * p * p * H + H),
        "fusion_proj": (dv + H) + (dv + H) * H + H + H * H + H,  # RMSNorm, Linear, GELU, Linear
        "time_embed": head.time_frequency_dim * D + D + D * D + D,
    })
    if has_width_projections(cfg):
        counts["time_embed_proj"] = D * H + H
        counts["diff_proj"] = H * D + D + D * D + D
    counts["diffusion_head_a"] = head.num_layers * _head_block_params(cfg)
    counts["diffusion_head_b"] = D + D * cfg.patch_dim + cfg.patch_dim + D * 2 * D + 2 * D
    counts["total"] = sum(counts.values())
    return counts
