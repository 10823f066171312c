"""Attention masks and the preallocated key/value cache of KV-cached decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where ``allowed``, the dtype's most negative value elsewhere (never −inf: no row is ever empty)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def omni_attention_mask(length: int, block_offsets: torch.Tensor, block_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense additive omni-attention mask [B, 1, L, L]: causal text, each image block bidirectional in itself."""
    pos = torch.arange(length, device=block_offsets.device)
    causal = pos[None, :, None] >= pos[None, None, :]
    inside = (pos[None, :] >= block_offsets[:, None]) & (pos[None, :] < block_offsets[:, None] + block_len)
    allowed = causal | (inside[:, :, None] & inside[:, None, :])
    return additive_mask(allowed[:, None], dtype)


class KVCache:
    """Per-layer key/value buffers preallocated for ``capacity`` slots and written in place (gpt-fast style).

    Keys are stored after RoPE. Each layer has its own fill level (``lengths``, a device tensor, so a decode step
    has static shapes and no host synchronisation): visual-token pruning and layer skipping make layers hold
    different numbers of entries. Slots past a layer's level are masked out. ``snapshot``/``rollback`` set the
    levels back (speculative decoding discards rejected drafts that way: the next write overwrites them).
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str, *, static: bool = False):
        shape = (batch, kv_heads, capacity, head_dim)
        # static: attention always spans every slot (fixed shapes, for compiled decoding); otherwise it spans the
        # slots written so far (a host-side bound, cheaper in eager mode)
        self.static = static
        self.bound = 0
        # one buffer per layer (not one big tensor): a compiled in-place write then touches that layer's buffer only
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(num_layers, dtype=torch.long, device=device)
        self.capacity = capacity
        self._slots = torch.arange(capacity, device=device)

    @classmethod
    def for_model(cls, model, batch: int, capacity: int, *, static: bool = False) -> "KVCache":
        cfg = model.config.llm
        return cls(cfg.num_layers, batch, cfg.num_kv_heads, cfg.head_dim, capacity, model.dtype, model.device,
                   static=static)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Append ``k``/``v`` [B, kv_heads, n, d] to ``layer``; returns the first slot written (0-dim tensor)."""
        start = self.lengths[layer].clone()  # a copy: the in-place update below must not move it
        index = start + self._slots[: k.shape[2]]
        self.keys[layer].index_copy_(2, index, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, index, v.to(self.values[layer].dtype))
        self.lengths[layer] += k.shape[2]
        return start

    def span(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Keys, values and the number of slots attention spans for ``layer``."""
        width = self.capacity if self.static else self.bound
        return self.keys[layer][:, :, :width], self.values[layer][:, :, :width], width

    def attend_mask(self, start: torch.Tensor, n: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask [1, 1, n, width] for ``n`` new entries written at ``start``: each sees every earlier
        slot and, causally, the new ones before it; unwritten slots are masked."""
        allowed = self._slots[None, :width] <= (start + self._slots[:n])[:, None]
        return additive_mask(allowed[None, None], dtype)

    def reserve(self, n: int) -> None:
        """Host-side bookkeeping before ``n`` new entries per layer (eager mode's attention span)."""
        if not self.static:
            self.bound = min(self.capacity, self.bound + n)

    def length(self, layer: int) -> int:
        """Entries held by ``layer`` (a host synchronisation: for tests and statistics)."""
        return int(self.lengths[layer])

    def snapshot(self) -> torch.Tensor:
        return self.lengths.clone()

    def rollback(self, lengths: torch.Tensor) -> None:
        self.lengths.copy_(lengths)


@dataclass
class PrefixEntry:
    """Keys/values of the text prefix (positions ``0 … length − 1``) for one backbone configuration."""

    length: int
    llm: KVCache  # per decoder layer (the executed ones)
    head: list  # per flow-head block: (keys, values)
