"""Analytic parameter counts and forward FLOPs of Show-o2, from a :class:`Showo2Config` alone.

Nothing here builds a model, so the figures are instant for the 7B as well. Conventions (those of the design
brief, §7):

* FLOPs = 2 × multiply-accumulates of the matmuls and convolutions. Norms, activations, softmax, RoPE, biases and
  other elementwise work are ignored; they are a fraction of a percent here. ``torch.utils.flop_counter`` counts the
  same way, which is what the tests cross-check against.
* Attention is dense: QKᵀ and AV each cost ``2·Lq·Lk·d`` per query head, whatever the mask. That is what SDPA with a
  dense additive mask computes. Grouped KV heads save memory, not FLOPs.
* A "row" is one sequence of the batch; text-to-image with CFG runs 2 rows (conditional + unconditional) per prompt.

Components follow the module tree of ``flashu.model.Showo2`` (state-dict prefixes), see :func:`parameter_counts`.
"""

from __future__ import annotations

from typing import Any

from ..config import Showo2Config

from ..layout import UNDERSTANDING_PREFIX, generation_length, understanding_length  # noqa: F401  (re-exported)
from ..sizes import has_width_projections, parameter_counts  # noqa: F401  (parameter_counts is re-exported)


# ---------------------------------------------------------------------------------------------- FLOP pieces
def _attention(q_len: int, k_len: int, heads: int, head_dim: int) -> int:
    return 2 * (2 * q_len * k_len * head_dim) * heads  # QKᵀ + AV, dense


def _llm_token_macs(cfg: Showo2Config) -> int:
    """Matmul MACs of one token through one decoder layer."""
    llm = cfg.llm
    H, q, kv = llm.hidden_size, llm.num_heads * llm.head_dim, llm.num_kv_heads * llm.head_dim
    return H * (q + 2 * kv) + q * H + 3 * H * llm.intermediate_size


def _head_token_macs(cfg: Showo2Config) -> int:
    h = cfg.head
    D, q, kv = h.hidden_size, h.num_heads * h.head_dim, h.num_kv_heads * h.head_dim
    return D * (q + 2 * kv) + q * D + 3 * D * h.intermediate_size


