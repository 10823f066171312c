"""The Show-o2 network: official sizes and key names, layouts, masks, the plan's effect."""

from collections import Counter

import pytest
import torch

from flashu.config import Showo2Config, preset
from flashu.errors import ConfigError
from flashu.model import ExecutionPlan, GenerationInputs, Showo2, omni_attention_mask, patchify_targets, unpatchify
from flashu.pipelines.sampling import num_evaluations, time_grid


@pytest.mark.parametrize("name, total", [("1.5b", 2.83e9), ("7b", 8.93e9)])
def test_official_parameter_counts_on_meta(name, total):
    with torch.device("meta"):
        model = Showo2(preset(name))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - total) / total < 0.005
    keys = model.state_dict().keys()
    assert len(keys) == 910  # the official checkpoint's tensor count (the parts below + the smaller modules)
    groups = Counter(k.split(".")[0] for k in keys)
    # Qwen2: embeddings, final norm, lm_head (tied or not, one key) + per layer q/k/v weight and bias, o_proj,
    # gate/up/down, two norms; SigLIP: per layer two LayerNorms, q/k/v/out and fc1/fc2, each weight and bias;
    # flow-head blocks: q/k/v/o, q_norm/k_norm, gate/up/down, two norms, adaLN modulation weight and bias
    assert groups["showo"] == 3 + 28 * (6 + 1 + 3 + 2)
    assert groups["und_trans"] == 26 * (2 * 2 + 4 * 2 + 2 * 2)
    assert groups["diffusion_head_a"] == 10 * (4 + 2 + 3 + 2 + 2)
    assert "showo.lm_head.weight" in keys
    tied = model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
    assert tied == (name == "1.5b")


def test_official_key_names():
    with torch.device("meta"):
        keys = set(Showo2(preset("1.5b")).state_dict())
    expected = {
        "image_embedder_und.proj.weight", "image_embedder_gen.proj.bias", "position_embedding.weight",
        "und_trans.layers.25.mlp.fc2.bias", "und_trans.layers.0.self_attn.out_proj.weight",
        "fusion_proj.0.weight", "fusion_proj.1.weight", "fusion_proj.3.bias",
        "time_embed.mlp.0.weight", "time_embed.mlp.2.bias", "time_embed_proj.weight", "diff_proj.0.weight",
        "diff_proj.2.bias", "diffusion_head_a.9.self_attn.q_norm.weight", "diffusion_head_a.0.adaLN_modulation.1.bias",
        "diffusion_head_a.0.mlp.gate_proj.weight", "diffusion_head_b.norm_final.weight",
        "diffusion_head_b.adaLN_modulation.1.weight", "diffusion_head_b.linear.weight",
        "showo.model.layers.27.self_attn.q_proj.bias", "showo.model.norm.weight",
    }
    assert expected <= keys
    assert not any("und_trans.layers.26" in k for k in keys)  # 26 SigLIP layers, not 27
    with torch.device("meta"):
        head = Showo2(preset("1.5b")).diffusion_head_a[0]
    assert tuple(head.self_attn.k_proj.weight.shape) == (512, 2048)
    assert tuple(head.adaLN_modulation[1].weight.shape) == (6 * 2048, 2048)


def test_unpatchify_is_plain_reshape():
    grid, patch, channels = 3, 2, 4
    tokens = torch.arange(grid * grid * patch * patch * channels, dtype=torch.float32).reshape(1, grid * grid, -1)
    latent = unpatchify(tokens, grid, patch, channels)
    assert latent.shape == (1, channels, 6, 6)
    flat = latent.reshape(1, channels, 36)
    # token k carries latent pixels 4k..4k+3 (row-major), channel fastest — not its own 2×2 patch
    for k in range(grid * grid):
        for j in range(patch * patch):
            for c in range(channels):
                assert flat[0, c, 4 * k + j] == tokens[0, k, j * channels + c]
    assert torch.equal(patchify_targets(latent, patch), tokens)


def test_sampler_grid_and_evaluation_count():
    grid = time_grid(50)
    assert len(grid) == 50 and num_evaluations(50) == 49
    s = torch.linspace(0, 1, 50, dtype=torch.float64)
    assert torch.allclose(grid.double(), s / (3 - 2 * s), atol=1e-7)
    assert grid[0] == 0 and grid[-1] == 1
    assert (grid[1:] > grid[:-1]).all()
    assert (grid[1:] - grid[:-1])[0] < (grid[1:] - grid[:-1])[-1]  # more steps near the noise end
    with pytest.raises(ConfigError):
        time_grid(1)


