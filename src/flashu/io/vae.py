"""The Wan2.1 VAE (diffusers ``AutoencoderKLWan``) and Show-o2's per-channel latent normalization (design §5).

Show-o2 treats an image as a one-frame video: [B,3,H,W] becomes [B,3,1,H,W] for the VAE and the latent
[B,C,1,h,w] is squeezed back to [B,C,h,w]. The VAE always runs in fp32, as in the official scripts.

``VAEConfig(kind="identity")`` (the ``testbed`` preset) is pixel space: :class:`IdentityVAE` has no weights, the
latent of an image is the image itself (rearranged space-to-depth by ``space_to_depth``, a lossless permutation)
and decoding rearranges it back and clamps to [-1, 1].
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch.nn.functional import pixel_shuffle, pixel_unshuffle

from .quiet import quiet_import

with quiet_import():
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from .vae_image_mode import to_image_mode
from ..config import VAEConfig
from ..errors import CheckpointError

WAN_PTH = "Wan2.1_VAE.pth"
VAE_SAFETENSORS = "vae.safetensors"


class IdentityVAE(torch.nn.Module):
    """Pixel space: no parameters; ``config`` carries what :class:`LatentCodec` reads (mean 0, std 1)."""

    is_identity = True

    def __init__(self, vae_config: VAEConfig) -> None:
        super().__init__()
        self.config = vae_config
        # A buffer so the "VAE" has a device (moves with .to()); not saved, nothing to load.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)


def build_vae(vae_config: VAEConfig) -> AutoencoderKLWan | IdentityVAE:
    """A randomly initialised ``AutoencoderKLWan`` with the config's dimensions, in eval mode (pixel-space
    configs: an :class:`IdentityVAE`)."""
    if vae_config.kind == "identity":
        return IdentityVAE(vae_config).eval()
    return AutoencoderKLWan(
        base_dim=vae_config.base_dim,
        z_dim=vae_config.z_dim,
        dim_mult=list(vae_config.dim_mult),
        num_res_blocks=vae_config.num_res_blocks,
        temperal_downsample=list(vae_config.temperal_downsample),
        latents_mean=list(vae_config.latents_mean),
        latents_std=list(vae_config.latents_std),
        scale_factor_spatial=vae_config.spatial_factor,
        scale_factor_temporal=2 ** sum(vae_config.temperal_downsample),
    ).eval()


@torch.no_grad()
def seed_random_vae(vae: AutoencoderKLWan, seed: int) -> AutoencoderKLWan:
    """Re-draw every conv/linear weight and bias from a generator seeded with ``seed``, in module order.

    Same distribution as PyTorch's default init (uniform ±1/√fan_in) but independent of the global RNG, so
    two VAEs built from the same config and seed are bit-identical. RMS-norm gains keep their value of 1.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            for param in (module.weight, module.bias):
                if param is not None:
                    param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=generator))
    return vae


class LatentCodec:
    """Images in [-1, 1] ↔ normalized latents, exactly as Show-o2's ``WanVAE`` wrapper does it.

    The normalization uses the VAE config's ``latents_mean``/``latents_std`` in the official form
    ``(μ − mean)·(1/std)`` and back ``z / (1/std) + mean`` (same rounding as upstream). Encoding takes the
    posterior mean, not a sample (design §5: upstream samples; the mean is the deterministic choice).
    """

    def __init__(self, vae: AutoencoderKLWan | IdentityVAE) -> None:
        self.vae = vae.float().eval()
        self.identity = bool(getattr(vae, "is_identity", False))
        if not self.identity:
            # Exact for single frames and faster: the causal 3-D convs' zero-padded taps are skipped.
            to_image_mode(self.vae)
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def device(self) -> torch.device:
        if self.identity:
            return self.vae._anchor.device
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1, 1] (any dtype) → fp32 normalized latents [B,C,H/f,W/f] (pixel space: the images)."""
        if self.identity:
            return pixel_unshuffle(images.to(device=self.device, dtype=torch.float32), self.vae.config.space_to_depth)
        video = images.to(device=self.device, dtype=torch.float32).unsqueeze(2)
        mu = self.vae.encode(video).latent_dist.mean.squeeze(2)
        return (mu - self.mean.to(mu.device)) * self.inv_std.to(mu.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B,C,h,w] (any dtype) → fp32 images [B,3,h·f,w·f] clamped to [-1, 1]."""
        z = latents.to(device=self.device, dtype=torch.float32)
        if self.identity:
            return pixel_shuffle(z, self.vae.config.space_to_depth).clamp(-1.0, 1.0)
        z = z / self.inv_std.to(z.device) + self.mean.to(z.device)
        return self.vae.decode(z.unsqueeze(2)).sample.squeeze(2).clamp(-1.0, 1.0)


