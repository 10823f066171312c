"""Analytic parameter counts and FLOPs (flashu.flops) against the real modules and the design brief (§1.6, §7)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from flashu.observe import flops as F
from flashu.config import MODEL_PRESET_NAMES, preset
from flashu.errors import ConfigError
from flashu.model import BASELINE, GenerationInputs, Showo2, omni_attention_mask

T, G = 1e12, 1e9

_PREFIXES = {
    "showo.model.embed_tokens": "llm_embeddings", "showo.lm_head": "lm_head", "showo.model.": "llm_layers",
    "position_embedding": "visual_embeds", "image_embedder_": "visual_embeds",
}


def _component(key: str) -> str:
    for prefix, name in _PREFIXES.items():
        if key.startswith(prefix):
            return name
    return key.split(".")[0]  # und_trans, fusion_proj, time_embed, ..., diffusion_head_b


def _build(name: str) -> Showo2:
    cfg = preset(name)
    if name in ("1.5b", "7b", "medium"):  # shapes only: no memory, no init time
        with torch.device("meta"):
            return Showo2(cfg)
    return Showo2(cfg)


@pytest.mark.parametrize("name", MODEL_PRESET_NAMES)
def test_parameter_counts_match_the_model(name):
    model = _build(name)
    real = Counter()
    for key, param in model.named_parameters():  # a tied lm_head is the embedding tensor: listed once
        real[_component(key)] += param.numel()
    real["total"] = sum(p.numel() for p in model.parameters())
    assert F.parameter_counts(model.config) == dict(real)


def test_parameter_counts_brief():
    small, big = F.parameter_counts(preset("1.5b")), F.parameter_counts(preset("7b"))
    assert "lm_head" not in small and big["lm_head"] == big["llm_embeddings"]
    assert small["total"] / 1e9 == pytest.approx(2.83, abs=0.005)
    assert big["total"] / 1e9 == pytest.approx(8.93, abs=0.005)
    assert small["diffusion_head_a"] / 1e6 == pytest.approx(860.0, abs=0.05)


def test_generation_step_brief_1_5b():
    cfg = preset("1.5b")
    assert F.generation_length(cfg) == 1024
    f = {k: v / T for k, v in F.generation_step_flops(cfg).items()}
    approx = lambda x: pytest.approx(x, rel=0.05)  # noqa: E731
    assert f["llm_linear"] == approx(2 * 2.683) and f["llm_attention"] == approx(2 * 0.180)
    assert f["llm_linear"] + f["llm_attention"] == approx(5.73)
    assert f["und_trans"] == approx(1.28)
    assert f["diff_proj"] == approx(0.03) and f["head_blocks"] == approx(2 * 1.33)
    assert f["diff_proj"] + f["head_blocks"] + f["head_final"] == approx(2.69)
    assert f["lm_head"] == 0 and f["total"] == approx(9.7)
    official = F.generation_step_flops(cfg, logits_positions=1024)
    assert official["lm_head"] / T == approx(0.95) and official["total"] / T == approx(10.7)


def test_generation_step_brief_7b():
    f = {k: v / T for k, v in F.generation_step_flops(preset("7b")).items()}
    assert f["llm_linear"] + f["llm_attention"] == pytest.approx(27.6, rel=0.05)
    assert f["total"] == pytest.approx(31.7, rel=0.05)


def test_understanding_brief():
    cfg = preset("1.5b")
    assert F.understanding_length(cfg, question_tokens=6) == 756
    f = F.understanding_flops(cfg, question_tokens=6)
    assert f["und_trans"] / T == pytest.approx(0.64, rel=0.05)
    assert f["fusion_proj"] / T == pytest.approx(0.01, abs=0.005)
    assert f["llm_linear"] / T == pytest.approx(1.98, rel=0.05)
    assert f["llm_attention"] / T == pytest.approx(0.10, rel=0.05)
    assert (f["llm_linear"] + f["llm_attention"]) / T == pytest.approx(2.08, rel=0.05)
    assert f["lm_head"] / G == pytest.approx(0.5, abs=0.05)  # last position only
    assert f["decode_per_token"] / G == pytest.approx(3.2, rel=0.05)  # LM head included, as the brief counts
    assert F.decode_flops(cfg, 756, 300) / T == pytest.approx(1.0, rel=0.05)
    big = F.understanding_flops(preset("7b"))
    assert (big["llm_linear"] + big["llm_attention"]) / T == pytest.approx(10.1, rel=0.05)
    assert big["decode_per_token"] / G == pytest.approx(14.5, rel=0.05)


def test_vae_brief():
    f = F.vae_flops(preset("1.5b"))
    assert f["encode"] / T == pytest.approx(1.25, rel=0.15)
    assert f["decode"] / T == pytest.approx(2.0, rel=0.15)
    flat = F.vae_flops(preset("1.5b"), as_executed=False)  # brief: ≈ 1/3 with 2-D convs (0.4 for encode)
    assert flat["encode"] / T == pytest.approx(0.4, rel=0.15)


@pytest.mark.parametrize("name", ["1.5b", "tiny", "small"])
def test_vae_flops_match_flop_counter(name):
    """The analytic walk equals what FlopCounterMode counts on our diffusers VAE (built on meta: no memory)."""
    pytest.importorskip("diffusers")
    from flashu.io.vae import build_vae

    cfg = preset(name)
    v, size, lat = cfg.vae, cfg.image_size, cfg.image_size // cfg.vae.spatial_factor
    with torch.device("meta"):
        vae = build_vae(v)
        image, latent = torch.empty(1, 3, 1, size, size), torch.empty(1, v.z_dim, 1, lat, lat)
    measured = {}
    for key, run, x in (("encode", vae.encode, image), ("decode", vae.decode, latent)):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            run(x)
        measured[key] = float(counter.get_total_flops())
    assert F.vae_flops(cfg) == pytest.approx(measured, rel=1e-6)


@pytest.mark.parametrize("tail_dropped", [False, True])
def test_tiny_generation_step_matches_flop_counter(tail_dropped):
    cfg = preset("tiny")
    model = Showo2(cfg).eval()
    grid, block_len = cfg.grid, cfg.grid ** 2 + 1
    L = F.generation_length(cfg)
    offsets = torch.tensor([7, 2])  # conditional row (bos + 5 prompt tokens + boi), unconditional row
    inputs = GenerationInputs(input_ids=torch.zeros(2, L, dtype=torch.long), block_offsets=offsets,
                              block_len=block_len, mask=omni_attention_mask(L, offsets, block_len, torch.float32))
    plan = BASELINE.with_(keep_positions=inputs.used_length) if tail_dropped else BASELINE
    side = grid * cfg.patch_size
    latents, t = torch.randn(2, cfg.latent_channels, side, side), torch.full((2,), 0.3)
    counter = FlopCounterMode(display=False)
    # The CPU fused SDPA kernel (_scaled_dot_product_flash_attention_for_cpu) has no entry in the flop counter's
    # registry, so by default attention would count as 0. The MATH backend decomposes SDPA into bmm's (GQA heads
    # expanded, dense mask), which the counter does count: the measurement then covers the attention we model.
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.forward_generation(latents, t, inputs, plan)
    measured = counter.get_total_flops()
    analytic = F.generation_step_flops(cfg, cfg_rows=2,
                                       sequence_length=inputs.used_length if tail_dropped else None)["total"]
    assert measured == pytest.approx(analytic, rel=0.10)


def test_model_report_is_json_and_renders():
    cfg = preset("1.5b")
    report = F.model_report(cfg, steps=50)
    json.loads(json.dumps(report))
    gen = report["generation"]
    assert gen["evaluations"] == 49
    assert gen["per_image"]["denoise"] / T == pytest.approx(476, rel=0.05)
    assert gen["per_step_official"] * 49 / T == pytest.approx(523, rel=0.05)
    und = report["understanding"]
    assert und["total"] == pytest.approx(und["vae_encode"] + und["prefill"]["total"] + und["decode"])
    text = F.render_report(report)
    assert "TFLOPs" in text and "llm_attention" in text and "2.83 B" in text
    assert F.human(9.72e12) == "9.72 TFLOPs" and F.human(2.83e9, unit="") == "2.83 B"


def test_arguments_are_validated():
    cfg = preset("tiny")
    with pytest.raises(ConfigError):
        F.generation_step_flops(cfg, image_size=33)
    with pytest.raises(ValueError):
        F.generation_step_flops(cfg, sequence_length=10)


@pytest.mark.parametrize("scaled,official", [("small", "1.5b"), ("small-7b", "7b")])
def test_scaled_presets_keep_the_official_understanding_cost_shares(scaled, official):
    """A CPU preset stands for a real model in speed measurements only if its work splits the same way."""
    ours, theirs = F.understanding_cost_shares(preset(scaled)), F.understanding_cost_shares(preset(official))
    for part in ("llm", "siglip_branch", "vae_encode", "decode_per_token"):
        assert abs(ours[part] - theirs[part]) <= 3.0, (part, ours[part], theirs[part])
    assert theirs["llm"] > (80 if official == "7b" else 50)
