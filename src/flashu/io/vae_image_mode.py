"""Exact image mode for the Wan2.1 VAE: single-frame inputs skip the two zero frames of every causal conv.

A ``WanCausalConv3d`` with temporal kernel ``kt`` pads ``2·p_t`` zero frames in front of its input (``2·p_t =
kt − 1`` for every conv that pads in time) and then runs a dense 3-D convolution. For a single frame with no
cached history the padded input is ``[0, …, 0, x]`` and the one output frame is

    Σ_τ W[:, :, τ] ⋆ frame_τ  =  W[:, :, −1] ⋆ x        (every other tap multiplies zeros)

i.e. a 2-D convolution of ``x`` with the **last temporal tap** and the spatial padding only. That is about 1/3 of
the 3×3×3 work, and on CPU the 2-D kernels are also far faster than the 3-D ones.

The rule is **local**: :class:`ImageModeCausalConv3d` takes the 2-D path only when it is itself called with one
frame, ``cache_x is None`` (or a conv that ignores ``cache_x`` because it does not pad in time) and a causal pad
that spans exactly the receptive field in front of the frame — precisely the cases where the original computes
``W[:, :, −1] ⋆ x``. Any other call (several frames, a cached history, the strided ``time_conv`` of a temporal
downsample) runs the unchanged upstream ``WanCausalConv3d.forward``, so correctness never depends on the caller.
How often the 2-D path fires is what depends on diffusers: for a one-frame encode or decode it fires for every conv
(``clear_cache`` resets the feature cache to ``None`` before the first chunk; ``WanResample`` skips ``time_conv``
on the first chunk in both directions). See ``tests/test_vae_image_mode.py``.

:func:`to_image_mode` changes the class of each ``WanCausalConv3d`` in place (the module objects, their
``weight``/``bias`` Parameters, names, hooks and ``state_dict`` stay exactly as they are; the weight is sliced at
call time, ``weight[:, :, -1]`` is a view), and :func:`from_image_mode` changes it back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from torch import nn

__all__ = ["ImageModeCausalConv3d", "to_image_mode", "from_image_mode", "is_image_mode"]


class ImageModeCausalConv3d(WanCausalConv3d):
    """``WanCausalConv3d`` that computes a one-frame, history-free call as a 2-D conv with the last temporal tap.

    Same parameters (``weight`` [out, in, kt, kh, kw], ``bias``), same ``forward(x, cache_x=None)``; every call
    the shortcut does not cover exactly goes to ``WanCausalConv3d.forward`` unchanged. Adds no state of its own,
    which is what lets :func:`to_image_mode` swap the class of a live module.
    """

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        if self._history_free_single_frame(x, cache_x):
            out = F.conv2d(
                x[:, :, 0],
                self.weight[:, :, -1],  # a view of the last temporal tap; the Parameter itself is untouched
                self.bias,
                stride=self.stride[1:],
                padding=(self._padding[2], self._padding[0]),
                dilation=self.dilation[1:],
                groups=self.groups,
            )
            return out.unsqueeze(2)
        return super().forward(x, cache_x)

    def _history_free_single_frame(self, x: torch.Tensor, cache_x: torch.Tensor | None) -> bool:
        """True exactly when the upstream forward would convolve ``[zeros(kt−1 frames), x]`` to one frame."""
        pad_w0, pad_w1, pad_h0, pad_h1, pad_front, pad_back = self._padding
        return (
            x.dim() == 5
            and x.shape[2] == 1
            # upstream only uses cache_x when it pads in time; any cached history → exact 3-D path
            and (cache_x is None or pad_front == 0)
            # the zero frames in front span exactly the receptive field before the frame: one output frame
            and pad_front == self.dilation[0] * (self.kernel_size[0] - 1)
            and pad_back == 0
            and pad_w0 == pad_w1
            and pad_h0 == pad_h1
            and tuple(self.padding) == (0, 0, 0)  # WanCausalConv3d pads with F.pad, never inside the conv
        )


def to_image_mode(vae: nn.Module) -> nn.Module:
    """Switch every ``WanCausalConv3d`` under ``vae`` to :class:`ImageModeCausalConv3d`, in place; returns ``vae``.

    Exact for any input (see the module docstring); one-frame encodes/decodes do ≈ 1/3 of the conv work.
    Idempotent. ``state_dict()`` keys, shapes and tensors are unchanged (same Parameter objects).
    """
    for module in vae.modules():
        if type(module) is WanCausalConv3d:
            module.__class__ = ImageModeCausalConv3d
    return vae


def from_image_mode(vae: nn.Module) -> nn.Module:
    """Undo :func:`to_image_mode` in place (the modules become plain ``WanCausalConv3d`` again); returns ``vae``."""
    for module in vae.modules():
        if type(module) is ImageModeCausalConv3d:
            module.__class__ = WanCausalConv3d
    return vae


def is_image_mode(vae: nn.Module) -> bool:
    """True when ``vae`` holds causal convs and all of them are in image mode."""
    kinds = [type(m) for m in vae.modules() if isinstance(m, WanCausalConv3d)]
    return bool(kinds) and all(k is ImageModeCausalConv3d for k in kinds)