def load_vae(directory: str | Path, vae_config: VAEConfig) -> AutoencoderKLWan | IdentityVAE:
    """Load VAE weights from ``directory`` in the first layout found (pixel-space configs need none).

    1. ``Wan2.1_VAE.pth`` — the original Wan2.1 state dict, renamed by diffusers' converter. That converter
       hard-codes Wan2.1's decoder layout (``dim_mult`` of length 4, ``num_res_blocks`` 2); other widths work.
    2. ``vae/`` — a diffusers ``AutoencoderKLWan`` folder (``config.json`` + weights), e.g. from
       ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``.
    3. ``vae.safetensors`` — our own :func:`save_vae` format, shaped by ``vae_config``.
    """
    if vae_config.kind == "identity":
        return build_vae(vae_config)
    root = Path(directory)
    if (root / WAN_PTH).is_file():
        vae = build_vae(vae_config)
        _load_strict(vae, convert_wan_vae_to_diffusers(_read_pth(root / WAN_PTH)), root / WAN_PTH)
        return vae
    if (root / "vae" / "config.json").is_file():
        return _load_diffusers_folder(root / "vae", vae_config)
    if (root / VAE_SAFETENSORS).is_file():
        try:
            state = safetensors.torch.load_file(str(root / VAE_SAFETENSORS))
        except (OSError, safetensors.SafetensorError) as exc:
            raise CheckpointError(f"cannot read {root / VAE_SAFETENSORS}: {_first_line(exc)}") from None
        vae = build_vae(vae_config)
        _load_strict(vae, state, root / VAE_SAFETENSORS)
        return vae
    raise CheckpointError(
        f"no VAE weights in {root}: expected {WAN_PTH} (original Wan2.1), a diffusers vae/ folder "
        f"(config.json + weights) or {VAE_SAFETENSORS}"
    )


def save_vae(vae: AutoencoderKLWan | IdentityVAE, directory: str | Path) -> Path | None:
    """Write the VAE state dict to ``directory/vae.safetensors`` (its shape comes from the model config).
    A pixel-space :class:`IdentityVAE` has nothing to write: returns None."""
    if getattr(vae, "is_identity", False):
        return None
    path = Path(directory) / VAE_SAFETENSORS
    path.parent.mkdir(parents=True, exist_ok=True)
    from .files import save_safetensors

    return save_safetensors({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, path)


def _read_pth(path: Path) -> dict[str, torch.Tensor]:
    unreadable = f"cannot read {path} (corrupt or not a PyTorch state dict)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise CheckpointError(f"{unreadable}: the file is empty or truncated") from None
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False, which is not the fix here
        raise CheckpointError(f"{unreadable}: torch.load(weights_only=True) refused it "
                              "(not a pickle, or it holds more than tensors)") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{unreadable}: {_first_line(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def _load_diffusers_folder(folder: Path, vae_config: VAEConfig) -> AutoencoderKLWan:
    try:
        vae = AutoencoderKLWan.from_pretrained(str(folder), local_files_only=True)
    except (OSError, RuntimeError, ValueError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"cannot load the diffusers VAE in {folder}: {_first_line(exc)}") from None
    if vae.config.z_dim != vae_config.z_dim:
        raise CheckpointError(f"the VAE in {folder} has z_dim {vae.config.z_dim}, the model expects {vae_config.z_dim}")
    return vae.float().eval()


def _load_strict(vae: AutoencoderKLWan, state: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)`` with a one-line summary instead of torch's multi-line report."""
    expected = vae.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    problems = [f"{len(keys)} {what} keys (e.g. {keys[0]})"
                for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "wrongly shaped"))
                if keys]
    if problems:
        raise CheckpointError(f"{source} does not match the VAE config: {', '.join(problems)}")
    vae.load_state_dict(state, strict=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
