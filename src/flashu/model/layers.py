"""Small numerical building blocks shared by the backbone, the semantic branch and the flow head."""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 and cast back (Show-o2 / Qwen2 numerics)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back (the vendored SigLIP LayerNorm); same parameters as nn.LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [B, heads, L, d]; ``cos``/``sin`` [B, L, d]."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def rope_tables(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin [B, L, d] for integer ``positions`` [B, L], computed in fp32."""
    freqs = positions.to(torch.float32).unsqueeze(-1) * inv_freq.to(positions.device, torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def llama3_inv_freq(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                    high_freq_factor: float, original_max_position: int) -> torch.Tensor:
    """Inverse frequencies of llama3-scaled RoPE, from transformers' reference implementation."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim, max_position_embeddings=131072,
        rope_parameters=dict(rope_type="llama3", rope_theta=theta, factor=factor, low_freq_factor=low_freq_factor,
                             high_freq_factor=high_freq_factor, original_max_position_embeddings=original_max_position),
    )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    assert scaling == 1.0
    return inv_freq.float()


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of raw t ∈ [0, 1] (no ×1000), cos first, fp32: [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t.reshape(-1, 1).float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x·(1 + scale) + shift`` in fp32, cast back."""
    return (x.float() * (1 + scale.float()) + shift.float()).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with grouped KV heads. q [B, Hq, Lq, d], k/v [B, Hkv, Lk, d]; additive ``mask`` [B, 1, Lq, Lk]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


class PatchEmbed(nn.Module):
    """Conv patchify + flatten to raster-order tokens (key names ``proj.weight``/``proj.bias``)."""

    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, frequency_dim: int):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.frequency_dim).to(dtype))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)


Range = tuple[int, int]


class LinearKernels(Protocol):
    """Another way to compute the decoder's linear maps (quantized kernels, :mod:`flashu.accel.quantization`).

    ``kernels(module, x, rows, cols)`` returns ``F.linear(x, W[rows, cols], b[rows])`` of ``module`` (``None``: the
    whole dimension), computed its own way; the module's weights are never changed. ``compiles``: whether
    ``torch.compile(fullgraph=True)`` can trace it (a compiled model runs the plain weights otherwise).
    """

    compiles: bool

    def __call__(self, module: nn.Linear, x: torch.Tensor, rows: Range | None, cols: Range | None) -> torch.Tensor:
        ...


def linear(module: nn.Linear, x: torch.Tensor, rows: Range | None = None, cols: Range | None = None,
           kernels: LinearKernels | None = None) -> torch.Tensor:
    """``module`` applied to ``x``, restricted to the output ``rows`` and input ``cols`` ranges: through the module
    when whole (hooks that offload or dispatch weights see the call), as weight slices otherwise (never copies), or
    by ``kernels`` when given."""
    if kernels is not None:
        return kernels(module, x, rows, cols)
    if rows is None and cols is None:
        return module(x)
    weight, bias = module.weight, module.bias
    if rows is not None:
        weight = weight[rows[0]:rows[1]]
        bias = None if bias is None else bias[rows[0]:rows[1]]
    if cols is not None:
        weight = weight[:, cols[0]:cols[1]]
    return F.linear(x, weight, bias)


def swiglu(mlp: nn.Module, x: torch.Tensor, neurons: Range | None = None, probe_hook=None,
           kernels: LinearKernels | None = None) -> torch.Tensor:
    """``down(silu(gate(x)) * up(x))``: all neurons, or the contiguous range ``neurons`` (see :func:`linear`)."""
    act = F.silu(linear(mlp.gate_proj, x, neurons, kernels=kernels)) * linear(mlp.up_proj, x, neurons,
                                                                                kernels=kernels)
    if probe_hook is not None:
        probe_hook(act)
    return linear(mlp.down_proj, act, cols=neurons, kernels=kernels)


class FlowHeadAttention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, qk_eps: float):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, qk_eps)
        self.k_norm = RMSNorm(head_dim, qk_eps)


class ModulatedAttentionBlock(nn.Module):
    """One flow-head block (``diffusion_head_a.N``): adaLN-Zero, qk-norm, GQA, llama3 RoPE."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, mlp_dim: int,
                 norm_eps: float, qk_eps: float):
        super().__init__()
        self.self_attn = FlowHeadAttention(dim, heads, kv_heads, head_dim, qk_eps)
        self.mlp = SwiGLU(dim, mlp_dim)
        self.input_layernorm = RMSNorm(dim, norm_eps)
        self.post_attention_layernorm = RMSNorm(dim, norm_eps)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))


class FinalLayer(nn.Module):
    """``diffusion_head_b``: RMSNorm + adaLN (shift, scale) + linear to patch² × channels."""

    def __init__(self, dim: int, out_dim: int, eps: float):
        super().__init__()
        self.norm_final = RMSNorm(dim, eps)
        self.linear = nn.Linear(dim, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` [B, n, D] — image-block positions only (the only modulated and used ones); ``c`` [B, D]."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift[:, None], scale[:, None]))
