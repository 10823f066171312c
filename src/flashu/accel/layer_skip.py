"""Dynamic layer skipping: rank decoder layers by how little they change their input, skip the least important.

Importance of layer ℓ is ``I_ℓ = 1 − cos(h_in, h_out)``, measured by the model on a full-depth forward over the
tokens a plan names (``ExecutionPlan.similarity``: the image block for generation, the last position for
understanding) and returned in ``BackboneOutput.similarity``. The skip set is the ``⌊r_LS·L⌋`` layers with the
smallest importance (ties: the lower index is skipped first); a skipped layer is an identity for the residual stream.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def skip_count(ratio: float, num_layers: int, field: str) -> int:
    """``⌊ratio · L⌋`` layers; a positive ratio that skips nothing on this model is refused (never silently 0)."""
    count = math.floor(ratio * num_layers)
    if ratio > 0 and count == 0:
        smallest = math.ceil(100 / num_layers) / 100
        raise ConfigError(f"{field} {ratio} skips no layer of this {num_layers}-layer model; use 0 (off) or at "
                          f"least {smallest}")
    if count >= num_layers:
        raise ConfigError(f"{field} {ratio} would skip all {num_layers} layers")
    return count


def least_important_layers(similarity: torch.Tensor | dict, count: int, num_layers: int,
                           protect_first_last: bool) -> list[int]:
    """The ``count`` layers with the smallest importance ``1 − cos`` (i.e. the largest similarity); layers without a
    measurement (NaN, or missing from a dict) are never chosen."""
    if isinstance(similarity, torch.Tensor):
        values = similarity.detach().float().cpu().tolist()
        similarity = {i: v for i, v in enumerate(values) if not math.isnan(v)}
    candidates = [i for i in similarity if not (protect_first_last and i in (0, num_layers - 1))]
    ranked = sorted(candidates, key=lambda i: (1.0 - similarity[i], i))
    return sorted(ranked[:count])


def active_layers(skipped: list[int], num_layers: int) -> list[int] | None:
    """The executed layers when ``skipped`` are skipped (``None``: all of them)."""
    return [i for i in range(num_layers) if i not in skipped] if skipped else None
