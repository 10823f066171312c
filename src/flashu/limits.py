"""Refuse work that cannot fit before allocating it: model weights, generation and understanding activations.

Estimates are deliberately simple upper bounds of the dominant terms (weights; the dense [B, 1, L, L] attention
masks and scores; a few activation tensors of the widest layer) compared with the memory available on the device.
They exist to turn "hours of swapping, then an out-of-memory traceback" into one line, not to plan memory exactly.
"""

from __future__ import annotations

import torch

from .config import Showo2Config
from .errors import FlashuError

HEADROOM = 0.9  # fraction of the available memory an estimate may use


def available_memory(device: torch.device | str) -> int:
    """Free bytes on ``device`` (CUDA: free device memory; otherwise available host memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(what: str, needed: int, device: torch.device | str, hint: str) -> None:
    available = available_memory(device)
    if needed > HEADROOM * available:
        raise FlashuError(f"{what} needs about {_gib(needed)} but only {_gib(available)} is available on "
                          f"{torch.device(device)}; {hint}")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**27 else f"{n / 2**20:.0f} MiB"


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def model_bytes(cfg: Showo2Config, dtype: torch.dtype) -> int:
    """Show-o2's parameters in ``dtype`` plus an upper bound of the VAE's (kept in fp32)."""
    from .sizes import parameter_counts

    return parameter_counts(cfg)["total"] * _elem(dtype) + 4 * vae_parameters_bound(cfg)


def vae_parameters_bound(cfg: Showo2Config) -> int:
    """An upper bound of the Wan VAE's parameters (about twice the real count): every level with the widest
    3×3×3 convolutions, encoder and decoder."""
    v = cfg.vae
    if v.kind == "identity":
        return 0
    widest = v.base_dim * max(v.dim_mult)
    return 2 * len(v.dim_mult) * (2 * v.num_res_blocks + 4) * 27 * widest * widest


def check_model_fits(cfg: Showo2Config, dtype: torch.dtype, device: torch.device | str) -> None:
    check_fits(f"building this model ({cfg.llm.num_layers} decoder layers, hidden size {cfg.llm.hidden_size})",
               model_bytes(cfg, dtype), device, "check the config's dimensions or use a smaller dtype")


def _sequence_bytes(cfg: Showo2Config, rows: int, length: int, dtype: torch.dtype) -> int:
    e = _elem(dtype)
    heads = max(cfg.llm.num_heads, cfg.head.num_heads)
    widest = max(cfg.llm.intermediate_size, cfg.head.intermediate_size, cfg.llm.hidden_size, cfg.head.hidden_size)
    mask = rows * length * length * e
    scores = rows * heads * length * length * 4  # a materialised attention map (math kernel), fp32 worst case
    activations = 8 * rows * length * widest * e
    return mask + scores + activations


def check_generation_fits(cfg: Showo2Config, image_size: int, prompts: int, cfg_rows: int, dtype: torch.dtype,
                          device: torch.device | str) -> None:
    from .layout import generation_length

    grid = image_size // cfg.pixels_per_token
    length = generation_length(cfg, image_size)
    check_fits(f"generating {prompts} image(s) of {image_size} px ({grid * grid} image tokens, sequence {length})",
               _sequence_bytes(cfg, prompts * cfg_rows, length, dtype), device,
               f"use a smaller --size (the model's default is {cfg.image_size}) or fewer prompts at once")


def check_understanding_fits(cfg: Showo2Config, length: int, dtype: torch.dtype, device: torch.device | str) -> None:
    check_fits(f"an understanding prompt of {length} tokens", _sequence_bytes(cfg, 1, length, dtype), device,
               "use a smaller image size or a shorter question")


MAX_POSITIONS = 32768  # Qwen2.5's context (max_position_embeddings of the 1.5B and 7B Instruct models)


def check_answer_fits(cfg: Showo2Config, prompt: int, max_new_tokens: int, dtype: torch.dtype,
                      device: torch.device | str) -> None:
    """A prompt of ``prompt`` positions plus ``max_new_tokens`` decoded ones: within the LLM's context, and a KV
    cache that fits in memory (it is preallocated for the whole answer)."""
    if prompt + max_new_tokens > MAX_POSITIONS:
        raise FlashuError(f"max_new_tokens {max_new_tokens} with a prompt of {prompt} positions exceeds the LLM's "
                          f"context of {MAX_POSITIONS}; use at most {max(MAX_POSITIONS - prompt, 0)} new tokens")
    llm = cfg.llm
    cache = 2 * llm.num_layers * llm.num_kv_heads * llm.head_dim * (prompt + max_new_tokens) * _elem(dtype)
    check_fits(f"a KV cache for {prompt + max_new_tokens} positions", cache, device, "use a smaller max_new_tokens")

