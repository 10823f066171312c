"""The visual side of Show-o2: the SigLIP understanding branch (with its interpolated position table), the generation
patch embed and their fusion into the LLM's image tokens. A mixin of :class:`~flashu.model.showo2.Showo2`, whose
modules (official names) it reads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.profiler import record_function


def resize_position_table(table: torch.Tensor, grid: int, new_grid: int) -> torch.Tensor:
    """A ``grid``×``grid`` position table [grid², H] resized to ``new_grid``² (bicubic, in the table's dtype, as the
    official ``interpolate_pos_encoding``)."""
    square = table.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)


class VisualBranches:
    def position_table(self, grid: int) -> torch.Tensor:
        """SigLIP position embeddings for a ``grid``×``grid`` token grid (bicubic-interpolated if needed)."""
        g0 = self.config.vision.position_grid
        table = self.position_embedding(torch.arange(g0 * g0, device=self.device))
        return table if grid == g0 else resize_position_table(table, g0, grid)

    def semantic_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """The understanding branch: patch embed + position table + SigLIP layers (no post-LN)."""
        grid = latents.shape[-1] // self.config.patch_size
        x = self.image_embedder_und(latents) + self.position_table(grid)
        heads = self.config.vision.num_heads
        for layer in self.und_trans.layers:
            attn = layer.self_attn
            h = layer.layer_norm1(x)
            B, L, _ = h.shape
            q = attn.q_proj(h).view(B, L, heads, -1).transpose(1, 2)
            k = attn.k_proj(h).view(B, L, heads, -1).transpose(1, 2)
            v = attn.v_proj(h).view(B, L, heads, -1).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, -1)
            x = x + attn.out_proj(o)
            h = layer.layer_norm2(x)
            x = x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(h), approximate="tanh"))
        return x

    def image_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """Fused image embeddings [B, N, H] placed into the LLM sequence (both branches + fusion)."""
        latents = latents.to(self.dtype)
        und = self.semantic_tokens(latents)
        gen = self.image_embedder_gen(latents)
        return self.fusion_proj(torch.cat([und, gen], dim=-1))

    def visual_tokens(self, latents: torch.Tensor) -> torch.Tensor:
        """:meth:`image_tokens`, labelled for the profiler (outside any compiled region)."""
        with record_function("flashu.visual"):
            return self.image_tokens(latents)
