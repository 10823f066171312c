"""Fidelity metrics on known inputs."""

import math

import numpy as np
import pytest
import torch

from flashu.observe.metrics import exact_match, psnr, relative_l2, ssim, token_agreement


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == math.inf
    b[:] = 1  # MSE 1 → 20·log10(255) = 48.13 dB
    assert psnr(a, b) == pytest.approx(48.1308, abs=1e-3)
    with pytest.raises(ValueError):
        psnr(a, np.zeros((4, 4, 3)))


def test_ssim_properties():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255)
    worse = np.clip(img + rng.normal(0, 80, img.shape), 0, 255)
    assert 0 < ssim(worse, img) < ssim(noisy, img) < 1
    const_a, const_b = np.full((16, 16), 100.0), np.full((16, 16), 200.0)
    # constant images: only the luminance term, (2·100·200 + c1) / (100² + 200² + c1)
    c1 = (0.01 * 255) ** 2
    assert ssim(const_a, const_b) == pytest.approx((2 * 100 * 200 + c1) / (100 ** 2 + 200 ** 2 + c1))


def test_relative_l2_and_tokens():
    ref = torch.tensor([3.0, 4.0])
    assert relative_l2(ref, ref) == 0
    assert relative_l2(torch.tensor([3.0, 5.0]), ref) == pytest.approx(0.2)
    assert token_agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_agreement([1, 9, 3], [1, 2, 3]) == pytest.approx(2 / 3)
    assert token_agreement([1, 2], [1, 2, 3, 4]) == 0.5
    assert exact_match([1, 2], [1, 2]) and not exact_match([1], [1, 2])
