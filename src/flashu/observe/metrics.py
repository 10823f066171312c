"""Fidelity of an accelerated run against the baseline on the same seeds and inputs."""

from __future__ import annotations

import math
import re
import string

import numpy as np
import torch
import torch.nn.functional as F


def _as_float_array(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def psnr(image, reference, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of two uint8-range images (``inf`` when identical)."""
    a, b = _as_float_array(image), _as_float_array(reference)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def ssim(image, reference, peak: float = 255.0) -> float:
    """Mean structural similarity (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03),
    averaged over channels. Windows are truncated at the borders (zero-padding excluded via normalisation)."""
    a = torch.as_tensor(_as_float_array(image))
    b = torch.as_tensor(_as_float_array(reference))
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    x = a.permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    y = b.permute(2, 0, 1)[:, None]
    size = min(11, x.shape[-1], x.shape[-2])
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * 1.5 ** 2))
    window = (g[:, None] * g[None, :])
    window = (window / window.sum())[None, None]

    def blur(t):
        return F.conv2d(t, window)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x ** 2
    syy = blur(y * y) - mu_y ** 2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return float(s.mean())


def relative_l2(tensor: torch.Tensor, reference: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 when identical)."""
    ref = reference.float()
    denom = float(ref.norm())
    diff = float((tensor.float() - ref).norm())
    return diff / denom if denom > 0 else (0.0 if diff == 0 else math.inf)


def token_agreement(tokens: list[int], reference: list[int]) -> float:
    """Fraction of the reference's positions where the tokens agree (a shorter answer disagrees on the rest)."""
    if not reference:
        return 1.0 if not tokens else 0.0
    same = sum(1 for a, b in zip(tokens, reference) if a == b)
    return same / max(len(reference), len(tokens))


def exact_match(tokens: list[int], reference: list[int]) -> bool:
    return list(tokens) == list(reference)


_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NUMBERS = {str(i): word for i, word in enumerate(_NUMBER_WORDS)}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalise_answer(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed, a digit spelled as its word ("2" -> "two")."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBERS.get(word, word) for word in words)


def score_answer(predicted: str, expected: str) -> bool:
    """Exact match after :func:`normalise_answer` on both sides: ``"Red."`` matches ``"red"``; ``"dark red"`` not."""
    return normalise_answer(predicted) == normalise_answer(expected)