def _visual(cfg: Showo2Config, n: int) -> int:
    """One row: both patch embeds + the SigLIP layers on ``n`` image tokens (full bidirectional attention)."""
    vis, C, p = cfg.vision, cfg.latent_channels, cfg.patch_size
    d = vis.hidden_size
    patch = 2 * n * C * p * p * (d + cfg.llm.hidden_size)
    layer = 2 * n * (4 * d * d + 2 * d * vis.intermediate_size) + _attention(n, n, vis.num_heads, d // vis.num_heads)
    return patch + vis.num_layers * layer


def _fusion(cfg: Showo2Config, n: int) -> int:
    H, dv = cfg.llm.hidden_size, cfg.vision.hidden_size
    return 2 * n * ((dv + H) * H + H * H)


def _time(cfg: Showo2Config) -> int:
    """One row: timestep MLP (adaLN conditioning) + its projection to the LLM time token."""
    h, H = cfg.head, cfg.llm.hidden_size
    proj = h.hidden_size * H if has_width_projections(cfg) else 0
    return 2 * (h.time_frequency_dim * h.hidden_size + h.hidden_size ** 2 + proj)


def _llm(cfg: Showo2Config, length: int, context: int | None = None) -> tuple[int, int]:
    """One row of ``length`` new tokens attending to ``context`` keys: (linear, attention) FLOPs."""
    llm = cfg.llm
    context = length if context is None else context
    linear = llm.num_layers * 2 * length * _llm_token_macs(cfg)
    return linear, llm.num_layers * _attention(length, context, llm.num_heads, llm.head_dim)


def _total(flops: dict[str, float]) -> dict[str, float]:
    flops["total"] = float(sum(flops.values()))
    return flops


# ---------------------------------------------------------------------------------------------- public FLOPs
def generation_step_flops(cfg: Showo2Config, image_size: int | None = None, cfg_rows: int = 2,
                          logits_positions: int = 0, sequence_length: int | None = None) -> dict[str, float]:
    """Forward FLOPs of one text-to-image denoising evaluation over ``cfg_rows`` rows, by component.

    ``sequence_length`` defaults to the official padded layout (:func:`generation_length`); pass a shorter one
    for a tail-dropped sequence. ``logits_positions``: LM-head positions per row — 0 for ours, the whole sequence
    length for the official forward, which computes (and discards) all logits. ``und_trans`` includes both patch
    embeds. The LLM and the flow-head blocks run over every position, the final layer over the image tokens only.
    """
    grid = cfg.grid_for(image_size or cfg.image_size)
    n = grid * grid
    L = generation_length(cfg, image_size) if sequence_length is None else sequence_length
    if L < n + 1 or cfg_rows < 1 or logits_positions < 0:
        raise ValueError(f"need sequence_length >= {n + 1}, cfg_rows >= 1 and logits_positions >= 0")
    llm, head = cfg.llm, cfg.head
    D = head.hidden_size
    linear, attention = _llm(cfg, L)
    block = 2 * L * _head_token_macs(cfg) + _attention(L, L, head.num_heads, head.head_dim)
    modulation = 2 * D * 6 * D  # adaLN once per row per block (c is per row)
    per_row = {
        "und_trans": _visual(cfg, n),
        "fusion_proj": _fusion(cfg, n),
        "time_embed": _time(cfg),
        "llm_linear": linear,
        "llm_attention": attention,
        "lm_head": 2 * logits_positions * llm.hidden_size * llm.vocab_size,
        "diff_proj": 2 * L * (llm.hidden_size * D + D * D) if has_width_projections(cfg) else 0,
        "head_blocks": head.num_layers * (block + modulation),
        "head_final": 2 * D * 2 * D + 2 * n * D * cfg.patch_dim,
    }
    return _total({k: float(cfg_rows * v) for k, v in per_row.items()})


def decode_token_flops(cfg: Showo2Config, context: int) -> float:
    """One KV-cached decoding step: a new token through the LLM attending to ``context`` keys, plus its logits."""
    linear, attention = _llm(cfg, 1, context)
    return float(linear + attention + 2 * cfg.llm.hidden_size * cfg.llm.vocab_size)


def understanding_flops(cfg: Showo2Config, question_tokens: int = 6, image_size: int | None = None,
                        prefix_tokens: int = UNDERSTANDING_PREFIX) -> dict[str, float]:
    """One understanding query (one row, VAE encode excluded — see :func:`vae_flops`).

    The prefill components (``und_trans`` with patch embeds, ``fusion_proj``, ``time_embed``, ``llm_linear``,
    ``llm_attention`` over the omni-masked prompt, ``lm_head`` at the last position) sum to ``total``;
    ``decode_per_token`` (not in the total) is one KV-cached step at the prompt length, LM head included.
    """
    grid = cfg.grid_for(image_size or cfg.image_size)
    n = grid * grid
    L = understanding_length(cfg, question_tokens, image_size, prefix_tokens)
    linear, attention = _llm(cfg, L)
    flops = _total({
        "und_trans": float(_visual(cfg, n)),
        "fusion_proj": float(_fusion(cfg, n)),
        "time_embed": float(_time(cfg)),
        "llm_linear": float(linear),
        "llm_attention": float(attention),
        "lm_head": float(2 * cfg.llm.hidden_size * cfg.llm.vocab_size),
    })
    flops["decode_per_token"] = decode_token_flops(cfg, L + 1)
    return flops


def decode_flops(cfg: Showo2Config, prompt_length: int, answer_tokens: int) -> float:
    """KV-cached decoding of ``answer_tokens`` after a prefill (which yields the first): steps at contexts
    ``prompt_length + 1 … prompt_length + answer_tokens - 1``. Cost is linear in the context, so an arithmetic sum."""
    steps = max(answer_tokens - 1, 0)
    if steps == 0:
        return 0.0
    return steps * (decode_token_flops(cfg, prompt_length + 1) + decode_token_flops(cfg, prompt_length + steps)) / 2


# ---------------------------------------------------------------------------------------------- VAE
def vae_flops(cfg: Showo2Config, image_size: int | None = None, as_executed: bool = True) -> dict[str, float]:
    """Wan2.1 VAE (``diffusers.AutoencoderKLWan``, non-residual) encode of one image / decode of one latent.

    Walks the conv stack of the diffusers module for a single frame (T = 1). A causal 3×3×3 conv on one frame
    pads two zero frames in front and still computes all 27 taps (``as_executed=True``, what the GPU does); the
    same conv on a 2-D image would need only the 9 taps of the last frame (``as_executed=False``). The temporal
    resample convs are skipped on a first chunk and cost nothing here. The mid-block single-head attention over
    all latent pixels is included. Matches ``FlopCounterMode`` on the diffusers module (see the tests).
    """
    v = cfg.vae
    size = image_size or cfg.image_size
    cfg.grid_for(size)
    k3 = 27 if as_executed else 9

    def resblock(cin: int, cout: int, pixels: int) -> int:
        return pixels * (k3 * cin * cout + k3 * cout * cout + (cin * cout if cin != cout else 0))

    def mid(c: int, pixels: int) -> int:
        return 2 * resblock(c, c, pixels) + pixels * 4 * c * c + 2 * pixels * pixels * c  # qkv+proj, QKᵀ+AV

    # encoder: conv_in, [res blocks, stride-2 conv] per level, mid, conv_out → 2·z (mean, logvar), quant_conv
    dims = [v.base_dim * m for m in [1] + v.dim_mult]
    h = w = size
    enc = h * w * k3 * 3 * dims[0]
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(v.num_res_blocks):
            enc += resblock(cin, cout, h * w)
            cin = cout
        if i != len(v.dim_mult) - 1:
            h, w = h // 2, w // 2
            enc += h * w * 9 * cout * cout
    enc += mid(dims[-1], h * w) + h * w * (k3 * dims[-1] * 2 * v.z_dim + 4 * v.z_dim * v.z_dim)

    # decoder: post_quant_conv, conv_in, mid, [res blocks, ×2 nearest + conv to half width] per level, conv_out
    dims = [v.base_dim * m for m in [v.dim_mult[-1]] + v.dim_mult[::-1]]
    pixels = (size // v.spatial_factor) ** 2
    dec = pixels * (v.z_dim * v.z_dim + k3 * v.z_dim * dims[0]) + mid(dims[0], pixels)
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        cin = cin // 2 if i > 0 else cin  # the previous level's upsample conv halved the width
        for _ in range(v.num_res_blocks + 1):
            dec += resblock(cin, cout, pixels)
            cin = cout
        if i != len(v.dim_mult) - 1:
            pixels *= 4
            dec += pixels * 9 * cout * (cout // 2)
    dec += pixels * k3 * dims[-1] * 3
    return {"encode": 2.0 * enc, "decode": 2.0 * dec}


def understanding_cost_shares(cfg: Showo2Config, question_tokens: int = 6, image_size: int | None = None
                              ) -> dict[str, float]:
    """Percent of an understanding query's work in the LLM prefill (LM head included), the SigLIP branch (with
    patch embeds, fusion and time embedding), the VAE encode (as executed by the official code) and one decoding
    step: what a scaled-down preset must keep to stand for a real model in speed measurements."""
    und = understanding_flops(cfg, question_tokens, image_size)
    parts = {"llm": und["llm_linear"] + und["llm_attention"] + und["lm_head"],
             "siglip_branch": und["und_trans"] + und["fusion_proj"] + und["time_embed"],
             "vae_encode": vae_flops(cfg, image_size)["encode"], "decode_per_token": und["decode_per_token"]}
    total = sum(parts.values())
    return {k: 100.0 * v / total for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------- report
def model_report(cfg: Showo2Config, steps: int | None = None, image_size: int | None = None,
                 question_tokens: int = 6, answer_tokens: int = 300, cfg_rows: int = 2) -> dict[str, Any]:
    """Everything for ``flashu info``, as a JSON-able dict: parameters, one denoising step (ours and with the
    official all-position LM head), one image (``steps − 1`` evaluations + one decode), one understanding query."""
    size = image_size or cfg.image_size
    steps = cfg.default_steps if steps is None else steps
    evaluations = max(steps - 1, 0)  # Euler on N grid points evaluates the model N − 1 times
    L = generation_length(cfg, size)
    step = generation_step_flops(cfg, size, cfg_rows)
    official_lm_head = generation_step_flops(cfg, size, cfg_rows, logits_positions=L)["lm_head"]
    vae = vae_flops(cfg, size)
    und = understanding_flops(cfg, question_tokens, size)
    Lu = understanding_length(cfg, question_tokens, size)
    decode = decode_flops(cfg, Lu, answer_tokens)
    return {
        "config": cfg.name,
        "image_size": size,
        "grid": cfg.grid_for(size),
        "parameters": parameter_counts(cfg),
        "generation": {
            "sequence_length": L,
            "cfg_rows": cfg_rows,
            "per_step": step,
            "per_step_official": step["total"] + official_lm_head,
            "steps": steps,
            "evaluations": evaluations,
            "per_image": {
                "denoise": evaluations * step["total"],
                "vae_decode": vae["decode"],
                "total": evaluations * step["total"] + vae["decode"],
            },
        },
        "understanding": {
            "sequence_length": Lu,
            "question_tokens": question_tokens,
            "answer_tokens": answer_tokens,
            "prefill": {k: val for k, val in und.items() if k != "decode_per_token"},
            "decode_per_token": und["decode_per_token"],
            "vae_encode": vae["encode"],
            "decode": decode,
            "total": vae["encode"] + und["total"] + decode,
            "cost_shares_percent": understanding_cost_shares(cfg, question_tokens, size),
        },
        "vae": vae,
    }


def human(value: float, unit: str = "FLOPs") -> str:
    """``9.72e12`` → ``'9.72 TFLOPs'``; parameters with ``unit=''`` → ``'2.83 B'``-style (k, M, B)."""
    prefixes = ("", "k", "M", "B", "T") if unit == "" else ("", "K", "M", "G", "T", "P", "E")
    scale = 0
    while abs(value) >= 1000 and scale < len(prefixes) - 1:
        value /= 1000
        scale += 1
    return f"{value:.3g} {prefixes[scale]}{unit}".rstrip()


def render_report(report: dict[str, Any]) -> str:
    """A plain-text table of :func:`model_report` for terminals and logs."""
    def section(title: str, rows: dict[str, float], unit: str = "FLOPs") -> list[str]:
        width = max(map(len, rows)) + 2
        return [title] + [f"  {name:<{width}}{human(value, unit)}" for name, value in rows.items()]

    gen, und = report["generation"], report["understanding"]
    lines = [f"Show-o2 '{report['config']}' at {report['image_size']}² ({report['grid']}² image tokens)"]
    lines += section("parameters", report["parameters"], unit="")
    lines += section(f"one denoising step ({gen['cfg_rows']} rows × {gen['sequence_length']} tokens)", gen["per_step"])
    lines += [f"  (official, logits at every position: {human(gen['per_step_official'])})"]
    lines += section(f"one image ({gen['evaluations']} evaluations + VAE decode)", gen["per_image"])
    lines += section(f"one understanding query ({und['sequence_length']}-token prompt, prefill)", und["prefill"])
    lines += section("  + VAE encode, KV-cached decoding", {
        "vae_encode": und["vae_encode"], "decode_per_token": und["decode_per_token"],
        f"decode ({und['answer_tokens']} tokens)": und["decode"], "query total": und["total"],
    })
    shares = und["cost_shares_percent"]
    lines.append("understanding cost shares (LLM : SigLIP branch : VAE encode : decode per token): "
                 + " : ".join(f"{shares[k]:.1f} %" for k in ("llm", "siglip_branch", "vae_encode", "decode_per_token")))
    return "\n".join(lines)
