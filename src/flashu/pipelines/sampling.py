"""Flow-matching sampler semantics of Show-o2 (t = 0 is noise, t = 1 is data).

``num_steps`` is the number of *grid points* N, as upstream's ``num_inference_steps``: the Euler solver makes
N − 1 model evaluations, at t_0 … t_{N−2}. Every interval elsewhere in flashu counts evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError

TIME_SHIFT = 3.0


def time_grid(num_steps: int, shift: float = TIME_SHIFT) -> torch.Tensor:
    """The shifted grid of the official sampler, bit for bit: ``s = linspace(0, 1, N)`` in fp32, then
    ``t = s / (s + shift − shift·s)`` in fp32 (``transport/integrators.py``)."""
    if num_steps < 2:
        raise ConfigError(f"steps must be at least 2 (N grid points give N - 1 evaluations), got {num_steps}")
    s = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float32)
    return s / (s + shift - shift * s)


def num_evaluations(num_steps: int) -> int:
    return num_steps - 1


def euler_update(x: torch.Tensor, velocity: torch.Tensor, t_now: float, t_next: float) -> torch.Tensor:
    """``x_{k+1} = x_k + (t_{k+1} − t_k)·v`` in fp32."""
    return x + (t_next - t_now) * velocity.float()


def guided(velocity: torch.Tensor, scale: float, num_cond: int) -> torch.Tensor:
    """CFG ``v_u + w·(v_c − v_u)`` for rows [cond; uncond], in the model dtype as upstream, returned in fp32."""
    cond, uncond = velocity[:num_cond], velocity[num_cond:]
    return (uncond + scale * (cond - uncond)).float()


@dataclass
class DenoisingSchedule:
    """The time grid (N points, N − 1 evaluations) and the guidance scale of each evaluation."""

    grid: torch.Tensor
    guidance: list[float]

    @property
    def num_evaluations(self) -> int:
        return len(self.grid) - 1
