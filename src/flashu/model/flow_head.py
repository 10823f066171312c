"""The flow head of Show-o2: time conditioning, the adaLN blocks over the LLM's outputs and the final layer that
turns the image block's features into a velocity. A mixin of :class:`~flashu.model.showo2.Showo2`, whose modules
(official names) it reads."""

from __future__ import annotations

import torch

from .layers import apply_rope, attention, modulate, rope_tables, swiglu


class FlowHead:
    def time_conditioning(self, t: torch.Tensor) -> torch.Tensor:
        """adaLN conditioning ``c`` [B, D] from raw t ∈ [0, 1]."""
        return self.time_embed(t.reshape(-1), self.dtype)

    def time_token(self, c: torch.Tensor) -> torch.Tensor:
        return self.time_embed_proj(c) if hasattr(self, "time_embed_proj") else c

    def run_head_blocks(self, hidden: torch.Tensor, c: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                        block_offsets: torch.Tensor, block_len: int, *, prefix: list | None = None,
                        capture: list | None = None) -> torch.Tensor:
        """``diff_proj`` + the adaLN blocks over the given positions (``block_offsets``/``block_len`` say which are
        the image block, relative to ``hidden``); returns the features [B, L, D]. ``prefix``: per block, the
        (keys, values) of earlier positions to attend first; ``capture``: a list receiving each block's
        (keys, values)."""
        head = self.config.head
        x = self.diff_proj(hidden) if hasattr(self, "diff_proj") else hidden
        B, L, _ = x.shape
        pos = torch.arange(L, device=x.device)
        inside = ((pos[None] >= block_offsets[:, None]) & (pos[None] < block_offsets[:, None] + block_len))[..., None]
        inside_f = inside.to(x.dtype)
        cos, sin = rope_tables(self.head_inv_freq, positions, x.dtype)
        for n, block in enumerate(self.diffusion_head_a):
            mods = block.adaLN_modulation(c)[:, None].chunk(6, dim=-1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
            attn = block.self_attn
            # Only image-block positions are modulated; elsewhere shift = scale = 0 and gate = 1 (exactly).
            h = modulate(block.input_layernorm(x), inside_f * shift_msa, inside_f * scale_msa)
            q = attn.q_norm(attn.q_proj(h).view(B, L, head.num_heads, head.head_dim)).transpose(1, 2)
            k = attn.k_norm(attn.k_proj(h).view(B, L, head.num_kv_heads, head.head_dim)).transpose(1, 2)
            v = attn.v_proj(h).view(B, L, head.num_kv_heads, head.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if capture is not None:
                capture.append((k, v))
            if prefix is not None:
                k, v = torch.cat([prefix[n][0], k], dim=2), torch.cat([prefix[n][1], v], dim=2)
            o = attn.o_proj(attention(q, k, v, mask).transpose(1, 2).reshape(B, L, -1))
            x = x + torch.where(inside, gate_msa.to(x.dtype), 1) * o
            h = modulate(block.post_attention_layernorm(x), inside_f * shift_mlp, inside_f * scale_mlp)
            x = x + torch.where(inside, gate_mlp.to(x.dtype), 1) * swiglu(block.mlp, h)
        return x

    def velocity_from_features(self, block_features: torch.Tensor, c: torch.Tensor, grid: int) -> torch.Tensor:
        """Final adaLN layer on the image tokens (time token dropped) + the official plain-reshape unpatchify."""
        tokens = self.diffusion_head_b(block_features[:, 1:], c)
        return unpatchify(tokens, grid, self.config.patch_size, self.config.latent_channels)



def unpatchify(tokens: torch.Tensor, grid: int, patch: int, channels: int) -> torch.Tensor:
    """Show-o2's unpatchify: a plain reshape, *not* the DiT permute.

    Token k's ``patch²·C`` outputs are ``patch²`` consecutive raster-order latent pixels (channel fastest), i.e.
    pixels ``patch²·k … patch²·k + patch² − 1`` of the row-major latent — the layout the weights were trained on.
    """
    B = tokens.shape[0]
    side = grid * patch
    return tokens.reshape(B, side * side, channels).transpose(1, 2).reshape(B, channels, side, side)


def patchify_targets(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """Inverse of :func:`unpatchify` (the training-label layout): [B, C, h, w] → [B, N, patch²·C]."""
    B, C, H, W = latents.shape
    return latents.reshape(B, C, H * W).transpose(1, 2).reshape(B, (H * W) // (patch * patch), patch * patch * C)
