"""Exact image mode of the Wan VAE (flashu.vae_image_mode): same outputs, same state dict, ≈ 1/3 of the conv FLOPs."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanResample
from torch.utils.flop_counter import FlopCounterMode

from flashu.config import VAEConfig, preset
from flashu.io.vae import LatentCodec, build_vae, seed_random_vae
from flashu.io.vae_image_mode import ImageModeCausalConv3d, from_image_mode, is_image_mode, to_image_mode

# Wan2.1's exact layout (dim_mult [1,2,4,4], 2 res blocks, temporal downsample [F,T,T]) at small widths.
WAN_LAYOUT = VAEConfig(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       temperal_downsample=[False, True, True],
                       latents_mean=[0.5, -1.0, 0.25, 2.0], latents_std=[2.0, 0.5, 1.5, 3.0])
CONFIGS = {"tiny": preset("tiny").vae, "small": preset("small").vae, "wan_layout": WAN_LAYOUT}
RTOL = 1e-5


def seeded(cfg: VAEConfig, seed: int = 0):
    return seed_random_vae(build_vae(cfg), seed)


def images(batch: int, size: int, seed: int = 0, frames: int | None = None) -> torch.Tensor:
    shape = (batch, 3, size, size) if frames is None else (batch, 3, frames, size, size)
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL) -> None:
    assert actual.shape == expected.shape
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rtol * scale, f"max |Δ| {err:.3g} > {rtol:g} × max |ref| {scale:.3g}"


class CallLog:
    """Forward pre-hooks on every causal conv: records (name, frames of x, cache_x) and which path was taken."""

    def __init__(self, vae) -> None:
        self.calls: list[tuple[str, int, torch.Tensor | None]] = []
        self.handles = []
        for name, module in vae.named_modules():
            if isinstance(module, WanCausalConv3d):
                self.handles.append(module.register_forward_pre_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name):
        def hook(module, args, kwargs):
            cache_x = args[1] if len(args) > 1 else kwargs.get("cache_x")
            self.calls.append((name, args[0].shape[2], cache_x))
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_conv_names(vae) -> set[str]:
    return {f"{name}.time_conv" for name, m in vae.named_modules() if isinstance(m, WanResample) and hasattr(m, "time_conv")}


# ---------------------------------------------------------------- the module alone, against the 3-D original

CONVS = [  # (kernel, stride, padding)
    (3, 1, 1),                      # resnet / conv_in / conv_out
    (1, 1, 0),                      # conv_shortcut (1×1×1)
    ((3, 1, 1), 1, (1, 0, 0)),      # upsample3d time_conv
    ((3, 1, 1), (2, 1, 1), 0),      # downsample3d time_conv: no causal pad, never takes the 2-D path
    ((3, 3, 3), (1, 2, 2), 1),      # spatial stride
]


def _valid(kernel, padding, frames) -> bool:
    """An input shorter than the temporal kernel without causal padding is invalid for the original too."""
    k_t = kernel if isinstance(kernel, int) else kernel[0]
    p_t = padding if isinstance(padding, int) else padding[0]
    return frames >= k_t or p_t > 0


@pytest.mark.parametrize("kernel,stride,padding,frames", [
    (k, s, p, f) for k, s, p in CONVS for f in (1, 2, 3) if _valid(k, p, f)])
@pytest.mark.parametrize("cache", [None, "zeros", "random1", "random2"])
def test_module_matches_wan_causal_conv3d(kernel, stride, padding, frames, cache):
    torch.manual_seed(0)
    ref = WanCausalConv3d(5, 6, kernel, stride=stride, padding=padding).double()
    img = WanCausalConv3d(5, 6, kernel, stride=stride, padding=padding).double()
    img.load_state_dict(ref.state_dict())
    img.__class__ = ImageModeCausalConv3d
    x = torch.randn(2, 5, frames, 9, 8, dtype=torch.float64)
    assert not (ref.kernel_size[0] > frames and ref._padding[4] == 0)  # _valid() left such inputs out
    cache_x = None
    if cache == "zeros":
        cache_x = torch.zeros(2, 5, 2, 9, 8, dtype=torch.float64)
    elif cache is not None:
        cache_x = torch.randn(2, 5, int(cache[-1]), 9, 8, dtype=torch.float64)
    expected = ref(x, cache_x)
    actual = img(x, cache_x)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_two_d_path_only_for_history_free_single_frames():
    conv = ImageModeCausalConv3d(4, 4, 3, padding=1)
    one, two = torch.zeros(1, 4, 1, 5, 5), torch.zeros(1, 4, 2, 5, 5)
    assert conv._history_free_single_frame(one, None)
    assert not conv._history_free_single_frame(two, None)
    assert not conv._history_free_single_frame(one, torch.zeros(1, 4, 2, 5, 5))  # any cache → 3-D path
    down = ImageModeCausalConv3d(4, 4, (3, 1, 1), stride=(2, 1, 1), padding=0)
    assert not down._history_free_single_frame(torch.zeros(1, 4, 3, 5, 5), None)
    shortcut = ImageModeCausalConv3d(4, 8, 1)
    assert shortcut._history_free_single_frame(one, torch.zeros(1, 4, 2, 5, 5))  # kt=1: upstream ignores cache_x


def original_codec(vae):
    """A codec over the original 3-D VAE (``LatentCodec`` switches to image mode by default)."""
    codec = LatentCodec(vae)
    from_image_mode(vae)
    return codec


def test_latent_codec_uses_image_mode_by_default():
    vae = seeded(CONFIGS["tiny"])
    LatentCodec(vae)
    assert is_image_mode(vae)


# ---------------------------------------------------------------- what diffusers does for one frame

@pytest.mark.parametrize("name", list(CONFIGS))
def test_single_frame_calls_are_history_free_and_skip_time_conv(name):
    """The facts the speed-up relies on: for T = 1, every causal conv is called with one frame and cache_x None
    (the feature cache is reset to None before the first chunk), and no WanResample.time_conv runs."""
    vae = seeded(CONFIGS[name])
    codec = original_codec(vae)
    log = CallLog(vae)
    z = codec.encode(images(1, 32))
    codec.decode(z)
    log.remove()
    n_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.modules())
    called = {c[0] for c in log.calls}
    assert not called & time_conv_names(vae)
    assert len(called) == n_convs - len(time_conv_names(vae))  # every other conv ran (once per encode/decode)
    assert all(frames == 1 and cache_x is None for _, frames, cache_x in log.calls)


def test_wan_layout_has_time_convs():
    assert len(time_conv_names(seeded(WAN_LAYOUT))) == 4  # 2 downsample3d in the encoder, 2 upsample3d in the decoder


# ---------------------------------------------------------------- whole VAE: outputs, state dict, FLOPs

@pytest.mark.parametrize("name", list(CONFIGS))
def test_image_mode_matches_original(name, monkeypatch):
    vae = seeded(CONFIGS[name])
    codec = original_codec(vae)
    x = images(2, 32)
    z_ref = codec.encode(x)
    y_ref = codec.decode(z_ref)

    paths = []
    original = ImageModeCausalConv3d._history_free_single_frame
    monkeypatch.setattr(ImageModeCausalConv3d, "_history_free_single_frame",
                        lambda self, *a: paths.append(original(self, *a)) or paths[-1])
    assert to_image_mode(vae) is vae and is_image_mode(vae)
    z = codec.encode(x)
    y = codec.decode(z_ref)
    assert paths and all(paths)  # every conv call took the 2-D path: no 3-D conv ran
    assert_close(z, z_ref)
    assert_close(y, y_ref)
    assert_close(codec.decode(z), y_ref)


@pytest.mark.parametrize("name", ["tiny", "wan_layout"])
def test_image_mode_is_exact_in_float64(name):
    """In fp64 rounding vanishes: the last-tap 2-D conv is the same mathematics as the zero-padded 3-D conv."""
    vae = seeded(CONFIGS[name]).double()
    x = images(2, 32).double().unsqueeze(2)
    mu_ref = vae.encode(x).latent_dist.mean
    y_ref = vae.decode(mu_ref).sample
    to_image_mode(vae)
    torch.testing.assert_close(vae.encode(x).latent_dist.mean, mu_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vae.decode(mu_ref).sample, y_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_and_parameters_unchanged(name):
    vae = seeded(CONFIGS[name])
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    params = dict(vae.named_parameters())
    modules = dict(vae.named_modules())
    to_image_mode(vae)
    to_image_mode(vae)  # idempotent
    after = vae.state_dict()
    assert list(after) == list(before)
    for key, tensor in before.items():
        assert after[key].shape == tensor.shape and torch.equal(after[key], tensor), key
    assert all(p is params[n] for n, p in vae.named_parameters())
    assert all(m is modules[n] for n, m in vae.named_modules())
    convs = [m for m in vae.modules() if isinstance(m, WanCausalConv3d)]
    assert convs and all(type(m) is ImageModeCausalConv3d for m in convs)
    assert all(m.weight.dim() == 5 for m in convs)  # still [out, in, kt, kh, kw]: the Wan/diffusers layout
    # a fresh original VAE loads the image-mode state dict strictly, and back
    fresh = build_vae(CONFIGS[name])
    fresh.load_state_dict(vae.state_dict(), strict=True)
    from_image_mode(vae)
    assert all(type(m) is WanCausalConv3d for m in convs) and not is_image_mode(vae)
    assert all(p is params[n] for n, p in vae.named_parameters())


def _conv_flops_skipped(vae, run) -> int:
    """FLOPs the 3-D convs spend on the zero frames: 2·out.numel()·(in/groups)·(kt − 1)·kh·kw per call."""
    total = 0
    handles = []

    def hook(module, args, output):
        nonlocal total
        kt, kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * (kt - 1) * kh * kw

    for m in vae.modules():
        if isinstance(m, WanCausalConv3d):
            handles.append(m.register_forward_hook(hook))
    run()
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("name", ["small", "wan_layout"])
def test_flops_drop_to_about_a_third(name):
    vae = seeded(CONFIGS[name])
    codec = original_codec(vae)
    x = images(1, 32)
    z = codec.encode(x)

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    enc_ref, dec_ref = flops(lambda: codec.encode(x)), flops(lambda: codec.decode(z))
    enc_zero = _conv_flops_skipped(vae, lambda: codec.encode(x))
    dec_zero = _conv_flops_skipped(vae, lambda: codec.decode(z))
    to_image_mode(vae)
    enc, dec = flops(lambda: codec.encode(x)), flops(lambda: codec.decode(z))
    # exactly the zero-frame work disappears ...
    assert enc == enc_ref - enc_zero
    assert dec == dec_ref - dec_zero
    # ... which is about two thirds of everything (the rest: 1×1×1 shortcuts, 2-D resample convs, attention)
    assert 0.30 < enc / enc_ref < 0.42
    assert 0.30 < dec / dec_ref < 0.42


# ---------------------------------------------------------------- video inputs still take the exact 3-D path

def _uses_cached_history(log: CallLog) -> bool:
    return any(cache_x is not None and cache_x.abs().sum() > 0 for _, _, cache_x in log.calls)


# diffusers encodes frames in chunks 1, 4, 4, … (1 + 4k frames; a 2-frame video encodes frame 0 only), and
# decodes one latent frame per chunk; every chunk after the first passes its cached history to the convs.
@pytest.mark.parametrize("name,frames", [("small", 5), ("wan_layout", 5), ("wan_layout", 9)])
def test_video_encode_matches_original(name, frames):
    vae = seeded(CONFIGS[name])
    x = images(1, 32, frames=frames)
    mu_ref = vae.encode(x).latent_dist.mean
    log = CallLog(vae)
    to_image_mode(vae)
    mu = vae.encode(x).latent_dist.mean
    log.remove()
    assert_close(mu, mu_ref)
    assert _uses_cached_history(log)
    if name == "wan_layout":  # the downsample3d time_conv ran (on the later chunks)
        assert {c[0] for c in log.calls} & time_conv_names(vae)


@pytest.mark.parametrize("name,latent_frames", [("small", 2), ("wan_layout", 2), ("wan_layout", 3)])
def test_video_decode_matches_original(name, latent_frames):
    vae = seeded(CONFIGS[name])
    z = torch.randn(1, vae.config.z_dim, latent_frames, 4, 4, generator=torch.Generator().manual_seed(1))
    y_ref = vae.decode(z).sample
    log = CallLog(vae)
    to_image_mode(vae)
    y = vae.decode(z).sample
    log.remove()
    assert y.shape[2] == y_ref.shape[2] > 1
    assert_close(y, y_ref)
    assert _uses_cached_history(log)
    if name == "wan_layout":  # the upsample3d time_conv ran (on the later chunks)
        assert {c[0] for c in log.calls} & time_conv_names(vae)


@pytest.mark.parametrize("name", ["small", "wan_layout"])
def test_two_frames_without_feature_cache_match_original(name):
    """Called directly without a feature cache, each causal conv sees both frames at once: the 3-D path."""
    vae = seeded(CONFIGS[name])
    x = images(1, 32, frames=2)
    ref = vae.encoder(x)
    to_image_mode(vae)
    assert_close(vae.encoder(x), ref)


def test_tiled_encode_decode_match_original():
    vae = seeded(WAN_LAYOUT)
    vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32,
                      tile_sample_stride_height=24, tile_sample_stride_width=24)
    codec = original_codec(vae)
    x = images(1, 48)  # 2×2 overlapping tiles
    z_ref = codec.encode(x)
    y_ref = codec.decode(z_ref)
    to_image_mode(vae)
    assert_close(codec.encode(x), z_ref)
    assert_close(codec.decode(z_ref), y_ref)


def test_gradients_match_original():
    vae = seeded(CONFIGS["tiny"]).double()
    x = images(1, 16).double().unsqueeze(2)

    def grads():
        vae.zero_grad()
        vae.decode(vae.encode(x).latent_dist.mean).sample.square().sum().backward()
        return {n: p.grad.clone() for n, p in vae.named_parameters()}

    ref = grads()
    to_image_mode(vae)
    got = grads()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-10, atol=1e-12)