def test_omni_mask():
    offsets = torch.tensor([2, 1])
    mask = omni_attention_mask(8, offsets, 3, torch.float32)
    allowed = mask == 0
    assert mask.shape == (2, 1, 8, 8)
    for b, off in enumerate(offsets.tolist()):
        for q in range(8):
            for k in range(8):
                in_block = off <= q < off + 3 and off <= k < off + 3
                assert bool(allowed[b, 0, q, k]) == (k <= q or in_block)
    assert (mask[~allowed] == torch.finfo(torch.float32).min).all()


def _inputs(model, batch_offsets, text_len=12):
    cfg = model.config
    block_len = cfg.grid ** 2 + 1
    length = text_len + block_len + 4
    ids = torch.randint(0, 256, (len(batch_offsets), length), generator=torch.Generator().manual_seed(1))
    offsets = torch.tensor(batch_offsets)
    return GenerationInputs(ids, offsets, block_len, omni_attention_mask(length, offsets, block_len, torch.float32))


@pytest.fixture(scope="module")
def tiny():
    model = Showo2(preset("tiny"))
    model.init_random_weights(0)
    return model.eval()


def _latents(model, batch):
    side = model.config.grid * model.config.patch_size
    return torch.randn(batch, model.config.latent_channels, side, side, generator=torch.Generator().manual_seed(2))


@torch.no_grad()
def test_tail_positions_do_not_change_the_velocity(tiny):
    inputs = _inputs(tiny, [8, 2])
    x, t = _latents(tiny, 2), torch.tensor([0.4, 0.4])
    full = tiny.forward_generation(x, t, inputs)
    trimmed = tiny.forward_generation(x, t, inputs, ExecutionPlan(keep_positions=inputs.used_length))
    assert torch.allclose(full.velocity, trimmed.velocity, atol=1e-5)
    assert full.backbone.logits is None  # no logits in generation


@torch.no_grad()
def test_plan_controls_layers_ffn_and_head_reuse(tiny):
    inputs = _inputs(tiny, [8, 2])
    x, t = _latents(tiny, 2), torch.tensor([0.4, 0.4])
    base = tiny.forward_generation(x, t, inputs)
    n = tiny.config.llm.num_layers
    all_listed = tiny.forward_generation(x, t, inputs, ExecutionPlan(layers=list(range(n)),
                                                                      ffn_ranges=[None] * n))
    assert torch.equal(base.velocity, all_listed.velocity)
    skipped = tiny.forward_generation(x, t, inputs, ExecutionPlan(layers=[0, 2, 3]))
    assert not torch.allclose(base.velocity, skipped.velocity)
    width = tiny.config.llm.intermediate_size
    pruned = tiny.forward_generation(x, t, inputs, ExecutionPlan(ffn_ranges=[(0, width // 2)] * n))
    assert not torch.allclose(base.velocity, pruned.velocity)
    # supplied head features: the velocity depends only on them and the current t
    reused = tiny.forward_generation(x * 0, t, inputs, ExecutionPlan(head_features=base.head_features,
                                                                      recompute_backbone=False))
    assert reused.backbone is None
    assert torch.equal(reused.velocity, base.velocity)


@torch.no_grad()
def test_batch_rows_are_independent(tiny):
    inputs = _inputs(tiny, [8, 2])
    x, t = _latents(tiny, 2), torch.tensor([0.4, 0.4])
    both = tiny.forward_generation(x, t, inputs)
    one = GenerationInputs(inputs.input_ids[:1], inputs.block_offsets[:1], inputs.block_len, inputs.mask[:1])
    single = tiny.forward_generation(x[:1], t[:1], one)
    assert torch.allclose(both.velocity[:1], single.velocity, atol=1e-5)


def test_config_validation_and_round_trip():
    cfg = preset("1.5b")
    official = cfg.to_official_dict()
    official.pop("flashu")
    assert Showo2Config.from_official_dict(official) == cfg
    assert Showo2Config.from_dict(preset("tiny").to_dict()) == preset("tiny")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("3b")
    with pytest.raises(ConfigError, match="multiple"):
        cfg.grid_for(100)
    bad = preset("tiny").to_dict()
    bad["llm"]["num_kv_heads"] = 3
    with pytest.raises(ConfigError, match="num_kv_heads"):
        Showo2Config.from_dict(bad)


def test_position_table_interpolates_for_other_grids(tiny):
    table = tiny.position_table(tiny.config.vision.position_grid)
    assert torch.equal(table, tiny.position_embedding.weight)
    assert tiny.position_table(12).shape == (144, tiny.config.vision.hidden_size)
