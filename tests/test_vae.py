"""VAE: build, seeded init, latent normalization, and the three checkpoint layouts (Wan2.1 .pth included)."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from flashu.config import VAEConfig, preset
from flashu.errors import CheckpointError
from flashu.io.vae import LatentCodec, build_vae, load_vae, save_vae, seed_random_vae

# Same topology as the real Wan2.1 VAE (dim_mult [1,2,4,4], 2 res blocks, temporal down [F,T,T]), tiny widths:
# diffusers' converter hard-codes that decoder layout, so only this topology converts.
WAN_TOPOLOGY = VAEConfig(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                         temperal_downsample=[False, True, True],
                         latents_mean=[0.5, -1.0, 0.25, 2.0], latents_std=[2.0, 0.5, 1.5, 3.0])


def seeded(cfg: VAEConfig, seed: int = 0):
    return seed_random_vae(build_vae(cfg), seed)


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- inverse of diffusers' Wan2.1 key converter
_RESNET_PARTS = (("norm1.gamma", "residual.0.gamma"), ("conv1.", "residual.2."), ("norm2.gamma", "residual.3.gamma"),
                 ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))


def _resnet_to_wan(rest: str) -> str:
    for new, old in _RESNET_PARTS:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest  # resample.* / time_conv.* keep their names


def to_wan21_key(key: str, num_res_blocks: int) -> str:
    """The original Wan2.1 name of a diffusers ``AutoencoderKLWan`` key (derived from the converter source).

    The decoder's flat ``upsamples`` list holds, per stage, ``num_res_blocks + 1`` residual blocks then one
    resample; diffusers regroups it into ``up_blocks.i.resnets.j`` / ``up_blocks.i.upsamplers.0``.
    """
    per_stage = num_res_blocks + 2
    rules = [
        (r"quant_conv\.(.*)", lambda m: f"conv1.{m[1]}"),
        (r"post_quant_conv\.(.*)", lambda m: f"conv2.{m[1]}"),
        (r"(encoder|decoder)\.conv_in\.(.*)", lambda m: f"{m[1]}.conv1.{m[2]}"),
        (r"(encoder|decoder)\.norm_out\.gamma", lambda m: f"{m[1]}.head.0.gamma"),
        (r"(encoder|decoder)\.conv_out\.(.*)", lambda m: f"{m[1]}.head.2.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)",
         lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{_resnet_to_wan(m[3])}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", lambda m: f"{m[1]}.middle.1.{m[2]}"),
        (r"encoder\.down_blocks\.(\d+)\.(.*)", lambda m: f"encoder.downsamples.{m[1]}.{_resnet_to_wan(m[2])}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
         lambda m: f"decoder.upsamples.{per_stage * int(m[1]) + int(m[2])}.{_resnet_to_wan(m[3])}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)",
         lambda m: f"decoder.upsamples.{per_stage * int(m[1]) + per_stage - 1}.{m[2]}"),
    ]
    for pattern, build in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return build(match)
    raise AssertionError(f"no Wan2.1 name for {key}")


def wan21_state_dict(vae, num_res_blocks: int) -> dict[str, torch.Tensor]:
    return {to_wan21_key(k, num_res_blocks): v.clone() for k, v in vae.state_dict().items()}


# ---------------------------------------------------------------- build / seed / codec
@pytest.mark.parametrize("name", ["tiny", "small"])
def test_preset_vaes_encode_and_decode(name):
    cfg = preset(name).vae
    vae = seeded(cfg)
    f = cfg.spatial_factor
    with torch.no_grad():
        posterior = vae.encode(images(2, 4 * f).unsqueeze(2)).latent_dist
        assert posterior.mean.shape == (2, cfg.z_dim, 1, 4, 4)
        decoded = vae.decode(posterior.mean).sample
    assert decoded.shape == (2, 3, 1, 4 * f, 4 * f)
    assert decoded.abs().max() <= 1.0 and decoded.std() > 0


def test_seeded_init_is_bit_identical_and_seed_dependent():
    cfg = preset("tiny").vae
    a, b, c = seeded(cfg, 7).state_dict(), seeded(cfg, 7).state_dict(), seeded(cfg, 8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(not torch.equal(a[k], c[k]) for k in a if not k.endswith("gamma"))


def test_codec_shapes_and_dtypes():
    cfg = preset("tiny").vae
    codec = LatentCodec(seeded(cfg))
    latents = codec.encode(images(2, 32).to(torch.bfloat16))
    assert latents.shape == (2, cfg.z_dim, 16, 16) and latents.dtype == torch.float32
    decoded = codec.decode(latents.to(torch.bfloat16))
    assert decoded.shape == (2, 3, 32, 32) and decoded.dtype == torch.float32
    assert decoded.min() >= -1.0 and decoded.max() <= 1.0


def test_codec_normalization_matches_manual_computation():
    cfg = preset("tiny").vae
    vae = seeded(cfg)
    codec = LatentCodec(vae)
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1)
    x = images(2, 32)
    with torch.no_grad():
        mu = vae.encode(x.unsqueeze(2)).latent_dist.mean.squeeze(2)
    latents = codec.encode(x)
    assert torch.allclose(latents, (mu - mean) / std, atol=1e-6)
    assert torch.equal(latents, (mu - mean) * (1.0 / std))  # upstream's exact rounding
    z = torch.randn(2, cfg.z_dim, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        manual = vae.decode((z * std + mean).unsqueeze(2)).sample.squeeze(2)
    assert torch.allclose(codec.decode(z), manual, atol=1e-5)


def test_codec_encode_is_deterministic():
    codec = LatentCodec(seeded(preset("tiny").vae))
    x = images(1, 32)
    assert torch.equal(codec.encode(x), codec.encode(x))


# ---------------------------------------------------------------- checkpoints
def test_inverse_mapping_round_trips_through_the_converter():
    vae = seeded(WAN_TOPOLOGY)
    original = wan21_state_dict(vae, WAN_TOPOLOGY.num_res_blocks)
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.middle.1.to_qkv.weight" in original
    assert convert_wan_vae_to_diffusers(original).keys() == vae.state_dict().keys()


def test_load_original_wan21_pth(tmp_path):
    vae = seeded(WAN_TOPOLOGY, 3)
    torch.save(wan21_state_dict(vae, WAN_TOPOLOGY.num_res_blocks), tmp_path / "Wan2.1_VAE.pth")
    loaded = load_vae(tmp_path, WAN_TOPOLOGY)
    x = images(1, 16)
    a, b = LatentCodec(vae), LatentCodec(loaded)
    latents = a.encode(x)
    assert torch.equal(b.encode(x), latents)
    assert torch.equal(b.decode(latents), a.decode(latents))


def test_wan21_pth_with_other_topology_is_a_clear_error(tmp_path):
    cfg = preset("tiny").vae  # 1 res block: the converter's hard-coded decoder grouping cannot rename it
    torch.save(wan21_state_dict(seeded(cfg), cfg.num_res_blocks), tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="does not match the VAE config"):
        load_vae(tmp_path, cfg)


@pytest.mark.parametrize("content", [b"", b"not a pickle at all", b"PK\x03\x04truncated zip"])
def test_corrupt_pth_is_a_checkpoint_error(tmp_path, content):
    (tmp_path / "Wan2.1_VAE.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match="cannot read") as info:
        load_vae(tmp_path, WAN_TOPOLOGY)
    assert "\n" not in str(info.value)


def test_truncated_pth_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(wan21_state_dict(seeded(WAN_TOPOLOGY), 2), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vae(tmp_path, WAN_TOPOLOGY)


def test_pth_without_tensors_is_a_checkpoint_error(tmp_path):
    torch.save({"step": 3}, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_vae(tmp_path, WAN_TOPOLOGY)


def test_save_and_load_safetensors(tmp_path):
    cfg = preset("tiny").vae
    vae = seeded(cfg, 5)
    assert save_vae(vae, tmp_path).name == "vae.safetensors"
    loaded = load_vae(tmp_path, cfg)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vae.state_dict().items())


def test_safetensors_for_another_config_is_rejected(tmp_path):
    save_vae(seeded(preset("tiny").vae), tmp_path)
    with pytest.raises(CheckpointError, match="wrongly shaped"):
        load_vae(tmp_path, VAEConfig(base_dim=16, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                     temperal_downsample=[False], latents_mean=[0.0] * 4, latents_std=[1.0] * 4))


def test_corrupt_safetensors_is_a_checkpoint_error(tmp_path):
    (tmp_path / "vae.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_vae(tmp_path, preset("tiny").vae)


def test_load_diffusers_folder(tmp_path):
    cfg = preset("tiny").vae
    vae = seeded(cfg, 2)
    vae.save_pretrained(str(tmp_path / "vae"))
    loaded = load_vae(tmp_path, cfg)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in vae.state_dict().items())
    assert list(loaded.config.latents_std) == cfg.latents_std


def test_diffusers_folder_without_weights_is_a_checkpoint_error(tmp_path):
    build_vae(preset("tiny").vae).save_config(str(tmp_path / "vae"))
    with pytest.raises(CheckpointError, match="cannot load the diffusers VAE"):
        load_vae(tmp_path, preset("tiny").vae)


def test_no_vae_files_names_the_layouts(tmp_path):
    with pytest.raises(CheckpointError, match=r"Wan2\.1_VAE\.pth.*vae/.*vae\.safetensors"):
        load_vae(tmp_path, preset("tiny").vae)
